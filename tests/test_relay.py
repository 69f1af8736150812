"""The relay, for real: a ledger in PostgreSQL, the Tansu broker, and what lands on the topic.

The broker is shared by the whole session (other tests publish to the same topics, and one
test here restarts it), so every test writes a ledger of its own, unique name and looks only
at the messages whose ledger header carries that name, read from the end offsets it saw
before it started.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import psycopg
import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.errors import KafkaTimeoutError
from kafka.future import Future

import streams.relay
from ledger.application import Ledger
from primeledger.services import free_port
from streams.contract import (
    EVENTS_TOPIC,
    H_LEDGER,
    H_NOTIFICATION,
    H_POSITION,
    H_SCHEMA,
    H_TYPE,
    TopicSpec,
    event_key,
)
from streams.relay import Relay, RelayBrokerError
from streams.relay_store import RelayLockedError
from streams.topics import (
    EVENTS_SPEC,
    TopicMismatchError,
    Topics,
    end_offsets,
    ensure_topics,
    read_topic,
    topic_partitions,
)

WAIT = 60.0  # generous bound of every wait on the broker; polls end as soon as it holds


# --- helpers ------------------------------------------------------------------------------


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def write_ledger(url: str, ledger: str, clients: int = 3, deposits: int = 4) -> None:
    """A small business story: clients open accounts, deposit, move money; a mark is set."""
    commands: list[dict[str, Any]] = [
        {"type": "set_mark", "key": "m0", "asset": "BTC", "quote": "USD", "price": "65000.00"}
    ]
    for c in range(clients):
        client = f"fund-{c}"
        commands.append(
            {
                "type": "open_client",
                "key": f"open-{c}",
                "client": client,
                "name": f"Fund {c}",
                "sub_accounts": ["main", "alt"],
            }
        )
        for d in range(deposits):
            commands.append(
                {
                    "type": "deposit_fiat",
                    "key": f"dep-{c}-{d}",
                    "client": client,
                    "sub_account": "main",
                    "asset": "USD",
                    "amount": f"{100 + d}.25",
                    "bank_reference": f"ref-{c}-{d}",
                }
            )
        commands.append(
            {
                "type": "transfer",
                "key": f"move-{c}",
                "client": client,
                "from_sub_account": "main",
                "to_sub_account": "alt",
                "asset": "USD",
                "amount": "50.00",
            }
        )
    with Ledger(url, ledger) as writer:
        results = writer.submit(commands)
    assert all(r.status == "accepted" for r in results), results


def stored_events(url: str) -> list[tuple[int, bytes]]:
    """``(notification_id, body)`` of every event in the store, in commit order."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT notification_id, state FROM primeledger_events ORDER BY notification_id"
        ).fetchall()
    return [(int(n), bytes(body)) for n, body in rows]


def stored_position(url: str, name: str) -> int | None:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT notification_id FROM primeledger_relay_positions WHERE name = %s", (name,)
        ).fetchone()
    return None if row is None else int(row[0])


def headers_of(record: Any) -> dict[str, bytes]:
    return dict(record.headers)


def ledger_records(
    bootstrap: str, ledger: str, start: dict[int, int], topic: str = EVENTS_TOPIC
) -> list[Any]:
    """This ledger's messages on the topic (from ``start``), in partition/offset order."""
    records = read_topic(bootstrap, topic, timeout=WAIT, start_offsets=start)
    return [r for r in records if headers_of(r).get(H_LEDGER) == ledger.encode()]


def notification_ids(records: list[Any]) -> list[int]:
    return sorted(int(headers_of(r)[H_NOTIFICATION]) for r in records)


def drain(relay: Relay) -> int:
    """Run pages until the relay is caught up; bounded, so a bug cannot loop for ever."""
    total = 0
    for _ in range(1000):
        count = relay.run_once()
        if count == 0:
            return total
        total += count
    raise AssertionError("relay did not catch up within 1000 pages")


