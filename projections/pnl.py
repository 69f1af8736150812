"""P&L by sub-account: realised on a stated cost method, fees, and the marks to value positions.

What feeds it:

* ``trade_booked``: ``client``, ``sub_account``, ``side`` ("buy"/"sell"), ``base``, ``quote``,
  ``quantity_units`` (base minor units), ``notional_units`` (the client's quote amount, spread
  included) and ``fee_units`` (in the quote). A trade opens or closes lots of its cost pool;
  closing realises P&L in the quote. P&L is recognised on the trade date, not on settlement.
* ``trade_cancelled`` (only an unsettled trade can be cancelled): the trade never happened, so
  its pool is recomputed from its stored trades without it and the difference in realised
  P&L (and its fee) is booked on the days they were first booked.
* ``fee_charged`` and the reversal of one: the client's postings in the event are the fee.
* ``mark_set``: the latest mark (by position) per (asset, quote); the report values open lots
  and converts figures into the reporting currency with it (``pnl_report``).

Cost pools are per (client, sub-account, base, quote): a position bought with USD is matched
against sells for USD. FIFO matches the oldest lot first; average cost keeps one lot per pool.
A sell beyond the long position opens a short lot (and a buy closes it the same way).

Interest, staking rewards and funding have columns already; the events that feed them
(loans, staking, perpetuals) are not in the public schema yet.

Tables: ``pnl_daily`` (sums per ledger, client, sub-account, UTC day, asset and the currency
the amounts are in), ``lots`` (open lots), ``trades`` (every trade, for cancellations),
``marks`` (latest mark per pair) and ``meta`` (the cost method the generation was built with:
changing it needs a replay).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any, Final

from ledger.money import ASSETS, parse_units
from projections.base import (
    Batch,
    Cursor,
    ProjectionSetupError,
    UnusableEventError,
    q,
    small,
    upsert_sum,
)
from projections.decode import CLIENT, Event

COST_METHODS: Final[tuple[str, ...]] = ("fifo", "average")
PNL_COLUMNS: Final = ("realised", "fees", "interest", "staking_rewards", "funding")
POOL_COLUMNS: Final = ("ledger", "client", "sub_account", "asset", "quote")  # a PoolKey
REALISED, FEES = 0, 1  # indexes into PNL_COLUMNS
BOOKED: Final = "trade_booked"
CANCELLED: Final = "trade_cancelled"
FEE: Final = "fee_charged"
MARK: Final = "mark_set"
REVERSAL: Final = "event_reversed"
RELEVANT_TYPES: Final = frozenset({BOOKED, CANCELLED, MARK, FEE, REVERSAL})  # a first cut

DailyKey = tuple[str, str, str, str, str, str]  # ledger, client, sub, day, asset, currency
PoolKey = tuple[str, str, str, str, str]  # ledger, client, sub, base, quote
MarkKey = tuple[str, str, str]  # ledger, asset, quote
TradeKey = tuple[str, str]  # ledger, trade id


@dataclass(slots=True)
class Lot:
    opened: int  # position of the trade that opened it
    quantity: int  # base minor units; negative for a short lot
    cost: int  # quote minor units, same sign as quantity


@dataclass(frozen=True, slots=True)
class Trade:
    trade: str
    position: int
    day: str
    pool: PoolKey
    quantity: int  # signed: + buy, - sell
    value: int  # quote minor units, signed like quantity
    fee: int  # quote minor units paid


@dataclass(frozen=True, slots=True)
class Mark:
    price: str
    position: int
    time: str


@dataclass
class PnlState:
    """What a fold reads and changes: a batch's view (``Pnl.write``) or the whole log's.

    ``history`` must hold the complete trade list of any pool a cancellation touches;
    ``keep_history`` makes the fold record every trade there (a fold of the whole log).
    """

    daily: dict[DailyKey, list[int]] = field(default_factory=dict)
    pools: dict[PoolKey, list[Lot]] = field(default_factory=dict)
    marks: dict[MarkKey, Mark] = field(default_factory=dict)
    trades: dict[TradeKey, Trade] = field(default_factory=dict)
    history: dict[PoolKey, list[Trade]] = field(default_factory=dict)
    cancelled: set[TradeKey] = field(default_factory=set)
    stored_cancelled: set[TradeKey] = field(default_factory=set)  # already so in the tables
    new_trades: list[Trade] = field(default_factory=list)
    keep_history: bool = False

    def add(self, key: DailyKey, column: int, units: int) -> None:
        row = self.daily.get(key)
        if row is None:
            row = self.daily[key] = [0] * len(PNL_COLUMNS)
        row[column] += units


@dataclass
class HeldPnl:
    """A rebuild's P&L held in memory, and the pools changed since it was last written."""

    state: PnlState
    touched: set[PoolKey] = field(default_factory=set)


