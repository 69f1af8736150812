"""Expected outcomes are values; faults are exceptions.

A ``Rejection`` is the ledger's answer to a command it will not carry out: a stable ``code``
(listed in ``REJECTION_CODES`` and in the README) and a message naming the field. Nothing is
written for a rejected command but its idempotency record, so a retry gets the same answer.
The exception classes below are for what must not happen in normal operation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Rejection(Exception):  # noqa: N818 - an expected outcome, not an error
    """A command the ledger refuses, with a stable code and a message that names the field."""

    code: str
    message: str

    def __post_init__(self) -> None:
        if self.code not in REJECTION_CODES:
            raise ValueError(f"unregistered rejection code {self.code!r}")

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


REJECTION_CODES: Final[dict[str, str]] = {
    "invalid_command": "the command does not match its schema (the message names the field)",
    "invalid_amount": "an amount is not a plain decimal within the asset's scale, or not > 0",
    "unknown_asset": "the asset is not in the registry",
    "idempotency_conflict": "the idempotency key was used before with different content",
    "client_exists": "a client with this id is already open",
    "unknown_client": "no client with this id",
    "sub_account_exists": "the sub-account is already open",
    "unknown_sub_account": "the client has no such sub-account",
    "same_sub_account": "a transfer needs two different sub-accounts",
    "insufficient_funds": "the available balance is smaller than the amount",
    "duplicate_reference": "a deposit with this bank reference or transaction was recorded",
    "unknown_deposit": "no pending deposit with this transaction",
    "deposit_not_pending": "the deposit was already credited or cancelled",
    "asset_not_fiat": "a fiat deposit or bank destination needs USD or HKD",
    "asset_not_crypto": "a crypto deposit or wallet destination needs a virtual asset",
    "destination_exists": "the whitelist already holds a destination with this id",
    "unknown_destination": "the destination is not on the client's whitelist",
    "destination_asset_mismatch": "the whitelisted destination is for another asset",
    "withdrawal_exists": "a withdrawal with this id exists",
    "unknown_withdrawal": "no withdrawal with this id",
    "withdrawal_not_pending": "the withdrawal is already executed, rejected or expired",
    "approver_is_requester": "maker-checker: the requester may not approve",
    "approver_not_eligible": "the approver is not one of the withdrawal's N approvers",
    "already_approved": "this approver has already approved",
    "not_enough_approvals": "fewer than M approvals",
    "invalid_approval_policy": "M must be between 1 and N, approvers distinct, requester not one",
    "not_expired": "the expiry time has not been reached",
    "withdrawal_expired": "the withdrawal is past its expiry: it can only be expired now",
    "hold_expired": "the hold is past its expiry: it can only be expired now",
    "hold_exists": "a hold with this id exists",
    "unknown_hold": "no hold with this id",
    "hold_not_open": "the hold was already posted, voided or expired",
    "hold_exceeded": "posting more than the hold",
    "unknown_event": "no event at this position",
    "not_reversible": "this event cannot be reversed (no postings, or itself a reversal)",
    "already_reversed": "the event was reversed before",
    "invalid_price": "a price is not a plain positive decimal",
    "invalid_pair": "base and quote must be two different registered assets",
    "unknown_tier": "no fee schedule with this tier",
    "rfq_exists": "an RFQ with this id exists",
    "unknown_rfq": "no RFQ with this id",
    "quote_used": "the RFQ was already filled: its quotes cannot be used again",
    "quote_exists": "a quote with this id exists in the RFQ",
    "unknown_quote": "the RFQ has no quote with this id",
    "quote_expired": "the quote is past its validity (or no quote is still valid)",
    "unknown_trade": "no trade with this id",
    "trade_not_open": "the trade is already settled or cancelled",
    "settlement_not_due": "the value date has not come",
    "no_trades_due": "no open trade with the counterparty is due",
    "order_exists": "an order with this id exists",
    "unknown_order": "no order with this id",
    "order_not_open": "the order is filled or cancelled",
    "fill_exists": "a fill with this id was recorded",
    "fill_exceeds_order": "the fill is larger than what is left of the order",
    "price_beyond_limit": "the fill price is beyond the order's limit",
    "unsettled_limit_exceeded": "the shared order book's unsettled value would exceed its limit",
    "same_wallet": "a custody move needs two different wallets",
    "move_exists": "a custody move with this id exists",
    "unknown_move": "no custody move with this id",
    "move_not_pending": "the custody move was already executed",
    "insufficient_wallet_balance": "the source wallet holds less than the amount",
    "accrual_not_due": "custody fees are accrued for a day once it is over",
    "already_accrued": "custody fees for this day were accrued before",
}


class LedgerFaultError(RuntimeError):
    """An invariant broke (unbalanced postings, a broken hash chain): a bug or tampering."""


class WriterFencedError(RuntimeError):
    """Another writer took over this ledger; this one must stop."""


class StorageUnavailableError(RuntimeError):
    """The store did not accept a batch; the commands in it were not carried out."""