def wait_until(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def start_offsets(kafka_bootstrap: str) -> dict[int, int]:
    """Make sure the contract's topics exist; return the events topic's end before the test."""
    ensure_topics(kafka_bootstrap)
    return end_offsets(kafka_bootstrap, EVENTS_TOPIC)


@pytest.fixture
def private_topic(kafka_bootstrap: str) -> Iterator[TopicSpec]:
    """A topic of this test alone, which it may delete or recreate without harming others."""
    spec = TopicSpec(unique("test.relay"), 6, {"cleanup.policy": "delete"})
    ensure_topics(kafka_bootstrap, [spec])
    yield spec
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, bootstrap_timeout_ms=10_000)
    try:
        admin.delete_topics([spec.name], raise_errors=False)
    finally:
        admin.close()


# --- topics -------------------------------------------------------------------------------


def test_ensure_topics_creates_the_given_partitions_once(kafka_bootstrap: str) -> None:
    specs = [TopicSpec(unique("test.ensure"), n, {"cleanup.policy": "delete"}) for n in (1, 3)]
    ensure_topics(kafka_bootstrap, specs)
    with Topics(kafka_bootstrap) as topics:
        first = [topics.describe(s.name) for s in specs]
    ensure_topics(kafka_bootstrap, specs)  # idempotent: the same topics, not new ones
    with Topics(kafka_bootstrap) as topics:
        again = [topics.describe(s.name) for s in specs]
    assert [info.partitions if info else None for info in first] == [1, 3]
    assert again == first
    assert topic_partitions(kafka_bootstrap, unique("test.never-created")) is None


def test_ensure_topics_recreates_an_empty_auto_created_topic(kafka_bootstrap: str) -> None:
    spec = TopicSpec(unique("test.autocreated"), 6, {})
    # A producer's metadata request auto-creates the topic with the broker's default count.
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, bootstrap_timeout_ms=10_000)
    try:
        wait_until(lambda: bool(producer.partitions_for(spec.name)), "auto-creation")
    finally:
        producer.close()
    assert topic_partitions(kafka_bootstrap, spec.name) not in (None, 6)
    ensure_topics(kafka_bootstrap, [spec])
    assert topic_partitions(kafka_bootstrap, spec.name) == 6


def test_ensure_topics_refuses_a_wrong_partition_count_with_data(kafka_bootstrap: str) -> None:
    name = unique("test.mismatch")
    ensure_topics(kafka_bootstrap, [TopicSpec(name, 2, {})])
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, bootstrap_timeout_ms=10_000)
    try:
        producer.send(name, value=b"precious").get(timeout=WAIT)
    finally:
        producer.close()
    with pytest.raises(TopicMismatchError, match=r"has 2 partitions, the contract says 3"):
        ensure_topics(kafka_bootstrap, [TopicSpec(name, 3, {})])
    assert topic_partitions(kafka_bootstrap, name) == 2  # untouched
    assert [r.value for r in read_topic(kafka_bootstrap, name, timeout=WAIT)] == [b"precious"]


# --- the relay ----------------------------------------------------------------------------


