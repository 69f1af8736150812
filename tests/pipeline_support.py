"""Helpers for the end-to-end tests of the stream: topics of one test, a pipeline on them, a
paced workload, polling waits that say what they saw, and relay and worker processes to kill.

The session broker is shared and a broker-loss test restarts it (every topic is lost), so each
test streams through topics of its own (``StreamTopics``) with its own relay name and consumer
group. ``LocalPipeline`` is ``primeledger.pipeline.Pipeline`` on such topics.

For SIGKILL the relay and the worker must be processes; this module is their entry point::

    python -m tests.pipeline_support relay URL BOOTSTRAP NAME TOPIC PARTITIONS [--page-size N]
    python -m tests.pipeline_support worker URL BOOTSTRAP GROUP TOPIC DLQ BALANCES

Each prints ``READY`` once it works (the relay holds its lock, the worker has partitions), then
runs until SIGTERM (a clean stop) or SIGKILL (the point of the tests). The worker prints its
statistics as JSON lines, so that a failing test can show what it was doing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Final

import psycopg
from psycopg import sql

from ledger.application import Ledger
from ledger.results import CommandResult
from primeledger.pipeline import applied_through, ledger_head
from primeledger.scenario import SimClock, trading_day
from projections.catalog import ALL, canonical
from projections.generations import parse_multirange
from projections.worker import ThreadedWorker, WorkerConfig, WorkerStats
from streams.contract import TopicSpec
from streams.relay import Relay
from streams.relay_store import RelayLockedError
from streams.topics import Topics, ensure_topics

REPO: Final = Path(__file__).resolve().parents[1]
# Bound of every wait on the stream. Generous on purpose: a loaded 2-core machine joins a
# consumer group in seconds, not milliseconds; polls end as soon as the condition holds.
WAIT: Final = 120.0
POLL: Final = 0.2
READY: Final = "READY"
# A fixed trading day: the whole workload lies in the past and reads the same on every run.
DAY: Final = date(2026, 11, 20)

Command = dict[str, Any]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_for(
    condition: Callable[[], bool],
    what: str,
    state: Callable[[], object],
    timeout: float = WAIT,
) -> None:
    """Poll ``condition`` until it holds; on timeout fail with ``what`` and ``state()``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f} s waiting for {what}; state now: {state()}"
            )
        time.sleep(POLL)


# --- topics and the pipeline of one test --------------------------------------------------


@dataclass(frozen=True)
class StreamTopics:
    """The events, dead-letter and balance-feed topics of one test (unique names)."""

    events: TopicSpec
    dlq: TopicSpec
    balances: TopicSpec

    @classmethod
    def fresh(cls) -> StreamTopics:
        return cls(
            TopicSpec(unique("e2e.events"), 6, {"cleanup.policy": "delete"}),
            TopicSpec(unique("e2e.dlq"), 1, {"cleanup.policy": "delete"}),
            TopicSpec(unique("e2e.balances"), 6, {"cleanup.policy": "compact"}),
        )

    def ensure(self, bootstrap: str) -> StreamTopics:
        ensure_topics(bootstrap, [self.events, self.dlq, self.balances])
        return self

    def worker_config(
        self, url: str, bootstrap: str, group: str, *, feed: bool = True
    ) -> WorkerConfig:
        return WorkerConfig(
            url,
            bootstrap,
            group_id=group,
            topic=self.events.name,
            dlq_topic=self.dlq.name,
            balances_topic=self.balances.name if feed else None,
        )


