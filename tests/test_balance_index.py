"""Balances as of a time or position, and ``explain``, read the store through a per-event index.

The balances read model keeps one row per (event, client touched) in ``client_events``; the
queries read those events' bodies from the store, the system of record. Expected values come
from the write side (``Ledger.read`` of the posting sums, captured between batches of
commands) or are worked out by hand, never from the queries themselves. A body the index points
at that is missing or no longer matches is a corrupt store and must fail loudly, naming the
position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
import pytest
from psycopg import sql

from ledger.application import Ledger
from ledger.events import ledger_id
from primeledger.scenario import SimClock
from projections import queries
from projections.base import ProjectionSetupError
from projections.catalog import ALL
from projections.client_balances import ClientBalances
from projections.decode import decode
from projections.generations import live_schemas
from projections.queries import Balance, CorruptStoreError
from projections.replay import replay

START = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
Sums = dict[tuple[str, str, str, str], int]  # (client, sub-account, asset, bucket) -> units


def open_clients(prefix: str) -> list[dict[str, Any]]:
    return [
        {"type": "open_client", "key": f"{prefix}o1", "client": "fund-a", "name": "A",
         "sub_accounts": ["main", "alpha"]},
        {"type": "open_client", "key": f"{prefix}o2", "client": "fund-b", "name": "B",
         "sub_accounts": ["main"]},
    ]  # fmt: skip


def deposit(key: str, client: str, amount: str, sub: str = "main") -> dict[str, Any]:
    return {"type": "deposit_fiat", "key": key, "client": client, "sub_account": sub,
            "asset": "USD", "amount": amount, "bank_reference": f"ref-{key}"}  # fmt: skip


def fee(key: str, client: str, amount: str) -> dict[str, Any]:
    return {"type": "charge_fee", "key": key, "client": client, "sub_account": "main",
            "asset": "USD", "amount": amount, "fee_type": "custody"}  # fmt: skip


# Three phases an hour apart: deposits, then fees, a transfer and a posted hold, then more.
PHASES: list[list[dict[str, Any]]] = [
    [
        *open_clients("p"),
        deposit("p1", "fund-a", "1000.00"),
        deposit("p2", "fund-b", "500.00"),
        {"type": "detect_crypto_deposit", "key": "p3", "client": "fund-a", "sub_account": "main",
         "asset": "ETH", "amount": "2.5", "chain": "eth", "tx_hash": "0xa1",
         "required_confirmations": 1},
        {"type": "confirm_crypto_deposit", "key": "p4", "tx_hash": "0xa1", "confirmations": 1},
    ],
    [
        fee("q1", "fund-a", "10.00"),
        {"type": "transfer", "key": "q2", "client": "fund-a", "from_sub_account": "main",
         "to_sub_account": "alpha", "asset": "USD", "amount": "100"},
        deposit("q3", "fund-b", "250.00"),
        {"type": "place_hold", "key": "q4", "hold": "h1", "client": "fund-a",
         "sub_account": "main", "asset": "USD", "amount": "50", "payee": "counterparty:lp1",
         "expires_at": "2030-01-01T00:00:00+00:00"},
    ],
    [
        {"type": "post_hold", "key": "r1", "hold": "h1", "amount": "20"},
        fee("r2", "fund-b", "1.25"),
        deposit("r3", "fund-a", "7.77", "alpha"),
    ],
]  # fmt: skip


@dataclass(frozen=True)
class Checkpoint:
    """The write side's client balances once a phase was durable, and where the log stood."""

    position: int
    time: datetime  # the last clock reading of the phase: no later event is this early
    sums: Sums


def client_sums(posting_sums: dict[tuple[str, str], int]) -> Sums:
    """Client accounts' balances in normal direction (liabilities: minus the posting sum)."""
    out: Sums = {}
    for (account, asset), units in posting_sums.items():
        kind, *parts = account.split(":")
        if kind == "client" and units:
            client, sub, bucket = parts
            out[(client, sub, asset, bucket)] = -units
    return out


def as_sums(found: list[Balance]) -> Sums:
    return {
        (b.client, b.sub_account, b.asset, bucket): units
        for b in found
        for bucket, units in b.units.items()
        if units
    }


def only(sums: Sums, client: str) -> Sums:
    return {key: units for key, units in sums.items() if key[0] == client}


