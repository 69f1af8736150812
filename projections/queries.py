"""Questions asked of the read models, and the same answers computed straight from the store.

Every query reads the live generation, holding its pointer row ``FOR SHARE`` so that a replay
cannot drop the generation under it. Balances as of a time or position, and ``explain``, read
the events the balances read model indexed (``client_events``: which positions touched which
client) from the store, the system of record, and sum their postings: one client's events
cost a few index lookups, but as-of without a client reads the ledger's whole log. P&L and the
trust reserve as of a time are rebuilt up to then (``past``).
``compute_from_store`` folds the public log in memory (no read model involved) into the same
shapes: tests compare the two, and an operator can.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import psycopg

from ledger.events import ledger_id  # public: which rows of the log are a ledger's
from ledger.money import format_units
from projections.base import EVENTS_TABLE, q
from projections.catalog import ALL, canonical, read_model, read_models, unusable
from projections.client_balances import BUCKETS, index_missing
from projections.decode import CLIENT, DecodeError, Event, decode
from projections.generations import drop_schema, live_schemas
from projections.pnl import PNL_COLUMNS, PnlState, fold
from projections.pnl_report import PnlLine, PnlReport, build_report
from projections.replay import StoreReader, replay
from projections.trust_reserve import COLUMNS as TRUST_COLUMNS
from projections.trust_reserve import TrustReservePosition


@dataclass(frozen=True, slots=True)
class Balance:
    """A (client, sub-account, asset) balance: units per bucket (normal direction) and total."""

    client: str
    sub_account: str
    asset: str
    units: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.units.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "sub_account": self.sub_account,
            "asset": self.asset,
            **{b: format_units(self.units.get(b, 0), self.asset) for b in BUCKETS},
            "total": format_units(self.total, self.asset),
        }


@dataclass(frozen=True, slots=True)
class ExplainedEvent:
    position: int
    time: str
    type: str
    postings: list[tuple[str, int]]  # (client account, posting units: + debit, - credit)

    @property
    def change(self) -> int:
        """What the event did to the balance (client accounts are credit-normal)."""
        return -sum(units for _, units in self.postings)


@dataclass(frozen=True, slots=True)
class Explanation:
    ledger: str
    client: str
    asset: str
    sub_account: str | None
    events: list[ExplainedEvent]
    balance: int  # the read model's current total

    @property
    def total(self) -> int:
        """The sum of the listed events; equals ``balance`` when the read model is sound."""
        return sum(e.change for e in self.events)

    def to_json(self) -> dict[str, Any]:
        def money(units: int) -> str:
            return format_units(units, self.asset)

        return {
            "ledger": self.ledger,
            "client": self.client,
            "sub_account": self.sub_account,
            "asset": self.asset,
            "balance": money(self.balance),
            "sum_of_events": money(self.total),
            "events": [
                {
                    "position": e.position,
                    "time": e.time,
                    "type": e.type,
                    "postings": [
                        {"account": a, "units": str(u), "amount": money(u)} for a, u in e.postings
                    ],
                    "change": money(e.change),
                }
                for e in self.events
            ],
        }


# --- Queries of the read models ---------------------------------------------------------


def _live(cur: psycopg.Cursor[Any], name: str) -> str:
    return live_schemas(cur, [name])[name]


def balances(
    url: str,
    ledger: str,
    client: str | None = None,
    as_of: datetime | str | None = None,
    as_of_position: int | None = None,
) -> list[Balance]:
    """Balances now, or as of a time or a ledger position (summed from the indexed events).

    As of a time or position, the events come from the store (``_indexed_events``): one
    client's are few, but without a client every event of the ledger that touched a client
    is read and decoded, in pages.
    """
    if as_of is None and as_of_position is None:
        return _balances(_current(url, ledger, client))
    when = datetime.fromisoformat(as_of) if isinstance(as_of, str) else as_of
    if when is not None and when.utcoffset() is None:
        raise ValueError(f"as_of: {when.isoformat()} needs a time zone offset")
    with psycopg.connect(url) as conn:
        schema = _snapshot(conn)
        found: dict[tuple[str, str, str], dict[str, int]] = {}
        for event in _indexed_events(conn, schema, ledger, client, as_of_position):
            if when is None or datetime.fromisoformat(event.time) <= when:
                _add_postings(found, event, client)
    return _balances(found)


def _current(
    url: str, ledger: str, client: str | None
) -> dict[tuple[str, str, str], dict[str, int]]:
    where, params = "ledger = %s", [ledger]
    if client is not None:
        where, params = where + " AND client = %s", [ledger, client]
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        schema = _live(cur, "client_balances")
        cur.execute(
            q(
                schema,
                "SELECT client, sub_account, asset, bucket, units::text"
                f" FROM {{s}}.balances WHERE {where}",
            ),
            params,
        )
        rows = cur.fetchall()
    found: dict[tuple[str, str, str], dict[str, int]] = {}
    for client_id, sub, asset, bucket, units in rows:
        found.setdefault((client_id, sub, asset), {})[bucket] = int(units)
    return found


def _add_postings(
    found: dict[tuple[str, str, str], dict[str, int]], event: Event, client: str | None
) -> None:
    """Add the event's client postings (of ``client`` only, if given) in normal direction."""
    for _, asset, units, info in event.postings:
        if info.kind == CLIENT and (client is None or info.client == client):
            buckets = found.setdefault((info.client, info.sub_account, asset), {})
            buckets[info.bucket] = buckets.get(info.bucket, 0) - units


