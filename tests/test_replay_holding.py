"""A rebuild that holds writes back in memory builds exactly what page-by-page applying builds.

A replay into an empty generation holds summed balances, the trust reserve and the P&L state
in memory and writes them once (``projections.base.HoldsBack``). The reference here is the
live worker's path: every event applied on its own through ``apply_tracked``, and an event
that fails to apply left out, as the worker dead-letters it. The log is the demo trading day,
and forged events: a cancelled trade, events that must be left out (a cancellation of an
unknown trade, a trade cancelled twice, a trade id booked twice) and events that must not be
held back (amounts too large to hold).
"""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
import pytest

from projections import replay as replay_module
from projections.catalog import ALL, apply_tracked, read_models, unusable
from projections.decode import DecodeError, decode
from projections.generations import ensure_live, live_schemas
from projections.replay import replay
from tests.test_projections import LEDGER, build, hashes, stored

HUGE = 10**55  # fits NUMERIC(60,0), too large to hold back (base.HOLD_BACK_LIMIT)
TOO_LARGE = 10**61  # PostgreSQL refuses it in a NUMERIC(60,0) column


def forged(position: int, kind: str, data: dict[str, Any], postings: list[Any]) -> bytes:
    body = {
        "v": 1,
        "ledger": LEDGER,
        "position": position,
        "type": kind,
        "time": "2026-11-21T09:00:00+00:00",
        "data": data,
        "postings": postings,
        "key": f"forged-{position}",
        "prev": "0" * 64,
        "hash": "0" * 64,
    }
    return orjson.dumps(body)


def posting(account: str, asset: str, units: int) -> dict[str, str]:
    return {"account": account, "asset": asset, "units": str(units), "amount": "0"}


def trades_of(url: str) -> list[dict[str, Any]]:
    """The data of every trade booked in the log, in log order."""
    raws = [orjson.loads(body) for _, body in stored(url)]
    return [dict(raw["data"]) for raw in raws if raw["type"] == "trade_booked"]


def forge_events(url: str) -> None:
    """Append to the store: a cancellation, three events no read model can apply (an unknown
    trade cancelled, a trade cancelled twice, a trade id booked twice), two events too large
    to hold back, and one too large for PostgreSQL, which must fail alone, not the rebuild."""
    first, second = trades_of(url)[:2]
    whale = first | {"trade": "whale", "side": "buy", "quantity_units": str(HUGE)}
    whale |= {"client": "fund-x", "sub_account": "whales"}  # a pool of its own
    with psycopg.connect(url) as conn:
        head = conn.execute("SELECT max(originator_version) FROM primeledger_events").fetchone()
        assert head is not None
        position = int(head[0])
        bodies = [
            forged(position + 1, "trade_cancelled", {"trade": first["trade"]}, []),
            forged(position + 2, "trade_cancelled", {"trade": "no-such-trade"}, []),
            forged(position + 3, "trade_cancelled", {"trade": first["trade"]}, []),
            forged(position + 4, "trade_booked", second, []),
            forged(position + 5, "trade_booked", whale, []),
            forged(
                position + 6,
                "transferred",
                {},
                [
                    posting("client:fund-x:main:available", "USD", HUGE),
                    posting("custody:hot:w1", "USD", -HUGE),
                ],
            ),
            # No client posting (no history row): only the trust reserve's sums refuse it.
            forged(
                position + 7,
                "transferred",
                {},
                [
                    posting("custody:hot:w1", "USD", TOO_LARGE),
                    posting("house:fees", "USD", -TOO_LARGE),
                ],
            ),
        ]
        for body in bodies:
            conn.execute(
                "INSERT INTO primeledger_events (originator_id, originator_version, topic,"
                " state) VALUES (gen_random_uuid(), %s, %s, %s)",
                (orjson.loads(body)["position"], orjson.loads(body)["type"], body),
            )


def apply_one_by_one(url: str) -> list[str]:
    """The worker's path, one event per transaction; returns why events failed to apply."""
    models = read_models(ALL)
    failed: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        ensure_live(conn, models)
        for _, body in stored(url):
            try:
                event = decode(body)
            except DecodeError:
                continue
            if unusable(models, event) is not None:
                continue
            try:
                with conn.transaction(), conn.cursor() as cur:
                    live = live_schemas(cur, ALL)
                    for model in models:
                        apply_tracked(cur, model, live[model.name], [event])
            except (psycopg.errors.UniqueViolation, psycopg.errors.DataError, ValueError) as exc:
                failed.append(f"{type(exc).__name__}: {exc}")
    return failed


@pytest.fixture
def forged_url(fresh_db_url: str) -> str:
    build(fresh_db_url)
    forge_events(fresh_db_url)
    return fresh_db_url


@pytest.mark.parametrize(
    ("page_size", "workers", "max_held"),
    [(20_000, 0, 250_000), (7, 0, 250_000), (5, 2, 250_000), (11, 0, 3)],
)
def test_a_held_back_rebuild_equals_applying_event_by_event(
    forged_url: str, page_size: int, workers: int, max_held: int, monkeypatch: Any
) -> None:
    failed = apply_one_by_one(forged_url)
    assert len(failed) == 4
    assert sum("no booked trade" in reason for reason in failed) == 2
    assert sum("UniqueViolation" in reason for reason in failed) == 1
    assert sum("NumericValueOutOfRange" in reason for reason in failed) == 1
    reference = hashes(forged_url)
    monkeypatch.setattr(replay_module, "MAX_HELD", max_held)
    rebuilt = replay(forged_url, ALL, swap_in=False, page_size=page_size, workers=workers)
    assert rebuilt.skipped == 4
    assert sum("no booked trade" in reason for reason in rebuilt.reasons) == 2
    assert sum("UniqueViolation" in reason for reason in rebuilt.reasons) == 1
    assert sum("NumericValueOutOfRange" in reason for reason in rebuilt.reasons) == 1
    assert hashes(forged_url, rebuilt.schemas) == reference


def test_a_full_replay_swaps_in_what_applying_event_by_event_builds(forged_url: str) -> None:
    # After the bulk write, the catch-up and the final pass under the lock write page by
    # page, on top of what was held back and written.
    assert len(apply_one_by_one(forged_url)) == 4
    reference = hashes(forged_url)
    result = replay(forged_url, ALL, page_size=13)
    assert result.swapped
    assert hashes(forged_url) == reference
    with psycopg.connect(forged_url) as conn:
        schema = conn.execute(
            "SELECT schema FROM projection_live WHERE projection = 'pnl'"
        ).fetchone()
        assert schema is not None
        whale = conn.execute(
            f'SELECT quantity::text FROM "{schema[0]}".lots WHERE sub_account = %s',
            ("whales",),
        ).fetchall()
    assert whale == [(str(HUGE),)]  # the trade too large to hold back is in, exactly
