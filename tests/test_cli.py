"""The ``primeledger`` command line on the test servers: what an operator types and reads.

Commands run in-process through typer's ``CliRunner`` with ``PRIMELEDGER_*`` pointing at the
session's PostgreSQL (a fresh database per test) and Tansu broker, and a home directory of
the test's own; the demo runs as the installed ``.venv/bin/primeledger`` in a subprocess, the
way ``make demo`` runs it. Machine formats (``--format json`` / ``csv``) are parsed, never
matched as text.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from typer.testing import CliRunner, Result

from ledger.events import ledger_id
from primeledger.cli import app
from tests.pipeline_support import (
    DAY,
    INTENDED_REJECTIONS,
    REPO,
    WAIT,
    head_of,
    unique,
    write_scenario,
)

BINARY = Path(sys.executable).with_name("primeledger")


@dataclass
class Cli:
    """``primeledger`` with the test's settings; ``run`` returns click's result."""

    env: dict[str, str]

    @property
    def url(self) -> str:
        return self.env["PRIMELEDGER_DATABASE_URL"]

    @property
    def ledger(self) -> str:
        return self.env["PRIMELEDGER_LEDGER"]

    def run(self, *args: str, stdin: str | None = None) -> Result:
        return CliRunner().invoke(app, list(args), input=stdin, env=self.env)

    def json(self, *args: str) -> Any:
        """Run a command with ``--format json``; it must succeed; its rows, parsed."""
        result = self.run(*args, "--format", "json")
        assert result.exit_code == 0, describe(result)
        return orjson.loads(result.stdout)


def words(text: str) -> str:
    """Text with its line breaks undone: rich wraps console lines at the terminal width."""
    return " ".join(text.split())


def describe(result: Result) -> str:
    """Everything a failed CLI assertion needs: exit code, both streams, the exception."""
    return (
        f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}\n"
        f"exception: {result.exception!r}"
    )


@pytest.fixture
def cli(tmp_path: Path, fresh_db_url: str, kafka_bootstrap: str) -> Cli:
    return Cli(
        {
            "PRIMELEDGER_HOME": str(tmp_path / "home"),
            "PRIMELEDGER_DATABASE_URL": fresh_db_url,
            "PRIMELEDGER_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "PRIMELEDGER_LEDGER": unique("cli"),
        }
    )


def commands_file(tmp_path: Path, commands: Any, name: str = "commands.json") -> str:
    path = tmp_path / name
    path.write_bytes(orjson.dumps(commands))
    return str(path)


# A small fund: opened, funded, one transfer that works and one the balance cannot cover.
FUND = [
    {"type": "open_client", "key": "c1", "client": "fund-a", "name": "Fund A",
     "sub_accounts": ["main", "alt"]},
    {"type": "deposit_fiat", "key": "c2", "client": "fund-a", "sub_account": "main",
     "asset": "USD", "amount": "1000.50", "bank_reference": "wire-1"},
    {"type": "transfer", "key": "c3", "client": "fund-a", "from_sub_account": "main",
     "to_sub_account": "alt", "asset": "USD", "amount": "200.25"},
    {"type": "transfer", "key": "c4", "client": "fund-a", "from_sub_account": "alt",
     "to_sub_account": "main", "asset": "USD", "amount": "5000"},
]  # fmt: skip


# --- submit and verify --------------------------------------------------------------------


def test_submit_answers_every_command_and_exits_1_when_one_is_rejected(
    cli: Cli, tmp_path: Path
) -> None:
    path = commands_file(tmp_path, FUND)
    result = cli.run("submit", path, "--format", "json")
    assert result.exit_code == 1, describe(result)
    answers = orjson.loads(result.stdout)
    assert [(a["key"], a["status"]) for a in answers] == [
        ("c1", "accepted"),
        ("c2", "accepted"),
        ("c3", "accepted"),
        ("c4", "rejected"),
    ]
    assert answers[3]["code"] == "insufficient_funds"
    assert answers[1]["event_types"] == ["fiat_deposited"]

    # The same file again (a retry): the ledger answers from its idempotency record, the
    # same answers, nothing written twice; the table shows the rejection's code.
    head = head_of(cli.url, cli.ledger)
    again = cli.run("submit", path)
    assert again.exit_code == 1, describe(again)
    assert "insufficient_funds" in again.stdout
    assert head_of(cli.url, cli.ledger) == head
    assert cli.json("balances", "--source", "ledger", "--client", "fund-a")  # still there


def test_submit_reads_one_command_from_stdin(cli: Cli) -> None:
    result = cli.run("submit", "-", "--format", "json", stdin=json.dumps(FUND[0]))
    assert result.exit_code == 0, describe(result)
    assert [a["status"] for a in orjson.loads(result.stdout)] == ["accepted"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "expected a command object or a list"),
        (b"", "not JSON"),
    ],
)
def test_submit_refuses_a_file_that_is_not_commands_with_exit_2(
    cli: Cli, tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    result = cli.run("submit", str(path))
    assert result.exit_code == 2, describe(result)
    assert str(path) in result.stderr
    assert message in words(result.stderr)
    assert result.stdout == ""
    assert head_of(cli.url, cli.ledger) == 0  # nothing was written


def test_submit_of_a_missing_file_is_a_clear_error(cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.json"
    result = cli.run("submit", str(missing))
    assert result.exit_code == 2, describe(result)
    assert str(missing) in result.stderr


def test_verify_replays_the_log_and_reports_it_intact(cli: Cli, tmp_path: Path) -> None:
    cli.run("submit", commands_file(tmp_path, FUND[:3]))
    head = head_of(cli.url, cli.ledger)
    assert head > 0
    result = cli.run("verify")
    assert result.exit_code == 0, describe(result)
    said = words(result.stdout)
    assert f"ledger {cli.ledger}: {head} events verified" in said
    assert "every asset sums to zero: True" in said


# --- balances from the ledger, formats ----------------------------------------------------


def test_balances_from_the_ledger_in_json_and_csv(cli: Cli, tmp_path: Path) -> None:
    answers = orjson.loads(cli.run("submit", commands_file(tmp_path, FUND), "-f", "json").stdout)
    rows = cli.json("balances", "--source", "ledger")
    found = {(r["sub_account"], r["asset"]): (r["available"], r["total"]) for r in rows}
    # 1000.50 deposited into main, 200.25 moved to alt; the 5000 transfer was refused.
    assert found == {("main", "USD"): ("800.25", "800.25"), ("alt", "USD"): ("200.25", "200.25")}

    table = cli.run("balances", "--source", "ledger", "--format", "csv")
    assert table.exit_code == 0, describe(table)
    assert list(csv.DictReader(io.StringIO(table.stdout))) == [
        {k: str(v) for k, v in row.items()} for row in rows
    ]

    # As of the deposit's position, before the transfer, only main holds money.
    deposit = answers[1]["positions"][0]
    then = cli.json("balances", "--source", "ledger", "--position", str(deposit))
    assert [(r["sub_account"], r["total"]) for r in then] == [("main", "1000.50")]


@pytest.mark.parametrize(
    "args",
    [
        ("balances", "--source", "ledger"),
        ("report", "trades"),
        ("report", "rfq", "--rfq", "rfq-1"),
    ],
)
def test_an_unknown_format_exits_2_naming_the_option(
    cli: Cli, tmp_path: Path, args: tuple[str, ...]
) -> None:
    cli.run("submit", commands_file(tmp_path, FUND[:2]))
    result = cli.run(*args, "--format", "xml")
    assert result.exit_code == 2, describe(result)
    assert "--format" in result.stderr
    assert "'xml'" in words(result.stderr)


def test_an_unknown_format_is_refused_before_anything_is_written(cli: Cli, tmp_path: Path) -> None:
    result = cli.run("submit", commands_file(tmp_path, FUND[:2]), "--format", "xml")
    assert result.exit_code == 2, describe(result)
    assert "--format" in result.stderr
    assert head_of(cli.url, cli.ledger) == 0


def test_reading_projections_that_do_not_exist_yet_is_a_clear_error(
    cli: Cli, tmp_path: Path
) -> None:
    cli.run("submit", commands_file(tmp_path, FUND[:2]))
    result = cli.run("balances")
    assert result.exit_code == 1, describe(result)
    assert isinstance(result.exception, SystemExit), describe(result)  # no traceback
    assert "replay" in result.stderr


def test_an_altered_store_behind_explain_is_reported_in_one_line(cli: Cli, tmp_path: Path) -> None:
    answers = orjson.loads(cli.run("submit", commands_file(tmp_path, FUND), "-f", "json").stdout)
    built = cli.run("replay", "--projection", "balances")
    assert built.exit_code == 0, describe(built)
    assert cli.json("explain", "--client", "fund-a", "--asset", "USD")  # the deposit, transfers
    # Someone edits the first transfer's stored body in place.
    transfer = answers[2]["positions"][0]
    with psycopg.connect(cli.url, autocommit=True) as conn:
        conn.execute(
            "UPDATE primeledger_events SET state = %s"
            " WHERE originator_id = %s AND originator_version = %s",
            (b"{}", ledger_id(cli.ledger), transfer),
        )
    result = cli.run("explain", "--client", "fund-a", "--asset", "USD")
    assert result.exit_code == 1, describe(result)
    assert isinstance(result.exception, SystemExit), describe(result)  # no traceback
    assert "the store does not match the read model" in words(result.stderr)
    assert f"position {transfer}" in words(result.stderr)


# --- reports on the trading day -----------------------------------------------------------


def test_reports_show_trades_settlement_and_rfq_evidence(cli: Cli) -> None:
    results = write_scenario(cli.url, cli.ledger)
    assert {r.key: r.code for r in results if not r.accepted} == INTENDED_REJECTIONS
    booked = sum(r.event_types.count("trade_booked") for r in results)
    # Another ledger's day in the same store: reports read only the configured ledger.
    write_scenario(cli.url, f"{cli.ledger}-other")

    trades = cli.json("report", "trades")
    assert len(trades) == booked
    by_id = {t["trade"]: t for t in trades}
    assert by_id["rfq-1.rfq-1-lp-meridian"]["pair"] == "BTC/USD"  # the best of three quotes
    assert {t["settlement"] for t in trades} == {"T+0", "T+1"}
    fund = cli.json("report", "trades", "--client", "kowloon-quant")
    assert fund
    assert {t["client"] for t in fund} == {"kowloon-quant"}

    # Value date of the day: the failed shared-book fill is there, with its fail counted.
    report = cli.run("report", "settlement", "--date", DAY.isoformat(), "--format", "csv")
    assert report.exit_code == 0, describe(report)
    rows = {r["trade"]: r for r in csv.DictReader(io.StringIO(report.stdout))}
    assert rows["ord-2.fill-3"]["fails"] == "1"
    assert all(r["value_date"] == DAY.isoformat() for r in rows.values())
    bad_date = cli.run("report", "settlement", "--date", "20-11-2026")
    assert bad_date.exit_code == 2, describe(bad_date)
    assert "--date" in words(bad_date.stderr)

    quotes = cli.json("report", "rfq", "--rfq", "rfq-1")
    assert sorted(q["provider"] for q in quotes) == ["lp-janus", "lp-meridian", "lp-pacific"]
    assert [q["quote_id"] for q in quotes if q["outcome"] == "accepted"] == ["rfq-1-lp-meridian"]
    assert cli.json("report", "rfq", "--quote-id", "rfq-1-lp-janus") == quotes
    neither = cli.run("report", "rfq")
    assert neither.exit_code == 2, describe(neither)
    assert "--quote-id or --rfq" in words(neither.stderr)

    violations = cli.json("report", "priority")
    assert [(v["order"], v["fill"]) for v in violations] == [("ord-mm", "fill-mm")]


# --- the demo, end to end -----------------------------------------------------------------


def test_demo_plays_the_day_through_the_stream_and_shows_every_view(cli: Cli) -> None:
    """``primeledger demo`` as a user runs it: writer, relay and worker on the configured
    broker, then balances, P&L, trust reserve, settlement and the audit. Afterwards the
    read models it built answer the other commands, and agree with the ledger itself."""
    env = {**os.environ, **cli.env, "COLUMNS": "200"}
    try:
        done = subprocess.run(
            [str(BINARY), "demo"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=2 * WAIT,  # the demo itself waits up to WAIT for the stream
        )
    except subprocess.TimeoutExpired as exc:  # run() killed it; show how far it got
        shown = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout
        raise AssertionError(f"demo still running after {2 * WAIT:.0f} s: {shown}") from exc
    assert done.returncode == 0, f"stdout: {done.stdout}\nstderr: {done.stderr}"
    out = done.stdout
    for title in (
        "Client balances (projection)",
        "P&L by sub-account in USD (fifo)",
        "Open positions at the latest marks",
        "Trust reserve",
        "Settlement report, value date",
        "RFQ rfq-1: every quote kept",
        "Affiliated market maker priority",
    ):
        assert title in out, f"{title!r} missing from the demo's output:\n{out}"
    assert "refused as intended: unsettled_limit_exceeded x1" in out
    assert re.search(r"verify: \d+ events, hash chain intact, every asset sums to zero: True", out)
    written = re.search(r"(\d+) events written, relayed and projected", out)
    found = re.search(r"PRIMELEDGER_LEDGER=(demo-[0-9-]+)", out)
    assert written, out
    assert found, out

    # The demo's ledger through the other commands.
    demo = Cli({**cli.env, "PRIMELEDGER_LEDGER": found.group(1)})
    assert head_of(demo.url, demo.ledger) == int(written.group(1))
    projected = demo.json("balances")
    assert projected == demo.json("balances", "--source", "ledger")
    assert projected
    # The events behind aurora-capital's BTC add up to its balance.
    explained = demo.json("explain", "--client", "aurora-capital", "--asset", "BTC")
    btc = [Decimal(b["total"]) for b in projected if b["client"] == "aurora-capital"
           and b["asset"] == "BTC"]  # fmt: skip
    assert sum(Decimal(e["change"]) for e in explained) == sum(btc) > 0
    totals = demo.json("pnl")
    assert {t["sub_account"] for t in totals} >= {"aurora-capital/macro", "harbour-lane/main"}
    reserve = demo.run("trust-reserve", "--format", "csv")
    assert reserve.exit_code == 0, describe(reserve)
    assets = {r["asset"] for r in csv.DictReader(io.StringIO(reserve.stdout))}
    assert assets >= {"BTC", "ETH", "SOL", "USD", "HKD"}

    # A rebuild of the balances from the store serves the same answers.
    rebuilt = demo.run("replay", "--projection", "balances")
    assert rebuilt.exit_code == 0, describe(rebuilt)
    assert "swapped in: True" in words(rebuilt.stdout)
    assert demo.json("balances") == projected
    digest = demo.run("projection-hash", "balances")
    assert digest.exit_code == 0, describe(digest)
    assert re.fullmatch(r"[0-9a-f]{64}\n", digest.stdout), digest.stdout