class LocalPipeline:
    """``primeledger.pipeline.Pipeline`` on a test's own topics: relay thread + worker thread."""

    def __init__(
        self,
        url: str,
        bootstrap: str,
        topics: StreamTopics,
        *,
        feed: bool = True,
        relay_options: dict[str, Any] | None = None,
    ) -> None:
        self.url, self.bootstrap, self.topics = url, bootstrap, topics
        self.relay_name = unique("relay")
        self.group = unique("group")
        self.relay = Relay(
            url, bootstrap, self.relay_name, topic=topics.events, **(relay_options or {})
        )
        self.worker = ThreadedWorker(topics.worker_config(url, bootstrap, self.group, feed=feed))
        self._stop = threading.Event()
        self.relay_error: BaseException | None = None
        self._relay_thread = threading.Thread(target=self._relay, name="e2e-relay", daemon=True)

    def _relay(self) -> None:
        try:
            self.relay.run_forever(self._stop)
        except BaseException as exc:  # reported by state() and stop(), not lost in a thread
            self.relay_error = exc
            raise

    def start(self) -> LocalPipeline:
        self._relay_thread.start()
        self.worker.start(wait_assigned=WAIT)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._relay_thread.join(WAIT)
        try:
            self.worker.stop(WAIT)
        finally:
            self.relay.close()
        assert not self._relay_thread.is_alive(), "the relay thread did not stop"
        if self.relay_error is not None:
            raise self.relay_error

    def __enter__(self) -> LocalPipeline:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def state(self, ledger: str) -> dict[str, Any]:
        """What a timed-out wait prints: progress, relay, topic and worker."""
        return {
            **progress(self.url, ledger),
            "relay": relay_state(self.url, self.relay_name),
            "relay_alive": self._relay_thread.is_alive(),
            "relay_error": repr(self.relay_error),
            "topic": topic_state(self.bootstrap, self.topics.events.name),
            "worker_stats": asdict(self.worker.stats),
            "worker_error": repr(self.worker.error),
            "stored_offsets": stored_offsets(self.url, self.group),
        }

    def wait_caught_up(self, ledger: str, timeout: float = WAIT) -> int:
        """Wait until every read model applied ``ledger`` up to its head; return the head."""
        return wait_caught_up(self.url, ledger, lambda: self.state(ledger), timeout)


@contextmanager
def running_worker(config: WorkerConfig) -> Iterator[ThreadedWorker]:
    """A worker thread for the block, started once partitions are assigned, then stopped."""
    worker = ThreadedWorker(config).start(wait_assigned=WAIT)
    try:
        yield worker
    finally:
        worker.stop(WAIT)


# --- where things stand -------------------------------------------------------------------


def head_of(url: str, ledger: str) -> int:
    """The ledger's head position (0 before the first write created the tables)."""
    try:
        return ledger_head(url, ledger)
    except psycopg.errors.UndefinedTable:
        return 0


def applied(url: str, ledger: str) -> dict[str, int]:
    """Per read model, the position up to which it applied ``ledger`` without a gap."""
    try:
        return {p: applied_through(url, p, ledger) for p in ALL}
    except psycopg.errors.UndefinedTable:  # no worker has set the read models up yet
        return dict.fromkeys(ALL, 0)


def progress(url: str, ledger: str) -> dict[str, Any]:
    return {"head": head_of(url, ledger), "applied_through": applied(url, ledger)}


def caught_up(url: str, ledger: str) -> bool:
    target = head_of(url, ledger)
    return target > 0 and all(position >= target for position in applied(url, ledger).values())


def wait_caught_up(
    url: str, ledger: str, state: Callable[[], object], timeout: float = WAIT
) -> int:
    wait_for(
        lambda: caught_up(url, ledger), f"read models caught up with {ledger!r}", state, timeout
    )
    return ledger_head(url, ledger)


