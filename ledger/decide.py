"""Deciders: one per command, from the in-memory state to new events or a rejection.

A decider validates everything before an event exists and returns drafts ``(type, data,
postings)``; it never changes state. Each docstring lists its rejection codes in precedence
order (the first that applies wins); ``tests/test_rejections.py`` checks each list against a
table of cases.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ledger import commands as c
from ledger.accounts import Bucket, client_account, custody_account, trust_bank_account
from ledger.errors import Rejection
from ledger.journal import Entry, Posting
from ledger.money import MoneyError, asset, format_units, parse_positive_units
from ledger.state import LedgerState
from ledger.trading import merge

Draft = tuple[str, dict[str, Any], tuple[Posting, ...]]
REVERSIBLE = frozenset(
    {"fiat_deposited", "crypto_deposit_credited", "transferred", "fee_charged", "hold_posted"}
)


@dataclass(slots=True)  # not frozen: built per command on the hot path; never mutated
class Context:
    """What a decider may know besides state: the writer's clock and earlier events."""

    now: datetime
    lookup: Callable[[int], Entry | None]


def _units(text: str, asset_code: str, field: str = "amount") -> int:
    try:  # parse_units checks the asset first: unknown_asset before invalid_amount
        return parse_positive_units(text, asset_code, field=field)
    except MoneyError as exc:
        raise Rejection(exc.code, exc.message) from None


def _money(units: int, asset_code: str) -> dict[str, str]:
    return {"asset": asset_code, "units": str(units), "amount": format_units(units, asset_code)}


def _client(state: LedgerState, client: str, sub_account: str | None = None) -> None:
    found = state.clients.get(client)
    if found is None:
        raise Rejection("unknown_client", f"client: no client {client!r}")
    if sub_account is not None and sub_account not in found["subs"]:
        raise Rejection("unknown_sub_account", f"sub_account: {client!r} has no {sub_account!r}")


def _available(state: LedgerState, client: str, sub: str, asset_code: str) -> int:
    return -state.balance(client_account(client, sub), asset_code)


def _funds(state: LedgerState, client: str, sub: str, asset_code: str, units: int) -> None:
    have = _available(state, client, sub, asset_code)
    if have < units:
        raise Rejection(
            "insufficient_funds",
            f"amount: {client}/{sub} has {format_units(have, asset_code)} {asset_code} available",
        )


def _move(account_from: str, account_to: str, asset_code: str, units: int) -> tuple[Posting, ...]:
    """Postings that move a liability from one client bucket to another (debit from, credit to)."""
    return ((account_from, asset_code, units), (account_to, asset_code, -units))


def open_client(state: LedgerState, cmd: c.OpenClient, ctx: Context) -> list[Draft]:
    """Rejections: invalid_command (repeated sub-account), client_exists."""
    if len(set(cmd.sub_accounts)) != len(cmd.sub_accounts):
        raise Rejection("invalid_command", "sub_accounts: names must be distinct")
    if cmd.client in state.clients:
        raise Rejection("client_exists", f"client: {cmd.client!r} is already open")
    data = {"client": cmd.client, "name": cmd.name, "sub_accounts": list(cmd.sub_accounts)}
    return [("client_opened", data, ())]


def open_sub_account(state: LedgerState, cmd: c.OpenSubAccount, ctx: Context) -> list[Draft]:
    """Rejections: unknown_client, sub_account_exists."""
    _client(state, cmd.client)
    if cmd.sub_account in state.clients[cmd.client]["subs"]:
        raise Rejection("sub_account_exists", f"sub_account: {cmd.sub_account!r} is open")
    return [("sub_account_opened", {"client": cmd.client, "sub_account": cmd.sub_account}, ())]


def deposit_fiat(state: LedgerState, cmd: c.DepositFiat, ctx: Context) -> list[Draft]:
    """Rejections: unknown_asset, invalid_amount, asset_not_fiat, unknown_client,
    unknown_sub_account, duplicate_reference."""
    units = _units(cmd.amount, cmd.asset)
    if asset(cmd.asset).is_virtual:
        raise Rejection("asset_not_fiat", f"asset: {cmd.asset} is not fiat; use a crypto deposit")
    _client(state, cmd.client, cmd.sub_account)
    if f"{cmd.asset}/{cmd.bank_reference}" in state.bank_references:
        raise Rejection("duplicate_reference", f"bank_reference: {cmd.bank_reference!r} was seen")
    data = {
        "client": cmd.client,
        "sub_account": cmd.sub_account,
        "bank": cmd.bank,
        "bank_reference": cmd.bank_reference,
        **_money(units, cmd.asset),
    }
    postings = _move(
        trust_bank_account(cmd.bank), client_account(cmd.client, cmd.sub_account), cmd.asset, units
    )
    return [("fiat_deposited", data, postings)]


