"""The ledger-cli export: a fund's small day, exported and read back.

The journal is parsed again by a deliberately simple parser written here (not the exporter's
code), and every transaction must balance per commodity and the totals per account must equal
the sums of the postings in the store. If the ``ledger`` binary is installed, ledger-cli itself
must read the file without complaint and report the same balances.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from ledger.application import Ledger
from ledger.money import parse_units
from projections.export_ledger import ExportError, export, transaction

LEDGER = "fund-day"
START = datetime(2026, 3, 1, 20, 0, tzinfo=UTC)
HEADER = re.compile(r"(\d{4})/(\d{2})/(\d{2}) \((\d+)\) (\S+) (.*)")
POSTING = re.compile(r" {4}(\S+) {2}(-?\d+\.\d+) (\S+)")
COMMENT = re.compile(r"; (\d{4})/(\d{2})/(\d{2}) \((\d+)\) (\S+) .* \(no postings\)")


def stepping_clock(step: timedelta) -> Any:
    """Each event 7 hours after the previous one: the journal spans several days."""
    times = (START + i * step for i in range(10_000))
    return lambda: next(times)


def fund_day(client: str = "fund-a") -> list[dict[str, Any]]:
    return [
        {
            "type": "open_client",
            "key": f"open-{client}",
            "client": client,
            "name": "Fund A",
            "sub_accounts": ["main", "macro"],
        },
        {
            "type": "deposit_fiat",
            "key": f"usd-{client}",
            "client": client,
            "sub_account": "main",
            "asset": "USD",
            "amount": "250000.50",
            "bank_reference": "wire-1",
        },
        {
            "type": "deposit_fiat",
            "key": f"hkd-{client}",
            "client": client,
            "sub_account": "macro",
            "asset": "HKD",
            "amount": "780000.00",
            "bank_reference": "wire-2",
        },
        {
            "type": "detect_crypto_deposit",
            "key": f"eth-{client}",
            "client": client,
            "sub_account": "macro",
            "asset": "ETH",
            "amount": "1.000000000000000001",  # 18 decimals: exact or not at all
            "chain": "eth",
            "tx_hash": f"0x{client}",
            "required_confirmations": 1,
        },
        {
            "type": "confirm_crypto_deposit",
            "key": f"eth-{client}-ok",
            "tx_hash": f"0x{client}",
            "confirmations": 1,
        },
        {
            # A key that would end a ledger-cli payee early (';') and contains a tab.
            "type": "transfer",
            "key": f"move; {client}\tto macro",
            "client": client,
            "from_sub_account": "main",
            "to_sub_account": "macro",
            "asset": "USD",
            "amount": "1000.25",
        },
        {
            "type": "set_mark",
            "key": f"mark-{client}",
            "asset": "SOL",
            "quote": "USD",
            "price": "150",
        },
        {
            "type": "place_order",
            "key": f"order-{client}",
            "order": f"ord-{client}",
            "client": client,
            "sub_account": "main",
            "side": "buy",
            "base": "SOL",
            "quote": "USD",
            "quantity": "12.5",
            "limit_price": "145.00",
        },
        {
            "type": "record_fill",
            "key": f"fill-{client}",
            "order": f"ord-{client}",
            "fill": "fill-1",
            "price": "144.80",
            "quantity": "12.5",
            "liquidity": "maker",
            "counterparty": "local-book",
        },
        {
            "type": "charge_fee",
            "key": f"fee-{client}",
            "client": client,
            "sub_account": "macro",
            "asset": "USD",
            "amount": "12.00",
            "fee_type": "custody",
        },
    ]


@pytest.fixture
def fund_db(fresh_db_url: str) -> str:
    """A store holding the fund's day in ledger ``fund-day`` and some noise in another."""
    for name, client in ((LEDGER, "fund-a"), ("other", "fund-z")):
        book = Ledger(fresh_db_url, name, clock=stepping_clock(timedelta(hours=7)))
        try:
            results = book.submit(fund_day(client))
        finally:
            book.close()
        assert all(r.accepted for r in results), [r for r in results if not r.accepted]
    return fresh_db_url


def store_events(url: str, ledger: str) -> list[dict[str, Any]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT state FROM primeledger_events ORDER BY notification_id", binary=True
        ).fetchall()
    events = [orjson.loads(bytes(body)) for (body,) in rows]
    return [e for e in events if e["ledger"] == ledger]


