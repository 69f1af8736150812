"""Rebuild speed: balances, P&L and the trust reserve from the log, against ledger-cli.

Set-up (once): ``events`` events written through the real ``ledger.application.Ledger``:
funded clients, then rounds of mostly transfers with fiat deposits, fees, marks and order-book
trades (an order placed and filled: P&L lots, fees, custody legs). The journal is exported with
``projections.export_ledger`` to a ledger-cli file (one transaction per event with postings).

Two measurements per run, on the same log:

* **ours**: ``projections.replay.replay`` of ``client_balances``, ``pnl`` and ``trust_reserve``
  from the store into new generations, swapped in, as an operator's rebuild does. It runs in a
  process of its own (spawned), so that its peak memory, sampled every ``RSS_EVERY`` seconds
  over that process and the aggregating processes it starts, is the rebuild's alone. Its
  figure is events read per second, by the replay's own clock.
* **ledger-cli**: ``ledger -f JOURNAL balance`` on the exported journal (Debian package
  ``ledger``; installed with apt-get if missing and possible, else this comparison is skipped
  with a message). Its figure is transactions per second of wall time, its peak memory
  sampled the same way.

Checks: the replay applied every event and skipped none; the rebuilt balances equal the
ledger's own state for every client; ledger-cli exits 0 (it refuses a journal whose
transactions do not balance). The last stdout line is one JSON object.

Run: ``python -m bench.replay`` (``--quick`` for a short run on 100k events).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg

from bench._common import (
    BenchmarkFailedError,
    fresh_database,
    median,
    note,
    open_funded_clients,
    parse_args,
    postgres_server,
    print_result,
    print_table,
    run_main,
    submit_all,
)
from ledger.accounts import client_account
from ledger.application import Ledger
from ledger.money import format_units
from projections import decode
from projections.catalog import ALL
from projections.export_ledger import export
from projections.queries import balances
from projections.replay import replay

LEDGER = "bench"
CLIENTS = 1_000
SUBS = ("a", "b")
ROUND = 10_000  # commands generated and submitted at a time (memory stays small)
RSS_EVERY = 0.02  # seconds between two memory samples
TARGET_RATIO = 2.0
TARGET_RSS_MIB = 512


@dataclass(frozen=True)
class Plan:
    runs: int
    events: int


FULL = Plan(runs=3, events=1_000_000)
QUICK = Plan(runs=1, events=100_000)


# --- The log ---------------------------------------------------------------------------


class Workload:
    """Commands of a prime-brokerage day, mostly transfers, generated round by round.

    Per 1,000 commands: about 900 transfers, 40 fiat deposits, 20 fees, 20 orders and their
    fills (buys of SOL; sells of part of what a sub-account bought) and a mark now and then.
    Every command is accepted: amounts are far smaller than the funding. A round is submitted
    from several threads, in chunks that may commit in any order, so nothing in a round
    depends on another command of it: an order's fill comes in the next round, and a sell
    only sells what fills of earlier rounds bought.
    """

    def __init__(self, clients: list[str], seed: int) -> None:
        self.clients = clients
        self.rng = random.Random(seed)
        self.count = 0
        self.holdings: dict[tuple[str, str], int] = {}  # SOL bought in earlier rounds, unsold
        self.fills: list[dict[str, Any]] = []  # fills of this round's orders: next round
        self.bought: list[tuple[tuple[str, str], int]] = []  # what those fills will buy

    def next_round(self, size: int) -> list[dict[str, Any]]:
        commands, self.fills = self.fills, []
        for owner, quantity in self.bought:
            self.holdings[owner] = self.holdings.get(owner, 0) + quantity
        self.bought = []
        while len(commands) < size:
            self.count += 1
            roll = self.rng.random()
            client, sub = self.rng.choice(self.clients), self.rng.choice(SUBS)
            if roll < 0.02:
                commands.append(self.order(client, sub))
            elif roll < 0.06:
                commands.append(self.deposit(client, sub))
            elif roll < 0.08:
                commands.append(self.fee(client, sub))
            elif roll < 0.081:
                commands.append(self.mark())
            else:
                commands.append(self.transfer(client, sub))
        return commands

    def last_round(self) -> list[dict[str, Any]]:
        """The fills still owed to the last round's orders."""
        commands, self.fills = self.fills, []
        return commands

    def key(self, kind: str) -> str:
        return f"{kind}-{self.count}"

    def transfer(self, client: str, sub: str) -> dict[str, Any]:
        return {
            "type": "transfer",
            "key": self.key("t"),
            "client": client,
            "from_sub_account": sub,
            "to_sub_account": "b" if sub == "a" else "a",
            "asset": "USD",
            "amount": format_units(self.rng.randint(1, 10_000), "USD"),
        }

    def deposit(self, client: str, sub: str) -> dict[str, Any]:
        return {
            "type": "deposit_fiat",
            "key": self.key("d"),
            "client": client,
            "sub_account": sub,
            "asset": "USD",
            "amount": format_units(self.rng.randint(10_000, 1_000_000), "USD"),
            "bank_reference": self.key("wire"),
        }

    def fee(self, client: str, sub: str) -> dict[str, Any]:
        return {
            "type": "charge_fee",
            "key": self.key("f"),
            "client": client,
            "sub_account": sub,
            "asset": "USD",
            "amount": format_units(self.rng.randint(100, 2_000), "USD"),
            "fee_type": "custody",
        }

    def mark(self) -> dict[str, Any]:
        return {
            "type": "set_mark",
            "key": self.key("m"),
            "asset": "SOL",
            "quote": "USD",
            "price": format_units(self.rng.randint(14_000, 15_000), "USD"),
        }

    def order(self, client: str, sub: str) -> dict[str, Any]:
        """A buy, or a sell of at most half of what is held; its full fill is queued."""
        held = self.holdings.get((client, sub), 0)
        sell = held >= 2 and self.rng.random() < 0.4
        quantity = self.rng.randint(1, held // 2) if sell else self.rng.randint(1, 20)
        if sell:
            self.holdings[(client, sub)] = held - quantity
        else:
            self.bought.append(((client, sub), quantity))
        order = self.key("o")
        self.fills.append(
            {
                "type": "record_fill",
                "key": f"fill-{order}",
                "order": order,
                "fill": f"fill-{order}",
                "price": format_units(self.rng.randint(14_000, 15_000), "USD"),
                "quantity": str(quantity),
                "liquidity": "taker",
                "counterparty": "local-book",
            }
        )
        return {
            "type": "place_order",
            "key": order,
            "order": order,
            "client": client,
            "sub_account": sub,
            "side": "sell" if sell else "buy",
            "base": "SOL",
            "quote": "USD",
            "quantity": str(quantity),
            "limit_price": "130.00" if sell else "155.00",
        }


def write_log(url: str, events: int) -> tuple[int, dict[tuple[str, str], int]]:
    """Write at least ``events`` events; return the head and the balances (account, asset)."""
    ledger = Ledger(url, LEDGER)
    try:
        clients = open_funded_clients(ledger, CLIENTS, sub_accounts=SUBS)
        workload = Workload(clients, seed=7)
        while (position := ledger.position) < events:
            submit_all(ledger, workload.next_round(min(ROUND, events - position)))
        submit_all(ledger, workload.last_round())
        return ledger.read(lambda state: (state.position, dict(state.balances)))
    finally:
        ledger.close()


def settle(url: str) -> None:
    """Let PostgreSQL finish what a million fresh inserts leave it to do, before measuring.

    Otherwise the autovacuum of the new log and the spread checkpoint of its pages run during
    whichever measured run they happen to fall in (seen: the second of three, both sides).
    """
    began = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")
        conn.execute("CHECKPOINT")
    note(f"set-up: log vacuumed and checkpointed in {time.perf_counter() - began:.1f} s")


# --- Peak memory -----------------------------------------------------------------------


class PeakRss(threading.Thread):
    """Samples the resident memory of a process and all its descendants until it ends."""

    def __init__(self, pid: int) -> None:
        super().__init__(name="peak-rss", daemon=True)
        self.root = psutil.Process(pid)
        self.peak = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            total = 0
            try:
                tree = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for process in tree:
                try:
                    total += process.memory_info().rss
                except psutil.NoSuchProcess:
                    continue  # ended between the listing and the look
            self.peak = max(self.peak, total)
            self.stopped.wait(RSS_EVERY)

    def finish(self) -> float:
        self.stopped.set()
        self.join()
        return self.peak / 2**20


# --- Ours: the replay, in a process of its own -----------------------------------------


def replay_main(url: str, out: Any) -> None:
    """Spawned: rebuild every read model from the store; report the result on ``out``."""
    result = replay(url, list(ALL))
    out.put(
        {
            "read": result.read,
            "events": result.events,
            "skipped": result.skipped,
            "reasons": result.reasons,
            "seconds": result.seconds,
            "swapped": result.swapped,
        }
    )


@dataclass
class Measured:
    rate: float  # per second
    seconds: float
    peak_mib: float


def run_ours(url: str, expected: int) -> Measured:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    child = context.Process(target=replay_main, args=(url, out))
    child.start()
    assert child.pid is not None
    sampler = PeakRss(child.pid)
    sampler.start()
    try:
        report = out.get(timeout=1800)
    finally:
        child.join(120)
        peak = sampler.finish()
        if child.is_alive():
            child.kill()  # our own child, by its handle
            child.join()
    if report["skipped"] or report["events"] != expected or not report["swapped"]:
        raise BenchmarkFailedError(f"replay: expected {expected} events applied, got {report}")
    return Measured(report["read"] / report["seconds"], report["seconds"], peak)


def check_rebuilt(url: str, state: dict[tuple[str, str], int]) -> None:
    """The rebuilt balances equal the ledger's own state, for every client and sub-account."""
    model = {
        (b.client, b.sub_account, b.asset): b.units["available"] for b in balances(url, LEDGER)
    }
    for (account, asset), units in state.items():
        if not account.startswith("client:") or not account.endswith(":available"):
            continue
        _, client, sub, _ = account.split(":")
        if client_account(client, sub) != account or model.get((client, sub, asset), 0) != -units:
            raise BenchmarkFailedError(
                f"replay: {client}/{sub} {asset} is {model.get((client, sub, asset))}, "
                f"the ledger says {-units}"
            )


# --- ledger-cli ------------------------------------------------------------------------


def ledger_cli() -> str | None:
    """The ``ledger`` binary, installed from Debian's packages if missing and possible."""
    found = shutil.which("ledger")
    if found or shutil.which("apt-get") is None or os.geteuid() != 0:
        return found
    note("ledger-cli is missing: installing the Debian package 'ledger' (apt-get)")
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "ledger"]):
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
        if done.returncode != 0:
            note(f"[yellow]{' '.join(command)} failed: {done.stderr.strip()[-300:]}[/yellow]")
            return None
    return shutil.which("ledger")


