"""Commands: the write side's public input, one pydantic model per command.

Every command carries ``key``, the client-chosen idempotency key. Amounts are decimal strings
(parsed by ``ledger.money`` against the asset's scale in the decider, so that a bad amount is a
rejection with a code, not a schema error). ``parse_command`` turns any input - a dict from
JSON, the CLI or the Python API - into a model or a ``Rejection('invalid_command')`` that
names the field.
"""

from __future__ import annotations

import hashlib
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ledger.accounts import HOUSE_ACCOUNTS
from ledger.errors import Rejection

Id = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]
Key = Annotated[str, Field(min_length=1, max_length=200)]
AssetCode = Annotated[str, Field(pattern=r"^[A-Z0-9]{2,10}$")]
DecimalText = Annotated[str, Field(min_length=1, max_length=80)]
Reference = Annotated[str, Field(min_length=1, max_length=200)]
# Trade ids join two ids (``<rfq>.<quote>``, ``<order>.<fill>``).
TradeId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,128}$")]
_PAYEE = (
    r"^(house:("
    + "|".join(sorted(HOUSE_ACCOUNTS))
    + r")|counterparty:[A-Za-z0-9][A-Za-z0-9_.\-]{0,63})$"
)


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)
    key: Key


class OpenClient(_Command):
    """Open a client with its first sub-accounts."""

    type: Literal["open_client"] = "open_client"
    client: Id
    name: Annotated[str, Field(min_length=1, max_length=200)]
    sub_accounts: Annotated[list[Id], Field(min_length=1, max_length=100)]


class OpenSubAccount(_Command):
    type: Literal["open_sub_account"] = "open_sub_account"
    client: Id
    sub_account: Id


class DepositFiat(_Command):
    """A bank transfer into a segregated trust bank account, credited at once."""

    type: Literal["deposit_fiat"] = "deposit_fiat"
    client: Id
    sub_account: Id
    asset: AssetCode
    amount: DecimalText
    bank_reference: Reference
    bank: Id = "trust-bank-1"


class DetectCryptoDeposit(_Command):
    """An on-chain transfer to a client deposit address, seen but not yet confirmed."""

    type: Literal["detect_crypto_deposit"] = "detect_crypto_deposit"
    client: Id
    sub_account: Id
    asset: AssetCode
    amount: DecimalText
    chain: Id
    tx_hash: Reference
    required_confirmations: Annotated[int, Field(ge=1, le=1000)]
    wallet: Id = "hot-1"


class ConfirmCryptoDeposit(_Command):
    """New confirmation count for a pending deposit; credits it once enough."""

    type: Literal["confirm_crypto_deposit"] = "confirm_crypto_deposit"
    tx_hash: Reference
    confirmations: Annotated[int, Field(ge=0, le=1_000_000)]


class ReorgCryptoDeposit(_Command):
    """The chain reorganised and the transaction is gone: cancel the pending deposit."""

    type: Literal["reorg_crypto_deposit"] = "reorg_crypto_deposit"
    tx_hash: Reference


class WhitelistDestination(_Command):
    """Add a bank account (fiat) or wallet address (virtual asset) a client may withdraw to."""

    type: Literal["whitelist_destination"] = "whitelist_destination"
    client: Id
    destination: Id
    asset: AssetCode
    address: Reference


class RequestWithdrawal(_Command):
    """Hold funds for a withdrawal to a whitelisted destination, pending M-of-N approval."""

    type: Literal["request_withdrawal"] = "request_withdrawal"
    withdrawal: Id
    client: Id
    sub_account: Id
    asset: AssetCode
    amount: DecimalText
    destination: Id
    requester: Id
    approvers: Annotated[list[Id], Field(min_length=1, max_length=20)]
    approvals_required: Annotated[int, Field(ge=1, le=20)]
    expires_at: AwareDatetime


class ApproveWithdrawal(_Command):
    type: Literal["approve_withdrawal"] = "approve_withdrawal"
    withdrawal: Id
    approver: Id


class ExecuteWithdrawal(_Command):
    """Pay out an approved withdrawal from custody or the trust bank."""

    type: Literal["execute_withdrawal"] = "execute_withdrawal"
    withdrawal: Id
    network_reference: Reference


class RejectWithdrawal(_Command):
    type: Literal["reject_withdrawal"] = "reject_withdrawal"
    withdrawal: Id
    by: Id
    reason: Reference


class ExpireWithdrawal(_Command):
    type: Literal["expire_withdrawal"] = "expire_withdrawal"
    withdrawal: Id


