"""Write throughput: balanced, balance-checked, idempotent transfers through the real writer.

Three measurements in one run, on the same PostgreSQL server:

* **ours**: ``ledger.application.Ledger`` with several submitter threads, each submitting
  chunks of transfer commands (unique idempotency keys) between the two sub-accounts of many
  funded clients, so that the writer's group commit gets full batches.
* **raw_copy**, the raw limit: ``COPY`` of rows as large as our event bodies into a plain
  table (no index, no constraint), committed in batches as large as ours achieved. This is
  what PostgreSQL and psycopg can do at best on this machine, with no decision, no hashing
  and no idempotency record.
* **naive**: the textbook ``eventsourcing`` path, one ``Account`` aggregate saved per
  command (one transaction each), with the aggregates held in memory so that only the
  writes are compared.

Every run is checked (all accepted, each call answered once per command and in order,
zero-sum, expected final balances, retries answered from the idempotency record) and the
benchmark fails loudly if a check does not hold. The last stdout line is one JSON object
(see ``print_result``).

The harness keeps its own garbage out of the measurement: its prebuilt commands are frozen
out of the collector's full passes (``gc.freeze``), and each call's results are checked as
they come instead of all being kept. A server would hold neither; before this, scanning
them cost the writer ~10% (52.8k against 58.5k transfers/s, same host, same run).

Run: ``python -m bench.write`` (``--quick`` for one short run of each).
"""

from __future__ import annotations

import gc
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from psycopg.conninfo import conninfo_to_dict

from bench._common import (
    BenchmarkFailedError,
    client_id,
    fresh_database,
    median,
    note,
    open_funded_clients,
    parse_args,
    percentile,
    postgres_server,
    print_result,
    print_table,
    require_accepted,
    run_main,
)
from ledger.accounts import client_account
from ledger.application import Ledger
from ledger.money import format_units, parse_units
from ledger.results import CommandResult
from ledger.state import LedgerState
from ledger.store import EVENTS_TABLE

ASSET = "USD"
SUBS = ("a", "b")
FUNDING = "1000000.00"  # per sub-account: far more than any run can move out of it
MAX_UNITS = 10_000  # a transfer moves 0.01 .. 100.00 USD
SUBMITTERS = 4  # threads submitting concurrently, as independent API clients would
CHUNK = 500  # commands per submit call; SUBMITTERS x CHUNK fills the writer's batch_max
CLIENTS = 1_000
NAIVE_CLIENTS = 200
LEDGER = "bench"


@dataclass(frozen=True)
class Plan:
    """Which runs of which size; ``--quick`` shrinks it to one short run of each."""

    runs: int
    naive_runs: int
    transfers: int
    naive_transfers: int


FULL = Plan(runs=5, naive_runs=3, transfers=100_000, naive_transfers=3_000)
QUICK = Plan(runs=1, naive_runs=1, transfers=20_000, naive_transfers=2_000)


# --- The workload ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Move:
    client: str
    source: str
    target: str
    units: int


@dataclass
class Workload:
    """Transfers split among submitters, and the balances they must leave behind.

    Submitter ``t`` only moves money of clients ``i`` with ``i % SUBMITTERS == t``, so the
    naive path can hold each client's aggregate in one thread. The expected balances do not
    depend on the order: every transfer is far smaller than any balance, so all are accepted.
    """

    moves: list[list[Move]]
    expected: dict[tuple[str, str], int]

    @property
    def total(self) -> int:
        return sum(len(m) for m in self.moves)


def make_workload(clients: int, transfers: int, seed: int) -> Workload:
    rng = random.Random(seed)
    funding = parse_units(FUNDING, ASSET)
    expected = {(client_id(i), sub): funding for i in range(clients) for sub in SUBS}
    moves: list[list[Move]] = [[] for _ in range(SUBMITTERS)]
    for _ in range(transfers):
        index = rng.randrange(clients)
        source, target = rng.sample(SUBS, 2)
        move = Move(client_id(index), source, target, rng.randint(1, MAX_UNITS))
        moves[index % SUBMITTERS].append(move)
        expected[move.client, source] -= move.units
        expected[move.client, target] += move.units
    return Workload(moves, expected)


def transfer_command(move: Move, key: str) -> dict[str, Any]:
    return {
        "type": "transfer",
        "key": key,
        "client": move.client,
        "from_sub_account": move.source,
        "to_sub_account": move.target,
        "asset": ASSET,
        "amount": format_units(move.units, ASSET),
    }


# --- Submitter threads -----------------------------------------------------------------


@dataclass
class Submitter:
    """One thread's share: its calls and, per call, (latency in s, commands in the call)."""

    calls: list[list[dict[str, Any]]]
    latencies: list[tuple[float, int]] = field(default_factory=list)
    error: BaseException | None = None


