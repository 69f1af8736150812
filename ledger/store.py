"""The ledger's PostgreSQL store, built on ``eventsourcing``'s application recorder.

One events table holds every ledger's log (``primeledger_events``: eventsourcing's own schema;
the originator is the ledger, the originator version is the log position, the topic is the
event type, the state is the canonical event body). Three tables of ours sit beside it:

* ``primeledger_heads``: per ledger, the head position and the epoch of the writer that owns
  it. Each batch advances the head only if both still match, so a writer that was replaced
  (fenced) can no longer commit, even a batch of only rejections.
* ``primeledger_commands``: the idempotency record (key, command hash, result) of every
  command, written in the same transaction as its events.
* ``primeledger_snapshots``: the writer's state at a position, to restart without replaying
  the whole log.

Batches are written with ``COPY`` (much faster than the library's row INSERT) under the
library's ``LOCK TABLE ... EXCLUSIVE``, so notification order equals commit order and a relay
tailing the table never skips an event. ``POSTGRES_ENABLE_DB_FUNCTIONS`` stays off: that path
skips the lock (see STACK-NOTES).

Where the C module ``ledger._store`` is built, a batch's transaction (the same statements) is
sent through libpq with the GIL released, on a connection of the same pool: through psycopg,
each round trip ended in a wait for the GIL the decider held (README, "Decisions").
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from psycopg.conninfo import conninfo_to_dict
from psycopg.sql import SQL, Composed, Identifier, Literal, Placeholder

from ledger.errors import WriterFencedError
from ledger.events import ledger_id
from ledger.native import PURE_PYTHON

try:
    from ledger import _store as _native
except ImportError:  # not built here: the Python encoders and psycopg do the same, slower
    _native = None  # type: ignore[assignment]

EVENTS_TABLE = "primeledger_events"
# PostgreSQL's binary COPY framing: signature, flags and header-extension length; -1 ends it.
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_COPY_TRAILER = b"\xff\xff"
_LENGTH = struct.Struct(">i")
_INT8 = struct.Struct(">iq")  # a field's length (8) and the value


def datastore_for(url: str, *, pool_size: int = 4) -> PostgresDatastore:
    """An eventsourcing datastore for a PostgreSQL URL (``postgresql://user@host:port/db``)."""
    params = conninfo_to_dict(url)
    return PostgresDatastore(
        dbname=str(params.get("dbname", "postgres")),
        host=str(params.get("host", "127.0.0.1")),
        port=str(params.get("port", 5432)),
        user=str(params.get("user", "postgres")),
        password=str(params.get("password", "")),
        pool_size=pool_size,
        max_overflow=2,
        lock_timeout=10,
        enable_db_functions=False,
    )


@dataclass(slots=True)  # not frozen: one per command on the writer's hot path; never mutated
class CommandRecord:
    key: str
    command_hash: str
    result: bytes


class LedgerRecorder(PostgresApplicationRecorder):
    """eventsourcing's application recorder plus the ledger's heads, commands and snapshots."""

    def __init__(self, datastore: PostgresDatastore) -> None:
        super().__init__(datastore, events_table_name=EVENTS_TABLE)
        self.sql_create_statements.extend(
            SQL(s).format(schema=Identifier(self.datastore.schema))
            for s in (
                "CREATE TABLE IF NOT EXISTS {schema}.primeledger_heads ("
                " ledger text PRIMARY KEY, originator_id uuid NOT NULL,"
                " head bigint NOT NULL, epoch bigint NOT NULL)",
                "CREATE TABLE IF NOT EXISTS {schema}.primeledger_commands ("
                " ledger text NOT NULL, key text NOT NULL, command_hash text NOT NULL,"
                " result bytea NOT NULL, PRIMARY KEY (ledger, key))",
                "CREATE TABLE IF NOT EXISTS {schema}.primeledger_snapshots ("
                " ledger text NOT NULL, position bigint NOT NULL, state bytea NOT NULL,"
                " PRIMARY KEY (ledger, position))",
            )
        )


class LedgerStore:
    """Reads and writes one ledger's log; the only module that speaks SQL for the write side."""

    def __init__(self, url: str, ledger: str, *, create: bool = True) -> None:
        self.url = url
        self.ledger = ledger
        self.originator_id = ledger_id(ledger)
        self.datastore = datastore_for(url)
        self.recorder = LedgerRecorder(self.datastore)
        if create:
            self.recorder.create_table()
        self._schema = Identifier(self.datastore.schema)
        # The batch's statements, once for both paths: psycopg's (with parameters) and the
        # native commit's text (literals rendered by psycopg).
        self._copy_events_statement = SQL(
            "COPY {s}.{t} (originator_id, originator_version, topic, state)"
            " FROM STDIN (FORMAT BINARY)"
        ).format(s=self._schema, t=Identifier(EVENTS_TABLE))
        self._copy_commands_statement = SQL(
            "COPY {s}.primeledger_commands (ledger, key, command_hash, result)"
            " FROM STDIN (FORMAT BINARY)"
        ).format(s=self._schema)
        self._copy_events_sql = self._copy_events_statement.as_string().encode()
        self._copy_commands_sql = self._copy_commands_statement.as_string().encode()
        self._lock_sql = "; ".join(
            [_sql_text(statement) for statement in self.recorder.lock_table_statements]
            + [SQL("NOTIFY {0}").format(Identifier(self.recorder.channel_name)).as_string()]
        ).encode()
        self.native_commit = native_commit_available()

    def close(self) -> None:
        self.datastore.close()

    # --- ownership -----------------------------------------------------------------------
    def claim(self) -> tuple[int, int]:
        """Become the ledger's writer: bump the epoch (fencing any earlier writer).

        Returns ``(epoch, head)``.
        """
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL(
                    "INSERT INTO {s}.primeledger_heads AS h (ledger, originator_id, head, epoch)"
                    " VALUES (%s, %s, 0, 1) ON CONFLICT (ledger)"
                    " DO UPDATE SET epoch = h.epoch + 1 RETURNING epoch, head"
                ).format(s=self._schema),
                (self.ledger, self.originator_id),
            )
            row = curs.fetchone()
            assert row is not None
            return int(row["epoch"]), int(row["head"])

    def head(self) -> int:
        with self.datastore.transaction() as curs:
            curs.execute(
                SQL("SELECT head FROM {s}.primeledger_heads WHERE ledger = %s").format(
                    s=self._schema
                ),
                (self.ledger,),
            )
            row = curs.fetchone()
            return int(row["head"]) if row else 0

    # --- the batch -----------------------------------------------------------------------
    def commit_batch(
        self,
        *,
        epoch: int,
        expected_head: int,
        events: Sequence[tuple[int, str, bytes]],
        commands: Sequence[CommandRecord],
        snapshot: tuple[int, bytes] | None = None,
    ) -> None:
        """Append events ``(position, type, body)`` and command records in one transaction.

        Raises ``WriterFencedError`` if another writer claimed the ledger or moved its head.
        """
        new_head = events[-1][0] if events else expected_head
        if self.native_commit and snapshot is None:
            self._commit_native(epoch, expected_head, new_head, events, commands)
            return
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                self._head_update(Placeholder(), Placeholder(), Placeholder(), Placeholder()),
                (new_head, self.ledger, epoch, expected_head),
            )
            if curs.rowcount != 1:
                raise self._fenced(epoch)
            if events:
                self.recorder._lock_table(curs)
                self.recorder._notify_channel(curs)
                self._copy_events(curs, events)
            if commands:
                self._copy_commands(curs, commands)
            if snapshot is not None:
                curs.execute(
                    SQL(
                        "INSERT INTO {s}.primeledger_snapshots (ledger, position, state)"
                        " VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"
                    ).format(s=self._schema),
                    (self.ledger, snapshot[0], snapshot[1]),
                )

    def _fenced(self, epoch: int) -> WriterFencedError:
        return WriterFencedError(
            f"ledger {self.ledger!r}: another writer owns it (epoch {epoch} is stale)"
        )

    def _head_update(self, new: Any, ledger: Any, epoch: Any, expected: Any) -> Composed:
        """The head's conditional update that fences a stale writer, with placeholders
        (psycopg's path) or literals (the native commit's text)."""
        return SQL(
            "UPDATE {s}.primeledger_heads SET head = {new}"
            " WHERE ledger = {ledger} AND epoch = {epoch} AND head = {expected}"
        ).format(s=self._schema, new=new, ledger=ledger, epoch=epoch, expected=expected)

    def _commit_native(
        self,
        epoch: int,
        expected_head: int,
        new_head: int,
        events: Sequence[tuple[int, str, bytes]],
        commands: Sequence[CommandRecord],
    ) -> None:
        """``commit_batch``'s transaction, the same statements, sent by C without the GIL."""
        assert _native is not None
        values = (new_head, self.ledger, epoch, expected_head)
        head = b"BEGIN; " + self._head_update(*map(Literal, values)).as_string().encode()
        copies: tuple[tuple[bytes, bytes], ...] = ()
        if events:
            copies += ((self._copy_events_sql, _encode_events(self.originator_id.bytes, events)),)
        if commands:
            copies += ((self._copy_commands_sql, _encode_commands(self.ledger, commands)),)
        with self.datastore.get_connection() as conn:
            # Raised in here, a psycopg error is translated by eventsourcing as on the psycopg
            # path (IntegrityError, OperationalError...), with psycopg's as its cause.
            with conn.lock:
                # Documented by psycopg for calling libpq directly, not in its protocol.
                pointer: int | None = conn.pgconn.pgconn_ptr  # type: ignore[attr-defined]
                if pointer is None:
                    raise psycopg.OperationalError("batch not committed: connection closed")
                lock = self._lock_sql if events else None
                failure = _native.commit(pointer, head, lock, copies)
            if failure is None:
                return
            if failure[0] == "fenced":
                raise self._fenced(epoch)
            raise _server_error(failure[1], failure[2])

    def _copy_events(
        self, curs: psycopg.Cursor[Any], events: Sequence[tuple[int, str, bytes]]
    ) -> None:
        with curs.copy(self._copy_events_statement) as copy:
            copy.write(_encode_events(self.originator_id.bytes, events))

    def _copy_commands(self, curs: psycopg.Cursor[Any], commands: Sequence[CommandRecord]) -> None:
        with curs.copy(self._copy_commands_statement) as copy:
            copy.write(_encode_commands(self.ledger, commands))

    # --- reads ---------------------------------------------------------------------------
    def find_commands(self, keys: Sequence[str]) -> dict[str, CommandRecord]:
        """Idempotency records for these keys (one query for a whole batch)."""
        if not keys:
            return {}
        with self.datastore.transaction() as curs:
            curs.execute(
                SQL(
                    "SELECT key, command_hash, result FROM {s}.primeledger_commands"
                    " WHERE ledger = %s AND key = ANY(%s)"
                ).format(s=self._schema),
                (self.ledger, list(keys)),
            )
            return {
                r["key"]: CommandRecord(r["key"], r["command_hash"], bytes(r["result"]))
                for r in curs.fetchall()
            }

    def has_commands(self) -> bool:
        """Whether any idempotency record exists for this ledger."""
        with self.datastore.transaction() as curs:
            curs.execute(
                SQL("SELECT 1 FROM {s}.primeledger_commands WHERE ledger = %s LIMIT 1").format(
                    s=self._schema
                ),
                (self.ledger,),
            )
            return curs.fetchone() is not None

    def latest_snapshot(self, at_most: int) -> tuple[int, bytes] | None:
        with self.datastore.transaction() as curs:
            curs.execute(
                SQL(
                    "SELECT position, state FROM {s}.primeledger_snapshots"
                    " WHERE ledger = %s AND position <= %s ORDER BY position DESC LIMIT 1"
                ).format(s=self._schema),
                (self.ledger, at_most),
            )
            row = curs.fetchone()
            return (int(row["position"]), bytes(row["state"])) if row else None

    def event_bodies(
        self, after: int = 0, until: int | None = None, page: int = 5000
    ) -> Iterator[bytes]:
        """Stream the ledger's event bodies in position order, a page at a time."""
        position = after
        statement = SQL(
            "SELECT originator_version, state FROM {s}.{t}"
            " WHERE originator_id = %s AND originator_version > %s"
            " AND originator_version <= %s ORDER BY originator_version LIMIT %s"
        ).format(s=self._schema, t=Identifier(EVENTS_TABLE))
        last = until if until is not None else 2**62
        while True:
            with self.datastore.transaction() as curs:
                curs.execute(statement, (self.originator_id, position, last, page))
                rows = curs.fetchall()
            for row in rows:
                yield bytes(row["state"])
            if len(rows) < page:
                return
            position = int(rows[-1]["originator_version"])

    def event_body(self, position: int) -> bytes | None:
        for body in self.event_bodies(after=position - 1, until=position, page=1):
            return body
        return None


