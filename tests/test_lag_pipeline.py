"""What the lag work changed in the relay and the worker, checked on the real broker and database.

* The relay names each message's partition itself (from a cache) instead of letting
  kafka-python hash every key: the partition must still be the one kafka-python's default
  partitioner picks for that key, or a client's events would move to another partition.
* The worker tells Kafka its offsets at most every ``kafka_commit_interval_s`` instead of after
  every batch: Kafka's offsets must still reach what PostgreSQL holds, and never pass it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from projections.worker import ThreadedWorker
from streams.contract import TopicSpec
from streams.relay import Relay
from streams.topics import ensure_topics, read_topic
from tests.test_projection_worker import (
    WAIT,
    Stack,
    equal_to_the_store,
    more_fees,
    stored_offsets,
    unique,
    wait_for,
)
from tests.test_projections import build
from tests.test_relay import write_ledger


@pytest.fixture
def two_topics(kafka_bootstrap: str) -> Iterator[tuple[TopicSpec, TopicSpec]]:
    specs = tuple(TopicSpec(unique(f"test.lag.{n}"), 6, {"cleanup.policy": "delete"}) for n in "ab")
    ensure_topics(kafka_bootstrap, list(specs))
    yield specs[0], specs[1]
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, bootstrap_timeout_ms=10_000)
    try:
        admin.delete_topics([s.name for s in specs], raise_errors=False)
    finally:
        admin.close()


def partitions_kafka_python_picks(bootstrap: str, topic: str, keys: set[bytes]) -> dict[bytes, int]:
    """Send one probe per key with a plain producer (its default partitioner) and ask the
    broker where each landed."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, bootstrap_timeout_ms=10_000)
    try:
        futures = {key: producer.send(topic, value=b"probe", key=key) for key in keys}
        return {key: future.get(timeout=WAIT).partition for key, future in futures.items()}
    finally:
        producer.close()


def test_the_relay_puts_each_key_where_kafka_pythons_partitioner_would(
    fresh_db_url: str, kafka_bootstrap: str, two_topics: tuple[TopicSpec, TopicSpec]
) -> None:
    relayed, probes = two_topics
    ledger = unique("lag-keys")
    write_ledger(fresh_db_url, ledger, clients=24, deposits=1)
    with Relay(fresh_db_url, kafka_bootstrap, unique("relay"), topic=relayed) as relay:
        while relay.run_once():
            pass
    records = read_topic(kafka_bootstrap, relayed.name, timeout=WAIT)
    keys = {r.key for r in records}
    assert len(keys) == 25  # 24 clients and the ledger (the mark)
    expected = partitions_kafka_python_picks(kafka_bootstrap, probes.name, keys)
    assert len(set(expected.values())) > 1  # the keys do spread: the check can fail
    assert {(r.key, r.partition) for r in records} == set(expected.items())


def kafka_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        found = {p: consumer.committed(TopicPartition(topic, p)) for p in range(6)}
    finally:
        consumer.close()
    return {p: o for p, o in found.items() if o is not None}


@contextmanager
def caught_up_worker(url: str, bootstrap: str, interval: float) -> Iterator[tuple[Stack, str]]:
    """The demo log relayed and a worker (Kafka commits every ``interval`` s) caught up with
    it; yields the stack and the group. Stops the worker, then checks that Kafka's offsets
    equal PostgreSQL's after the stop."""
    build(url, demo=False)
    stack = Stack(url, bootstrap)
    group = unique("group")
    try:
        stack.relay_all()
        worker = ThreadedWorker(stack.config(group, kafka_commit_interval_s=interval)).start()
        try:
            wait_for(lambda: equal_to_the_store(url), "the worker catches up")
            yield stack, group
        finally:
            worker.stop()
        assert kafka_offsets(bootstrap, group, stack.events.name) == stored_offsets(url, group)
    finally:
        stack.relay.close()


def test_kafka_offsets_follow_postgresql_within_the_interval(
    fresh_db_url: str, kafka_bootstrap: str
) -> None:
    url = fresh_db_url
    with caught_up_worker(url, kafka_bootstrap, 0.5) as (stack, group):
        stored = stored_offsets(url, group)
        assert stored  # the check below compares something
        # While the worker runs and no event comes: Kafka catches up within the interval.
        wait_for(
            lambda: kafka_offsets(kafka_bootstrap, group, stack.events.name) == stored,
            "Kafka's offsets reach PostgreSQL's",
        )


def test_kafka_offsets_lag_behind_postgresql_until_the_worker_stops(
    fresh_db_url: str, kafka_bootstrap: str
) -> None:
    url = fresh_db_url
    # The first batch is told to Kafka at once; within an hour nothing else is.
    with caught_up_worker(url, kafka_bootstrap, 3600.0) as (stack, group):
        first = stored_offsets(url, group)
        more_fees(url, "later", 6)
        stack.relay_all()
        wait_for(lambda: stored_offsets(url, group) != first, "a later batch is applied")
        wait_for(lambda: equal_to_the_store(url), "the worker catches up again")
        told = kafka_offsets(kafka_bootstrap, group, stack.events.name)
        stored = stored_offsets(url, group)
        assert told != stored
        assert all(told.get(p, 0) <= o for p, o in stored.items())  # never ahead
