"""Trading rejections as a table: every documented code, in precedence order, changes nothing.

One world (clients, quotes, trades in every status, orders, custody moves) is built once; each
case runs one command against a fresh copy of it. Each trading decider's docstring lists its
rejection codes in precedence order: the table must cover exactly those codes, and a command
with two faults must be refused with the earlier code. A double fault is proved to be one by
a companion command that keeps only the later fault and gets the later code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from typing import Any

import pytest

from ledger.decide_trading import TRADING_DECIDERS
from ledger.processing import Processor
from ledger.results import CommandResult
from ledger.state import LedgerState

MONDAY = datetime(2026, 11, 16, 2, 0, tzinfo=UTC)
WEDNESDAY = datetime(2026, 11, 18, 2, 0, tzinfo=UTC)
NOW = WEDNESDAY + timedelta(seconds=10)  # when the cases run: the short quotes have expired
HOT, COLD, COLD2 = "custody:hot:hot-1", "custody:cold:cold-1", "custody:cold:cold-2"
LATER = (NOW + timedelta(hours=1)).isoformat()
PAST = (NOW - timedelta(seconds=1)).isoformat()


class World:
    """A processor with a clock the builder moves; keys are minted per command."""

    def __init__(self, state: LedgerState, now: datetime) -> None:
        self.now = now
        self.processor = Processor("rej", state, clock=lambda: self.now)
        self.count = 0

    def run(self, command_type: str, **fields: Any) -> CommandResult:
        self.count += 1
        command = {"type": command_type, "key": f"{command_type}-{self.count}", **fields}
        return self.processor.process(command).result

    def ok(self, command_type: str, **fields: Any) -> None:
        result = self.run(command_type, **fields)
        assert result.accepted, (command_type, fields, result)

    def rfq(self, rfq: str, client: str, side: str, quantity: str, settlement: str) -> None:
        self.ok(
            "request_quote",
            rfq=rfq,
            client=client,
            sub_account="main",
            side=side,
            base="BTC",
            quote="USD",
            quantity=quantity,
            settlement=settlement,
        )

    def quote(self, rfq: str, quote_id: str, provider: str, seconds: float) -> None:
        valid_until = (self.now + timedelta(seconds=seconds)).isoformat()
        self.ok(
            "submit_quote",
            rfq=rfq,
            quote_id=quote_id,
            provider=provider,
            price="60000",
            valid_until=valid_until,
        )

    def trade(self, name: str, side: str, quantity: str, settlement: str, provider: str) -> None:
        """An accepted one-quote RFQ: trade ``rfq-<name>.q-<name>``."""
        self.rfq(f"rfq-{name}", "fund-a", side, quantity, settlement)
        self.quote(f"rfq-{name}", f"q-{name}", provider, 3600)
        self.ok("accept_quote", rfq=f"rfq-{name}")

    def order(self, order: str, quantity: str, book: str = "local") -> None:
        self.ok(
            "place_order",
            order=order,
            client="fund-a",
            sub_account="main",
            side="buy",
            base="BTC",
            quote="USD",
            quantity=quantity,
            limit_price="60000",
            book=book,
        )

    def move(self, move: str, amount: str, source: str, target: str) -> None:
        self.ok(
            "move_custody",
            move=move,
            asset="BTC",
            amount=amount,
            from_wallet=source,
            to_wallet=target,
            requester="alice",
        )


@cache
def world_snapshot() -> bytes:
    """Every object a case can point at, in the status the case needs."""
    w = World(LedgerState(), MONDAY)
    w.ok("set_fee_schedule", tier="pro", maker_bps=2, taker_bps=5, otc_spread_bps=10)
    w.ok("open_client", client="fund-a", name="Fund A", sub_accounts=["main", "alt"])
    w.ok("open_client", client="fund-b", name="Fund B", sub_accounts=["main"])
    w.ok("set_client_tier", client="fund-a", tier="pro")
    w.ok(
        "deposit_fiat",
        client="fund-a",
        sub_account="main",
        asset="USD",
        amount="1000000",
        bank_reference="r-a",
    )
    w.ok(
        "deposit_fiat",
        client="fund-b",
        sub_account="main",
        asset="USD",
        amount="100",
        bank_reference="r-b",
    )
    w.ok(
        "detect_crypto_deposit",
        client="fund-a",
        sub_account="main",
        asset="BTC",
        amount="20",
        chain="btc",
        tx_hash="tx-a",
        required_confirmations=1,
    )
    w.ok("confirm_crypto_deposit", tx_hash="tx-a", confirmations=1)
    w.ok("set_shared_book_limit", asset="USD", limit="100000")
    # Monday's T+1 trades are due on Wednesday: a purchase from lp-a, a sale to lp-b.
    w.trade("due", "buy", "1", "T+1", "lp-a")
    w.trade("dry", "sell", "2", "T+1", "lp-b")

    w.now = WEDNESDAY
    w.ok("accrue_custody_fees", day="2026-11-16")
    w.trade("done", "buy", "0.1", "T+0", "lp-c")  # settled at once
    w.trade("future", "buy", "0.1", "T+1", "lp-a")  # due Thursday
    w.trade("cancelled", "buy", "0.1", "T+1", "lp-a")
    w.ok("cancel_trade", trade="rfq-cancelled.q-cancelled", reason="client withdrew")
    w.trade("dry-future", "sell", "1", "T+1", "lp-b")  # due Thursday, hot wallet short
    # Sweep to cold: 20.1 BTC hot -> 0.6 left, too little to deliver the 2 BTC sale.
    w.move("m-done", "19.5", HOT, COLD)
    w.ok("approve_custody_move", move="m-done", approver="bob")
    w.move("m-pending", "0.1", HOT, COLD)
    # Two requests for all of cold-1; once the first runs, the second has nothing to move.
    w.move("m-pre-a", "19.5", COLD, COLD2)
    w.move("m-pre-b", "19.5", COLD, COLD2)
    w.ok("approve_custody_move", move="m-pre-a", approver="bob")

    w.rfq("rfq-open", "fund-a", "buy", "1", "T+1")
    w.quote("rfq-open", "q-live", "lp-a", 3600)
    w.quote("rfq-open", "q-stale", "lp-b", 1)
    w.rfq("rfq-stale", "fund-a", "buy", "1", "T+0")
    w.quote("rfq-stale", "q-old", "lp-a", 1)
    w.rfq("rfq-big", "fund-b", "buy", "1", "T+0")  # fund-b holds 100 USD
    w.quote("rfq-big", "q-big-live", "lp-a", 3600)
    w.quote("rfq-big", "q-big-old", "lp-b", 1)

    w.order("o-open", "2")
    w.order("o-cancelled", "1")
    w.ok("cancel_order", order="o-cancelled")
    w.order("o-filled", "0.1")
    w.ok(
        "record_fill",
        order="o-filled",
        fill="f-done",
        price="60000",
        quantity="0.1",
        liquidity="maker",
        counterparty="local-book",
    )
    w.order("o-shared", "5", book="shared")

    # Worth less than a cent: 1 satoshi at 60,000 USD.
    w.rfq("rfq-dust", "fund-a", "buy", "0.00000001", "T+0")
    w.quote("rfq-dust", "q-dust", "lp-a", 3600)
    # A T+0 sale of 1 BTC while the hot wallet holds 0.6.
    w.rfq("rfq-t0sell", "fund-a", "sell", "1", "T+0")
    w.quote("rfq-t0sell", "q-t0sell", "lp-b", 3600)
    w.ok(
        "place_order",
        order="o-sell",
        client="fund-a",
        sub_account="main",
        side="sell",
        base="BTC",
        quote="USD",
        quantity="1",
        limit_price="60000",
    )
    # fund-c's 4-satoshi order at 500,000 USD/BTC holds 0.02. A first satoshi filled at
    # 300,000 costs nothing yet (0.3 cents, rounded cumulatively) but frees a cent at the
    # limit; fund-c spends that cent. The next satoshi at 500,000 brings the running cost to
    # 0.8 -> 1 cent while freeing nothing more: it needs a cent fund-c no longer has.
    w.ok("open_client", client="fund-c", name="Fund C", sub_accounts=["main"])
    w.ok(
        "deposit_fiat",
        client="fund-c",
        sub_account="main",
        asset="USD",
        amount="0.02",
        bank_reference="r-c",
    )
    w.ok(
        "place_order",
        order="o-dust",
        client="fund-c",
        sub_account="main",
        side="buy",
        base="BTC",
        quote="USD",
        quantity="0.00000004",
        limit_price="500000",
    )
    w.ok(
        "record_fill",
        order="o-dust",
        fill="f-dust-1",
        price="300000",
        quantity="0.00000001",
        liquidity="maker",
        counterparty="local-book",
    )
    w.ok(
        "charge_fee",
        client="fund-c",
        sub_account="main",
        asset="USD",
        amount="0.01",
        fee_type="other",
    )
    return w.processor.state.to_snapshot()


def fresh_world() -> World:
    return World(LedgerState.from_snapshot(world_snapshot()), NOW)


# A valid command of each trading type against the world; cases override fields of it.
VALID: dict[str, dict[str, Any]] = {
    "set_fee_schedule": {"tier": "vip", "maker_bps": 1, "taker_bps": 2, "otc_spread_bps": 3},
    "set_client_tier": {"client": "fund-b", "tier": "pro"},
    "set_holidays": {"currency": "HKD", "dates": ["2026-12-25"]},
    "request_quote": {
        "rfq": "rfq-new",
        "client": "fund-a",
        "sub_account": "main",
        "side": "buy",
        "base": "BTC",
        "quote": "USD",
        "quantity": "1",
        "settlement": "T+1",
    },
    "submit_quote": {
        "rfq": "rfq-open",
        "quote_id": "q-new",
        "provider": "lp-c",
        "price": "60100",
        "valid_until": LATER,
    },
    "accept_quote": {"rfq": "rfq-open", "quote_id": "q-live"},
    "settle_trade": {"trade": "rfq-due.q-due"},
    "settle_net": {"counterparty": "lp-a", "value_date": "2026-11-18"},
    "fail_settlement": {"trade": "rfq-due.q-due", "reason": "cut-off missed"},
    "cancel_trade": {"trade": "rfq-due.q-due", "reason": "client withdrew"},
    "place_order": {
        "order": "o-new",
        "client": "fund-a",
        "sub_account": "main",
        "side": "buy",
        "base": "BTC",
        "quote": "USD",
        "quantity": "1",
        "limit_price": "60000",
    },
    "cancel_order": {"order": "o-open"},
    "record_fill": {
        "order": "o-open",
        "fill": "f-new",
        "price": "60000",
        "quantity": "1",
        "liquidity": "maker",
        "counterparty": "local-book",
    },
    "set_shared_book_limit": {"asset": "USD", "limit": "500000"},
    "fund_insurance": {"asset": "BTC", "amount": "10", "policy": "policy-1"},
    "accrue_custody_fees": {"day": "2026-11-17"},
    "move_custody": {
        "move": "m-new",
        "asset": "BTC",
        "amount": "0.1",
        "from_wallet": HOT,
        "to_wallet": COLD,
        "requester": "alice",
    },
    "approve_custody_move": {"move": "m-pending", "approver": "bob"},
    "check_trust_rules": {},
}


@dataclass(frozen=True)
class Case:
    command: str
    code: str
    fields: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {**VALID[self.command], **self.fields}


def case(command: str, code: str, **fields: Any) -> Case:
    return Case(command, code, fields)


# Rows in each decider's documented precedence order.
CASES = [
    case("set_client_tier", "unknown_client", client="ghost"),
    case("set_client_tier", "unknown_tier", tier="gold"),
    case("set_holidays", "unknown_asset", currency="XYZ"),
    case("set_holidays", "asset_not_fiat", currency="BTC"),
    case("request_quote", "unknown_asset", base="DOGE"),
    case("request_quote", "unknown_asset", quote="DOGE"),
    case("request_quote", "invalid_pair", quote="BTC"),
    case("request_quote", "invalid_amount", quantity="0"),
    case("request_quote", "invalid_amount", quantity="-1"),
    case("request_quote", "invalid_amount", quantity="0.123456789"),
    case("request_quote", "invalid_amount", quantity="1e3"),
    case("request_quote", "unknown_client", client="ghost"),
    case("request_quote", "unknown_sub_account", sub_account="nope"),
    case("request_quote", "rfq_exists", rfq="rfq-open"),
    case("request_quote", "rfq_exists", rfq="rfq-done"),
    case("submit_quote", "unknown_rfq", rfq="ghost"),
    case("submit_quote", "quote_used", rfq="rfq-done"),
    case("submit_quote", "invalid_price", price="0"),
    case("submit_quote", "invalid_price", price="-60000"),
    case("submit_quote", "invalid_price", price="6e4"),
    case("submit_quote", "invalid_price", price="NaN"),
    case("submit_quote", "quote_exists", quote_id="q-live"),
    case("submit_quote", "quote_exists", quote_id="q-stale"),
    case("submit_quote", "quote_expired", valid_until=PAST),
    case("submit_quote", "quote_expired", valid_until=NOW.isoformat()),
    case("accept_quote", "unknown_rfq", rfq="ghost"),
    case("accept_quote", "quote_used", rfq="rfq-done", quote_id="q-done"),
    case("accept_quote", "quote_used", rfq="rfq-done", quote_id=None),
    case("accept_quote", "unknown_quote", quote_id="q-none"),
    case("accept_quote", "unknown_quote", rfq="rfq-open", quote_id="q-old"),  # another rfq's
    case("accept_quote", "quote_expired", quote_id="q-stale"),
    case("accept_quote", "quote_expired", rfq="rfq-stale", quote_id=None),
    case("accept_quote", "invalid_amount", rfq="rfq-dust", quote_id="q-dust"),
    case("accept_quote", "insufficient_funds", rfq="rfq-big", quote_id="q-big-live"),
    case("accept_quote", "insufficient_funds", rfq="rfq-big", quote_id=None),
    case("accept_quote", "insufficient_wallet_balance", rfq="rfq-t0sell", quote_id="q-t0sell"),
    case("settle_trade", "unknown_trade", trade="ghost"),
    case("settle_trade", "trade_not_open", trade="rfq-done.q-done"),
    case("settle_trade", "trade_not_open", trade="rfq-cancelled.q-cancelled"),
    case("settle_trade", "settlement_not_due", trade="rfq-future.q-future"),
    case("settle_trade", "insufficient_wallet_balance", trade="rfq-dry.q-dry"),
    case("settle_net", "settlement_not_due", value_date="2026-11-19"),
    case("settle_net", "no_trades_due", counterparty="lp-z"),
    case("settle_net", "no_trades_due", value_date="2026-11-16"),  # lp-a's are due later
    case("settle_net", "no_trades_due", counterparty="lp-c"),  # its only trade is settled
    case("settle_net", "insufficient_wallet_balance", counterparty="lp-b"),
    case("fail_settlement", "unknown_trade", trade="ghost"),
    case("fail_settlement", "trade_not_open", trade="rfq-done.q-done"),
    case("fail_settlement", "trade_not_open", trade="rfq-cancelled.q-cancelled"),
    case("cancel_trade", "unknown_trade", trade="ghost"),
    case("cancel_trade", "trade_not_open", trade="rfq-done.q-done"),
    case("cancel_trade", "trade_not_open", trade="rfq-cancelled.q-cancelled"),
    case("place_order", "unknown_asset", base="DOGE"),
    case("place_order", "invalid_pair", quote="BTC"),
    case("place_order", "invalid_amount", quantity="0"),
    case("place_order", "invalid_amount", quantity="0.000000001"),
    case("place_order", "invalid_price", limit_price="0"),
    case("place_order", "invalid_price", limit_price="60,000"),
    case("place_order", "unknown_client", client="ghost"),
    case("place_order", "unknown_sub_account", sub_account="nope"),
    case("place_order", "order_exists", order="o-open"),
    case("place_order", "order_exists", order="o-cancelled"),
    case("place_order", "insufficient_funds", quantity="17"),  # 1,020,000 + fee
    case("place_order", "insufficient_funds", side="sell", quantity="18"),  # 16.1 available
    case("place_order", "insufficient_funds", sub_account="alt"),
    case("cancel_order", "unknown_order", order="ghost"),
    case("cancel_order", "order_not_open", order="o-cancelled"),
    case("cancel_order", "order_not_open", order="o-filled"),
    case("record_fill", "unknown_order", order="ghost"),
    case("record_fill", "order_not_open", order="o-cancelled"),
    case("record_fill", "order_not_open", order="o-filled"),
    case("record_fill", "fill_exists", fill="f-done"),
    case("record_fill", "invalid_price", price="0"),
    case("record_fill", "invalid_amount", quantity="0"),
    case("record_fill", "invalid_amount", quantity="0.000000001"),
    case("record_fill", "fill_exceeds_order", quantity="2.00000001"),
    case("record_fill", "price_beyond_limit", price="60000.01"),
    case("record_fill", "unsettled_limit_exceeded", order="o-shared", quantity="1.7"),
    case(
        "record_fill",
        "insufficient_funds",
        order="o-dust",
        price="500000",
        quantity="0.00000001",
    ),
    case("record_fill", "insufficient_wallet_balance", order="o-sell", quantity="1"),
    case("accrue_custody_fees", "accrual_not_due", day="2026-11-18"),
    case("accrue_custody_fees", "already_accrued", day="2026-11-16"),
    case("fund_insurance", "unknown_asset", asset="XYZ"),
    case("fund_insurance", "invalid_amount", amount="0"),
    case("set_shared_book_limit", "unknown_asset", asset="XYZ"),
    case("set_shared_book_limit", "invalid_amount", limit="0"),
    case("set_shared_book_limit", "invalid_amount", limit="1.001"),
    case("move_custody", "unknown_asset", asset="DOGE"),
    case("move_custody", "invalid_amount", amount="0"),
    case("move_custody", "asset_not_crypto", asset="USD"),
    case("move_custody", "same_wallet", to_wallet=HOT),
    case("move_custody", "move_exists", move="m-done"),
    case("move_custody", "move_exists", move="m-pending"),
    case("move_custody", "insufficient_wallet_balance", amount="0.70000002"),  # hot: 0.70000001
    case("move_custody", "insufficient_wallet_balance", from_wallet=COLD, to_wallet=HOT),
    case("approve_custody_move", "unknown_move", move="ghost"),
    case("approve_custody_move", "move_not_pending", move="m-done"),
    case("approve_custody_move", "approver_is_requester", approver="alice"),
    case("approve_custody_move", "insufficient_wallet_balance", move="m-pre-b"),
]


@dataclass(frozen=True)
class DoubleFault:
    """``both`` has two faults; ``later`` keeps only the one whose code comes later."""

    command: str
    first: str
    later_code: str
    both: dict[str, Any]
    later: dict[str, Any]


DOUBLE_FAULTS = [
    DoubleFault(
        "set_client_tier",
        "unknown_client",
        "unknown_tier",
        {"client": "ghost", "tier": "gold"},
        {"tier": "gold"},
    ),
    DoubleFault(
        "request_quote",
        "unknown_asset",
        "invalid_pair",
        {"base": "DOGE", "quote": "DOGE"},
        {"base": "BTC", "quote": "BTC"},
    ),
    DoubleFault(
        "request_quote",
        "invalid_pair",
        "invalid_amount",
        {"quote": "BTC", "quantity": "0"},
        {"quantity": "0"},
    ),
    DoubleFault(
        "request_quote",
        "invalid_amount",
        "unknown_client",
        {"quantity": "0", "client": "ghost"},
        {"client": "ghost"},
    ),
    DoubleFault(
        "request_quote",
        "unknown_sub_account",
        "rfq_exists",
        {"sub_account": "nope", "rfq": "rfq-open"},
        {"rfq": "rfq-open"},
    ),
    DoubleFault(
        "submit_quote",
        "quote_used",
        "invalid_price",
        {"rfq": "rfq-done", "price": "0"},
        {"price": "0"},
    ),
    DoubleFault(
        "submit_quote",
        "invalid_price",
        "quote_exists",
        {"price": "0", "quote_id": "q-live"},
        {"quote_id": "q-live"},
    ),
    DoubleFault(
        "submit_quote",
        "quote_exists",
        "quote_expired",
        {"quote_id": "q-live", "valid_until": PAST},
        {"valid_until": PAST},
    ),
    DoubleFault(
        "accept_quote",
        "quote_used",
        "unknown_quote",
        {"rfq": "rfq-done", "quote_id": "q-none"},
        {"quote_id": "q-none"},
    ),
    DoubleFault(
        "accept_quote",
        "quote_expired",
        "insufficient_funds",
        {"rfq": "rfq-big", "quote_id": "q-big-old"},
        {"rfq": "rfq-big", "quote_id": "q-big-live"},
    ),
    DoubleFault(
        "settle_trade",
        "trade_not_open",
        "settlement_not_due",
        {"trade": "rfq-cancelled.q-cancelled"},  # cancelled, and its value date is Thursday
        {"trade": "rfq-future.q-future"},
    ),
    DoubleFault(
        "settle_trade",
        "settlement_not_due",
        "insufficient_wallet_balance",
        {"trade": "rfq-dry-future.q-dry-future"},  # due Thursday, and the hot wallet is short
        {"trade": "rfq-dry.q-dry"},
    ),
    DoubleFault(
        "settle_net",
        "settlement_not_due",
        "no_trades_due",
        {"counterparty": "lp-z", "value_date": "2026-11-19"},
        {"counterparty": "lp-z"},
    ),
    DoubleFault(
        "settle_net",
        "settlement_not_due",
        "insufficient_wallet_balance",
        {"counterparty": "lp-b", "value_date": "2026-11-19"},
        {"counterparty": "lp-b"},
    ),
    DoubleFault(
        "place_order",
        "unknown_asset",
        "invalid_pair",
        {"base": "DOGE", "quote": "DOGE"},
        {"base": "BTC", "quote": "BTC"},
    ),
    DoubleFault(
        "place_order",
        "invalid_amount",
        "invalid_price",
        {"quantity": "0", "limit_price": "0"},
        {"limit_price": "0"},
    ),
    DoubleFault(
        "place_order",
        "invalid_price",
        "unknown_client",
        {"limit_price": "0", "client": "ghost"},
        {"client": "ghost"},
    ),
    DoubleFault(
        "place_order",
        "unknown_sub_account",
        "order_exists",
        {"sub_account": "nope", "order": "o-open"},
        {"order": "o-open"},
    ),
    DoubleFault(
        "place_order",
        "order_exists",
        "insufficient_funds",
        {"order": "o-open", "quantity": "17"},
        {"quantity": "17"},
    ),
    DoubleFault(
        "record_fill",
        "order_not_open",
        "fill_exists",
        {"order": "o-cancelled", "fill": "f-done"},
        {"fill": "f-done"},
    ),
    DoubleFault(
        "record_fill",
        "fill_exists",
        "invalid_price",
        {"fill": "f-done", "price": "0"},
        {"price": "0"},
    ),
    DoubleFault(
        "record_fill",
        "invalid_price",
        "invalid_amount",
        {"price": "0", "quantity": "0"},
        {"quantity": "0"},
    ),
    DoubleFault(
        "record_fill",
        "fill_exceeds_order",
        "price_beyond_limit",
        {"quantity": "3", "price": "60000.01"},
        {"price": "60000.01"},
    ),
    DoubleFault(
        "record_fill",
        "price_beyond_limit",
        "unsettled_limit_exceeded",
        {"order": "o-shared", "quantity": "1.7", "price": "60000.01"},
        {"order": "o-shared", "quantity": "1.7"},
    ),
    DoubleFault(
        "fund_insurance",
        "unknown_asset",
        "invalid_amount",
        {"asset": "XYZ", "amount": "0"},
        {"amount": "0"},
    ),
    DoubleFault(
        "set_shared_book_limit",
        "unknown_asset",
        "invalid_amount",
        {"asset": "XYZ", "limit": "0"},
        {"limit": "0"},
    ),
    DoubleFault(
        "move_custody",
        "invalid_amount",
        "asset_not_crypto",
        {"amount": "0", "asset": "USD"},
        {"asset": "USD"},
    ),
    DoubleFault(
        "move_custody",
        "asset_not_crypto",
        "same_wallet",
        {"asset": "USD", "to_wallet": HOT},
        {"to_wallet": HOT},
    ),
    DoubleFault(
        "move_custody",
        "same_wallet",
        "move_exists",
        {"to_wallet": HOT, "move": "m-done"},
        {"move": "m-done"},
    ),
    DoubleFault(
        "move_custody",
        "move_exists",
        "insufficient_wallet_balance",
        {"move": "m-done", "amount": "1"},
        {"amount": "1"},
    ),
    DoubleFault(
        "approve_custody_move",
        "move_not_pending",
        "approver_is_requester",
        {"move": "m-done", "approver": "alice"},
        {"approver": "alice"},
    ),
    DoubleFault(
        "approve_custody_move",
        "approver_is_requester",
        "insufficient_wallet_balance",
        {"move": "m-pre-b", "approver": "alice"},
        {"move": "m-pre-b"},
    ),
]

# Commands whose codes can never meet in one command: no double fault exists for them.
EXCLUSIVE = {
    "set_holidays": "an unknown currency cannot also be a virtual asset",
    "fail_settlement": "a trade that does not exist cannot be settled or cancelled",
    "cancel_trade": "a trade that does not exist cannot be settled or cancelled",
    "cancel_order": "an order that does not exist cannot be filled or cancelled",
    "accrue_custody_fees": "a day that is not over cannot have been accrued",
}


def documented(command: str) -> list[str]:
    """The codes a decider's docstring lists after "Rejections:", in order."""
    doc = TRADING_DECIDERS[command].__doc__ or ""
    match = re.search(r"Rejections:\s*(.*?)(?:[.;]|$)", doc, re.DOTALL)
    assert match is not None, f"{command}: no 'Rejections:' in its docstring"
    text = " ".join(match.group(1).split())
    if text.startswith("none"):
        return []
    return [code.strip() for code in text.split(",")]


