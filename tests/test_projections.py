"""The read models, applied straight through their classes on the real PostgreSQL.

Events come from the real writer (``ledger.application.Ledger``): the demo trading day
(deposits, RFQ and order-book trades, T+0/T+1 settlement, a failed settlement, custody sweeps
to cold storage, fees, a withdrawal) plus a small story whose amounts are worked out by hand.
The read models must equal a fold of the store computed without them, whatever the batching,
partition interleaving and redelivery; replays must be deterministic; "as of" and ``explain``
must agree with the log.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from typing import Any

import orjson
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.application import Ledger
from primeledger.scenario import SimClock, trading_day
from projections import queries
from projections.base import ProjectionSetupError
from projections.catalog import ALL, apply_tracked, read_models
from projections.decode import DecodeError, Event, account_info, decode
from projections.generations import Positions, ensure_live, live_schemas, parse_multirange
from projections.pnl import Pnl, PnlState, Trade, fold, match
from projections.pnl_report import PnlLine, PnlReport, build_report
from projections.replay import replay
from projections.trust_reserve import TrustReservePosition
from streams.contract import event_key

LEDGER = "t"


# --- building ledgers -------------------------------------------------------------------


def story_commands() -> list[dict[str, Any]]:
    """A client whose balances are easy to work out by hand (see test_hand_worked_story)."""
    return [
        {"type": "open_client", "key": "s1", "client": "fund-x", "name": "X",
         "sub_accounts": ["main", "alpha"]},
        {"type": "deposit_fiat", "key": "s2", "client": "fund-x", "sub_account": "main",
         "asset": "USD", "amount": "1000.50", "bank_reference": "x-1"},
        {"type": "detect_crypto_deposit", "key": "s3", "client": "fund-x", "sub_account": "main",
         "asset": "ETH", "amount": "12.345678901234567891", "chain": "eth", "tx_hash": "0xx1",
         "required_confirmations": 2},
        {"type": "confirm_crypto_deposit", "key": "s4", "tx_hash": "0xx1", "confirmations": 2},
        {"type": "charge_fee", "key": "s5", "client": "fund-x", "sub_account": "main",
         "asset": "USD", "amount": "10.00", "fee_type": "custody"},
        {"type": "charge_fee", "key": "s6", "client": "fund-x", "sub_account": "main",
         "asset": "USD", "amount": "2.25", "fee_type": "other"},
        {"type": "transfer", "key": "s7", "client": "fund-x", "from_sub_account": "main",
         "to_sub_account": "alpha", "asset": "USD", "amount": "100"},
        {"type": "place_hold", "key": "s8", "hold": "h1", "client": "fund-x",
         "sub_account": "main", "asset": "USD", "amount": "50", "payee": "counterparty:lp1",
         "expires_at": "2030-01-01T00:00:00+00:00"},
        {"type": "post_hold", "key": "s9", "hold": "h1", "amount": "20"},
        {"type": "place_hold", "key": "s10", "hold": "h2", "client": "fund-x",
         "sub_account": "alpha", "asset": "USD", "amount": "30", "payee": "counterparty:lp1",
         "expires_at": "2030-01-01T00:00:00+00:00"},
        {"type": "set_mark", "key": "s11", "asset": "ETH", "quote": "USD", "price": "3000.00"},
    ]  # fmt: skip


def build(url: str, *, demo: bool = True) -> None:
    """The demo trading day (if ``demo``) and the hand-worked story, in ledger ``t``."""
    start = datetime(2026, 11, 20, 1, 0, tzinfo=UTC)
    phases = trading_day(date(2026, 11, 20)) if demo else []
    clock = SimClock(phases[0].start if phases else start)
    ledger = Ledger(url, LEDGER, clock=clock)
    try:
        for phase in phases:
            clock.at(phase.start)
            ledger.submit(phase.commands)
        results = ledger.submit(story_commands())
        assert all(r.accepted for r in results), [r for r in results if not r.accepted]
        fee = results[5].positions[0]  # the 2.25 fee is waived: reversed
        reversal = ledger.submit_one(
            {"type": "reverse_event", "key": "s12", "position": fee, "reason": "waived"}
        )
        assert reversal.accepted, reversal
    finally:
        ledger.close()


def stored(url: str) -> list[tuple[int, bytes]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT notification_id, state FROM primeledger_events ORDER BY notification_id"
        ).fetchall()
    return [(int(n), bytes(b)) for n, b in rows]


def apply_batches(url: str, batches: Sequence[Sequence[Event]]) -> None:
    """Apply batches to the live generations, one transaction each, as the worker does."""
    models = read_models(ALL)
    with psycopg.connect(url, autocommit=True) as conn:
        ensure_live(conn, models)
        for batch in batches:
            with conn.transaction(), conn.cursor() as cur:
                live = live_schemas(cur, [m.name for m in models])
                for model in models:
                    apply_tracked(cur, model, live[model.name], batch)


def assert_equal_to_the_store(url: str) -> None:
    assert queries.balances(url, LEDGER) == queries.compute_from_store(url, LEDGER, "balances")
    assert queries.trust_reserve(url, LEDGER) == queries.compute_from_store(
        url, LEDGER, "trust-reserve"
    )
    assert queries.pnl(url, LEDGER) == queries.compute_from_store(url, LEDGER, "pnl")
    assert queries.pnl(url, LEDGER, currency="HKD") == queries.compute_from_store(
        url, LEDGER, "pnl", currency="HKD"
    )


def hashes(url: str, schemas: dict[str, str] | None = None) -> dict[str, str]:
    return {
        name: queries.projection_hash(url, name, None if schemas is None else schemas[name])
        for name in ALL
    }


@pytest.fixture
def demo_url(fresh_db_url: str) -> str:
    build(fresh_db_url)
    return fresh_db_url


# --- equal to the store ------------------------------------------------------------------


def test_read_models_equal_a_fold_of_the_store(demo_url: str) -> None:
    result = replay(demo_url, ALL)
    assert result.swapped
    assert result.skipped == 0
    assert result.events == len(stored(demo_url))
    assert_equal_to_the_store(demo_url)
    # The demo traded: P&L has realised figures and trading fees, valued in USD.
    report = queries.pnl(demo_url, LEDGER)
    assert any(line.realised or line.fees for line in report.lines)
    # Across read models: what the firm owes per asset is what client balances add up to.
    owed: dict[str, int] = {}
    for balance in queries.balances(demo_url, LEDGER):
        owed[balance.asset] = owed.get(balance.asset, 0) + balance.total
    trust = {p.asset: p.client_liabilities for p in queries.trust_reserve(demo_url, LEDGER)}
    assert {a: u for a, u in owed.items() if u} == {a: u for a, u in trust.items() if u}


def test_hand_worked_story(fresh_db_url: str) -> None:
    build(fresh_db_url, demo=False)
    replay(fresh_db_url, ALL)
    found = {
        (b.sub_account, b.asset): b.units for b in queries.balances(fresh_db_url, LEDGER, "fund-x")
    }
    # main USD: 1000.50 - 10.00 fee (the 2.25 fee was reversed) - 100 transferred - 50 held,
    # of which 20 paid and 30 released: available 870.50, held 0.
    assert found[("main", "USD")]["available"] == 87050
    assert found[("main", "USD")]["held"] == 0
    assert found[("alpha", "USD")]["available"] == 7000  # 100 in, 30 of it on hold
    assert found[("alpha", "USD")]["held"] == 3000
    assert found[("main", "ETH")]["available"] == 12_345678901234567891  # wei do not fit int64
    usd = {p.asset: p for p in queries.trust_reserve(fresh_db_url, LEDGER)}["USD"]
    # Owed 870.50 + 100 = 970.50; the bank holds 1000.50 (fees and the payment moved liability
    # to house and counterparty accounts, not money out of the bank): no shortfall, and the
    # 30.00 the house earned or is owed is its own money still on trust.
    assert (usd.client_liabilities, usd.trust_bank, usd.shortfall) == (97050, 100050, 0)
    assert (usd.surplus, usd.to_json()["surplus"]) == (3000, "30.00")
    totals = queries.pnl(fresh_db_url, LEDGER).totals["fund-x/main"]
    assert (totals["fees"], totals["net"]) == ("10.00", "-10.00")


def test_out_of_order_partitions_and_redelivered_batches_change_nothing(demo_url: str) -> None:
    """Kafka's view: events spread over 6 partitions by client key, partitions interleaved
    at random, batches cut at random, a third of them delivered twice."""
    partitions: list[list[Event]] = [[] for _ in range(6)]
    for _, body in stored(demo_url):
        key = event_key(orjson.loads(body))
        partitions[zlib.crc32(key) % 6].append(decode(body))
    rng = random.Random(20261120)
    arrival: list[Event] = []
    while any(partitions):
        arrival.append(rng.choice([p for p in partitions if p]).pop(0))
    batches: list[list[Event]] = []
    while arrival:
        size = rng.randint(1, 40)
        batch, arrival = arrival[:size], arrival[size:]
        batches.append(batch)
        if rng.random() < 0.33:
            batches.append(batch + batch[: rng.randint(0, len(batch))])  # redelivery
    apply_batches(demo_url, batches)
    assert_equal_to_the_store(demo_url)
    live = hashes(demo_url)
    apply_batches(demo_url, batches)  # the whole stream again
    assert hashes(demo_url) == live
    rebuilt = replay(demo_url, ALL, swap_in=False)
    assert hashes(demo_url, rebuilt.schemas) == live


# --- replay ------------------------------------------------------------------------------


def schema_exists(url: str, schema: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    return row is not None


def test_replays_are_deterministic_and_swap_atomically(demo_url: str) -> None:
    first = replay(demo_url, ALL)
    first_hashes = hashes(demo_url)
    second = replay(demo_url, ALL, page_size=37)  # other page boundaries, same contents
    assert hashes(demo_url) == first_hashes
    assert set(second.schemas.values()).isdisjoint(first.schemas.values())
    assert not any(schema_exists(demo_url, s) for s in first.schemas.values())  # dropped
    # Two aggregating processes write the same contents as one.
    parallel = replay(demo_url, ALL, workers=2, page_size=50)
    assert parallel.events == first.events
    assert hashes(demo_url) == first_hashes
    assert_equal_to_the_store(demo_url)


def test_bounded_replay_builds_the_past_beside_the_live_one(demo_url: str) -> None:
    replay(demo_url, ALL)
    live = hashes(demo_url)
    past = replay(demo_url, "balances", ledger=LEDGER, until_position=40)
    assert not past.swapped
    assert past.events == 40
    assert hashes(demo_url) == live  # the live generation is untouched
    # Swapped in on request, it serves the balances as of position 40.
    replay(demo_url, "balances", ledger=LEDGER, until_position=40, swap_in=True)
    assert queries.balances(demo_url, LEDGER) == queries.compute_from_store(
        demo_url, LEDGER, "balances", as_of_position=40
    )


# --- as of, explain -----------------------------------------------------------------------


def test_balances_as_of_a_position_or_a_time_equal_the_fold_up_to_then(demo_url: str) -> None:
    replay(demo_url, ALL)
    events = list(queries.store_events(demo_url, LEDGER))
    assert len(events) > 60
    for event in [*events[:: max(1, len(events) // 12)], events[-1]]:
        assert queries.balances(demo_url, LEDGER, as_of_position=event.position) == (
            queries.compute_from_store(demo_url, LEDGER, "balances", as_of_position=event.position)
        )
        when = datetime.fromisoformat(event.time)
        for moment in (when, when - timedelta(microseconds=1)):
            assert queries.balances(demo_url, LEDGER, as_of=moment) == queries.compute_from_store(
                demo_url, LEDGER, "balances", as_of=moment
            )
    assert queries.balances(demo_url, LEDGER, as_of=events[-1].time) == queries.balances(
        demo_url, LEDGER
    )
    assert queries.balances(demo_url, LEDGER, as_of_position=0) == []


def test_pnl_and_trust_reserve_as_of_a_time_equal_the_fold_up_to_then(demo_url: str) -> None:
    replay(demo_url, ALL)
    live = hashes(demo_url)
    events = list(queries.store_events(demo_url, LEDGER))
    middle = events[len(events) // 2].time
    pnl_then = queries.pnl(demo_url, LEDGER, as_of=middle)
    assert pnl_then == queries.compute_from_store(demo_url, LEDGER, "pnl", as_of=middle)
    assert pnl_then != queries.pnl(demo_url, LEDGER)  # the day went on after that
    trust_then = queries.trust_reserve(demo_url, LEDGER, as_of=middle)
    assert trust_then == queries.compute_from_store(demo_url, LEDGER, "trust-reserve", as_of=middle)
    assert hashes(demo_url) == live  # answered beside the live generations


def test_explain_lists_the_events_whose_sum_is_the_balance(demo_url: str) -> None:
    replay(demo_url, ALL)
    events = {e.position: e for e in queries.store_events(demo_url, LEDGER)}
    balances = queries.balances(demo_url, LEDGER)
    assert balances
    for balance in balances:
        why = queries.explain(demo_url, LEDGER, balance.client, balance.asset, balance.sub_account)
        assert why.total == why.balance == balance.total
        for item in why.events:
            source = events[item.position]
            assert (item.type, item.time) == (
                source.type,
                datetime.fromisoformat(source.time).isoformat(),
            )
            mine = [
                (a, u)
                for a, s, u, info in source.postings
                if s == balance.asset and info.client == balance.client
                and info.sub_account == balance.sub_account
            ]  # fmt: skip
            assert sorted(item.postings) == sorted(mine)
    across_subs = queries.explain(demo_url, LEDGER, "fund-x", "USD")
    assert across_subs.total == across_subs.balance == 97050


# --- P&L worked by hand --------------------------------------------------------------------


def event(position: int, kind: str, data: dict[str, Any], day: int = 20) -> Event:
    return Event(LEDGER, position, kind, f"2026-11-{day:02d}T10:00:00+00:00", data, ())


def trade(position: int, trade_id: str, side: str, btc: str, usd: str, day: int) -> Event:
    """A BTC/USD trade: ``btc`` in satoshis, ``usd`` notional in cents, fee 5.00 USD."""
    data = {
        "trade": trade_id, "client": "fund-x", "sub_account": "main", "side": side,
        "base": "BTC", "quote": "USD", "quantity_units": btc, "notional_units": usd,
        "fee_units": "500", "price": "0",
    }  # fmt: skip
    return event(position, "trade_booked", data, day)


TRADES = [
    trade(1, "t1", "buy", "100000000", "10000000", 20),  # 1 BTC for 100,000.00
    trade(2, "t2", "buy", "100000000", "20000000", 20),  # 1 BTC for 200,000.00
    trade(3, "t3", "sell", "150000000", "45000000", 21),  # 1.5 BTC for 450,000.00
    event(4, "mark_set", {"asset": "BTC", "quote": "USD", "price": "400000"}),
    event(5, "mark_set", {"asset": "USD", "quote": "HKD", "price": "7.8"}),
]


def pnl_of(url: str, events: list[Event], method: str) -> tuple[PnlReport, PnlReport]:
    """The report in USD and HKD after applying ``events`` (one batch each) to a P&L."""
    model = Pnl(method)
    with psycopg.connect(url, autocommit=True) as conn:
        ensure_live(conn, [model])
        for item in events:
            with conn.transaction(), conn.cursor() as cur:
                apply_tracked(cur, model, live_schemas(cur, ["pnl"])["pnl"], [item])
    return queries.pnl(url, LEDGER), queries.pnl(url, LEDGER, currency="HKD")


@pytest.mark.parametrize(
    ("method", "realised", "open_cost", "unrealised"),
    [
        # FIFO: the sale closes lot 1 (cost 100,000) and half of lot 2 (100,000): 450 - 200
        # = 250,000 realised; 0.5 BTC left at cost 100,000, marked at 200,000.
        ("fifo", 25_000_000, 10_000_000, 10_000_000),
        # Average: 2 BTC at 150,000 each; 1.5 sold: 450 - 225 = 225,000; 0.5 BTC at 75,000.
        ("average", 22_500_000, 7_500_000, 12_500_000),
    ],
)
def test_pnl_on_a_stated_cost_method(
    fresh_db_url: str, method: str, realised: int, open_cost: int, unrealised: int
) -> None:
    usd, hkd = pnl_of(fresh_db_url, TRADES, method)
    assert usd.cost_method == method
    by_day = {(line.day, line.asset, line.currency): line for line in usd.lines}
    assert by_day[("2026-11-21", "BTC", "USD")].realised == realised
    assert by_day[("2026-11-20", "BTC", "USD")].fees == 1000  # two trades, 5.00 each
    (position,) = usd.positions
    assert (position.quantity, position.cost, position.unrealised) == (
        50_000_000,
        open_cost,
        unrealised,
    )
    totals = usd.totals["fund-x/main"]
    net = realised + unrealised - 1500
    assert totals["net"] == f"{net // 100}.{net % 100:02d}"
    # In HKD at 7.8 per USD, exactly.
    assert hkd.totals["fund-x/main"]["net"] == f"{net * 78 // 1000}.{net * 78 // 10 % 100:02d}"
    # The same events folded in memory give the same report as the tables.
    state = PnlState(keep_history=True)
    fold(state, TRADES, method)
    lines = [PnlLine(c, s, d, a, cur, *row) for (_, c, s, d, a, cur), row in state.daily.items()]
    lots = [
        (c, s, a, qt, lot.quantity, lot.cost)
        for (_, c, s, a, qt), pool in state.pools.items()
        for lot in pool
    ]
    marks = {(a, qt): m.price for (_, a, qt), m in state.marks.items()}
    assert build_report(LEDGER, "USD", method, lines, lots, marks) == usd


def test_a_generation_keeps_the_cost_method_it_was_built_with(fresh_db_url: str) -> None:
    pnl_of(fresh_db_url, TRADES[:1], "fifo")
    with psycopg.connect(fresh_db_url) as conn, conn.cursor() as cur:
        schema = live_schemas(cur, ["pnl"])["pnl"]
        with pytest.raises(ProjectionSetupError, match="built with 'fifo'"):
            Pnl("average").apply(cur, schema, TRADES[1:2])


def test_a_cancelled_trade_is_taken_out_of_its_pool(fresh_db_url: str) -> None:
    cancel = event(6, "trade_cancelled", {"trade": "t2", "client": "fund-x", "reason": "x"}, 21)
    usd, _ = pnl_of(fresh_db_url, [*TRADES, cancel], "fifo")
    by_day = {(line.day, line.asset, line.currency): line for line in usd.lines}
    # Without t2: the sale of 1.5 BTC closes lot 1 (1 BTC: 300,000 - 100,000 realised) and
    # opens a short of 0.5 BTC at 150,000; t2's fee is gone from its day.
    assert by_day[("2026-11-21", "BTC", "USD")].realised == 20_000_000
    assert by_day[("2026-11-20", "BTC", "USD")].fees == 500
    (position,) = usd.positions
    assert (position.quantity, position.cost) == (-50_000_000, -15_000_000)
    assert position.unrealised == -5_000_000  # short 0.5 BTC marked at 400,000: -200 + 150


# --- trust reserve rules ---------------------------------------------------------------------

BTC = 100_000_000


def moved(position: int, *postings: tuple[str, int]) -> Event:
    """A balanced BTC event (its type does not matter to the trust reserve)."""
    full = tuple((a, "BTC", u, account_info(a)) for a, u in postings)
    return Event(LEDGER, position, "transferred", "2026-11-20T10:00:00+00:00", {}, full)


def test_trust_reserve_cold_ratio_cover_and_shortfall(fresh_db_url: str) -> None:
    def position() -> TrustReservePosition:
        (found,) = queries.trust_reserve(fresh_db_url, LEDGER)
        return found

    # 10 BTC owed to a client, 9.9 in cold storage and 0.1 hot: 99% cold, the rule holds.
    # Cover required: 100% of 0.1 + 50% of 9.9 = 5.05 BTC; there is no insurance fund yet.
    apply_batches(fresh_db_url, [[moved(1, ("custody:cold:c1", 99 * BTC // 10),
                                        ("custody:hot:h1", BTC // 10),
                                        ("client:a:m:available", -10 * BTC))]])  # fmt: skip
    found = position()
    assert (found.holdings, found.shortfall, found.cold_ratio) == (10 * BTC, 0, Fraction(99, 100))
    assert (found.cover_required, found.cover_shortfall) == (505 * BTC // 100, 505 * BTC // 100)
    assert found.alerts == ("compensation_cover_shortfall",)
    assert found.to_json()["cold_ratio"] == "99.00%"
    # The insurance fund sets 5 BTC aside (held with an insurer): 0.05 BTC short of cover.
    apply_batches(fresh_db_url, [[moved(2, ("counterparty:insurer", 5 * BTC),
                                        ("house:insurance_fund", -5 * BTC))]])  # fmt: skip
    assert position().cover_shortfall == 5 * BTC // 100
    # A deposit of 1 BTC lands in the hot wallet: 9.9 / 11 = 90% cold, below the 98% rule;
    # cover now needs 1.1 + 4.95 = 6.05 BTC.
    apply_batches(fresh_db_url, [[moved(3, ("custody:hot:h1", BTC),
                                        ("client:a:m:available", -BTC))]])  # fmt: skip
    found = position()
    assert found.to_json()["cold_ratio"] == "90.00%"
    assert found.alerts == ("cold_storage_below_98pct", "compensation_cover_shortfall")
    assert found.cover_required == 605 * BTC // 100
    # A liability without holdings behind it (a correction credited to the client): 1 BTC
    # owed that is not on trust.
    apply_batches(fresh_db_url, [[moved(4, ("house:corrections", BTC),
                                        ("client:a:m:available", -BTC))]])  # fmt: skip
    found = position()
    assert (found.client_liabilities, found.holdings, found.shortfall) == (12 * BTC, 11 * BTC, BTC)
    assert found.surplus == 0  # a shortfall and a surplus never show together
    assert found.alerts[0] == "trust_shortfall"


# --- decoding --------------------------------------------------------------------------------


def valid_body() -> dict[str, Any]:
    return {
        "v": 1, "ledger": "t", "position": 2, "type": "fiat_deposited", "key": "k2",
        "time": "2026-11-22T04:40:00.123456+00:00", "prev": "0" * 64, "hash": "1" * 64,
        "data": {"client": "fund-a", "sub_account": "main", "asset": "USD", "units": "100050"},
        "postings": [
            {"account": "trust_bank:trust-bank-1", "asset": "USD", "units": "100050",
             "amount": "1000.50"},
            {"account": "client:fund-a:main:available", "asset": "USD", "units": "-100050",
             "amount": "-1000.50"},
        ],
    }  # fmt: skip


def changed(path: str, value: Any) -> bytes:
    body = valid_body()
    target: Any = body
    *parents, last = path.split(".")
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    target[int(last) if last.isdigit() else last] = value
    return orjson.dumps(body)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\x00garbage{", "body: not JSON"),
        (b"[1, 2]", "body: not a JSON object"),
        (changed("v", 2), "v: schema version 2"),
        (changed("type", "teleported"), "type: unknown event type 'teleported'"),
        (changed("ledger", "a\\b"), "ledger:"),
        (changed("position", "2"), "position: expected an integer"),
        (changed("time", "yesterday"), "time:"),
        (changed("data", []), "data: expected an object"),
        (changed("postings.0.asset", "DOGE"), "postings[0].asset: unknown asset 'DOGE'"),
        (changed("postings.1.account", "client:fund-a:main:pocket"), "postings[1].account"),
        (changed("postings.0.units", "1000.50"), "postings[0].units"),
        (changed("postings.0.units", "+100050"), "postings[0].units"),
        # Whatever int() would forgive, decode refuses: the writer only writes canonical units.
        (changed("postings.0.units", " 100050"), "postings[0].units"),
        (changed("postings.0.units", "100_050"), "postings[0].units"),
        (changed("postings.1.units", "-0100050"), "postings[1].units"),
        (changed("postings.0.units", 100050), "postings[0].units"),
        (changed("postings.0.units", "100051"), "postings: unbalanced in USD"),
    ],
)
def test_decode_refuses_with_a_reason_naming_the_field(raw: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(raw)
    assert caught.value.reason.startswith(reason), caught.value.reason


def test_decode_reads_what_the_writer_writes() -> None:
    decoded = decode(orjson.dumps(valid_body()))
    assert (decoded.ledger, decoded.position, decoded.type) == ("t", 2, "fiat_deposited")
    assert [(a, s, u) for a, s, u, _ in decoded.postings] == [
        ("trust_bank:trust-bank-1", "USD", 100050),
        ("client:fund-a:main:available", "USD", -100050),
    ]
    assert decoded.postings[1][3].bucket == "available"


# --- properties ------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=300), max_size=80), st.integers(1, 310))
def test_positions_are_a_set(positions: list[int], probe: int) -> None:
    ranges = Positions.of(positions)
    assert (probe in ranges) == (probe in set(positions))
    assert parse_multirange(ranges.literal()).ranges() == ranges.ranges()
    half = Positions.of(positions[: len(positions) // 2])
    rest = Positions.of(positions[len(positions) // 2 :])
    assert half.union(rest).ranges() == ranges.ranges()
    assert half.overlaps(rest) == bool(
        set(positions[: len(positions) // 2]) & set(positions[len(positions) // 2 :])
    )


trades = st.lists(
    st.tuples(st.sampled_from([1, -1]), st.integers(1, 10**9), st.integers(1, 10**12)),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(trades, st.sampled_from(["fifo", "average"]))
def test_matching_lots_never_loses_or_makes_up_a_unit(
    items: list[tuple[int, int, int]], method: str
) -> None:
    """Quantity is conserved, and cash paid = cost still open - P&L realised."""
    lots: list[Any] = []
    realised = 0
    pool = (LEDGER, "c", "s", "BTC", "USD")
    for position, (sign, quantity, value) in enumerate(items, start=1):
        item = Trade(str(position), position, "2026-11-20", pool, sign * quantity, sign * value, 0)
        realised += match(lots, item, method)
        assert all(lot.quantity for lot in lots)
        assert len({lot.quantity > 0 for lot in lots}) <= 1  # never long and short at once
    assert sum(lot.quantity for lot in lots) == sum(s * q for s, q, _ in items)
    assert sum(s * v for s, _, v in items) == sum(lot.cost for lot in lots) - realised
