"""Rejections as tables, in precedence order, for every command the ledger accepts.

Each case starts from the same business state (``BASE``: a fund with deposits, withdrawals,
holds, trades, orders and custody moves in every status), runs one command through the pure
``Processor`` and checks the exact outcome. A rejected command must leave the state byte for
byte as it was. *Peels* check precedence: a command with several problems at once is refused
for the one listed first in its decider's docstring; fixing that problem reveals the next.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from typing import Any

import pytest

from ledger.commands import COMMAND_TYPES
from ledger.errors import REJECTION_CODES
from ledger.money import format_units
from ledger.processing import ALL_DECIDERS, Processor
from ledger.results import CommandResult
from ledger.state import LedgerState

T_SETUP = datetime(2026, 3, 3, 12, 0, tzinfo=UTC)  # a Tuesday: T+1 from here is T0's date
T0 = T_SETUP + timedelta(days=1)  # when the tested command runs
LATER = T0 + timedelta(days=1)
EXPIRED = T0 - timedelta(hours=1)
AVAILABLE_USD = "103299.00"  # in c/a once BASE has run
ONE_CENT_MORE = "103299.01"


def iso(moment: datetime) -> str:
    return moment.isoformat()


class Clock:
    """The writer's clock, set by the test (deep-copied with the processor)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


Step = Mapping[str, Any] | datetime | Callable[[LedgerState], Mapping[str, Any]]


class Run:
    """A processor plus the positions of the commands it accepted, by key."""

    def __init__(self) -> None:
        self.clock = Clock(T_SETUP)
        self.processor = Processor("t", LedgerState(), clock=self.clock)
        self.positions: dict[str, int] = {}
        self.serial = 0

    @property
    def state(self) -> LedgerState:
        return self.processor.state

    def submit(self, command: Mapping[str, Any]) -> CommandResult:
        self.serial += 1
        body = {"key": f"auto-{self.serial}", **command}
        if isinstance(body.get("position"), str) and body["position"].startswith("@"):
            body["position"] = self.positions[body["position"][1:]]
        result = self.processor.process(body).result
        if result.accepted and result.positions:
            self.positions[body["key"]] = result.positions[0]
        return result

    def setup(self, steps: tuple[Step, ...]) -> None:
        for step in steps:
            if isinstance(step, datetime):
                self.clock.now = step
                continue
            command = step(self.state) if callable(step) else step
            result = self.submit(command)
            assert result.accepted, f"setup step {command} failed: {result}"


# --- commands that are accepted against BASE, overridden field by field by each case ------
DEFAULTS: dict[str, dict[str, Any]] = {
    "open_client": {"client": "d", "name": "Fund D", "sub_accounts": ["main"]},
    "open_sub_account": {"client": "c", "sub_account": "new"},
    "deposit_fiat": {
        "client": "c",
        "sub_account": "a",
        "asset": "HKD",
        "amount": "10.00",
        "bank_reference": "r-new",
    },
    "detect_crypto_deposit": {
        "client": "c",
        "sub_account": "a",
        "asset": "ETH",
        "amount": "0.000000000000000001",
        "chain": "eth",
        "tx_hash": "tx-new",
        "required_confirmations": 12,
    },
    "confirm_crypto_deposit": {"tx_hash": "tx-pending", "confirmations": 3},
    "reorg_crypto_deposit": {"tx_hash": "tx-pending"},
    "whitelist_destination": {
        "client": "c",
        "destination": "wallet-eth",
        "asset": "ETH",
        "address": "0xabc",
    },
    "request_withdrawal": {
        "withdrawal": "w-new",
        "client": "c",
        "sub_account": "a",
        "asset": "USD",
        "amount": "10.00",
        "destination": "bank-usd",
        "requester": "alice",
        "approvers": ["bob", "carol", "dave"],
        "approvals_required": 2,
        "expires_at": iso(LATER),
    },
    "approve_withdrawal": {"withdrawal": "w-pending", "approver": "carol"},
    "execute_withdrawal": {"withdrawal": "w-pending", "network_reference": "wire-1"},
    "reject_withdrawal": {"withdrawal": "w-pending", "by": "risk", "reason": "suspicious"},
    "expire_withdrawal": {"withdrawal": "w-due"},
    "transfer": {
        "client": "c",
        "from_sub_account": "a",
        "to_sub_account": "b",
        "asset": "USD",
        "amount": "10.00",
    },
    "place_hold": {
        "hold": "h-new",
        "client": "c",
        "sub_account": "a",
        "asset": "USD",
        "amount": "10.00",
        "payee": "counterparty:lp-1",
        "expires_at": iso(LATER),
    },
    "post_hold": {"hold": "h-open", "amount": "20.00"},
    "void_hold": {"hold": "h-open"},
    "expire_hold": {"hold": "h-due"},
    "charge_fee": {
        "client": "c",
        "sub_account": "a",
        "asset": "USD",
        "amount": "1.00",
        "fee_type": "custody",
    },
    "reverse_event": {"position": "@fee-2", "reason": "charged by mistake"},
    "set_mark": {"asset": "BTC", "quote": "USD", "price": "65000.00"},
    "set_fee_schedule": {"tier": "vip", "maker_bps": 0, "taker_bps": 5, "otc_spread_bps": 10},
    "set_client_tier": {"client": "c", "tier": "pro"},
    "set_holidays": {"currency": "HKD", "dates": ["2026-12-25"]},
    "request_quote": {
        "rfq": "rfq-new",
        "client": "c",
        "sub_account": "a",
        "side": "buy",
        "base": "BTC",
        "quote": "USD",
        "quantity": "0.01",
    },
    "submit_quote": {
        "rfq": "rfq-open",
        "quote_id": "q2",
        "provider": "lp-2",
        "price": "64000.00",
        "valid_until": iso(T0 + timedelta(hours=1)),
    },
    "accept_quote": {"rfq": "rfq-open", "quote_id": "q1"},
    "place_order": {
        "order": "o-new",
        "client": "c",
        "sub_account": "a",
        "side": "buy",
        "base": "BTC",
        "quote": "USD",
        "quantity": "0.01",
        "limit_price": "60000",
    },
    "cancel_order": {"order": "o-open"},
    "record_fill": {
        "order": "o-open",
        "fill": "f-new",
        "price": "59000",
        "quantity": "0.005",
        "liquidity": "maker",
        "counterparty": "lp-1",
    },
    "set_shared_book_limit": {"asset": "USD", "limit": "1000000.00"},
    "settle_trade": {"trade": "rfq-filled.q1"},
    "settle_net": {"counterparty": "lp-1", "value_date": T0.date().isoformat()},
    "fail_settlement": {"trade": "rfq-filled.q1", "reason": "the LP did not deliver"},
    "cancel_trade": {"trade": "rfq-filled.q1", "reason": "booked in error"},
    "move_custody": {
        "move": "mv-new",
        "asset": "BTC",
        "amount": "0.01",
        "from_wallet": "custody:hot:hot-1",
        "to_wallet": "custody:cold:cold-1",
        "requester": "ops1",
    },
    "approve_custody_move": {"move": "mv-pending", "approver": "ops2"},
    "check_trust_rules": {},
    "fund_insurance": {"asset": "BTC", "amount": "10", "policy": "policy-1"},
    "accrue_custody_fees": {"day": (T_SETUP - timedelta(days=1)).date().isoformat()},
}


def cmd(command_type: str, key: str | None = None, **fields: Any) -> dict[str, Any]:
    body = {"type": command_type, **DEFAULTS[command_type], **fields}
    return body if key is None else {"key": key, **body}


# --- the shared starting state --------------------------------------------------------------
def _withdrawal(key: str, amount: str, expires: datetime = LATER) -> dict[str, Any]:
    return cmd("request_withdrawal", key, withdrawal=key, amount=amount, expires_at=iso(expires))


def _hold(key: str, amount: str, expires: datetime = LATER) -> dict[str, Any]:
    return cmd(
        "place_hold", key, hold=key, amount=amount, payee="house:fees", expires_at=iso(expires)
    )


def _rfq(rfq: str, side: str, quantity: str, settlement: str) -> dict[str, Any]:
    return cmd("request_quote", rfq, rfq=rfq, side=side, quantity=quantity, settlement=settlement)


def _quote(rfq: str, quote_id: str, provider: str, price: str, valid: datetime) -> dict[str, Any]:
    return cmd(
        "submit_quote",
        rfq=rfq,
        quote_id=quote_id,
        provider=provider,
        price=price,
        valid_until=iso(valid),
    )


def _order(order: str, side: str, quantity: str, book: str = "local") -> dict[str, Any]:
    return cmd("place_order", order, order=order, side=side, quantity=quantity, book=book)


def _fill(order: str, fill: str, quantity: str, liquidity: str) -> dict[str, Any]:
    return cmd(
        "record_fill", order=order, fill=fill, price="60000", quantity=quantity, liquidity=liquidity
    )


def _detect(tx: str, amount: str) -> dict[str, Any]:
    return cmd(
        "detect_crypto_deposit",
        tx,
        asset="BTC",
        amount=amount,
        chain="btc",
        tx_hash=tx,
        required_confirmations=3,
    )


