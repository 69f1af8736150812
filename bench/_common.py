"""What every benchmark shares: a PostgreSQL server, fresh databases, statistics, funded
clients, a rich summary table and the ``--quick`` convention.

A benchmark is a program (``python -m bench.<name>``) that prints figures and ratios, never a
timed test. Each one measures our path and the raw limit of the machine in the same run, on
the same server, so that the ratio is meaningful on any machine. Its last stdout line is one
JSON object, for scripts that collect results.

The server is an embedded PostgreSQL in a temporary directory, started and stopped by the
benchmark, unless ``PRIMELEDGER_DATABASE_URL`` names an external one (its role must be allowed
to create databases: every run gets a database of its own). Likewise the Kafka-protocol broker
is an embedded Tansu unless ``PRIMELEDGER_KAFKA_BOOTSTRAP`` names one; every run gets topics
of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient
from kafka.errors import KafkaError
from rich.console import Console
from rich.table import Table

from ledger.application import Ledger
from ledger.money import format_units
from ledger.results import CommandResult
from primeledger.services import EmbeddedPostgres, TansuBroker, drop_database, ensure_database
from streams.contract import TopicSpec
from streams.topics import Topics

DATABASE_URL_ENV = "PRIMELEDGER_DATABASE_URL"
KAFKA_BOOTSTRAP_ENV = "PRIMELEDGER_KAFKA_BOOTSTRAP"
# Everything goes to stdout, the JSON line last. A fixed width keeps rich from squeezing
# the table when stdout is a pipe (it assumes 80 columns there).
console = Console(width=110)


class BenchmarkFailedError(RuntimeError):
    """A benchmark's correctness check failed: its figures must not be trusted."""


# --- The --quick convention ------------------------------------------------------------


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``--quick`` (one short run: a smoke test of the benchmark) and ``--runs N``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="one short run of each measurement (smoke test)"
    )
    parser.add_argument("--runs", type=int, default=None, help="runs per measurement")
    args = parser.parse_args(argv)
    if args.runs is not None and args.runs < 1:
        parser.error("--runs: must be at least 1")
    return args


# --- PostgreSQL ------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """URL of a server's maintenance database: external if configured, else embedded."""
    external = os.environ.get(DATABASE_URL_ENV)
    if external:
        yield external
        return
    with tempfile.TemporaryDirectory(prefix="primeledger-bench-") as home:
        server = EmbeddedPostgres(Path(home) / "postgres")
        url = server.start()
        try:
            yield url
        finally:
            server.stop()


@contextlib.contextmanager
def fresh_database(server_url: str, prefix: str) -> Iterator[str]:
    """A new empty database for one run, dropped afterwards so runs do not share caches."""
    name = f"bench_{prefix}_{uuid.uuid4().hex[:8]}"
    url = ensure_database(server_url, name)
    try:
        yield url
    finally:
        drop_database(server_url, name)


# --- Kafka ---------------------------------------------------------------------------


@contextlib.contextmanager
def kafka_broker() -> Iterator[str]:
    """Bootstrap of a Kafka-protocol broker: external if configured, else an embedded Tansu."""
    external = os.environ.get(KAFKA_BOOTSTRAP_ENV)
    if external:
        yield external
        return
    with tempfile.TemporaryDirectory(prefix="primeledger-bench-kafka-") as home:
        broker = TansuBroker(None, Path(home) / "tansu.log")
        broker.start()
        try:
            yield broker.bootstrap
        finally:
            broker.stop()


@contextlib.contextmanager
def fresh_topic(bootstrap: str, prefix: str, partitions: int = 6) -> Iterator[TopicSpec]:
    """A new topic for one run (runs never read each other's messages), deleted afterwards:
    Tansu keeps every message in memory."""
    spec = TopicSpec(
        f"bench.{prefix}.{uuid.uuid4().hex[:8]}",
        partitions,
        {"cleanup.policy": "delete", "retention.ms": "-1"},
    )
    with Topics(bootstrap) as topics:
        topics.ensure([spec])
    try:
        yield spec
    finally:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="primeledger-bench")
        try:
            admin.delete_topics([spec.name])
        except KafkaError as err:  # only the broker's memory is at stake
            note(f"[yellow]could not delete topic {spec.name}: {err!r}[/yellow]")
        finally:
            admin.close()


def kafka_crc32c() -> str:
    """Which CRC-32C kafka-python computes record batches with: "c" (the ``crc32c`` package)
    or "python" (its pure-Python fallback, several times slower per message)."""
    from kafka.record import util

    return "c" if getattr(util, "crc32c_c", None) is not None else "python"


