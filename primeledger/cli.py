"""The ``primeledger`` command line.

Commands are grouped in sections; each command loads :class:`Settings` from the environment
(``PRIMELEDGER_*``) and turns a :class:`ServiceError` into a one-line error and exit code 1.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from ledger.accounts import Bucket
from ledger.application import Ledger, load_state
from ledger.audit import verify_ledger
from ledger.errors import LedgerFaultError
from ledger.money import format_units
from ledger.queries import client_balances
from ledger.state import LedgerState
from ledger.store import LedgerStore
from primeledger import docs, services
from primeledger.output import Format, emit
from primeledger.pipeline import Pipeline
from primeledger.settings import load_settings
from projections import queries, reports
from projections.base import ProjectionSetupError
from projections.catalog import ALL
from projections.replay import replay as replay_models
from projections.worker import ThreadedWorker, WorkerConfig
from streams.relay import Relay
from streams.topics import ensure_topics

app = typer.Typer(
    help="PrimeLedger: an event-sourced ledger on PostgreSQL and a Kafka-protocol stream.",
    no_args_is_help=True,
)
console = Console()
err_console = Console(stderr=True)


@app.callback()
def _configure(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log details.")) -> None:
    # Only our loggers: kafka-python logs every connection attempt at INFO.
    logger = logging.getLogger("primeledger")
    if not logger.handlers:
        logger.addHandler(RichHandler(console=err_console, show_time=False, show_path=False))
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING)


@contextlib.contextmanager
def _fail_on_service_error() -> Iterator[None]:
    try:
        yield
    except services.ServiceError as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False)
        raise typer.Exit(1) from err


# --- Services: up / down / status -------------------------------------------------------


@app.command()
def up() -> None:
    """Start embedded PostgreSQL and Tansu (reusing running ones) and show how to reach them."""
    settings = load_settings()
    with _fail_on_service_error():
        services.up(settings)
    _print_status(services.status(settings))


@app.command()
def down() -> None:
    """Stop the embedded services; their data stays (Tansu's topics do not: memory storage)."""
    with _fail_on_service_error():
        stopped = services.down(load_settings())
    console.print("stopped: " + ", ".join(stopped) if stopped else "nothing was running")


@app.command()
def status() -> None:
    """Show where the database and the broker are and whether they run."""
    _print_status(services.status(load_settings()))


def _print_status(report: dict[str, Any]) -> None:
    postgres, kafka = report["postgres"], report["kafka"]
    table = Table(title=f"PrimeLedger services (home: {report['home']})", title_justify="left")
    # Nothing wrapped or cut: the addresses are what people copy from here.
    for column in ("service", "state", "connect with"):
        table.add_column(column, no_wrap=True)
    table.add_row("PostgreSQL", _state(postgres), postgres.get("url") or "-")
    table.add_row("Kafka (Tansu)", _state(kafka), kafka.get("bootstrap") or "-")
    console.print(table)
    console.print(f"[dim]PostgreSQL: {_details(postgres, 'data')}[/]", highlight=False)
    console.print(f"[dim]Kafka: {_details(kafka, 'log')}[/]", highlight=False)


def _state(service: dict[str, Any]) -> str:
    up, down = ("running", "stopped") if service["embedded"] else ("reachable", "unreachable")
    return f"[green]{up}[/]" if service["running"] else f"[red]{down}[/]"


def _details(service: dict[str, Any], path_key: str) -> str:
    if not service["embedded"]:
        return "external (from PRIMELEDGER_* settings), not managed by primeledger"
    pid = f"embedded, pid {service['pid']}" if service.get("pid") else "embedded"
    path = service.get("datadir") or service.get("log")
    return f"{pid}, {path_key} in {path}"


# --- Write side: submit / verify ------------------------------------------------------------


FormatOption = typer.Option("table", "--format", "-f", help="table, json or csv")


def _format(value: str) -> Format:
    if value not in ("table", "json", "csv"):
        err_console.print(f"[bold red]error:[/] --format: {value!r} is not table, json or csv")
        raise typer.Exit(2)
    return value  # type: ignore[return-value]


def _urls() -> services.Services:
    with _fail_on_service_error():
        return services.up(load_settings())


@app.command()
def submit(
    path: str = typer.Argument(..., help="JSON file with one command or a list; - for stdin"),
    fmt: str = FormatOption,
) -> None:
    """Submit commands to the ledger's single writer and print each result."""
    output = _format(fmt)  # a bad option is refused before anything is written
    try:
        raw = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        err_console.print(f"[bold red]error:[/] {path}: cannot read it: {exc.strerror}")
        raise typer.Exit(2) from exc
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        err_console.print(f"[bold red]error:[/] {path}: not JSON: {exc}")
        raise typer.Exit(2) from exc
    commands = body if isinstance(body, list) else [body]
    if not all(isinstance(c, dict) for c in commands):
        err_console.print(f"[bold red]error:[/] {path}: expected a command object or a list")
        raise typer.Exit(2)
    settings = load_settings()
    with Ledger(_urls().database_url, settings.ledger) as ledger:
        results = ledger.submit(commands)
    emit([r.as_dict() for r in results], output, "results")
    if any(not r.accepted for r in results):
        raise typer.Exit(1)


@app.command()
def verify() -> None:
    """Replay the ledger's whole log: hash chain, positions, balance per event and per asset."""
    settings = load_settings()
    try:
        report = verify_ledger(_urls().database_url, settings.ledger)
    except LedgerFaultError as exc:
        err_console.print(f"[bold red]verification failed:[/] {exc}")
        raise typer.Exit(1) from exc
    console.print(
        f"ledger {report.ledger}: {report.events} events verified, head {report.head_hash[:16]}…,"
        f" every asset sums to zero: {report.ok}"
    )
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def schema(out: Path = typer.Option(docs.SCHEMAS_DIR, help="directory for the files")) -> None:
    """Write the JSON schemas of the public formats and the README's rejection-code table."""
    for path in docs.write_schemas(out):
        console.print(f"wrote {path}")
    docs.update_readme()
    console.print(f"updated {docs.README_PATH}")


# --- Read side: balances / pnl / trust-reserve / explain / replay / projection-hash ---------


@contextlib.contextmanager
def _read_models() -> Iterator[None]:
    """Turn "the read models were never built" into one line saying what to run."""
    try:
        yield
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName, KeyError) as exc:
        err_console.print(
            "[bold red]error:[/] the read models do not exist yet: run the projection workers"
            " (`primeledger run` or `primeledger project`) or build them with"
            " `primeledger replay --projection balances --projection pnl"
            " --projection trust-reserve`"
        )
        raise typer.Exit(1) from exc
    except ProjectionSetupError as exc:  # e.g. a generation built before client_events
        err_console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    except queries.CorruptStoreError as exc:  # an auditor's finding, not a crash: say it
        err_console.print(f"[bold red]error: the store does not match the read model:[/] {exc}")
        raise typer.Exit(1) from exc


