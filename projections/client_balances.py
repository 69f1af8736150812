"""Per-client balances: per client, sub-account, asset and bucket, plus an index of events.

A client account is a liability: its balance is shown in its normal direction, so a bucket's
balance is minus the sum of its postings (a deposit of 100 credits ``available`` by -100 and
shows as 100). ``borrowed`` is what the client owes and shows as a negative amount. The total
of a (client, sub-account, asset) is the sum of its buckets.

Two tables per generation:

* ``balances``: the current units per (ledger, client, sub_account, asset, bucket), upserted
  with the batch's summed deltas.
* ``client_events``: one row per (event, client it touched), appended with ``COPY``: which
  positions of the log hold a client's postings. "As of" (a sum up to a time or position) and
  ``explain`` (the events whose sum is the balance) read those events' bodies from the store,
  the system of record, when asked (see ``queries``). Keeping only the positions, not a row
  per posting, makes a rebuild write about half the rows, three narrow columns each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import orjson
import psycopg

from ledger.accounts import Bucket
from ledger.money import format_units
from projections.base import Batch, Cursor, ProjectionSetupError, q, small, upsert_sum
from projections.decode import CLIENT, Event, account_info

BUCKETS: Final[tuple[str, ...]] = tuple(b.value for b in Bucket)
FEED_SCHEMA_VERSION: Final = 1

BalanceKey = tuple[str, str, str, str]  # (ledger, client, sub_account, asset)


@dataclass(frozen=True, slots=True)
class BalanceDelta:
    """A batch's effect: summed posting deltas per key, and event index rows as COPY text."""

    sums: dict[tuple[str, str, str, str, str], int]
    index: str


@dataclass(frozen=True, slots=True)
class FeedMessage:
    """One record for the compacted balances topic: the latest balance of a key."""

    key: bytes
    value: bytes
    ledger: str


class ClientBalances:
    name: Final = "client_balances"

    def create_sql(self, schema: str) -> list[str]:
        return [
            q(
                schema,
                "CREATE TABLE {s}.balances (ledger text NOT NULL, client text NOT NULL,"
                " sub_account text NOT NULL, asset text NOT NULL, bucket text NOT NULL,"
                " units numeric(60,0) NOT NULL,"
                " PRIMARY KEY (ledger, client, sub_account, asset, bucket))",
            ),
            # Byte-order collation: the index build compares bytes, not locale rules.
            q(
                schema,
                'CREATE TABLE {s}.client_events (ledger text COLLATE "C" NOT NULL,'
                ' client text COLLATE "C" NOT NULL, position bigint NOT NULL)',
            ),
        ]

    def index_sql(self, schema: str) -> list[str]:
        # "explain" and as-of by client read one client's rows, which are few enough to filter
        # by ledger and sort on the spot; an index on the client alone is the cheapest to
        # build after a bulk load and to maintain live. As-of without a client reads the
        # whole ledger's rows, for which a sequential scan is right anyway.
        return [q(schema, "CREATE INDEX client_events_by_client ON {s}.client_events (client)")]

    def hash_sql(self, schema: str) -> list[str]:
        # Zero balances carry no information; ordering is by byte value (COLLATE "C") so that
        # the hash does not depend on the server's locale.
        return [
            q(
                schema,
                "SELECT ledger, client, sub_account, asset, bucket, units FROM {s}.balances"
                ' WHERE units <> 0 ORDER BY ledger COLLATE "C", client COLLATE "C",'
                ' sub_account COLLATE "C", asset COLLATE "C", bucket COLLATE "C"',
            ),
            q(
                schema,
                "SELECT ledger, client, position FROM {s}.client_events"
                ' ORDER BY ledger COLLATE "C", client COLLATE "C", position',
            ),
        ]

    checked_types: Final[frozenset[str]] = frozenset()  # whatever decodes can be summed

    def check(self, event: Event) -> None:
        pass

    def apply(self, cur: Cursor, schema: str, events: Sequence[Event]) -> None:
        self.write(cur, schema, self.aggregate(Batch(events)))

    def aggregate(self, batch: Batch) -> BalanceDelta:
        deltas: dict[tuple[str, str, str, str, str], int] = {}
        for (ledger, account, asset), units in batch.sums.items():
            info = account_info(account)
            if info.kind == CLIENT:
                deltas[(ledger, info.client, info.sub_account, asset, info.bucket)] = -units
        return BalanceDelta(deltas, _index_rows(batch.events))

    def write(self, cur: Cursor, schema: str, delta: BalanceDelta) -> None:
        self._upsert(cur, schema, [(*key, units) for key, units in delta.sums.items()])
        if not delta.index:
            return
        statement = q(schema, "COPY {s}.client_events (ledger, client, position) FROM STDIN")
        try:
            with cur.copy(statement) as copy:
                copy.write(delta.index)
        except psycopg.errors.UndefinedTable as exc:
            # Stop the worker rather than dead-letter every event with client postings.
            raise index_missing(schema) from exc

    # --- held back by a rebuild (see ``base.HoldsBack``): the sums; the index goes with its page
    def start_holding(self) -> dict[tuple[str, str, str, str, str], int]:
        return {}

    def holdable(self, delta: BalanceDelta) -> bool:
        return small(delta.sums.values())

    def write_page(
        self,
        cur: Cursor,
        schema: str,
        delta: BalanceDelta,
        held: dict[tuple[str, str, str, str, str], int],
    ) -> dict[tuple[str, str, str, str, str], int]:
        self.write(cur, schema, BalanceDelta({}, delta.index))
        return delta.sums

    def add(
        self,
        held: dict[tuple[str, str, str, str, str], int],
        pending: dict[tuple[str, str, str, str, str], int],
    ) -> None:
        get = held.get
        for key, units in pending.items():
            held[key] = get(key, 0) + units

    def held_size(self, held: dict[tuple[str, str, str, str, str], int]) -> int:
        return len(held)

    def write_held(
        self, cur: Cursor, schema: str, held: dict[tuple[str, str, str, str, str], int]
    ) -> None:
        self._upsert(cur, schema, [(*key, units) for key, units in held.items()])
        held.clear()

    def _upsert(self, cur: Cursor, schema: str, rows: list[tuple[str | int, ...]]) -> None:
        upsert_sum(
            cur,
            q(schema, "{s}.balances"),
            ("ledger", "client", "sub_account", "asset", "bucket"),
            ("units",),
            rows,
        )

    def feed(self, cur: Cursor, schema: str, events: Sequence[Event]) -> list[FeedMessage]:
        """The latest balance of every (client, sub-account, asset) these events changed.

        Read after ``apply`` in the same transaction, so each message is the state the
        transaction commits.
        """
        touched: dict[BalanceKey, int] = {}
        for event in events:
            for _, asset, _, info in event.postings:
                if info[0] == CLIENT:
                    key = (event.ledger, info[1], info[2], asset)
                    touched[key] = max(touched.get(key, 0), event.position)
        if not touched:
            return []
        columns = [list(c) for c in zip(*touched, strict=True)]
        cur.execute(
            q(
                schema,
                "SELECT b.ledger, b.client, b.sub_account, b.asset, b.bucket, b.units::text"
                " FROM {s}.balances b JOIN unnest(%s::text[], %s::text[], %s::text[], %s::text[])"
                " AS k(ledger, client, sub_account, asset) USING (ledger, client, sub_account,"
                " asset)",
            ),
            columns,
        )
        found: dict[BalanceKey, dict[str, int]] = {key: {} for key in touched}
        for ledger, client, sub, asset, bucket, units in cur.fetchall():
            found[(ledger, client, sub, asset)][bucket] = int(units)
        return [feed_message(key, found[key], position) for key, position in touched.items()]