def run_threads(work: Sequence[Submitter], call: Callable[[list[dict[str, Any]]], None]) -> float:
    """Run every submitter's calls in its own thread, all starting together; wall time."""
    start = threading.Barrier(len(work) + 1)

    def drive(submitter: Submitter) -> None:
        start.wait()
        try:
            for commands in submitter.calls:
                began = time.perf_counter()
                call(commands)
                submitter.latencies.append((time.perf_counter() - began, len(commands)))
        except BaseException as exc:  # reported by the main thread, never swallowed
            submitter.error = exc

    threads = [threading.Thread(target=drive, args=(s,), daemon=True) for s in work]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    for submitter in work:
        if submitter.error is not None:
            raise BenchmarkFailedError(f"a submitter failed: {submitter.error!r}")
    return elapsed


def per_command_latencies(work: Sequence[Submitter]) -> list[float]:
    """A command's latency is its call's: from the call's start until it returned."""
    return [seconds for s in work for seconds, count in s.latencies for _ in range(count)]


def transfer_commands(workload: Workload, prefix: str) -> list[list[dict[str, Any]]]:
    """Each submitter's transfer commands, with idempotency keys unique per ``prefix``."""
    return [
        [transfer_command(move, f"{prefix}-{t}-{i}") for i, move in enumerate(moves)]
        for t, moves in enumerate(workload.moves)
    ]