def detect_crypto_deposit(
    state: LedgerState, cmd: c.DetectCryptoDeposit, ctx: Context
) -> list[Draft]:
    """Rejections: unknown_asset, invalid_amount, asset_not_crypto, unknown_client,
    unknown_sub_account, duplicate_reference."""
    units = _units(cmd.amount, cmd.asset)
    if not asset(cmd.asset).is_virtual:
        raise Rejection("asset_not_crypto", f"asset: {cmd.asset} is fiat; use a fiat deposit")
    _client(state, cmd.client, cmd.sub_account)
    if cmd.tx_hash in state.crypto_deposits:
        raise Rejection("duplicate_reference", f"tx_hash: {cmd.tx_hash!r} was seen")
    data = {
        "client": cmd.client,
        "sub_account": cmd.sub_account,
        "chain": cmd.chain,
        "tx_hash": cmd.tx_hash,
        "wallet": cmd.wallet,
        "required_confirmations": cmd.required_confirmations,
        **_money(units, cmd.asset),
    }
    return [("crypto_deposit_detected", data, ())]


def live(
    records: dict[str, dict[str, Any]],
    record_id: str,
    *,
    field: str,
    unknown: str,
    closed: str,
    status: str = "open",
) -> dict[str, Any]:
    """The record of a flow that must still be in ``status``: else ``unknown`` or ``closed``."""
    found = records.get(record_id)
    if found is None:
        raise Rejection(unknown, f"{field}: no {field} {record_id!r}")
    if found["status"] != status:
        raise Rejection(closed, f"{field}: {record_id!r} is {found['status']}")
    return found


def _pending_deposit(state: LedgerState, tx_hash: str) -> dict[str, Any]:
    return live(
        state.crypto_deposits,
        tx_hash,
        field="tx_hash",
        unknown="unknown_deposit",
        closed="deposit_not_pending",
        status="pending",
    )


def confirm_crypto_deposit(
    state: LedgerState, cmd: c.ConfirmCryptoDeposit, ctx: Context
) -> list[Draft]:
    """Rejections: unknown_deposit, deposit_not_pending."""
    deposit = _pending_deposit(state, cmd.tx_hash)
    data = {"tx_hash": cmd.tx_hash, "confirmations": cmd.confirmations}
    if cmd.confirmations < deposit["required_confirmations"]:
        return [("crypto_deposit_confirmations", data, ())]
    units, code = int(deposit["units"]), deposit["asset"]
    client = client_account(deposit["client"], deposit["sub_account"])
    data |= {"client": deposit["client"], "sub_account": deposit["sub_account"]}
    data |= _money(units, code)
    postings = _move(custody_account("hot", deposit["wallet"]), client, code, units)
    return [("crypto_deposit_credited", data, postings)]


def reorg_crypto_deposit(
    state: LedgerState, cmd: c.ReorgCryptoDeposit, ctx: Context
) -> list[Draft]:
    """Rejections: unknown_deposit, deposit_not_pending."""
    _pending_deposit(state, cmd.tx_hash)
    return [("crypto_deposit_cancelled", {"tx_hash": cmd.tx_hash, "reason": "reorg"}, ())]


def whitelist_destination(
    state: LedgerState, cmd: c.WhitelistDestination, ctx: Context
) -> list[Draft]:
    """Rejections: unknown_asset, unknown_client, destination_exists."""
    try:
        asset(cmd.asset)
    except MoneyError as exc:
        raise Rejection(exc.code, exc.message) from None
    _client(state, cmd.client)
    if f"{cmd.client}/{cmd.destination}" in state.destinations:
        raise Rejection("destination_exists", f"destination: {cmd.destination!r} is listed")
    data = {
        "client": cmd.client,
        "destination": cmd.destination,
        "asset": cmd.asset,
        "address": cmd.address,
    }
    return [("destination_whitelisted", data, ())]


