"""Projection workers: consume the events topic in a consumer group and keep read models current.

Why aiokafka directly and not faststream (the stack's Kafka framework): measured on faststream
0.7.8 (STACK-NOTES), none of its ack policies gives "commit only after PostgreSQL has the
batch, and never lose a failed message": ``ACK``/``ACK_FIRST`` commit a message whose handler
failed, ``MANUAL`` loses it as soon as a later message is acknowledged (a commit is the
consumer's whole position), and ``NACK_ON_ERROR`` redelivers a poison message forever. It also
handles one message at a time, while a batch per transaction is what makes a projection fast.
So this worker uses ``AIOKafkaConsumer`` with ``enable_auto_commit=False`` and ``getmany``.

One batch, in order:

1. Decode and check every record. One that does not decode (garbage, unknown type, wrong
   schema version, unbalanced postings) or that a read model can never apply (a trade
   without a quantity) is poison: it goes to the dead-letter topic at once, with the reason
   and its source topic/partition/offset in headers (retrying cannot fix it).
2. One PostgreSQL transaction: lock the live generation pointers, apply the events not yet
   applied (tracking by ledger position, see ``generations``), store the next Kafka offsets
   and read the new balances for the feed. A redelivered batch changes nothing.
3. Publish the balance feed (``primeledger.balances.v1``), then commit the offsets to Kafka.
   The feed's messages are also written in the transaction (``projection_feed_outbox``) and
   deleted once the broker acknowledged them; a worker that stopped in between (crash,
   broker away) publishes what is left there when it starts again, so no change is lost.
   They can arrive twice or late: each carries its ledger ``position``, and a consumer keeps
   the message with the highest position per key.
   PostgreSQL is the source of truth: on assignment the consumer seeks to the offsets stored
   there, so a lost Kafka commit costs a redelivery and nothing else.

Failures while applying: a database that is down or a lost connection is not the message's
fault; the batch is retried with backoff until it works or the worker is stopped, and nothing
is dead-lettered. Any other error (a malformed trade, a value PostgreSQL refuses) is retried
``max_attempts`` times; then the batch is split in halves (in order) until the failing message
is alone, and a message that still fails ``max_attempts`` times alone is dead-lettered with
the error as reason, while the rest of the batch is applied. Nothing is acknowledged before it
is either applied or in the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from projections.base import ProjectionSetupError, ReadModel
from projections.catalog import ALL, apply_tracked, read_models, unusable
from projections.client_balances import ClientBalances, FeedMessage
from projections.decode import DecodeError, Event, decode
from projections.generations import ensure_live, live_schemas
from projections.pnl import Pnl
from streams.contract import (
    BALANCES_TOPIC,
    DLQ_TOPIC,
    EVENTS_TOPIC,
    H_LEDGER,
    H_REASON,
    H_SCHEMA,
    H_SOURCE,
)
from streams.topics import Topics

log = logging.getLogger(__name__)
MAX_REASON: Final = 1000  # characters of a dead-letter reason header
# Batches up to this size are decoded on the event loop (a few ms): handing them to a thread
# cost more than decoding them. Larger ones (catching up) go to a thread like the transaction.
INLINE_DECODE: Final = 500
# Errors that mean "the database is not there right now", not "this message is bad".
INFRASTRUCTURE_ERRORS: Final = (psycopg.OperationalError, psycopg.InterfaceError)


@dataclass(frozen=True)
class WorkerConfig:
    database_url: str
    bootstrap: str
    projections: Sequence[str] = ALL
    group_id: str = "primeledger-projections"
    topic: str = EVENTS_TOPIC
    dlq_topic: str = DLQ_TOPIC
    balances_topic: str | None = BALANCES_TOPIC  # None: no balance feed
    cost_method: str = "fifo"
    batch_max: int = 2000
    max_attempts: int = 3
    poll_timeout_ms: int = 200
    # aiokafka's default wait (500 ms) makes the broker hold each fetch until it fills: most of
    # the end-to-end lag at a few thousand events/s. 20 ms keeps lag low at little cost. A
    # fetch returns as soon as there is data (``fetch_min_bytes``): waiting for more was
    # measured to save nothing once the relay sends pages at most every 20 ms (see
    # ``streams.relay``): then batches are already about a page.
    fetch_min_bytes: int = 1
    fetch_max_wait_ms: int = 20
    # Kafka's committed offsets only inform (a worker starts from PostgreSQL's): committing them
    # after every batch cost a broker round trip per batch on the way to the next one.
    kafka_commit_interval_s: float = 1.0
    retry_backoff_s: float = 0.2
    retry_backoff_max_s: float = 5.0
    # Tansu joins a group in about half the session timeout (STACK-NOTES).
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 2000


@dataclass
class WorkerStats:
    batches: int = 0  # PostgreSQL transactions committed
    records: int = 0  # Kafka records handled (applied, duplicate or dead-lettered)
    applied: int = 0  # events applied (counted once, however many read models)
    duplicates: int = 0  # events already applied (redeliveries)
    dead_lettered: int = 0
    feed_messages: int = 0
    dead_letter_reasons: list[str] = field(default_factory=list)


class _ApplyError(Exception):
    """A batch that failed for a reason other than the database being unavailable."""


class ProjectionWorker:
    """Consumes the events topic and applies it to the live generation of some read models."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.models: list[ReadModel] = read_models(
            config.projections, cost_method=config.cost_method
        )
        self.stats = WorkerStats()
        self.assigned = threading.Event()  # set once partitions are assigned (tests, CLI)
        self._conn: psycopg.Connection[Any] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._busy = asyncio.Lock()  # held while a batch is in PostgreSQL (see _Listener)
        self.floors: dict[TopicPartition, int] = {}  # PostgreSQL's offsets at assignment
        self._uncommitted: dict[TopicPartition, int] = {}  # in PostgreSQL, not yet in Kafka
        self._kafka_due = 0.0  # monotonic time of the next Kafka commit
        self.topic_ids: dict[str, str | None] = {}  # incarnation of each assigned topic
        self._outbox: list[int] = []  # feed rows committed, not yet acknowledged by the broker

    # --- lifecycle ---------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set."""
        config = self.config
        await asyncio.to_thread(self._setup_database)
        # Start-up objects live for the worker's life: a full collection need not walk them
        # (its pauses were the worst part of the lag's p99).
        gc.freeze()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=config.bootstrap,
            group_id=config.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=config.session_timeout_ms,
            heartbeat_interval_ms=config.heartbeat_interval_ms,
            fetch_min_bytes=config.fetch_min_bytes,
            fetch_max_wait_ms=config.fetch_max_wait_ms,
        )
        self._producer = AIOKafkaProducer(
            bootstrap_servers=config.bootstrap, acks="all", enable_idempotence=False
        )
        self._consumer.subscribe([config.topic], listener=_Listener(self))
        try:
            await self._producer.start()
            await self._publish_left_over()
            await self._consumer.start()
            while not stop.is_set():
                batch = await self._consumer.getmany(
                    timeout_ms=config.poll_timeout_ms, max_records=config.batch_max
                )
                if batch:
                    await self._handle(batch, stop)
                if self._uncommitted and time.monotonic() >= self._kafka_due:
                    await self._commit_kafka()
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        if self._consumer is not None and self._uncommitted:
            with contextlib.suppress(Exception):
                await self._commit_kafka()
        for client in (self._consumer, self._producer):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()
        if self._conn is not None:
            self._conn.close()

    def _setup_database(self) -> None:
        self._conn = _connect(self.config.database_url)
        live = ensure_live(self._conn, self.models)
        with self._conn.cursor() as cur:
            for model in self.models:
                if isinstance(model, Pnl):
                    model.check_method(cur, live[model.name])  # fail at start, not per batch

    def stored_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """The next offsets PostgreSQL holds for this group (own connection: any thread).

        Offsets stored for another incarnation of a topic (the broker lost it and the relay
        republished) are ignored: that topic starts again from 0, and the applied positions
        make the events seen before no-ops.
        """
        wanted = {(tp.topic, tp.partition): tp for tp in partitions}
        self.topic_ids = {topic: _topic_id(self.config.bootstrap, topic) for topic, _ in wanted}
        with psycopg.connect(self.config.database_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT topic, partition, next_offset, topic_id FROM projection_offsets"
                " WHERE group_id = %s",
                (self.config.group_id,),
            ).fetchall()
        return {
            wanted[(t, p)]: int(o)
            for t, p, o, topic_id in rows
            if (t, p) in wanted and (topic_id is None or topic_id == self.topic_ids.get(t))
        }

    def seek_to_stored(self, assigned: list[TopicPartition]) -> None:
        """Point newly assigned partitions at PostgreSQL's offsets (blocks a few ms)."""
        assert self._consumer is not None
        stored = self.stored_offsets(assigned)
        for tp, offset in stored.items():
            self._consumer.seek(tp, offset)
        self.floors = {tp: stored.get(tp, 0) for tp in assigned}
        # Another owner may have moved a partition on meanwhile: never commit our old offsets.
        self._uncommitted = {}
        self.assigned.set()

    # --- one batch ---------------------------------------------------------------------
    async def _handle(
        self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]], stop: asyncio.Event
    ) -> None:
        # Records below PostgreSQL's offsets were handled already (applied or dead letters):
        # a fetch that raced the seek on assignment can still deliver them.
        floors = self.floors
        records = [r for tp in sorted(batch) for r in batch[tp] if r.offset >= floors.get(tp, 0)]
        offsets = {tp: rs[-1].offset + 1 for tp, rs in batch.items() if rs}
        if len(records) <= INLINE_DECODE:
            events, poison = _decode_all(self.models, records)
        else:
            events, poison = await asyncio.to_thread(_decode_all, self.models, records)
        for record, reason in poison:
            await self._dead_letter(record, reason)
        async with self._busy:
            try:
                feed = await self._commit(events, offsets, stop)
            except _ApplyError:
                feed = await self._isolate(events, stop)
                await self._commit([], offsets, stop)  # offsets past the dead letters too
            await self._publish(feed)
        self.stats.records += len(records)
        self._uncommitted.update(offsets)

    async def _commit(
        self,
        events: list[tuple[ConsumerRecord[bytes, bytes], Event]],
        offsets: dict[TopicPartition, int],
        stop: asyncio.Event,
        max_attempts: int | None = None,
    ) -> list[FeedMessage]:
        """Apply in one transaction; retry while the database is away; ``_ApplyError`` after
        ``max_attempts`` (default: the configured number) failures of any other kind."""
        limit = self.config.max_attempts if max_attempts is None else max_attempts
        attempts, backoff = 0, self.config.retry_backoff_s
        while True:
            try:
                return await asyncio.to_thread(self._transaction, [e for _, e in events], offsets)
            except ProjectionSetupError:
                raise  # misconfigured (another cost method...): stop, do not dead-letter
            except INFRASTRUCTURE_ERRORS as exc:
                if stop.is_set():
                    raise
                log.warning("projection worker: database unavailable (%s); retrying", exc)
                await asyncio.to_thread(self._reconnect)
            except Exception as exc:
                attempts += 1
                log.warning("projection worker: batch failed (attempt %d): %s", attempts, exc)
                if attempts >= limit:
                    raise _ApplyError(_describe(exc)) from exc
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.config.retry_backoff_max_s)

    async def _isolate(
        self, events: list[tuple[ConsumerRecord[bytes, bytes], Event]], stop: asyncio.Event
    ) -> list[FeedMessage]:
        """Apply what can be applied, halving in order; dead-letter a message failing alone.

        A part is tried once; a single message gets every attempt. Halves keep each
        partition's records in order, and each commit stores the offsets of its own part.
        """
        if len(events) == 1:
            record, _ = events[0]
            tp = TopicPartition(record.topic, record.partition)
            try:
                return await self._commit(events, {tp: record.offset + 1}, stop)
            except _ApplyError as exc:
                await self._dead_letter(record, f"apply failed: {exc}")
                return []
        middle = len(events) // 2
        feed: list[FeedMessage] = []
        for part in (events[:middle], events[middle:]):
            try:
                feed += await self._commit(part, _offsets_of(part), stop, max_attempts=1)
            except _ApplyError:
                feed += await self._isolate(part, stop)
        return feed

    def _transaction(
        self, events: list[Event], offsets: dict[TopicPartition, int]
    ) -> list[FeedMessage]:
        conn = self._conn
        assert conn is not None
        feed: list[FeedMessage] = []
        applied: set[tuple[str, int]] = set()
        duplicates = 0
        with conn.transaction(), conn.cursor() as cur:
            live = live_schemas(cur, [m.name for m in self.models])  # FOR SHARE until commit
            for model in self.models:
                fresh = apply_tracked(cur, model, live[model.name], events) if events else []
                applied.update((e.ledger, e.position) for e in fresh)
                duplicates = max(duplicates, len(events) - len(fresh))
                if isinstance(model, ClientBalances) and self.config.balances_topic and fresh:
                    feed = model.feed(cur, live[model.name], fresh)
            _store_offsets(cur, self.config.group_id, offsets, self.topic_ids)
            outbox = _write_outbox(cur, self.config.group_id, feed) if feed else None
        if outbox is not None:
            self._outbox.append(outbox)
        self.stats.batches += 1
        self.stats.applied += len(applied)
        self.stats.duplicates += duplicates
        return feed

    def _reconnect(self) -> None:
        if self._conn is not None and not (self._conn.closed or self._conn.broken):
            return  # a transient error (deadlock, serialization): the connection is fine
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        try:
            self._conn = _connect(self.config.database_url)
        except psycopg.OperationalError as exc:
            log.warning("projection worker: reconnect failed: %s", exc)

    # --- Kafka side effects ------------------------------------------------------------
    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        """Send a record to the dead-letter topic and wait until the broker has it."""
        assert self._producer is not None
        source = f"{record.topic}/{record.partition}/{record.offset}"
        headers = [
            *[(k, v) for k, v in (record.headers or ()) if k not in (H_REASON, H_SOURCE)],
            (H_REASON, reason[:MAX_REASON].encode()),
            (H_SOURCE, source.encode()),
        ]
        await self._producer.send_and_wait(
            self.config.dlq_topic, value=record.value, key=record.key, headers=headers
        )
        self.stats.dead_lettered += 1
        if len(self.stats.dead_letter_reasons) < 100:
            self.stats.dead_letter_reasons.append(f"{source}: {reason}")
        log.error("projection worker: dead-lettered %s: %s", source, reason)

    async def _publish(self, feed: list[FeedMessage]) -> None:
        """Send the balance feed after the commit it describes (at least once per change)."""
        topic = self.config.balances_topic
        if not feed or topic is None:
            return
        assert self._producer is not None
        sent = [
            await self._producer.send(
                topic,
                value=m.value,
                key=m.key,
                headers=[(H_LEDGER, m.ledger.encode()), (H_SCHEMA, b"1")],
            )
            for m in feed
        ]
        await asyncio.gather(*sent)
        self.stats.feed_messages += len(feed)
        done, self._outbox = self._outbox, []
        await asyncio.to_thread(self._delete_outbox, done)

    async def _publish_left_over(self) -> None:
        """Publish, in commit order, the feed rows a previous run committed but never sent."""
        if self.config.balances_topic is None:
            return
        for row_id, feed in await asyncio.to_thread(self._read_outbox):
            self._outbox = [row_id]
            await self._publish(feed)
            log.info("projection worker: published %d left-over feed messages", len(feed))

    def _read_outbox(self) -> list[tuple[int, list[FeedMessage]]]:
        assert self._conn is not None
        rows = self._conn.execute(
            "SELECT id, messages FROM projection_feed_outbox WHERE group_id = %s ORDER BY id",
            (self.config.group_id,),
        ).fetchall()
        return [(int(row_id), _feed_of(bytes(raw))) for row_id, raw in rows]

    def _delete_outbox(self, ids: list[int]) -> None:
        if ids:
            assert self._conn is not None
            self._conn.execute("DELETE FROM projection_feed_outbox WHERE id = ANY(%s)", (ids,))

    async def _commit_kafka(self) -> None:
        """Tell Kafka the offsets PostgreSQL has (at most every ``kafka_commit_interval_s``)."""
        assert self._consumer is not None
        offsets, self._uncommitted = self._uncommitted, {}
        self._kafka_due = time.monotonic() + self.config.kafka_commit_interval_s
        try:
            await self._consumer.commit(offsets)
        except (KafkaError, AssertionError) as exc:
            # A rebalance took a partition away: PostgreSQL has the offsets and the next owner
            # seeks to them.
            log.info("projection worker: Kafka commit skipped (%s)", exc)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Seek to PostgreSQL's offsets on assignment; finish the batch in flight on revocation."""

    def __init__(self, worker: ProjectionWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Let the batch in PostgreSQL finish, so that the next owner reads its offsets.
        async with self.worker._busy:
            pass
        if self.worker._uncommitted:
            await self.worker._commit_kafka()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        # No await before the seeks: aiokafka starts resetting positions to Kafka's committed
        # offsets as this callback runs, and fetches from there while it waits.
        self.worker.seek_to_stored(list(assigned))


def _decode_all(
    models: list[ReadModel],
    records: list[ConsumerRecord[bytes, bytes]],
) -> tuple[
    list[tuple[ConsumerRecord[bytes, bytes], Event]], list[tuple[ConsumerRecord[bytes, bytes], str]]
]:
    events, poison = [], []
    for record in records:
        try:
            event = decode(record.value or b"")
        except DecodeError as exc:
            poison.append((record, exc.reason))
            continue
        reason = unusable(models, event)
        if reason is None:
            events.append((record, event))
        else:
            poison.append((record, reason))
    return events, poison


def _offsets_of(
    events: list[tuple[ConsumerRecord[bytes, bytes], Event]],
) -> dict[TopicPartition, int]:
    offsets: dict[TopicPartition, int] = {}
    for record, _ in events:
        tp = TopicPartition(record.topic, record.partition)
        offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
    return offsets


def _store_offsets(
    cur: psycopg.Cursor[Any],
    group: str,
    offsets: dict[TopicPartition, int],
    topic_ids: dict[str, str | None],
) -> None:
    if not offsets:
        return
    items = sorted(offsets.items())
    cur.execute(
        "INSERT INTO projection_offsets AS o (group_id, topic, partition, next_offset, topic_id)"
        " SELECT %s, * FROM unnest(%s::text[], %s::int[], %s::bigint[], %s::text[])"
        " ON CONFLICT (group_id, topic, partition) DO UPDATE SET"
        " next_offset = CASE WHEN o.topic_id IS DISTINCT FROM excluded.topic_id"
        " THEN excluded.next_offset ELSE GREATEST(o.next_offset, excluded.next_offset) END,"
        " topic_id = excluded.topic_id",
        (
            group,
            [tp.topic for tp, _ in items],
            [tp.partition for tp, _ in items],
            [o for _, o in items],
            [topic_ids.get(tp.topic) for tp, _ in items],
        ),
    )


def _connect(url: str) -> psycopg.Connection[Any]:
    """The worker's connection. Its transactions commit without waiting for the WAL flush:
    read models are derived data, and rows, applied positions and offsets are one transaction,
    so a database crash can only lose a last few batches whole; the worker then resumes from
    the offsets that remain and applies them again. A slow disk stays out of the lag."""
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("SET synchronous_commit = off")
    return conn


def _write_outbox(cur: psycopg.Cursor[Any], group: str, feed: list[FeedMessage]) -> int:
    rows = [[m.key.decode(), m.value.decode(), m.ledger] for m in feed]  # JSON texts: UTF-8
    cur.execute(
        "INSERT INTO projection_feed_outbox (group_id, messages) VALUES (%s, %s) RETURNING id",
        (group, orjson.dumps(rows)),
    )
    row = cur.fetchone()
    assert row is not None
    return int(row[0])


def _feed_of(raw: bytes) -> list[FeedMessage]:
    return [FeedMessage(k.encode(), v.encode(), ledger) for k, v, ledger in orjson.loads(raw)]


def _topic_id(bootstrap: str, topic: str) -> str | None:
    """The broker's id for the current incarnation of a topic (None if it has none).

    If the broker cannot say, the answer matches no stored offsets: the worker then reads
    the topic from 0, which the applied positions make safe (only slower), never skipping.
    """
    try:
        with Topics(bootstrap) as topics:
            info = topics.describe(topic)
    except Exception:
        log.warning("topic %s: its id is unknown; reading it from the start", topic, exc_info=True)
        return f"unknown-{uuid.uuid4()}"
    return info.topic_id if info is not None else None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


class ThreadedWorker:
    """A ``ProjectionWorker`` on its own event loop in a background thread (tests, the CLI)."""

    def __init__(self, config: WorkerConfig) -> None:
        self.worker = ProjectionWorker(config)
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"projections-{config.group_id}", daemon=True
        )

    @property
    def stats(self) -> WorkerStats:
        return self.worker.stats

    def start(self, *, wait_assigned: float | None = 60.0) -> ThreadedWorker:
        """Start; with ``wait_assigned``, return once partitions are assigned (or raise)."""
        self._thread.start()
        self._started.wait()
        if wait_assigned is not None:
            deadline = time.monotonic() + wait_assigned
            while not self.worker.assigned.wait(0.05):
                if not self._thread.is_alive():
                    self._raise(RuntimeError("projection worker stopped before assignment"))
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"no partitions assigned within {wait_assigned} s")
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Stop and wait; re-raises the error the worker died of, if any."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"projection worker did not stop within {timeout} s")
        if self.error is not None:
            self._raise(self.error)

    def _raise(self, default: BaseException) -> None:
        raise self.error if self.error is not None else default

    def __enter__(self) -> ThreadedWorker:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._started.set()
            await self.worker.run(self._stop)

        try:
            asyncio.run(main())
        except BaseException as exc:
            self.error = exc
            log.exception("projection worker failed")
        finally:
            self._started.set()