def _as_of(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        err_console.print(f"[bold red]error:[/] --as-of: {value!r} is not an ISO-8601 time")
        raise typer.Exit(2) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@app.command()
def balances(
    client: str | None = typer.Option(None, help="only this client"),
    as_of: str | None = typer.Option(None, "--as-of", help="ISO time; balances as of then"),
    position: int | None = typer.Option(None, "--position", help="as of this log position"),
    source: str = typer.Option("projections", help="projections (read model) or ledger"),
    fmt: str = FormatOption,
) -> None:
    """Per client, sub-account and asset: every bucket and the total."""
    output = _format(fmt)
    settings, url = load_settings(), _urls().database_url
    if source == "ledger":
        state = load_state(LedgerStore(url, settings.ledger, create=False), position)
        rows = _ledger_balances(state, client)
    elif source == "projections":
        with _read_models():
            found = queries.balances(url, settings.ledger, client, _as_of(as_of), position)
        rows = [b.to_json() for b in found]
    else:
        err_console.print(f"[bold red]error:[/] --source: {source!r} is not projections or ledger")
        raise typer.Exit(2)
    emit(rows, output, f"balances ({source})")


def _ledger_balances(state: LedgerState, client: str | None) -> list[dict[str, Any]]:
    grouped: dict[tuple[str, str, str], dict[str, int]] = {}
    for row in client_balances(state, client):
        grouped.setdefault((row.client, row.sub_account, row.asset), {})[row.bucket] = row.units
    return [
        {"client": c, "sub_account": s, "asset": a}
        | {b.value: format_units(units.get(b.value, 0), a) for b in Bucket}
        | {"total": format_units(sum(units.values()), a)}
        for (c, s, a), units in sorted(grouped.items())
    ]


@app.command()
def pnl(
    client: str | None = typer.Option(None, help="only this client"),
    currency: str = typer.Option("USD", help="reporting currency (converted at the marks)"),
    as_of: str | None = typer.Option(None, "--as-of", help="ISO time"),
    fmt: str = FormatOption,
    view: str = typer.Option("totals", help="totals, by-day or positions"),
) -> None:
    """P&L by sub-account: realised (FIFO or average), fees, unrealised at the latest marks."""
    output = _format(fmt)
    with _read_models():
        report = queries.pnl(
            _urls().database_url, load_settings().ledger, client, currency, _as_of(as_of)
        )
    body = report.to_json()
    if view == "totals":
        rows = [{"sub_account": key, **figures} for key, figures in body["totals"].items()]
    elif view == "by-day":
        rows = body["by_day"]
    elif view == "positions":
        rows = body["open_positions"]
    else:
        err_console.print(f"[bold red]error:[/] --view: {view!r} is not totals, by-day, positions")
        raise typer.Exit(2)
    title = f"P&L in {currency} ({body['cost_method']}) — {view}"
    emit(rows, output, title)
    if body["unpriced"] and fmt == "table":
        console.print(f"no mark into {currency} for: {', '.join(body['unpriced'])}")


@app.command("trust-reserve")
def trust_reserve(
    as_of: str | None = typer.Option(None, "--as-of", help="ISO time"), fmt: str = FormatOption
) -> None:
    """Per asset: client liabilities vs holdings on trust, cold ratio (98%), cover, alerts."""
    output = _format(fmt)
    with _read_models():
        found = queries.trust_reserve(_urls().database_url, load_settings().ledger, _as_of(as_of))
    emit([p.to_json() for p in found], output, "trust reserve")


@app.command()
def explain(
    client: str = typer.Option(..., help="the client"),
    asset: str = typer.Option(..., help="the asset"),
    sub_account: str | None = typer.Option(None, "--sub-account", help="one sub-account"),
    fmt: str = FormatOption,
) -> None:
    """The events whose postings sum to a client's balance of one asset."""
    output = _format(fmt)
    url, ledger = _urls().database_url, load_settings().ledger
    with _read_models():
        found = queries.explain(url, ledger, client, asset, sub_account)
    body = found.to_json()
    rows = [
        {
            "position": e["position"],
            "time": e["time"],
            "type": e["type"],
            "postings": " ".join(f"{p['account']} {p['amount']}" for p in e["postings"]),
            "change": e["change"],
        }
        for e in body["events"]
    ]
    emit(rows, output, f"{client} {asset}: balance {body['balance']}")
    if fmt == "table":
        console.print(f"sum of the events: {body['sum_of_events']} (balance {body['balance']})")


@app.command("projection-hash")
def projection_hash(name: str = typer.Argument(..., help="balances, pnl or trust-reserve")) -> None:
    """SHA-256 of a read model's canonical contents (equal for equal logs)."""
    with _read_models():
        console.print(queries.projection_hash(_urls().database_url, name))


@app.command()
def replay(
    projection: list[str] = typer.Option(..., "--projection", help="balances, pnl, trust-reserve"),
    source: str = typer.Option("store", help="store (PostgreSQL) or kafka (from offset 0)"),
    until_position: int | None = typer.Option(None, "--until-position"),
    as_of: str | None = typer.Option(None, "--as-of", help="ISO time"),
) -> None:
    """Rebuild read models into fresh tables, then swap them in atomically."""
    urls = _urls()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console
    ) as bar:
        task = bar.add_task("replaying", total=None)

        def progress(done: int) -> None:
            bar.update(task, completed=done)

        result = replay_models(
            urls.database_url,
            projection,
            source=source,
            bootstrap=urls.kafka_bootstrap,
            ledger=load_settings().ledger if (until_position or as_of) else None,
            until_position=until_position,
            as_of=_as_of(as_of),
            progress=progress,
        )
    console.print(
        f"replayed {result.events} events into {', '.join(result.schemas.values())} in"
        f" {result.seconds:.1f}s; swapped in: {result.swapped}"
    )