def run_ledger_cli(binary: str, journal: Path, transactions: int) -> Measured:
    began = time.perf_counter()
    process = subprocess.Popen(
        [binary, "-f", str(journal), "balance"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sampler = PeakRss(process.pid)
    sampler.start()
    stdout, stderr = process.communicate(timeout=1800)
    seconds = time.perf_counter() - began
    peak = sampler.finish()
    if process.returncode != 0 or not stdout.strip():
        raise BenchmarkFailedError(f"ledger-cli exited {process.returncode}: {stderr[-500:]}")
    return Measured(transactions / seconds, seconds, peak)


# --- Report ----------------------------------------------------------------------------


def timed(action: Callable[[], int]) -> tuple[int, float]:
    began = time.perf_counter()
    value = action()
    return value, time.perf_counter() - began


def measure(plan: Plan, runs: int) -> dict[str, Any]:
    found: dict[str, Any] = {"ours": [], "cli": []}
    binary = ledger_cli()
    if binary is None:
        note("[yellow]ledger-cli is not installed and cannot be: comparison skipped[/yellow]")
    with (
        postgres_server() as server_url,
        fresh_database(server_url, "replay") as url,
        tempfile.TemporaryDirectory(prefix="primeledger-bench-replay-") as home,
    ):
        began = time.perf_counter()
        events, state = write_log(url, plan.events)
        note(f"set-up: {events:,} events written in {time.perf_counter() - began:.1f} s")
        settle(url)
        journal = Path(home) / "journal.ledger"
        transactions, seconds = timed(lambda: export(url, LEDGER, journal))
        size = journal.stat().st_size / 2**20
        note(
            f"export: {transactions:,} transactions ({size:,.0f} MiB) in {seconds:.1f} s "
            f"({transactions / seconds:,.0f} /s)"
        )
        found.update(events=events, transactions=transactions)
        for run in range(runs):
            if binary is not None:
                found["cli"].append(run_ledger_cli(binary, journal, transactions))
                note(f"run {run + 1}/{runs}: ledger-cli {found['cli'][-1].rate:,.0f} tx/s")
            found["ours"].append(run_ours(url, events))
            check_rebuilt(url, state)
            note(f"run {run + 1}/{runs}: replay {found['ours'][-1].rate:,.0f} events/s (checked)")
    return found


def row(label: str, unit: str, runs: list[Measured], ours: float) -> list[str]:
    rate = median([r.rate for r in runs])
    return [
        label,
        str(len(runs)),
        f"{rate:,.0f} {unit}",
        f"{median([r.seconds for r in runs]):.2f}",
        f"{max(r.peak_mib for r in runs):,.0f}",
        f"{ours / rate:.2f}",
    ]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args("Rebuild speed of the read models against ledger-cli.", argv)
    plan = QUICK if args.quick else FULL
    found = measure(plan, args.runs or plan.runs)
    ours: list[Measured] = found["ours"]
    cli: list[Measured] = found["cli"]
    mine = median([r.rate for r in ours])
    peak = max(r.peak_mib for r in ours)
    rows = [row("ours: replay (3 read models)", "events/s", ours, mine)]
    if cli:
        rows.append(row("ledger-cli balance", "tx/s", cli, mine))
    print_table(
        f"Rebuild: {found['events']:,} events, {found['transactions']:,} with postings "
        f"(ledger-cli transactions); ours: {', '.join(ALL)}",
        ["path", "runs", "median rate", "median s", "peak RSS MiB", "ours / this"],
        rows,
    )
    baseline = median([r.rate for r in cli]) if cli else None
    ratio = mine / baseline if baseline else None
    rss_verdict = "met" if peak <= TARGET_RSS_MIB else "MISSED"
    if ratio is None:
        note("ledger-cli comparison skipped (not installed)")
    else:
        verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
        note(f"ours / ledger-cli = {ratio:.2f}x (target >= {TARGET_RATIO:.0f}x: {verdict})")
    note(f"peak RSS of the replay = {peak:,.0f} MiB (target <= {TARGET_RSS_MIB}: {rss_verdict})")
    decoder = decode.FAST_PATH
    note(f"decoder fast path: {decoder} (PRIMELEDGER_PURE_PYTHON=1 measures without the C one)")
    print_result(
        {
            "bench": "replay",
            "unit": "events/s",
            "ours": round(mine),
            "baseline": "ledger-cli",
            "baseline_value": round(baseline) if baseline else None,
            "ratio": round(ratio, 3) if ratio is not None else None,
            "peak_rss_mib": round(peak, 1),
            "events": found["events"],
            "runs": len(ours),
            "decoder": decoder,
        }
    )


if __name__ == "__main__":
    run_main("replay", main)