def applied_ranges(url: str, projection: str, ledger: str) -> list[tuple[int, int]]:
    """The positions of ``ledger`` the live generation applied, as half-open ranges."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT schema FROM projection_live WHERE projection = %s", (canonical(projection),)
        ).fetchone()
        assert row is not None, f"{projection}: no live generation"
        assert row[0] is not None, f"{projection}: no live generation"
        found = conn.execute(
            sql.SQL("SELECT positions::text FROM {}.applied WHERE ledger = %s").format(
                sql.Identifier(row[0])
            ),
            (ledger,),
        ).fetchone()
    return [] if found is None else parse_multirange(found[0]).ranges()


def relay_state(url: str, name: str) -> dict[str, Any]:
    """The relay's stored position against the newest event in the store."""
    with psycopg.connect(url) as conn:
        last = conn.execute("SELECT max(notification_id) FROM primeledger_events").fetchone()
        try:
            row = conn.execute(
                "SELECT notification_id, topic_id, offset_floors::text"
                " FROM primeledger_relay_positions WHERE name = %s",
                (name,),
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            row = None
    return {
        "last_notification_id": last[0] if last else None,
        "relay_position": None if row is None else {"id": row[0], "topic_id": row[1]},
        "offset_floors": None if row is None else row[2],
    }


def topic_state(bootstrap: str, name: str) -> dict[str, Any] | str:
    """The topic's id, partitions and reported end offsets, or why they are unknown."""
    try:
        with Topics(bootstrap, timeout=5.0) as topics:
            info = topics.describe(name)
            if info is None:
                return "missing"
            ends = topics.end_offsets(name, info.partitions)
    except Exception as exc:  # diagnostics must never hide the real failure
        return f"unknown ({exc!r})"
    return {"topic_id": info.topic_id, "partitions": info.partitions, "end_offsets": ends}


def stored_offsets(url: str, group: str) -> dict[str, int]:
    """Next offsets per ``topic/partition`` that PostgreSQL holds for ``group``."""
    try:
        with psycopg.connect(url) as conn:
            rows = conn.execute(
                "SELECT topic, partition, next_offset FROM projection_offsets WHERE group_id = %s",
                (group,),
            ).fetchall()
    except psycopg.errors.UndefinedTable:
        return {}
    return {f"{t}/{p}": int(o) for t, p, o in rows}


# --- the workload -------------------------------------------------------------------------


def scenario_batches(clock: SimClock, chunk: int = 12) -> Iterator[list[Command]]:
    """The demo's trading day (RFQs, fills, T+0/T+1 settlement, custody moves) in chunks."""
    for phase in trading_day(DAY):
        clock.at(phase.start)
        for i in range(0, len(phase.commands), chunk):
            yield phase.commands[i : i + chunk]


def filler_batches(clock: SimClock, seed: int, rounds: int) -> Iterator[list[Command]]:
    """Seeded business after the day: deposits, transfers, fees, marks, T+0 RFQ buys and sells.

    Every command is valid on top of the scenario day (tests assert that none is refused),
    so what reaches the stream is known: about 5 events per round.
    """
    rng = random.Random(seed)
    tag = f"load-{seed}"
    accounts = [
        ("aurora-capital", "macro"),
        ("harbour-lane", "main"),
        ("kowloon-quant", "stat-arb"),
    ]
    prices = {"BTC": 6_500_000, "ETH": 340_000, "SOL": 14_500}  # in cents
    for i in range(rounds):
        client, sub = rng.choice(accounts)
        batch: list[Command] = [
            {"type": "deposit_fiat", "key": f"{tag}-{i}-dep", "client": client,
             "sub_account": sub, "asset": "USD", "amount": f"{rng.randint(1, 99_999)}.25",
             "bank_reference": f"{tag}-{i}"},
            {"type": "transfer", "key": f"{tag}-{i}-xfer", "client": "aurora-capital",
             "from_sub_account": "macro", "to_sub_account": "basis", "asset": "USD",
             "amount": f"{rng.randint(1, 500)}.00"},
            {"type": "charge_fee", "key": f"{tag}-{i}-fee", "client": client, "sub_account": sub,
             "asset": "USD", "amount": f"0.{rng.randint(1, 99):02d}", "fee_type": "other"},
        ]  # fmt: skip
        if i % 3 == 0:
            asset = rng.choice(sorted(prices))
            batch.append(
                {"type": "set_mark", "key": f"{tag}-{i}-mark", "asset": asset, "quote": "USD",
                 "price": _dollars(_moved(rng, prices[asset], 300))}
            )  # fmt: skip
        if i % 4 == 0:
            side = "buy" if i % 8 == 0 else "sell"
            batch += _rfq(rng, f"{tag}-{i}", clock.now, prices, side)
        yield batch


def _rfq(
    rng: random.Random, rfq: str, now: datetime, prices: dict[str, int], side: str
) -> list[Command]:
    """A T+0 ETH trade through an RFQ with two quotes: booked and settled in one event.

    Buys are 0.1 to 0.9 ETH and sells 0.1 ETH, so a sell always closes part of a bought lot
    (realised P&L) and the hot wallet can always deliver.
    """
    valid = (now + timedelta(days=1)).isoformat()
    price = _moved(rng, prices["ETH"], 200)
    quantity = f"0.{rng.randint(1, 9)}" if side == "buy" else "0.1"
    return [
        {"type": "request_quote", "key": rfq, "rfq": rfq, "client": "aurora-capital",
         "sub_account": "macro", "side": side, "base": "ETH", "quote": "USD",
         "quantity": quantity, "settlement": "T+0"},
        {"type": "submit_quote", "key": f"{rfq}-q1", "rfq": rfq, "quote_id": f"{rfq}-q1",
         "provider": "lp-janus", "price": _dollars(price), "valid_until": valid},
        {"type": "submit_quote", "key": f"{rfq}-q2", "rfq": rfq, "quote_id": f"{rfq}-q2",
         "provider": "lp-pacific", "price": _dollars(price + 150), "valid_until": valid},
        {"type": "accept_quote", "key": f"{rfq}-accept", "rfq": rfq},
    ]  # fmt: skip


def _moved(rng: random.Random, cents: int, basis_points: int) -> int:
    """A price moved at random by up to ``basis_points`` (integers: no float near money)."""
    return cents * (10_000 + rng.randint(-basis_points, basis_points)) // 10_000


def _dollars(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def scenario_start() -> datetime:
    return trading_day(DAY)[0].start


def write_scenario(url: str, ledger: str) -> list[CommandResult]:
    """The whole trading day, at once (no stream needed)."""
    clock = SimClock(scenario_start())
    results: list[CommandResult] = []
    with Ledger(url, ledger, clock=clock) as writer:
        for batch in scenario_batches(clock):
            results += writer.submit(batch)
    return results


# The scenario day's one refusal on purpose: a fill beyond the shared book's unsettled cap.
INTENDED_REJECTIONS: Final = {f"demo-{DAY.isoformat()}-fill-4": "unsettled_limit_exceeded"}


def unintended_rejections(results: Sequence[CommandResult]) -> list[CommandResult]:
    """Rejections other than the one the scenario day provokes on purpose."""
    return [r for r in results if not r.accepted and INTENDED_REJECTIONS.get(r.key) != r.code]


def workload(clock: SimClock, seed: int, rounds: int, burst: int = 1) -> Iterator[list[Command]]:
    """The scenario day, then ``rounds`` of filler, ``burst`` rounds per batch.

    Lazy on purpose: each batch moves the simulated clock when it is taken, just before it
    is submitted, so that every command carries the time of its phase.
    """
    yield from scenario_batches(clock)
    batch: list[Command] = []
    for number, commands in enumerate(filler_batches(clock, seed, rounds), start=1):
        batch += commands
        if number % burst == 0 or number == rounds:
            yield batch
            batch = []


@dataclass
class Submitter:
    """A thread that keeps writing to the ledger: paced, so that events flow for a while.

    The pause between batches shapes the load (about 5 events per 60 ms); nothing waits on it.
    """

    url: str
    ledger: str
    batches: Iterator[list[Command]]
    clock: SimClock
    pause: float = 0.06
    results: list[CommandResult] = field(default_factory=list)
    error: BaseException | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Submitter:
        threading.Thread(target=self._run, name="e2e-submitter", daemon=True).start()
        return self

    def _run(self) -> None:
        try:
            with Ledger(self.url, self.ledger, clock=self.clock) as writer:
                for batch in self.batches:
                    if self.stop.is_set():
                        return
                    self.results += writer.submit(batch)
                    self.stop.wait(self.pause)
        except BaseException as exc:  # re-raised by finish() in the test's thread
            self.error = exc
        finally:
            self.done.set()

    def join(self, timeout: float = WAIT) -> list[CommandResult]:
        """Wait until every batch is written; re-raise what the thread died of."""
        wait_for(
            self.done.is_set,
            "the submitter to write its batches",
            lambda: f"{len(self.results)} results so far",
            timeout,
        )
        if self.error is not None:
            raise self.error
        return self.results

    def finish(self, timeout: float = WAIT) -> list[CommandResult]:
        """Stop after the batch in hand (see ``join``)."""
        self.stop.set()
        return self.join(timeout)


# --- processes to kill --------------------------------------------------------------------


class Child:
    """A relay or worker process of this module, its output in a log file."""

    def __init__(self, role: str, args: Sequence[str], log_dir: Path) -> None:
        self.role = role
        self.log_path = log_dir / f"{role}-{unique('run')}.log"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.pipeline_support", role, *args],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def ready(self) -> bool:
        return READY in self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout: float = WAIT) -> None:
        wait_for(
            lambda: self.ready() or not self.alive(),
            f"the {self.role} process (pid {self.pid}) to report {READY}",
            self.tail,
            timeout,
        )
        if not self.ready():
            raise AssertionError(
                f"the {self.role} process exited with {self.process.returncode}:\n{self.tail()}"
            )

    def kill(self) -> None:
        """SIGKILL: no clean-up, no flush, no goodbye to the broker or the database."""
        os.kill(self.pid, signal.SIGKILL)
        self.process.wait(WAIT)

    def stop(self) -> None:
        """SIGTERM and wait; SIGKILL if it does not stop in time (then fail loudly)."""
        if not self.alive():
            return
        self.process.terminate()
        try:
            self.process.wait(WAIT)
        except subprocess.TimeoutExpired as exc:
            self.kill()
            raise AssertionError(
                f"the {self.role} process ignored SIGTERM:\n{self.tail()}"
            ) from exc


# --- entry points -------------------------------------------------------------------------


def _stop_on_sigterm() -> threading.Event:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    return stop


def _say(out: IO[str], text: str) -> None:
    out.write(text + "\n")
    out.flush()


def run_relay(args: argparse.Namespace) -> int:
    stop = _stop_on_sigterm()
    topic = TopicSpec(args.topic, args.partitions, {})
    # The database may not have noticed yet that the killed predecessor's session is gone
    # (its advisory lock goes with it): retry, as a supervisor restarting the relay would.
    deadline = time.monotonic() + WAIT
    while True:
        try:
            relay = Relay(
                args.url, args.bootstrap, args.name, topic=topic, page_size=args.page_size
            )
            break
        except RelayLockedError:
            if time.monotonic() > deadline or stop.is_set():
                raise
            time.sleep(POLL)
    with relay:
        _say(sys.stdout, f"{READY} relay {args.name} at {relay.position}")
        relay.run_forever(stop)
    return 0


def run_worker(args: argparse.Namespace) -> int:
    stop = _stop_on_sigterm()
    config = WorkerConfig(
        args.url,
        args.bootstrap,
        group_id=args.group,
        topic=args.topic,
        dlq_topic=args.dlq,
        balances_topic=None if args.balances == "-" else args.balances,
    )
    worker = ThreadedWorker(config).start(wait_assigned=WAIT)
    _say(sys.stdout, f"{READY} worker {args.group}")
    try:
        last: WorkerStats | None = None
        while not stop.wait(1.0) and worker.error is None:
            if worker.stats != last:
                _say(sys.stdout, json.dumps(asdict(worker.stats)))
                last = WorkerStats(**asdict(worker.stats))
    finally:
        worker.stop(WAIT)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.pipeline_support")
    roles = parser.add_subparsers(dest="role", required=True)
    relay = roles.add_parser("relay", help="run a relay until SIGTERM")
    relay.add_argument("url")
    relay.add_argument("bootstrap")
    relay.add_argument("name")
    relay.add_argument("topic")
    relay.add_argument("partitions", type=int)
    relay.add_argument("--page-size", type=int, default=50)
    worker = roles.add_parser("worker", help="run a projection worker until SIGTERM")
    for name in ("url", "bootstrap", "group", "topic", "dlq", "balances"):
        worker.add_argument(name)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    return run_relay(args) if args.role == "relay" else run_worker(args)


if __name__ == "__main__":
    sys.exit(main())
