"""Where read models live, which events they have applied, and how a rebuild goes live.

Generations: each read model's tables live in a schema per generation
(``proj_<name>_g<N>``). ``projection_live`` names the live one. A replay builds the next
generation beside it and swaps the pointer in one transaction; readers and the worker lock
the pointer row ``FOR SHARE`` while they use a generation, so the swap waits for them and
nobody ever writes to or reads from a generation that is being dropped.

Tracking: each generation has ``applied`` (per ledger, the positions it has applied, as an
``int8multirange``). One ledger's events are spread over several partitions by client, so
they arrive out of global order; a single high-water mark would wrongly skip events of a
slower partition (see STACK-NOTES on single-row tracking). Ranges merge as gaps fill, so the
row stays small. A batch locks its ledgers' rows ``FOR UPDATE`` (in ledger order), filters out
what was applied, applies the rest and adds their positions, all in one transaction: a
redelivered message changes nothing, even when two consumers briefly own one partition
during a rebalance.

Kafka offsets (``projection_offsets``) are per consumer group, outside generations: the
worker's position in the topic does not change when a replay swaps the generation, because
the replay catches up on everything in the log before it swaps.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from typing import Any, Final

import psycopg
from psycopg import sql

from projections.base import Cursor, ProjectionSetupError, ReadModel, q
from projections.decode import Event

SETUP_LOCK: Final = 7_316_001  # advisory lock key: creation of shared tables and generations
SHARED_SQL: Final = (
    "CREATE TABLE IF NOT EXISTS projection_live (projection text PRIMARY KEY,"
    " schema text, next_generation integer NOT NULL DEFAULT 1)",
    "CREATE TABLE IF NOT EXISTS projection_offsets (group_id text NOT NULL, topic text NOT NULL,"
    " partition integer NOT NULL, next_offset bigint NOT NULL,"
    " PRIMARY KEY (group_id, topic, partition))",
    # Offsets belong to one incarnation of a topic: a broker that lost the topic and got it
    # back (republished by the relay) numbers the same events from 0 again.
    "ALTER TABLE projection_offsets ADD COLUMN IF NOT EXISTS topic_id text",
    # Balance-feed messages, committed with the batch they describe and deleted once the broker
    # has them: a worker stopped in between publishes them when it starts again.
    "CREATE TABLE IF NOT EXISTS projection_feed_outbox (id bigserial PRIMARY KEY,"
    " group_id text NOT NULL, messages bytea NOT NULL)",
)
_SCHEMA = re.compile(r"proj_[a-z_]+_g[0-9]+")


def schema_name(name: str, generation: int) -> str:
    return f"proj_{name}_g{generation}"


def ensure_shared(conn: psycopg.Connection[Any]) -> None:
    """Create the pointer and offsets tables if needed (safe to race with other processes)."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (SETUP_LOCK,))
        for statement in SHARED_SQL:
            cur.execute(statement)


def ensure_live(conn: psycopg.Connection[Any], models: Sequence[ReadModel]) -> dict[str, str]:
    """The live schema of each model, creating an empty first generation where there is none."""
    ensure_shared(conn)
    live: dict[str, str] = {}
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (SETUP_LOCK,))
        for model in models:
            row = cur.execute(
                "SELECT schema FROM projection_live WHERE projection = %s", (model.name,)
            ).fetchone()
            if row is not None and row[0] is not None:
                live[model.name] = row[0]
                continue
            schema = _allocate(cur, model.name)
            create_generation(cur, model, schema, with_indexes=True)
            cur.execute(
                "UPDATE projection_live SET schema = %s WHERE projection = %s",
                (schema, model.name),
            )
            live[model.name] = schema
    return live


def allocate(conn: psycopg.Connection[Any], name: str) -> str:
    """Reserve the next generation's schema name for ``name`` (committed at once)."""
    ensure_shared(conn)
    with conn.transaction(), conn.cursor() as cur:
        return _allocate(cur, name)


def _allocate(cur: Cursor, name: str) -> str:
    cur.execute(
        "INSERT INTO projection_live (projection) VALUES (%s) ON CONFLICT DO NOTHING", (name,)
    )
    row = cur.execute(
        "UPDATE projection_live SET next_generation = next_generation + 1"
        " WHERE projection = %s RETURNING next_generation - 1",
        (name,),
    ).fetchone()
    assert row is not None
    return schema_name(name, int(row[0]))


def create_generation(cur: Cursor, model: ReadModel, schema: str, *, with_indexes: bool) -> None:
    cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    cur.execute(
        q(
            schema,
            "CREATE TABLE {s}.applied (ledger text PRIMARY KEY,"
            " positions int8multirange NOT NULL DEFAULT '{}')",
        )
    )
    for statement in model.create_sql(schema):
        cur.execute(statement)
    if with_indexes:
        for statement in model.index_sql(schema):
            cur.execute(statement)


def live_schemas(cur: Cursor, names: Iterable[str], *, lock: bool = True) -> dict[str, str]:
    """The live schema per read model; ``lock`` holds the pointer rows until commit."""
    wanted = sorted(set(names))
    cur.execute(
        "SELECT projection, schema FROM projection_live WHERE projection = ANY(%s)"
        " ORDER BY projection" + (" FOR SHARE" if lock else ""),
        (wanted,),
    )
    found = {name: schema for name, schema in cur.fetchall() if schema is not None}
    missing = [n for n in wanted if n not in found]
    if missing:
        raise ProjectionSetupError(
            f"no live generation for {', '.join(missing)}: start a worker or replay"
        )
    return found