def request_withdrawal(state: LedgerState, cmd: c.RequestWithdrawal, ctx: Context) -> list[Draft]:
    """Rejections: unknown_asset, invalid_amount, invalid_approval_policy, unknown_client,
    unknown_sub_account, withdrawal_exists, unknown_destination, destination_asset_mismatch,
    insufficient_funds."""
    units = _units(cmd.amount, cmd.asset)
    approvers = set(cmd.approvers)
    if (
        len(approvers) != len(cmd.approvers)
        or cmd.requester in approvers
        or not 1 <= cmd.approvals_required <= len(approvers)
    ):
        raise Rejection(
            "invalid_approval_policy",
            "approvers: need distinct approvers, not the requester, and 1 <= M <= N",
        )
    _client(state, cmd.client, cmd.sub_account)
    if cmd.withdrawal in state.withdrawals:
        raise Rejection("withdrawal_exists", f"withdrawal: {cmd.withdrawal!r} exists")
    destination = state.destinations.get(f"{cmd.client}/{cmd.destination}")
    if destination is None:
        raise Rejection("unknown_destination", f"destination: {cmd.destination!r} not listed")
    if destination["asset"] != cmd.asset:
        raise Rejection("destination_asset_mismatch", f"destination: is for {destination['asset']}")
    _funds(state, cmd.client, cmd.sub_account, cmd.asset, units)
    data = {
        "withdrawal": cmd.withdrawal,
        "client": cmd.client,
        "sub_account": cmd.sub_account,
        "destination": cmd.destination,
        "address": destination["address"],  # frozen here: later whitelist changes do not apply
        "requester": cmd.requester,
        "approvers": list(cmd.approvers),
        "approvals_required": cmd.approvals_required,
        "expires_at": cmd.expires_at.isoformat(),
        **_money(units, cmd.asset),
    }
    available = client_account(cmd.client, cmd.sub_account)
    held = client_account(cmd.client, cmd.sub_account, Bucket.HELD)
    return [("withdrawal_requested", data, _move(available, held, cmd.asset, units))]


def _pending_withdrawal(state: LedgerState, withdrawal: str) -> dict[str, Any]:
    return live(
        state.withdrawals,
        withdrawal,
        field="withdrawal",
        unknown="unknown_withdrawal",
        closed="withdrawal_not_pending",
        status="pending",
    )


def _unexpired(found: dict[str, Any], field: str, code: str, ctx: Context) -> None:
    """Past its expiry a flow may only be expired (which releases the funds), never completed:
    the expiry is the control that bounds how long an approval or a hold stays good."""
    if ctx.now >= datetime.fromisoformat(found["expires_at"]):
        raise Rejection(
            code, f"{field}: expired at {found['expires_at']}; expire it to release the funds"
        )


def approve_withdrawal(state: LedgerState, cmd: c.ApproveWithdrawal, ctx: Context) -> list[Draft]:
    """Rejections: unknown_withdrawal, withdrawal_not_pending, withdrawal_expired,
    approver_is_requester, approver_not_eligible, already_approved."""
    found = _pending_withdrawal(state, cmd.withdrawal)
    _unexpired(found, "withdrawal", "withdrawal_expired", ctx)
    if cmd.approver == found["requester"]:
        raise Rejection("approver_is_requester", "approver: the requester may not approve")
    if cmd.approver not in found["approvers"]:
        raise Rejection("approver_not_eligible", f"approver: {cmd.approver!r} is not eligible")
    if cmd.approver in found["approved_by"]:
        raise Rejection("already_approved", f"approver: {cmd.approver!r} approved already")
    data = {
        "withdrawal": cmd.withdrawal,
        "approver": cmd.approver,
        "approvals": len(found["approved_by"]) + 1,
        "approvals_required": found["approvals_required"],
    }
    return [("withdrawal_approved", data, ())]


def _release(found: dict[str, Any]) -> tuple[Posting, ...]:
    held = client_account(found["client"], found["sub_account"], Bucket.HELD)
    available = client_account(found["client"], found["sub_account"])
    return _move(held, available, found["asset"], int(found["units"]))


def execute_withdrawal(state: LedgerState, cmd: c.ExecuteWithdrawal, ctx: Context) -> list[Draft]:
    """Rejections: unknown_withdrawal, withdrawal_not_pending, withdrawal_expired,
    not_enough_approvals, insufficient_wallet_balance."""
    found = _pending_withdrawal(state, cmd.withdrawal)
    _unexpired(found, "withdrawal", "withdrawal_expired", ctx)
    if len(found["approved_by"]) < found["approvals_required"]:
        raise Rejection(
            "not_enough_approvals",
            f"withdrawal: {len(found['approved_by'])} of {found['approvals_required']} approvals",
        )
    code, units = found["asset"], int(found["units"])
    source = (
        custody_account("hot", "hot-1")
        if asset(code).is_virtual
        else trust_bank_account("trust-bank-1")
    )
    if state.balance(source, code) < units:
        raise Rejection(
            "insufficient_wallet_balance",
            f"withdrawal: {source} holds too little {code}; move it from cold storage first",
        )
    held = client_account(found["client"], found["sub_account"], Bucket.HELD)
    data = {
        "withdrawal": cmd.withdrawal,
        "client": found["client"],
        "sub_account": found["sub_account"],
        "address": found["address"],
        "source": source,
        "network_reference": cmd.network_reference,
        **_money(units, code),
    }
    return [("withdrawal_executed", data, _move(held, source, code, units))]