SOON = T_SETUP + timedelta(seconds=60)
STALE = T_SETUP + timedelta(seconds=5)
BASE: tuple[Step, ...] = (
    cmd("open_client", "open-c", client="c", name="Fund C", sub_accounts=["a", "b"]),
    cmd("deposit_fiat", "dep-usd", asset="USD", amount="100000.00", bank_reference="r1"),
    cmd(
        "deposit_fiat", "dep-b", sub_account="b", asset="USD", amount="100.00", bank_reference="r-b"
    ),
    cmd("transfer", "tr-b", from_sub_account="b", to_sub_account="a", amount="100.00"),
    cmd("whitelist_destination", destination="bank-usd", asset="USD", address="acct-1"),
    cmd("whitelist_destination", destination="wallet-btc", asset="BTC", address="bc1q-client"),
    _detect("tx-pending", "2"),
    _detect("tx-credited", "1.5"),
    cmd("confirm_crypto_deposit", tx_hash="tx-credited", confirmations=3),
    _detect("tx-cancelled", "1"),
    cmd("reorg_crypto_deposit", tx_hash="tx-cancelled"),
    _withdrawal("w-pending", "100.00"),
    cmd("approve_withdrawal", withdrawal="w-pending", approver="bob"),
    _withdrawal("w-executed", "100.00"),
    cmd("approve_withdrawal", withdrawal="w-executed", approver="bob"),
    cmd("approve_withdrawal", withdrawal="w-executed", approver="carol"),
    cmd("execute_withdrawal", withdrawal="w-executed"),
    _withdrawal("w-rejected", "10.00"),
    cmd("reject_withdrawal", withdrawal="w-rejected"),
    _withdrawal("w-expired", "10.00", EXPIRED),
    _withdrawal("w-due", "10.00", EXPIRED),
    _hold("h-open", "50.00"),
    _hold("h-posted", "30.00"),
    cmd("post_hold", "post-h", hold="h-posted", amount=None),
    _hold("h-voided", "10.00"),
    cmd("void_hold", hold="h-voided"),
    _hold("h-expired", "10.00", EXPIRED),
    _hold("h-due", "10.00", EXPIRED),
    cmd("charge_fee", "fee-1", amount="5.00"),
    cmd("reverse_event", "rev-fee-1", position="@fee-1"),
    cmd("charge_fee", "fee-2", amount="1.00"),
    cmd("set_mark"),
    cmd("set_fee_schedule", tier="pro", maker_bps=10, taker_bps=20, otc_spread_bps=50),
    _order("o-open", "buy", "0.01"),
    _order("o-cancelled", "buy", "0.01"),
    cmd("cancel_order", order="o-cancelled"),
    _order("o-filled", "sell", "0.1"),
    _fill("o-filled", "f-1", "0.1", "maker"),
    _order("o-shared", "buy", "0.01", "shared"),
    _fill("o-shared", "f-2", "0.005", "taker"),
    _rfq("rfq-open", "buy", "0.01", "T+0"),
    _quote("rfq-open", "q1", "lp-1", "65000", T0 + timedelta(hours=1)),
    _quote("rfq-open", "q-stale", "lp-2", "64000", STALE),
    _rfq("rfq-filled", "buy", "0.01", "T+1"),
    _quote("rfq-filled", "q1", "lp-1", "65000", SOON),
    cmd("accept_quote", rfq="rfq-filled", quote_id="q1"),
    _rfq("rfq-sell", "sell", "0.1", "T+1"),
    _quote("rfq-sell", "q1", "lp-2", "64000", SOON),
    cmd("accept_quote", rfq="rfq-sell", quote_id="q1"),
    _rfq("rfq-cancel", "buy", "0.01", "T+1"),
    _quote("rfq-cancel", "q1", "lp-3", "65000", SOON),
    cmd("accept_quote", rfq="rfq-cancel", quote_id="q1"),
    cmd("cancel_trade", trade="rfq-cancel.q1"),
    _rfq("rfq-big", "buy", "100", "T+0"),
    _quote("rfq-big", "q1", "lp-1", "65000", T0 + timedelta(hours=1)),
    _quote("rfq-big", "q-stale", "lp-2", "64000", STALE),
    _rfq("rfq-stale", "buy", "0.01", "T+0"),
    _quote("rfq-stale", "q-stale", "lp-2", "64000", STALE),
    cmd("move_custody", move="mv-done", amount="0.1"),
    cmd("approve_custody_move", move="mv-done"),
    cmd("move_custody", move="mv-pending", amount="0.1"),
    cmd("set_shared_book_limit"),
    T0,
    cmd("expire_withdrawal", withdrawal="w-expired"),
    cmd("expire_hold", hold="h-expired"),
    _rfq("rfq-t1", "buy", "0.01", "T+1"),
    _quote("rfq-t1", "q1", "lp-1", "65000", T0 + timedelta(seconds=60)),
    cmd("accept_quote", rfq="rfq-t1", quote_id="q1"),
    _rfq("rfq-sell-t1", "sell", "0.01", "T+1"),
    _quote("rfq-sell-t1", "q1", "lp-2", "64000", T0 + timedelta(seconds=60)),
    cmd("accept_quote", rfq="rfq-sell-t1", quote_id="q1"),
)


def _empty_hot_wallet(state: LedgerState) -> dict[str, Any]:
    units = state.balance("custody:hot:hot-1", "BTC")
    return cmd("move_custody", move="mv-empty", amount=format_units(units, "BTC"))


# Moves every BTC out of the hot wallet, so that nothing can be delivered from it.
EMPTY_HOT: tuple[Step, ...] = (
    _empty_hot_wallet,
    cmd("approve_custody_move", move="mv-empty"),
)


# A buy order of 12 satoshis at 0.5 cent each reserves exactly the 6 cents of sub-account z.
# Its first fill (11 sat at 0.4 cent) costs 4 cents of the 6 it releases; the client spends
# the 2 cents given back. The last satoshi at the limit then costs 1 cent (cumulative
# rounding: 4.4 + 0.5 rounds to 5) but releases nothing (6.0 - 5.5 rounded up), so the
# missing cent must come from the available balance, which is empty.
ROUNDING_SURPLUS_SPENT: tuple[Step, ...] = (
    cmd("open_sub_account", sub_account="z"),
    cmd("deposit_fiat", sub_account="z", asset="USD", amount="0.06", bank_reference="z"),
    cmd("place_order", order="o-z", sub_account="z", quantity="0.00000012", limit_price="500000"),
    cmd("record_fill", order="o-z", fill="f-z1", price="400000", quantity="0.00000011"),
    cmd("charge_fee", sub_account="z", amount="0.02"),
)


@cache
def _base() -> Run:
    run = Run()
    run.setup(BASE)
    return run


def fresh(setup: tuple[Step, ...] = (), at: datetime = T0) -> Run:
    run = copy.deepcopy(_base())
    run.setup(setup)
    run.clock.now = at
    return run


# --- the tables ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    name: str
    command: dict[str, Any]
    code: str | None  # None: accepted
    setup: tuple[Step, ...] = ()
    at: datetime = T0
    event: str | None = None  # the first event type of an accepted case

    @property
    def type(self) -> str:
        return str(self.command["type"])


def ok(name: str, command: dict[str, Any], event: str, **kw: Any) -> Case:
    return Case(name, command, None, event=event, **kw)


def no(name: str, command: dict[str, Any], code: str, **kw: Any) -> Case:
    return Case(name, command, code, **kw)


BAD_AMOUNTS = ["0", "-1.00", "0.0000000000000000001", "1e5", "NaN", "abc", " 1", "+1", "١٢"]


def amount_cases(command_type: str, asset_field: str = "asset") -> list[Case]:
    return [
        no(
            f"unknown asset ({command_type})",
            cmd(command_type, **{asset_field: "XYZ"}),
            "unknown_asset",
        ),
        *(
            no(f"amount {text!r}", cmd(command_type, amount=text), "invalid_amount")
            for text in BAD_AMOUNTS
        ),
    ]


