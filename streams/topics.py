"""Create and inspect the project's Kafka topics: explicit partition counts, never auto-created.

The contract (``streams.contract.TOPICS``) names every topic with its partition count and
configuration; :func:`ensure_topics` makes the broker match it. A topic auto-created by some
client's metadata request gets the broker's default partition count (Tansu gave the events
topic 4 partitions instead of 6 after a restart), which would scatter a client's events over
other partitions than the contract promises: an *empty* topic with the wrong count is deleted
and created again, a topic that holds data is refused with :class:`TopicMismatchError`.

Two facts about Tansu 0.6 shape the helpers below:

* Its ListOffsets answer for the latest offset is the base offset of the partition's last
  record batch plus one, not the offset after the last record. :func:`end_offsets` is
  therefore a lower bound of the true end (still 0 exactly when a partition is empty), and
  :func:`read_topic` stops at the high watermark that fetch responses carry, which is right.
* A restart loses every topic (memory storage); a topic made again has a new topic id.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, TypeVar

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import OffsetSpec
from kafka.errors import KafkaError, TopicAlreadyExistsError, UnknownTopicOrPartitionError

from streams.contract import EVENTS_TOPIC, TOPICS, TopicSpec

log = logging.getLogger(__name__)
T = TypeVar("T")

# Kafka's error code for a topic the broker does not know.
_UNKNOWN_TOPIC: Final = 3


def spec_for(name: str, specs: Iterable[TopicSpec] = TOPICS) -> TopicSpec:
    """The contract's spec of topic ``name``."""
    for spec in specs:
        if spec.name == name:
            return spec
    raise KeyError(f"topic {name!r} is not in the stream contract")


EVENTS_SPEC: Final = spec_for(EVENTS_TOPIC)


class TopicError(RuntimeError):
    """A topic could not be created, checked or read; the message says which and why."""


class TopicMismatchError(TopicError):
    """A topic exists with another partition count than the contract's and holds data."""


class BrokerUnavailableError(TopicError):
    """The broker did not answer (within the bounded retries)."""


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """What the broker says about a topic: its id (KIP-516; None if the broker has none)."""

    name: str
    topic_id: str | None
    partitions: int


class Topics:
    """An admin connection to the broker, for callers that ask repeatedly (the relay)."""

    def __init__(self, bootstrap: str, *, timeout: float = 10.0) -> None:
        self.bootstrap = bootstrap
        self.timeout = timeout
        try:
            self._admin = KafkaAdminClient(
                bootstrap_servers=bootstrap,
                client_id="primeledger-topics",
                bootstrap_timeout_ms=int(timeout * 1000),
                request_timeout_ms=int(timeout * 1000),
            )
        except KafkaError as err:
            raise BrokerUnavailableError(
                f"cannot reach the Kafka broker at {bootstrap} within {timeout:.0f}s: {err}"
            ) from err

    def close(self) -> None:
        self._admin.close()

    def __enter__(self) -> Topics:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def describe(self, name: str) -> TopicInfo | None:
        """The topic's id and partition count, or None if the broker does not have it."""
        # The admin client's metadata request never auto-creates the topic.
        (topic,) = self._admin.describe_topics([name])
        if topic["error_code"] == _UNKNOWN_TOPIC:
            return None
        if topic["error_code"] != 0:
            raise TopicError(f"describing topic {name!r} failed: error code {topic['error_code']}")
        topic_id = topic.get("topic_id")
        return TopicInfo(name, str(topic_id) if topic_id else None, len(topic["partitions"]))

    def end_offsets(self, name: str, partitions: int) -> dict[int, int]:
        """Each partition's end offset as the broker reports it (a lower bound on Tansu)."""
        if partitions == 0:
            return {}
        specs = {TopicPartition(name, p): OffsetSpec.LATEST for p in range(partitions)}
        answer = self._admin.list_partition_offsets(specs)
        return {tp.partition: int(found.offset) for tp, found in answer.items()}

    def ensure(self, specs: Iterable[TopicSpec] = TOPICS, *, attempts: int = 5) -> None:
        """Make every topic of ``specs`` exist with its partition count (see module doc)."""
        for spec in specs:
            _retry(partial(self._ensure_one, spec), attempts, f"topic {spec.name!r}")

    def _ensure_one(self, spec: TopicSpec) -> None:
        info = self.describe(spec.name)
        if info is not None and info.partitions == spec.partitions:
            return
        if info is not None:
            self._drop_if_empty(info, spec)
        # Another process may have created it meanwhile: checked by _wait_until below.
        with contextlib.suppress(TopicAlreadyExistsError):
            self._admin.create_topics(
                {
                    spec.name: {
                        "num_partitions": spec.partitions,
                        "replication_factor": 1,
                        "configs": dict(spec.config),
                    }
                }
            )
        self._wait_until(spec)

    def _drop_if_empty(self, info: TopicInfo, spec: TopicSpec) -> None:
        ends = self.end_offsets(info.name, info.partitions)
        if any(ends.values()):
            raise TopicMismatchError(
                f"topic {info.name!r} has {info.partitions} partitions, the contract says "
                f"{spec.partitions}, and it holds data (end offsets {ends}); it was probably "
                "auto-created by a client: delete it by hand after checking, then run again"
            )
        log.warning(
            "topic %r has %d partitions instead of %d and is empty (auto-created by some "
            "client?): deleting and creating it again",
            info.name,
            info.partitions,
            spec.partitions,
        )
        with contextlib.suppress(UnknownTopicOrPartitionError):  # already gone
            self._admin.delete_topics([info.name])
        _poll(lambda: self.describe(info.name) is None, self.timeout, f"deletion of {info.name!r}")

    def _wait_until(self, spec: TopicSpec) -> None:
        def ready() -> bool:
            info = self.describe(spec.name)
            if info is not None and info.partitions != spec.partitions:
                raise _RetryableError(f"{spec.name!r} came back with {info.partitions} partitions")
            return info is not None

        _poll(ready, self.timeout, f"creation of {spec.name!r}")


