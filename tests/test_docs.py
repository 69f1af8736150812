"""Generated documents in the repository are current, and the README's tables match the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ledger.errors import REJECTION_CODES
from primeledger import docs

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", sorted(docs.schemas()))
def test_committed_json_schemas_are_regenerated_from_the_code(name: str) -> None:
    committed = (ROOT / docs.SCHEMAS_DIR / name).read_bytes()
    assert committed == docs.dumps(docs.schemas()[name]), (
        f"docs/schemas/{name} is stale: run `.venv/bin/primeledger schema`"
    )


def test_committed_asyncapi_document_is_regenerated_from_the_code() -> None:
    from streams.asyncapi import document

    committed = (ROOT / docs.ASYNCAPI_PATH).read_bytes()
    assert committed == docs.dumps(document()), "stale: run `.venv/bin/primeledger asyncapi`"


def test_the_balance_feed_matches_its_published_schema() -> None:
    from projections.client_balances import feed_message
    from streams.asyncapi import BalanceV1

    message = feed_message(("main", "fund-a", "macro", "BTC"), {"available": 150_000_000}, 7)
    body = BalanceV1.model_validate_json(message.value)
    assert (body.client, body.balances["available"], body.total) == (
        "fund-a",
        "1.50000000",
        "1.50000000",
    )


def test_readme_lists_every_rejection_code_with_its_meaning() -> None:
    readme = (ROOT / "README.md").read_text()
    listed = dict(re.findall(r"^\| `([a-z_]+)` \| (.+) \|$", readme, flags=re.MULTILINE))
    assert listed == REJECTION_CODES


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    head = readme[: readme.index("## Topology")]
    assert "make demo" in head
    assert "make test" in head
    assert "make test" in (ROOT / ".ci" / "run").read_text()