def run_phases(url: str, ledger: str, phases: list[list[dict[str, Any]]]) -> list[Checkpoint]:
    """Submit each phase an hour after the last; a checkpoint of the write side after each."""
    clock = SimClock(START)
    writer = Ledger(url, ledger, clock=clock)
    checkpoints = []
    try:
        for hour, commands in enumerate(phases):
            clock.at(START + timedelta(hours=hour))
            results = writer.submit(commands)
            assert all(r.accepted for r in results), [r for r in results if not r.accepted]
            position, sums = writer.read(lambda s: (s.position, dict(s.balances)))
            checkpoints.append(Checkpoint(position, clock.now, client_sums(sums)))
    finally:
        writer.close()
    return checkpoints


@pytest.fixture
def phased(fresh_db_url: str) -> tuple[str, list[Checkpoint]]:
    """Ledger ``t`` after the three phases, its read models rebuilt; the checkpoints."""
    checkpoints = run_phases(fresh_db_url, "t", PHASES)
    replay(fresh_db_url, ALL)
    return fresh_db_url, checkpoints


def store_bodies(url: str, ledger: str) -> dict[int, dict[str, Any]]:
    """The ledger's event bodies by position, parsed as plain JSON (no read-side code)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT originator_version, state FROM primeledger_events WHERE originator_id = %s",
            [ledger_id(ledger)],
        ).fetchall()
    return {int(p): orjson.loads(bytes(body)) for p, body in rows}


def touching(bodies: dict[int, dict[str, Any]], client: str, asset: str) -> list[int]:
    prefix = f"client:{client}:"
    return sorted(
        position
        for position, body in bodies.items()
        if any(p["account"].startswith(prefix) and p["asset"] == asset for p in body["postings"])
    )


def set_body(url: str, ledger: str, position: int, body: bytes | None) -> None:
    """Alter the store behind the read model's back (``None`` deletes the row)."""
    with psycopg.connect(url) as conn:
        if body is None:
            conn.execute(
                "DELETE FROM primeledger_events WHERE originator_id = %s"
                " AND originator_version = %s",
                [ledger_id(ledger), position],
            )
        else:
            conn.execute(
                "UPDATE primeledger_events SET state = %s WHERE originator_id = %s"
                " AND originator_version = %s",
                [body, ledger_id(ledger), position],
            )


# --- as of a position or a time equals the write side then --------------------------------


def test_as_of_a_position_equals_the_write_side_at_that_position(
    phased: tuple[str, list[Checkpoint]],
) -> None:
    url, checkpoints = phased
    assert len({c.position for c in checkpoints}) == len(checkpoints)
    for point in checkpoints:
        assert as_sums(queries.balances(url, "t", as_of_position=point.position)) == point.sums
        for client in ("fund-a", "fund-b"):
            found = queries.balances(url, "t", client, as_of_position=point.position)
            assert as_sums(found) == only(point.sums, client)
    assert queries.balances(url, "t", as_of_position=0) == []


def test_as_of_a_time_equals_the_write_side_at_that_time(
    phased: tuple[str, list[Checkpoint]],
) -> None:
    url, checkpoints = phased
    bodies = store_bodies(url, "t")
    for point in checkpoints:
        # The phase's last event counts at its own time (inclusive), not a microsecond before.
        last = datetime.fromisoformat(bodies[point.position]["time"])
        before = queries.balances(url, "t", as_of=last - timedelta(microseconds=1))
        assert as_sums(before) != point.sums
        for moment in (last, point.time + timedelta(minutes=30)):
            assert as_sums(queries.balances(url, "t", as_of=moment)) == point.sums
            found = queries.balances(url, "t", "fund-a", as_of=moment.isoformat())
            assert as_sums(found) == only(point.sums, "fund-a")
    assert queries.balances(url, "t", as_of=START) == []


def test_as_of_time_and_position_together_take_the_earlier(
    phased: tuple[str, list[Checkpoint]],
) -> None:
    url, (first, second, _) = phased
    found = queries.balances(url, "t", as_of=second.time, as_of_position=first.position)
    assert as_sums(found) == first.sums
    found = queries.balances(url, "t", as_of=first.time, as_of_position=second.position)
    assert as_sums(found) == first.sums