def process(world: World, command: str, body: dict[str, Any]) -> CommandResult:
    return world.run(command, **body)


# --- the table ---------------------------------------------------------------------------------
@pytest.mark.parametrize("command", sorted(VALID))
def test_the_template_command_is_accepted(command: str) -> None:
    """Each case is a valid command with a fault injected: the template itself must pass."""
    result = process(fresh_world(), command, VALID[command])
    assert result.accepted, result


@pytest.mark.parametrize(
    "row", CASES, ids=[f"{c.command}-{c.code}-{i}" for i, c in enumerate(CASES)]
)
def test_rejection_has_its_code_and_changes_nothing(row: Case) -> None:
    world = fresh_world()
    before = world.processor.state.to_snapshot()
    result = process(world, row.command, row.body())
    assert (result.status, result.code) == ("rejected", row.code), result.message
    assert result.message, "a rejection says what is wrong"
    assert result.positions == ()
    assert world.processor.state.to_snapshot() == before


@pytest.mark.parametrize(
    "fault", DOUBLE_FAULTS, ids=[f"{d.command}-{d.first}-{d.later_code}" for d in DOUBLE_FAULTS]
)
def test_the_earlier_documented_code_wins(fault: DoubleFault) -> None:
    codes = documented(fault.command)
    assert codes.index(fault.first) < codes.index(fault.later_code)
    later = process(fresh_world(), fault.command, {**VALID[fault.command], **fault.later})
    assert later.code == fault.later_code, later.message
    world = fresh_world()
    before = world.processor.state.to_snapshot()
    both = process(world, fault.command, {**VALID[fault.command], **fault.both})
    assert both.code == fault.first, both.message
    assert world.processor.state.to_snapshot() == before


