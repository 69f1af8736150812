"""What every benchmark shares: a PostgreSQL server, fresh databases, statistics, funded
clients, a rich summary table and the ``--quick`` convention.

A benchmark is a program (``python -m bench.<name>``) that prints figures and ratios, never a
timed test. Each one measures our path and the raw limit of the machine in the same run, on
the same server, so that the ratio is meaningful on any machine. Its last stdout line is one
JSON object, for scripts that collect results.

The server is an embedded PostgreSQL in a temporary directory, started and stopped by the
benchmark, unless ``PRIMELEDGER_DATABASE_URL`` names an external one (its role must be allowed
to create databases: every run gets a database of its own).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ledger.application import Ledger
from ledger.results import CommandResult
from primeledger.services import EmbeddedPostgres, drop_database, ensure_database

DATABASE_URL_ENV = "PRIMELEDGER_DATABASE_URL"
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