def reject_withdrawal(state: LedgerState, cmd: c.RejectWithdrawal, ctx: Context) -> list[Draft]:
    """Rejections: unknown_withdrawal, withdrawal_not_pending."""
    found = _pending_withdrawal(state, cmd.withdrawal)
    data = {"withdrawal": cmd.withdrawal, "by": cmd.by, "reason": cmd.reason}
    return [("withdrawal_rejected", data, _release(found))]


def expire_withdrawal(state: LedgerState, cmd: c.ExpireWithdrawal, ctx: Context) -> list[Draft]:
    """Rejections: unknown_withdrawal, withdrawal_not_pending, not_expired."""
    found = _pending_withdrawal(state, cmd.withdrawal)
    if ctx.now < datetime.fromisoformat(found["expires_at"]):
        raise Rejection("not_expired", f"withdrawal: expires at {found['expires_at']}")
    return [("withdrawal_expired", {"withdrawal": cmd.withdrawal}, _release(found))]


def transfer(state: LedgerState, cmd: c.Transfer, ctx: Context) -> list[Draft]:
    """Rejections: unknown_asset, invalid_amount, same_sub_account, unknown_client,
    unknown_sub_account, insufficient_funds."""
    units = _units(cmd.amount, cmd.asset)
    if cmd.from_sub_account == cmd.to_sub_account:
        raise Rejection("same_sub_account", "to_sub_account: must differ from from_sub_account")
    _client(state, cmd.client, cmd.from_sub_account)
    _client(state, cmd.client, cmd.to_sub_account)
    _funds(state, cmd.client, cmd.from_sub_account, cmd.asset, units)
    data = {
        "client": cmd.client,
        "from_sub_account": cmd.from_sub_account,
        "to_sub_account": cmd.to_sub_account,
        **_money(units, cmd.asset),
    }
    postings = _move(
        client_account(cmd.client, cmd.from_sub_account),
        client_account(cmd.client, cmd.to_sub_account),
        cmd.asset,
        units,
    )
    return [("transferred", data, postings)]


def place_hold(state: LedgerState, cmd: c.PlaceHold, ctx: Context) -> list[Draft]:
    """Rejections: unknown_asset, invalid_amount, unknown_client, unknown_sub_account,
    hold_exists, insufficient_funds."""
    units = _units(cmd.amount, cmd.asset)
    _client(state, cmd.client, cmd.sub_account)
    if cmd.hold in state.holds:
        raise Rejection("hold_exists", f"hold: {cmd.hold!r} exists")
    _funds(state, cmd.client, cmd.sub_account, cmd.asset, units)
    data = {
        "hold": cmd.hold,
        "client": cmd.client,
        "sub_account": cmd.sub_account,
        "payee": cmd.payee,
        "expires_at": cmd.expires_at.isoformat(),
        **_money(units, cmd.asset),
    }
    available = client_account(cmd.client, cmd.sub_account)
    held = client_account(cmd.client, cmd.sub_account, Bucket.HELD)
    return [("hold_placed", data, _move(available, held, cmd.asset, units))]


def _open_hold(state: LedgerState, hold: str) -> dict[str, Any]:
    return live(state.holds, hold, field="hold", unknown="unknown_hold", closed="hold_not_open")


def post_hold(state: LedgerState, cmd: c.PostHold, ctx: Context) -> list[Draft]:
    """Rejections: unknown_hold, hold_not_open, hold_expired, invalid_amount, hold_exceeded."""
    found = _open_hold(state, cmd.hold)
    _unexpired(found, "hold", "hold_expired", ctx)
    code, held_units = found["asset"], int(found["units"])
    units = held_units if cmd.amount is None else _units(cmd.amount, code)
    if units > held_units:
        raise Rejection("hold_exceeded", f"amount: the hold is {found['amount']} {code}")
    held = client_account(found["client"], found["sub_account"], Bucket.HELD)
    postings: tuple[Posting, ...] = ((held, code, held_units), (found["payee"], code, -units))
    if units < held_units:
        available = client_account(found["client"], found["sub_account"])
        postings += ((available, code, units - held_units),)
    data = {"hold": cmd.hold, "payee": found["payee"], **_money(units, code)}
    return [("hold_posted", data, postings)]


