"""The relay's PostgreSQL side: its lock, its position row and pages of the event log.

Everything goes through one connection in autocommit mode that also holds the relay's
session-level advisory lock. If that connection breaks, the lock is gone with it, and so is
every later read and position write: a relay that lost its lock cannot move the position
behind the back of a relay that took the lock over. It has to reconnect (and lock) first.

The position row (``primeledger_relay_positions``, one per relay name) holds the last
notification id the broker acknowledged, and what the relay knew of the topic then: its
topic id and, per partition, the least end offset the broker must report while it still has
those messages (the *offset floor*). The relay compares both with the broker to notice that
the broker lost data.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Final

import orjson
import psycopg
from psycopg import errors as pg_errors
from psycopg.sql import SQL, Identifier

from ledger.store import EVENTS_TABLE

# The ledger's datastore (ledger.store.datastore_for) uses eventsourcing's default schema.
EVENTS_SCHEMA: Final = "public"
POSITIONS_TABLE: Final = "primeledger_relay_positions"
# Serialises CREATE TABLE IF NOT EXISTS between relays starting at once (it can race).
_DDL_LOCK: Final = 0x706C5F72656C6179  # "pl_relay"

_CREATE = SQL(
    "CREATE TABLE IF NOT EXISTS {t} ("
    " name text PRIMARY KEY,"
    " notification_id bigint NOT NULL,"
    " topic text NOT NULL,"
    " topic_id text,"
    " offset_floors jsonb NOT NULL DEFAULT '{{}}',"
    " updated_at timestamptz NOT NULL DEFAULT now())"
).format(t=Identifier(POSITIONS_TABLE))
_LOAD = SQL(
    "SELECT notification_id, topic, topic_id, offset_floors::text FROM {t} WHERE name = %s"
).format(t=Identifier(POSITIONS_TABLE))
_SAVE = SQL(
    "INSERT INTO {t} (name, notification_id, topic, topic_id, offset_floors)"
    " VALUES (%s, %s, %s, %s, %s::jsonb) ON CONFLICT (name) DO UPDATE SET"
    " notification_id = excluded.notification_id, topic = excluded.topic,"
    " topic_id = excluded.topic_id, offset_floors = excluded.offset_floors, updated_at = now()"
).format(t=Identifier(POSITIONS_TABLE))
_PAGE = SQL(
    "SELECT notification_id, state FROM {t}"
    " WHERE notification_id > %s ORDER BY notification_id LIMIT %s"
).format(t=Identifier(EVENTS_SCHEMA, EVENTS_TABLE))


_LAST = SQL("SELECT max(notification_id) FROM {t}").format(
    t=Identifier(EVENTS_SCHEMA, EVENTS_TABLE)
)
# eventsourcing's recorder notifies this channel (its events table name) on every insert.
_CHANNEL = Identifier(EVENTS_TABLE)


class RelayLockedError(RuntimeError):
    """Another relay of the same name runs (it holds the advisory lock)."""


class RelayConfigError(ValueError):
    """The stored position belongs to another topic than the one the relay was given."""


@dataclass(frozen=True, slots=True)
class RelayPosition:
    """Where a relay stands: last acknowledged notification id and what it knew of the topic."""

    notification_id: int
    topic: str
    topic_id: str | None = None
    offset_floors: dict[int, int] = field(default_factory=dict)


def lock_key(name: str) -> int:
    """The advisory lock key (signed 64-bit) of relay ``name``: stable across processes."""
    digest = hashlib.blake2b(f"primeledger.relay:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class RelayStore:
    """The lock, position and event pages of relay ``name``; refuses if the lock is taken."""

    def __init__(self, url: str, name: str, *, connect_timeout: float = 10.0) -> None:
        self.name = name
        self._conn = psycopg.connect(
            url, autocommit=True, connect_timeout=max(1, math.ceil(connect_timeout))
        )
        try:
            # The position is a bookmark: if a database crash loses its last few saves, the
            # relay publishes those events again (at least once, as always). Not waiting for
            # each save's WAL flush keeps a slow disk out of the publishing path.
            self._conn.execute("SET synchronous_commit = off")
            self._lock()
            self._create_table()
            self._conn.execute(SQL("LISTEN {c}").format(c=_CHANNEL))
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        """Close the connection, which also releases the lock."""
        self._conn.close()

    @property
    def closed(self) -> bool:
        return self._conn.closed or self._conn.broken

    def _lock(self) -> None:
        key = lock_key(self.name)
        row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        if row is not None and row[0]:
            return
        # pg_locks shows a bigint key as two unsigned 32-bit halves.
        unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
        holder = self._conn.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid::int8 = %s AND objid::int8 = %s AND objsubid = 1",
            (unsigned >> 32, unsigned & 0xFFFF_FFFF),
        ).fetchone()
        who = f"backend pid {holder[0]}" if holder else "another session"
        raise RelayLockedError(
            f"relay {self.name!r} is already running: {who} holds its PostgreSQL advisory "
            f"lock {key}; stop that relay first, or give this one another name"
        )

    def _create_table(self) -> None:
        with self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_DDL_LOCK,))
            self._conn.execute(_CREATE)

    def load(self, topic: str) -> RelayPosition:
        """The stored position (notification id 0 if the relay never ran)."""
        row = self._conn.execute(_LOAD, (self.name,)).fetchone()
        if row is None:
            return RelayPosition(0, topic)
        notification_id, stored_topic, topic_id, floors = row
        if stored_topic != topic:
            raise RelayConfigError(
                f"relay {self.name!r} relays to topic {stored_topic!r}, not {topic!r}: "
                "give a relay of another topic another name"
            )
        offset_floors = {int(p): int(o) for p, o in orjson.loads(floors).items()}
        return RelayPosition(int(notification_id), stored_topic, topic_id, offset_floors)

    def save(self, position: RelayPosition) -> None:
        floors = orjson.dumps({str(p): o for p, o in sorted(position.offset_floors.items())})
        self._conn.execute(
            _SAVE,
            (
                self.name,
                position.notification_id,
                position.topic,
                position.topic_id,
                floors.decode(),
            ),
        )

    def last_notification_id(self) -> int:
        """The newest notification id in the events table (0 if it is empty or missing)."""
        try:
            row = self._conn.execute(_LAST).fetchone()
        except pg_errors.UndefinedTable:
            return 0
        return int(row[0]) if row is not None and row[0] is not None else 0

    def wait_for_events(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds, returning early when a ledger commits events.

        The ledger's recorder sends ``NOTIFY`` on every append; a notification that came
        while the connection was busy elsewhere is not seen here, which costs at most one
        ``timeout`` of delay, never an event.
        """
        for _ in self._conn.notifies(timeout=timeout, stop_after=1):
            pass

    def page(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` events ``(notification_id, body)`` after ``after``, in commit order.

        The ledger writes under ``LOCK TABLE ... EXCLUSIVE`` (see ``ledger.store``), so ids
        are handed out in commit order and an id read here is never followed by a smaller
        one committed later. Ids may have gaps (failed transactions); a gap is no loss.
        """
        try:
            with self._conn.cursor(binary=True) as cursor:
                cursor.execute(_PAGE, (after, limit), prepare=True)
                return cursor.fetchall()
        except pg_errors.UndefinedTable:
            return []  # no ledger has written yet: the ledger creates its table