def _balances(found: dict[tuple[str, str, str], dict[str, int]]) -> list[Balance]:
    """Sorted, with every bucket present, leaving out keys whose buckets are all zero."""
    return [
        Balance(c, s, a, {b: units.get(b, 0) for b in BUCKETS})
        for (c, s, a), units in sorted(found.items())
        if any(units.values())
    ]


def pnl(
    url: str,
    ledger: str,
    client: str | None = None,
    currency: str = "USD",
    as_of: datetime | str | None = None,
) -> PnlReport:
    """P&L by sub-account, day and asset; totals and open positions in ``currency``.

    ``as_of`` rebuilds the P&L up to then in a throwaway generation (see ``past``): P&L as of
    a time is a fold of the log up to it (lots and marks included), not a filter of today's.
    """
    if as_of is not None:
        with past(url, "pnl", ledger, as_of) as schema:
            return _pnl(url, schema, ledger, client, currency)
    return _pnl(url, None, ledger, client, currency)


def _pnl(
    url: str, generation: str | None, ledger: str, client: str | None, currency: str
) -> PnlReport:
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        schema = generation or _live(cur, "pnl")
        method_row = cur.execute(
            q(schema, "SELECT value FROM {s}.meta WHERE key = 'cost_method'")
        ).fetchone()
        where, params = "ledger = %s", [ledger]
        if client is not None:
            where, params = where + " AND client = %s", [ledger, client]
        cur.execute(
            q(
                schema,
                "SELECT client, sub_account, day::text, asset, currency,"
                f" {', '.join(f'{c}::text' for c in PNL_COLUMNS)}"
                f" FROM {{s}}.pnl_daily WHERE {where}",
            ),
            params,
        )
        lines = [PnlLine(*row[:5], *(int(v) for v in row[5:])) for row in cur.fetchall()]
        cur.execute(
            q(
                schema,
                "SELECT client, sub_account, asset, quote, quantity::text, cost::text"
                f" FROM {{s}}.lots WHERE {where}",
            ),
            params,
        )
        lots = [(c, s, a, qt, int(n), int(cost)) for c, s, a, qt, n, cost in cur.fetchall()]
        cur.execute(
            q(schema, "SELECT asset, quote, price FROM {s}.marks WHERE ledger = %s"), [ledger]
        )
        marks = {(a, qt): price for a, qt, price in cur.fetchall()}
    method = method_row[0] if method_row else "fifo"
    return build_report(ledger, currency, method, lines, lots, marks)


def trust_reserve(
    url: str, ledger: str, as_of: datetime | str | None = None
) -> list[TrustReservePosition]:
    """Per asset: liabilities against holdings on trust, cold ratio, compensation cover
    (``as_of``: rebuilt up to then, see ``past``)."""
    if as_of is not None:
        with past(url, "trust_reserve", ledger, as_of) as schema:
            return _trust_reserve(url, schema, ledger)
    return _trust_reserve(url, None, ledger)


def _trust_reserve(url: str, generation: str | None, ledger: str) -> list[TrustReservePosition]:
    columns = ", ".join(f"{c}::text" for c in TRUST_COLUMNS)
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        schema = generation or _live(cur, "trust_reserve")
        cur.execute(
            q(
                schema,
                f"SELECT asset, {columns} FROM {{s}}.trust_reserve"
                " WHERE ledger = %s ORDER BY asset",
            ),
            [ledger],
        )
        rows = cur.fetchall()
    return [
        TrustReservePosition.from_sums(ledger, r[0], [int(v) for v in r[1:]])
        for r in rows
        if any(int(v) for v in r[1:])
    ]


