"""The single writer of a ledger: decide in memory, group-commit to PostgreSQL, then answer.

Two threads form a pipeline (in the spirit of LMAX and TigerBeetle):

* the *decider* takes every command waiting in the inbox (up to ``batch_max``), runs each
  through ``Processor`` against the in-memory state and hands the batch on;
* the *committer* writes the batch's events and idempotency records in one transaction and
  only then releases the callers' answers.

The decider works on batch k+1 while batch k commits. If a commit fails, the state the decider
built on it is void: every later batch of that generation is failed too, and the decider
rebuilds its state from the store before it takes new commands. Callers get
``StorageUnavailableError`` and may retry with the same idempotency keys.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from ledger.commands import Command
from ledger.errors import LedgerFaultError, StorageUnavailableError, WriterFencedError
from ledger.journal import open_sealed
from ledger.processing import Processor
from ledger.results import CommandResult
from ledger.state import LedgerState
from ledger.store import CommandRecord, LedgerStore

log = logging.getLogger(__name__)
T = TypeVar("T")
RawCommand = Mapping[str, Any] | Command


def load_state(store: LedgerStore, until: int | None = None) -> LedgerState:
    """Rebuild the writer's state: the latest snapshot, then every later event, verified."""
    head = store.head() if until is None else until
    snapshot = store.latest_snapshot(head)
    state = LedgerState.from_snapshot(snapshot[1]) if snapshot else LedgerState()
    for body in store.event_bodies(after=state.position, until=head):
        entry = open_sealed(body, prev=state.head_hash)
        if entry.position != state.position + 1:
            raise LedgerFaultError(f"log gap: expected {state.position + 1}, got {entry.position}")
        state.apply(entry)
    if state.position != head:
        raise LedgerFaultError(f"log ends at {state.position}, head says {head}")
    return state


@dataclass
class _Ticket:
    commands: Sequence[RawCommand] = ()
    read: Callable[[LedgerState], Any] | None = None
    results: list[CommandResult] = field(default_factory=list)
    value: Any = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    handed: bool = False  # in a batch on its way to the committer, which will answer it

    def finish(self, error: BaseException | None = None) -> None:
        self.error = error
        self.done.set()


@dataclass
class _Batch:
    generation: int
    expected_head: int
    tickets: list[_Ticket]
    events: list[tuple[int, str, bytes]]
    records: list[CommandRecord]
    snapshot: tuple[int, bytes] | None


