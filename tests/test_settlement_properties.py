"""Settlement invariants under random trading days (hypothesis).

* Any interleaving of RFQ trades, order-book fills, fails, cancellations and gross or net
  settlements keeps every asset summing to zero and never leaves a client bucket negative.
* The same trades settled gross (one ``settle_trade`` each, in any order) or net (one
  ``settle_net`` per counterparty and value date) end with identical balances everywhere.
* An order is fully pre-funded: with nothing available beside the order's hold, no sequence
  of fills draws the client below zero.

The runs are derandomized, so a failure is reproducible from the example hypothesis prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from ledger.journal import open_sealed
from ledger.money import ASSETS, format_units
from ledger.processing import Processor
from ledger.results import CommandResult
from ledger.state import LedgerState

MONDAY = datetime(2026, 11, 16, 2, 0, tzinfo=UTC)
LPS = ("lp-1", "lp-2", "lp-3")
PAIRS = (("BTC", "USD"), ("ETH", "USD"), ("SOL", "USDC"), ("BTC", "HKD"))
# Prices in ten-thousandths of the quote asset, so that notionals need rounding.
PRICE_RANGE = {"BTC": (500_000_000, 700_000_000), "ETH": (30_000_000, 40_000_000)}
PRICE_RANGE["SOL"] = (1_000_000, 2_000_000)
# Quantities in the base asset's minor units, from a few dollars' worth to a few whole coins.
# Dust worth less than a cent crashes ``place_order`` today: see the dust test at the end.
QUANTITY_RANGE = {"BTC": (10_000, 300_000_000), "ETH": (10**15, 40 * 10**18)}
QUANTITY_RANGE["SOL"] = (10**8, 900 * 10**9)
# Clients from well funded to nearly broke, on three fee tiers.
CLIENTS: dict[str, tuple[str | None, dict[str, str]]] = {
    "rich": ("pro", {"USD": "5000000", "HKD": "9000000", "USDC": "500000", "BTC": "20"}),
    "mid": ("inst", {"USD": "90000", "USDC": "20000", "ETH": "30", "SOL": "400"}),
    "poor": (None, {"USD": "1500", "HKD": "800", "BTC": "0.02", "SOL": "3"}),
}
PROPERTY_SETTINGS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


class Desk:
    """A processor and the commands of a trading day; every event is checked as it is sealed."""

    def __init__(self) -> None:
        self.clock = Clock(MONDAY)
        self.processor = Processor("prop", LedgerState(), clock=self.clock)
        self.count = 0

    @property
    def state(self) -> LedgerState:
        return self.processor.state

    def run(self, command_type: str, **fields: Any) -> CommandResult:
        self.count += 1
        outcome = self.processor.process(
            {"type": command_type, "key": f"{command_type}-{self.count}", **fields}
        )
        for _, _, body in outcome.events:
            postings = open_sealed(body).postings
            for code in {s for _, s, _ in postings}:
                assert sum(u for _, s, u in postings if s == code) == 0, (command_type, body)
        return outcome.result

    def ok(self, command_type: str, **fields: Any) -> CommandResult:
        result = self.run(command_type, **fields)
        assert result.accepted, (command_type, fields, result)
        return result

    def open_day(self) -> None:
        self.ok("set_fee_schedule", tier="pro", maker_bps=2, taker_bps=6, otc_spread_bps=8)
        self.ok("set_fee_schedule", tier="inst", maker_bps=0, taker_bps=4, otc_spread_bps=5)
        self.ok("set_holidays", currency="USD", dates=["2026-11-26"])
        self.ok("set_holidays", currency="HKD", dates=["2026-11-17", "2026-11-18"])
        self.ok("set_shared_book_limit", asset="USD", limit="150000")
        for client, (tier, deposits) in CLIENTS.items():
            self.ok("open_client", client=client, name=client, sub_accounts=["main"])
            if tier is not None:
                self.ok("set_client_tier", client=client, tier=tier)
            for code, amount in deposits.items():
                self.deposit(client, code, amount)

    def deposit(self, client: str, code: str, amount: str) -> None:
        if not ASSETS[code].is_virtual:
            self.ok(
                "deposit_fiat",
                client=client,
                sub_account="main",
                asset=code,
                amount=amount,
                bank_reference=f"ref-{self.count}",
            )
            return
        tx = f"tx-{self.count}"
        self.ok(
            "detect_crypto_deposit",
            client=client,
            sub_account="main",
            asset=code,
            amount=amount,
            chain=code.lower(),
            tx_hash=tx,
            required_confirmations=1,
        )
        self.ok("confirm_crypto_deposit", tx_hash=tx, confirmations=1)

    def rfq(self, spec: TradeSpec, rfq: str) -> CommandResult:
        """Request, quote (several LPs), accept the best or a named quote."""
        base, quote = spec.pair
        self.ok(
            "request_quote",
            rfq=rfq,
            client=spec.client,
            sub_account="main",
            side=spec.side,
            base=base,
            quote=quote,
            quantity=format_units(spec.quantity, base),
            settlement=spec.settlement,
        )
        valid_until = (self.clock.now + timedelta(seconds=30)).isoformat()
        for lp, price in zip(LPS, spec.prices, strict=False):
            self.ok(
                "submit_quote",
                rfq=rfq,
                quote_id=f"{rfq}-{lp}",
                provider=lp,
                price=price_text(price),
                valid_until=valid_until,
            )
        named = None if spec.pick is None else f"{rfq}-{LPS[spec.pick % len(spec.prices)]}"
        return self.run("accept_quote", rfq=rfq, quote_id=named)

    def trades(self, status: str) -> list[str]:
        return sorted(t for t, v in self.state.trading.trades.items() if v["status"] == status)

    def check_invariants(self) -> None:
        totals: dict[str, int] = {}
        for (account, code), units in self.state.balances.items():
            totals[code] = totals.get(code, 0) + units
            if account.startswith("client:"):
                # A client account is a liability: a positive posting sum is a negative balance.
                assert units <= 0, f"{account} is negative: {format_units(-units, code)} {code}"
        assert all(total == 0 for total in totals.values()), totals


def price_text(price: int) -> str:
    whole, frac = divmod(price, 10_000)
    return f"{whole}.{frac:04d}"


@dataclass(frozen=True)
class TradeSpec:
    client: str
    side: str
    pair: tuple[str, str]
    quantity: int
    prices: tuple[int, ...]
    pick: int | None
    settlement: str
    lp: str


@st.composite
def trade_specs(draw: st.DrawFn, settlement: str | None = None) -> TradeSpec:
    pair = draw(st.sampled_from(PAIRS))
    base = pair[0]
    low, high = PRICE_RANGE[base]
    quantity = draw(st.integers(*QUANTITY_RANGE[base]))
    prices = draw(st.lists(st.integers(low, high), min_size=1, max_size=3))
    return TradeSpec(
        client=draw(st.sampled_from(sorted(CLIENTS))),
        side=draw(st.sampled_from(("buy", "sell"))),
        pair=pair,
        quantity=quantity,
        prices=tuple(prices),
        pick=draw(st.none() | st.integers(0, 2)),
        settlement=settlement or draw(st.sampled_from(("T+0", "T+1"))),
        lp=draw(st.sampled_from(LPS)),
    )


# --- random interleavings ------------------------------------------------------------------
class TradingDay(RuleBasedStateMachine):
    """Trades, fills, fails, cancellations and settlements in whatever order hypothesis likes."""

    def __init__(self) -> None:
        super().__init__()
        self.desk = Desk()
        self.serial = 0

    @initialize()
    def open_day(self) -> None:
        self.desk.open_day()

    def _name(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}-{self.serial}"

    @rule(spec=trade_specs())
    def rfq_trade(self, spec: TradeSpec) -> None:
        self.desk.rfq(spec, self._name("rfq"))

    @rule(
        spec=trade_specs(),
        book=st.sampled_from(("local", "shared")),
        participant=st.sampled_from(("client", "affiliated_market_maker")),
        fills=st.lists(
            st.tuples(
                st.integers(1, 100), st.integers(0, 500), st.sampled_from(("maker", "taker"))
            ),
            min_size=1,
            max_size=3,
        ),
        unfilled=st.sampled_from((0, 0, 1, 50)),
        cancel_rest=st.booleans(),
    )
    def order_with_fills(
        self,
        spec: TradeSpec,
        book: str,
        participant: str,
        fills: list[tuple[int, int, str]],
        unfilled: int,
        cancel_rest: bool,
    ) -> None:
        """An order, fills for all of it (or for part when ``unfilled`` weighs in), a cancel."""
        base, quote = spec.pair
        order = self._name("ord")
        limit = spec.prices[0]
        placed = self.desk.run(
            "place_order",
            order=order,
            client=spec.client,
            sub_account="main",
            side=spec.side,
            base=base,
            quote=quote,
            quantity=format_units(spec.quantity, base),
            limit_price=price_text(limit),
            book=book,
            participant=participant,
        )
        if not placed.accepted:
            return
        left, total_weight = spec.quantity, sum(w for w, _, _ in fills) + unfilled
        for index, (weight, improvement, liquidity) in enumerate(fills):
            last = index == len(fills) - 1 and not unfilled
            units = left if last else spec.quantity * weight // total_weight
            price = limit - improvement if spec.side == "buy" else limit + improvement
            if units <= 0:
                continue
            filled = self.desk.run(
                "record_fill",
                order=order,
                fill=f"{order}-f{index}",
                price=price_text(price),
                quantity=format_units(units, base),
                liquidity=liquidity,
                counterparty=spec.lp if book == "local" else "affiliate",
            )
            assert filled.accepted or filled.code == "unsettled_limit_exceeded", filled
            if filled.accepted:
                left -= units
        if cancel_rest and left:
            assert self.desk.run("cancel_order", order=order).accepted

    @precondition(lambda self: bool(self.desk.trades("open")))
    @rule(data=st.data())
    def fail_one(self, data: st.DataObject) -> None:
        trade = data.draw(st.sampled_from(self.desk.trades("open")))
        self.desk.ok("fail_settlement", trade=trade, reason="counterparty short")

    @precondition(lambda self: bool(self.desk.trades("open")))
    @rule(data=st.data())
    def cancel_one(self, data: st.DataObject) -> None:
        trade = data.draw(st.sampled_from(self.desk.trades("open")))
        self.desk.ok("cancel_trade", trade=trade, reason="client withdrew")

    @precondition(lambda self: bool(self.desk.trades("open")))
    @rule(data=st.data())
    def settle_one(self, data: st.DataObject) -> None:
        trade = data.draw(st.sampled_from(self.desk.trades("open")))
        result = self.desk.run("settle_trade", trade=trade)
        assert result.accepted or result.code == "settlement_not_due", result

    @rule(lp=st.sampled_from((*LPS, "affiliate")))
    def settle_net(self, lp: str) -> None:
        today = self.desk.clock.now.date().isoformat()
        result = self.desk.run("settle_net", counterparty=lp, value_date=today)
        assert result.accepted or result.code == "no_trades_due", result

    @rule(days=st.integers(1, 3))
    def next_day(self, days: int) -> None:
        self.desk.clock.now += timedelta(days=days)

    @invariant()
    def books_balance_and_no_client_is_negative(self) -> None:
        self.desk.check_invariants()

    def teardown(self) -> None:
        # Everything still open can be settled in the end, and the books still hold.
        self.desk.clock.now += timedelta(days=10)
        for order, found in sorted(self.desk.state.trading.orders.items()):
            if found["status"] == "open":
                self.desk.ok("cancel_order", order=order)
        for trade in self.desk.trades("open"):
            self.desk.ok("settle_trade", trade=trade)
        self.desk.check_invariants()
        for client in CLIENTS:
            for (account, _), units in self.desk.state.balances.items():
                if account.startswith(f"client:{client}:main:") and units:
                    assert account.endswith(":available"), (account, units)


TradingDay.TestCase.settings = settings(PROPERTY_SETTINGS, max_examples=40, stateful_step_count=25)
test_random_trading_days_keep_the_books_whole = TradingDay.TestCase


# --- gross versus net ----------------------------------------------------------------------
def _book(specs: list[tuple[TradeSpec, int]], fails: set[int], cancels: set[int]) -> Desk:
    desk = Desk()
    desk.open_day()
    # Booked day by day (the writer's clock never goes back), in the list's order within a day.
    for index, (spec, day) in sorted(enumerate(specs), key=lambda item: item[1][1]):
        desk.clock.now = MONDAY + timedelta(days=day, seconds=index)
        desk.rfq(spec, f"r{index}")
    for index in sorted(fails | cancels):
        trade = next(iter(t for t in desk.trades("open") if t.startswith(f"r{index}.")), None)
        if trade is None:
            continue
        if index in cancels:
            desk.ok("cancel_trade", trade=trade, reason="client withdrew")
        else:
            desk.ok("fail_settlement", trade=trade, reason="counterparty short")
    desk.clock.now = MONDAY + timedelta(days=14)
    return desk


@settings(PROPERTY_SETTINGS, max_examples=100)
@given(
    specs=st.lists(
        st.tuples(trade_specs(settlement="T+1"), st.integers(0, 4)), min_size=1, max_size=12
    ),
    fails=st.sets(st.integers(0, 11), max_size=4),
    cancels=st.sets(st.integers(0, 11), max_size=2),
    data=st.data(),
)
def test_gross_and_net_settlement_end_with_the_same_balances(
    specs: list[tuple[TradeSpec, int]], fails: set[int], cancels: set[int], data: st.DataObject
) -> None:
    gross, net = _book(specs, fails, cancels), _book(specs, fails, cancels)
    assert gross.state.balances == net.state.balances
    open_trades = gross.trades("open")
    for trade in data.draw(st.permutations(open_trades)):
        gross.ok("settle_trade", trade=trade)
    obligations = sorted(
        {
            (t["value_date"], t["counterparty"])
            for t in net.state.trading.trades.values()
            if t["status"] == "open"
        }
    )
    for value_date, counterparty in obligations:
        net.ok("settle_net", counterparty=counterparty, value_date=value_date)
    assert gross.trades("open") == net.trades("open") == []
    assert gross.trades("settled") == net.trades("settled")
    assert gross.state.balances == net.state.balances
    gross.check_invariants()


# --- pre-funding ---------------------------------------------------------------------------
@settings(PROPERTY_SETTINGS, max_examples=200)
@given(
    side=st.sampled_from(("buy", "sell")),
    quantity=st.integers(2, 10**9),
    limit=st.integers(1, 10**12),
    bps=st.tuples(st.integers(0, 50), st.integers(0, 50)),
    fills=st.lists(
        st.tuples(st.integers(1, 100), st.integers(0, 10**6), st.sampled_from(("maker", "taker"))),
        min_size=1,
        max_size=4,
    ),
)
@example(  # two one-satoshi fills at 500,000 USD/BTC: 0.5 cent each, the order holds 1 cent
    side="buy", quantity=2, limit=5_000_000_000, bps=(0, 0), fills=[(1, 0, "maker")] * 2
)
def test_an_order_is_fully_prefunded_whatever_its_fills(
    side: str, quantity: int, limit: int, bps: tuple[int, int], fills: list[tuple[int, int, str]]
) -> None:
    """With nothing available beside the order's hold, fills never draw the client below zero.

    ``limit`` is USD per BTC in ten-thousandths. Orders worth less than a cent are left to
    ``test_a_dust_order_is_refused_or_booked_not_a_crash``.
    """
    assume(side == "sell" or quantity * limit >= 10**10)
    desk = Desk()
    desk.ok("set_fee_schedule", tier="t", maker_bps=bps[0], taker_bps=bps[1], otc_spread_bps=0)
    desk.ok("open_client", client="c", name="c", sub_accounts=["main", "spare"])
    desk.ok("set_client_tier", client="c", tier="t")
    desk.deposit("c", "USD", "100000000000")
    desk.deposit("c", "BTC", "100")
    placed = desk.run(
        "place_order",
        order="o",
        client="c",
        sub_account="main",
        side=side,
        base="BTC",
        quote="USD",
        quantity=format_units(quantity, "BTC"),
        limit_price=price_text(limit),
    )
    if not placed.accepted:  # beyond the deposit: nothing to check
        return
    # Park everything the order does not hold, so that only its hold can pay for its fills.
    for code in ("USD", "BTC"):
        spare = -desk.state.balance("client:c:main:available", code)
        if spare:
            desk.ok(
                "transfer",
                client="c",
                from_sub_account="main",
                to_sub_account="spare",
                asset=code,
                amount=format_units(spare, code),
            )
    left, weight_left = quantity, sum(w for w, _, _ in fills)
    for index, (weight, improvement, liquidity) in enumerate(fills):
        units = left if index == len(fills) - 1 else quantity * weight // weight_left
        if units <= 0:
            continue
        price = max(limit - improvement, 1) if side == "buy" else limit + improvement
        desk.ok(
            "record_fill",
            order="o",
            fill=f"f{index}",
            price=price_text(price),
            quantity=format_units(units, "BTC"),
            liquidity=liquidity,
            counterparty="local-book",
        )
        left -= units
        desk.check_invariants()
    # The order is filled: nothing stays held, nothing was drawn from outside the hold.
    assert desk.state.trading.orders["o"]["status"] == "filled"
    assert desk.state.balance("client:c:main:held", "USD") == 0
    assert desk.state.balance("client:c:main:held", "BTC") == 0


def test_a_dust_order_is_refused_or_booked_not_a_crash() -> None:
    """A buy whose hold rounds to 0 cents (1 satoshi at 0.01 USD/BTC) must get an answer.

    ``place_order`` builds the hold as ``_move(available, held, USD, 0)``: two zero postings,
    which ``seal`` refuses with ``LedgerFaultError``; in the ``Ledger`` that exception ends the
    decider thread and every caller waits for ever.
    """
    desk = Desk()
    desk.ok("open_client", client="c", name="c", sub_accounts=["main"])
    desk.deposit("c", "USD", "10")
    before = desk.state.to_snapshot()
    result = desk.run(
        "place_order",
        order="dust",
        client="c",
        sub_account="main",
        side="buy",
        base="BTC",
        quote="USD",
        quantity="0.00000001",
        limit_price="0.01",
    )
    if result.accepted:
        assert result.event_types == ("order_placed",)
    else:
        assert result.code == "invalid_amount", result
        assert desk.state.to_snapshot() == before
    desk.check_invariants()