def test_every_event_is_published_unchanged_keyed_by_client_in_order(
    fresh_db_url: str, kafka_bootstrap: str, start_offsets: dict[int, int]
) -> None:
    ledger = unique("relay-story")
    write_ledger(fresh_db_url, ledger)
    stored = stored_events(fresh_db_url)

    with Relay(fresh_db_url, kafka_bootstrap, unique("relay")) as relay:
        assert drain(relay) == len(stored)
        assert relay.position == stored[-1][0]

    records = ledger_records(kafka_bootstrap, ledger, start_offsets)
    assert notification_ids(records) == [n for n, _ in stored]  # each exactly once
    bodies = dict(stored)
    partitions_of_key: dict[bytes, set[int]] = defaultdict(set)
    positions_of_key: dict[bytes, list[int]] = defaultdict(list)
    for record in records:
        headers = headers_of(record)
        body = bodies[int(headers[H_NOTIFICATION])]
        event = orjson.loads(body)
        assert record.value == body  # the stored bytes, not a re-serialisation
        assert record.key == event_key(event)
        assert headers[H_POSITION] == str(event["position"]).encode()
        assert headers[H_TYPE] == event["type"].encode()
        assert headers[H_SCHEMA] == b"1"
        partitions_of_key[record.key].add(record.partition)
        positions_of_key[record.key].append(event["position"])
    # One client's events: one partition, in ledger order. A mark is keyed by the ledger.
    assert all(len(parts) == 1 for parts in partitions_of_key.values())
    assert all(p == sorted(p) for p in positions_of_key.values())
    assert set(positions_of_key) == {b"fund-0", b"fund-1", b"fund-2", ledger.encode()}


def test_unreachable_broker_does_not_move_the_position(
    fresh_db_url: str, kafka_bootstrap: str, start_offsets: dict[int, int]
) -> None:
    ledger, name = unique("relay-down"), unique("relay")
    write_ledger(fresh_db_url, ledger, clients=1, deposits=2)
    nowhere = f"127.0.0.1:{free_port()}"
    with Relay(fresh_db_url, nowhere, name, connect_timeout=1.0) as relay:
        with pytest.raises(RelayBrokerError, match="cannot"):
            relay.run_once()
        assert relay.position == 0
    assert stored_position(fresh_db_url, name) in (None, 0)

    # The same relay name on a reachable broker publishes everything from the start.
    with Relay(fresh_db_url, kafka_bootstrap, name) as relay:
        drain(relay)
    expected = [n for n, _ in stored_events(fresh_db_url)]
    assert notification_ids(ledger_records(kafka_bootstrap, ledger, start_offsets)) == expected