def utc_day(time: str) -> str:
    if time.endswith(("+00:00", "Z")):
        return time[:10]
    return datetime.fromisoformat(time).astimezone(UTC).date().isoformat()


def is_relevant(event: Event) -> bool:
    return event.type in (BOOKED, CANCELLED, MARK) or _is_fee(event)


def _is_fee(event: Event) -> bool:
    """A fee, or the reversal of one (its client postings undo the fee)."""
    kind = event.type
    return kind == FEE or (kind == REVERSAL and event.data.get("reversed_type") == FEE)


def parse_trade(event: Event) -> Trade:
    """A trade from a ``trade_booked`` event; ``UnusableEventError`` names the bad field."""
    data = event.data
    try:
        side, base, quote = data["side"], data["base"], data["quote"]
        quantity = _positive_int(data["quantity_units"], "quantity_units")
        value = _positive_int(data["notional_units"], "notional_units")
        fee = _natural_int(data.get("fee_units", "0"), "fee_units")
        pool = (event.ledger, data["client"], data["sub_account"], base, quote)
        trade = data["trade"]
    except KeyError as exc:
        raise UnusableEventError(f"data.{exc.args[0]}: missing in trade_booked") from None
    if side not in ("buy", "sell"):
        raise UnusableEventError(f"data.side: expected buy or sell, got {side!r}")
    if base not in ASSETS or quote not in ASSETS:
        raise UnusableEventError(f"data.base/quote: unknown asset in {base}/{quote}")
    sign = 1 if side == "buy" else -1
    day = utc_day(event.time)
    return Trade(str(trade), event.position, day, pool, sign * quantity, sign * value, fee)


def _natural_int(text: object, name: str) -> int:
    if not isinstance(text, str) or not text.isascii() or not text.isdigit():
        raise UnusableEventError(f"data.{name}: expected a non-negative integer string")
    return int(text)


def _positive_int(text: object, name: str) -> int:
    value = _natural_int(text, name)
    if value == 0:
        raise UnusableEventError(f"data.{name}: must be greater than zero")
    return value


def price_of(text: object) -> Fraction:
    """A positive decimal price, exactly (up to 18 decimals, ETH's scale)."""
    if not isinstance(text, str):
        raise UnusableEventError("price: expected a decimal string")
    try:
        units = parse_units(text, "ETH", field="price")
    except ValueError as exc:
        raise UnusableEventError(str(exc)) from None
    if units <= 0:
        raise UnusableEventError(f"price: must be greater than zero, got {text!r}")
    return Fraction(units, 10**18)


