"""The read models by name, and the one way a batch is applied to a generation.

Names accepted from the CLI and the API: ``balances`` (or ``client_balances``), ``pnl`` and
``trust-reserve`` (or ``trust_reserve``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from projections.base import Cursor, ReadModel, UnusableEventError
from projections.client_balances import ClientBalances
from projections.decode import Event
from projections.generations import lock_applied, new_events, record_applied
from projections.pnl import Pnl
from projections.trust_reserve import TrustReserve

ALIASES: Final[dict[str, str]] = {
    "balances": "client_balances",
    "client_balances": "client_balances",
    "client-balances": "client_balances",
    "pnl": "pnl",
    "trust-reserve": "trust_reserve",
    "trust_reserve": "trust_reserve",
}
ALL: Final[tuple[str, ...]] = ("client_balances", "pnl", "trust_reserve")


def canonical(name: str) -> str:
    found = ALIASES.get(name)
    if found is None:
        raise ValueError(
            f"projection: unknown read model {name!r}; known: balances, pnl, trust-reserve"
        )
    return found


def read_model(name: str, *, cost_method: str = "fifo") -> ReadModel:
    """A read model by (alias) name; ``cost_method`` applies to the P&L."""
    found = canonical(name)
    if found == "client_balances":
        return ClientBalances()
    if found == "pnl":
        return Pnl(cost_method)
    return TrustReserve()


def read_models(names: str | Iterable[str], *, cost_method: str = "fifo") -> list[ReadModel]:
    """Read models by name, each once, in a fixed order (the order locks are taken in)."""
    wanted = {canonical(n) for n in ([names] if isinstance(names, str) else names)}
    return [read_model(n, cost_method=cost_method) for n in ALL if n in wanted]


def unusable(models: Sequence[ReadModel], event: Event) -> str | None:
    """Why some read model can never apply ``event``, or None if all can."""
    for model in models:
        if event.type not in model.checked_types:
            continue
        try:
            model.check(event)
        except UnusableEventError as exc:
            return f"unusable event: {exc}"
    return None


def apply_tracked(
    cur: Cursor, model: ReadModel, schema: str, events: Sequence[Event]
) -> list[Event]:
    """Apply the events ``schema`` has not applied yet and record them; returns those applied.

    Runs inside the caller's transaction: rows and tracking commit together or not at all.
    """
    applied = lock_applied(cur, schema, (e.ledger for e in events))
    fresh = new_events(events, applied)
    if fresh:
        model.apply(cur, schema, fresh)
        record_applied(cur, schema, fresh)
    return fresh
