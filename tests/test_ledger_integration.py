"""The single writer against a real (embedded) PostgreSQL: restarts, fencing, retries, faults.

Every test gets its own empty database (``fresh_db_url``). Waits are bounded and poll a
condition; nothing sleeps to synchronise.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
import pytest

from ledger.application import Ledger, load_state
from ledger.decide import Draft
from ledger.errors import LedgerFaultError, StorageUnavailableError, WriterFencedError
from ledger.money import MAX_UNITS, format_units
from ledger.processing import ALL_DECIDERS
from ledger.results import CommandResult
from ledger.state import LedgerState
from ledger.store import LedgerStore, ledger_id

WAIT = 60.0  # seconds: generous, and only ever spent when something is wrong


# --- helpers ------------------------------------------------------------------------------
def sql(url: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def stored_events(url: str, name: str) -> list[tuple[int, str, dict[str, Any]]]:
    rows = sql(
        url,
        "SELECT originator_version, topic, state FROM primeledger_events"
        " WHERE originator_id = %s ORDER BY originator_version",
        ledger_id(name),
    )
    return [(int(position), topic, orjson.loads(body)) for position, topic, body in rows]


def count(url: str, table: str) -> int:
    return int(sql(url, f"SELECT count(*) FROM {table}")[0][0])


def comparable(snapshot: bytes) -> Any:
    body = orjson.loads(snapshot)
    body["balances"] = sorted(body["balances"])
    return body


def live(ledger: Ledger) -> bytes:
    return ledger.read(lambda s: s.to_snapshot())


def loaded(url: str, name: str) -> LedgerState:
    store = LedgerStore(url, name)
    try:
        return load_state(store)
    finally:
        store.close()


def check_invariants(state: LedgerState) -> None:
    sums: dict[str, int] = {}
    for (account, code), units in state.balances.items():
        sums[code] = sums.get(code, 0) + units
        if account.startswith("client:"):
            assert units <= 0, f"{account} {code} is below zero"
    assert all(total == 0 for total in sums.values()), sums


def open_fund(
    client: str = "fund", subs: Sequence[str] = ("s1", "s2", "s3")
) -> list[dict[str, Any]]:
    return [
        {
            "key": f"open-{client}",
            "type": "open_client",
            "client": client,
            "name": client,
            "sub_accounts": list(subs),
        },
        *(
            {
                "key": f"fund-{client}-{sub}",
                "type": "deposit_fiat",
                "client": client,
                "sub_account": sub,
                "asset": "USD",
                "amount": "1000.00",
                "bank_reference": f"ref-{client}-{sub}",
            }
            for sub in subs
        ),
    ]


def activity(prefix: str, n: int) -> Iterator[dict[str, Any]]:
    """A varied, deterministic stream of commands for the fund: accepted and rejected."""
    rng = random.Random(prefix)
    for i in range(n):
        key = f"{prefix}-{i}"
        a, b = rng.sample(["s1", "s2", "s3"], 2)
        amount = format_units(rng.randint(1, 30_000), "USD")
        kind = rng.choice(["transfer", "fee", "hold", "crypto", "whitelist"])
        if kind == "transfer":
            yield {
                "key": key,
                "type": "transfer",
                "client": "fund",
                "from_sub_account": a,
                "to_sub_account": b,
                "asset": "USD",
                "amount": amount,
            }
        elif kind == "fee":
            yield {
                "key": key,
                "type": "charge_fee",
                "client": "fund",
                "sub_account": a,
                "asset": "USD",
                "amount": amount,
                "fee_type": "custody",
            }
        elif kind == "hold":
            yield {
                "key": key,
                "type": "place_hold",
                "hold": key,
                "client": "fund",
                "sub_account": a,
                "asset": "USD",
                "amount": amount,
                "payee": "house:fees",
                "expires_at": "2030-01-01T00:00:00+00:00",
            }
        elif kind == "crypto":
            yield {
                "key": key,
                "type": "detect_crypto_deposit",
                "client": "fund",
                "sub_account": a,
                "asset": "BTC",
                "amount": "0.5",
                "chain": "btc",
                "tx_hash": key,
                "required_confirmations": 1,
            }
            yield {
                "key": f"{key}-c",
                "type": "confirm_crypto_deposit",
                "tx_hash": key,
                "confirmations": 1,
            }
        else:
            yield {
                "key": key,
                "type": "whitelist_destination",
                "client": "fund",
                "destination": key,
                "asset": "BTC",
                "address": "bc1q",
            }


def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {WAIT:.0f} s waiting for {what}")
        time.sleep(0.01)


class Background:
    """A call on another thread; its result or exception is collected by ``outcome``."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()

        def run() -> None:
            try:
                self.value = call()
            except BaseException as exc:
                self.error = exc
            finally:
                self.done.set()

        threading.Thread(target=run, daemon=True).start()