def match(lots: list[Lot], trade: Trade, method: str) -> int:
    """Apply a trade to a pool's lots (in place); the realised P&L in quote minor units.

    A lot matched in part gives up a proportional share of its cost, rounded half-even, and
    keeps the rest, so no unit of cost is ever lost or made up.
    """
    remaining, value, realised = trade.quantity, trade.value, 0
    while remaining and lots and (lots[0].quantity > 0) != (remaining > 0):
        lot = lots[0]
        matched = min(abs(remaining), abs(lot.quantity))
        lot_cost = round(Fraction(lot.cost * matched, abs(lot.quantity)))
        trade_value = round(Fraction(value * matched, abs(remaining)))
        # Selling a long lot: proceeds (-trade_value) minus its cost; covering a short: the
        # reverse. Both are -(lot_cost + trade_value) with these signs.
        realised -= lot_cost + trade_value
        step = matched if remaining > 0 else -matched
        lot.quantity += step
        lot.cost -= lot_cost
        remaining -= step
        value -= trade_value
        if lot.quantity == 0:
            lots.pop(0)
    if remaining:
        if method == "average" and lots:
            lots[0].quantity += remaining
            lots[0].cost += value
        else:
            lots.append(Lot(trade.position, remaining, value))
    return realised


def run_pool(
    trades: Iterable[Trade], cancelled: set[TradeKey], method: str
) -> tuple[list[Lot], dict[str, int]]:
    """A pool's lots and realised P&L per day from its trades (cancelled ones left out)."""
    lots: list[Lot] = []
    by_day: dict[str, int] = {}
    for trade in sorted(trades, key=lambda t: t.position):
        if (trade.pool[0], trade.trade) not in cancelled:
            by_day[trade.day] = by_day.get(trade.day, 0) + match(lots, trade, method)
    return lots, by_day


def fold(state: PnlState, events: Iterable[Event], method: str) -> None:
    """Fold the P&L-relevant events into ``state``, in log order."""
    for event in events:
        kind = event.type
        if kind == MARK:
            _mark(state, event)
        elif kind == BOOKED:
            _book(state, parse_trade(event), method)
        elif kind == CANCELLED:
            _cancel(state, event, method)
        elif _is_fee(event):
            _fee(state, event)


def _check_cancellations(state: PnlState, events: Iterable[Event]) -> None:
    """Raise, before anything is folded, what ``_cancel`` would raise for these events."""
    booked: set[TradeKey] = set()
    cancelled: set[TradeKey] = set()
    for event in events:
        if event.type == BOOKED:
            booked.add((event.ledger, str(event.data["trade"])))
        elif event.type == CANCELLED:
            key = (event.ledger, str(event.data.get("trade")))
            known = key in state.trades or key in booked
            if not known or key in state.cancelled or key in cancelled:
                raise UnusableEventError(f"data.trade: no booked trade {key[1]!r} to cancel")
            cancelled.add(key)


def _book(state: PnlState, trade: Trade, method: str) -> None:
    ledger, client, sub, base, quote = trade.pool
    state.trades[(ledger, trade.trade)] = trade
    state.new_trades.append(trade)
    if trade.pool in state.history or state.keep_history:
        state.history.setdefault(trade.pool, []).append(trade)
    realised = match(state.pools.setdefault(trade.pool, []), trade, method)
    state.add((ledger, client, sub, trade.day, base, quote), REALISED, realised)
    if trade.fee:
        state.add((ledger, client, sub, trade.day, base, quote), FEES, trade.fee)


def _cancel(state: PnlState, event: Event, method: str) -> None:
    key = (event.ledger, str(event.data.get("trade")))
    trade = state.trades.get(key)
    if trade is None or key in state.cancelled:
        raise UnusableEventError(f"data.trade: no booked trade {key[1]!r} to cancel")
    history = state.history[trade.pool]
    before_lots, before = run_pool(history, state.cancelled, method)
    if _lot_tuples(before_lots) != _lot_tuples(state.pools.get(trade.pool, [])):
        # Paired check: the stored lots must be what the pool's trades give.
        raise AssertionError(f"pool {trade.pool}: stored lots differ from its trades")
    state.cancelled.add(key)
    after_lots, after = run_pool(history, state.cancelled, method)
    state.pools[trade.pool] = after_lots
    ledger, client, sub, base, quote = trade.pool
    for day in sorted(set(before) | set(after)):
        change = after.get(day, 0) - before.get(day, 0)
        state.add((ledger, client, sub, day, base, quote), REALISED, change)
    if trade.fee:
        state.add((ledger, client, sub, trade.day, base, quote), FEES, -trade.fee)