class Transfer(_Command):
    """Move funds between two sub-accounts of the same client."""

    type: Literal["transfer"] = "transfer"
    client: Id
    from_sub_account: Id
    to_sub_account: Id
    asset: AssetCode
    amount: DecimalText


class PlaceHold(_Command):
    """Phase one of a two-phase payment: reserve funds for a payee."""

    type: Literal["place_hold"] = "place_hold"
    hold: Id
    client: Id
    sub_account: Id
    asset: AssetCode
    amount: DecimalText
    payee: Annotated[str, Field(pattern=_PAYEE)]
    expires_at: AwareDatetime


class PostHold(_Command):
    """Phase two: pay the payee up to the held amount; any remainder is released."""

    type: Literal["post_hold"] = "post_hold"
    hold: Id
    amount: DecimalText | None = None


class VoidHold(_Command):
    type: Literal["void_hold"] = "void_hold"
    hold: Id


class ExpireHold(_Command):
    type: Literal["expire_hold"] = "expire_hold"
    hold: Id


class ChargeFee(_Command):
    """Charge a client a fee, booked to the house's fee income."""

    type: Literal["charge_fee"] = "charge_fee"
    client: Id
    sub_account: Id
    asset: AssetCode
    amount: DecimalText
    fee_type: Literal["trading", "custody", "withdrawal", "account", "other"]


class ReverseEvent(_Command):
    """Correct an earlier event by posting its exact opposite (never an edit)."""

    type: Literal["reverse_event"] = "reverse_event"
    position: Annotated[int, Field(ge=1)]
    reason: Reference


class SetMark(_Command):
    """A mark price for an asset in a quote asset (from a price feed or a file)."""

    type: Literal["set_mark"] = "set_mark"
    asset: AssetCode
    quote: AssetCode
    price: DecimalText


# --- trading and settlement ----------------------------------------------------------------
Side = Literal["buy", "sell"]
Settlement = Literal["T+0", "T+1"]
Bps = Annotated[int, Field(ge=0, le=10_000)]


class SetFeeSchedule(_Command):
    """Fee rates of a client tier, in basis points."""

    type: Literal["set_fee_schedule"] = "set_fee_schedule"
    tier: Id
    maker_bps: Bps
    taker_bps: Bps
    otc_spread_bps: Bps
    custody_bps_per_year: Bps = 0


class SetClientTier(_Command):
    type: Literal["set_client_tier"] = "set_client_tier"
    client: Id
    tier: Id


class SetHolidays(_Command):
    """The holiday calendar of a fiat currency (T+1 skips weekends and these dates)."""

    type: Literal["set_holidays"] = "set_holidays"
    currency: AssetCode
    dates: Annotated[list[date], Field(max_length=400)]


class RequestQuote(_Command):
    """A client asks liquidity providers for a price (RFQ)."""

    type: Literal["request_quote"] = "request_quote"
    rfq: Id
    client: Id
    sub_account: Id
    side: Side
    base: AssetCode
    quote: AssetCode
    quantity: DecimalText
    settlement: Settlement = "T+0"


class SubmitQuote(_Command):
    """A liquidity provider's firm quote for an open RFQ, valid for a few seconds."""

    type: Literal["submit_quote"] = "submit_quote"
    rfq: Id
    quote_id: Id
    provider: Id
    price: DecimalText
    valid_until: AwareDatetime


class AcceptQuote(_Command):
    """Book the trade at a quote's locked price: the named one, or the best valid one."""

    type: Literal["accept_quote"] = "accept_quote"
    rfq: Id
    quote_id: Id | None = None


class PlaceOrder(_Command):
    """A fully pre-funded limit order on the local or the shared order book."""

    type: Literal["place_order"] = "place_order"
    order: Id
    client: Id
    sub_account: Id
    side: Side
    base: AssetCode
    quote: AssetCode
    quantity: DecimalText
    limit_price: DecimalText
    book: Literal["local", "shared"] = "local"
    participant: Literal["client", "affiliated_market_maker"] = "client"


class CancelOrder(_Command):
    type: Literal["cancel_order"] = "cancel_order"
    order: Id


class RecordFill(_Command):
    """A fill from the matching engine; local-book fills settle at once (T+0)."""

    type: Literal["record_fill"] = "record_fill"
    order: Id
    fill: Id
    price: DecimalText
    quantity: DecimalText
    liquidity: Literal["maker", "taker"]
    counterparty: Id


