"""Rebuild read models into a fresh generation, then swap it in while the live one keeps serving.

The source is the store's public log (``primeledger_events``, read with plain SQL in
notification order: the order events committed in) or the events topic from offset 0. Events
stream through in pages: each page is decoded once and aggregated for every requested read
model, and the deltas are written in log order, one transaction per page. Secondary indexes
are built after the bulk load, then the new generation catches up with what arrived meanwhile.
The last catch-up runs while holding the read models' pointer rows, so the live worker pauses;
it has only applied events that were in the log before that lock was taken, hence the new
generation has everything the old one has when the pointer moves. Kafka offsets stay as they
are: the worker carries on where it was, and applied-position tracking skips whatever the
replay already applied.

Speed: decoding and aggregating dominate, so a large rebuild from the store aggregates pages
in ``workers`` processes (spawned: the calling script needs the usual ``if __name__ ==
"__main__"`` guard) while this process writes their deltas in order; P&L deltas are the
relevant events themselves and are folded here, in order. During the first, bulk pass the
generation is empty and only this builder writes it, so the read models hold their
current-state writes back in memory (``base.HoldsBack``): balance and trust-reserve sums and
the P&L's lots and daily sums are written once at the end of the pass instead of read and
rewritten page by page, while history rows, trades and marks still go with their page. A
read model whose held state grows past ``MAX_HELD`` entries, or a page it cannot hold, makes
it write what it holds and go on page by page, so memory stays bounded.

A partial replay (one ``ledger``, or ``until_position``/``as_of``) builds that state only; it is
not swapped in unless asked (the live one would lose the rest, and the worker would not fill the
gap), and its schema is returned so that it can be hashed or queried; the next replay of that
read model drops it.
"""

from __future__ import annotations

import gc
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing import get_context
from typing import Any, Final

import psycopg

from projections.base import EVENTS_TABLE, Batch, HoldsBack, ReadModel
from projections.catalog import read_models, unusable
from projections.decode import DecodeError, Event, decode
from projections.generations import (
    Positions,
    allocate,
    create_generation,
    drop_schema,
    ensure_shared,
    record_positions,
    stale_schemas,
    swap,
)
from streams.contract import EVENTS_TOPIC

REPLAY_LOCK: Final = 7_316_002  # advisory lock key (with a hash of the name) per read model
PARALLEL_FROM: Final = 200_000  # fewer events than this: spawning processes costs more
# Held-back state (keys, or P&L trades) beyond which a read model is written page by page.
MAX_HELD: Final = 250_000
MAX_REASONS: Final = 20
Progress = Callable[[int], None]


class ReplayError(RuntimeError):
    """A replay that cannot run (another replay of the same read model, bad arguments...)."""


@dataclass
class ReplayResult:
    schemas: dict[str, str]  # read model -> schema of the generation built
    events: int = 0  # events applied
    read: int = 0  # messages read
    skipped: int = 0  # messages that do not decode (the live worker dead-letters them)
    reasons: list[str] = field(default_factory=list)  # the first few skip reasons
    swapped: bool = False
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Bounds:
    """Which events a replay keeps."""

    ledger: str | None = None
    until_position: int | None = None
    as_of: datetime | None = None

    def keep(self, event: Event) -> bool:
        if self.ledger is not None and event.ledger != self.ledger:
            return False
        if self.until_position is not None and event.position > self.until_position:
            return False
        return self.as_of is None or datetime.fromisoformat(event.time) <= self.as_of


NO_BOUNDS: Final = Bounds()


@dataclass(slots=True)
class PageResult:
    """One page, aggregated: what the writer needs, picklable across processes."""

    deltas: dict[str, Any]  # read model name -> its aggregate
    positions: dict[str, list[tuple[int, int]]]  # ledger -> applied position ranges
    kept: int
    read: int
    skipped: int
    reasons: list[str]
    # How to get the page's bodies again to isolate an event that fails to apply: the
    # bodies themselves (pages aggregated here) or a notification-id span (in a process).
    bodies: list[bytes] | None = None
    span: tuple[int, int] | None = None