class _RetryableError(Exception):
    """A condition worth another attempt (a racing auto-creation, a slow broker)."""


def _poll(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise _RetryableError(f"{what} not visible after {timeout:.0f}s")
        time.sleep(0.05)


def _retry(action: Callable[[], T], attempts: int, what: str) -> T:
    """Run ``action``; retry broker hiccups with backoff, at most ``attempts`` times."""
    delay = 0.2
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except TopicMismatchError:
            raise
        except (KafkaError, _RetryableError) as err:
            if attempt == attempts:
                raise TopicError(f"{what}: gave up after {attempts} attempts: {err}") from err
            log.warning("%s: attempt %d/%d failed (%s); retrying", what, attempt, attempts, err)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")  # pragma: no cover


# --- one-shot helpers: open an admin connection, ask, close ---------------------------------


def ensure_topics(
    bootstrap: str, specs: Iterable[TopicSpec] = TOPICS, *, attempts: int = 5
) -> None:
    """Create missing topics of ``specs`` with the contract's partitions and configs.

    Idempotent. An empty topic with the wrong partition count is recreated; one with data
    raises :class:`TopicMismatchError`; a broker that keeps failing raises :class:`TopicError`.
    """
    with Topics(bootstrap) as topics:
        topics.ensure(specs, attempts=attempts)


def topic_partitions(bootstrap: str, name: str) -> int | None:
    """The topic's partition count, or None if the broker does not have it."""
    with Topics(bootstrap) as topics:
        info = topics.describe(name)
    return None if info is None else info.partitions


def end_offsets(bootstrap: str, name: str) -> dict[int, int]:
    """Reported end offset per partition ({} if the topic is missing); see the module doc."""
    with Topics(bootstrap) as topics:
        info = topics.describe(name)
        return {} if info is None else topics.end_offsets(name, info.partitions)


def read_topic(
    bootstrap: str,
    name: str,
    timeout: float = 60.0,
    *,
    start_offsets: Mapping[int, int] | None = None,
) -> list[Any]:
    """Every record of the topic (from ``start_offsets`` if given) up to its current end.

    For tests and tools: no consumer group, every partition assigned, records in partition
    then offset order. Raises :class:`TopicError` if the end is not reached within ``timeout``.
    """
    partitions = topic_partitions(bootstrap, name)
    if partitions is None:
        return []
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        allow_auto_create_topics=False,
        bootstrap_timeout_ms=int(timeout * 1000),
        fetch_max_wait_ms=100,
        max_poll_records=10_000,
    )
    try:
        assigned = [TopicPartition(name, p) for p in range(partitions)]
        consumer.assign(assigned)
        for tp in assigned:
            consumer.seek(tp, (start_offsets or {}).get(tp.partition, 0))
        return _read_to_end(consumer, assigned, timeout)
    finally:
        consumer.close()


def _read_to_end(consumer: Any, assigned: list[Any], timeout: float) -> list[Any]:
    records: dict[int, list[Any]] = {tp.partition: [] for tp in assigned}

    def at_end(tp: Any) -> bool:
        # The end is the high watermark of the latest fetch response, known once a fetch
        # for the partition came back. Not ListOffsets: Tansu under-reports it (a lower
        # bound) and, for a topic deleted and made again, once reported records that no
        # fetch returned.
        high = consumer.highwater(tp)
        return high is not None and consumer.position(tp) >= high

    deadline = time.monotonic() + timeout
    while not all(at_end(tp) for tp in assigned):
        if time.monotonic() > deadline:
            raise TopicError(
                f"reading {assigned[0].topic!r}: end not reached within {timeout:.0f}s"
            )
        for tp, batch in consumer.poll(timeout_ms=200).items():
            records[tp.partition].extend(batch)
    return [record for p in sorted(records) for record in records[p]]
