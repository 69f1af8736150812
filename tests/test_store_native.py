"""ledger._store (C) held to ledger/store.py's Python path, against the real PostgreSQL.

The C module frames COPY rows and runs a batch's transaction through libpq without the GIL.
Each test here states what the Python path does and checks the C path does the same: the same
bytes, the same rows in the same tables, the same refusals, nothing half written.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from eventsourcing import persistence
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import store as store_module
from ledger.errors import WriterFencedError
from ledger.events import ledger_id
from ledger.store import (
    EVENTS_TABLE,
    CommandRecord,
    LedgerStore,
    encode_commands,
    encode_events,
)
from tests.pure_python import run_pure_python
from tests.test_ledger_integration import sql

try:
    from ledger import _store
except ImportError:  # pragma: no cover - only where no C compiler built it
    _store = None  # type: ignore[assignment]

pytestmark = pytest.mark.skipif(
    store_module.PURE_PYTHON, reason="PRIMELEDGER_PURE_PYTHON=1: the C module is switched off"
)

texts = st.text(max_size=40)
bodies = st.binary(max_size=300)
positions = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def test_the_c_module_is_built_and_commits_batches() -> None:
    # Built by `make install` wherever a C compiler exists; tests fail rather than quietly
    # measure the slow path (PRIMELEDGER_PURE_PYTHON=1 says that is intended).
    assert _store is not None
    found = _store.libpq()
    assert found is not None, "no libpq loaded next to psycopg"
    assert found[1] == psycopg.pq.version()
    assert store_module.native_commit_available()
    assert store_module._encode_events is _store.encode_events


@settings(max_examples=200, deadline=None)
@given(
    originator=st.binary(min_size=16, max_size=16),
    events=st.lists(st.tuples(positions, texts, bodies), max_size=20),
)
def test_events_are_framed_byte_for_byte_as_in_python(
    originator: bytes, events: list[tuple[int, str, bytes]]
) -> None:
    assert _store is not None
    assert _store.encode_events(originator, events) == encode_events(originator, events)


@settings(max_examples=200, deadline=None)
@given(ledger=texts, records=st.lists(st.tuples(texts, texts, bodies), max_size=20))
def test_records_are_framed_byte_for_byte_as_in_python(
    ledger: str, records: list[tuple[str, str, bytes]]
) -> None:
    assert _store is not None
    rows = [CommandRecord(*record) for record in records]
    assert _store.encode_commands(ledger, rows) == encode_commands(ledger, rows)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: _store.encode_events(b"short", []), TypeError),
        (lambda: _store.encode_events(bytes(16), [(1, "t")]), TypeError),
        (lambda: _store.encode_events(bytes(16), [("1", "t", b"")]), TypeError),
        (lambda: _store.encode_events(bytes(16), [(2**63, "t", b"")]), OverflowError),
        (lambda: _store.encode_events(bytes(16), [(1, 7, b"")]), TypeError),
        (lambda: _store.encode_events(bytes(16), [(1, "t", "not bytes")]), TypeError),
        (lambda: _store.encode_events(bytes(16), 5), TypeError),
        (lambda: _store.encode_commands("x", [object()]), AttributeError),
        (lambda: _store.encode_commands("x", [CommandRecord("k", "h", 5)]), TypeError),  # type: ignore[arg-type]
        (lambda: _store.encode_commands(b"x", []), TypeError),
        (lambda: _store.encode_events(bytes(16), [(1, "\ud800", b"")]), UnicodeEncodeError),
    ],
)
def test_bad_rows_raise_instead_of_framing_garbage(call: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        call()


# --- the batch transaction ---------------------------------------------------------------


@pytest.fixture
def stores(fresh_db_url: str) -> Iterator[tuple[LedgerStore, LedgerStore]]:
    """Two ledgers in one database: one commits through C, the other through psycopg."""
    native = LedgerStore(fresh_db_url, "native")
    python = LedgerStore(fresh_db_url, "python")
    python.native_commit = False
    assert native.native_commit
    try:
        yield native, python
    finally:
        native.close()
        python.close()


def batch(start: int, size: int, tag: str) -> tuple[list[Any], list[CommandRecord]]:
    events = [
        (
            start + i,
            "transferred" if i % 2 else "fee_charged",
            f'{{"n":{start + i},"é":1}}'.encode(),
        )
        for i in range(size)
    ]
    records = [
        CommandRecord(f"{tag}-{start + i}", f"{start + i:064x}", b'{"status":"accepted"}')
        for i in range(size)
    ]
    return events, records


def rows(url: str, ledger: str) -> tuple[list[Any], list[Any], int]:
    events = sql(
        url,
        f"SELECT originator_version, topic, state FROM {EVENTS_TABLE}"
        " WHERE originator_id = %s ORDER BY originator_version",
        ledger_id(ledger),
    )
    commands = sql(
        url,
        "SELECT key, command_hash, result FROM primeledger_commands WHERE ledger = %s ORDER BY key",
        ledger,
    )
    (head,) = sql(url, "SELECT head FROM primeledger_heads WHERE ledger = %s", ledger)
    return events, [(k.split("-", 1)[1], h, bytes(r)) for k, h, r in commands], head[0]


def test_a_native_commit_writes_what_psycopg_writes(
    stores: tuple[LedgerStore, LedgerStore], fresh_db_url: str
) -> None:
    for store in stores:
        epoch, head = store.claim()
        for start, size in [(1, 3), (4, 1500), (1504, 1)]:
            events, records = batch(start, size, store.ledger)
            store.commit_batch(epoch=epoch, expected_head=head, events=events, commands=records)
            head = events[-1][0]
        # A batch of rejections only: records, no events, the head unchanged.
        _, records = batch(9000, 2, store.ledger)
        store.commit_batch(epoch=epoch, expected_head=head, events=[], commands=records)
    native, python = (rows(fresh_db_url, s.ledger) for s in stores)
    assert native == python
    assert native[2] == len(native[0]) == 1504
    assert len(native[1]) == 1506


def test_a_stale_writer_is_fenced_and_writes_nothing(
    stores: tuple[LedgerStore, LedgerStore], fresh_db_url: str
) -> None:
    native = stores[0]
    epoch, head = native.claim()
    other = LedgerStore(fresh_db_url, "native")
    try:
        other.claim()  # a second writer takes the ledger over
    finally:
        other.close()
    events, records = batch(1, 5, "n")
    with pytest.raises(WriterFencedError):
        native.commit_batch(epoch=epoch, expected_head=head, events=events, commands=records)
    with pytest.raises(WriterFencedError):  # even a batch of rejections only
        native.commit_batch(epoch=epoch, expected_head=head, events=[], commands=records)
    assert rows(fresh_db_url, "native") == ([], [], 0)


def test_a_failing_statement_rolls_the_whole_batch_back_and_the_store_goes_on(
    stores: tuple[LedgerStore, LedgerStore], fresh_db_url: str
) -> None:
    native = stores[0]
    epoch, head = native.claim()
    events, records = batch(1, 3, "n")
    native.commit_batch(epoch=epoch, expected_head=head, events=events, commands=records)
    # The same idempotency keys again: the commands COPY fails after the events COPY worked.
    more, _ = batch(4, 3, "n")
    with pytest.raises(persistence.IntegrityError, match="batch not committed") as failed:
        native.commit_batch(epoch=epoch, expected_head=3, events=more, commands=records)
    assert isinstance(failed.value.__cause__, psycopg.errors.UniqueViolation)
    assert rows(fresh_db_url, "native")[2] == 3
    assert len(rows(fresh_db_url, "native")[0]) == 3
    # The pooled connection was left idle: the next batch commits.
    more, fresh = batch(4, 3, "m")
    native.commit_batch(epoch=epoch, expected_head=3, events=more, commands=fresh)
    assert rows(fresh_db_url, "native")[2] == 6


def test_a_lost_server_connection_is_an_error_not_a_hang(
    stores: tuple[LedgerStore, LedgerStore], fresh_db_url: str
) -> None:
    native = stores[0]
    epoch, head = native.claim()
    with psycopg.connect(fresh_db_url, autocommit=True) as admin:
        admin.execute(  # every connection of the store's pool is cut by the server
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    events, records = batch(1, 2, "n")
    with pytest.raises(persistence.OperationalError, match="batch not committed"):
        native.commit_batch(epoch=epoch, expected_head=head, events=events, commands=records)
    # Broken connections are dropped by the pool as they come back; a new one commits.
    for _ in range(8):
        try:
            native.commit_batch(epoch=epoch, expected_head=head, events=events, commands=records)
            break
        except persistence.OperationalError:
            continue
    assert rows(fresh_db_url, "native")[2] == 2


def test_pure_python_mode_commits_through_psycopg() -> None:
    script = (
        "from ledger import store; "
        "assert not store.native_commit_available(); "
        "assert store._encode_events is store.encode_events; print('pure')"
    )
    assert run_pure_python(script) == "pure\n"


def test_commit_refuses_bad_arguments_before_touching_the_connection(
    stores: tuple[LedgerStore, LedgerStore],
) -> None:
    assert _store is not None
    native = stores[0]
    with native.datastore.get_connection() as conn:
        pointer = conn.pgconn.pgconn_ptr
        assert pointer is not None
        with pytest.raises(TypeError):
            _store.commit(pointer, "BEGIN", None, ())  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="NUL"):
            _store.commit(pointer, b"BEGIN\x00", None, ())
        with pytest.raises(TypeError):
            _store.commit(pointer, b"BEGIN", None, ((b"COPY",),))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="too many"):
            _store.commit(pointer, b"BEGIN", None, ((b"x", b""),) * 5)
        with pytest.raises(ValueError, match="closed"):
            _store.commit(0, b"BEGIN", None, ())
        conn.execute("BEGIN")
        with pytest.raises(ValueError, match="not idle"):
            _store.commit(pointer, b"SELECT 1", None, ())
        conn.execute("ROLLBACK")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


# --- review regressions: rows that change while they are framed -----------------------------


class Changing:
    """A record whose key changes length on every read (a getter running Python code)."""

    def __init__(self, lengths: list[int]) -> None:
        self.lengths = lengths
        self.reads = 0

    @property
    def key(self) -> str:
        self.reads += 1
        return "k" * self.lengths[min(self.reads, len(self.lengths)) - 1]

    command_hash = "h"
    result = b"r"


@pytest.mark.parametrize("lengths", [[1, 10_000], [50, 1]])
def test_a_key_that_changes_between_reads_is_read_once(lengths: list[int]) -> None:
    assert _store is not None
    record = Changing(lengths)
    framed = _store.encode_commands("L", [record])
    assert record.reads == 1
    assert framed == encode_commands("L", [CommandRecord("k" * lengths[0], "h", b"r")])


def test_rows_emptied_or_replaced_while_framed_cannot_crash_it() -> None:
    assert _store is not None
    rows: list[Any] = []

    class Clearing:
        @property
        def key(self) -> str:
            rows.clear()  # the caller's list, emptied under the encoder
            return "k"

        command_hash = "h"
        result = b"r"

    rows.extend([Clearing(), Clearing()])
    framed = _store.encode_commands("L", rows)
    assert framed == encode_commands("L", [CommandRecord("k", "h", b"r")] * 2)

    events: list[Any] = []

    class Position:
        def __index__(self) -> int:
            events[0] = None  # drops the only other reference to the row being read
            events.append((2, "t", bytes(100_000)))
            return 1

    events.append((Position(), "type", b"body"))
    framed = _store.encode_events(bytes(16), events)
    assert framed == encode_events(bytes(16), [(1, "type", b"body")])


def test_a_long_ledger_name_frames_like_python() -> None:
    assert _store is not None
    name = "é" * 5000
    rows = [CommandRecord("k", "h", b"r")]
    assert _store.encode_commands(name, rows) == encode_commands(name, rows)


def test_server_messages_arrive_whole_whatever_their_bytes(
    stores: tuple[LedgerStore, LedgerStore],
) -> None:
    native = stores[0]
    epoch, head = native.claim()
    events, _ = batch(1, 1, "n")
    native.commit_batch(
        epoch=epoch,
        expected_head=head,
        events=events,
        commands=[CommandRecord("é" * 600, "h", b"r")],
    )
    # A duplicate key: the message quotes it and is cut at 1 KiB, maybe mid-character.
    for length in (600, 601):
        more, _ = batch(2, 1, "n")
        records = [CommandRecord("é" * length, "h", b"r")] * 2
        with pytest.raises(persistence.IntegrityError, match="batch not committed"):
            native.commit_batch(epoch=epoch, expected_head=1, events=more, commands=records)


def test_an_sqlstate_psycopg_does_not_know_is_still_a_database_error(
    stores: tuple[LedgerStore, LedgerStore], fresh_db_url: str
) -> None:
    with psycopg.connect(fresh_db_url, autocommit=True) as admin:
        admin.execute(
            "CREATE FUNCTION veto() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN RAISE EXCEPTION 'vetoed' USING ERRCODE = 'ZZ999'; END $$"
        )
        admin.execute(
            "CREATE TRIGGER veto BEFORE INSERT ON primeledger_commands"
            " FOR EACH ROW EXECUTE FUNCTION veto()"
        )
    native = stores[0]
    epoch, head = native.claim()
    events, records = batch(1, 1, "n")
    with pytest.raises(persistence.DatabaseError, match="vetoed") as failed:
        native.commit_batch(epoch=epoch, expected_head=head, events=events, commands=records)
    assert type(failed.value.__cause__) is psycopg.DatabaseError
    assert rows(fresh_db_url, "native") == ([], [], 0)


def test_both_paths_raise_the_same_exception_for_the_same_failure(
    stores: tuple[LedgerStore, LedgerStore],
) -> None:
    raised = []
    for store in stores:
        epoch, head = store.claim()
        events, records = batch(1, 2, store.ledger)
        store.commit_batch(epoch=epoch, expected_head=head, events=events, commands=records)
        more, _ = batch(3, 2, store.ledger)
        with pytest.raises(persistence.PersistenceError) as failed:
            store.commit_batch(epoch=epoch, expected_head=2, events=more, commands=records)
        raised.append((type(failed.value), type(failed.value.__cause__)))
    assert raised[0] == raised[1] == (persistence.IntegrityError, psycopg.errors.UniqueViolation)
