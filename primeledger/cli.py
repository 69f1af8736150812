"""The ``primeledger`` command line.

Commands are grouped in sections; each command loads :class:`Settings` from the environment
(``PRIMELEDGER_*``) and turns a :class:`ServiceError` into a one-line error and exit code 1.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from ledger.application import Ledger
from ledger.audit import verify_ledger
from ledger.errors import LedgerFaultError
from primeledger import docs, services
from primeledger.output import Format, emit
from primeledger.settings import load_settings
from projections import reports

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
    raw = sys.stdin.read() if path == "-" else Path(path).read_text()
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
    emit([r.as_dict() for r in results], _format(fmt), "results")
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
    """Write the JSON schemas of the public command and event formats."""
    for path in docs.write_schemas(out):
        console.print(f"wrote {path}")


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