# --- Stream: relay / project / run -----------------------------------------------------------


@app.command()
def relay(name: str = typer.Option("default", help="relay name (one runs per name)")) -> None:
    """Run the relay (PostgreSQL log -> Kafka) until interrupted."""
    urls = _urls()
    ensure_topics(urls.kafka_bootstrap)
    stop = threading.Event()
    with Relay(urls.database_url, urls.kafka_bootstrap, name) as running:
        console.print(f"relay {name!r} running; Ctrl-C to stop")
        _until_interrupted(lambda: running.run_forever(stop), stop)


@app.command()
def project(
    names: list[str] = typer.Argument(None, help="read models (default: all)"),
    group: str = typer.Option("primeledger-projections", help="consumer group id"),
) -> None:
    """Run a projection worker (Kafka -> read models) until interrupted."""
    urls = _urls()
    ensure_topics(urls.kafka_bootstrap)
    config = WorkerConfig(
        urls.database_url, urls.kafka_bootstrap, projections=names or ALL, group_id=group
    )
    worker = ThreadedWorker(config).start()
    console.print(f"projection worker ({', '.join(config.projections)}) running; Ctrl-C to stop")
    stop = threading.Event()
    try:
        _until_interrupted(lambda: stop.wait(), stop)
    finally:
        worker.stop()


