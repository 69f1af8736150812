"""The stream half of a running system: relay and projection workers, and "caught up" checks.

``Pipeline`` runs the relay (PostgreSQL -> Kafka) in a thread and one projection worker
(Kafka -> PostgreSQL read models) on its own event loop, for ``primeledger run`` and the demo.
Each half can also run alone (``primeledger relay``, ``primeledger project``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from projections.catalog import ALL, canonical
from projections.generations import parse_multirange
from projections.worker import ThreadedWorker, WorkerConfig
from streams.relay import Relay
from streams.topics import ensure_topics


def applied_through(url: str, projection: str, ledger: str) -> int:
    """The position up to which the live generation of ``projection`` applied ``ledger``."""
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT schema FROM projection_live WHERE projection = %s",
            (canonical(projection),),
        )
        row = cur.fetchone()
        if row is None:
            return 0
        cur.execute(
            sql.SQL("SELECT positions::text FROM {}.applied WHERE ledger = %s").format(
                sql.Identifier(row[0])
            ),
            (ledger,),
        )
        found = cur.fetchone()
    if found is None:
        return 0
    ranges = parse_multirange(found[0]).ranges()
    return ranges[0][1] - 1 if ranges and ranges[0][0] <= 1 else 0


def ledger_head(url: str, ledger: str) -> int:
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT head FROM primeledger_heads WHERE ledger = %s", (ledger,))
        row = cur.fetchone()
    return int(row[0]) if row else 0


class Pipeline:
    """Relay and projection workers over one database and one broker."""

    def __init__(
        self,
        database_url: str,
        bootstrap: str,
        *,
        projections: Sequence[str] = ALL,
        relay_name: str = "default",
        group_id: str = "primeledger-projections",
        relay_options: dict[str, Any] | None = None,
    ) -> None:
        self.database_url = database_url
        self.projections = [canonical(p) for p in projections]
        ensure_topics(bootstrap)
        self.relay = Relay(database_url, bootstrap, relay_name, **(relay_options or {}))
        self.worker = ThreadedWorker(
            WorkerConfig(database_url, bootstrap, projections=self.projections, group_id=group_id)
        )
        self._stop = threading.Event()
        self._relay_thread = threading.Thread(
            target=self.relay.run_forever, args=(self._stop,), name="relay", daemon=True
        )

    def start(self) -> Pipeline:
        self._relay_thread.start()
        self.worker.start(wait_assigned=90.0)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._relay_thread.join(30)
        self.worker.stop()
        self.relay.close()

    def __enter__(self) -> Pipeline:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def wait_caught_up(self, ledger: str, timeout: float = 120.0) -> int:
        """Block until every projection applied the ledger up to its head; returns the head."""
        head = ledger_head(self.database_url, ledger)
        deadline = time.monotonic() + timeout
        while True:
            behind = {p: applied_through(self.database_url, p, ledger) for p in self.projections}
            if all(position >= head for position in behind.values()):
                return head
            if time.monotonic() > deadline:
                raise TimeoutError(f"projections not caught up to {head} in {timeout}s: {behind}")
            if self.worker.error is not None:
                raise RuntimeError("projection worker stopped") from self.worker.error
            time.sleep(0.1)
