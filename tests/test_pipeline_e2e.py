"""The whole pipeline, for real: commands -> PostgreSQL store -> relay -> Tansu -> projections.

Every test streams through topics of its own (the session broker is shared, and one test here
restarts it) and judges the read models against what the store says, computed without them:
``queries.compute_from_store`` (a fold of the public log), the write side's own state, and a
fresh replay's projection hash. Every wait polls a condition for up to two minutes and, on
timeout, prints what it waited for and where the relay, the topic and the worker stood.

The poison-message story (an undecodable message and an unknown event type go to the
dead-letter topic with a reason, processing continues, no state change) is told in
``tests/test_projection_worker.py`` and not repeated here.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from ledger.application import Ledger, load_state
from ledger.queries import client_balances
from ledger.store import LedgerStore
from primeledger.scenario import SimClock
from projections import queries
from projections.catalog import ALL
from projections.decode import Event
from projections.replay import replay
from streams.contract import H_NOTIFICATION, H_POSITION
from streams.relay import Relay, RelayBrokerError
from streams.topics import ensure_topics, read_topic
from tests.pipeline_support import (
    WAIT,
    Child,
    LocalPipeline,
    StreamTopics,
    Submitter,
    applied,
    applied_ranges,
    filler_batches,
    head_of,
    progress,
    relay_state,
    running_worker,
    scenario_batches,
    scenario_start,
    stored_offsets,
    topic_state,
    unintended_rejections,
    unique,
    wait_caught_up,
    wait_for,
    workload,
)

LEDGER = "e2e"


# --- what the read models must equal ------------------------------------------------------


def assert_equal_to_the_store(url: str, ledger: str = LEDGER) -> None:
    """Balances, P&L (in two currencies) and trust reserve equal a fold of the log."""
    assert queries.balances(url, ledger) == queries.compute_from_store(url, ledger, "balances")
    assert queries.trust_reserve(url, ledger) == queries.compute_from_store(
        url, ledger, "trust-reserve"
    )
    for currency in ("USD", "HKD"):
        assert queries.pnl(url, ledger, currency=currency) == queries.compute_from_store(
            url, ledger, "pnl", currency=currency
        )


def write_side_balances(url: str, ledger: str, position: int | None = None) -> dict[Any, int]:
    """The writer's own balances (its state rebuilt from the log, verified), as units."""
    store = LedgerStore(url, ledger, create=False)
    try:
        state = load_state(store, position)
    finally:
        store.close()
    return {(r.client, r.sub_account, r.asset, r.bucket): r.units for r in client_balances(state)}


def projected_balances(url: str, ledger: str, position: int | None = None) -> dict[Any, int]:
    return {
        (b.client, b.sub_account, b.asset, bucket): units
        for b in queries.balances(url, ledger, as_of_position=position)
        for bucket, units in b.units.items()
        if units
    }


def hashes(url: str, schemas: dict[str, str] | None = None) -> dict[str, str]:
    return {
        name: queries.projection_hash(url, name, None if schemas is None else schemas[name])
        for name in ALL
    }


def assert_every_position_applied_once(url: str, head: int, ledger: str = LEDGER) -> None:
    """Every position 1..head applied, by every read model, with a matching fold (a twice
    applied event would make the sums differ: tracking is per position, not per offset)."""
    for name in ALL:
        assert applied_ranges(url, name, ledger) == [(1, head + 1)], name
    assert_equal_to_the_store(url, ledger)


def notification_ids_on(bootstrap: str, topic: str) -> list[int]:
    records = read_topic(bootstrap, topic, timeout=WAIT)
    return [int(dict(r.headers)[H_NOTIFICATION]) for r in records]


def stored_notification_ids(url: str) -> set[int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT notification_id FROM primeledger_events").fetchall()
    return {int(r[0]) for r in rows}


def delete_topics(bootstrap: str, topics: StreamTopics) -> None:
    """Clean up; a topic left behind is harmless, so this never hides a test's own failure."""
    with contextlib.suppress(KafkaError):
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, bootstrap_timeout_ms=10_000)
        try:
            names = [topics.events.name, topics.dlq.name, topics.balances.name]
            admin.delete_topics(names, raise_errors=False)
        finally:
            admin.close()


# --- 1 and 5: the trading day end to end; replays and the past ----------------------------