class SetSharedBookLimit(_Command):
    """The cap on unsettled shared-order-book value (reserve fund plus insurance)."""

    type: Literal["set_shared_book_limit"] = "set_shared_book_limit"
    asset: AssetCode
    limit: DecimalText


class SettleTrade(_Command):
    """Settle both legs of a due trade in one event (DVP), or retry after a fail."""

    type: Literal["settle_trade"] = "settle_trade"
    trade: TradeId


class SettleNet(_Command):
    """Settle every due open trade with a counterparty up to a value date, netted."""

    type: Literal["settle_net"] = "settle_net"
    counterparty: Id
    value_date: date


class FailSettlement(_Command):
    """Record that a settlement attempt failed; the trade stays open and ages."""

    type: Literal["fail_settlement"] = "fail_settlement"
    trade: TradeId
    reason: Reference


class CancelTrade(_Command):
    """Cancel an open trade by posting the opposite of its booking."""

    type: Literal["cancel_trade"] = "cancel_trade"
    trade: TradeId
    reason: Reference


class MoveCustody(_Command):
    """Request a move between hot and cold wallets (executed on a checker's approval)."""

    type: Literal["move_custody"] = "move_custody"
    move: Id
    asset: AssetCode
    amount: DecimalText
    from_wallet: Annotated[str, Field(pattern=r"^custody:(hot|cold):[A-Za-z0-9_.\-]{1,64}$")]
    to_wallet: Annotated[str, Field(pattern=r"^custody:(hot|cold):[A-Za-z0-9_.\-]{1,64}$")]
    requester: Id


class ApproveCustodyMove(_Command):
    type: Literal["approve_custody_move"] = "approve_custody_move"
    move: Id
    approver: Id


class FundInsurance(_Command):
    """Compensation cover set aside for client assets (an insurance policy or a reserve)."""

    type: Literal["fund_insurance"] = "fund_insurance"
    asset: AssetCode
    amount: DecimalText
    policy: Reference


class AccrueCustodyFees(_Command):
    """Charge one day of custody fees on every client's virtual assets (tier rate per year)."""

    type: Literal["accrue_custody_fees"] = "accrue_custody_fees"
    day: date


class CheckTrustRules(_Command):
    """Check the 98% cold-storage rule and the compensation cover now."""

    type: Literal["check_trust_rules"] = "check_trust_rules"


Command = Annotated[
    OpenClient
    | OpenSubAccount
    | DepositFiat
    | DetectCryptoDeposit
    | ConfirmCryptoDeposit
    | ReorgCryptoDeposit
    | WhitelistDestination
    | RequestWithdrawal
    | ApproveWithdrawal
    | ExecuteWithdrawal
    | RejectWithdrawal
    | ExpireWithdrawal
    | Transfer
    | PlaceHold
    | PostHold
    | VoidHold
    | ExpireHold
    | ChargeFee
    | ReverseEvent
    | SetMark
    | SetFeeSchedule
    | SetClientTier
    | SetHolidays
    | RequestQuote
    | SubmitQuote
    | AcceptQuote
    | PlaceOrder
    | CancelOrder
    | RecordFill
    | SetSharedBookLimit
    | SettleTrade
    | SettleNet
    | FailSettlement
    | CancelTrade
    | MoveCustody
    | ApproveCustodyMove
    | FundInsurance
    | AccrueCustodyFees
    | CheckTrustRules,
    Field(discriminator="type"),
]

COMMAND_ADAPTER: TypeAdapter[Command] = TypeAdapter(Command)
COMMAND_TYPES: tuple[str, ...] = tuple(
    m.model_fields["type"].default for m in _Command.__subclasses__()
)


def parse_command(raw: Any) -> Command:
    """A command model from a dict (or model); ``Rejection('invalid_command')`` names the field."""
    if isinstance(raw, _Command):
        return raw  # type: ignore[return-value]
    try:
        return COMMAND_ADAPTER.validate_python(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = first["loc"]
        if len(loc) > 1 and isinstance(raw, dict) and loc[0] == raw.get("type"):
            loc = loc[1:]  # the union's tag: the field is what the caller needs to see
        where = ".".join(str(p) for p in loc) or "command"
        raise Rejection("invalid_command", f"{where}: {first['msg']}") from None


def command_hash(command: Command) -> str:
    """SHA-256 of the canonical command: what an idempotency key is bound to."""
    # Field order is fixed by the model, so pydantic's own JSON is already canonical.
    return hashlib.sha256(command.__pydantic_serializer__.to_json(command)).hexdigest()