TABLES: dict[str, list[Case]] = {
    "open_client": [
        ok("a new client", cmd("open_client"), "client_opened"),
        no("repeated sub-account", cmd("open_client", sub_accounts=["x", "x"]), "invalid_command"),
        no("client exists", cmd("open_client", client="c"), "client_exists"),
    ],
    "open_sub_account": [
        ok("a new sub-account", cmd("open_sub_account"), "sub_account_opened"),
        no("unknown client", cmd("open_sub_account", client="zz"), "unknown_client"),
        no("sub-account exists", cmd("open_sub_account", sub_account="b"), "sub_account_exists"),
    ],
    "deposit_fiat": [
        ok("HKD deposit", cmd("deposit_fiat"), "fiat_deposited"),
        ok(
            "same reference, other currency",
            cmd("deposit_fiat", bank_reference="r1"),
            "fiat_deposited",
        ),
        *amount_cases("deposit_fiat"),
        no("crypto is not fiat", cmd("deposit_fiat", asset="BTC"), "asset_not_fiat"),
        no("stablecoin is not fiat", cmd("deposit_fiat", asset="USDC"), "asset_not_fiat"),
        no("unknown client", cmd("deposit_fiat", client="zz"), "unknown_client"),
        no("unknown sub-account", cmd("deposit_fiat", sub_account="zz"), "unknown_sub_account"),
        no(
            "reference seen",
            cmd("deposit_fiat", asset="USD", bank_reference="r1"),
            "duplicate_reference",
        ),
    ],
    "detect_crypto_deposit": [
        ok("one wei of ETH", cmd("detect_crypto_deposit"), "crypto_deposit_detected"),
        *amount_cases("detect_crypto_deposit"),
        no(
            "19 ETH decimals",
            cmd("detect_crypto_deposit", amount="0.0000000000000000001"),
            "invalid_amount",
        ),
        no(
            "fiat is not crypto",
            cmd("detect_crypto_deposit", asset="USD", amount="1"),
            "asset_not_crypto",
        ),
        no("unknown client", cmd("detect_crypto_deposit", client="zz"), "unknown_client"),
        no(
            "unknown sub-account",
            cmd("detect_crypto_deposit", sub_account="zz"),
            "unknown_sub_account",
        ),
        no("tx pending", cmd("detect_crypto_deposit", tx_hash="tx-pending"), "duplicate_reference"),
        no(
            "tx reorged",
            cmd("detect_crypto_deposit", tx_hash="tx-cancelled"),
            "duplicate_reference",
        ),
    ],
    "confirm_crypto_deposit": [
        ok("enough confirmations", cmd("confirm_crypto_deposit"), "crypto_deposit_credited"),
        ok(
            "not yet enough",
            cmd("confirm_crypto_deposit", confirmations=2),
            "crypto_deposit_confirmations",
        ),
        no("unknown tx", cmd("confirm_crypto_deposit", tx_hash="nope"), "unknown_deposit"),
        no("credited", cmd("confirm_crypto_deposit", tx_hash="tx-credited"), "deposit_not_pending"),
        no("reorged", cmd("confirm_crypto_deposit", tx_hash="tx-cancelled"), "deposit_not_pending"),
    ],
    "reorg_crypto_deposit": [
        ok("pending deposit", cmd("reorg_crypto_deposit"), "crypto_deposit_cancelled"),
        no("unknown tx", cmd("reorg_crypto_deposit", tx_hash="nope"), "unknown_deposit"),
        no("credited", cmd("reorg_crypto_deposit", tx_hash="tx-credited"), "deposit_not_pending"),
        no(
            "reorged twice",
            cmd("reorg_crypto_deposit", tx_hash="tx-cancelled"),
            "deposit_not_pending",
        ),
    ],
    "whitelist_destination": [
        ok("ETH wallet", cmd("whitelist_destination"), "destination_whitelisted"),
        no("unknown asset", cmd("whitelist_destination", asset="XYZ"), "unknown_asset"),
        no("unknown client", cmd("whitelist_destination", client="zz"), "unknown_client"),
        no("listed", cmd("whitelist_destination", destination="bank-usd"), "destination_exists"),
    ],
    "request_withdrawal": [
        ok("USD to the bank", cmd("request_withdrawal"), "withdrawal_requested"),
        *amount_cases("request_withdrawal"),
        no(
            "duplicate approvers",
            cmd("request_withdrawal", approvers=["bob", "bob"], approvals_required=1),
            "invalid_approval_policy",
        ),
        no(
            "requester approves",
            cmd("request_withdrawal", approvers=["alice", "bob"]),
            "invalid_approval_policy",
        ),
        no("M > N", cmd("request_withdrawal", approvals_required=4), "invalid_approval_policy"),
        no("unknown client", cmd("request_withdrawal", client="zz"), "unknown_client"),
        no(
            "unknown sub-account",
            cmd("request_withdrawal", sub_account="zz"),
            "unknown_sub_account",
        ),
        no("id taken", cmd("request_withdrawal", withdrawal="w-executed"), "withdrawal_exists"),
        no("not listed", cmd("request_withdrawal", destination="nope"), "unknown_destination"),
        no(
            "BTC wallet for USD",
            cmd("request_withdrawal", destination="wallet-btc"),
            "destination_asset_mismatch",
        ),
        no("too much", cmd("request_withdrawal", amount="1000000.00"), "insufficient_funds"),
        no(
            "held money is not available",
            cmd("request_withdrawal", sub_account="b", amount="0.01"),
            "insufficient_funds",
        ),
    ],
    "approve_withdrawal": [
        ok("second approver", cmd("approve_withdrawal"), "withdrawal_approved"),
        no("unknown", cmd("approve_withdrawal", withdrawal="nope"), "unknown_withdrawal"),
        no(
            "executed", cmd("approve_withdrawal", withdrawal="w-executed"), "withdrawal_not_pending"
        ),
        no(
            "rejected", cmd("approve_withdrawal", withdrawal="w-rejected"), "withdrawal_not_pending"
        ),
        no("expired", cmd("approve_withdrawal", withdrawal="w-expired"), "withdrawal_not_pending"),
        no("past expiry", cmd("approve_withdrawal", withdrawal="w-due"), "withdrawal_expired"),
        no("requester", cmd("approve_withdrawal", approver="alice"), "approver_is_requester"),
        no("not an approver", cmd("approve_withdrawal", approver="eve"), "approver_not_eligible"),
        no("twice", cmd("approve_withdrawal", approver="bob"), "already_approved"),
    ],
    "execute_withdrawal": [
        ok(
            "two of three approved",
            cmd("execute_withdrawal"),
            "withdrawal_executed",
            setup=(cmd("approve_withdrawal", withdrawal="w-pending", approver="carol"),),
        ),
        no("unknown", cmd("execute_withdrawal", withdrawal="nope"), "unknown_withdrawal"),
        no(
            "executed", cmd("execute_withdrawal", withdrawal="w-executed"), "withdrawal_not_pending"
        ),
        no(
            "rejected", cmd("execute_withdrawal", withdrawal="w-rejected"), "withdrawal_not_pending"
        ),
        no("one of two", cmd("execute_withdrawal"), "not_enough_approvals"),
        no("past expiry", cmd("execute_withdrawal", withdrawal="w-due"), "withdrawal_expired"),
        no(
            "hot wallet empty",
            cmd("execute_withdrawal", withdrawal="w-btc"),
            "insufficient_wallet_balance",
            setup=(
                # The deposit landed in hot-2; the withdrawal pays out of hot-1, now empty.
                cmd(
                    "detect_crypto_deposit",
                    tx_hash="tx-h2",
                    asset="BTC",
                    amount="1",
                    wallet="hot-2",
                ),
                cmd("confirm_crypto_deposit", tx_hash="tx-h2", confirmations=12),
                *EMPTY_HOT,
                cmd(
                    "request_withdrawal",
                    withdrawal="w-btc",
                    asset="BTC",
                    amount="1",
                    destination="wallet-btc",
                ),
                cmd("approve_withdrawal", withdrawal="w-btc", approver="bob"),
                cmd("approve_withdrawal", withdrawal="w-btc", approver="carol"),
            ),
        ),
    ],
    "reject_withdrawal": [
        ok("pending", cmd("reject_withdrawal"), "withdrawal_rejected"),
        no("unknown", cmd("reject_withdrawal", withdrawal="nope"), "unknown_withdrawal"),
        no("executed", cmd("reject_withdrawal", withdrawal="w-executed"), "withdrawal_not_pending"),
        no("rejected", cmd("reject_withdrawal", withdrawal="w-rejected"), "withdrawal_not_pending"),
        no("expired", cmd("reject_withdrawal", withdrawal="w-expired"), "withdrawal_not_pending"),
    ],
    "expire_withdrawal": [
        ok("past expiry", cmd("expire_withdrawal"), "withdrawal_expired"),
        ok(
            "exactly at expiry",
            cmd("expire_withdrawal", withdrawal="w-pending"),
            "withdrawal_expired",
            at=LATER,
        ),
        no("unknown", cmd("expire_withdrawal", withdrawal="nope"), "unknown_withdrawal"),
        no("executed", cmd("expire_withdrawal", withdrawal="w-executed"), "withdrawal_not_pending"),
        no("expired", cmd("expire_withdrawal", withdrawal="w-expired"), "withdrawal_not_pending"),
        no("before expiry", cmd("expire_withdrawal", withdrawal="w-pending"), "not_expired"),
        no(
            "a microsecond early",
            cmd("expire_withdrawal", withdrawal="w-pending"),
            "not_expired",
            at=LATER - timedelta(microseconds=1),
        ),
    ],
    "transfer": [
        ok("a to b", cmd("transfer"), "transferred"),
        ok(
            "everything available",
            cmd("transfer", from_sub_account="a", amount=AVAILABLE_USD),
            "transferred",
        ),
        *amount_cases("transfer"),
        no("same sub-account", cmd("transfer", to_sub_account="a"), "same_sub_account"),
        no("unknown client", cmd("transfer", client="zz"), "unknown_client"),
        no("unknown from", cmd("transfer", from_sub_account="zz"), "unknown_sub_account"),
        no("unknown to", cmd("transfer", to_sub_account="zz"), "unknown_sub_account"),
        no(
            "b is empty",
            cmd("transfer", from_sub_account="b", to_sub_account="a"),
            "insufficient_funds",
        ),
        no("one cent too much", cmd("transfer", amount=ONE_CENT_MORE), "insufficient_funds"),
        no(
            "no BTC in b",
            cmd(
                "transfer",
                from_sub_account="b",
                to_sub_account="a",
                asset="BTC",
                amount="0.00000001",
            ),
            "insufficient_funds",
        ),
    ],
    "place_hold": [
        ok("for a counterparty", cmd("place_hold"), "hold_placed"),
        *amount_cases("place_hold"),
        no("unknown client", cmd("place_hold", client="zz"), "unknown_client"),
        no("unknown sub-account", cmd("place_hold", sub_account="zz"), "unknown_sub_account"),
        no("id taken", cmd("place_hold", hold="h-posted"), "hold_exists"),
        no("too much", cmd("place_hold", amount="1000000.00"), "insufficient_funds"),
    ],
    "post_hold": [
        ok("partly", cmd("post_hold"), "hold_posted"),
        ok("in full", cmd("post_hold", amount=None), "hold_posted"),
        ok("exactly the hold", cmd("post_hold", amount="50.00"), "hold_posted"),
        no("unknown", cmd("post_hold", hold="nope"), "unknown_hold"),
        no("posted", cmd("post_hold", hold="h-posted"), "hold_not_open"),
        no("voided", cmd("post_hold", hold="h-voided"), "hold_not_open"),
        no("expired", cmd("post_hold", hold="h-expired"), "hold_not_open"),
        no("past expiry", cmd("post_hold", hold="h-due"), "hold_expired"),
        no("zero", cmd("post_hold", amount="0"), "invalid_amount"),
        no("three decimals", cmd("post_hold", amount="1.001"), "invalid_amount"),
        no("a cent more", cmd("post_hold", amount="50.01"), "hold_exceeded"),
    ],
    "void_hold": [
        ok("open", cmd("void_hold"), "hold_voided"),
        no("unknown", cmd("void_hold", hold="nope"), "unknown_hold"),
        no("posted", cmd("void_hold", hold="h-posted"), "hold_not_open"),
        no("voided", cmd("void_hold", hold="h-voided"), "hold_not_open"),
        no("expired", cmd("void_hold", hold="h-expired"), "hold_not_open"),
    ],
    "expire_hold": [
        ok("past expiry", cmd("expire_hold"), "hold_expired"),
        no("unknown", cmd("expire_hold", hold="nope"), "unknown_hold"),
        no("posted", cmd("expire_hold", hold="h-posted"), "hold_not_open"),
        no("before expiry", cmd("expire_hold", hold="h-open"), "not_expired"),
    ],
    "charge_fee": [
        ok("custody fee", cmd("charge_fee"), "fee_charged"),
        *amount_cases("charge_fee"),
        no("unknown client", cmd("charge_fee", client="zz"), "unknown_client"),
        no("unknown sub-account", cmd("charge_fee", sub_account="zz"), "unknown_sub_account"),
        no("b is empty", cmd("charge_fee", sub_account="b"), "insufficient_funds"),
    ],
    "reverse_event": [
        ok("a fee", cmd("reverse_event"), "event_reversed"),
        ok("a deposit", cmd("reverse_event", position="@dep-usd"), "event_reversed"),
        ok("a transfer", cmd("reverse_event", position="@tr-b"), "event_reversed"),
        no("beyond the head", cmd("reverse_event", position=10_000), "unknown_event"),
        no("client opened", cmd("reverse_event", position="@open-c"), "not_reversible"),
        no("a reversal", cmd("reverse_event", position="@rev-fee-1"), "not_reversible"),
        no("twice", cmd("reverse_event", position="@fee-1"), "already_reversed"),
        no("money moved on", cmd("reverse_event", position="@dep-b"), "insufficient_funds"),
    ],
    "set_mark": [
        ok("BTC in USD", cmd("set_mark"), "mark_set"),
        no("unknown asset", cmd("set_mark", asset="XYZ"), "unknown_asset"),
        no("unknown quote", cmd("set_mark", quote="XYZ"), "unknown_asset"),
        no("price too fine", cmd("set_mark", price="65000.001"), "invalid_amount"),
        no("price zero", cmd("set_mark", price="0"), "invalid_amount"),
    ],
    "set_fee_schedule": [
        ok("a tier", cmd("set_fee_schedule"), "fee_schedule_set"),
        ok("replace a tier", cmd("set_fee_schedule", tier="pro"), "fee_schedule_set"),
    ],
    "set_client_tier": [
        ok("pro", cmd("set_client_tier"), "client_tier_set"),
        ok(
            "standard needs no schedule", cmd("set_client_tier", tier="standard"), "client_tier_set"
        ),
        no("unknown client", cmd("set_client_tier", client="zz"), "unknown_client"),
        no("unknown tier", cmd("set_client_tier", tier="gold"), "unknown_tier"),
    ],
    "set_holidays": [
        ok("HKD", cmd("set_holidays"), "holidays_set"),
        no("unknown currency", cmd("set_holidays", currency="XYZ"), "unknown_asset"),
        no("BTC has no holidays", cmd("set_holidays", currency="BTC"), "asset_not_fiat"),
    ],
    "request_quote": [
        ok("buy BTC", cmd("request_quote"), "rfq_requested"),
        no("unknown base", cmd("request_quote", base="XYZ"), "unknown_asset"),
        no("unknown quote", cmd("request_quote", quote="XYZ"), "unknown_asset"),
        no("same assets", cmd("request_quote", base="USD"), "invalid_pair"),
        no("9 BTC decimals", cmd("request_quote", quantity="0.000000001"), "invalid_amount"),
        no("zero", cmd("request_quote", quantity="0"), "invalid_amount"),
        no("unknown client", cmd("request_quote", client="zz"), "unknown_client"),
        no("unknown sub-account", cmd("request_quote", sub_account="zz"), "unknown_sub_account"),
        no("id taken", cmd("request_quote", rfq="rfq-filled"), "rfq_exists"),
    ],
    "submit_quote": [
        ok("a second quote", cmd("submit_quote"), "quote_submitted"),
        no("unknown rfq", cmd("submit_quote", rfq="nope"), "unknown_rfq"),
        no("rfq filled", cmd("submit_quote", rfq="rfq-filled"), "quote_used"),
        no("price zero", cmd("submit_quote", price="0"), "invalid_price"),
        no("price with exponent", cmd("submit_quote", price="6.5e4"), "invalid_price"),
        no("negative price", cmd("submit_quote", price="-1"), "invalid_price"),
        no("quote id taken", cmd("submit_quote", quote_id="q1"), "quote_exists"),
        no("born expired", cmd("submit_quote", valid_until=iso(T0)), "quote_expired"),
    ],
    "accept_quote": [
        ok("named quote", cmd("accept_quote"), "trade_booked"),
        ok("best valid quote", cmd("accept_quote", quote_id=None), "trade_booked"),
        no("unknown rfq", cmd("accept_quote", rfq="nope"), "unknown_rfq"),
        no("rfq filled", cmd("accept_quote", rfq="rfq-filled"), "quote_used"),
        no("unknown quote", cmd("accept_quote", quote_id="nope"), "unknown_quote"),
        no("stale quote", cmd("accept_quote", quote_id="q-stale"), "quote_expired"),
        no("no valid quote", cmd("accept_quote", rfq="rfq-stale", quote_id=None), "quote_expired"),
        no("expired by now", cmd("accept_quote"), "quote_expired", at=T0 + timedelta(hours=1)),
        no(
            "worth less than a cent",
            cmd("accept_quote", rfq="rfq-tiny"),
            "invalid_amount",
            setup=(
                _rfq("rfq-tiny", "buy", "0.00000001", "T+0"),
                _quote("rfq-tiny", "q1", "lp-1", "65000", LATER),
            ),
        ),
        no("100 BTC", cmd("accept_quote", rfq="rfq-big"), "insufficient_funds"),
        no(
            "T+0 sale, hot wallet empty",
            cmd("accept_quote", rfq="rfq-t0-sell"),
            "insufficient_wallet_balance",
            setup=(
                *EMPTY_HOT,
                _rfq("rfq-t0-sell", "sell", "0.1", "T+0"),
                _quote("rfq-t0-sell", "q1", "lp-1", "64000", LATER),
            ),
        ),
    ],
    "place_order": [
        ok("buy BTC", cmd("place_order"), "order_placed"),
        ok(
            "sell BTC on the shared book",
            cmd("place_order", side="sell", book="shared"),
            "order_placed",
        ),
        no("unknown base", cmd("place_order", base="XYZ"), "unknown_asset"),
        no("same assets", cmd("place_order", quote="BTC"), "invalid_pair"),
        no("quantity too fine", cmd("place_order", quantity="0.000000001"), "invalid_amount"),
        no("limit zero", cmd("place_order", limit_price="0"), "invalid_price"),
        no("limit garbage", cmd("place_order", limit_price="1,000"), "invalid_price"),
        no("unknown client", cmd("place_order", client="zz"), "unknown_client"),
        no("unknown sub-account", cmd("place_order", sub_account="zz"), "unknown_sub_account"),
        no("id taken", cmd("place_order", order="o-cancelled"), "order_exists"),
        no("cannot pre-fund", cmd("place_order", quantity="100"), "insufficient_funds"),
        no("b has no BTC", cmd("place_order", sub_account="b", side="sell"), "insufficient_funds"),
    ],
    "cancel_order": [
        ok("open", cmd("cancel_order"), "order_cancelled"),
        ok("partly filled", cmd("cancel_order", order="o-shared"), "order_cancelled"),
        no("unknown", cmd("cancel_order", order="nope"), "unknown_order"),
        no("cancelled", cmd("cancel_order", order="o-cancelled"), "order_not_open"),
        no("filled", cmd("cancel_order", order="o-filled"), "order_not_open"),
    ],
    "record_fill": [
        ok("partial, price improved", cmd("record_fill"), "trade_booked"),
        ok("the rest", cmd("record_fill", quantity="0.01", price="60000"), "trade_booked"),
        no("unknown order", cmd("record_fill", order="nope"), "unknown_order"),
        no("order filled", cmd("record_fill", order="o-filled"), "order_not_open"),
        no("order cancelled", cmd("record_fill", order="o-cancelled"), "order_not_open"),
        no("fill id taken", cmd("record_fill", fill="f-2"), "fill_exists"),
        no("price garbage", cmd("record_fill", price="cheap"), "invalid_price"),
        no("quantity too fine", cmd("record_fill", quantity="0.000000001"), "invalid_amount"),
        no("more than ordered", cmd("record_fill", quantity="0.011"), "fill_exceeds_order"),
        no(
            "more than left",
            cmd("record_fill", order="o-shared", quantity="0.006"),
            "fill_exceeds_order",
        ),
        no("above a buy limit", cmd("record_fill", price="60000.01"), "price_beyond_limit"),
        no(
            "rounding surplus spent",
            cmd("record_fill", order="o-z", fill="f-z2", price="500000", quantity="0.00000001"),
            "insufficient_funds",
            setup=ROUNDING_SURPLUS_SPENT,
        ),
        no(
            "local sale, hot wallet empty",
            cmd("record_fill", order="o-sell", fill="f-sell", price="60000", quantity="0.01"),
            "insufficient_wallet_balance",
            setup=(_order("o-sell", "sell", "0.01"), *EMPTY_HOT),
        ),
        no(
            "shared book cap",
            cmd("record_fill", order="o-shared"),
            "unsettled_limit_exceeded",
            setup=(cmd("set_shared_book_limit", limit="300.00"),),
        ),
    ],
    "accrue_custody_fees": [
        ok("a day that is over", cmd("accrue_custody_fees"), "custody_fees_accrued"),
        no("today", cmd("accrue_custody_fees", day=T0.date().isoformat()), "accrual_not_due"),
        no(
            "twice",
            cmd("accrue_custody_fees"),
            "already_accrued",
            setup=(cmd("accrue_custody_fees"),),
        ),
    ],
    "fund_insurance": [
        ok("BTC cover", cmd("fund_insurance"), "insurance_funded"),
        no("unknown asset", cmd("fund_insurance", asset="XYZ"), "unknown_asset"),
        no("too fine", cmd("fund_insurance", amount="0.000000001"), "invalid_amount"),
        no("zero", cmd("fund_insurance", amount="0"), "invalid_amount"),
    ],
    "set_shared_book_limit": [
        ok("USD cap", cmd("set_shared_book_limit"), "shared_book_limit_set"),
        no("unknown asset", cmd("set_shared_book_limit", asset="XYZ"), "unknown_asset"),
        no("too fine", cmd("set_shared_book_limit", limit="1.001"), "invalid_amount"),
        no("zero", cmd("set_shared_book_limit", limit="0"), "invalid_amount"),
    ],
    "settle_trade": [
        ok("due T+1 buy", cmd("settle_trade"), "trade_settled"),
        ok("due shared-book fill", cmd("settle_trade", trade="o-shared.f-2"), "trade_settled"),
        no("unknown", cmd("settle_trade", trade="nope"), "unknown_trade"),
        no("settled at once (T+0)", cmd("settle_trade", trade="o-filled.f-1"), "trade_not_open"),
        no("cancelled", cmd("settle_trade", trade="rfq-cancel.q1"), "trade_not_open"),
        no("value date tomorrow", cmd("settle_trade", trade="rfq-t1.q1"), "settlement_not_due"),
        no(
            "hot wallet cannot deliver",
            cmd("settle_trade", trade="rfq-sell.q1"),
            "insufficient_wallet_balance",
            setup=EMPTY_HOT,
        ),
    ],
    "settle_net": [
        ok("lp-1 netted", cmd("settle_net"), "trades_net_settled"),
        no(
            "value date tomorrow",
            cmd("settle_net", value_date=(T0.date() + timedelta(days=1)).isoformat()),
            "settlement_not_due",
        ),
        no("nobody", cmd("settle_net", counterparty="nobody"), "no_trades_due"),
        no(
            "only future trades",
            cmd("settle_net", value_date=T_SETUP.date().isoformat(), counterparty="lp-2"),
            "no_trades_due",
        ),
        no(
            "hot wallet cannot deliver",
            cmd("settle_net", counterparty="lp-2"),
            "insufficient_wallet_balance",
            setup=EMPTY_HOT,
        ),
    ],
    "fail_settlement": [
        ok("first fail", cmd("fail_settlement"), "settlement_failed"),
        no("unknown", cmd("fail_settlement", trade="nope"), "unknown_trade"),
        no("settled", cmd("fail_settlement", trade="o-filled.f-1"), "trade_not_open"),
    ],
    "cancel_trade": [
        ok("open trade", cmd("cancel_trade"), "trade_cancelled"),
        no("unknown", cmd("cancel_trade", trade="nope"), "unknown_trade"),
        no("cancelled", cmd("cancel_trade", trade="rfq-cancel.q1"), "trade_not_open"),
        no("settled", cmd("cancel_trade", trade="o-filled.f-1"), "trade_not_open"),
    ],
    "move_custody": [
        ok("hot to cold", cmd("move_custody"), "custody_move_requested"),
        *amount_cases("move_custody"),
        no("USD is not in wallets", cmd("move_custody", asset="USD"), "asset_not_crypto"),
        no(
            "same wallet",
            cmd("move_custody", to_wallet="custody:hot:hot-1"),
            "same_wallet",
        ),
        no("id taken", cmd("move_custody", move="mv-done"), "move_exists"),
        no(
            "more than the wallet",
            cmd("move_custody", amount="1000"),
            "insufficient_wallet_balance",
        ),
        no(
            "empty cold wallet",
            cmd("move_custody", from_wallet="custody:cold:cold-2", to_wallet="custody:hot:hot-1"),
            "insufficient_wallet_balance",
        ),
    ],
    "approve_custody_move": [
        ok("checker", cmd("approve_custody_move"), "custody_moved"),
        no("unknown", cmd("approve_custody_move", move="nope"), "unknown_move"),
        no("executed", cmd("approve_custody_move", move="mv-done"), "move_not_pending"),
        no("maker approves", cmd("approve_custody_move", approver="ops1"), "approver_is_requester"),
        no(
            "wallet emptied since",
            cmd("approve_custody_move"),
            "insufficient_wallet_balance",
            setup=EMPTY_HOT,
        ),
    ],
    "check_trust_rules": [
        ok("now", cmd("check_trust_rules"), "trust_rules_checked"),
    ],
}