def test_position_is_stored_only_after_the_broker_acknowledged(
    fresh_db_url: str,
    kafka_bootstrap: str,
    start_offsets: dict[int, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ledger, name = unique("relay-ack"), unique("relay")
    write_ledger(fresh_db_url, ledger, clients=2, deposits=3)
    positions_at_flush: list[int | None] = []

    class SpyProducer(KafkaProducer):  # type: ignore[misc]
        """Records the stored position each time the relay waits for acknowledgements."""

        def flush(self, timeout: float | None = None) -> None:
            positions_at_flush.append(stored_position(fresh_db_url, name))
            super().flush(timeout)

    monkeypatch.setattr(streams.relay, "KafkaProducer", SpyProducer)
    stored = [n for n, _ in stored_events(fresh_db_url)]
    with Relay(fresh_db_url, kafka_bootstrap, name, page_size=5) as relay:
        drain(relay)
        # Before each page's flush the store still holds the previous page's end.
        pages = [stored[i - 1] for i in range(5, len(stored), 5)]
        assert positions_at_flush == [0, *pages]
        assert stored_position(fresh_db_url, name) == stored[-1]


def test_unacknowledged_message_keeps_its_page_unstored(
    fresh_db_url: str,
    kafka_bootstrap: str,
    start_offsets: dict[int, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ledger, name = unique("relay-nack"), unique("relay")
    write_ledger(fresh_db_url, ledger, clients=2, deposits=3)
    stored = [n for n, _ in stored_events(fresh_db_url)]
    sends = 0

    class ThirdAckLost(KafkaProducer):  # type: ignore[misc]
        """A real producer, except that the broker's answer to the third message is lost."""

        def send(self, *args: Any, **kwargs: Any) -> Any:
            nonlocal sends
            future = super().send(*args, **kwargs)
            sends += 1
            return Future().failure(KafkaTimeoutError("ack lost")) if sends == 3 else future

    monkeypatch.setattr(streams.relay, "KafkaProducer", ThirdAckLost)
    with Relay(fresh_db_url, kafka_bootstrap, name, page_size=5) as relay:
        with pytest.raises(RelayBrokerError, match="ack lost"):
            relay.run_once()
        assert relay.position == 0
        assert stored_position(fresh_db_url, name) == 0
        drain(relay)  # the page is sent again, whole
        assert stored_position(fresh_db_url, name) == stored[-1]
    # At least once: the failed page's other messages may be there twice, none is missing.
    ids = notification_ids(ledger_records(kafka_bootstrap, ledger, start_offsets))
    assert set(ids) == set(stored)
    assert sorted(i for i in ids if i > stored[4]) == stored[5:]  # later pages: once each


def test_relay_started_after_its_topic_was_lost_republishes_everything(
    fresh_db_url: str, kafka_bootstrap: str, private_topic: TopicSpec
) -> None:
    ledger, name = unique("relay-lost"), unique("relay")
    write_ledger(fresh_db_url, ledger, clients=2, deposits=2)
    stored = [n for n, _ in stored_events(fresh_db_url)]
    with Relay(fresh_db_url, kafka_bootstrap, name, topic=private_topic) as relay:
        drain(relay)
    # While no relay runs, the topic is lost and made again, empty, under a new topic id.
    with Topics(kafka_bootstrap) as topics:
        before = topics.describe(private_topic.name)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, bootstrap_timeout_ms=10_000)
    try:
        admin.delete_topics([private_topic.name])
    finally:
        admin.close()
    wait_until(lambda: topic_partitions(kafka_bootstrap, private_topic.name) is None, "deletion")
    ensure_topics(kafka_bootstrap, [private_topic])
    with Topics(kafka_bootstrap) as topics:
        after = topics.describe(private_topic.name)
    assert before is not None
    assert after is not None
    assert before.topic_id != after.topic_id
    assert read_topic(kafka_bootstrap, private_topic.name, timeout=WAIT) == []

    with Relay(fresh_db_url, kafka_bootstrap, name, topic=private_topic) as relay:
        assert relay.position == stored[-1]  # what it had stored...
        assert drain(relay) == len(stored)  # ...but the topic id says: publish it all again
    records = ledger_records(kafka_bootstrap, ledger, {}, topic=private_topic.name)
    assert notification_ids(records) == stored


def test_restarted_relay_continues_without_gaps(
    fresh_db_url: str, kafka_bootstrap: str, start_offsets: dict[int, int]
) -> None:
    ledger, name = unique("relay-restart"), unique("relay")
    write_ledger(fresh_db_url, ledger)
    stored = [n for n, _ in stored_events(fresh_db_url)]
    with Relay(fresh_db_url, kafka_bootstrap, name) as relay:
        assert relay.run_once(max_events=7) == 7
    with Relay(fresh_db_url, kafka_bootstrap, name) as relay:
        assert relay.position == stored[6]
        assert drain(relay) == len(stored) - 7
    # Nothing missing, nothing twice: the second relay began where the first one stopped.
    assert notification_ids(ledger_records(kafka_bootstrap, ledger, start_offsets)) == stored


def test_republish_from_a_position(
    fresh_db_url: str, kafka_bootstrap: str, start_offsets: dict[int, int]
) -> None:
    ledger = unique("relay-again")
    write_ledger(fresh_db_url, ledger, clients=2, deposits=3)
    stored = [n for n, _ in stored_events(fresh_db_url)]
    with Relay(fresh_db_url, kafka_bootstrap, unique("relay")) as relay:
        drain(relay)
        assert relay.republish(from_notification_id=stored[5]) == len(stored) - 5
        assert relay.position == stored[-1]
    ids = notification_ids(ledger_records(kafka_bootstrap, ledger, start_offsets))
    assert ids == sorted(stored + stored[5:])


def test_second_relay_of_the_same_name_is_refused(fresh_db_url: str, kafka_bootstrap: str) -> None:
    name = unique("relay")
    with Relay(fresh_db_url, kafka_bootstrap, name):
        with pytest.raises(RelayLockedError, match=f"relay '{name}' is already running"):
            Relay(fresh_db_url, kafka_bootstrap, name)
        Relay(fresh_db_url, kafka_bootstrap, unique("relay")).close()  # another name may run
    Relay(fresh_db_url, kafka_bootstrap, name).close()  # the lock went with the first relay


def test_lost_database_connection_is_reopened_with_the_lock(
    fresh_db_url: str, kafka_bootstrap: str, start_offsets: dict[int, int]
) -> None:
    ledger, name = unique("relay-pg-drop"), unique("relay")
    write_ledger(fresh_db_url, ledger, clients=1, deposits=4)
    stored = [n for n, _ in stored_events(fresh_db_url)]
    with Relay(fresh_db_url, kafka_bootstrap, name) as relay:
        assert relay.run_once(max_events=2) == 2
        with psycopg.connect(fresh_db_url, autocommit=True) as admin:
            admin.execute(  # the relay's session dies, and its advisory lock with it
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with pytest.raises(psycopg.OperationalError):
            relay.run_once()
        assert drain(relay) == len(stored) - 2  # reconnected, locked again, carried on
        with pytest.raises(RelayLockedError):
            Relay(fresh_db_url, kafka_bootstrap, name)
    assert notification_ids(ledger_records(kafka_bootstrap, ledger, start_offsets)) == stored


@contextlib.contextmanager
def running(relay: Relay) -> Iterator[threading.Thread]:
    """Run the relay's ``run_forever`` in a thread for the block; stop and join it after."""
    stop = threading.Event()
    worker = threading.Thread(target=relay.run_forever, args=(stop,), daemon=True)
    worker.start()
    try:
        yield worker
    finally:
        stop.set()
        worker.join(WAIT)
    assert not worker.is_alive(), "run_forever did not return after stop was set"


def test_broker_restart_is_detected_and_everything_republished(
    fresh_db_url: str, kafka_bootstrap: str, broker: Any, start_offsets: dict[int, int]
) -> None:
    ledger = unique("relay-broker-restart")
    write_ledger(fresh_db_url, ledger, clients=2, deposits=3)
    before = [n for n, _ in stored_events(fresh_db_url)]
    relay = Relay(
        fresh_db_url, kafka_bootstrap, unique("relay"), check_interval=0.2, delivery_timeout=5.0
    )
    try:
        with running(relay):
            wait_until(
                lambda: (
                    notification_ids(ledger_records(kafka_bootstrap, ledger, start_offsets))
                    == before
                ),
                "the first publication",
            )
        broker.restart()  # memory storage: every topic is gone
        # The hazard seen before: while the relay is between pages, a client's metadata
        # request auto-creates the events topic with the broker's default partition count.
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, bootstrap_timeout_ms=10_000)
        try:
            producer.partitions_for(EVENTS_TOPIC)
        finally:
            producer.close()
        assert topic_partitions(kafka_bootstrap, EVENTS_TOPIC) not in (None, 6)
        later = unique("relay-after-restart")
        write_ledger(fresh_db_url, later, clients=1, deposits=2)  # new events keep coming
        everything = [n for n, _ in stored_events(fresh_db_url)]

        def all_back() -> bool:
            records = read_topic(kafka_bootstrap, EVENTS_TOPIC, timeout=WAIT)
            ours = [
                r
                for r in records
                if headers_of(r).get(H_LEDGER) in (ledger.encode(), later.encode())
            ]
            return set(notification_ids(ours)) == set(everything)

        with running(relay) as worker:
            wait_until(all_back, "the republication after the broker restart")
            assert worker.is_alive()  # it recovered by itself
        assert topic_partitions(kafka_bootstrap, EVENTS_TOPIC) == EVENTS_SPEC.partitions
    finally:
        relay.close()
        ensure_topics(kafka_bootstrap)  # leave the contract's topics for the tests after us
