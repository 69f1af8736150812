"""The journal: sealed bodies round-trip, tampering is detected, unbalanced postings never seal."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from ledger import decide
from ledger.errors import LedgerFaultError
from ledger.events import EventV1
from ledger.journal import GENESIS_HASH, Entry, Posting, check_balanced, open_sealed, seal
from ledger.money import MAX_UNITS
from ledger.processing import ALL_DECIDERS, Processor
from ledger.state import LedgerState

TIME = "2026-01-01T00:00:00+00:00"
DEPOSIT: tuple[Posting, ...] = (
    ("trust_bank:trust-bank-1", "USD", 100_050),
    ("client:fund-a:main:available", "USD", -100_050),
)


def sealed(
    position: int = 1,
    prev: str = GENESIS_HASH,
    postings: tuple[Posting, ...] = DEPOSIT,
    data: dict[str, Any] | None = None,
) -> tuple[bytes, str]:
    return seal(
        ledger="t1",
        position=position,
        event_type="fiat_deposited",
        time=TIME,
        key=f"k{position}",
        data=data if data is not None else {"client": "fund-a", "units": "100050"},
        postings=postings,
        prev=prev,
    )


def chain(length: int) -> list[bytes]:
    bodies, prev = [], GENESIS_HASH
    for position in range(1, length + 1):
        body, prev = sealed(position, prev)
        bodies.append(body)
    return bodies


def replay(bodies: list[bytes]) -> Iterator[Entry]:
    prev = GENESIS_HASH
    for body in bodies:
        entry = open_sealed(body, prev=prev)
        prev = entry.hash
        yield entry


def reseal(body: dict[str, Any]) -> bytes:
    """What a forger would do: edit, then recompute the event's own hash."""
    body = {k: v for k, v in body.items() if k != "hash"}
    unhashed = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    digest = hashlib.sha256(unhashed).hexdigest()
    return orjson.dumps({**body, "hash": digest})


# --- round trip ---------------------------------------------------------------------------
def test_seal_then_open_returns_the_same_entry() -> None:
    body, digest = sealed()
    entry = open_sealed(body, prev=GENESIS_HASH)
    assert entry == Entry(
        position=1,
        type="fiat_deposited",
        time=TIME,
        key="k1",
        data={"client": "fund-a", "units": "100050"},
        postings=DEPOSIT,
        prev=GENESIS_HASH,
        hash=digest,
    )


def test_body_is_canonical_json_with_the_hash_last() -> None:
    body, digest = sealed()
    unhashed = body[: body.rindex(b',"hash":')] + b"}"
    assert orjson.dumps(orjson.loads(unhashed), option=orjson.OPT_SORT_KEYS) == unhashed
    assert hashlib.sha256(unhashed).hexdigest() == digest
    assert body.endswith(b'"hash":"' + digest.encode() + b'"}')
    assert b" " not in body


def test_postings_carry_units_and_formatted_amounts() -> None:
    body, _ = sealed()
    postings = orjson.loads(body)["postings"]
    assert postings == [
        {
            "account": "trust_bank:trust-bank-1",
            "amount": "1000.50",
            "asset": "USD",
            "units": "100050",
        },
        {
            "account": "client:fund-a:main:available",
            "amount": "-1000.50",
            "asset": "USD",
            "units": "-100050",
        },
    ]


def test_body_matches_the_public_event_schema() -> None:
    body, digest = sealed()
    event = EventV1.model_validate_json(body)
    assert event.hash == digest
    assert event.prev == GENESIS_HASH
    assert event.postings[1].units == "-100050"


def test_eth_near_max_units_survives_exactly() -> None:
    units = MAX_UNITS - 1
    postings: tuple[Posting, ...] = (
        ("custody:hot:hot-1", "ETH", units),
        ("external:chain", "ETH", -units),
    )
    body, _ = sealed(postings=postings)
    assert open_sealed(body).postings == postings
    assert b'"999999999999999999.999999999999999999"' in body  # not a lossy JSON number


def test_multi_asset_event_balances_per_asset() -> None:
    trade: tuple[Posting, ...] = (
        ("client:f:s:available", "USD", 6_500_000),
        ("house:otc_inventory", "USD", -6_500_000),
        ("house:otc_inventory", "BTC", 100_000_000),
        ("client:f:s:available", "BTC", -100_000_000),
    )
    body, _ = sealed(postings=trade)
    assert open_sealed(body).postings == trade


