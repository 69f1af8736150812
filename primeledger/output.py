"""Rows out as a rich table, JSON or CSV: every read command offers the three."""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Sequence
from typing import Any, Literal

import orjson
from rich.console import Console
from rich.table import Table

Format = Literal["table", "json", "csv"]


def render(rows: Sequence[dict[str, Any]], fmt: Format = "table", title: str = "") -> str:
    if fmt == "json":
        return orjson.dumps(list(rows), option=orjson.OPT_INDENT_2).decode()
    columns = list(dict.fromkeys(k for row in rows for k in row))
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({c: _cell(row.get(c)) for c in columns} for row in rows)
        return buffer.getvalue()
    table = Table(title=title or None, show_lines=False)
    for column in columns:
        numeric = bool(rows) and _numeric(rows[0].get(column, ""))
        table.add_column(column, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    console = Console(file=io.StringIO(), width=max(100, _width()), force_terminal=False)
    console.print(table if rows else f"{title}: (none)")
    out = console.file.getvalue()  # type: ignore[attr-defined]
    return str(out)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value)
    return str(value)


def _numeric(value: Any) -> bool:
    text = str(value)
    return bool(text) and text.lstrip("-").replace(".", "", 1).isdigit()


def _width() -> int:
    try:
        import shutil

        # Not a terminal (a pipe, CI, make): wide enough for the widest report.
        return shutil.get_terminal_size((180, 40)).columns
    except OSError:
        return 180


def emit(rows: Sequence[dict[str, Any]], fmt: Format = "table", title: str = "") -> None:
    sys.stdout.write(render(rows, fmt, title))
    if not sys.stdout.isatty() or fmt != "table":
        sys.stdout.flush()