def _lot_tuples(lots: list[Lot]) -> list[tuple[int, int, int]]:
    return [(lot.opened, lot.quantity, lot.cost) for lot in lots]


def _mark(state: PnlState, event: Event) -> None:
    data = event.data
    asset, quote, price = data.get("asset"), data.get("quote"), data.get("price")
    if asset not in ASSETS or quote not in ASSETS:
        raise UnusableEventError(f"mark_set at {event.position}: unknown asset or quote")
    price_of(price)
    key = (event.ledger, str(asset), str(quote))
    known = state.marks.get(key)
    if known is None or known.position < event.position:
        state.marks[key] = Mark(str(price), event.position, event.time)


def _fee(state: PnlState, event: Event) -> None:
    # A fee debits the client's account (+units = paid); its reversal credits it back.
    day = utc_day(event.time)
    for _, asset, units, info in event.postings:
        if info[0] == CLIENT:
            state.add((event.ledger, info[1], info[2], day, asset, asset), FEES, units)


class Pnl:
    name: Final = "pnl"

    def __init__(self, cost_method: str = "fifo") -> None:
        if cost_method not in COST_METHODS:
            raise ValueError(f"cost_method: expected one of {COST_METHODS}, got {cost_method!r}")
        self.cost_method = cost_method

    def create_sql(self, schema: str) -> list[str]:
        sums = ", ".join(f"{c} numeric(60,0) NOT NULL DEFAULT 0" for c in PNL_COLUMNS)
        pool = (
            "ledger text NOT NULL, client text NOT NULL, sub_account text NOT NULL,"
            " asset text NOT NULL, quote text NOT NULL"
        )
        return [
            q(
                schema,
                "CREATE TABLE {s}.pnl_daily (ledger text NOT NULL, client text NOT NULL,"
                " sub_account text NOT NULL, day date NOT NULL, asset text NOT NULL,"
                f" currency text NOT NULL, {sums},"
                " PRIMARY KEY (ledger, client, sub_account, day, asset, currency))",
            ),
            q(
                schema,
                f"CREATE TABLE {{s}}.lots ({pool}, opened bigint NOT NULL,"
                " quantity numeric(60,0) NOT NULL, cost numeric(60,0) NOT NULL,"
                " PRIMARY KEY (ledger, client, sub_account, asset, quote, opened))",
            ),
            q(
                schema,
                f"CREATE TABLE {{s}}.trades ({pool}, trade text NOT NULL,"
                " position bigint NOT NULL, day date NOT NULL, quantity numeric(60,0) NOT NULL,"
                " value numeric(60,0) NOT NULL, fee numeric(60,0) NOT NULL,"
                " cancelled boolean NOT NULL DEFAULT false, PRIMARY KEY (ledger, trade))",
            ),
            q(
                schema,
                "CREATE TABLE {s}.marks (ledger text NOT NULL, asset text NOT NULL,"
                " quote text NOT NULL, price text NOT NULL, position bigint NOT NULL,"
                " time timestamptz NOT NULL, PRIMARY KEY (ledger, asset, quote))",
            ),
            q(schema, "CREATE TABLE {s}.meta (key text PRIMARY KEY, value text NOT NULL)"),
            # cost_method is one of COST_METHODS (checked in __init__): safe to inline.
            q(schema, f"INSERT INTO {{s}}.meta VALUES ('cost_method', '{self.cost_method}')"),
        ]

    def index_sql(self, schema: str) -> list[str]:
        return [
            q(
                schema,
                "CREATE INDEX trades_by_pool ON {s}.trades"
                " (ledger, client, sub_account, asset, quote, position)",
            )
        ]

    def hash_sql(self, schema: str) -> list[str]:
        c = 'COLLATE "C"'
        pool = f"ledger {c}, client {c}, sub_account {c}, asset {c}, quote {c}"
        return [
            q(schema, f"SELECT key, value FROM {{s}}.meta ORDER BY key {c}"),
            q(
                schema,
                "SELECT ledger, client, sub_account, day, asset, currency,"
                f" {', '.join(PNL_COLUMNS)} FROM {{s}}.pnl_daily"
                f" ORDER BY ledger {c}, client {c}, sub_account {c}, day, asset {c}, currency {c}",
            ),
            q(
                schema,
                "SELECT ledger, client, sub_account, asset, quote, opened, quantity, cost"
                f" FROM {{s}}.lots ORDER BY {pool}, opened",
            ),
            q(
                schema,
                "SELECT ledger, trade, client, sub_account, asset, quote, position, day,"
                " quantity, value, fee, cancelled FROM {s}.trades"
                f" ORDER BY ledger {c}, trade {c}",
            ),
            q(
                schema,
                "SELECT ledger, asset, quote, price, position, time FROM {s}.marks"
                f" ORDER BY ledger {c}, asset {c}, quote {c}",
            ),
        ]

    def check_method(self, cur: Cursor, schema: str) -> None:
        """Refuse to extend a generation built with another cost method."""
        row = cur.execute(
            q(schema, "SELECT value FROM {s}.meta WHERE key = 'cost_method'")
        ).fetchone()
        if row is not None and row[0] != self.cost_method:
            raise ProjectionSetupError(
                f"cost_method: {schema} was built with {row[0]!r}, not {self.cost_method!r};"
                " replay to change it"
            )

    checked_types: Final = frozenset({BOOKED, MARK})

    def check(self, event: Event) -> None:
        """Trades and marks must carry what the fold reads (a cancellation of an unknown
        trade can only be found against the stored trades, when it is applied)."""
        if event.type == BOOKED:
            parse_trade(event)
        elif event.type == MARK:
            _mark(PnlState(), event)

    def apply(self, cur: Cursor, schema: str, events: Sequence[Event]) -> None:
        self.write(cur, schema, self.aggregate(Batch(events)))

    def aggregate(self, batch: Batch) -> list[Event]:
        """The events that matter here; FIFO needs the stored lots, so the fold is in write.

        Only fees are folded from their postings: the others (trades, cancellations, marks)
        are kept without them, since a rebuild pickles this list from the process that
        aggregates to the one that writes, and a trade's legs are most of its size.
        """
        candidates = RELEVANT_TYPES
        relevant = []
        for event in batch.events:
            if event[2] in candidates and is_relevant(event):
                relevant.append(event if _is_fee(event) else event._replace(postings=()))
        return relevant

    def write(self, cur: Cursor, schema: str, relevant: list[Event]) -> None:
        if not relevant:
            return
        self.check_method(cur, schema)
        state = self._load(cur, schema, relevant)
        fold(state, relevant, self.cost_method)
        self._save_trades(cur, schema, state)
        self._save_pools(cur, schema, state.pools)
        self._save_daily(cur, schema, state.daily)
        self._save_marks(cur, schema, state.marks)

    # --- held back by a rebuild (see ``base.HoldsBack``) -----------------------------------
    # The whole P&L state stays in memory while a new generation is built: pools, marks and
    # every trade (for cancellations). Trades, cancellations and marks are still written with
    # their page, so that the database refuses what it would refuse page by page (a trade id
    # booked twice, a value out of range, a time it cannot read); lots and daily sums, which
    # each page used to read and rewrite, are written when the held state is.

    def start_holding(self) -> HeldPnl:
        return HeldPnl(PnlState(keep_history=True))

    def holdable(self, relevant: list[Event]) -> bool:
        return all(
            small((t.quantity, t.value, t.fee))
            for t in (parse_trade(e) for e in relevant if e.type == BOOKED)
        )

    def write_page(
        self, cur: Cursor, schema: str, relevant: list[Event], held: HeldPnl
    ) -> list[Event]:
        if not relevant:
            return relevant
        _check_cancellations(held.state, relevant)
        page = PnlState()
        for event in relevant:
            if event.type == BOOKED:
                page.new_trades.append(parse_trade(event))
            elif event.type == CANCELLED:
                page.cancelled.add((event.ledger, str(event.data.get("trade"))))
            elif event.type == MARK:
                _mark(page, event)
        self._save_trades(cur, schema, page)
        self._save_marks(cur, schema, page.marks)
        return relevant

    def add(self, held: HeldPnl, pending: list[Event]) -> None:
        state = held.state
        fold(state, pending, self.cost_method)
        held.touched.update(t.pool for t in state.new_trades)
        state.new_trades.clear()
        for event in pending:
            if event.type == CANCELLED:
                held.touched.add(state.trades[(event.ledger, str(event.data["trade"]))].pool)

    def held_size(self, held: HeldPnl) -> int:
        return len(held.state.trades)

    def write_held(self, cur: Cursor, schema: str, held: HeldPnl) -> None:
        state = held.state
        self._save_pools(cur, schema, {pool: state.pools.get(pool, []) for pool in held.touched})
        self._save_daily(cur, schema, state.daily)
        held.touched.clear()
        state.daily.clear()

    # --- loading what the batch needs ---------------------------------------------------
    def _load(self, cur: Cursor, schema: str, relevant: list[Event]) -> PnlState:
        """Lots of every pool the batch trades in; full history of pools it cancels in."""
        state = PnlState()
        booked = {
            (e.ledger, str(e.data["trade"])): parse_trade(e) for e in relevant if e.type == BOOKED
        }
        cancels = [(e.ledger, str(e.data.get("trade"))) for e in relevant if e.type == CANCELLED]
        earlier = [k for k in cancels if k not in booked]
        stored = (
            _select_trades(
                cur,
                schema,
                "(ledger, trade) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
                [[k[0] for k in earlier], [k[1] for k in earlier]],
            )
            if earlier
            else []
        )
        history_pools = {t.pool for t, _ in stored} | {
            booked[k].pool for k in cancels if k in booked
        }
        if history_pools:
            rows = _select_trades(
                cur,
                schema,
                "(ledger, client, sub_account, asset, quote) IN (SELECT * FROM unnest("
                "%s::text[], %s::text[], %s::text[], %s::text[], %s::text[]))",
                [list(c) for c in zip(*history_pools, strict=True)],
            )
            for trade, cancelled in rows:
                key = (trade.pool[0], trade.trade)
                state.history.setdefault(trade.pool, []).append(trade)
                state.trades[key] = trade
                if cancelled:
                    state.cancelled.add(key)
                    state.stored_cancelled.add(key)
            for pool in history_pools:
                state.history.setdefault(pool, [])
        state.pools = _load_lots(cur, schema, {t.pool for t in booked.values()} | history_pools)
        return state

    # --- saving ---------------------------------------------------------------------------
    def _save_trades(self, cur: Cursor, schema: str, state: PnlState) -> None:
        if state.new_trades:
            _copy_rows(
                cur,
                q(schema, "{s}.trades"),
                (*POOL_COLUMNS, "trade", "position", "day", "quantity", "value", "fee"),
                (
                    (*t.pool, t.trade, t.position, t.day, t.quantity, t.value, t.fee)
                    for t in state.new_trades
                ),
            )
        newly = sorted(state.cancelled - state.stored_cancelled)
        if newly:
            cur.execute(
                q(
                    schema,
                    "UPDATE {s}.trades SET cancelled = true WHERE (ledger, trade) IN"
                    " (SELECT * FROM unnest(%s::text[], %s::text[]))",
                ),
                [[k[0] for k in newly], [k[1] for k in newly]],
            )

    def _save_daily(self, cur: Cursor, schema: str, daily: dict[DailyKey, list[int]]) -> None:
        upsert_sum(
            cur,
            q(schema, "{s}.pnl_daily"),
            ("ledger", "client", "sub_account", "day", "asset", "currency"),
            PNL_COLUMNS,
            [(*key, *row) for key, row in daily.items()],
            key_types=("text", "text", "text", "date", "text", "text"),
        )

    def _save_pools(self, cur: Cursor, schema: str, pools: Mapping[PoolKey, list[Lot]]) -> None:
        if not pools:
            return
        keys = [list(c) for c in zip(*pools, strict=True)]
        cur.execute(
            q(
                schema,
                "DELETE FROM {s}.lots l USING unnest(%s::text[], %s::text[], %s::text[],"
                " %s::text[], %s::text[]) AS k(ledger, client, sub_account, asset, quote)"
                " WHERE (l.ledger, l.client, l.sub_account, l.asset, l.quote)"
                " = (k.ledger, k.client, k.sub_account, k.asset, k.quote)",
            ),
            keys,
        )
        _copy_rows(
            cur,
            q(schema, "{s}.lots"),
            (*POOL_COLUMNS, "opened", "quantity", "cost"),
            (
                (*pool, lot.opened, lot.quantity, lot.cost)
                for pool, lots in pools.items()
                for lot in lots
            ),
        )

    def _save_marks(self, cur: Cursor, schema: str, marks: Mapping[MarkKey, Mark]) -> None:
        if not marks:
            return
        columns = [
            list(c)
            for c in zip(
                *((*k, m.price, m.position, m.time) for k, m in marks.items()), strict=True
            )
        ]
        cur.execute(
            q(
                schema,
                "INSERT INTO {s}.marks AS m SELECT * FROM unnest(%s::text[], %s::text[],"
                " %s::text[], %s::text[], %s::bigint[], %s::timestamptz[])"
                " ON CONFLICT (ledger, asset, quote) DO UPDATE SET price = excluded.price,"
                " position = excluded.position, time = excluded.time"
                " WHERE m.position < excluded.position",
            ),
            columns,
        )