def replay(
    database_url: str,
    projection: str | Sequence[str],
    *,
    source: str = "store",
    bootstrap: str | None = None,
    topic: str = EVENTS_TOPIC,
    ledger: str | None = None,
    until_position: int | None = None,
    as_of: datetime | str | None = None,
    swap_in: bool | None = None,
    cost_method: str = "fifo",
    page_size: int = 20_000,
    workers: int | None = None,
    progress: Progress | None = None,
) -> ReplayResult:
    """Rebuild ``projection`` (a name or several) from ``source`` ("store" or "kafka").

    ``swap_in`` defaults to True for a full replay and False for a partial one (one ledger,
    or up to a position or time). ``workers``
    (processes that aggregate pages; store only) defaults to 2 for large logs on 2+ CPUs.
    Raises ``ReplayError`` if a replay of the same read model is running.
    """
    if source not in ("store", "kafka"):
        raise ReplayError(f"source: expected 'store' or 'kafka', got {source!r}")
    if source == "kafka" and bootstrap is None:
        raise ReplayError("bootstrap: needed to replay from Kafka")
    if until_position is not None and ledger is None:
        raise ReplayError("until_position: positions are per ledger; name the ledger")
    when = datetime.fromisoformat(as_of) if isinstance(as_of, str) else as_of
    if when is not None and when.utcoffset() is None:
        raise ReplayError("as_of: needs a time zone offset")
    bounds = Bounds(ledger, until_position, when)
    partial = ledger is not None or until_position is not None or when is not None
    do_swap = not partial if swap_in is None else swap_in
    models = read_models(projection, cost_method=cost_method)
    started = time.perf_counter()
    with _Builder(database_url, models, bounds, progress) as builder:
        if source == "store":
            _from_store(builder, database_url, page_size, workers, cost_method, do_swap)
        else:
            _from_kafka(builder, str(bootstrap), topic, page_size, do_swap)
        result = builder.result
    result.swapped = do_swap
    result.seconds = time.perf_counter() - started
    return result


def _from_store(
    builder: _Builder,
    url: str,
    page_size: int,
    workers: int | None,
    cost_method: str,
    do_swap: bool,
) -> None:
    reader = StoreReader(url, page_size)
    end = reader.end()
    count = workers if workers is not None else _default_workers(end - reader.last)
    if count > 1:
        names = [m.name for m in builder.models]
        builder.refetch = reader.bodies
        builder.write(_parallel(url, names, cost_method, builder.bounds, reader, end, count))
    else:
        builder.write(builder.aggregate(page) for page in reader.pages())
    builder.finish_indexes()
    if do_swap:
        builder.write(builder.aggregate(page) for page in reader.pages())  # arrived meanwhile
        builder.swap_in(lambda: (builder.aggregate(page) for page in reader.pages()))


def _from_kafka(
    builder: _Builder, bootstrap: str, topic: str, page_size: int, do_swap: bool
) -> None:
    reader = _KafkaReader(bootstrap, topic, page_size)
    try:
        builder.write(builder.aggregate(page) for page in reader.pages())
        builder.finish_indexes()
        if do_swap:
            builder.swap_in(lambda: (builder.aggregate(page) for page in reader.pages()))
    finally:
        reader.close()


def _default_workers(events: int) -> int:
    return 2 if events >= PARALLEL_FROM and (os.cpu_count() or 1) >= 2 else 0


def aggregate_page(
    models: Sequence[ReadModel],
    bounds: Bounds,
    bodies: Sequence[bytes],
    applied: dict[str, Positions] | None = None,
) -> PageResult:
    """Decode, filter, deduplicate (against ``applied``, if given) and aggregate one page."""
    events: list[Event] = []
    append = events.append
    skipped, reasons = 0, list[str]()
    checked = frozenset[str]().union(*(m.checked_types for m in models))
    for body in bodies:
        try:
            event = decode(body)
            reason = unusable(models, event) if event[2] in checked else None
        except DecodeError as exc:
            reason = exc.reason
        if reason is None:
            append(event)
            continue
        skipped += 1  # the worker dead-letters these; a replay leaves them out
        if len(reasons) < MAX_REASONS:
            reasons.append(reason)
    if bounds != NO_BOUNDS:
        events = [e for e in events if bounds.keep(e)]
    if applied:
        events = [e for e in events if not _seen(applied, e)]
    positions = _positions(events)
    if sum(len(p) for p in positions.values()) != len(events):
        events = _first_occurrences(events)  # the same position twice within the page
    batch = Batch(events)
    return PageResult(
        deltas={m.name: m.aggregate(batch) for m in models},
        positions={ledger: p.ranges() for ledger, p in positions.items()},
        kept=len(events),
        read=len(bodies),
        skipped=skipped,
        reasons=reasons,
    )


def _seen(applied: dict[str, Positions], event: Event) -> bool:
    done = applied.get(event[0])
    return done is not None and event[1] in done


def _positions(events: list[Event]) -> dict[str, Positions]:
    ledgers = {e[0] for e in events}
    if len(ledgers) == 1:  # the usual page: one ledger
        return {ledgers.pop(): Positions.of([e[1] for e in events])}
    by_ledger: dict[str, list[int]] = {}
    for event in events:
        by_ledger.setdefault(event[0], []).append(event[1])
    return {ledger: Positions.of(p) for ledger, p in by_ledger.items()}