class Ledger:
    """Submit commands, read state; one instance is the only writer of its ledger."""

    def __init__(
        self,
        url: str,
        name: str = "main",
        *,
        batch_max: int = 2000,
        snapshot_every: int = 50_000,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.name = name
        self.batch_max = batch_max
        self.snapshot_every = snapshot_every
        self._clock = clock
        self.store = LedgerStore(url, name)
        self.epoch, head = self.store.claim()
        self.processor = self._fresh_processor(head)
        self._last_snapshot = self.processor.state.position
        self._inbox: queue.Queue[_Ticket | None] = queue.Queue()
        self._commits: queue.Queue[_Batch | None] = queue.Queue(maxsize=2)
        self._generation = 0
        self._reload = False
        self._fenced: WriterFencedError | None = None
        self._closed = False
        self._decider = threading.Thread(target=self._decide_loop, name=f"decide-{name}")
        self._committer = threading.Thread(target=self._commit_loop, name=f"commit-{name}")
        self._decider.start()
        self._committer.start()

    def _fresh_processor(self, head: int | None = None) -> Processor:
        state = load_state(self.store, head)
        processor = Processor(self.name, state, clock=self._clock, load_body=self.store.event_body)
        processor.knows_all = not self.store.has_commands()
        # The state is long-lived: keep the collector from rescanning it on every batch.
        gc.freeze()
        return processor

    # --- public API ----------------------------------------------------------------------
    def submit(self, commands: Sequence[RawCommand]) -> list[CommandResult]:
        """Carry out commands in order; returns once every one is durable (or rejected)."""
        ticket = self._enqueue(_Ticket(commands=commands))
        return ticket.results

    def submit_one(self, command: RawCommand) -> CommandResult:
        return self.submit([command])[0]

    def read(self, query: Callable[[LedgerState], T]) -> T:
        """Run ``query`` on the state once everything submitted before it is durable."""
        ticket = self._enqueue(_Ticket(read=query))
        return ticket.value  # type: ignore[no-any-return]

    @property
    def position(self) -> int:
        return self.read(lambda s: s.position)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._inbox.put(None)
        self._decider.join()
        self._committer.join()
        self.store.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _enqueue(self, ticket: _Ticket) -> _Ticket:
        if self._fenced is not None:
            raise self._fenced
        if self._closed:
            raise RuntimeError(f"ledger {self.name!r} is closed")
        self._inbox.put(ticket)
        # Never wait for ever on a writer that is gone: a dead thread is a fault to report.
        while not ticket.done.wait(1.0):
            if not (self._decider.is_alive() and self._committer.is_alive()):
                raise LedgerFaultError(f"ledger {self.name!r}: the writer's threads stopped")
        if ticket.error is not None:
            raise ticket.error
        return ticket

    # --- decider -------------------------------------------------------------------------
    def _decide_loop(self) -> None:
        try:
            self._decide_until_closed()
        finally:
            self._commits.put(None)  # the committer stops after what is already queued

    def _decide_until_closed(self) -> None:
        stopping = False
        while not stopping:
            first = self._inbox.get()
            if first is None:
                break
            pending, count = [first], len(first.commands)
            while count < self.batch_max:
                try:
                    more = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                pending.append(more)
                count += len(more.commands)
            try:
                self._run(pending)
            except Exception as exc:
                # The store failed while the writer rebuilt its state (or read it): nobody
                # waiting may hang. What was handed to the committer is answered by it.
                log.exception("ledger %s: the decider could not carry on", self.name)
                self._reload = True
                for ticket in pending:
                    if not ticket.handed and not ticket.done.is_set():
                        ticket.finish(StorageUnavailableError(f"not carried out, retry: {exc}"))

    def _run(self, pending: list[_Ticket]) -> None:
        batch: list[_Ticket] = []
        for ticket in pending:
            if ticket.read is None:
                batch.append(ticket)
                continue
            self._decide(batch)
            batch = []
            self._settle()
            try:
                ticket.value = ticket.read(self.processor.state)
                ticket.finish()
            except Exception as exc:  # a failing query must not stop the writer
                ticket.finish(exc)
        self._decide(batch)

    def _settle(self) -> None:
        """Wait until every handed-on batch is committed; rebuild state if one failed."""
        self._commits.join()
        if self._reload:
            self.processor = self._fresh_processor()
            self._last_snapshot = self.processor.state.position
            self._reload = False

    def _decide(self, tickets: list[_Ticket]) -> None:
        if not tickets:
            return
        if self._fenced is not None:
            for ticket in tickets:
                ticket.finish(self._fenced)
            return
        if self._reload:
            self._settle()
        # The generation this batch is decided in: if a commit fails meanwhile, the committer
        # moves on to a new one and this batch is failed, never committed on a stale state.
        generation = self._generation
        processor = self.processor
        try:
            self._load_known(processor, tickets)
        except Exception as exc:
            for ticket in tickets:
                ticket.finish(StorageUnavailableError(f"idempotency lookup failed: {exc}"))
            return
        expected_head = processor.state.position
        events: list[tuple[int, str, bytes]] = []
        records: list[CommandRecord] = []
        try:
            for ticket in tickets:
                processor.process_all(ticket.commands, ticket.results, events, records)
        except Exception as exc:
            # A bug, not a rejection: the state may hold part of this batch, so none of it is
            # written, every caller in it hears of the fault, and the state is rebuilt.
            log.exception("ledger %s: a command raised instead of deciding", self.name)
            self._settle()
            self._reload = True
            for ticket in tickets:
                ticket.finish(LedgerFaultError(f"command not carried out: {exc!r}"))
            return
        snapshot = None
        position = processor.state.position
        if position - self._last_snapshot >= self.snapshot_every:
            snapshot = (position, processor.state.to_snapshot())
            self._last_snapshot = position
        for ticket in tickets:
            ticket.handed = True
        self._commits.put(_Batch(generation, expected_head, tickets, events, records, snapshot))

    def _load_known(self, processor: Processor, tickets: list[_Ticket]) -> None:
        if processor.knows_all:
            return
        keys = []
        for ticket in tickets:
            for raw in ticket.commands:
                key = raw.get("key") if isinstance(raw, Mapping) else raw.key
                if isinstance(key, str) and key not in processor.known:
                    keys.append(key)
        processor.remember_records(self.store.find_commands(keys))

    # --- committer -----------------------------------------------------------------------
    def _commit_loop(self) -> None:
        while True:
            batch = self._commits.get()
            try:
                if batch is None:
                    return
                self._commit(batch)
            finally:
                self._commits.task_done()

    def _commit(self, batch: _Batch) -> None:
        error: BaseException | None = None
        if self._fenced is not None:
            error = self._fenced
        elif batch.generation != self._generation:
            error = StorageUnavailableError("an earlier batch failed; not carried out, retry")
        elif batch.events or batch.records:
            try:
                self.store.commit_batch(
                    epoch=self.epoch,
                    expected_head=batch.expected_head,
                    events=batch.events,
                    commands=batch.records,
                    snapshot=batch.snapshot,
                )
            except WriterFencedError as exc:
                log.error("ledger %s: %s", self.name, exc)
                self._fenced = error = exc
            except Exception as exc:
                log.exception("ledger %s: batch commit failed", self.name)
                self._reload = True
                self._generation += 1
                error = StorageUnavailableError(f"batch not committed, retry: {exc}")
        for ticket in batch.tickets:
            ticket.finish(error)


def open_ledger(url: str, name: str = "main", **options: Any) -> Ledger:
    return Ledger(url, name, **options)