ALL_CASES = [case for cases in TABLES.values() for case in cases]


@dataclass(frozen=True)
class Peel:
    """A command with several problems: each step names the winning code, then fixes it."""

    command: dict[str, Any]
    steps: tuple[tuple[str, dict[str, Any]], ...]
    setup: tuple[Step, ...] = ()
    accepted_at_end: bool = True

    @property
    def type(self) -> str:
        return str(self.command["type"])


PEELS: list[Peel] = [
    Peel(
        cmd("open_client", client="c", sub_accounts=["x", "x"]),
        (("invalid_command", {"sub_accounts": ["x"]}), ("client_exists", {"client": "d"})),
    ),
    Peel(
        cmd(
            "deposit_fiat",
            asset="XYZ",
            amount="abc",
            client="zz",
            sub_account="zz",
            bank_reference="r1",
        ),
        (
            ("unknown_asset", {"asset": "BTC"}),
            ("invalid_amount", {"amount": "1.00"}),
            ("asset_not_fiat", {"asset": "USD"}),
            ("unknown_client", {"client": "c"}),
            ("unknown_sub_account", {"sub_account": "a"}),
            ("duplicate_reference", {"bank_reference": "r9"}),
        ),
    ),
    Peel(
        cmd(
            "detect_crypto_deposit",
            asset="XYZ",
            amount="abc",
            client="zz",
            sub_account="zz",
            tx_hash="tx-pending",
        ),
        (
            ("unknown_asset", {"asset": "USD"}),
            ("invalid_amount", {"amount": "1"}),
            ("asset_not_crypto", {"asset": "BTC"}),
            ("unknown_client", {"client": "c"}),
            ("unknown_sub_account", {"sub_account": "a"}),
            ("duplicate_reference", {"tx_hash": "tx-9"}),
        ),
    ),
    Peel(
        cmd("whitelist_destination", asset="XYZ", client="zz", destination="bank-usd"),
        (
            ("unknown_asset", {"asset": "USD"}),
            ("unknown_client", {"client": "c"}),
            ("destination_exists", {"destination": "bank-2"}),
        ),
    ),
    Peel(
        cmd(
            "request_withdrawal",
            asset="XYZ",
            amount="abc",
            approvers=["alice", "bob"],
            client="zz",
            sub_account="zz",
            withdrawal="w-pending",
            destination="nope",
        ),
        (
            ("unknown_asset", {"asset": "USD"}),
            ("invalid_amount", {"amount": "1000000.00"}),
            ("invalid_approval_policy", {"approvers": ["bob", "carol"]}),
            ("unknown_client", {"client": "c"}),
            ("unknown_sub_account", {"sub_account": "a"}),
            ("withdrawal_exists", {"withdrawal": "w-new"}),
            ("unknown_destination", {"destination": "wallet-btc"}),
            ("destination_asset_mismatch", {"destination": "bank-usd"}),
            ("insufficient_funds", {"amount": "10.00"}),
        ),
    ),
    Peel(
        cmd("approve_withdrawal", withdrawal="nope", approver="alice"),
        (
            ("unknown_withdrawal", {"withdrawal": "w-executed"}),
            ("withdrawal_not_pending", {"withdrawal": "w-due"}),
            ("withdrawal_expired", {"withdrawal": "w-pending"}),
            ("approver_is_requester", {"approver": "eve"}),
            ("approver_not_eligible", {"approver": "bob"}),
            ("already_approved", {"approver": "carol"}),
        ),
    ),
    Peel(
        cmd("execute_withdrawal", withdrawal="nope"),
        (
            ("unknown_withdrawal", {"withdrawal": "w-rejected"}),  # rejected with no approvals
            ("withdrawal_not_pending", {"withdrawal": "w-due"}),
            ("withdrawal_expired", {"withdrawal": "w-pending"}),
            ("not_enough_approvals", {}),
        ),
        accepted_at_end=False,
    ),
    Peel(
        cmd("expire_withdrawal", withdrawal="nope"),
        (
            ("unknown_withdrawal", {"withdrawal": "w-executed"}),  # executed, not yet due
            ("withdrawal_not_pending", {"withdrawal": "w-pending"}),
            ("not_expired", {"withdrawal": "w-due"}),
        ),
    ),
    Peel(
        cmd("transfer", asset="XYZ", amount="abc", to_sub_account="a", client="zz"),
        (
            ("unknown_asset", {"asset": "USD"}),
            ("invalid_amount", {"amount": "1000000.00"}),
            ("same_sub_account", {"to_sub_account": "zz"}),
            ("unknown_client", {"client": "c"}),
            ("unknown_sub_account", {"to_sub_account": "b"}),
            ("insufficient_funds", {"amount": "10.00"}),
        ),
    ),
    Peel(
        cmd("place_hold", asset="XYZ", amount="abc", client="zz", sub_account="zz", hold="h-open"),
        (
            ("unknown_asset", {"asset": "USD"}),
            ("invalid_amount", {"amount": "1000000.00"}),
            ("unknown_client", {"client": "c"}),
            ("unknown_sub_account", {"sub_account": "a"}),
            ("hold_exists", {"hold": "h-new"}),
            ("insufficient_funds", {"amount": "10.00"}),
        ),
    ),
    Peel(
        cmd("post_hold", hold="nope", amount="abc"),
        (
            ("unknown_hold", {"hold": "h-posted"}),
            ("hold_not_open", {"hold": "h-due"}),
            ("hold_expired", {"hold": "h-open"}),
            ("invalid_amount", {"amount": "50.01"}),
            ("hold_exceeded", {"amount": "50.00"}),
        ),
    ),
    Peel(
        cmd("expire_hold", hold="nope"),
        (
            ("unknown_hold", {"hold": "h-posted"}),  # posted, and not yet due
            ("hold_not_open", {"hold": "h-open"}),
            ("not_expired", {"hold": "h-due"}),
        ),
    ),
    Peel(
        cmd("charge_fee", asset="XYZ", amount="abc", client="zz", sub_account="zz"),
        (
            ("unknown_asset", {"asset": "USD"}),
            ("invalid_amount", {"amount": "1000000.00"}),
            ("unknown_client", {"client": "c"}),
            ("unknown_sub_account", {"sub_account": "a"}),
            ("insufficient_funds", {"amount": "1.00"}),
        ),
    ),
    Peel(
        # Sub-account b ends empty. dep-x was reversed already, and reversing it again would
        # also overdraw b: already_reversed wins. dep-y was not reversed, but its money moved
        # on: insufficient_funds. fee-2 can be reversed.
        cmd("reverse_event", position=10_000),
        (
            ("unknown_event", {"position": "@open-c"}),
            ("not_reversible", {"position": "@dep-x"}),
            ("already_reversed", {"position": "@dep-y"}),
            ("insufficient_funds", {"position": "@fee-2"}),
        ),
        setup=(
            cmd("deposit_fiat", "dep-x", sub_account="b", asset="USD", bank_reference="x"),
            cmd("reverse_event", "rev-x", position="@dep-x"),
            cmd("deposit_fiat", "dep-y", sub_account="b", asset="USD", bank_reference="y"),
            cmd("transfer", from_sub_account="b", to_sub_account="a"),
        ),
    ),
    Peel(
        cmd("set_mark", asset="XYZ", price="abc"),
        (("unknown_asset", {"asset": "ETH"}), ("invalid_amount", {"price": "3000.00"})),
    ),
    Peel(
        cmd("set_client_tier", client="zz", tier="gold"),
        (("unknown_client", {"client": "c"}), ("unknown_tier", {"tier": "pro"})),
    ),
    Peel(
        cmd(
            "request_quote",
            base="XYZ",
            quantity="0.000000001",
            client="zz",
            sub_account="zz",
            rfq="rfq-open",
        ),
        (
            ("unknown_asset", {"base": "USD"}),
            ("invalid_pair", {"base": "BTC"}),
            ("invalid_amount", {"quantity": "0.01"}),
            ("unknown_client", {"client": "c"}),
            ("unknown_sub_account", {"sub_account": "a"}),
            ("rfq_exists", {"rfq": "rfq-new"}),
        ),
    ),
    Peel(
        cmd("submit_quote", rfq="nope", price="0", quote_id="q1", valid_until=iso(T0)),
        (
            ("unknown_rfq", {"rfq": "rfq-filled"}),
            ("quote_used", {"rfq": "rfq-open"}),
            ("invalid_price", {"price": "64000"}),
            ("quote_exists", {"quote_id": "q2"}),
            ("quote_expired", {"valid_until": iso(LATER)}),
        ),
    ),
    Peel(
        cmd("accept_quote", rfq="nope", quote_id="nope"),
        (
            ("unknown_rfq", {"rfq": "rfq-filled"}),
            ("quote_used", {"rfq": "rfq-big"}),
            ("unknown_quote", {"quote_id": "q-stale"}),
            ("quote_expired", {"quote_id": "q1"}),
            ("insufficient_funds", {"rfq": "rfq-open"}),
        ),
    ),
    Peel(
        cmd(
            "place_order",
            base="XYZ",
            quote="BTC",
            quantity="abc",
            limit_price="abc",
            client="zz",
            sub_account="zz",
            order="o-open",
        ),
        (
            ("unknown_asset", {"base": "BTC"}),
            ("invalid_pair", {"quote": "USD"}),
            ("invalid_amount", {"quantity": "100"}),
            ("invalid_price", {"limit_price": "60000"}),
            ("unknown_client", {"client": "c"}),
            ("unknown_sub_account", {"sub_account": "a"}),
            ("order_exists", {"order": "o-new"}),
            ("insufficient_funds", {"quantity": "0.01"}),
        ),
    ),
    Peel(
        cmd("record_fill", order="nope", fill="f-1", price="abc", quantity="abc"),
        (
            ("unknown_order", {"order": "o-filled"}),
            ("order_not_open", {"order": "o-open"}),
            ("fill_exists", {"fill": "f-new"}),
            ("invalid_price", {"price": "61000"}),
            ("invalid_amount", {"quantity": "0.02"}),
            ("fill_exceeds_order", {"quantity": "0.005"}),
            ("price_beyond_limit", {"price": "59000"}),
        ),
    ),
    Peel(
        cmd("record_fill", order="o-shared", price="61000"),
        (
            ("price_beyond_limit", {"price": "60000"}),
            ("unsettled_limit_exceeded", {"quantity": "0.001"}),
        ),
        setup=(cmd("set_shared_book_limit", limit="360.00"),),
    ),
    Peel(
        cmd("fund_insurance", asset="XYZ", amount="abc"),
        (("unknown_asset", {"asset": "BTC"}), ("invalid_amount", {"amount": "10"})),
    ),
    Peel(
        cmd("set_shared_book_limit", asset="XYZ", limit="abc"),
        (("unknown_asset", {"asset": "USD"}), ("invalid_amount", {"limit": "5000.00"})),
    ),
    Peel(
        cmd("settle_trade", trade="nope"),
        (
            ("unknown_trade", {"trade": "o-filled.f-1"}),
            ("trade_not_open", {"trade": "rfq-sell-t1.q1"}),  # sells BTC, not due yet
            ("settlement_not_due", {"trade": "rfq-sell.q1"}),
            ("insufficient_wallet_balance", {"trade": "rfq-filled.q1"}),  # a buy brings BTC in
        ),
        setup=EMPTY_HOT,
    ),
    Peel(
        cmd(
            "settle_net",
            value_date=(T0.date() + timedelta(days=1)).isoformat(),
            counterparty="nobody",
        ),
        (
            ("settlement_not_due", {"value_date": T0.date().isoformat()}),
            ("no_trades_due", {"counterparty": "lp-2"}),
            ("insufficient_wallet_balance", {"counterparty": "lp-1"}),
        ),
        setup=EMPTY_HOT,
    ),
    Peel(
        cmd(
            "move_custody",
            asset="XYZ",
            amount="abc",
            to_wallet="custody:hot:hot-1",
            move="mv-pending",
        ),
        (
            ("unknown_asset", {"asset": "USD"}),
            ("invalid_amount", {"amount": "1000"}),
            ("asset_not_crypto", {"asset": "BTC"}),
            ("same_wallet", {"to_wallet": "custody:cold:cold-1"}),
            ("move_exists", {"move": "mv-new"}),
            ("insufficient_wallet_balance", {"amount": "0.01"}),
        ),
    ),
    Peel(
        cmd("approve_custody_move", move="nope", approver="ops1"),
        (
            ("unknown_move", {"move": "mv-done"}),
            ("move_not_pending", {"move": "mv-pending"}),
            ("approver_is_requester", {"approver": "ops2"}),
            ("insufficient_wallet_balance", {}),
        ),
        setup=EMPTY_HOT,
        accepted_at_end=False,
    ),
]

