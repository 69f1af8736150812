"""The relay: tail the PostgreSQL event log in commit order and publish it to Kafka.

One page at a time: read up to ``page_size`` events after the stored position (every ledger
of the shared events table, in notification-id order), send each stored body unchanged to
``primeledger.events.v1`` keyed by ``streams.contract.event_key`` (one client's events stay
on one partition, in order), wait until the broker acknowledged every message of the page
(``acks="all"``, idempotent producer), and only then store the page's last notification id.
A crash or a broker failure in between republishes the page: delivery is at-least-once and
consumers dedupe by ``(ledger, position)``.

Running (``run_forever``), a page that was not full is followed by the next one only
``min_page_interval`` seconds after it began: the events of the writer's commits meanwhile
travel together. Each page costs a produce request, a flush and a position write whatever its
size; on the shared 2-core machine, pages of ~50 events at 5k events/s cost the broker twice
the CPU that pages of ~100 do (measured: 66-79 against 32-36 us per event), and the relay a
fifth more. The price is at most that interval of extra lag on a busy log; after an idle wait
the first commit is published at once.

The broker may lose data (Tansu keeps topics in memory: a restart empties them). Before the
first page, every ``check_interval`` seconds and after any failed page, the relay compares
the topic with what it stored next to its position: the topic id (a recreated topic has a
new one) and, per partition, the least end offset the broker must report while it still has
the acknowledged messages. On a difference it ensures the topics and republishes everything
from notification id 0, so nothing is lost while PostgreSQL has it.

One relay per name: it holds a PostgreSQL advisory lock for its whole life (see
``streams.relay_store``). ``Relay`` is guarded by a lock, so ``republish`` may be called from
another thread while ``run_forever`` runs.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import replace
from types import TracebackType
from typing import Any, Final

import orjson
import psycopg
from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.partitioner.default import murmur2

from streams.contract import (
    H_LEDGER,
    H_NOTIFICATION,
    H_POSITION,
    H_SCHEMA,
    H_TYPE,
    TOPICS,
    TopicSpec,
    event_key,
)
from streams.relay_store import RelayPosition, RelayStore
from streams.topics import EVENTS_SPEC, TopicError, TopicInfo, TopicMismatchError, Topics

log = logging.getLogger(__name__)

PAGE_SIZE: Final = 2000
_BACKOFF_MIN: Final = 0.1
_BACKOFF_MAX: Final = 5.0
_ACK_POLL: Final = 1.0  # seconds between looks at the topic while a page awaits its acks
_CACHE_MAX: Final = 100_000  # keys (clients) whose partition is remembered; then start afresh


class RelayError(RuntimeError):
    """The relay cannot go on without help (corrupt event, misconfiguration)."""


class RelayBrokerError(RelayError):
    """The broker did not acknowledge a page or could not be checked; the position did not
    move, and a later attempt publishes the page again."""


class Relay:
    """Relays every event of the PostgreSQL log to Kafka; see the module doc."""

    def __init__(
        self,
        database_url: str,
        bootstrap: str,
        name: str = "default",
        *,
        topic: TopicSpec = EVENTS_SPEC,
        page_size: int = PAGE_SIZE,
        check_interval: float = 2.0,
        connect_timeout: float = 10.0,
        delivery_timeout: float = 30.0,
        linger_ms: int = 5,
        batch_size: int = 512 * 1024,
        min_page_interval: float = 0.02,
    ) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {page_size}")
        if min_page_interval < 0:
            raise ValueError(f"min_page_interval must be >= 0 seconds, got {min_page_interval}")
        self.database_url = database_url
        self.bootstrap = bootstrap
        self.name = name
        self.topic = topic
        self.page_size = page_size
        self.min_page_interval = min_page_interval
        self.check_interval = check_interval
        self.connect_timeout = connect_timeout
        self.delivery_timeout = delivery_timeout
        self._producer_config: dict[str, Any] = {"linger_ms": linger_ms, "batch_size": batch_size}
        self._guard = threading.RLock()
        self._producer: Any = None
        self._topics: Topics | None = None
        self._next_check = 0.0  # monotonic time of the next broker check; 0 = before any page
        self._closed = False
        self._partitions: dict[bytes, int] = {}  # key -> partition, see _partitioner
        self._partition_ids: list[int] = []
        # Header values that repeat on every message (ledger names, event types), encoded once.
        self._encoded: dict[str, bytes] = {}
        # Raises RelayLockedError if a relay of this name runs already.
        self._store = RelayStore(database_url, name, connect_timeout=connect_timeout)
        try:
            self._position = self._store.load(topic.name)
        except BaseException:
            self._store.close()
            raise

    # --- public API ----------------------------------------------------------------------
    @property
    def position(self) -> int:
        """The last notification id the broker acknowledged (as stored in PostgreSQL)."""
        return self._position.notification_id

    def run_once(self, max_events: int | None = None) -> int:
        """Publish one page (at most ``max_events``, default ``page_size``); return its size.

        Raises :class:`RelayBrokerError` if the broker did not acknowledge the whole page
        (the position stays where it was) and ``psycopg.OperationalError`` if PostgreSQL
        failed; a later call retries.
        """
        limit = self.page_size if max_events is None else max_events
        if limit < 1:
            raise ValueError(f"max_events must be at least 1, got {max_events}")
        with self._guard:
            self._reopen_if_needed()
            if time.monotonic() >= self._next_check:
                self._check_broker()
            rows = self._store.page(self._position.notification_id, limit)
            if not rows:
                return 0
            floors = self._publish(rows)
            self._save(
                replace(
                    self._position,
                    notification_id=rows[-1][0],
                    offset_floors={**self._position.offset_floors, **floors},
                )
            )
            return len(rows)

    def run_forever(self, stop: threading.Event, idle_sleep: float = 0.05) -> None:
        """Publish until ``stop`` is set (or the relay is closed).

        When caught up, waits up to ``idle_sleep`` seconds for the ledger's commit
        notification; after a page that was not full, starts the next one no sooner than
        ``min_page_interval`` seconds after it (see the module doc). Broker and database
        failures are logged and retried with exponential backoff (0.1 s to 5 s). Raises on
        what a retry cannot fix: a corrupt event, a topic with data and the wrong partition
        count, another relay of this name.
        """
        # The objects made while starting live as long as the relay: full collections need not
        # walk them again and again (their pauses were the worst of the relay's lag).
        gc.collect()
        gc.freeze()
        backoff = _BACKOFF_MIN
        while not stop.is_set() and not self._closed:
            try:
                began = time.monotonic()
                count = self.run_once()
                if count == 0:
                    self._store.wait_for_events(idle_sleep)
                elif count < self.page_size:
                    stop.wait(max(0.0, began + self.min_page_interval - time.monotonic()))
            except (RelayBrokerError, psycopg.OperationalError) as err:
                log.warning("relay %r: %s; retrying in %.1fs", self.name, err, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            except RelayError:
                if self._closed:
                    return  # closed by another thread between two pages
                raise
            backoff = _BACKOFF_MIN

    def republish(self, from_notification_id: int = 0) -> int:
        """Publish again every event with a notification id >= ``from_notification_id``.

        Rewinds the stored position, then publishes up to the newest event at the time of
        the call; returns how many events were published. Raises like :meth:`run_once`.
        """
        if from_notification_id < 0:
            raise ValueError(f"from_notification_id must be >= 0, got {from_notification_id}")
        with self._guard:
            self._reopen_if_needed()
            until = self._store.last_notification_id()
            start = min(max(from_notification_id - 1, 0), self._position.notification_id)
            log.info("relay %r: republishing from notification id %d", self.name, start + 1)
            self._save(replace(self._position, notification_id=start))
            published = 0
            while self._position.notification_id < until:
                count = self.run_once()
                if count == 0:
                    break
                published += count
            return published

    def close(self) -> None:
        """Stop producing, release the lock. Unacknowledged messages are abandoned (the
        stored position still points before them)."""
        with self._guard:
            if self._closed:
                return
            self._closed = True
            self._drop_producer(timeout=self.delivery_timeout)
            if self._topics is not None:
                self._topics.close()
                self._topics = None
            self._store.close()

    def __enter__(self) -> Relay:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- the page ------------------------------------------------------------------------
    def _publish(self, rows: list[tuple[int, bytes]]) -> dict[int, int]:
        """Send the page, wait for every ack; return each partition's new offset floor."""
        producer = self._producer_or_new()
        try:
            futures = self._send_all(producer, rows)
            self._await_acks(producer)
        except KafkaError as err:
            self._page_failed()
            raise RelayBrokerError(f"page after {self.position} not sent: {err!r}") from err
        return self._acknowledged(futures)

    def _await_acks(self, producer: Any) -> None:
        """Flush; while it hangs, look whether the topic was replaced (the broker restarted).

        After a Tansu restart a page can hang for the whole delivery timeout (its producer id
        is unknown to the new broker); looking at the topic meanwhile ends it early.
        """
        deadline = time.monotonic() + self.delivery_timeout + 5.0
        while True:
            try:
                producer.flush(timeout=_ACK_POLL)
                return
            except KafkaTimeoutError:
                if time.monotonic() > deadline:
                    raise
                if self._topic_replaced():
                    self._page_failed()
                    raise RelayBrokerError(
                        f"page after {self.position}: topic {self.topic.name!r} was replaced "
                        "while the page waited for acknowledgements"
                    ) from None

    def _send_all(self, producer: Any, rows: list[tuple[int, bytes]]) -> list[Any]:
        # The hot loop of the relay: per event one JSON parse (for key and headers), a
        # header list and the send; no flush and no other per-message round trip. The
        # partition is given, from a cache of kafka-python's own choice for the key (see
        # _partitioner): hashing every key again in pure Python was a sixth of the relay's CPU.
        send, topic, loads = producer.send, self.topic.name, orjson.loads
        partition_of = self._partitioner(producer)
        encoded = self._encoded
        futures: list[Any] = []
        append = futures.append
        for notification_id, body in rows:
            try:
                event = loads(body)
                ledger, kind = event["ledger"], event["type"]
                headers = [
                    (H_LEDGER, encoded.get(ledger) or self._encode(ledger)),
                    (H_POSITION, b"%d" % event["position"]),
                    (H_TYPE, encoded.get(kind) or self._encode(kind)),
                    (H_SCHEMA, b"%d" % event["v"]),
                    (H_NOTIFICATION, b"%d" % notification_id),
                ]
                key = event_key(event)
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
                raise RelayError(
                    f"event with notification id {notification_id} is not a valid event body "
                    f"({err!r}); the relay stops rather than skip it"
                ) from err
            partition = partition_of.get(key)
            if partition is None:
                partition = self._partition_for(key)
            append(send(topic, value=body, key=key, headers=headers, partition=partition))
        return futures

    def _encode(self, text: str) -> bytes:
        if not isinstance(text, str):
            raise TypeError(f"expected a string, got {text!r}")
        if len(self._encoded) >= _CACHE_MAX:
            self._encoded.clear()
        value = self._encoded[text] = text.encode()
        return value

    def _partitioner(self, producer: Any) -> dict[bytes, int]:
        """The cache of partitions by key, emptied whenever the topic's partitions change."""
        ids = sorted(producer.partitions_for(self.topic.name))
        if ids != self._partition_ids or len(self._partitions) >= _CACHE_MAX:
            self._partitions.clear()
            self._partition_ids = ids
        return self._partitions

    def _partition_for(self, key: bytes) -> int:
        # kafka-python's DefaultPartitioner (that of the Java client) for a keyed message:
        # the positive murmur2 hash modulo the partition count picks among sorted partitions.
        ids = self._partition_ids
        hashed: int = murmur2(key) & 0x7FFFFFFF
        partition = ids[hashed % len(ids)]
        self._partitions[key] = partition
        return partition

    def _acknowledged(self, futures: list[Any]) -> dict[int, int]:
        """Check that every message was acknowledged; return per partition the page's least
        offset + 1: the least end offset the broker can report while it keeps the page.

        Not the greatest offset + 1: Tansu reports the end of a partition as the base offset
        of its last record batch + 1, and the page's batches begin at or after its least
        offset on that partition (also on Kafka, whose end is the true one, the floor holds).
        """
        floors: dict[int, int] = {}
        for future in futures:
            if not future.succeeded():
                self._page_failed()
                reason = future.exception if future.is_done else "no answer in time"
                raise RelayBrokerError(f"page after {self.position} not acknowledged: {reason!r}")
            meta = future.value
            floor = meta.offset + 1
            if floor < floors.get(meta.partition, floor + 1):
                floors[meta.partition] = floor
        return floors

    def _page_failed(self) -> None:
        # The idempotent producer may be fenced for good after a broker failure (Tansu forgets
        # producer ids on restart): start a fresh one, and check the topic before the retry.
        self._drop_producer(timeout=0.0)
        self._next_check = 0.0

    def _producer_or_new(self) -> Any:
        if self._producer is None:
            timeout_ms = int(self.delivery_timeout * 1000)
            try:
                self._producer = KafkaProducer(
                    bootstrap_servers=self.bootstrap,
                    client_id=f"primeledger-relay-{self.name}",
                    acks="all",
                    enable_idempotence=True,
                    max_in_flight_requests_per_connection=5,
                    # Never auto-create: a topic made by a metadata request gets the broker's
                    # default partition count, not the contract's.
                    allow_auto_create_topics=False,
                    bootstrap_timeout_ms=int(self.connect_timeout * 1000),
                    max_block_ms=timeout_ms,
                    request_timeout_ms=max(timeout_ms // 3, 1000),
                    delivery_timeout_ms=timeout_ms,
                    max_request_size=4 * 1024 * 1024,
                    **self._producer_config,
                )
            except KafkaError as err:
                self._next_check = 0.0
                raise RelayBrokerError(f"cannot connect to {self.bootstrap}: {err!r}") from err
        return self._producer

    def _drop_producer(self, timeout: float) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=timeout)
            except KafkaError as err:
                log.warning("relay %r: closing the producer failed: %r", self.name, err)

    # --- broker loss ---------------------------------------------------------------------
    def _check_broker(self) -> None:
        """Compare the topic with what the position row remembers; republish if it lost data."""
        try:
            info, ends = self._inspect_topic()
        except TopicMismatchError:
            raise
        except (TopicError, KafkaError) as err:
            self._drop_topics()
            raise RelayBrokerError(f"cannot check topic {self.topic.name!r}: {err}") from err
        reason = _loss(self._position, info, ends)
        if reason is not None:
            log.warning(
                "relay %r: the broker lost data of %r (%s): republishing from notification id 1",
                self.name,
                self.topic.name,
                reason,
            )
            self._save(RelayPosition(0, self.topic.name, info.topic_id, {}))
        elif self._position.topic_id != info.topic_id:
            self._save(replace(self._position, topic_id=info.topic_id))
        self._next_check = time.monotonic() + self.check_interval

    def _topic_replaced(self) -> bool:
        """Whether the topic is gone or is not the one the position row remembers."""
        try:
            info = self._topics_or_new().describe(self.topic.name)
        except (TopicError, KafkaError) as err:
            log.warning("relay %r: cannot describe %r: %s", self.name, self.topic.name, err)
            self._drop_topics()
            return False  # unknown: keep waiting, up to the delivery timeout
        known = self._position.topic_id
        return info is None or (known is not None and info.topic_id not in (None, known))

    def _inspect_topic(self) -> tuple[TopicInfo, dict[int, int]]:
        topics = self._topics_or_new()
        info = topics.describe(self.topic.name)
        if info is None or info.partitions != self.topic.partitions:
            found = "is missing" if info is None else f"has {info.partitions} partitions"
            log.warning("relay %r: topic %r %s; ensuring topics", self.name, self.topic.name, found)
            topics.ensure([self.topic])
            self._ensure_other_topics(topics)
            info = topics.describe(self.topic.name)
            if info is None:
                raise TopicError(f"topic {self.topic.name!r} vanished right after its creation")
        return info, topics.end_offsets(info.name, info.partitions)

    def _ensure_other_topics(self, topics: Topics) -> None:
        # A broker that lost this topic lost the contract's other topics too: make them
        # again, so that no client auto-creates them with the wrong partition count. Their
        # trouble is their owners' to report; it must not stop the relay.
        for spec in TOPICS:
            if spec.name == self.topic.name:
                continue
            try:
                topics.ensure([spec])
            except TopicError as err:
                log.warning("relay %r: could not ensure topic %r: %s", self.name, spec.name, err)

    def _topics_or_new(self) -> Topics:
        if self._topics is None:
            self._topics = Topics(self.bootstrap, timeout=self.connect_timeout)
        return self._topics

    def _drop_topics(self) -> None:
        topics, self._topics = self._topics, None
        if topics is not None:
            topics.close()

    # --- the position --------------------------------------------------------------------
    def _save(self, position: RelayPosition) -> None:
        self._store.save(position)
        self._position = position  # only once stored: a failed write leaves the old one

    def _reopen_if_needed(self) -> None:
        if self._closed:
            raise RelayError(f"relay {self.name!r} is closed")
        if not self._store.closed:
            return
        # The connection broke, and the advisory lock with it: lock again (or refuse, if
        # another relay of this name took over) and trust only what was stored.
        log.warning("relay %r: PostgreSQL connection lost; reconnecting", self.name)
        self._store = RelayStore(self.database_url, self.name, connect_timeout=self.connect_timeout)
        self._position = self._store.load(self.topic.name)
        self._next_check = 0.0


def _loss(position: RelayPosition, info: TopicInfo, ends: dict[int, int]) -> str | None:
    """Why the topic no longer holds what the relay published, or None if it does."""
    if info.topic_id is not None and position.topic_id is not None:
        if info.topic_id != position.topic_id:
            return f"topic id changed from {position.topic_id} to {info.topic_id}"
    elif info.topic_id is not None and position.notification_id > 0:
        return "no topic id was recorded with the position"
    for partition, floor in sorted(position.offset_floors.items()):
        end = ends.get(partition, 0)
        if end < floor:
            return f"partition {partition} ends at offset {end}, below {floor} acknowledged"
    return None