@contextmanager
def past(url: str, projection: str, ledger: str, as_of: datetime | str) -> Iterator[str]:
    """A throwaway generation of ``projection`` holding ``ledger`` up to ``as_of``.

    Built by a partial replay of the store (never swapped in), dropped on exit. Costs a read
    of the log; fine for an auditor's question, not for a dashboard.
    """
    result = replay(url, projection, ledger=ledger, as_of=as_of, swap_in=False)
    schema = result.schemas[canonical(projection)]
    try:
        yield schema
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            drop_schema(conn, schema)


def explain(
    url: str, ledger: str, client: str, asset: str, sub_account: str | None = None
) -> Explanation:
    """The events (position, time, type, the client's postings) whose sum is the balance.

    The client's indexed events and the balance are read in one snapshot, so the events sum to
    the balance shown even while the worker applies more.
    """
    with psycopg.connect(url) as conn:
        schema = _snapshot(conn)
        events = [
            explained
            for event in _indexed_events(conn, schema, ledger, client, None)
            if (explained := _explained(event, client, asset, sub_account)) is not None
        ]
        where, params = "ledger = %s AND client = %s AND asset = %s", [ledger, client, asset]
        if sub_account is not None:
            where += " AND sub_account = %s"
            params.append(sub_account)
        row = conn.execute(
            q(schema, f"SELECT coalesce(sum(units), 0)::text FROM {{s}}.balances WHERE {where}"),
            params,
        ).fetchone()
    return Explanation(ledger, client, asset, sub_account, events, int(row[0]) if row else 0)


def _explained(
    event: Event, client: str, asset: str, sub_account: str | None
) -> ExplainedEvent | None:
    """The event's postings to the client's accounts in ``asset``; None if it has none."""
    mine = [
        (account, units, info)
        for account, code, units, info in event.postings
        if info.kind == CLIENT
        and info.client == client
        and code == asset
        and (sub_account is None or info.sub_account == sub_account)
    ]
    if not mine:
        return None  # the client was touched in another asset or sub-account
    mine.sort(key=lambda p: (p[2].sub_account, p[2].bucket))
    # Times are shown in UTC, whatever offset the writer used.
    when = datetime.fromisoformat(event.time).astimezone(UTC).isoformat()
    return ExplainedEvent(event.position, when, event.type, [(a, u) for a, u, _ in mine])


class CorruptStoreError(RuntimeError):
    """An event the balances read model indexed is missing from the store or no longer matches
    it (does not decode, or names another ledger or position): the store was altered."""


# Rows per fetch from the server-side cursor: memory stays bounded for as-of over a whole log.
INDEXED_PAGE: Final = 5000


def _snapshot(conn: psycopg.Connection[Any]) -> str:
    """Start one REPEATABLE READ snapshot on ``conn``; the live balances schema (held)."""
    with conn.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        return _live(cur, "client_balances")


def _indexed_events(
    conn: psycopg.Connection[Any],
    schema: str,
    ledger: str,
    client: str | None,
    until_position: int | None,
) -> Iterator[Event]:
    """The indexed events of ``ledger`` (that touched ``client``, if given), read from the store
    in position order through a server-side cursor, so a whole log never sits in memory."""
    where, params = "ledger = %s", list[str | int]([ledger])
    if client is not None:
        where += " AND client = %s"
        params.append(client)
    if until_position is not None:
        where += " AND position <= %s"
        params.append(until_position)
    # A left join, so that an indexed event missing from the store is seen, not skipped.
    statement = q(
        schema,
        f"SELECT i.position, e.state FROM (SELECT DISTINCT position FROM {{s}}.client_events"
        f" WHERE {where}) AS i LEFT JOIN {EVENTS_TABLE} AS e ON e.originator_id = %s"
        " AND e.originator_version = i.position ORDER BY i.position",
    )
    with conn.cursor(name="indexed_events", binary=True) as cur:
        try:
            cur.execute(statement, [*params, ledger_id(ledger)])
        except psycopg.errors.UndefinedTable as exc:
            raise index_missing(schema) from exc
        while rows := cur.fetchmany(INDEXED_PAGE):
            for position, body in rows:
                yield _stored_event(ledger, position, body)