@pytest.mark.parametrize("command", sorted(TRADING_DECIDERS))
def test_docstring_codes_equal_the_table(command: str) -> None:
    table = {c.code for c in CASES if c.command == command}
    table |= {d.first for d in DOUBLE_FAULTS if d.command == command}
    table |= {d.later_code for d in DOUBLE_FAULTS if d.command == command}
    codes = documented(command)
    assert len(codes) == len(set(codes)), f"{command}: a code is listed twice"
    assert set(codes) == table
    if len(codes) >= 2 and command not in EXCLUSIVE:
        assert any(d.command == command for d in DOUBLE_FAULTS), f"{command}: no double fault"


def test_rows_are_in_documented_precedence_order() -> None:
    """The table reads in the same order as the docstrings, so a reviewer can compare them."""
    for command in TRADING_DECIDERS:
        rows = [documented(command).index(c.code) for c in CASES if c.command == command]
        assert rows == sorted(rows), command


def test_every_trading_command_has_a_template() -> None:
    assert set(VALID) == set(TRADING_DECIDERS)
    assert {c.command for c in CASES} | {d.command for d in DOUBLE_FAULTS} | {
        "set_fee_schedule",
        "check_trust_rules",
    } == set(TRADING_DECIDERS)


def test_a_retry_of_a_rejected_command_gets_the_same_answer() -> None:
    world = fresh_world()
    command = {"type": "settle_trade", "key": "retry-1", "trade": "rfq-future.q-future"}
    first = world.processor.process(command).result
    again = world.processor.process(command).result
    assert (first.code, again.code, again.replayed) == (
        "settlement_not_due",
        "settlement_not_due",
        True,
    )
    assert again == first