# --- restart recovery ---------------------------------------------------------------------
@pytest.mark.parametrize("snapshot_every", [5, 50_000], ids=["snapshots", "no-snapshots"])
def test_restart_recovers_the_state(fresh_db_url: str, snapshot_every: int) -> None:
    commands = [*open_fund(), *activity("a", 30)]
    with Ledger(fresh_db_url, "t", snapshot_every=snapshot_every) as ledger:
        for start in range(0, len(commands), 7):
            ledger.submit(commands[start : start + 7])
        before = live(ledger)
        head = ledger.position
    snapshots = count(fresh_db_url, "primeledger_snapshots")
    assert (snapshots > 0) == (snapshot_every == 5)

    with Ledger(fresh_db_url, "t", snapshot_every=snapshot_every) as reopened:
        assert comparable(live(reopened)) == comparable(before)
        # The log goes on from where it stopped, chained to the last event.
        more = reopened.submit(list(activity("b", 10)))
        assert any(r.accepted for r in more)
        after = live(reopened)
    state = loaded(fresh_db_url, "t")
    assert comparable(state.to_snapshot()) == comparable(after)
    assert state.position > head
    assert [p for p, _, _ in stored_events(fresh_db_url, "t")] == list(range(1, state.position + 1))
    check_invariants(state)


TYPES_WITH_DATA = {"place_hold", "detect_crypto_deposit"}


@pytest.mark.parametrize("snapshot_every", [3, 50_000], ids=["snapshots", "no-snapshots"])
def test_restart_gives_byte_identical_state(fresh_db_url: str, snapshot_every: int) -> None:
    # Snapshots are taken from the live state and compared as bytes by the audit; a restart
    # must give exactly the bytes the writer had, also for events replayed after a snapshot.
    with Ledger(fresh_db_url, "t", snapshot_every=snapshot_every) as ledger:
        ledger.submit([*open_fund(), *activity("a", 12)])
        # Fewer events than snapshot_every, of the kinds whose state holds event data.
        tail = [c for c in activity("tail", 12) if c["type"] in TYPES_WITH_DATA][:2]
        assert len(tail) == 2
        ledger.submit(tail)
        before = live(ledger)
    with Ledger(fresh_db_url, "t", snapshot_every=snapshot_every) as reopened:
        assert live(reopened) == before


# --- fencing ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["accepted", "only-rejections"])
def test_a_second_writer_fences_the_first(fresh_db_url: str, kind: str) -> None:
    first = Ledger(fresh_db_url, "t")
    try:
        first.submit(open_fund())
        second = Ledger(fresh_db_url, "t")
        try:
            late = (
                {
                    "key": "late",
                    "type": "charge_fee",
                    "client": "fund",
                    "sub_account": "s1",
                    "asset": "USD",
                    "amount": "1.00",
                    "fee_type": "other",
                }
                if kind == "accepted"
                else {
                    "key": "late",
                    "type": "transfer",
                    "client": "nobody",
                    "from_sub_account": "s1",
                    "to_sub_account": "s2",
                    "asset": "USD",
                    "amount": "1.00",
                }
            )
            with pytest.raises(WriterFencedError):
                first.submit([late])
            with pytest.raises(WriterFencedError):  # and for good
                first.submit_one({**late, "key": "later"})
            result = second.submit_one({**late, "key": "second"})
            assert result.accepted == (kind == "accepted")
            final = live(second)
        finally:
            second.close()
    finally:
        first.close()
    # The store holds the first writer's events, then the second's: nothing interleaved.
    events = stored_events(fresh_db_url, "t")
    assert [p for p, _, _ in events] == list(range(1, len(events) + 1))
    assert [body["key"] for _, _, body in events][-1] == (
        "second" if kind == "accepted" else "fund-fund-s3"
    )
    keys = {row[0] for row in sql(fresh_db_url, "SELECT key FROM primeledger_commands")}
    assert "late" not in keys
    assert "later" not in keys
    assert comparable(loaded(fresh_db_url, "t").to_snapshot()) == comparable(final)