def index_missing(schema: str) -> ProjectionSetupError:
    """The error for a generation built before ``client_events`` replaced the history."""
    return ProjectionSetupError(
        f"client_balances: generation {schema} has no client_events table (built by an older"
        " version): replay the balances read model"
    )


def _index_rows(events: Sequence[Event]) -> str:
    """``client_events`` rows as text COPY: one line per distinct client of each event.

    Text COPY needs no escaping here: decode checked every field (ledger names and client ids
    carry no tab, newline or backslash).
    """
    lines: list[str] = []
    append = lines.append
    for ledger, position, _, _, _, postings in events:
        # Most events touch one client, often in several postings (a trade's legs and fee):
        # remember the first and fall back to a set only when a second one shows up.
        first = ""
        others: set[str] | None = None
        for _, _, _, info in postings:
            if info[0] != CLIENT:
                continue
            client = info[1]
            if not first:
                first = client
            elif client != first:
                if others is None:
                    others = set()
                others.add(client)
        if first:
            append(f"{ledger}\t{first}\t{position}\n")
            if others is not None:
                append("".join(f"{ledger}\t{c}\t{position}\n" for c in sorted(others)))
    return "".join(lines)


def feed_message(key: BalanceKey, units: dict[str, int], position: int) -> FeedMessage:
    """A balances-topic record; the Kafka key names (ledger, client, sub-account, asset)."""
    ledger, client, sub, asset = key
    body = {
        "v": FEED_SCHEMA_VERSION,
        "ledger": ledger,
        "client": client,
        "sub_account": sub,
        "asset": asset,
        "position": position,
        "balances": {b: format_units(units.get(b, 0), asset) for b in BUCKETS},
        "total": format_units(sum(units.values()), asset),
    }
    return FeedMessage(
        key=orjson.dumps([ledger, client, sub, asset]),
        value=orjson.dumps(body),
        ledger=ledger,
    )