def test_a_trading_day_flows_from_commands_to_read_models_that_equal_the_store(
    fresh_db_url: str, kafka_bootstrap: str
) -> None:
    """The demo's trading day through relay and worker while it is written; the read models
    then equal the fold of the store and the writer's own state, replays reproduce them hash
    for hash, and their answers about the past equal the log folded up to then."""
    url = fresh_db_url
    topics = StreamTopics.fresh().ensure(kafka_bootstrap)
    try:
        with LocalPipeline(url, kafka_bootstrap, topics) as pipeline:
            # The day (and a little trading after it, which realises P&L) is written while
            # relay and worker run: events flow as they commit.
            clock = SimClock(scenario_start())
            batches = workload(clock, seed=5, rounds=16)
            submitter = Submitter(url, LEDGER, batches, clock, pause=0.0)
            results = submitter.start().join()
            head = pipeline.wait_caught_up(LEDGER)
            assert pipeline.worker.stats.dead_lettered == 0

        assert unintended_rejections(results) == []
        kinds = {t for r in results for t in r.event_types}
        # The workload is the one asked for: RFQ trades, order fills (booked as trades),
        # settlements (gross, net, failed), custody moves.
        wanted = {"rfq_requested", "order_placed", "trade_booked", "trade_settled"}
        wanted |= {"trades_net_settled", "settlement_failed", "custody_moved"}
        assert wanted <= kinds, kinds
        assert head == sum(len(r.positions) for r in results)
        assert_every_position_applied_once(url, head)
        assert projected_balances(url, LEDGER) == write_side_balances(url, LEDGER)
        report = queries.pnl(url, LEDGER)
        assert any(line.realised for line in report.lines)  # trades closed lots: real P&L
        assert queries.trust_reserve(url, LEDGER)  # custody and trust banks hold something
        assert read_topic(kafka_bootstrap, topics.dlq.name, timeout=WAIT) == []

        # Replays are deterministic and equal what the stream built, whatever the page size.
        live = hashes(url)
        first = replay(url, ALL, swap_in=False)
        first_hashes = hashes(url, first.schemas)
        second = replay(url, ALL, swap_in=False, page_size=41)
        assert hashes(url, second.schemas) == first_hashes == live
        assert first.events == second.events == head

        # The past: balances as of positions and times equal the log folded up to then, and
        # the write side's state at that position; P&L and trust reserve as of a time too.
        events = list(queries.store_events(url, LEDGER))
        rng = random.Random(20261120)
        for event in sorted(rng.sample(events, 6), key=lambda e: e.position):
            assert_balances_as_of(url, event)
        middle = events[len(events) // 2].time
        assert queries.pnl(url, LEDGER, as_of=middle) == queries.compute_from_store(
            url, LEDGER, "pnl", as_of=middle
        )
        assert queries.pnl(url, LEDGER, as_of=middle) != queries.pnl(url, LEDGER)
        assert queries.trust_reserve(url, LEDGER, as_of=middle) == queries.compute_from_store(
            url, LEDGER, "trust-reserve", as_of=middle
        )
        assert hashes(url) == live  # the past was built beside the live generations
    finally:
        delete_topics(kafka_bootstrap, topics)


def assert_balances_as_of(url: str, event: Event) -> None:
    position, when = event.position, datetime.fromisoformat(event.time)
    at_position = queries.balances(url, LEDGER, as_of_position=position)
    assert at_position == queries.compute_from_store(
        url, LEDGER, "balances", as_of_position=position
    ), position
    assert projected_balances(url, LEDGER, position) == write_side_balances(url, LEDGER, position)
    # Events of one moment share their time: as of that moment is as of its last event.
    assert queries.balances(url, LEDGER, as_of=when) == queries.compute_from_store(
        url, LEDGER, "balances", as_of=when
    ), when


# --- 2: SIGKILL the relay and the worker while events flow --------------------------------


KILL_SEED = 4242
# Cheap relay restarts (under a second), dear worker restarts (the group waits out the dead
# member's 6 s session first): five relay kills, two worker kills.
KILLS = ("relay", "relay", "relay", "relay", "worker", "both")


def test_relay_and_worker_killed_at_random_moments_lose_and_double_nothing(
    fresh_db_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Relay and worker run as processes and are SIGKILLed at seeded moments while a writer
    keeps committing; each is restarted at once. The relay restarts from its stored position
    (republishing a page whose position it had not stored), the worker from the offsets in
    PostgreSQL (re-reading a batch it had not committed). Nothing may be lost or doubled."""
    url = fresh_db_url
    rng = random.Random(KILL_SEED)
    topics = StreamTopics.fresh().ensure(kafka_bootstrap)
    relay_name, group = unique("relay"), unique("group")
    relay_args = [url, kafka_bootstrap, relay_name, topics.events.name, "6", "--page-size", "5"]
    worker_args = [url, kafka_bootstrap, group, *(t.name for t in (topics.events, topics.dlq))]
    worker_args.append(topics.balances.name)
    children: dict[str, Child] = {}

    def start(role: str) -> Child:
        children[role] = Child(role, relay_args if role == "relay" else worker_args, tmp_path)
        return children[role]

    def state() -> dict[str, Any]:
        return {
            **progress(url, LEDGER),
            "relay": relay_state(url, relay_name),
            "topic": topic_state(kafka_bootstrap, topics.events.name),
            "stored_offsets": stored_offsets(url, group),
            **{f"{r}_alive": c.alive() for r, c in children.items()},
            **{f"{r}_log": c.tail() for r, c in children.items()},
        }

    clock = SimClock(scenario_start())
    # Bursts of about 150 events: the relay (5 events a page) and the worker are busy with
    # each burst for a while, and the kills below land in that while. The writer goes on
    # until it is told to stop, however long a slow machine takes over the kills.
    batches = workload(clock, seed=KILL_SEED, rounds=10**7, burst=30)
    submitter = Submitter(url, LEDGER, batches, clock, pause=0.3)
    try:
        for role in ("relay", "worker"):
            start(role).wait_ready()
        submitter.start()
        kills = list(KILLS)
        rng.shuffle(kills)
        for target in kills:
            # The next burst commits, then a seeded instant passes: the kill lands while the
            # relay publishes the burst page by page and the worker applies it.
            grown = head_of(url, LEDGER) + 1
            wait_for(
                lambda grown=grown: head_of(url, LEDGER) >= grown,  # type: ignore[misc]
                f"the next burst of events before killing {target}",
                state,
            )
            time.sleep(rng.uniform(0.0, 0.3))  # the kill's instant, not a synchronisation
            victims = ["relay", "worker"] if target == "both" else [target]
            for role in victims:
                assert children[role].alive(), state()
                children[role].kill()
            for role in victims:
                start(role).wait_ready()
        assert unintended_rejections(submitter.finish()) == []
        head = wait_caught_up(url, LEDGER, state)
        assert head > 500, "too little flowed to judge crashes"  # about 5 events per batch

        assert_every_position_applied_once(url, head)
        # The topic holds every stored event at least once (the relay lost none).
        on_topic = notification_ids_on(kafka_bootstrap, topics.events.name)
        assert set(on_topic) == stored_notification_ids(url)
        # What the kills did (shown with -s): pages sent twice, events read twice.
        print(
            f"crash test: {head} events, kills {kills}: {len(on_topic) - len(set(on_topic))}"
            f" messages on the topic twice, {reread(tmp_path)} events read again by workers"
        )
        rebuilt = replay(url, ALL, swap_in=False)
        assert rebuilt.events == head
        assert hashes(url) == hashes(url, rebuilt.schemas)
    finally:
        submitter.stop.set()
        for child in children.values():
            child.stop()
        delete_topics(kafka_bootstrap, topics)


def reread(log_dir: Path) -> int:
    """Duplicates the worker processes reported last before they were killed or stopped."""
    total = 0
    for log in log_dir.glob("worker-*.log"):
        stats = [line for line in log.read_text().splitlines() if line.startswith("{")]
        total += json.loads(stats[-1])["duplicates"] if stats else 0
    return total


# --- 3: the broker loses every topic mid-run ----------------------------------------------


def test_broker_restart_mid_run_republishes_and_the_read_models_equal_a_rebuild(
    fresh_db_url: str, kafka_bootstrap: str, broker: Any
) -> None:
    """Tansu keeps topics in memory: a restart empties the broker while events flow. The
    relay notices the new topic id, recreates the topic, republishes the store from the
    start, and the worker (its group forgotten by the broker) rejoins and dedupes."""
    url = fresh_db_url
    topics = StreamTopics.fresh().ensure(kafka_bootstrap)
    clock = SimClock(scenario_start())
    submitter = Submitter(url, LEDGER, workload(clock, seed=77, rounds=150), clock)
    # No balance feed: after the restart the worker's producer would auto-create the feed
    # topic (not in the stream contract, so nobody recreates it) - not what is tested here.
    pipeline = LocalPipeline(url, kafka_bootstrap, topics, feed=False)
    try:
        pipeline.start()
        submitter.start()
        wait_for(
            lambda: min(applied(url, LEDGER).values()) >= 150,
            "the pipeline to apply 150 events before the broker restart",
            lambda: pipeline.state(LEDGER),
        )
        before = topic_state(kafka_bootstrap, topics.events.name)
        broker.restart()  # every topic and group is gone
        results = submitter.join()  # the writer never noticed
        head = pipeline.wait_caught_up(LEDGER)
        after = topic_state(kafka_bootstrap, topics.events.name)
        assert isinstance(before, dict), before
        assert isinstance(after, dict), after
        assert before["topic_id"] != after["topic_id"]
        assert after["partitions"] == topics.events.partitions  # the contract's, not auto
        assert set(notification_ids_on(kafka_bootstrap, topics.events.name)) == (
            stored_notification_ids(url)
        )
    finally:
        submitter.stop.set()
        pipeline.stop()
        ensure_topics(kafka_bootstrap)  # the contract's topics, for the tests after us
        delete_topics(kafka_bootstrap, topics)
    assert unintended_rejections(results) == []
    assert_every_position_applied_once(url, head)
    rebuilt = replay(url, ALL, swap_in=False)
    assert hashes(url) == hashes(url, rebuilt.schemas)


def drain(relay: Relay, state: Callable[[], object]) -> None:
    """Publish until the relay is caught up, retrying the pages a restarted broker refuses."""
    done = False

    def caught_up() -> bool:
        nonlocal done
        try:
            done = relay.run_once() == 0
        except RelayBrokerError:
            done = False  # the relay checks the broker and sends the page again next time
        return done

    wait_for(caught_up, "the relay to publish everything in the store", state)


def partition_ends(bootstrap: str, topic: str) -> dict[int, int]:
    """Per partition, the offset after its last record (read, not ListOffsets: see topics)."""
    ends: dict[int, int] = {}
    for record in read_topic(bootstrap, topic, timeout=WAIT):
        ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
    return ends


def first_unapplied_offsets(url: str, bootstrap: str, topic: str) -> dict[int, int]:
    """Per partition, the offset of the first record whose event the read models lack."""
    done = applied_ranges(url, "balances", LEDGER)
    first: dict[int, int] = {}
    for record in read_topic(bootstrap, topic, timeout=WAIT):
        position = int(dict(record.headers)[H_POSITION])
        if not any(lo <= position < hi for lo, hi in done):
            first.setdefault(record.partition, record.offset)
    return first


def test_a_lost_topic_that_held_duplicates_does_not_make_the_worker_skip_events(
    fresh_db_url: str, kafka_bootstrap: str, broker: Any
) -> None:
    """At-least-once delivery leaves duplicates on the topic (a relay killed between the
    broker's ack and storing its position sends the page again). If the broker then loses
    the topic, the relay republishes each event once: every later event sits at a lower
    offset than before. The worker's offsets in PostgreSQL still count the duplicates; a
    worker that seeks to them skips events it never applied, and never catches up."""
    url = fresh_db_url
    topics = StreamTopics.fresh().ensure(kafka_bootstrap)
    config = topics.worker_config(url, kafka_bootstrap, unique("group"), feed=False)
    relay = Relay(url, kafka_bootstrap, unique("relay"), topic=topics.events, check_interval=0.0)
    clock = SimClock(scenario_start())
    with Ledger(url, LEDGER, clock=clock) as writer:
        results = [r for batch in scenario_batches(clock) for r in writer.submit(batch)]

    def state() -> dict[str, Any]:
        return {
            **progress(url, LEDGER),
            "relay": relay_state(url, relay.name),
            "topic": topic_state(kafka_bootstrap, topics.events.name),
            "stored_offsets": stored_offsets(url, config.group_id),
        }

    try:
        drain(relay, state)
        # The last few events again, as after a relay killed between ack and position.
        again = relay.republish(from_notification_id=relay.position - 5)
        with running_worker(config) as worker:
            wait_caught_up(url, LEDGER, state)
            ends = partition_ends(kafka_bootstrap, topics.events.name)
            wait_for(
                lambda: (
                    stored_offsets(url, config.group_id)
                    == {f"{topics.events.name}/{p}": end for p, end in ends.items()}
                ),
                "the worker to store the offsets after the duplicates",
                state,
            )
            assert worker.stats.duplicates == again > 0
        broker.restart()  # the topic with the duplicates is gone
        with Ledger(url, LEDGER, clock=clock) as writer:  # business goes on
            results += [
                r
                for batch in filler_batches(clock, seed=11, rounds=40)
                for r in writer.submit(batch)
            ]
        drain(relay, state)  # a new topic: every event once, then the new ones
        assert unintended_rejections(results) == []
        first = first_unapplied_offsets(url, kafka_bootstrap, topics.events.name)
        with running_worker(config) as worker:
            starts = {tp.partition: offset for tp, offset in worker.worker.floors.items()}
            skipped = {p: (first[p], starts[p]) for p in first if starts.get(p, 0) > first[p]}
            assert skipped == {}, (
                "per partition (first offset not applied, offset the worker starts at): the "
                f"worker skips what lies between; {state()}"
            )
            head = wait_caught_up(url, LEDGER, state)
        assert_every_position_applied_once(url, head)
    finally:
        relay.close()
        ensure_topics(kafka_bootstrap)  # the contract's topics, for the tests after us
        delete_topics(kafka_bootstrap, topics)