def _skipped(reason: str) -> PageResult:
    """The account of one message left out (nothing to write)."""
    return PageResult({}, {}, kept=0, read=1, skipped=1, reasons=[reason])


def _first_occurrences(events: list[Event]) -> list[Event]:
    seen: set[tuple[str, int]] = set()
    out = []
    for event in events:
        if (event.ledger, event.position) not in seen:
            seen.add((event.ledger, event.position))
            out.append(event)
    return out


class _Builder:
    """Builds new generations of some read models, writing on one connection."""

    def __init__(
        self, url: str, models: list[ReadModel], bounds: Bounds, progress: Progress | None
    ) -> None:
        self.models = models
        self.bounds = bounds
        self.progress = progress
        self.applied: dict[str, Positions] = {}
        self.refetch: Callable[[int, int], list[bytes]] | None = None
        self.conn = psycopg.connect(url, autocommit=True)
        try:
            ensure_shared(self.conn)
            self._lock_names()
            self.schemas = self._new_generations()
        except BaseException:
            self.conn.close()
            raise
        self.result = ReplayResult(schemas=dict(self.schemas))
        # What read models hold back during the first bulk write (see ``base.HoldsBack``):
        # only then is the generation empty and written in log order by this builder alone.
        self.holders = {m.name: m for m in models if isinstance(m, HoldsBack)}
        self.held: dict[str, Any] = {}
        self.fresh = True
        # A crash may lose this session's last commits: an unfinished generation is rebuilt
        # anyway, and the swap itself commits synchronously.
        self.conn.execute("SET synchronous_commit = off")

    def __enter__(self) -> _Builder:
        return self

    def __exit__(self, *_: object) -> None:
        self.conn.close()  # session advisory locks go with the session

    def _lock_names(self) -> None:
        for model in self.models:
            got = self.conn.execute(
                "SELECT pg_try_advisory_lock(%s, hashtext(%s))", (REPLAY_LOCK, model.name)
            ).fetchone()
            if not got or not got[0]:
                raise ReplayError(f"a replay of {model.name} is already running")

    def _new_generations(self) -> dict[str, str]:
        schemas = {}
        for model in self.models:
            for stale in stale_schemas(self.conn, model.name):
                drop_schema(self.conn, stale)
            schema = allocate(self.conn, model.name)
            with self.conn.transaction(), self.conn.cursor() as cur:
                create_generation(cur, model, schema, with_indexes=False)
            schemas[model.name] = schema
        return schemas

    def aggregate(self, page: Sequence[bytes]) -> PageResult:
        with _gc_paused():
            result = aggregate_page(self.models, self.bounds, page, self.applied)
        result.bodies = list(page)
        return result

    def write(self, pages: Iterator[PageResult]) -> None:
        """Write every page's deltas, one transaction per page, in order.

        A thread writes while this one aggregates (or waits for) the next page, so that
        PostgreSQL's work overlaps Python's; the queue is short, so memory stays flat.
        """
        handoff: queue.Queue[PageResult | None] = queue.Queue(maxsize=2)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                while (page := handoff.get()) is not None:
                    self.commit(page)
            except BaseException as exc:  # re-raised below, in the caller's thread
                failure.append(exc)
                while handoff.get() is not None:  # drain so that the producer never blocks
                    pass

        writer = threading.Thread(target=run, name="replay-writer", daemon=True)
        if self.fresh:
            self.held = {name: model.start_holding() for name, model in self.holders.items()}
            self.fresh = False
        writer.start()
        try:
            for page in pages:
                if failure:
                    break
                handoff.put(page)
        finally:
            handoff.put(None)
            writer.join()
        if failure:
            raise failure[0]
        self.stop_holding(list(self.held))

    def stop_holding(self, names: list[str]) -> None:
        """Write what these read models hold (one transaction); they write page by page on."""
        if not names:
            return
        with self.conn.transaction(), self.conn.cursor() as cur:
            for name in names:
                self.holders[name].write_held(cur, self.schemas[name], self.held[name])
        for name in names:
            del self.held[name]

    def commit(self, page: PageResult) -> None:
        """One page in its own transaction (a savepoint inside the swap's transaction).

        If applying fails for a reason other than the database, the page is split in halves
        until the failing event is alone; it is left out with its reason, as the worker
        dead-letters it, and the rest is applied.
        """
        try:
            self._commit(page)
        except (psycopg.OperationalError, psycopg.InterfaceError, ReplayError):
            raise
        except Exception:
            bodies = page.bodies if page.bodies is not None else self._refetch(page.span)
            self._isolate(bodies)

    def _commit(self, page: PageResult) -> None:
        if self.held and page.kept:
            self.stop_holding(
                [n for n in self.held if not self.holders[n].holdable(page.deltas[n])]
            )
        pending: dict[str, Any] = {}
        with self.conn.transaction(), self.conn.cursor() as cur:
            positions = self._write(cur, page, pending)
        # Only now that the page is in: a page that failed (and is split to isolate the bad
        # event) must leave nothing behind in what is held.
        for name, part in pending.items():
            self.holders[name].add(self.held[name], part)
        self.stop_holding(
            [n for n in pending if self.holders[n].held_size(self.held[n]) > MAX_HELD]
        )
        for ledger, new in positions.items():
            done = self.applied.get(ledger)
            self.applied[ledger] = new if done is None else done.union(new)
        result = self.result
        result.events += page.kept
        result.read += page.read
        result.skipped += page.skipped
        result.reasons = (result.reasons + page.reasons)[:MAX_REASONS]
        if self.progress is not None:
            self.progress(result.read)

    def _isolate(self, bodies: list[bytes]) -> None:
        if len(bodies) == 1:
            try:
                self._commit(self.aggregate(bodies))
            except (psycopg.OperationalError, psycopg.InterfaceError, ReplayError):
                raise
            except Exception as exc:
                self._commit(_skipped(f"apply failed: {type(exc).__name__}: {exc}"))
            return
        middle = len(bodies) // 2
        for half in (bodies[:middle], bodies[middle:]):
            try:
                self._commit(self.aggregate(half))
            except (psycopg.OperationalError, psycopg.InterfaceError, ReplayError):
                raise
            except Exception:
                self._isolate(half)

    def _refetch(self, span: tuple[int, int] | None) -> list[bytes]:
        if span is None or self.refetch is None:
            raise ReplayError("a page failed to apply and cannot be read again to isolate it")
        return self.refetch(*span)

    def _write(
        self, cur: psycopg.Cursor[Any], page: PageResult, pending: dict[str, Any]
    ) -> dict[str, Positions]:
        positions = {k: Positions(v) for k, v in page.positions.items()}
        for ledger, new in positions.items():
            done = self.applied.get(ledger)
            if done is not None and done.overlaps(new):
                # Only a parallel page can get here (in-process pages are deduplicated): the
                # log gave a position twice, which the store's unique key rules out.
                raise ReplayError(f"ledger {ledger!r}: a position was read twice from the store")
        if page.kept:
            for model in self.models:
                name = model.name
                schema, delta = self.schemas[name], page.deltas[name]
                if name in self.held:
                    pending[name] = self.holders[name].write_page(
                        cur, schema, delta, self.held[name]
                    )
                else:
                    model.write(cur, schema, delta)
                record_positions(cur, schema, positions)
        return positions

    def finish_indexes(self) -> None:
        for model in self.models:
            schema = self.schemas[model.name]
            with self.conn.transaction():
                for statement in model.index_sql(schema):
                    self.conn.execute(statement)
            self.conn.execute(f'ANALYZE "{schema}".applied')

    def swap_in(self, final_pages: Callable[[], Iterator[PageResult]]) -> None:
        """Final catch-up and pointer swap in one transaction holding the pointer rows."""
        old: list[str] = []
        self.conn.execute("SET synchronous_commit = on")
        with self.conn.transaction(), self.conn.cursor() as cur:
            # Waits for the worker's running batch (it holds the rows FOR SHARE), then makes
            # its next batch wait until the swap has committed.
            cur.execute(
                "SELECT projection FROM projection_live WHERE projection = ANY(%s)"
                " ORDER BY projection FOR UPDATE",
                (sorted(m.name for m in self.models),),
            )
            for page in final_pages():
                self.commit(page)
            for model in self.models:
                previous = swap(cur, model.name, self.schemas[model.name])
                if previous is not None:
                    old.append(previous)
        for schema in old:
            drop_schema(self.conn, schema)


