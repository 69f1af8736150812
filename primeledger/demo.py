"""``make demo``: a prime-brokerage day through the whole system, then what each user sees.

The day (``primeledger.scenario``) is played through the single writer into PostgreSQL; the
relay streams it to the broker and the projection workers build the read models. Everything
printed at the end is read from the projections (balances, P&L, trust reserve) or folded from
the public log (trading reports), after the stream has caught up with the ledger's head.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from datetime import UTC, date, datetime

from rich.console import Console
from rich.rule import Rule

from ledger.application import Ledger
from ledger.audit import verify_ledger
from primeledger.output import render
from primeledger.pipeline import Pipeline
from primeledger.scenario import SimClock, previous_business_day, trading_day
from primeledger.services import Services
from projections import queries, reports

console = Console(soft_wrap=True)  # long lines stay whole in logs and pipes


def _days_to_play(today: date) -> date:
    """The first day of two recent business days, so the whole demo lies in the past."""
    return previous_business_day(previous_business_day(today))


def run_demo(services: Services) -> None:
    url, bootstrap = services.database_url, services.kafka_bootstrap
    name = "demo-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    phases = trading_day(_days_to_play(datetime.now(UTC).date()))
    console.print(Rule(f"PrimeLedger demo: ledger {name!r}"))
    console.print(f"PostgreSQL {services.database_url}\nKafka      {bootstrap}")
    started = time.monotonic()
    with Pipeline(url, bootstrap, group_id=f"demo-{name}") as pipeline:
        clock = SimClock(phases[0].start)
        with Ledger(url, name, clock=clock) as ledger:
            for phase in phases:
                clock.at(phase.start)
                results = ledger.submit(phase.commands)
                refused = Counter(r.code for r in results if not r.accepted)
                events = sum(len(r.positions) for r in results)
                note = ", ".join(f"{code} x{n}" for code, n in refused.items())
                console.print(
                    f"[bold]{phase.start:%a %d %b %H:%M}Z[/] {phase.title}: "
                    f"{len(results)} commands, {events} events"
                    + (f", refused as intended: {note}" if note else "")
                )
        head = pipeline.wait_caught_up(name)
    console.print(
        f"{head} events written, relayed and projected in {time.monotonic() - started:.1f}s"
    )
    _show(url, name, phases[0].start.date(), phases[-1].start.date())


def _show(url: str, ledger: str, day1: date, day2: date) -> None:
    balances = [b.to_json() for b in queries.balances(url, ledger)]
    _table(
        balances,
        "Client balances (projection)",
        drop=("pledged", "staked", "unbonding", "borrowed"),
    )
    report = queries.pnl(url, ledger, currency="USD").to_json()
    totals = [{"sub_account": k, **v} for k, v in report["totals"].items()]
    _table(totals, f"P&L by sub-account in USD ({report['cost_method']})")
    positions = report["open_positions"]
    _table(positions, "Open positions at the latest marks")
    trust = [p.to_json() for p in queries.trust_reserve(url, ledger)]
    _table(trust, "Trust reserve", drop=("ledger",))
    for day in (day1, day2):
        rows = reports.settlement_report(url, ledger, day)
        _table(
            rows,
            f"Settlement report, value date {day}",
            keep=(
                "trade",
                "client",
                "side",
                "pair",
                "quantity",
                "price",
                "fee",
                "settlement",
                "value_date",
                "dvp",
                "mode",
                "fails",
                "fail_age_days",
            ),
        )
    _table(
        reports.rfq_report(url, ledger, rfq="rfq-1"),
        "RFQ rfq-1: every quote kept",
        keep=("quote_id", "provider", "price", "outcome", "best"),
    )
    _table(reports.priority_violations(url, ledger), "Affiliated market maker priority")
    audit = verify_ledger(url, ledger)
    console.print(
        f"verify: {audit.events} events, hash chain intact, every asset sums to zero: {audit.ok}"
    )
    console.print(
        f"Explore it: PRIMELEDGER_LEDGER={ledger} .venv/bin/primeledger balances"
        " | pnl | trust-reserve | explain --client aurora-capital --asset BTC"
        " | report settlement --date " + day2.isoformat()
    )


def _table(
    rows: list[dict[str, object]],
    title: str,
    drop: tuple[str, ...] = (),
    keep: tuple[str, ...] = (),
) -> None:
    shown = [
        {k: v for k, v in row.items() if (not keep or k in keep) and k not in drop} for row in rows
    ]
    # Already laid out by render(): written as is, so the console does not wrap it again.
    sys.stdout.write(render(shown, "table", title))
    sys.stdout.flush()
