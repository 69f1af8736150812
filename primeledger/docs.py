"""Generated documents kept in the repository: JSON schemas and the AsyncAPI description.

``primeledger schema`` and ``primeledger asyncapi`` write them; a test regenerates them in
memory and fails when the committed copies are stale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from ledger.commands import COMMAND_ADAPTER
from ledger.events import EventV1

SCHEMAS_DIR = Path("docs/schemas")
ASYNCAPI_PATH = Path("docs/asyncapi.json")


def schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON schema, for every public input and output."""
    return {
        "command.schema.json": COMMAND_ADAPTER.json_schema(),
        "event-v1.schema.json": EventV1.model_json_schema(),
    }


def dumps(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


README_PATH = Path("README.md")
_CODES_HEADER = "| code | meaning |\n|---|---|\n"


def rejection_table() -> str:
    from ledger.errors import REJECTION_CODES

    return _CODES_HEADER + "".join(f"| `{k}` | {v} |\n" for k, v in REJECTION_CODES.items())


def update_readme(path: Path = README_PATH) -> None:
    """Rewrite the README's rejection-code table from ``REJECTION_CODES``."""
    text = path.read_text()
    start = text.index(_CODES_HEADER)
    end = start + len(_CODES_HEADER)
    while text.startswith("| `", end):
        end = text.index("\n", end) + 1
    path.write_text(text[:start] + rejection_table() + text[end:])


def write_asyncapi(path: Path = ASYNCAPI_PATH) -> Path:
    from streams.asyncapi import document

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(dumps(document()))
    return path


def write_schemas(directory: Path = SCHEMAS_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, document in schemas().items():
        path = directory / name
        path.write_bytes(dumps(document))
        written.append(path)
    return written