# Commands whose decider codes can never apply together: each one presupposes that the one
# before it did not (an unknown deposit cannot also be "not pending"), or there are fewer
# than two. Their precedence over schema errors is covered by test_schema_beats_state.
EXCLUSIVE = {
    "open_sub_account",
    "confirm_crypto_deposit",
    "reorg_crypto_deposit",
    "reject_withdrawal",
    "void_hold",
    "set_holidays",
    "fail_settlement",
    "cancel_trade",
    "cancel_order",
    "set_fee_schedule",
    "check_trust_rules",
    "accrue_custody_fees",
}


def docstring_codes(command_type: str) -> list[str]:
    """The ``Rejections:`` list of a decider's docstring, in order."""
    doc = ALL_DECIDERS[command_type].__doc__ or ""
    match = re.search(r"Rejections:(.*?)(?:\.\s|\.$)", doc, flags=re.DOTALL)
    assert match is not None, f"{command_type}: the docstring has no 'Rejections:' list"
    text = re.sub(r"\([^)]*\)", "", match.group(1))
    if text.strip().startswith("none"):
        return []
    return [code.strip() for code in text.split(",")]


def peel_codes(peel: Peel) -> list[str]:
    return [code for code, _ in peel.steps]


# --- table tests --------------------------------------------------------------------------
def test_every_command_type_has_a_table_and_a_decider() -> None:
    assert set(TABLES) == set(COMMAND_TYPES)
    assert set(ALL_DECIDERS) == set(COMMAND_TYPES)
    for command_type, cases in TABLES.items():
        assert all(case.type == command_type for case in cases), command_type
        assert any(case.code is None for case in cases), f"{command_type}: no accepted case"


