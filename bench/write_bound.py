"""How fast the write pipeline could go if deciding a command cost nothing (a diagnostic).

``bench.write`` measures the whole path. This splits it in two, to show where a faster
writer would have to save:

* **real**: the same workload as ``bench.write`` through ``ledger.application.Ledger``;
* **free decision**: the same ledger, store and threads, with ``Processor.process`` replaced
  by a lookup of the outcomes (events, sealed bodies, idempotency records) that a real
  processor computed beforehand from the same state. What remains is the pipeline around the
  decision: queues, group commit, COPY of events and records, acknowledgements, the driver.

Both are checked: every command answered once and accepted, one stored event per transfer.
This pokes at the writer's internals (its processor) on purpose; it is not part of ``make
bench``, and its figures are a bound, not a target. Run: ``python -m bench.write_bound``
(``--quick``, ``--runs N``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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
    require_accepted,
    run_main,
)
from bench.write import (
    ASSET,
    CHUNK,
    CLIENTS,
    FUNDING,
    LEDGER,
    SUBS,
    Submitter,
    chunks,
    make_workload,
    run_threads,
    transfer_commands,
)
from ledger.application import Ledger
from ledger.processing import Outcome

TRANSFERS = 100_000
QUICK_TRANSFERS = 10_000


def run(server_url: str, transfers: int, seed: int, free: bool) -> float:
    """Transfers per second through the writer, with the decision real or free."""
    with fresh_database(server_url, "bound") as url:
        ledger = Ledger(url, LEDGER)
        try:
            open_funded_clients(ledger, CLIENTS, sub_accounts=SUBS, asset=ASSET, amount=FUNDING)
            head = ledger.position
            groups = transfer_commands(make_workload(CLIENTS, transfers, seed), f"b{seed}")
            if free:
                precompute(ledger, [c for group in groups for c in group])
            results: list[Any] = []
            elapsed = run_threads(
                [Submitter(chunks(group, CHUNK)) for group in groups],
                lambda commands: results.append(ledger.submit(commands)),
            )
            for batch in results:
                require_accepted(batch, "free decision" if free else "real")
            answered = sorted(r.key for batch in results for r in batch)
            if answered != sorted(str(c["key"]) for group in groups for c in group):
                raise BenchmarkFailedError("not every command answered exactly once")
            stored = ledger.store.head() - head
            if stored != transfers:
                raise BenchmarkFailedError(f"{stored:,} events stored for {transfers:,} transfers")
        finally:
            ledger.close()
    return transfers / elapsed


def precompute(ledger: Ledger, commands: Sequence[Mapping[str, Any]]) -> None:
    """Decide every command on a copy of the writer's state; the writer then only looks up.

    Four submitters race, so the writer sees the commands in an order nobody knows in
    advance; the outcomes are handed out in the order they were computed (positions and the
    hash chain stay consecutive), so a caller may get another command's result. Every result
    is handed out once, and the store ends up with exactly the events of a real run.
    """
    copy = ledger._fresh_processor()  # the same state, rebuilt from the store
    outcomes = iter([copy.process(command) for command in commands])
    state = ledger.processor.state

    def process(raw: Mapping[str, Any]) -> Outcome:
        outcome = next(outcomes)
        state.position = outcome.events[-1][0]  # the store's head check needs the position
        return outcome

    ledger.processor.process = process  # type: ignore[method-assign, assignment]
    ledger.processor.knows_all = True  # every key is new: no idempotency lookups in the store


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args("Write pipeline with a free decision, against the real path.", argv)
    transfers = QUICK_TRANSFERS if args.quick else TRANSFERS
    runs = args.runs or (1 if args.quick else 3)
    real: list[float] = []
    free: list[float] = []
    with postgres_server() as server_url:
        for number in range(runs):
            real.append(run(server_url, transfers, number, free=False))
            free.append(run(server_url, transfers, number, free=True))
            note(f"run {number + 1}/{runs}: real {real[-1]:,.0f}/s, free {free[-1]:,.0f}/s")
    per_transfer = 1e6 / median(free)
    print_table(
        f"Writer: {transfers:,} transfers per run, real decision against a free one",
        ["path", "runs", "median /s", "min /s", "max /s"],
        [
            ["real (bench.write's path)", str(runs), f"{median(real):,.0f}",
             f"{min(real):,.0f}", f"{max(real):,.0f}"],
            ["free decision (pipeline only)", str(runs), f"{median(free):,.0f}",
             f"{min(free):,.0f}", f"{max(free):,.0f}"],
        ],
    )  # fmt: skip
    note(f"the pipeline around the decision costs ~{per_transfer:.1f} us per transfer")
    print_result(
        {
            "bench": "write_bound",
            "unit": "transfers/s",
            "real": round(median(real)),
            "free_decision": round(median(free)),
            "pipeline_us_per_transfer": round(per_transfer, 1),
            "runs": runs,
        }
    )


if __name__ == "__main__":
    run_main("write_bound", main)