@app.command()
def run() -> None:
    """Run relay and projection workers together on the configured services."""
    urls = _urls()
    stop = threading.Event()
    with Pipeline(urls.database_url, urls.kafka_bootstrap):
        console.print(
            f"relay and projections running on {urls.kafka_bootstrap}; submit commands with"
            " `primeledger submit`; Ctrl-C to stop"
        )
        _until_interrupted(lambda: stop.wait(), stop)


def _until_interrupted(work: Callable[[], object], stop: threading.Event) -> None:
    try:
        work()
    except KeyboardInterrupt:
        stop.set()
        console.print("stopping")


@app.command()
def demo() -> None:
    """Play a realistic prime-brokerage day on the embedded services and show the results."""
    from primeledger.demo import run_demo

    run_demo(_urls())


@app.command()
def asyncapi(out: Path = typer.Option(docs.ASYNCAPI_PATH, help="file to write")) -> None:
    """Write the AsyncAPI document of every topic (generated from the code)."""
    console.print(f"wrote {docs.write_asyncapi(out)}")


# --- Reports ---------------------------------------------------------------------------------

report_app = typer.Typer(help="Trading reports: trades, RFQ evidence, settlement.")
app.add_typer(report_app, name="report")


@report_app.command("trades")
def report_trades(
    client: str | None = typer.Option(None, help="only this client"), fmt: str = FormatOption
) -> None:
    """Every trade: price, quantity, notional, fee, value date and status."""
    rows = reports.trades_report(_urls().database_url, load_settings().ledger, client)
    emit(rows, _format(fmt), "trades")


@report_app.command("settlement")
def report_settlement(
    on: str = typer.Option(..., "--date", help="value date, YYYY-MM-DD"), fmt: str = FormatOption
) -> None:
    """Trades due on a value date, and older open ones: DVP status and age of fails."""
    try:
        day = date.fromisoformat(on)
    except ValueError as exc:
        err_console.print(f"[bold red]error:[/] --date: {on!r} is not YYYY-MM-DD")
        raise typer.Exit(2) from exc
    rows = reports.settlement_report(_urls().database_url, load_settings().ledger, day)
    emit(rows, _format(fmt), f"settlement {day}")


@report_app.command("rfq")
def report_rfq(
    quote_id: str | None = typer.Option(None, "--quote-id", help="any quote id of the RFQ"),
    rfq: str | None = typer.Option(None, "--rfq", help="the RFQ id"),
    fmt: str = FormatOption,
) -> None:
    """All quotes of an RFQ (the winner and the losers) with the best-price evidence."""
    if quote_id is None and rfq is None:
        err_console.print("[bold red]error:[/] give --quote-id or --rfq")
        raise typer.Exit(2)
    rows = reports.rfq_report(_urls().database_url, load_settings().ledger, rfq, quote_id)
    emit(rows, _format(fmt), "rfq quotes")


@report_app.command("priority")
def report_priority(fmt: str = FormatOption) -> None:
    """Fills where the affiliated market maker went ahead of waiting client orders."""
    rows = reports.priority_violations(_urls().database_url, load_settings().ledger)
    emit(rows, _format(fmt), "priority violations")


def main() -> None:
    app()