def test_as_of_without_a_client_streams_the_log_in_pages(
    phased: tuple[str, list[Checkpoint]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, checkpoints = phased
    monkeypatch.setattr(queries, "INDEXED_PAGE", 2)  # many server-side fetches, same answer
    last = checkpoints[-1]
    assert as_sums(queries.balances(url, "t", as_of_position=last.position)) == last.sums
    assert as_sums(queries.balances(url, "t", as_of=last.time)) == last.sums


def test_as_of_needs_a_time_zone(phased: tuple[str, list[Checkpoint]]) -> None:
    url, _ = phased
    with pytest.raises(ValueError, match=r"as_of: .* needs a time zone offset"):
        queries.balances(url, "t", as_of="2026-11-20T10:00:00")


# --- explain reads one client's events -----------------------------------------------------


def test_explain_lists_the_clients_events_from_the_store(
    phased: tuple[str, list[Checkpoint]],
) -> None:
    url, checkpoints = phased
    bodies = store_bodies(url, "t")
    why = queries.explain(url, "t", "fund-a", "USD")
    assert [e.position for e in why.events] == touching(bodies, "fund-a", "USD")
    final = checkpoints[-1].sums
    expected = sum(u for (c, _, a, _), u in final.items() if (c, a) == ("fund-a", "USD"))
    assert why.total == why.balance == expected == 100000 - 1000 - 2000 + 777
    for item in why.events:
        body = bodies[item.position]
        assert (item.type, datetime.fromisoformat(item.time)) == (
            body["type"],
            datetime.fromisoformat(body["time"]),
        )
        assert sorted(item.postings) == sorted(
            (p["account"], int(p["units"]))
            for p in body["postings"]
            if p["account"].startswith("client:fund-a:") and p["asset"] == "USD"
        )
    # The transfer moves 100 USD from main to alpha: both legs, alpha first (sub-account order).
    transfer = next(e for e in why.events if e.type == "transferred")
    assert transfer.postings == [
        ("client:fund-a:alpha:available", -10000),
        ("client:fund-a:main:available", 10000),
    ]
    alpha = queries.explain(url, "t", "fund-a", "USD", "alpha")
    assert [e.change for e in alpha.events] == [10000, 777]
    assert alpha.total == alpha.balance == 10777
    assert queries.explain(url, "t", "fund-c", "USD").events == []


def test_a_clients_queries_read_only_that_clients_events(
    phased: tuple[str, list[Checkpoint]],
) -> None:
    url, checkpoints = phased
    bodies = store_bodies(url, "t")
    # Garble every event of fund-b's that does not touch fund-a: any query that read one of
    # them would fail, so fund-a's answers prove they read fund-a's events only.
    garbled = [
        p
        for p in touching(bodies, "fund-b", "USD")
        if not any(x["account"].startswith("client:fund-a:") for x in bodies[p]["postings"])
    ]
    assert len(garbled) == 3
    for position in garbled:
        set_body(url, "t", position, b"not json")
    last = checkpoints[-1]
    why = queries.explain(url, "t", "fund-a", "USD")
    assert why.total == why.balance == 100000 - 1000 - 2000 + 777
    found = queries.balances(url, "t", "fund-a", as_of_position=last.position)
    assert as_sums(found) == only(last.sums, "fund-a")
    with pytest.raises(CorruptStoreError, match=f"position {garbled[0]}:"):
        queries.balances(url, "t", "fund-b", as_of_position=last.position)
    with pytest.raises(CorruptStoreError, match=f"position {garbled[0]}:"):
        queries.balances(url, "t", as_of=last.time)


# --- one client in two ledgers -------------------------------------------------------------


def test_a_client_in_two_ledgers_is_explained_per_ledger(fresh_db_url: str) -> None:
    # The same positions exist in both logs, with other amounts: a query that mixed the logs
    # up would show it.
    one = run_phases(fresh_db_url, "one", PHASES)
    two = run_phases(
        fresh_db_url,
        "two",
        [[*open_clients("x"), deposit("x1", "fund-a", "3.00"), fee("x2", "fund-a", "0.50")]],
    )
    replay(fresh_db_url, ALL)
    in_two = queries.explain(fresh_db_url, "two", "fund-a", "USD")
    assert [(e.type, e.change) for e in in_two.events] == [
        ("fiat_deposited", 300),
        ("fee_charged", -50),
    ]
    assert in_two.balance == 250
    in_one = queries.explain(fresh_db_url, "one", "fund-a", "USD")
    assert in_one.total == in_one.balance == 100000 - 1000 - 2000 + 777
    assert [e.position for e in in_one.events] == touching(
        store_bodies(fresh_db_url, "one"), "fund-a", "USD"
    )
    assert {e.position for e in in_one.events} & {e.position for e in in_two.events}
    # Ledger two ends before the first checkpoint of ledger one.
    position = one[0].position
    assert two[-1].position < position
    found = queries.balances(fresh_db_url, "one", "fund-a", as_of_position=position)
    assert as_sums(found) == only(one[0].sums, "fund-a")
    assert as_sums(queries.balances(fresh_db_url, "two", as_of_position=position)) == two[-1].sums
    assert as_sums(queries.balances(fresh_db_url, "two", "fund-a", as_of=two[-1].time)) == {
        ("fund-a", "main", "USD", "available"): 250
    }


# --- an event that touches two clients -----------------------------------------------------


def test_an_event_touching_two_clients_is_indexed_for_both(fresh_db_url: str) -> None:
    checkpoints = run_phases(fresh_db_url, "t", PHASES[:1])
    head = checkpoints[-1].position
    # The writer has no command that moves money between two clients; append such an event
    # to the store directly (the read side does not verify the hash chain, the writer does).
    body = store_bodies(fresh_db_url, "t")[head] | {
        "position": head + 1,
        "type": "transferred",
        "postings": [
            {"account": "client:fund-a:main:available", "asset": "USD",
             "units": "2500", "amount": "25.00"},
            {"account": "client:fund-b:main:available", "asset": "USD",
             "units": "-2500", "amount": "-25.00"},
        ],
    }  # fmt: skip
    with psycopg.connect(fresh_db_url) as conn:
        conn.execute(
            "INSERT INTO primeledger_events (originator_id, originator_version, topic, state)"
            " VALUES (%s, %s, %s, %s)",
            [ledger_id("t"), head + 1, "transferred", orjson.dumps(body)],
        )
    replay(fresh_db_url, ALL)
    for client, change in (("fund-a", -2500), ("fund-b", 2500)):
        why = queries.explain(fresh_db_url, "t", client, "USD")
        assert (why.events[-1].position, why.events[-1].change) == (head + 1, change)
        assert why.total == why.balance
    found = as_sums(queries.balances(fresh_db_url, "t", as_of_position=head + 1))
    assert found == checkpoints[-1].sums | {
        ("fund-a", "main", "USD", "available"): 100000 - 2500,
        ("fund-b", "main", "USD", "available"): 50000 + 2500,
    }


# --- a corrupt store fails loudly ----------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("garbage", "the stored event does not decode: "),
        ("other position", "the stored event says ledger 't', position 1"),
        ("deleted", "indexed by the balances read model, not in the store"),
    ],
)
def test_a_corrupt_indexed_body_names_its_position(
    phased: tuple[str, list[Checkpoint]], change: str, message: str
) -> None:
    url, checkpoints = phased
    bodies = store_bodies(url, "t")
    position = touching(bodies, "fund-a", "USD")[1]
    replacement = {
        "garbage": b"not json",
        "other position": orjson.dumps(bodies[1]),
        "deleted": None,
    }[change]
    set_body(url, "t", position, replacement)
    expected = re.escape(f"ledger 't', position {position}: {message}")
    with pytest.raises(CorruptStoreError, match=expected):
        queries.explain(url, "t", "fund-a", "USD")
    with pytest.raises(CorruptStoreError, match=expected):
        queries.balances(url, "t", "fund-a", as_of_position=checkpoints[-1].position)
    with pytest.raises(CorruptStoreError, match=expected):
        queries.balances(url, "t", as_of=checkpoints[-1].time)
    # Today's balances come from the read model's own table and still answer.
    assert as_sums(queries.balances(url, "t")) == checkpoints[-1].sums


# --- a generation built before the index ---------------------------------------------------


def test_a_generation_without_the_index_is_a_setup_error(
    phased: tuple[str, list[Checkpoint]],
) -> None:
    url, checkpoints = phased
    bodies = store_bodies(url, "t")
    deposit_body = bodies[touching(bodies, "fund-b", "USD")[0]]
    with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        schema = live_schemas(cur, ["client_balances"], lock=False)["client_balances"]
        cur.execute(sql.SQL("DROP TABLE {}.client_events").format(sql.Identifier(schema)))
    # The worker must stop (not dead-letter every client event) and queries must say why.
    with pytest.raises(ProjectionSetupError, match="replay the balances read model"):
        queries.explain(url, "t", "fund-a", "USD")
    with pytest.raises(ProjectionSetupError, match="replay the balances read model"):
        queries.balances(url, "t", as_of_position=checkpoints[0].position)
    with (
        psycopg.connect(url) as conn,
        conn.cursor() as cur,
        pytest.raises(ProjectionSetupError, match=f"{schema} has no client_events table"),
    ):
        ClientBalances().apply(cur, schema, [decode(orjson.dumps(deposit_body))])