# --- defects found while writing this table ----------------------------------------------------
def test_quote_expiry_in_another_time_zone_is_still_enforced() -> None:
    """A Hong Kong LP stamps ``valid_until`` in +08:00; a minute later the quote is dead.

    ``accept_quote`` compares ISO strings (``q["valid_until"] > now``), so "09:00:05+08:00"
    looks later than "01:01:00+00:00" and the expired quote is booked.
    """
    world = fresh_world()
    hong_kong = timezone(timedelta(hours=8))
    world.ok("request_quote", **{**VALID["request_quote"], "rfq": "rfq-hk", "settlement": "T+0"})
    world.ok(
        "submit_quote",
        rfq="rfq-hk",
        quote_id="q-hk",
        provider="lp-hk",
        price="60000",
        valid_until=(NOW + timedelta(seconds=5)).astimezone(hong_kong).isoformat(),
    )
    world.now = NOW + timedelta(minutes=1)
    before = world.processor.state.to_snapshot()
    for quote_id in ("q-hk", None):
        result = world.run("accept_quote", rfq="rfq-hk", quote_id=quote_id)
        assert (result.status, result.code) == ("rejected", "quote_expired"), result
    assert world.processor.state.to_snapshot() == before


def test_a_quote_without_a_time_zone_is_refused_not_a_crash() -> None:
    """A ``valid_until`` without offset must be an ``invalid_command`` naming the field.

    Today the decider compares it with the writer's aware clock and raises ``TypeError``; in
    the real ``Ledger`` that kills the decider thread and every caller waits for ever.
    """
    world = fresh_world()
    before = world.processor.state.to_snapshot()
    result = world.run(
        "submit_quote", **{**VALID["submit_quote"], "valid_until": "2026-11-18T03:00:00"}
    )
    assert (result.status, result.code) == ("rejected", "invalid_command")
    assert (result.message or "").startswith("valid_until")
    assert world.processor.state.to_snapshot() == before