def swap(cur: Cursor, name: str, schema: str) -> str | None:
    """Point ``name`` at ``schema`` (caller holds the row lock); returns the old schema."""
    row = cur.execute(
        "SELECT schema FROM projection_live WHERE projection = %s", (name,)
    ).fetchone()
    old = row[0] if row else None
    cur.execute("UPDATE projection_live SET schema = %s WHERE projection = %s", (schema, name))
    return old if old != schema else None


def drop_schema(conn: psycopg.Connection[Any], schema: str) -> None:
    if _SCHEMA.fullmatch(schema) is None:
        raise ProjectionSetupError(f"refusing to drop {schema!r}: not a generation schema")
    with conn.transaction():
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def stale_schemas(conn: psycopg.Connection[Any], name: str) -> list[str]:
    """Generation schemas of ``name`` that are not live (left by an interrupted replay)."""
    rows = conn.execute(
        "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s AND nspname <> ALL("
        " SELECT schema FROM projection_live WHERE schema IS NOT NULL)",
        (f"proj\\_{name}\\_g%",),
    ).fetchall()
    return sorted(r[0] for r in rows if _SCHEMA.fullmatch(r[0]))


# --- Applied positions ------------------------------------------------------------------


class Positions:
    """A set of positions as sorted half-open ranges ``[lo, hi)``."""

    __slots__ = ("_bounds",)

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._bounds: list[int] = []  # lo0, hi0, lo1, hi1, ...: membership is an odd bisect
        for lo, hi in sorted(ranges):
            if self._bounds and lo <= self._bounds[-1]:
                self._bounds[-1] = max(self._bounds[-1], hi)
            else:
                self._bounds += [lo, hi]

    def __len__(self) -> int:
        b = self._bounds
        return sum(b[i + 1] - b[i] for i in range(0, len(b), 2))

    def __contains__(self, position: int) -> bool:
        return bisect_right(self._bounds, position) % 2 == 1

    def ranges(self) -> list[tuple[int, int]]:
        b = self._bounds
        return [(b[i], b[i + 1]) for i in range(0, len(b), 2)]

    def union(self, other: Positions) -> Positions:
        return Positions(self.ranges() + other.ranges())

    def overlaps(self, other: Positions) -> bool:
        bounds = self._bounds
        for lo, hi in other.ranges():
            index = bisect_right(bounds, lo)
            if index % 2 == 1 or (index < len(bounds) and bounds[index] < hi):
                return True
        return False

    @classmethod
    def of(cls, positions: Iterable[int]) -> Positions:
        ranges: list[tuple[int, int]] = []
        for p in sorted(positions):
            if ranges and ranges[-1][1] == p:
                ranges[-1] = (ranges[-1][0], p + 1)
            elif not ranges or ranges[-1][1] < p:
                ranges.append((p, p + 1))
        return cls(ranges)

    def literal(self) -> str:
        """As an ``int8multirange`` literal."""
        return "{" + ",".join(f"[{lo},{hi})" for lo, hi in self.ranges()) + "}"


def lock_applied(cur: Cursor, schema: str, ledgers: Iterable[str]) -> dict[str, Positions]:
    """Lock and read the applied positions of ``ledgers`` (rows created if missing)."""
    wanted = sorted(set(ledgers))
    if not wanted:
        return {}
    cur.execute(
        q(
            schema,
            "INSERT INTO {s}.applied (ledger) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING",
        ),
        (wanted,),
    )
    cur.execute(
        q(
            schema,
            "SELECT ledger, positions::text FROM {s}.applied WHERE ledger = ANY(%s)"
            " ORDER BY ledger FOR UPDATE",
        ),
        (wanted,),
    )
    return {ledger: parse_multirange(text) for ledger, text in cur.fetchall()}


def parse_multirange(text: str) -> Positions:
    """``{[1,5),[7,9)}`` (PostgreSQL's canonical int8multirange text) as ``Positions``."""
    body = text.strip("{}")
    if not body:
        return Positions()
    ranges = []
    for part in body.split("),"):
        lo, hi = part.strip("[)").split(",")
        ranges.append((int(lo), int(hi)))
    return Positions(ranges)


def new_events(events: Iterable[Event], applied: dict[str, Positions]) -> list[Event]:
    """Events not yet applied, without repeats within the batch (first occurrence wins)."""
    seen: set[tuple[str, int]] = set()
    fresh = []
    for event in events:
        key = (event.ledger, event.position)
        done = applied.get(event.ledger)
        if key in seen or (done is not None and event.position in done):
            continue
        seen.add(key)
        fresh.append(event)
    return fresh


def record_applied(cur: Cursor, schema: str, events: Sequence[Event]) -> None:
    """Add the positions of ``events`` to ``applied`` (rows exist: see ``lock_applied``)."""
    by_ledger: dict[str, list[int]] = {}
    for event in events:
        by_ledger.setdefault(event.ledger, []).append(event.position)
    record_positions(cur, schema, {k: Positions.of(v) for k, v in by_ledger.items()})


def record_positions(cur: Cursor, schema: str, positions: dict[str, Positions]) -> None:
    if not positions:
        return
    ledgers = sorted(positions)
    cur.execute(
        q(
            schema,
            "INSERT INTO {s}.applied AS a (ledger, positions)"
            " SELECT ledger, add::int8multirange"
            " FROM unnest(%s::text[], %s::text[]) AS u(ledger, add)"
            " ON CONFLICT (ledger) DO UPDATE SET positions = a.positions + excluded.positions",
        ),
        (ledgers, [positions[k].literal() for k in ledgers]),
    )