@contextmanager
def _gc_paused() -> Iterator[None]:
    # Decoded events are acyclic; the cyclic collector would only rescan the growing page.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# --- Sources ------------------------------------------------------------------------------


class StoreReader:
    """Pages of event bodies from the public log, in notification order."""

    def __init__(self, url: str, page_size: int) -> None:
        self.url = url
        self.page_size = page_size
        self.last = 0  # notification id of the last row read

    def end(self) -> int:
        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute(f"SELECT max(notification_id) FROM {EVENTS_TABLE}").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def bodies(self, after: int, until: int) -> list[bytes]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return self.bodies_in(conn, after, until)

    def bodies_in(self, conn: psycopg.Connection[Any], after: int, until: int) -> list[bytes]:
        """The bodies of a notification-id span (no ids: half the client's cost per row)."""
        rows = conn.execute(
            f"SELECT state FROM {EVENTS_TABLE} WHERE notification_id > %s"
            " AND notification_id <= %s ORDER BY notification_id",
            (after, until),
            binary=True,
        ).fetchall()
        return [body for (body,) in rows]

    def pages(self) -> Iterator[list[bytes]]:
        """Every page after the last one read, up to the end of the log as it grows."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            while page := self.page(conn, self.last, None):
                self.last = page[-1][0]
                yield [body for _, body in page]

    def page(
        self, conn: psycopg.Connection[Any], after: int, until: int | None
    ) -> list[tuple[int, bytes]]:
        rows = conn.execute(
            f"SELECT notification_id, state FROM {EVENTS_TABLE} WHERE notification_id > %s"
            " AND notification_id <= %s ORDER BY notification_id LIMIT %s",
            (after, until if until is not None else 2**62, self.page_size),
            binary=True,
        ).fetchall()
        return [(int(n), bytes(body)) for n, body in rows]


def _parallel(
    url: str,
    names: list[str],
    cost_method: str,
    bounds: Bounds,
    reader: StoreReader,
    end: int,
    workers: int,
) -> Iterator[PageResult]:
    """Aggregate notification-id ranges up to ``end`` in processes; yield results in order."""
    start = reader.last
    reader.last = end  # later passes continue after what the processes read
    context = get_context("spawn")  # not fork: the caller may run threads (a worker, a pool)
    init = (url, names, cost_method, bounds)
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_child_init, initargs=init
    ) as pool:
        pending: deque[Future[PageResult]] = deque()
        for low in range(start, end, reader.page_size):
            pending.append(pool.submit(_child_page, low, min(low + reader.page_size, end)))
            if len(pending) >= 2 * workers:  # bounded read-ahead: memory stays flat
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


_CHILD: dict[str, Any] = {}


def _child_init(url: str, names: list[str], cost_method: str, bounds: Bounds) -> None:
    _CHILD["conn"] = psycopg.connect(url, autocommit=True)
    _CHILD["models"] = read_models(names, cost_method=cost_method)
    _CHILD["bounds"] = bounds
    _CHILD["reader"] = StoreReader(url, 2**31)
    gc.disable()  # see _gc_paused; a child process does nothing else


def _child_page(after: int, until: int) -> PageResult:
    bodies = _CHILD["reader"].bodies_in(_CHILD["conn"], after, until)
    result = aggregate_page(_CHILD["models"], _CHILD["bounds"], bodies)
    result.span = (after, until)
    return result


class _KafkaReader:
    """Pages of the events topic from offset 0, across all partitions, up to the end."""

    def __init__(self, bootstrap: str, topic: str, page_size: int, timeout: float = 60.0) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.timeout = timeout
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            allow_auto_create_topics=False,
            fetch_max_wait_ms=100,
            max_poll_records=page_size,
        )
        partitions = self._consumer.partitions_for_topic(topic) or set()
        if not partitions:
            self._consumer.close()
            raise ReplayError(f"topic: {topic!r} has no partitions (does it exist?)")
        self._partitions = [TopicPartition(topic, p) for p in sorted(partitions)]
        self._consumer.assign(self._partitions)
        self._consumer.seek_to_beginning(*self._partitions)

    def close(self) -> None:
        self._consumer.close()

    def pages(self) -> Iterator[list[bytes]]:
        """Records until a poll comes back empty with every partition at its high watermark.

        The end is the high watermark that fetch responses carry, not ListOffsets (Tansu
        reports a lower bound there); an empty poll means fetches sent during this call
        found nothing more, so the final pass (after the lock) sees everything before it.
        """
        consumer = self._consumer
        deadline = time.monotonic() + self.timeout
        while True:
            batch = consumer.poll(timeout_ms=500)
            page = [record.value or b"" for records in batch.values() for record in records]
            if page:
                deadline = time.monotonic() + self.timeout
                yield page
            elif all(self._at_end(tp) for tp in self._partitions):
                return
            elif time.monotonic() > deadline:
                raise ReplayError(f"topic: no progress towards its end within {self.timeout} s")

    def _at_end(self, tp: Any) -> bool:
        high = self._consumer.highwater(tp)
        return high is not None and self._consumer.position(tp) >= high