def chunks(items: Sequence[Any], size: int) -> list[list[Any]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


# --- Ours: the real writer -------------------------------------------------------------


@dataclass
class OursRun:
    rate: float
    latencies: list[float]
    commits: int
    body: bytes  # a real transfer event body, to size the raw rows

    @property
    def batch(self) -> float:
        return len(self.latencies) / self.commits


def run_ours(server_url: str, transfers: int, seed: int) -> OursRun:
    with fresh_database(server_url, "ours") as url:
        ledger = Ledger(url, LEDGER)
        try:
            open_funded_clients(ledger, CLIENTS, sub_accounts=SUBS, asset=ASSET, amount=FUNDING)
            setup_head = ledger.position
            workload = make_workload(CLIENTS, transfers, seed)
            work = [
                Submitter(chunks(group, CHUNK)) for group in transfer_commands(workload, f"t{seed}")
            ]
            first_call = work[0].calls[0]
            first_results: list[CommandResult] = []
            commits = count_commits(ledger)
            # The prebuilt commands stand for requests still on their way: a server would not
            # hold them all, so the collector's full passes are spared scanning them.
            gc.freeze()

            def submit(commands: list[dict[str, Any]]) -> None:
                # Checked as they come, as a client would; not kept for the collector to scan.
                answered = ledger.submit(commands)
                require_accepted(answered, "ours")
                if [r.key for r in answered] != [c["key"] for c in commands]:
                    raise BenchmarkFailedError("ours: not every command answered once, in order")
                if commands is first_call:
                    first_results.extend(answered)

            elapsed = run_threads(work, submit)
            check_ledger(ledger, url, workload, setup_head)
            check_retries(ledger, first_call, [first_results])
            body = ledger.store.event_body(ledger.position)
        finally:
            ledger.close()
    if body is None:
        raise BenchmarkFailedError("ours: the last event's body is missing from the store")
    return OursRun(transfers / elapsed, per_command_latencies(work), commits[0], body)


def count_commits(ledger: Ledger) -> list[int]:
    """Count the writer's batch commits from now on (benchmark instrumentation only)."""
    counter = [0]
    commit_batch = ledger.store.commit_batch

    def counting(*args: Any, **kwargs: Any) -> None:
        counter[0] += 1
        commit_batch(*args, **kwargs)

    ledger.store.commit_batch = counting  # type: ignore[method-assign]
    return counter


def check_ledger(ledger: Ledger, url: str, workload: Workload, setup_head: int) -> None:
    """Zero-sum per asset, every balance as planned, and one stored event per transfer."""

    def snapshot(state: LedgerState) -> tuple[int, dict[tuple[str, str], int]]:
        return state.position, dict(state.balances)

    position, balances = ledger.read(snapshot)
    sums: Counter[str] = Counter()
    for (_, asset_code), units in balances.items():
        sums[asset_code] += units
    if any(sums.values()):
        raise BenchmarkFailedError(f"ours: postings do not sum to zero: {dict(sums)}")
    for (client, sub), units in workload.expected.items():
        have = -balances.get((client_account(client, sub), ASSET), 0)
        if have != units:
            raise BenchmarkFailedError(f"ours: {client}/{sub} has {have} units, expected {units}")
    if position != setup_head + workload.total:
        raise BenchmarkFailedError(
            f"ours: head {position}, expected {setup_head} + {workload.total} transfers"
        )
    stored = count_rows(url, f"SELECT count(*) FROM {EVENTS_TABLE}")
    if stored != position:
        raise BenchmarkFailedError(f"ours: {stored} events stored, head says {position}")


def check_retries(
    ledger: Ledger, commands: list[dict[str, Any]], results: list[list[CommandResult]]
) -> None:
    """A retry of a whole call is answered from the idempotency records, nothing new."""
    first = {r.key: r for batch in results for r in batch}
    head = ledger.position
    for retry in ledger.submit(commands):
        original = first[retry.key]
        if not retry.replayed or retry != original:
            raise BenchmarkFailedError(f"ours: retry of {retry.key!r} gave {retry}, not {original}")
    if ledger.position != head:
        raise BenchmarkFailedError("ours: a retry wrote new events")


def count_rows(url: str, query: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(query).fetchone()
    if row is None:
        raise BenchmarkFailedError(f"no answer to {query!r}")
    return int(row[0])


# --- The raw limit: COPY into a plain table --------------------------------------------


def run_raw(server_url: str, rows: int, batch: int, body: bytes) -> float:
    """Rows per second of binary COPY of ``body``-sized rows, one commit per ``batch``."""
    statement = "COPY raw_events (seq, body) FROM STDIN (FORMAT BINARY)"
    with fresh_database(server_url, "raw") as url:
        with psycopg.connect(url) as conn:
            conn.execute("CREATE TABLE raw_events (seq bigint NOT NULL, body bytea NOT NULL)")
            conn.commit()
            began = time.perf_counter()
            for start in range(0, rows, batch):
                with conn.cursor() as curs, curs.copy(statement) as copy:
                    copy.set_types(["int8", "bytea"])
                    for seq in range(start, min(start + batch, rows)):
                        copy.write_row((seq, body))
                conn.commit()
            elapsed = time.perf_counter() - began
        stored = count_rows(url, "SELECT count(*) FROM raw_events")
    if stored != rows:
        raise BenchmarkFailedError(f"raw: {stored} rows stored, {rows} copied")
    return rows / elapsed


# --- The naive eventsourcing path ------------------------------------------------------


class InsufficientFundsError(Exception):
    pass


class Account(Aggregate):
    """A client's balances per sub-account, in the style of the library's bank example."""

    @event("Opened")
    def __init__(self, client: str, balances: dict[str, int]) -> None:
        self.client = client
        self.balances = dict(balances)

    def transfer(self, source: str, target: str, units: int) -> None:
        # Decide first, then trigger: the @event method body is re-run on replay.
        if self.balances.get(source, 0) < units:
            raise InsufficientFundsError(f"{self.client}/{source}: cannot move {units}")
        self._transferred(source, target, units)

    @event("Transferred")
    def _transferred(self, source: str, target: str, units: int) -> None:
        self.balances[source] -= units
        self.balances[target] = self.balances.get(target, 0) + units


class NaiveBank(Application[UUID]):
    pass


def naive_env(url: str) -> dict[str, str]:
    """The library's PostgreSQL configuration, taken from the database URL."""
    params = conninfo_to_dict(url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": str(params.get("dbname", "postgres")),
        "POSTGRES_HOST": str(params.get("host", "127.0.0.1")),
        "POSTGRES_PORT": str(params.get("port", 5432)),
        "POSTGRES_USER": str(params.get("user", "postgres")),
        "POSTGRES_PASSWORD": str(params.get("password", "")),
        "POSTGRES_SCHEMA": "public",
        "POSTGRES_POOL_SIZE": str(SUBMITTERS + 1),
        "CREATE_TABLE": "y",
    }


@dataclass
class NaiveRun:
    rate: float
    latencies: list[float]


def run_naive(server_url: str, transfers: int, seed: int) -> NaiveRun:
    workload = make_workload(NAIVE_CLIENTS, transfers, seed)
    funding = parse_units(FUNDING, ASSET)
    with fresh_database(server_url, "naive") as url:
        app = NaiveBank(env=naive_env(url))
        try:
            accounts = {
                client_id(i): Account(client_id(i), dict.fromkeys(SUBS, funding))
                for i in range(NAIVE_CLIENTS)
            }
            app.save(*accounts.values())
            # One call per command: each thread only touches its own clients' aggregates.
            work = [Submitter([[{"move": m}] for m in moves]) for moves in workload.moves]

            def save_one(commands: list[dict[str, Any]]) -> None:
                move: Move = commands[0]["move"]
                account = accounts[move.client]
                account.transfer(move.source, move.target, move.units)
                app.save(account)

            elapsed = run_threads(work, save_one)
            ids = {client: account.id for client, account in accounts.items()}
        finally:
            app.close()
        check_naive(url, workload, ids)
    return NaiveRun(transfers / elapsed, per_command_latencies(work))


def check_naive(url: str, workload: Workload, ids: dict[str, UUID]) -> None:
    """Reload every aggregate from the store (no cache) and compare with the plan."""
    app = NaiveBank(env={**naive_env(url), "CREATE_TABLE": "n"})
    try:
        moved: Counter[str] = Counter(m.client for ms in workload.moves for m in ms)
        total = 0
        for client, aggregate_id in ids.items():
            account: Account = app.repository.get(aggregate_id)
            for sub in SUBS:
                expected = workload.expected[client, sub]
                if account.balances[sub] != expected:
                    raise BenchmarkFailedError(
                        f"naive: {client}/{sub} has {account.balances[sub]}, expected {expected}"
                    )
                total += account.balances[sub]
            if account.version != 1 + moved[client]:
                raise BenchmarkFailedError(f"naive: {client} is at version {account.version}")
        if total != parse_units(FUNDING, ASSET) * len(SUBS) * len(ids):
            raise BenchmarkFailedError(f"naive: money was created or lost (total {total})")
    finally:
        app.close()


# --- Report ----------------------------------------------------------------------------


@dataclass
class Series:
    """One path's runs: rates (per second) and, where measured, per-command latencies."""

    label: str
    rates: list[float]
    latencies: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return median(self.rates)

    def row(self, ours: float) -> list[str]:
        p50, p99 = (
            (f"{percentile(self.latencies, p) * 1000:.1f}" for p in (50, 99))
            if self.latencies
            else ("-", "-")
        )
        return [
            self.label,
            str(len(self.rates)),
            f"{self.median:,.0f}",
            f"{min(self.rates):,.0f}",
            f"{max(self.rates):,.0f}",
            p50,
            p99,
            f"{ours / self.median:.2f}",
        ]


def measure(plan: Plan, runs: int, naive_runs: int) -> tuple[list[Series], int, int]:
    """Every run of every path on one server; also the batch size and the body size used."""
    ours: list[OursRun] = []
    raw: list[float] = []
    naive: list[NaiveRun] = []
    with postgres_server() as server_url:
        for run in range(runs):
            ours.append(run_ours(server_url, plan.transfers, seed=run))
            note(
                f"ours run {run + 1}/{runs}: {ours[-1].rate:,.0f} transfers/s, "
                f"{ours[-1].batch:,.0f} commands per commit"
            )
        # The raw limit gets the batching ours achieved, and rows as large as ours.
        batch, body = round(median([r.batch for r in ours])), ours[0].body
        for run in range(runs):
            raw.append(run_raw(server_url, plan.transfers, batch, body))
            note(f"raw run {run + 1}/{runs}: {raw[-1]:,.0f} rows/s")
        for run in range(naive_runs):
            naive.append(run_naive(server_url, plan.naive_transfers, seed=1000 + run))
            note(f"naive run {run + 1}/{naive_runs}: {naive[-1].rate:,.0f} transfers/s")
    return (
        [
            Series(
                "ours: Ledger.submit",
                [r.rate for r in ours],
                [s for r in ours for s in r.latencies],
            ),
            Series("raw COPY, plain table", raw),
            Series(
                "naive eventsourcing",
                [r.rate for r in naive],
                [s for r in naive for s in r.latencies],
            ),
        ],
        batch,
        len(body),
    )


def report(plan: Plan, series: list[Series], batch: int, body_size: int) -> None:
    ours, raw, naive = series
    print_table(
        f"Write path: {plan.transfers:,} transfers per run, {SUBMITTERS} submitters x "
        f"{CHUNK} commands per call, {body_size} B bodies, {batch:,} rows per commit "
        f"(naive: {plan.naive_transfers:,} transfers, one save each)",
        ["path", "runs", "median /s", "min /s", "max /s", "p50 ms", "p99 ms", "ours / this"],
        [s.row(ours.median) for s in series],
    )
    ratio, vs_naive = ours.median / raw.median, ours.median / naive.median
    note(
        f"ours / raw COPY = {ratio:.2f} (target >= 0.30); "
        f"ours / naive eventsourcing = {vs_naive:.1f}x (target >= 10x)"
    )
    print_result(
        {
            "bench": "write",
            "unit": "transfers/s",
            "ours": round(ours.median),
            "baseline": "raw_copy",
            "baseline_value": round(raw.median),
            "ratio": round(ratio, 3),
            "vs_naive": round(vs_naive, 1),
            "p50_ms": round(percentile(ours.latencies, 50) * 1000, 2),
            "p99_ms": round(percentile(ours.latencies, 99) * 1000, 2),
            "runs": len(ours.rates),
        }
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(
        "Write throughput of the ledger against raw COPY and naive eventsourcing.", argv
    )
    plan = QUICK if args.quick else FULL
    series, batch, body_size = measure(plan, args.runs or plan.runs, args.runs or plan.naive_runs)
    report(plan, series, batch, body_size)


if __name__ == "__main__":
    run_main("write", main)
