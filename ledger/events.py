"""The public event schema, version 1: what the store holds and what Kafka carries.

This module is the contract between the write side and everyone downstream (relay,
projections, other services). It changes only by adding optional fields; a breaking change
is a new version (``EventV2``) with an upcaster, never an edit of this one.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

# Which rows of the store's log table are one ledger's: readers of the log (reports, as-of and
# explain) select a ledger's events by this id and position, the table's primary key.
_LEDGER_NAMESPACE = uuid.UUID("5d6c1f0e-8b7a-4c2e-9f41-0a1b2c3d4e5f")


def ledger_id(ledger: str) -> uuid.UUID:
    """The eventsourcing originator id of a ledger's log (stable per name)."""
    return uuid.uuid5(_LEDGER_NAMESPACE, ledger)


EventType = Literal[
    "client_opened",
    "sub_account_opened",
    "fiat_deposited",
    "crypto_deposit_detected",
    "crypto_deposit_confirmations",
    "crypto_deposit_credited",
    "crypto_deposit_cancelled",
    "destination_whitelisted",
    "withdrawal_requested",
    "withdrawal_approved",
    "withdrawal_executed",
    "withdrawal_rejected",
    "withdrawal_expired",
    "transferred",
    "hold_placed",
    "hold_posted",
    "hold_voided",
    "hold_expired",
    "fee_charged",
    "event_reversed",
    "mark_set",
    "fee_schedule_set",
    "client_tier_set",
    "holidays_set",
    "rfq_requested",
    "quote_submitted",
    "trade_booked",
    "trade_settled",
    "trades_net_settled",
    "settlement_failed",
    "trade_cancelled",
    "order_placed",
    "order_cancelled",
    "priority_violation",
    "shared_book_limit_set",
    "custody_move_requested",
    "custody_moved",
    "trust_rule_breached",
    "trust_rule_restored",
    "trust_rules_checked",
    "insurance_funded",
    "custody_fees_accrued",
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)


class PostingV1(BaseModel):
    """One leg of an event: a signed amount (debit > 0, credit < 0) on one account."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    account: str = Field(description="account name, e.g. client:<client>:<sub>:available")
    asset: str = Field(description="asset code; its scale is fixed in the asset registry")
    units: str = Field(
        pattern=r"^-?[0-9]+$", description="integer minor units, as a string (exact)"
    )
    amount: str = Field(description="the same amount as a decimal with the asset's scale")


class EventV1(BaseModel):
    """An immutable ledger event; postings balance to zero per asset."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    v: Literal[1] = 1
    ledger: str
    position: int = Field(ge=1, description="gap-free position in the ledger's log")
    type: EventType
    time: str = Field(description="ISO-8601 UTC time the writer decided the event")
    key: str = Field(description="idempotency key of the command that caused it")
    data: dict[str, Any]
    postings: list[PostingV1]
    prev: str = Field(description="hash of the previous event (64 zeros for the first)")
    hash: str = Field(description="SHA-256 of the canonical body without this field")