def test_a_chain_replays_in_order() -> None:
    entries = list(replay(chain(5)))
    assert [e.position for e in entries] == [1, 2, 3, 4, 5]
    assert all(b.prev == a.hash for a, b in itertools.pairwise(entries))


# --- unbalanced postings never seal -------------------------------------------------------
@pytest.mark.parametrize(
    "postings",
    [
        (("trust_bank:b", "USD", 100), ("client:f:s:available", "USD", -99)),
        (("trust_bank:b", "USD", 100),),
        (("trust_bank:b", "USD", 100), ("client:f:s:available", "BTC", -100)),
        (("trust_bank:b", "USD", 0), ("client:f:s:available", "USD", 0)),  # zero postings
        (("trust_bank:b", "XYZ", 1), ("client:f:s:available", "XYZ", -1)),  # unknown asset
    ],
)
def test_unbalanced_postings_are_refused_before_sealing(postings: tuple[Posting, ...]) -> None:
    with pytest.raises(LedgerFaultError):
        check_balanced(postings)
    with pytest.raises(LedgerFaultError):
        sealed(postings=postings)


def test_a_decider_that_drafts_unbalanced_postings_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug in a decider must stop at the seal: no event, state untouched."""

    def broken(*_: object) -> list[decide.Draft]:
        return [("mark_set", {}, (("house:fees", "USD", 1), ("house:interest", "USD", -2)))]

    monkeypatch.setitem(ALL_DECIDERS, "set_mark", broken)
    processor = Processor("t", LedgerState(), clock=lambda: datetime(2026, 1, 1, tzinfo=UTC))
    before = processor.state.to_snapshot()
    command = {"key": "m1", "type": "set_mark", "asset": "BTC", "quote": "USD", "price": "1.00"}
    with pytest.raises(LedgerFaultError, match="do not balance"):
        processor.process(command)
    assert processor.state.to_snapshot() == before


# --- tampering ----------------------------------------------------------------------------
def test_changed_amount_is_detected() -> None:
    body = orjson.loads(chain(1)[0])
    body["postings"][0]["units"] = "200050"
    body["postings"][1]["units"] = "-200050"  # still balanced: only the hash can tell
    with pytest.raises(LedgerFaultError, match="hash"):
        open_sealed(orjson.dumps(body))


def test_changed_data_is_detected() -> None:
    body = orjson.loads(chain(1)[0])
    body["data"]["client"] = "fund-b"
    with pytest.raises(LedgerFaultError, match="hash"):
        open_sealed(orjson.dumps(body))


def test_changed_prev_is_detected() -> None:
    first, second = chain(2)
    body = orjson.loads(second)
    body["prev"] = "f" * 64
    with pytest.raises(LedgerFaultError, match="hash"):
        open_sealed(orjson.dumps(body))
    # Even re-hashed by a forger, the link to the real previous event is broken.
    with pytest.raises(LedgerFaultError, match="chain"):
        open_sealed(reseal(body), prev=open_sealed(first).hash)


def test_reordered_events_are_detected() -> None:
    bodies = chain(3)
    with pytest.raises(LedgerFaultError, match="chain"):
        list(replay([bodies[0], bodies[2], bodies[1]]))


def test_removed_event_is_detected() -> None:
    bodies = chain(3)
    with pytest.raises(LedgerFaultError, match="chain"):
        list(replay([bodies[0], bodies[2]]))


def test_rehashed_forgery_breaks_the_next_link() -> None:
    bodies = chain(3)
    forged = orjson.loads(bodies[1])
    forged["data"]["client"] = "mallory"
    with pytest.raises(LedgerFaultError, match="chain"):
        list(replay([bodies[0], reseal(forged), bodies[2]]))


def test_rehashed_unbalanced_body_is_refused_when_opened() -> None:
    # Balance is checked twice: when sealing and again when reading.
    body = orjson.loads(chain(1)[0])
    body["postings"][0]["units"] = "1"
    with pytest.raises(LedgerFaultError, match="balance"):
        open_sealed(reseal(body))


def test_missing_hash_is_detected() -> None:
    body = orjson.loads(chain(1)[0])
    del body["hash"]
    with pytest.raises(LedgerFaultError):
        open_sealed(orjson.dumps(body))


@pytest.mark.parametrize("raw", [b"", b"{not json", b"[]", b"null", b'{"hash": 1'])
def test_garbage_body_is_a_ledger_fault(raw: bytes) -> None:
    # A store body that is not even JSON is tampering or corruption, not a parser crash.
    with pytest.raises(LedgerFaultError):
        open_sealed(raw)
