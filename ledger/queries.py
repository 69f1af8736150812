"""Questions the write side's own state can answer (the read side answers from projections)."""

from __future__ import annotations

from dataclasses import dataclass

from ledger.accounts import split_client_account
from ledger.money import format_units
from ledger.state import LedgerState


@dataclass(frozen=True, slots=True)
class BalanceRow:
    client: str
    sub_account: str
    asset: str
    bucket: str
    units: int

    @property
    def amount(self) -> str:
        return format_units(self.units, self.asset)


def client_balances(state: LedgerState, client: str | None = None) -> list[BalanceRow]:
    """Every non-zero client bucket, in the client's direction (what the firm owes)."""
    rows = []
    for (account, asset_code), units in state.balances.items():
        parts = split_client_account(account)
        if parts is None or (client is not None and parts[0] != client):
            continue
        rows.append(BalanceRow(parts[0], parts[1], asset_code, parts[2], -units))
    return sorted(rows, key=lambda r: (r.client, r.sub_account, r.asset, r.bucket))


def asset_totals(state: LedgerState) -> dict[str, int]:
    """Per asset, the sum of all postings: zero in a healthy ledger."""
    totals: dict[str, int] = {}
    for (_, asset_code), units in state.balances.items():
        totals[asset_code] = totals.get(asset_code, 0) + units
    return totals