def void_hold(state: LedgerState, cmd: c.VoidHold, ctx: Context) -> list[Draft]:
    """Rejections: unknown_hold, hold_not_open."""
    found = _open_hold(state, cmd.hold)
    return [("hold_voided", {"hold": cmd.hold}, _release(found))]


def expire_hold(state: LedgerState, cmd: c.ExpireHold, ctx: Context) -> list[Draft]:
    """Rejections: unknown_hold, hold_not_open, not_expired."""
    found = _open_hold(state, cmd.hold)
    if ctx.now < datetime.fromisoformat(found["expires_at"]):
        raise Rejection("not_expired", f"hold: expires at {found['expires_at']}")
    return [("hold_expired", {"hold": cmd.hold}, _release(found))]


def charge_fee(state: LedgerState, cmd: c.ChargeFee, ctx: Context) -> list[Draft]:
    """Rejections: unknown_asset, invalid_amount, unknown_client, unknown_sub_account,
    insufficient_funds."""
    units = _units(cmd.amount, cmd.asset)
    _client(state, cmd.client, cmd.sub_account)
    _funds(state, cmd.client, cmd.sub_account, cmd.asset, units)
    data = {
        "client": cmd.client,
        "sub_account": cmd.sub_account,
        "fee_type": cmd.fee_type,
        **_money(units, cmd.asset),
    }
    postings = _move(client_account(cmd.client, cmd.sub_account), "house:fees", cmd.asset, units)
    return [("fee_charged", data, postings)]


def reverse_event(state: LedgerState, cmd: c.ReverseEvent, ctx: Context) -> list[Draft]:
    """Rejections: unknown_event, not_reversible, already_reversed, insufficient_funds."""
    original = ctx.lookup(cmd.position) if cmd.position <= state.position else None
    if original is None:
        raise Rejection("unknown_event", f"position: no event at {cmd.position}")
    if original.type not in REVERSIBLE:
        raise Rejection("not_reversible", f"position: a {original.type} event is not reversible")
    if cmd.position in state.reversed:
        raise Rejection("already_reversed", f"position: {cmd.position} was reversed before")
    postings = tuple((a, s, -u) for a, s, u in original.postings)
    if original.type == "hold_posted":
        # The hold is closed: what the payee gives back becomes available, not held again.
        postings = merge(
            tuple(
                (a.removesuffix(":held") + ":available" if a.endswith(":held") else a, s, u)
                for a, s, u in postings
            )
        )
    for account, code, units in postings:
        # A reversal may not leave a client's available balance negative.
        if account.endswith(":available") and state.balance(account, code) + units > 0:
            raise Rejection("insufficient_funds", f"position: {account} cannot give back {code}")
    data = {
        "reversed_position": cmd.position,
        "reversed_type": original.type,
        "reason": cmd.reason,
    }
    return [("event_reversed", data, postings)]


def set_mark(state: LedgerState, cmd: c.SetMark, ctx: Context) -> list[Draft]:
    """Rejections: unknown_asset, invalid_amount."""
    try:
        asset(cmd.asset)
    except MoneyError as exc:
        raise Rejection(exc.code, exc.message) from None
    _units(cmd.price, cmd.quote, field="price")
    return [("mark_set", {"asset": cmd.asset, "quote": cmd.quote, "price": cmd.price}, ())]


DECIDERS: dict[str, Callable[[LedgerState, Any, Context], list[Draft]]] = {
    "open_client": open_client,
    "open_sub_account": open_sub_account,
    "deposit_fiat": deposit_fiat,
    "detect_crypto_deposit": detect_crypto_deposit,
    "confirm_crypto_deposit": confirm_crypto_deposit,
    "reorg_crypto_deposit": reorg_crypto_deposit,
    "whitelist_destination": whitelist_destination,
    "request_withdrawal": request_withdrawal,
    "approve_withdrawal": approve_withdrawal,
    "execute_withdrawal": execute_withdrawal,
    "reject_withdrawal": reject_withdrawal,
    "expire_withdrawal": expire_withdrawal,
    "transfer": transfer,
    "place_hold": place_hold,
    "post_hold": post_hold,
    "void_hold": void_hold,
    "expire_hold": expire_hold,
    "charge_fee": charge_fee,
    "reverse_event": reverse_event,
    "set_mark": set_mark,
}