def _stored_event(ledger: str, position: int, body: bytes | None) -> Event:
    """The decoded body at an indexed position; ``CorruptStoreError`` if it is not that event."""
    where = f"ledger {ledger!r}, position {position}"
    if body is None:
        raise CorruptStoreError(f"{where}: indexed by the balances read model, not in the store")
    try:
        event = decode(body)
    except DecodeError as exc:
        raise CorruptStoreError(
            f"{where}: the stored event does not decode: {exc.reason}"
        ) from None
    if event.ledger != ledger or event.position != position:
        raise CorruptStoreError(
            f"{where}: the stored event says ledger {event.ledger!r}, position {event.position}"
        )
    return event


def projection_hash(url: str, projection: str, schema: str | None = None) -> str:
    """SHA-256 of a read model's canonical contents (the live generation unless ``schema``).

    Two replays of the same log give the same hash, and so does the live projection once it
    has caught up: tracking tables and generation names are not part of it.
    """
    model = read_model(projection)
    digest = hashlib.sha256(model.name.encode())
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        # One snapshot for every table, and text forms that do not depend on the session.
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cur.execute("SET LOCAL TimeZone = 'UTC'")
        cur.execute("SET LOCAL DateStyle = 'ISO, YMD'")
        target = schema if schema is not None else _live(cur, model.name)
        for statement in model.hash_sql(target):
            digest.update(b"\x00table\x00")
            with cur.copy(f"COPY ({statement}) TO STDOUT") as copy:
                for chunk in copy:
                    digest.update(chunk)
    return digest.hexdigest()


# --- The same answers, folded straight from the public log --------------------------------


def store_events(url: str, ledger: str, page: int = 5000) -> Iterator[Event]:
    """The ledger's events from ``primeledger_events`` in commit order; what does not decode
    or can never be applied is left out, as the worker dead-letters it."""
    models = read_models(ALL)
    for bodies in StoreReader(url, page).pages():
        for body in bodies:
            try:
                event = decode(body)
            except DecodeError:
                continue
            if event.ledger == ledger and unusable(models, event) is None:
                yield event


@dataclass
class _Fold:
    balances: dict[tuple[str, str, str], dict[str, int]] = field(default_factory=dict)
    trust: dict[str, list[int]] = field(default_factory=dict)


def compute_from_store(
    url: str,
    ledger: str,
    projection: str,
    *,
    client: str | None = None,
    as_of: datetime | str | None = None,
    as_of_position: int | None = None,
    currency: str = "USD",
    cost_method: str = "fifo",
) -> Any:
    """Fold the log in memory into what ``balances``/``pnl``/``trust_reserve`` would return."""
    name = canonical(projection)
    when = datetime.fromisoformat(as_of) if isinstance(as_of, str) else as_of
    events = [
        e
        for e in store_events(url, ledger)
        if (as_of_position is None or e.position <= as_of_position)
        and (when is None or datetime.fromisoformat(e.time) <= when)
    ]
    if name == "pnl":
        state = PnlState(keep_history=True)
        fold(state, events, cost_method)
        lines = [
            PnlLine(c, s, day, a, cur, *row)
            for (_, c, s, day, a, cur), row in state.daily.items()
            if client is None or c == client
        ]
        lots = [
            (c, s, a, qt, lot.quantity, lot.cost)
            for (_, c, s, a, qt), pool in state.pools.items()
            for lot in pool
            if client is None or c == client
        ]
        marks = {(a, qt): m.price for (_, a, qt), m in state.marks.items()}
        return build_report(ledger, currency, cost_method, lines, lots, marks)
    folded = _fold(events, client)
    if name == "client_balances":
        return _balances(folded.balances)
    return [
        TrustReservePosition.from_sums(ledger, asset, sums)
        for asset, sums in sorted(folded.trust.items())
        if any(sums)
    ]


def _fold(events: list[Event], client: str | None) -> _Fold:
    # Written out plainly, independent of the read models' aggregation code, so that a test
    # comparing the two can fail.
    out = _Fold()
    normal = {
        "client": -1,
        "custody_hot": 1,
        "custody_cold": 1,
        "trust_bank": 1,
        "insurance_fund": -1,
    }
    column = {
        "client": 0,
        "custody_hot": 1,
        "custody_cold": 2,
        "trust_bank": 3,
        "insurance_fund": 4,
    }
    for event in events:
        for account, asset, units, info in event.postings:
            kind = info.kind
            if kind in column:
                out.trust.setdefault(asset, [0] * 5)[column[kind]] += normal[kind] * units
            if kind == CLIENT and (client is None or info.client == client):
                _, owner, sub, bucket = account.split(":")
                buckets = out.balances.setdefault((owner, sub, asset), {})
                buckets[bucket] = buckets.get(bucket, 0) - units
    return out