# --- binary COPY -------------------------------------------------------------------------
# The writer's batches are framed here as one buffer in PostgreSQL's binary COPY format, so
# the committer spends about a microsecond per row instead of going through psycopg's per-row
# adaptation (it holds the GIL the decider needs). The layout per row: the field count, then
# each field as its byte length and its bytes.


def encode_events(originator: bytes, events: Sequence[tuple[int, str, bytes]]) -> bytes:
    """Rows ``(originator_id uuid, originator_version int8, topic text, state bytea)``."""
    lead = b"\x00\x04" + _LENGTH.pack(16) + originator
    length, int8 = _LENGTH.pack, _INT8.pack
    topics: dict[str, bytes] = {}
    parts = [_COPY_SIGNATURE]
    for position, event_type, body in events:
        topic = topics.get(event_type)
        if topic is None:
            encoded = event_type.encode()
            topic = topics[event_type] = length(len(encoded)) + encoded
        parts += (lead, int8(8, position), topic, length(len(body)), body)
    parts.append(_COPY_TRAILER)
    return b"".join(parts)


def encode_commands(ledger: str, commands: Sequence[CommandRecord]) -> bytes:
    """Rows ``(ledger text, key text, command_hash text, result bytea)``."""
    encoded = ledger.encode()
    lead = b"\x00\x04" + _LENGTH.pack(len(encoded)) + encoded
    length = _LENGTH.pack
    parts = [_COPY_SIGNATURE]
    for record in commands:
        key, digest = record.key.encode(), record.command_hash.encode()
        result = record.result
        parts += (
            lead,
            length(len(key)),
            key,
            length(len(digest)),
            digest,
            length(len(result)),
            result,
        )
    parts.append(_COPY_TRAILER)
    return b"".join(parts)