def _copy_rows(
    cur: Cursor, table: str, columns: Sequence[str], rows: Iterable[tuple[Any, ...]]
) -> None:
    """Insert ``rows`` with one COPY: a row per statement (executemany) costs a round of
    parsing and planning each, and psycopg's row encoder (C) escapes every field at a fraction
    of the CPU of adapting unnested arrays. Integers go as text into NUMERIC columns (amounts
    in wei do not fit in BIGINT); a duplicate key fails as it would row by row."""
    with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        write = copy.write_row
        for row in rows:
            write(row)


def _select_trades(
    cur: Cursor, schema: str, where: str, params: list[Any]
) -> list[tuple[Trade, bool]]:
    cur.execute(
        q(
            schema,
            "SELECT ledger, client, sub_account, asset, quote, trade, position, day::text,"
            f" quantity::text, value::text, fee::text, cancelled FROM {{s}}.trades WHERE {where}"
            " ORDER BY position",
        ),
        params,
    )
    return [
        (Trade(trade, position, day, (lg, cl, sb, base, qt), int(n), int(v), int(f)), cancelled)
        for lg, cl, sb, base, qt, trade, position, day, n, v, f, cancelled in cur.fetchall()
    ]


def _load_lots(cur: Cursor, schema: str, pools: set[PoolKey]) -> dict[PoolKey, list[Lot]]:
    found: dict[PoolKey, list[Lot]] = {pool: [] for pool in pools}
    if not pools:
        return found
    cur.execute(
        q(
            schema,
            "SELECT l.ledger, l.client, l.sub_account, l.asset, l.quote, l.opened,"
            " l.quantity::text, l.cost::text FROM {s}.lots l JOIN unnest(%s::text[],"
            " %s::text[], %s::text[], %s::text[], %s::text[]) AS k(ledger, client,"
            " sub_account, asset, quote) USING (ledger, client, sub_account, asset, quote)"
            " ORDER BY l.opened",
        ),
        [list(c) for c in zip(*pools, strict=True)],
    )
    for ledger, client, sub, base, quote, opened, quantity, cost in cur.fetchall():
        found[(ledger, client, sub, base, quote)].append(Lot(opened, int(quantity), int(cost)))
    return found
