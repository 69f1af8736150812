"""Export one ledger's journal as a ledger-cli file, for accountants' own tools.

Every event with postings becomes one transaction, in commit order::

    2026/11/22 (2) fiat_deposited k2
        trust_bank:trust-bank-1  1000.50 USD
        client:fund-a:main:available  -1000.50 USD

The date is the UTC day of the event's time, the code in parentheses is the event's position in
the ledger's log (so a line of the journal leads back to the event), the payee is the event type
and its command's idempotency key. Amounts are the postings' integer units formatted with the
asset's scale from ``ledger.money`` (never through a float), commodity after the amount.
Events without postings (marks, tier changes, requests) carry no money: they are written as
comment lines, so the journal still shows every position.

The export streams: rows come from ``primeledger_events`` through a server-side cursor in
bounded batches and go straight to the file, so memory stays flat however long the log. The
file is written beside its destination and renamed into place only when complete, so a failed
export never leaves a truncated journal that a tool would read as the whole truth.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

import orjson
import psycopg

from ledger.money import ASSETS, format_units
from projections.base import EVENTS_TABLE

FETCH_ROWS: Final = 5_000  # rows per round trip of the server-side cursor
# What ledger-cli reads as one account name: no spaces (two of them end the name), no
# brackets or parentheses (virtual postings), no ';' (a comment).
_ACCOUNT: Final = re.compile(r"[A-Za-z0-9_.:\-]+")
_LETTERS: Final = re.compile(r"[A-Za-z]+")
_ISO_DAY: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T")
_UNITS: Final = re.compile(r"-?[0-9]{1,40}")  # as ledger.money bounds them
# Characters that could end a payee early (';' starts a note) or break the line.
_UNSAFE_PAYEE: Final = re.compile(r"[^\x21-\x3a\x3c-\x7e ]")


class ExportError(ValueError):
    """An event that cannot be written as a ledger-cli transaction; names the field."""


def export(url: str, ledger: str, out_path: str | os.PathLike[str]) -> int:
    """Write ledger ``ledger``'s journal to ``out_path``; return the number of transactions."""
    if not ledger:
        raise ExportError("ledger: a ledger name is required")
    target = Path(out_path)
    partial = target.with_name(target.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8", newline="\n") as out:
            out.write(f"; PrimeLedger journal of ledger {ledger}, exported by primeledger\n")
            count = write_journal(out, ledger, _bodies(url))
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return count


def _bodies(url: str) -> Iterator[bytes]:
    """Every event body in commit order, through a server-side cursor (never all at once)."""
    with psycopg.connect(url) as conn, conn.cursor(name="export_ledger", binary=True) as cur:
        # Every ledger's log shares the table; the originator id that separates them is the
        # writer's internal mapping, so the public body's "ledger" field is what selects.
        cur.execute(f"SELECT state FROM {EVENTS_TABLE} ORDER BY notification_id")
        while rows := cur.fetchmany(FETCH_ROWS):
            for (body,) in rows:
                yield bytes(body)


def write_journal(out: IO[str], ledger: str, bodies: Iterable[bytes]) -> int:
    """Write the events of ``ledger`` among ``bodies`` to ``out``; return the transactions."""
    count = 0
    for body in bodies:
        try:
            event = orjson.loads(body)
        except orjson.JSONDecodeError as err:
            raise ExportError(f"event body: not JSON ({err})") from err
        if event.get("ledger") != ledger:
            continue
        text = transaction(event)
        out.write(text)
        count += text[0] != ";"
    return count


def transaction(event: Mapping[str, Any]) -> str:
    """One event as ledger-cli text: a transaction, or a comment if it has no postings."""
    position = event.get("position")
    where = f"event at position {position!r}"
    if not isinstance(position, int) or isinstance(position, bool):
        raise ExportError(f"{where}: position is not an integer")
    try:
        header = f"{_date(event['time'])} ({position}) {event['type']} {event['key']}"
        postings = event["postings"]
    except (KeyError, TypeError, ValueError) as err:
        raise ExportError(f"{where}: missing or malformed field ({err!r})") from err
    header = _UNSAFE_PAYEE.sub("?", header)
    if not postings:
        return f"; {header} (no postings)\n"
    lines = [header]
    totals: dict[str, int] = {}
    for index, posting in enumerate(postings):
        account, asset_code, units = _posting(posting, f"{where}: postings[{index}]")
        totals[asset_code] = totals.get(asset_code, 0) + units
        lines.append(f"    {account}  {format_units(units, asset_code)} {_commodity(asset_code)}")
    # The writer guarantees this; checked again after reading, as every reader of the log does.
    unbalanced = {code: total for code, total in totals.items() if total}
    if unbalanced:
        raise ExportError(f"{where}: postings do not balance per asset: {unbalanced}")
    return "\n".join(lines) + "\n\n"


def _posting(posting: Any, where: str) -> tuple[str, str, int]:
    try:
        account, asset_code, text = posting["account"], posting["asset"], posting["units"]
    except (KeyError, TypeError) as err:
        raise ExportError(f"{where}: missing field {err}") from err
    if not isinstance(account, str) or not _ACCOUNT.fullmatch(account):
        raise ExportError(f"{where}.account: {account!r} is not a ledger-cli account name")
    if asset_code not in ASSETS:
        raise ExportError(f"{where}.asset: {asset_code!r} is not a registered asset")
    if not isinstance(text, str) or not _UNITS.fullmatch(text):
        raise ExportError(f"{where}.units: {text!r} is not an integer string")
    return account, asset_code, int(text)


def _date(time: Any) -> str:
    """The UTC calendar day of an ISO-8601 time with offset, as ledger-cli writes dates."""
    if not isinstance(time, str):
        raise ValueError(f"time: {time!r} is not a string")
    if time.endswith("+00:00") and _ISO_DAY.match(time):
        return time[:10].replace("-", "/")  # the writer's form: UTC already, no parse needed
    moment = datetime.fromisoformat(time)
    if moment.utcoffset() is None:
        raise ValueError(f"time: {time!r} has no time zone offset")
    return moment.astimezone(UTC).strftime("%Y/%m/%d")


def _commodity(code: str) -> str:
    # ledger-cli reads a bare commodity only if it is letters; others (e.g. "USDC2") are quoted.
    return code if _LETTERS.fullmatch(code) else f'"{code}"'