# The same two encoders in C (ledger/_store.c), byte for byte: the committer shares the GIL
# with the decider, and these loops were a microsecond and a half per transfer in Python.
_encode_events: Callable[[bytes, Sequence[tuple[int, str, bytes]]], bytes] = encode_events
_encode_commands: Callable[[str, Sequence[CommandRecord]], bytes] = encode_commands
if _native is not None and not PURE_PYTHON:
    _encode_events = _native.encode_events
    _encode_commands = _native.encode_commands


def _server_error(message: str, sqlstate: str) -> psycopg.Error:
    """The psycopg exception for a failure the native commit reported."""
    error: type[psycopg.Error] = psycopg.OperationalError  # no SQLSTATE: the connection
    if sqlstate:
        try:
            error = psycopg.errors.lookup(sqlstate)
        except KeyError:  # a code psycopg does not know (a trigger's own, say)
            error = psycopg.DatabaseError
    return error(f"batch not committed: {message.strip()}")


def _sql_text(query: Any) -> str:
    return query if isinstance(query, str) else str(query.as_string())


def native_commit_available() -> bool:
    """Whether batches are committed by ``ledger._store.commit`` rather than psycopg.

    Only with the very libpq psycopg uses (the one loaded, of psycopg's version).
    """
    if _native is None or PURE_PYTHON:
        return False
    found = _native.libpq()
    return found is not None and found[1] == psycopg.pq.version()
