"""The projection worker for real: the writer, the relay, the Tansu broker and PostgreSQL.

The broker is shared by the session (and a relay test restarts it), so each test makes its
own topics with unique names and its own consumer group; a group's join takes about 3 s on
Tansu, so the stories below use as few groups as they can. Every wait polls a condition with
a generous bound.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import psycopg
from kafka import KafkaProducer

from ledger.application import Ledger
from projections import queries
from projections.catalog import ALL
from projections.replay import replay
from projections.worker import ThreadedWorker, WorkerConfig
from streams.contract import H_REASON, H_SOURCE, TopicSpec
from streams.relay import Relay
from streams.topics import ensure_topics, read_topic
from tests.test_projections import LEDGER, build

WAIT = 60.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.1)


class Stack:
    """Unique topics, a relay into them, and a worker config for one test."""

    def __init__(self, url: str, bootstrap: str) -> None:
        self.url, self.bootstrap = url, bootstrap
        self.events = TopicSpec(unique("events"), 6, {"cleanup.policy": "delete"})
        self.dlq = TopicSpec(unique("dlq"), 1, {"cleanup.policy": "delete"})
        self.balances = TopicSpec(unique("balances"), 6, {"cleanup.policy": "compact"})
        ensure_topics(bootstrap, [self.events, self.dlq, self.balances])
        self.relay = Relay(url, bootstrap, unique("relay"), topic=self.events)

    def config(self, group: str, **options: Any) -> WorkerConfig:
        return WorkerConfig(
            self.url,
            self.bootstrap,
            group_id=group,
            topic=self.events.name,
            dlq_topic=self.dlq.name,
            balances_topic=self.balances.name,
            **options,
        )

    def relay_all(self) -> int:
        total = 0
        while count := self.relay.run_once():
            total += count
        return total

    def publish(self, *messages: tuple[bytes, bytes]) -> None:
        producer = KafkaProducer(bootstrap_servers=self.bootstrap)
        try:
            for key, value in messages:
                producer.send(self.events.name, value=value, key=key)
            producer.flush(timeout=WAIT)
        finally:
            producer.close()


def equal_to_the_store(url: str) -> bool:
    return (
        queries.balances(url, LEDGER) == queries.compute_from_store(url, LEDGER, "balances")
        and queries.trust_reserve(url, LEDGER)
        == queries.compute_from_store(url, LEDGER, "trust-reserve")
        and queries.pnl(url, LEDGER) == queries.compute_from_store(url, LEDGER, "pnl")
    )


def hashes(url: str) -> dict[str, str]:
    return {name: queries.projection_hash(url, name) for name in ALL}


def more_fees(url: str, prefix: str, count: int) -> None:
    ledger = Ledger(url, LEDGER)
    try:
        results = ledger.submit(
            [
                {
                    "type": "charge_fee",
                    "key": f"{prefix}-{i}",
                    "client": "fund-x",
                    "sub_account": "alpha",
                    "asset": "USD",
                    "amount": "0.01",
                    "fee_type": "other",
                }
                for i in range(count)
            ]
        )
    finally:
        ledger.close()
    assert all(r.accepted for r in results), results


def forged(position: int, kind: str, data: dict[str, Any]) -> bytes:
    """An event body that decodes (the relay never sends such events: they are forged)."""
    return orjson.dumps(
        {
            "v": 1,
            "ledger": LEDGER,
            "position": position,
            "type": kind,
            "key": f"forged-{position}",
            "time": "2026-11-22T04:40:00+00:00",
            "prev": "0" * 64,
            "hash": "0" * 64,
            "data": data,
            "postings": [],
        }
    )


def latest_feed(bootstrap: str, topic: str) -> dict[tuple[str, ...], dict[str, Any]]:
    latest: dict[tuple[str, ...], dict[str, Any]] = {}
    for record in read_topic(bootstrap, topic, timeout=WAIT):
        latest[tuple(orjson.loads(record.key))] = orjson.loads(record.value)
    return latest


def stored_offsets(url: str, group: str) -> dict[int, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT partition, next_offset FROM projection_offsets WHERE group_id = %s", (group,)
        ).fetchall()
    return {int(p): int(o) for p, o in rows}


def test_worker_follows_the_log_dead_letters_poison_and_survives_redelivery_and_replay(
    fresh_db_url: str, kafka_bootstrap: str
) -> None:
    url = fresh_db_url
    build(url)
    stack = Stack(url, kafka_bootstrap)
    group = unique("group")
    config = stack.config(group, max_attempts=2, retry_backoff_s=0.01)
    try:
        with ThreadedWorker(config) as worker:
            # The log so far, then four poison messages, then more of the log: the worker
            # dead-letters the poison and carries on. Three are refused at once (they can
            # never be applied); the cancellation of a trade nobody booked fails only when
            # applied, so it is retried, isolated from its batch, then dead-lettered.
            relayed = stack.relay_all()
            stack.publish(
                (b"fund-x", b"\x00not json"),
                (b"fund-x", orjson.dumps({"v": 1, "type": "teleported", "ledger": LEDGER})),
                (LEDGER.encode(), forged(10**9, "mark_set", {"asset": "BTC", "quote": "USD",
                                                             "price": "sixty thousand"})),
                (b"fund-x", forged(10**9 + 1, "trade_cancelled", {"trade": "nobody-booked",
                                                                 "client": "fund-x"})),
            )  # fmt: skip
            more_fees(url, "after-poison", 5)
            relayed += stack.relay_all()
            wait_for(
                lambda: worker.stats.dead_lettered == 4 and equal_to_the_store(url),
                "the read models equal the store and 4 messages are dead letters",
            )
            dead = read_topic(kafka_bootstrap, stack.dlq.name, timeout=WAIT)
            reasons = sorted(dict(r.headers)[H_REASON].decode() for r in dead)
            assert reasons[0].startswith("apply failed: UnusableEventError: data.trade: no booked")
            assert reasons[1].startswith("body: not JSON")
            assert reasons[2] == "type: unknown event type 'teleported'"
            assert reasons[3].startswith("unusable event: price: 'sixty thousand'")
            sources = [dict(r.headers)[H_SOURCE].decode() for r in dead]
            assert all(source.startswith(f"{stack.events.name}/") for source in sources)
            assert sorted(r.value for r in dead)[0] == b"\x00not json"  # unchanged body

            # Every record is accounted for in PostgreSQL's offsets (applied or dead letter).
            records = read_topic(kafka_bootstrap, stack.events.name, timeout=WAIT)
            assert len(records) == relayed + 4
            ends: dict[int, int] = {}
            for record in records:
                ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
            wait_for(lambda: stored_offsets(url, group) == ends, "offsets stored in PostgreSQL")

            # The balance feed: the latest message per key is the balance now.
            feed = latest_feed(kafka_bootstrap, stack.balances.name)
            for balance in queries.balances(url, LEDGER):
                message = feed[(LEDGER, balance.client, balance.sub_account, balance.asset)]
                shown = balance.to_json()
                assert message["total"] == shown["total"]
                assert message["balances"] == {b: shown[b] for b in message["balances"]}

            # Redelivery of the whole log changes nothing.
            live = hashes(url)
            duplicates = worker.stats.duplicates
            stack.relay.republish(0)
            wait_for(
                lambda: worker.stats.duplicates >= duplicates + relayed,
                "every republished event seen as a duplicate",
            )
            assert hashes(url) == live

            # A replay while the worker runs: the new generation goes live with the same
            # contents, and the worker carries on into it.
            rebuilt = replay(url, ALL)
            assert rebuilt.swapped
            assert hashes(url) == live
            more_fees(url, "after-replay", 3)
            stack.relay_all()
            wait_for(lambda: equal_to_the_store(url), "the worker applies into the new generation")
            caught_up = hashes(url)
            assert caught_up != live

        # A replay from offset 0 of the topic gives what the live projection has.
        from_kafka = replay(
            url, ALL, source="kafka", bootstrap=kafka_bootstrap, topic=stack.events.name
        )
        assert from_kafka.skipped == 4  # what the worker dead-lettered, left out
        assert sorted(from_kafka.reasons) == reasons
        assert hashes(url) == caught_up
    finally:
        stack.relay.close()


def test_a_restarted_worker_resumes_from_the_offsets_in_postgresql(
    fresh_db_url: str, kafka_bootstrap: str
) -> None:
    url = fresh_db_url
    build(url, demo=False)
    stack = Stack(url, kafka_bootstrap)
    group = unique("group")
    try:
        first = stack.relay_all()
        with ThreadedWorker(stack.config(group)) as worker:
            wait_for(lambda: equal_to_the_store(url), "the first worker catches up")
            assert worker.stats.applied == first
        # A new group has no offsets committed in Kafka (it would start at the beginning);
        # given the first group's offsets in PostgreSQL, it must start where they point.
        successor = unique("group")
        with psycopg.connect(url) as conn:
            conn.execute(
                "INSERT INTO projection_offsets SELECT %s, topic, partition, next_offset"
                " FROM projection_offsets WHERE group_id = %s",
                (successor, group),
            )
        more_fees(url, "while-stopped", 4)
        second = stack.relay_all()
        with ThreadedWorker(stack.config(successor)) as worker:
            wait_for(lambda: equal_to_the_store(url), "the second worker catches up")
            assert worker.stats.applied == second
            assert worker.stats.duplicates == 0  # nothing was read twice
    finally:
        stack.relay.close()


def outbox_rows(url: str, group: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM projection_feed_outbox WHERE group_id = %s", (group,)
        ).fetchone()
    return int(row[0]) if row else 0


def test_feed_messages_a_stopped_worker_never_sent_are_sent_at_its_next_start(
    fresh_db_url: str, kafka_bootstrap: str
) -> None:
    url = fresh_db_url
    build(url)
    stack = Stack(url, kafka_bootstrap)
    group = unique("group")
    try:
        stack.relay_all()
        with ThreadedWorker(stack.config(group)) as worker:
            wait_for(lambda: equal_to_the_store(url), "the worker catches up")
            wait_for(lambda: worker.stats.feed_messages > 0, "the feed is published")
        # Every batch's feed row is gone once the broker acknowledged its messages.
        assert outbox_rows(url, group) == 0
        # A worker that died between its commit and the broker's acknowledgement leaves its
        # row behind (written here the way the worker writes it).
        key = [LEDGER, "ghost", "main", "USD"]
        value = {"v": 1, "ledger": LEDGER, "client": "ghost", "sub_account": "main",
                 "asset": "USD", "position": 10**6, "balances": {}, "total": "1.00"}  # fmt: skip
        row = [[orjson.dumps(key).decode(), orjson.dumps(value).decode(), LEDGER]]
        with psycopg.connect(url) as conn:
            conn.execute(
                "INSERT INTO projection_feed_outbox (group_id, messages) VALUES (%s, %s)",
                (group, orjson.dumps(row)),
            )
        with ThreadedWorker(stack.config(group)):
            wait_for(lambda: outbox_rows(url, group) == 0, "the left-over row is sent")
        feed = latest_feed(kafka_bootstrap, stack.balances.name)
        assert feed[tuple(key)] == value
    finally:
        stack.relay.close()