def test_base_state_is_what_the_cases_assume() -> None:
    state = _base().state
    assert state.withdrawals["w-pending"]["approved_by"] == ["bob"]
    assert {w: v["status"] for w, v in state.withdrawals.items()} == {
        "w-pending": "pending",
        "w-executed": "executed",
        "w-rejected": "rejected",
        "w-expired": "expired",
        "w-due": "pending",
    }
    assert {h: v["status"] for h, v in state.holds.items()} == {
        "h-open": "open",
        "h-posted": "posted",
        "h-voided": "voided",
        "h-expired": "expired",
        "h-due": "open",
    }
    trades = state.trading.trades
    assert {t: v["status"] for t, v in trades.items()} == {
        "o-filled.f-1": "settled",
        "o-shared.f-2": "open",
        "rfq-filled.q1": "open",
        "rfq-sell.q1": "open",
        "rfq-cancel.q1": "cancelled",
        "rfq-t1.q1": "open",
        "rfq-sell-t1.q1": "open",
    }
    assert trades["rfq-filled.q1"]["value_date"] == T0.date().isoformat()
    assert trades["rfq-t1.q1"]["value_date"] == (T0.date() + timedelta(days=1)).isoformat()
    # Available USD in c/a, which the "everything available" transfer cases depend on.
    assert format_units(-state.balance("client:c:a:available", "USD"), "USD") == AVAILABLE_USD


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: f"{c.type}: {c.name}")
def test_case(case: Case) -> None:
    run = fresh(case.setup, case.at)
    before = run.state.to_snapshot()
    result = run.submit(case.command)
    if case.code is None:
        assert result.accepted, result
        assert result.event_types[0] == case.event
        assert run.state.position == result.positions[-1] > 0
    else:
        assert (result.status, result.code) == ("rejected", case.code), result.message
        assert result.message
        # A rejection changes nothing: not a balance, not a status, not the head.
        assert run.state.to_snapshot() == before


