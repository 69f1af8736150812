"""What every read model offers, and the few SQL helpers they share.

A read model is a class with a ``name``, the SQL of its tables in a generation schema
(``create_sql``), the secondary indexes built after a bulk load (``index_sql``), the canonical
ordered dump that ``projection-hash`` hashes (``hash_sql``), and ``apply``, which folds a batch
of decoded events into its tables inside the caller's transaction.

``check`` raises ``UnusableEventError`` for an event that decodes but that this read model can
never apply (a trade without a quantity): like an undecodable message, it is dead-lettered at
once by the worker and skipped by a replay, without retries. ``apply`` is
``write(aggregate(Batch(events)))``. ``aggregate`` is pure Python (no I/O) and returns a
picklable delta, so a rebuild can aggregate pages in several processes while one connection
writes the deltas in log order; ``write`` needs few statements per batch (upserts of summed
deltas, ``COPY`` of history rows): never a row per posting for current-state tables.

A rebuild writes millions of events into an empty generation: a read model may let it hold
current-state writes back in memory (``HoldsBack``): summed balances written once instead of
once per page, P&L lots folded in memory instead of read and rewritten per page.

Deduplication is not the read model's job: the caller (worker or replay) passes only events
whose position was never applied to this generation, and records them in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final, Protocol, runtime_checkable

import psycopg
from psycopg import sql

from projections.decode import Event, native_sum_postings

Cursor = psycopg.Cursor[Any]
# The store's public log (eventsourcing's table: state = the event body, topic = its type,
# notification_id = commit order across ledgers). Read with plain SQL, never via ledger.store.
EVENTS_TABLE: Final = "primeledger_events"


class Batch:
    """A batch of decoded events, and their posting sums per (ledger, account, asset).

    Summing postings is the work most read models share (balances and the trust reserve
    only need the sums, plus the balance history per posting), so it is done once per batch,
    when first asked for.
    """

    __slots__ = ("_sums", "events")

    def __init__(self, events: Sequence[Event]) -> None:
        self.events = events
        self._sums: dict[tuple[str, str, str], int] | None = None

    @property
    def sums(self) -> dict[tuple[str, str, str], int]:
        if self._sums is None:
            self._sums = (
                sum_postings(self.events)
                if native_sum_postings is None
                else native_sum_postings(self.events)
            )
        return self._sums


def sum_postings(events: Sequence[Event]) -> dict[tuple[str, str, str], int]:
    """Per (ledger, account, asset), the events' summed units (``_native`` does the same)."""
    sums: dict[tuple[str, str, str], int] = {}
    get = sums.get
    for ledger, _, _, _, _, postings in events:
        for account, asset, units, _ in postings:
            key = (ledger, account, asset)
            sums[key] = get(key, 0) + units
    return sums


class ProjectionSetupError(RuntimeError):
    """A read model has no live generation, or one built otherwise (a worker must stop)."""


class UnusableEventError(ValueError):
    """An event a read model can never apply (checked before any write); names the field."""


class ReadModel(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def checked_types(self) -> frozenset[str]:
        """The event types ``check`` looks at (it is not called for others: hot path)."""
        ...

    def create_sql(self, schema: str) -> list[str]: ...

    def index_sql(self, schema: str) -> list[str]: ...

    def hash_sql(self, schema: str) -> list[str]: ...

    def check(self, event: Event) -> None: ...

    def aggregate(self, batch: Batch) -> Any: ...

    def write(self, cur: Cursor, schema: str, delta: Any) -> None: ...

    def apply(self, cur: Cursor, schema: str, events: Sequence[Event]) -> None: ...


# Summed integer columns per key of one table.
Totals = dict[tuple[Any, ...], list[int]]
# A value this large makes a page unfit to be held back: it is written with its page, so
# that a value PostgreSQL refuses (NUMERIC(60,0) overflows) fails with that page and is
# isolated as the live worker isolates it, instead of failing a later write of the totals.
HOLD_BACK_LIMIT: Final = 10**50


@runtime_checkable
class HoldsBack(Protocol):
    """A read model that lets a rebuild hold part of its writes back, in memory.

    Per page, inside the page's transaction, ``write_page`` writes what must go with the page
    (history rows, rows whose checks only the database makes) and returns the rest; once
    the page has committed, ``add`` folds that into the held state (a page that fails and
    is split to isolate the bad event leaves nothing behind). ``write_held`` writes the held
    state and empties it; ``held_size`` says how big it has grown. A rebuild holds back only
    while it fills a new, empty generation that nothing else writes, folding pages in the
    order it writes them (as page-by-page writing would), and gives up holding (writes what
    it holds, then writes page by page) when a page is not ``holdable`` or the held state
    grows too big.
    """

    def start_holding(self) -> Any: ...

    def holdable(self, delta: Any) -> bool: ...

    def write_page(self, cur: Cursor, schema: str, delta: Any, held: Any) -> Any: ...

    def add(self, held: Any, pending: Any) -> None: ...

    def held_size(self, held: Any) -> int: ...

    def write_held(self, cur: Cursor, schema: str, held: Any) -> None: ...


def add_totals(into: Totals, sums: Totals) -> None:
    """Add ``sums`` to ``into``, key by key, column by column."""
    get = into.get
    for key, values in sums.items():
        row = get(key)
        if row is None:
            into[key] = list(values)
        else:
            for index, value in enumerate(values):
                row[index] += value


def small(values: Iterable[int]) -> bool:
    """Whether every integer in ``values`` is below ``HOLD_BACK_LIMIT`` in size."""
    limit = HOLD_BACK_LIMIT
    return all(-limit < v < limit for v in values)


def q(schema: str, text: str) -> str:
    """``text`` with ``{s}`` replaced by the quoted schema name (our own generated names)."""
    return text.replace("{s}", sql.Identifier(schema).as_string())


def upsert_sum(
    cur: Cursor,
    table: str,
    key_columns: Sequence[str],
    value_columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
    key_types: Sequence[str] = (),
) -> None:
    """Add ``rows`` (keys then integer deltas) to ``table`` in one statement.

    Keys are text unless ``key_types`` says otherwise. Deltas travel as text and are cast to
    NUMERIC: amounts in wei do not fit in BIGINT.
    """
    if not rows:
        return
    columns = list(zip(*rows, strict=True))
    keys = [list(c) for c in columns[: len(key_columns)]]
    values = [[str(v) for v in c] for c in columns[len(key_columns) :]]
    all_columns = [*key_columns, *value_columns]
    types = list(key_types) or ["text"] * len(key_columns)
    casts = [f"{t}[]" for t in types] + ["numeric[]"] * len(value_columns)
    statement = (
        f"INSERT INTO {table} AS t ({', '.join(all_columns)})"
        f" SELECT * FROM unnest({', '.join(f'%s::{c}' for c in casts)})"
        f" ON CONFLICT ({', '.join(key_columns)}) DO UPDATE SET "
        + ", ".join(f"{c} = t.{c} + excluded.{c}" for c in value_columns)
    )
    cur.execute(statement, [*keys, *values])