# --- idempotency across restarts ----------------------------------------------------------
def test_retries_across_a_restart_replay_and_write_nothing(fresh_db_url: str) -> None:
    overdraft = {
        "key": "too-much",
        "type": "charge_fee",
        "client": "fund",
        "sub_account": "s1",
        "asset": "USD",
        "amount": "5000.00",
        "fee_type": "other",
    }
    commands = [*open_fund(), *activity("a", 15), overdraft]
    with Ledger(fresh_db_url, "t") as ledger:
        first = ledger.submit(commands)
    assert any(not r.accepted for r in first)  # rejections are replayed too
    events, records = (
        count(fresh_db_url, "primeledger_events"),
        count(fresh_db_url, "primeledger_commands"),
    )

    with Ledger(fresh_db_url, "t") as reopened:
        again = reopened.submit(commands)
        assert again == first
        assert all(r.replayed for r in again)
        assert count(fresh_db_url, "primeledger_events") == events
        assert count(fresh_db_url, "primeledger_commands") == records

        changed = {**commands[1], "amount": "999.99"}
        conflict = reopened.submit_one(changed)
        assert (conflict.status, conflict.code) == ("rejected", "idempotency_conflict")
        # Twice in one batch: the second is answered from the first.
        pair = reopened.submit([{**commands[4], "key": "new"}, {**commands[4], "key": "new"}])
        assert pair[0] == pair[1]
        assert pair[1].replayed
    assert count(fresh_db_url, "primeledger_commands") == records + 1
    assert count(fresh_db_url, "primeledger_events") == events + (1 if pair[0].accepted else 0)


# --- concurrency --------------------------------------------------------------------------
def test_concurrent_submitters_on_hot_accounts(fresh_db_url: str) -> None:
    threads, per_thread = 8, 40
    ledger = Ledger(fresh_db_url, "t")
    try:
        ledger.submit(open_fund())
        acknowledged: list[CommandResult] = []
        lock = threading.Lock()

        def hammer(worker: int) -> None:
            rng = random.Random(worker)
            for i in range(0, per_thread, 4):
                batch = []
                for j in range(i, i + 4):
                    a, b = rng.sample(["s1", "s2", "s3"], 2)
                    amount = format_units(rng.randint(1, 20_000), "USD")
                    key = f"w{worker}-{j}"
                    if rng.random() < 0.75:
                        batch.append(
                            {
                                "key": key,
                                "type": "transfer",
                                "client": "fund",
                                "from_sub_account": a,
                                "to_sub_account": b,
                                "asset": "USD",
                                "amount": amount,
                            }
                        )
                    else:
                        batch.append(
                            {
                                "key": key,
                                "type": "charge_fee",
                                "client": "fund",
                                "sub_account": a,
                                "asset": "USD",
                                "amount": amount,
                                "fee_type": "trading",
                            }
                        )
                results = ledger.submit(batch)
                with lock:
                    acknowledged.extend(results)

        workers = [Background(lambda w=w: hammer(w)) for w in range(threads)]  # type: ignore[misc]
        until(lambda: all(w.done.is_set() for w in workers), "the submitters")
        assert [w.error for w in workers] == [None] * threads
        final = live(ledger)
    finally:
        ledger.close()

    assert len(acknowledged) == threads * per_thread
    accepted = [r for r in acknowledged if r.accepted]
    assert accepted
    assert {r.code for r in acknowledged if not r.accepted} <= {"insufficient_funds"}
    events = stored_events(fresh_db_url, "t")
    by_position = {position: body for position, _, body in events}
    keys = [body["key"] for _, _, body in events]
    assert len(keys) == len(set(keys)), "a command was written twice"
    for result in accepted:
        (position,) = result.positions
        assert by_position[position]["key"] == result.key
        assert by_position[position]["type"] == result.event_types[0]
    rejected = {r.key for r in acknowledged if not r.accepted}
    assert not rejected & set(keys)
    state = loaded(fresh_db_url, "t")
    check_invariants(state)
    assert comparable(state.to_snapshot()) == comparable(final)