@pytest.mark.parametrize("command_type", sorted(TABLES))
def test_table_codes_equal_the_docstring(command_type: str) -> None:
    listed = docstring_codes(command_type)
    assert all(code in REJECTION_CODES for code in listed), listed
    assert len(set(listed)) == len(listed), f"{command_type}: a code is listed twice"
    covered = {case.code for case in TABLES[command_type] if case.code is not None}
    covered |= {code for peel in PEELS if peel.type == command_type for code in peel_codes(peel)}
    assert covered == set(listed)


@pytest.mark.parametrize("peel", PEELS, ids=lambda p: p.type)
def test_first_listed_rejection_wins(peel: Peel) -> None:
    listed = docstring_codes(peel.type)
    codes = peel_codes(peel)
    # The steps go down the docstring's list: each winner is listed before the next one.
    assert [listed.index(code) for code in codes] == sorted(listed.index(code) for code in codes)
    assert len(codes) >= 2
    run = fresh(peel.setup)
    command = dict(peel.command)
    for code, fix in peel.steps:
        result = run.submit(command)
        assert result.code == code, f"{command}: {result}"
        command |= fix
    if peel.accepted_at_end:
        result = run.submit(command)
        assert result.accepted, result


def test_every_command_with_competing_codes_has_a_precedence_case() -> None:
    peeled = {peel.type for peel in PEELS}
    assert peeled | EXCLUSIVE == set(COMMAND_TYPES)
    assert not peeled & EXCLUSIVE


def test_every_rejection_code_is_produced_by_a_case() -> None:
    produced = {case.code for case in ALL_CASES if case.code is not None}
    produced |= {code for peel in PEELS for code in peel_codes(peel)}
    # These two come from outside the deciders and are tested below through the Processor.
    outside = {"idempotency_conflict", "invalid_command"}
    assert produced | outside == set(REJECTION_CODES)


# --- schema: invalid_command, before any state is read ------------------------------------
SCHEMA_CASES: list[tuple[str, Any, str]] = [
    ("not a mapping", ["open_client"], "command"),
    ("none", None, "command"),
    ("no type", {"key": "k"}, "command"),
    ("unknown type", {"key": "k", "type": "mint_money"}, "command"),
    ("no key", cmd("transfer"), "key"),
    ("empty key", cmd("transfer", key=""), "key"),
    ("key too long", cmd("transfer", key="k" * 201), "key"),
    ("missing amount", {k: v for k, v in cmd("transfer", "k").items() if k != "amount"}, "amount"),
    ("extra field", cmd("transfer", "k", memo="hi"), "memo"),
    ("amount as a number", cmd("transfer", "k", amount=10), "amount"),
    ("amount as a float", cmd("transfer", "k", amount=0.1), "amount"),
    ("client with a colon", cmd("transfer", "k", client="c:x"), "client"),
    ("client with a space", cmd("open_client", "k", client="fund d"), "client"),
    ("client too long", cmd("open_client", "k", client="c" * 65), "client"),
    ("no sub-accounts", cmd("open_client", "k", sub_accounts=[]), "sub_accounts"),
    ("lowercase asset", cmd("deposit_fiat", "k", asset="usd"), "asset"),
    (
        "zero confirmations needed",
        cmd("detect_crypto_deposit", "k", required_confirmations=0),
        "required_confirmations",
    ),
    ("M is zero", cmd("request_withdrawal", "k", approvals_required=0), "approvals_required"),
    ("expiry not a time", cmd("request_withdrawal", "k", expires_at="tomorrow"), "expires_at"),
    ("payee is a client", cmd("place_hold", "k", payee="client:c:b:available"), "payee"),
    ("unknown fee type", cmd("charge_fee", "k", fee_type="bonus"), "fee_type"),
    ("position zero", cmd("reverse_event", "k", position=0), "position"),
    ("bps above 100%", cmd("set_fee_schedule", "k", taker_bps=10_001), "taker_bps"),
    ("bad side", cmd("request_quote", "k", side="short"), "side"),
    ("bad settlement", cmd("request_quote", "k", settlement="T+2"), "settlement"),
    ("bad wallet", cmd("move_custody", "k", to_wallet="custody:warm:w"), "to_wallet"),
    ("bad date", cmd("settle_net", "k", value_date="someday"), "value_date"),
]