def note_kafka_crc32c() -> str:
    found = kafka_crc32c()
    if found == "python":
        note(
            "[yellow]kafka-python computes CRC-32C in pure Python here (the crc32c package is "
            "not installed): every Kafka producer in this run is CPU-bound on it[/yellow]"
        )
    return found


# --- Statistics ------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of no values")
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100): always a value that was observed."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= pct <= 100:
        raise ValueError(f"pct: {pct} is not within 0..100")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


# --- Ledger set-up ---------------------------------------------------------------------


def require_accepted(results: Sequence[CommandResult], what: str) -> None:
    """Fail loudly if any command was rejected: a benchmark of rejections measures nothing."""
    rejected = [r for r in results if not r.accepted]
    if rejected:
        first = rejected[0]
        raise BenchmarkFailedError(
            f"{what}: {len(rejected)} of {len(results)} commands rejected, first "
            f"{first.key!r}: {first.code} ({first.message})"
        )


def client_id(index: int) -> str:
    return f"c{index:06d}"


def open_funded_clients(
    ledger: Ledger,
    count: int,
    *,
    sub_accounts: Sequence[str] = ("a", "b"),
    asset: str = "USD",
    amount: str = "1000000.00",
    chunk: int = 1000,
) -> list[str]:
    """Open ``count`` clients with these sub-accounts and deposit ``amount`` into each."""
    clients = [client_id(i) for i in range(count)]
    commands: list[dict[str, Any]] = []
    for client in clients:
        commands.append(
            {
                "type": "open_client",
                "key": f"open-{client}",
                "client": client,
                "name": f"Bench client {client}",
                "sub_accounts": list(sub_accounts),
            }
        )
        commands.extend(
            {
                "type": "deposit_fiat",
                "key": f"fund-{client}-{sub}",
                "client": client,
                "sub_account": sub,
                "asset": asset,
                "amount": amount,
                "bank_reference": f"fund-{client}-{sub}",
            }
            for sub in sub_accounts
        )
    for start in range(0, len(commands), chunk):
        require_accepted(ledger.submit(commands[start : start + chunk]), "funding clients")
    return clients


def transfer_commands(
    clients: Sequence[str],
    count: int,
    *,
    seed: int,
    prefix: str = "t",
    sub_accounts: tuple[str, str] = ("a", "b"),
    asset: str = "USD",
    max_units: int = 10_000,
) -> list[dict[str, Any]]:
    """``count`` transfers between the two sub-accounts of random clients, 0.01..100.00 each:
    far less than any funded balance, so every one is accepted."""
    rng = random.Random(seed)
    commands = []
    for index in range(count):
        source, target = rng.sample(sub_accounts, 2)
        commands.append(
            {
                "type": "transfer",
                "key": f"{prefix}-{seed}-{index}",
                "client": rng.choice(clients),
                "from_sub_account": source,
                "to_sub_account": target,
                "asset": asset,
                "amount": format_units(rng.randint(1, max_units), asset),
            }
        )
    return commands


def submit_all(
    ledger: Ledger, commands: Sequence[dict[str, Any]], *, chunk: int = 500, threads: int = 4
) -> None:
    """Submit in chunks from several threads (so the writer's group commit fills its batches);
    every command must be accepted."""
    chunks = iter([list(commands[i : i + chunk]) for i in range(0, len(commands), chunk)])
    lock = threading.Lock()
    errors: list[BaseException] = []

    def drive() -> None:
        while True:
            with lock:
                mine = next(chunks, None)
                if mine is None or errors:
                    return
            try:
                require_accepted(ledger.submit(mine), "submitting")
            except BaseException as exc:  # reported below, never swallowed
                with lock:
                    errors.append(exc)

    workers = [threading.Thread(target=drive, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise BenchmarkFailedError(f"submitting failed: {errors[0]!r}") from errors[0]


# --- Output ----------------------------------------------------------------------------


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title)
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    console.print(table)


def note(message: str) -> None:
    console.print(message)


def print_result(result: dict[str, Any]) -> None:
    """The benchmark's last stdout line: one JSON object."""
    print(json.dumps(result), flush=True)


def run_main(name: str, main: Callable[[], None]) -> None:
    """A benchmark's entry point: a failed check voids its figures, with a clear exit."""
    try:
        main()
    except BenchmarkFailedError as failure:
        raise SystemExit(f"bench.{name} FAILED, its figures are void: {failure}") from failure
