"""One command through the writer: idempotency, decide, seal, apply. No I/O here.

``Processor.process`` is what the single writer runs for each command of a batch; the
property tests run exactly this code against the in-memory state, and the writer adds only
batching and the store around it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from ledger.commands import Command, command_hash, parse_command
from ledger.decide import DECIDERS, Context, Draft
from ledger.decide_trading import TRADING_DECIDERS, trust_alerts
from ledger.errors import Rejection
from ledger.journal import Entry, open_sealed, seal
from ledger.money import ASSETS, MAX_UNITS
from ledger.native import PURE_PYTHON
from ledger.results import CommandResult
from ledger.state import LedgerState
from ledger.store import CommandRecord

try:
    from ledger import _fastpath
except ImportError:  # not built here (no C compiler): the Python path gives the same outcomes
    _fastpath = None  # type: ignore[assignment]

ALL_DECIDERS = {**DECIDERS, **TRADING_DECIDERS}
RECENT_ENTRIES = 50_000  # sealed bodies kept for reversals before falling back to the store
# Idempotency records kept in memory; older ones are found in the store, one query per batch.
KNOWN_KEYS = 200_000
# What the writer keeps per command is held as tuples, strings and bytes only: the garbage
# collector untracks such tuples, so hundreds of thousands of them never make its full
# collections long (as dataclass records and entries did: pauses of ~200 ms every few
# hundred thousand commands, felt as latency spikes by every caller).
Known = tuple[str, bytes]  # (command hash, result JSON)


@dataclass
class Outcome:
    """The result of one command plus what must be written for it."""

    result: CommandResult
    events: list[tuple[int, str, bytes]] = field(default_factory=list)
    record: CommandRecord | None = None


# An accepted transfer, the commonest command, decided and sealed in C (``_fastpath.c``): the
# same outcome and the same state changes as ``process`` below, or None for anything else,
# which this module then decides. PRIMELEDGER_PURE_PYTHON=1 leaves it out.
FastTransfer = Callable[["Processor", Mapping[str, Any]], Outcome | None]
_fast_transfer: FastTransfer | None = None
_fast_all: Callable[..., None] | None = None
if _fastpath is not None and not PURE_PYTHON:
    _fastpath.configure(
        {code: a.scale for code, a in ASSETS.items()},
        CommandResult,
        CommandRecord,
        Outcome,
        hashlib.sha256,
        UTC,
        RECENT_ENTRIES,
        KNOWN_KEYS,
        MAX_UNITS,
    )
    _fast_transfer = _fastpath.transfer
    _fast_all = _fastpath.process_all


class Processor:
    """Decides commands against ``state`` and applies the events it seals, in order."""

    def __init__(
        self,
        ledger: str,
        state: LedgerState,
        *,
        clock: Callable[[], datetime] | None = None,
        load_body: Callable[[int], bytes | None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.state = state
        self.clock = clock or partial(datetime.now, UTC)
        # The C fast path reads the wall clock itself unless a clock was given (tests).
        self._system_clock = clock is None
        self.fast_transfer = _fast_transfer
        self.load_body = load_body
        self.known: OrderedDict[str, Known] = OrderedDict()
        # True while ``known`` holds every key of the ledger (a new ledger, nothing evicted):
        # then a key missing from it is new, and the store need not be asked.
        self.knows_all = False
        # Positions are consecutive, so the oldest kept body is always ``position - RECENT``.
        self.recent: dict[int, bytes] = {}
        self._last_time = datetime.min.replace(tzinfo=UTC)

    def lookup(self, position: int) -> Entry | None:
        body = self.recent.get(position)
        if body is None and self.load_body is not None:
            body = self.load_body(position)
        return open_sealed(body) if body is not None else None

    def remember_records(self, records: Mapping[str, CommandRecord]) -> None:
        """Idempotency records found in the store, for keys of the commands about to run."""
        self.known.update((key, (r.command_hash, r.result)) for key, r in records.items())

    def now(self) -> datetime:
        # Event times never go backwards along the log, so "as of" queries are well defined.
        now = self.clock()
        if now < self._last_time:
            now = self._last_time
        self._last_time = now
        return now

    def process_all(
        self,
        commands: Sequence[Mapping[str, Any] | Command],
        results: list[CommandResult],
        events: list[tuple[int, str, bytes]],
        records: list[CommandRecord],
    ) -> None:
        """``process`` each command in order, appending what the writer needs of them.

        Each result goes to ``results``, each event to ``events``, and each new idempotency
        record (not those of replayed results) to ``records``. With the C fast path in place
        the loop itself runs in C and builds no ``Outcome`` for accepted transfers: the
        same appends, a few microseconds less per command. It takes a list or tuple of
        commands and exact lists to append to, and calls ``_process`` rather than
        ``process``; so a processor whose ``process`` is replaced (a test's, a benchmark's)
        or any other container gets the Python loop.
        """
        if (
            _fast_all is not None
            and self.fast_transfer is _fast_transfer
            and "process" not in self.__dict__  # an overridden process is called for each
            and type(self).process is Processor.process
            and type(commands) in (list, tuple)
            and all(type(out) is list for out in (results, events, records))
        ):
            _fast_all(self, commands, results, events, records)
            return
        for raw in commands:
            outcome = self.process(raw)
            results.append(outcome.result)
            events.extend(outcome.events)
            if outcome.record is not None and not outcome.result.replayed:
                records.append(outcome.record)

    def process(self, raw: Mapping[str, Any] | Command) -> Outcome:
        fast = self.fast_transfer
        if fast is not None and type(raw) is dict and raw.get("type") == "transfer":
            outcome = fast(self, raw)
            if outcome is not None:
                return outcome
        return self._process(raw)

    def _process(self, raw: Mapping[str, Any] | Command) -> Outcome:
        """The Python path: every command the fast path leaves (or all, without it)."""
        try:
            command = parse_command(raw)
        except Rejection as rejection:
            key = str(raw.get("key", "")) if isinstance(raw, Mapping) else ""
            # A command that fails its schema has no canonical form; nothing is recorded.
            return Outcome(
                CommandResult(key, "rejected", code=rejection.code, message=rejection.message)
            )
        digest = command_hash(command)
        known = self.known.get(command.key)
        if known is not None:
            if known[0] != digest:
                return Outcome(
                    CommandResult(
                        command.key,
                        "rejected",
                        code="idempotency_conflict",
                        message="key: used before for a different command",
                    )
                )
            return Outcome(CommandResult.from_json(known[1], replayed=True))
        now = self.now()
        try:
            drafts = ALL_DECIDERS[command.type](self.state, command, Context(now, self.lookup))
        except Rejection as rejection:
            result = CommandResult(
                command.key, "rejected", code=rejection.code, message=rejection.message
            )
            return self._remember(Outcome(result), digest)
        alerts = self._custody_checks(drafts)
        if alerts:
            drafts = drafts + alerts
        time = now.isoformat()
        events: list[tuple[int, str, bytes]] = []
        positions, types = [], []
        for event_type, data, postings in drafts:
            position = self.state.position + 1
            body, digest_event = seal(
                ledger=self.ledger,
                position=position,
                event_type=event_type,
                time=time,
                key=command.key,
                data=data,
                postings=postings,
                prev=self.state.head_hash,
            )
            entry = Entry(
                position,
                event_type,
                time,
                command.key,
                data,
                postings,
                self.state.head_hash,
                digest_event,
            )
            self.state.apply(entry)
            self._keep(position, body)
            events.append((position, event_type, body))
            positions.append(position)
            types.append(event_type)
        result = CommandResult(
            command.key, "accepted", positions=tuple(positions), event_types=tuple(types)
        )
        return self._remember(Outcome(result, events), digest)

    def _custody_checks(self, drafts: list[Draft]) -> list[Draft]:
        """After every event that moves custody holdings, check the 98% cold rule."""
        if not _moves_custody(drafts):  # most events: skip building the tuple and the set
            return []
        every = tuple(p for _, _, ps in drafts for p in ps)
        touched = {code for account, code, _ in every if account.startswith("custody:")}
        return trust_alerts(self.state, touched, every)

    def _remember(self, outcome: Outcome, digest: str) -> Outcome:
        record = CommandRecord(outcome.result.key, digest, outcome.result.to_json())
        self.known[record.key] = (digest, record.result)
        if len(self.known) > KNOWN_KEYS:
            self.known.popitem(last=False)
            self.knows_all = False
        outcome.record = record
        return outcome

    def _keep(self, position: int, body: bytes) -> None:
        self.recent[position] = body
        self.recent.pop(position - RECENT_ENTRIES, None)


def _moves_custody(drafts: list[Draft]) -> bool:
    for _, _, postings in drafts:
        for account, _, _ in postings:
            if account.startswith("custody:"):
                return True
    return False