@pytest.mark.parametrize(
    ("name", "raw", "field_name"), SCHEMA_CASES, ids=[c[0] for c in SCHEMA_CASES]
)
def test_invalid_command_names_the_field(name: str, raw: Any, field_name: str) -> None:
    run = fresh()
    before = run.state.to_snapshot()
    result = run.processor.process(raw).result
    assert (result.status, result.code) == ("rejected", "invalid_command")
    assert result.message is not None
    assert field_name in result.message
    assert run.state.to_snapshot() == before


@pytest.mark.parametrize("command_type", sorted(COMMAND_TYPES))
def test_schema_beats_state(command_type: str) -> None:
    """An unknown field is refused for every command, whatever the state would say."""
    run = fresh()
    result = run.submit(cmd(command_type, surprise="!"))
    assert result.code == "invalid_command"
    assert result.message is not None
    assert "surprise" in result.message


@pytest.mark.parametrize("command_type", sorted(COMMAND_TYPES))
def test_every_default_command_is_accepted_or_tabled(command_type: str) -> None:
    # Guards the fixtures: DEFAULTS must be schema-valid, else every case would test parsing.
    result = fresh().submit(cmd(command_type))
    assert result.code != "invalid_command", result.message


# --- idempotency, through the Processor ---------------------------------------------------
def test_retry_of_an_accepted_command_replays_its_result() -> None:
    run = fresh()
    first = run.submit(cmd("transfer", "k-1"))
    after = run.state.to_snapshot()
    again = run.submit(cmd("transfer", "k-1"))
    assert first.accepted
    assert again.replayed
    assert not first.replayed
    assert again == first  # same positions, same event types
    assert run.state.to_snapshot() == after


def test_retry_of_a_rejected_command_replays_the_rejection() -> None:
    run = fresh()
    first = run.submit(cmd("transfer", "k-1", amount="1000000.00"))
    assert first.code == "insufficient_funds"
    # Even once the funds are there, the retry gets the first answer: it is the same command.
    run.submit(cmd("deposit_fiat", asset="USD", amount="1000000.00"))
    again = run.submit(cmd("transfer", "k-1", amount="1000000.00"))
    assert again.replayed
    assert again.code == "insufficient_funds"


def test_same_key_other_content_is_a_conflict_that_changes_nothing() -> None:
    run = fresh()
    first = run.submit(cmd("transfer", "k-1"))
    before = run.state.to_snapshot()
    conflict = run.submit(cmd("transfer", "k-1", amount="10.01"))
    assert (conflict.status, conflict.code) == ("rejected", "idempotency_conflict")
    assert conflict.message is not None
    assert "key" in conflict.message
    other_type = run.submit(cmd("charge_fee", "k-1"))
    assert other_type.code == "idempotency_conflict"
    assert run.state.to_snapshot() == before
    # The conflict is not recorded: the original still replays.
    assert run.submit(cmd("transfer", "k-1")) == first


def test_defaults_written_out_are_the_same_command() -> None:
    run = fresh()
    first = run.submit(cmd("deposit_fiat", "k-1"))
    again = run.submit(cmd("deposit_fiat", "k-1", bank="trust-bank-1"))
    assert again.replayed
    assert again == first


def test_a_schema_failure_is_not_recorded() -> None:
    run = fresh()
    assert run.submit(cmd("transfer", "k-1", amount=10)).code == "invalid_command"
    assert run.submit(cmd("transfer", "k-1")).accepted


# --- accepted commands: their effect on balances --------------------------------------------
def available(run: Run, sub: str, asset_code: str, client: str = "c") -> int:
    return -run.state.balance(f"client:{client}:{sub}:available", asset_code)


def held(run: Run, sub: str, asset_code: str, client: str = "c") -> int:
    return -run.state.balance(f"client:{client}:{sub}:held", asset_code)


def test_post_part_of_a_hold_pays_the_payee_and_releases_the_rest() -> None:
    run = fresh()
    free, reserved = available(run, "a", "USD"), held(run, "a", "USD")
    assert run.submit(cmd("post_hold", amount="20.00")).accepted
    assert held(run, "a", "USD") == reserved - 5_000
    assert available(run, "a", "USD") == free + 3_000
    assert run.state.balance("house:fees", "USD") == -(3_000 + 2_000 + 100)  # h-posted, fee-2


def test_reversing_a_posted_hold_returns_the_money_to_available() -> None:
    """A reversal of a posted hold must give the client back spendable money.

    The hold is closed (posted), so nothing could ever release money put back into ``held``.
    """
    run = fresh()
    free, reserved = available(run, "a", "USD"), held(run, "a", "USD")
    result = run.submit(cmd("reverse_event", position="@post-h"))
    assert result.accepted, result
    assert available(run, "a", "USD") == free + 3_000
    assert held(run, "a", "USD") == reserved


def test_expiry_returns_held_money() -> None:
    run = fresh()
    free = available(run, "a", "USD")
    assert run.submit(cmd("expire_withdrawal")).accepted
    assert run.submit(cmd("expire_hold")).accepted
    assert available(run, "a", "USD") == free + 2_000


# --- defects found while writing these tables (see the report) --------------------------------
def _no_custody_wallet_is_negative(state: LedgerState) -> None:
    negative = {k: v for k, v in state.balances.items() if k[0].startswith("custody:") and v < 0}
    assert not negative, f"a wallet holds less than nothing: {negative}"


@pytest.mark.parametrize(
    ("command_type", "field_name"),
    [
        ("request_withdrawal", "expires_at"),
        ("place_hold", "expires_at"),
        ("submit_quote", "valid_until"),
    ],
)
def test_an_expiry_without_a_time_zone_is_refused(command_type: str, field_name: str) -> None:
    # A naive time cannot be compared with the writer's UTC clock: accepting it crashes the
    # writer later (TypeError in expire_*), or at once (submit_quote).
    run = fresh()
    result = run.submit(cmd(command_type, **{field_name: "2026-03-05T12:00:00"}))
    assert result.code == "invalid_command"
    assert result.message is not None
    assert field_name in result.message


@pytest.mark.parametrize("payee", ["house:bonus_pool", "counterparty:-lp", "counterparty:.lp"])
def test_a_hold_payee_must_be_a_real_account(payee: str) -> None:
    result = fresh().submit(cmd("place_hold", payee=payee))
    assert result.code == "invalid_command", result


def test_a_withdrawal_never_overdraws_the_hot_wallet() -> None:
    # The deposit landed in hot-2; the withdrawal pays out of hot-1, which is empty.
    run = fresh(
        (
            cmd("detect_crypto_deposit", tx_hash="tx-h2", asset="BTC", amount="1", wallet="hot-2"),
            cmd("confirm_crypto_deposit", tx_hash="tx-h2", confirmations=12),
            *EMPTY_HOT,
            cmd(
                "request_withdrawal",
                withdrawal="w-btc",
                asset="BTC",
                amount="1",
                destination="wallet-btc",
            ),
            cmd("approve_withdrawal", withdrawal="w-btc", approver="bob"),
            cmd("approve_withdrawal", withdrawal="w-btc", approver="carol"),
        )
    )
    # Refusing is fine (there is no code for it yet); overdrawing a wallet is not.
    run.submit(cmd("execute_withdrawal", withdrawal="w-btc"))
    _no_custody_wallet_is_negative(run.state)


def test_a_t0_trade_never_overdraws_the_hot_wallet() -> None:
    run = fresh(
        (
            *EMPTY_HOT,
            _rfq("rfq-t0-sell", "sell", "0.1", "T+0"),
            _quote("rfq-t0-sell", "q1", "lp-1", "64000", T0 + timedelta(hours=1)),
        )
    )
    run.submit(cmd("accept_quote", rfq="rfq-t0-sell", quote_id="q1"))
    _no_custody_wallet_is_negative(run.state)


def test_a_booked_trade_can_be_settled_by_its_id() -> None:
    rfq, quote = "r" * 40, "q" * 40
    run = fresh(
        (
            _rfq(rfq, "buy", "0.01", "T+1"),
            _quote(rfq, quote, "lp-1", "65000", T0 + timedelta(hours=1)),
            cmd("accept_quote", rfq=rfq, quote_id=quote),
        ),
        at=LATER,
    )
    (trade,) = (t for t in run.state.trading.trades if t.startswith(rfq))
    assert run.submit(cmd("settle_trade", trade=trade)).accepted


def test_quote_validity_compares_instants_not_text() -> None:
    hong_kong = timezone(timedelta(hours=8))
    valid_until = (T0 + timedelta(seconds=5)).astimezone(hong_kong)
    run = fresh((_quote("rfq-open", "q-hk", "lp-9", "60000", valid_until),))
    run.clock.now = T0 + timedelta(seconds=10)
    result = run.submit(cmd("accept_quote", quote_id="q-hk"))
    assert result.code == "quote_expired", result
