"""Audit: replay a ledger's whole log from the start and prove it was not altered.

``verify_ledger`` opens every stored event in position order, checking its hash, its link to
the previous event, that positions have no gap and that its postings balance; it then checks
that the replayed state equals the writer's latest snapshot at the same position.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ledger.errors import LedgerFaultError
from ledger.journal import open_sealed
from ledger.state import LedgerState
from ledger.store import LedgerStore


@dataclass(frozen=True, slots=True)
class AuditReport:
    ledger: str
    events: int
    head_hash: str
    snapshots_checked: int
    asset_sums: dict[str, int]

    @property
    def ok(self) -> bool:
        return all(total == 0 for total in self.asset_sums.values())


def verify_ledger(
    url: str, ledger: str, *, progress: Callable[[int], None] | None = None
) -> AuditReport:
    """Replay and check the whole log; raises ``LedgerFaultError`` on the first defect."""
    store = LedgerStore(url, ledger, create=False)
    try:
        head = store.head()
        state = LedgerState()
        for body in store.event_bodies(after=0, until=head):
            entry = open_sealed(body, prev=state.head_hash)
            if entry.position != state.position + 1:
                raise LedgerFaultError(f"gap before position {entry.position}")
            state.apply(entry)
            if progress is not None and entry.position % 10_000 == 0:
                progress(entry.position)
        if state.position != head:
            raise LedgerFaultError(f"log ends at {state.position}, head says {head}")
        checked = 0
        snapshot = store.latest_snapshot(head)
        if snapshot is not None:
            replayed = _state_at(store, snapshot[0])
            if replayed.to_snapshot() != LedgerState.from_snapshot(snapshot[1]).to_snapshot():
                raise LedgerFaultError(f"snapshot at {snapshot[0]} differs from the replayed log")
            checked = 1
        sums: dict[str, int] = {}
        for (_, asset_code), units in state.balances.items():
            sums[asset_code] = sums.get(asset_code, 0) + units
        return AuditReport(ledger, state.position, state.head_hash, checked, sums)
    finally:
        store.close()


def _state_at(store: LedgerStore, position: int) -> LedgerState:
    state = LedgerState()
    for body in store.event_bodies(after=0, until=position):
        state.apply(open_sealed(body, prev=state.head_hash))
    return state