# --- storage faults -----------------------------------------------------------------------
def test_a_failed_commit_is_reported_and_a_retry_succeeds_once(
    fresh_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Ledger(fresh_db_url, "t") as ledger:
        ledger.submit(open_fund())
        head = ledger.position
        real = ledger.store.commit_batch
        failures = [1]

        def flaky(**kwargs: Any) -> None:
            if failures.pop() if failures else 0:
                raise psycopg.OperationalError("injected: the server went away")
            real(**kwargs)

        monkeypatch.setattr(ledger.store, "commit_batch", flaky)
        batch = list(activity("x", 6))
        with pytest.raises(StorageUnavailableError):
            ledger.submit(batch)
        assert ledger.position == head  # the state was rebuilt from the store
        results = ledger.submit(batch)
        assert not any(r.replayed for r in results)
        again = ledger.submit(batch)
        assert all(r.replayed for r in again)
        assert again == results
        final = live(ledger)
    keys = [body["key"] for _, _, body in stored_events(fresh_db_url, "t")]
    for result in results:
        assert keys.count(result.key) == len(result.positions)
    assert comparable(loaded(fresh_db_url, "t").to_snapshot()) == comparable(final)


def test_killed_connections_fail_batches_until_the_pool_recovers(fresh_db_url: str) -> None:
    with Ledger(fresh_db_url, "t") as ledger:
        ledger.submit(open_fund())
        sql(
            fresh_db_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        batch = list(activity("y", 5))
        failures = 0
        while True:
            try:
                results = ledger.submit(batch)
                break
            except StorageUnavailableError:
                failures += 1
                assert failures < 20, "the writer never recovered its connections"
        assert any(r.accepted for r in results)
        final = live(ledger)
    keys = [body["key"] for _, _, body in stored_events(fresh_db_url, "t")]
    assert all(keys.count(r.key) == len(r.positions) for r in results)
    assert comparable(loaded(fresh_db_url, "t").to_snapshot()) == comparable(final)


class ArmedClock:
    """The writer's clock; when armed, its next call runs ``hook`` first (in the decider)."""

    def __init__(self) -> None:
        self.hook: Callable[[], None] | None = None

    def __call__(self) -> datetime:
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()
        return datetime.now(UTC)


def test_a_batch_decided_during_a_failed_commit_is_failed_not_fenced(
    fresh_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch B is decided on top of batch A while A's commit fails: B must fail too.

    The decider reads the generation when it hands B on, not when it starts deciding B; if
    A's failure lands in between, B carries the new generation on a stale state, and its
    commit finds the head moved: the only writer of the ledger fences itself.
    """
    clock = ArmedClock()
    ledger = Ledger(fresh_db_url, "t", clock=clock)
    try:
        ledger.submit(open_fund())
        real = ledger.store.commit_batch
        entered, release = threading.Event(), threading.Event()
        failures = [1]

        def flaky(**kwargs: Any) -> None:
            if failures and failures.pop():
                entered.set()
                assert release.wait(WAIT)
                raise psycopg.OperationalError("injected: the server went away")
            real(**kwargs)

        monkeypatch.setattr(ledger.store, "commit_batch", flaky)
        a = {
            "key": "a",
            "type": "charge_fee",
            "client": "fund",
            "sub_account": "s1",
            "asset": "USD",
            "amount": "1.00",
            "fee_type": "other",
        }
        b = {**a, "key": "b", "sub_account": "s2"}
        first = Background(lambda: ledger.submit([a]))
        until(entered.is_set, "batch A to reach the store")

        def fail_a_then_go_on() -> None:  # runs in the decider, while it decides B
            release.set()
            assert first.done.wait(WAIT)

        clock.hook = fail_a_then_go_on
        with pytest.raises(StorageUnavailableError):
            ledger.submit([b])
        assert isinstance(first.error, StorageUnavailableError)
        assert [r.accepted for r in ledger.submit([a, b])] == [True, True]
    finally:
        ledger.close()


def test_a_decider_fault_reaches_the_caller(
    fresh_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An invariant broken while deciding (here: unbalanced postings) must not hang callers."""

    def unbalanced(*_: object) -> list[Draft]:
        return [("mark_set", {}, (("house:fees", "USD", 1), ("house:interest", "USD", -2)))]

    writer = Ledger(fresh_db_url, "t")
    decider = next(t for t in threading.enumerate() if t.name == "decide-t")
    try:
        writer.submit(open_fund())
        monkeypatch.setitem(ALL_DECIDERS, "set_mark", unbalanced)
        mark = {"key": "m", "type": "set_mark", "asset": "BTC", "quote": "USD", "price": "1.00"}
        call = Background(lambda: writer.submit([mark]))
        until(lambda: call.done.is_set() or not decider.is_alive(), "an answer")
        assert call.done.is_set(), "the decider thread died: the caller would wait for ever"
        assert isinstance(call.error, LedgerFaultError)
        assert count(fresh_db_url, "primeledger_events") == 4  # nothing of it was written
    finally:
        if not decider.is_alive():
            writer._commits.put(None)  # let close() end the committer despite the dead decider
        writer.close()


# --- tampering ----------------------------------------------------------------------------
def _update_body(url: str, position: int, body: bytes) -> None:
    sql(
        url,
        "UPDATE primeledger_events SET state = %s"
        " WHERE originator_id = %s AND originator_version = %s",
        body,
        ledger_id("t"),
        position,
    )


def _change_amount(url: str) -> None:
    body = stored_events(url, "t")[1][2]
    for posting in body["postings"]:
        units = int(posting["units"]) * 2
        posting["units"], posting["amount"] = str(units), format_units(units, "USD")
    _update_body(url, 2, orjson.dumps(body))


def _change_prev(url: str) -> None:
    body = stored_events(url, "t")[2][2]
    body["prev"] = "0" * 64
    _update_body(url, 3, orjson.dumps(body))


def _swap(url: str) -> None:
    events = stored_events(url, "t")
    _update_body(url, 2, orjson.dumps(events[2][2]))
    _update_body(url, 3, orjson.dumps(events[1][2]))


def _delete(url: str) -> None:
    sql(url, "DELETE FROM primeledger_events WHERE originator_version = 3")


def _garbage(url: str) -> None:
    _update_body(url, 2, b"not json at all")


TAMPERING = {
    "changed-amount": _change_amount,
    "changed-prev": _change_prev,
    "reordered": _swap,
    "deleted": _delete,
    "garbage": _garbage,
}


@pytest.mark.parametrize("tamper", list(TAMPERING), ids=list(TAMPERING))
def test_tampering_is_detected(fresh_db_url: str, tamper: str) -> None:
    with Ledger(fresh_db_url, "t") as ledger:
        ledger.submit(open_fund())
    TAMPERING[tamper](fresh_db_url)
    with pytest.raises(LedgerFaultError):
        loaded(fresh_db_url, "t")
    with pytest.raises(LedgerFaultError):
        Ledger(fresh_db_url, "t")


# --- large amounts ------------------------------------------------------------------------
def test_eth_near_max_units_survives_the_round_trip(fresh_db_url: str) -> None:
    biggest = format_units(MAX_UNITS, "ETH")
    almost = format_units(MAX_UNITS - 1, "ETH")
    commands = [
        *open_fund(subs=("s1", "s2")),
        *(
            step
            for tx, amount in (("tx-1", biggest), ("tx-2", almost))
            for step in (
                {
                    "key": tx,
                    "type": "detect_crypto_deposit",
                    "client": "fund",
                    "sub_account": "s1",
                    "asset": "ETH",
                    "amount": amount,
                    "chain": "eth",
                    "tx_hash": tx,
                    "required_confirmations": 1,
                },
                {
                    "key": f"{tx}-c",
                    "type": "confirm_crypto_deposit",
                    "tx_hash": tx,
                    "confirmations": 1,
                },
            )
        ),
        {
            "key": "one-wei",
            "type": "transfer",
            "client": "fund",
            "from_sub_account": "s1",
            "to_sub_account": "s2",
            "asset": "ETH",
            "amount": "0.000000000000000001",
        },
    ]
    with Ledger(fresh_db_url, "t") as ledger:
        assert all(r.accepted for r in ledger.submit(commands))
    expected = 2 * MAX_UNITS - 2  # beyond MAX_UNITS: sums may be, single amounts may not
    with Ledger(fresh_db_url, "t") as reopened:
        s1 = reopened.read(lambda s: -s.balance("client:fund:s1:available", "ETH"))
        s2 = reopened.read(lambda s: -s.balance("client:fund:s2:available", "ETH"))
    assert (s1, s2) == (expected, 1)
    bodies = [body for _, _, body in stored_events(fresh_db_url, "t")]
    credited = [b for b in bodies if b["type"] == "crypto_deposit_credited"]
    assert [b["data"]["amount"] for b in credited] == [biggest, almost]
    assert credited[0]["postings"][0]["units"] == str(MAX_UNITS)


def test_batches_framed_by_hand_round_trip_byte_for_byte(fresh_db_url: str) -> None:
    """The committer frames binary COPY itself: multi-byte keys and bodies must come back
    from both tables exactly as written, and retries must find the records."""
    keys = ["open-ü", "dépôt-€-1", "键-2", "k" * 200]
    commands = [
        {
            "key": keys[0],
            "type": "open_client",
            "client": "fund",
            "name": "Fünd €",
            "sub_accounts": ["main"],
        },
        {
            "key": keys[1],
            "type": "deposit_fiat",
            "client": "fund",
            "sub_account": "main",
            "asset": "USD",
            "amount": "10.00",
            "bank_reference": "ü" * 200,
        },
        {
            "key": keys[2],
            "type": "deposit_fiat",
            "client": "fund",
            "sub_account": "main",
            "asset": "HKD",
            "amount": "7.80",
            "bank_reference": "ref-键",
        },
        {
            "key": keys[3],
            "type": "deposit_fiat",
            "client": "fund",
            "sub_account": "main",
            "asset": "USD",
            "amount": "0.01",
            "bank_reference": "x" * 200,
        },
    ]
    with Ledger(fresh_db_url, "t") as ledger:
        first = ledger.submit(commands)
        assert [r.status for r in first] == ["accepted"] * 4
        written = {r.positions[0]: ledger.store.event_body(r.positions[0]) for r in first}
    stored = {
        position: orjson.dumps(body) for position, _, body in stored_events(fresh_db_url, "t")
    }
    assert {p: orjson.loads(b) for p, b in stored.items()} == {
        p: orjson.loads(b) for p, b in written.items() if b is not None
    }
    assert [t for _, t, _ in stored_events(fresh_db_url, "t")] == [
        "client_opened",
        "fiat_deposited",
        "fiat_deposited",
        "fiat_deposited",
    ]
    rows = sql(fresh_db_url, "SELECT key FROM primeledger_commands ORDER BY key")
    assert sorted(k for (k,) in rows) == sorted(keys)
    # A new writer knows nothing in memory: the retries are answered from the stored records.
    with Ledger(fresh_db_url, "t") as reopened:
        again = reopened.submit(commands)
    assert [(r.key, r.positions, r.replayed) for r in again] == [
        (r.key, r.positions, True) for r in first
    ]
    assert count(fresh_db_url, "primeledger_events") == 4