def store_totals(events: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    totals: Counter[tuple[str, str]] = Counter()
    for event in events:
        for posting in event["postings"]:
            totals[posting["account"], posting["asset"]] += int(posting["units"])
    return {key: units for key, units in totals.items() if units}


def parse_journal(text: str) -> Iterator[tuple[str, int, str, list[tuple[str, str, str]]]]:
    """(date, position, type, postings) per transaction; comment lines come as no postings."""
    current: tuple[str, int, str, list[tuple[str, str, str]]] | None = None
    for line in text.splitlines():
        if match := POSTING.fullmatch(line):
            assert current is not None, f"posting outside a transaction: {line!r}"
            current[3].append(match.groups())  # type: ignore[arg-type]
            continue
        if current is not None:
            yield current
            current = None
        if match := HEADER.fullmatch(line):
            year, month, day, position, kind, _ = match.groups()
            current = (f"{year}-{month}-{day}", int(position), kind, [])
        elif match := COMMENT.fullmatch(line):
            year, month, day, position, kind = match.groups()
            yield (f"{year}-{month}-{day}", int(position), kind, [])
        else:
            assert line == "" or line.startswith("; PrimeLedger journal"), line
    if current is not None:
        yield current


def test_export_balances_and_matches_the_store(fund_db: str, tmp_path: Path) -> None:
    out = tmp_path / "fund.ledger"
    count = export(fund_db, LEDGER, out)

    events = store_events(fund_db, LEDGER)
    with_postings = [e for e in events if e["postings"]]
    assert count == len(with_postings) >= 6
    parsed = list(parse_journal(out.read_text()))
    # Every event once, in log order; the ones without postings as comments.
    assert [p[1] for p in parsed] == [e["position"] for e in events]
    totals: Counter[tuple[str, str]] = Counter()
    for (day, position, kind, postings), event in zip(parsed, events, strict=True):
        assert (position, kind) == (event["position"], event["type"])
        assert day == datetime.fromisoformat(event["time"]).astimezone(UTC).date().isoformat()
        assert len(postings) == len(event["postings"])
        per_commodity: Counter[str] = Counter()
        for account, amount, commodity in postings:
            units = parse_units(amount, commodity)  # refuses more decimals than the scale
            per_commodity[commodity] += units
            totals[account, commodity] += units
        assert not any(per_commodity.values()), f"position {position} does not balance"
    assert {k: v for k, v in totals.items() if v} == store_totals(events)
    assert len({day for day, *_ in parsed}) > 1  # the dates follow the events' times


def test_payee_keeps_a_hostile_key_on_one_line(fund_db: str, tmp_path: Path) -> None:
    out = tmp_path / "fund.ledger"
    export(fund_db, LEDGER, out)
    lines = out.read_text().splitlines()
    (payee,) = [line for line in lines if " transferred " in line]
    assert payee.endswith("transferred move? fund-a?to macro")


@pytest.mark.skipif(shutil.which("ledger") is None, reason="ledger-cli is not installed")
def test_ledger_cli_reads_the_journal_and_agrees(fund_db: str, tmp_path: Path) -> None:
    out = tmp_path / "fund.ledger"
    export(fund_db, LEDGER, out)
    done = subprocess.run(
        [
            "ledger",
            "-f",
            str(out),
            "balance",
            "--flat",
            "--no-total",
            "--balance-format",
            "%(account)\t%(join(scrub(display_total)))\n",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    reported: dict[tuple[str, str], int] = {}
    for line in done.stdout.splitlines():
        account, amounts = line.split("\t")
        # join() separates the commodities of one account with a literal backslash-n.
        for amount in amounts.split("\\n"):
            number, commodity = amount.split(" ")
            reported[account, commodity] = parse_units(number, commodity)
    assert reported == store_totals(store_events(fund_db, LEDGER))


def test_an_unknown_ledger_exports_no_transaction(fund_db: str, tmp_path: Path) -> None:
    out = tmp_path / "none.ledger"
    assert export(fund_db, "no-such-ledger", out) == 0
    assert [line for line in out.read_text().splitlines() if not line.startswith(";")] == []


def test_an_unbalanced_event_in_the_store_fails_the_export_and_leaves_no_file(
    fund_db: str, tmp_path: Path
) -> None:
    forged = transfer_body(units=("100", "-99"))
    with psycopg.connect(fund_db) as conn:
        conn.execute(
            "INSERT INTO primeledger_events (originator_id, originator_version, topic, state)"
            " VALUES (gen_random_uuid(), 1, 'transferred', %s)",
            (orjson.dumps(forged),),
        )
    out = tmp_path / "fund.ledger"
    with pytest.raises(ExportError, match=r"position 999: postings do not balance"):
        export(fund_db, LEDGER, out)
    assert list(tmp_path.iterdir()) == []  # neither the journal nor a partial file


def transfer_body(
    units: tuple[str, str] = ("100", "-100"), account: str = "client:fund-a:macro:available"
) -> dict[str, Any]:
    return {
        "ledger": LEDGER,
        "position": 999,
        "type": "transferred",
        "time": "2026-03-02T01:00:00+08:00",
        "key": "k",
        "data": {},
        "postings": [
            {"account": "client:fund-a:main:available", "asset": "USD", "units": units[0]},
            {"account": account, "asset": "USD", "units": units[1]},
        ],
    }


def test_a_transaction_uses_the_utc_day_and_the_assets_scale() -> None:
    text = transaction(transfer_body())
    assert text.split("\n") == [
        "2026/03/01 (999) transferred k",  # 01:00 at +08:00 is the previous day in UTC
        "    client:fund-a:main:available  1.00 USD",
        "    client:fund-a:macro:available  -1.00 USD",
        "",  # a blank line between transactions
        "",
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (transfer_body(account="client:fund a"), r"postings\[1\]\.account: 'client:fund a'"),
        (transfer_body(units=("1.5", "-1.5")), r"postings\[0\]\.units: '1.5'"),
        ({**transfer_body(), "time": "2026-03-02T01:00:00"}, r"no time zone offset"),
        ({**transfer_body(), "position": "7"}, r"position is not an integer"),
        ({k: v for k, v in transfer_body().items() if k != "key"}, r"malformed field"),
    ],
)
def test_malformed_events_are_refused_naming_the_field(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ExportError, match=message):
        transaction(body)
