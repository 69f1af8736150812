"""Trust-reserve positions: per asset, what the firm owes clients against what it holds on trust.

The table keeps five sums per (ledger, asset), each in the account's normal direction:
client liabilities (every ``client:*`` bucket; ``borrowed`` counts negative), custody hot
wallets, custody cold wallets, trust bank accounts, and the insurance fund (``house:
insurance_fund``, the compensation cover set aside). The figures a regulator asks for are
derived from these when read (``TrustReservePosition``), so the rules can change without a
rebuild:

* holdings on trust = hot + cold + trust bank; shortfall = liabilities - holdings, if positive;
  surplus = holdings - liabilities, if positive (the firm's own money on trust: income such
  as fees that was not swept out);
* cold-storage ratio = cold / (hot + cold) for a virtual asset, against the 98% rule;
* compensation cover required = 100% of hot + 50% of cold (rounded up to a whole unit),
  against the insurance fund's balance in the same asset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Final

from ledger.money import asset as registered_asset
from ledger.money import format_units
from projections.base import Batch, Cursor, Totals, add_totals, q, small, upsert_sum
from projections.decode import (
    CLIENT,
    CUSTODY_COLD,
    CUSTODY_HOT,
    INSURANCE_FUND,
    TRUST_BANK,
    Event,
    account_info,
)

COLD_STORAGE_MIN: Final = Fraction(98, 100)
HOT_COVER: Final = Fraction(1)
COLD_COVER: Final = Fraction(1, 2)
COLUMNS: Final = (
    "client_liabilities",
    "custody_hot",
    "custody_cold",
    "trust_bank",
    "insurance_fund",
)
# Column index and normal sign per account kind: liabilities and equity are credit-normal.
_SLOT: Final[dict[str, tuple[int, int]]] = {
    CLIENT: (0, -1),
    CUSTODY_HOT: (1, 1),
    CUSTODY_COLD: (2, 1),
    TRUST_BANK: (3, 1),
    INSURANCE_FUND: (4, -1),
}


class TrustReserve:
    name: Final = "trust_reserve"

    def create_sql(self, schema: str) -> list[str]:
        sums = ", ".join(f"{c} numeric(60,0) NOT NULL DEFAULT 0" for c in COLUMNS)
        return [
            q(
                schema,
                f"CREATE TABLE {{s}}.trust_reserve (ledger text NOT NULL, asset text NOT NULL,"
                f" {sums}, PRIMARY KEY (ledger, asset))",
            )
        ]

    def index_sql(self, schema: str) -> list[str]:
        return []

    def hash_sql(self, schema: str) -> list[str]:
        return [
            q(
                schema,
                f"SELECT ledger, asset, {', '.join(COLUMNS)} FROM {{s}}.trust_reserve"
                ' ORDER BY ledger COLLATE "C", asset COLLATE "C"',
            )
        ]

    checked_types: Final[frozenset[str]] = frozenset()  # whatever decodes can be summed

    def check(self, event: Event) -> None:
        pass

    def apply(self, cur: Cursor, schema: str, events: Sequence[Event]) -> None:
        self.write(cur, schema, self.aggregate(Batch(events)))

    def aggregate(self, batch: Batch) -> Totals:
        """Per (ledger, asset), the batch's change of each column."""
        sums: Totals = {}
        for (ledger, account, asset), units in batch.sums.items():
            slot = _SLOT.get(account_info(account).kind)
            if slot is None:
                continue
            row = sums.get((ledger, asset))
            if row is None:
                row = sums[(ledger, asset)] = [0, 0, 0, 0, 0]
            row[slot[0]] += slot[1] * units
        return sums

    # --- held back by a rebuild (see ``base.HoldsBack``): everything, the table is sums only
    def start_holding(self) -> Totals:
        return {}

    def holdable(self, sums: Totals) -> bool:
        return all(small(row) for row in sums.values())

    def write_page(self, cur: Cursor, schema: str, sums: Totals, held: Totals) -> Totals:
        return sums

    def add(self, held: Totals, pending: Totals) -> None:
        add_totals(held, pending)

    def held_size(self, held: Totals) -> int:
        return len(held)

    def write_held(self, cur: Cursor, schema: str, held: Totals) -> None:
        self.write(cur, schema, held)
        held.clear()

    def write(self, cur: Cursor, schema: str, sums: Totals) -> None:
        upsert_sum(
            cur,
            q(schema, "{s}.trust_reserve"),
            ("ledger", "asset"),
            COLUMNS,
            [(*key, *row) for key, row in sums.items()],
        )


@dataclass(frozen=True, slots=True)
class TrustReservePosition:
    """One asset's position with the derived figures and alerts."""

    ledger: str
    asset: str
    client_liabilities: int
    custody_hot: int
    custody_cold: int
    trust_bank: int
    insurance_fund: int

    @classmethod
    def from_sums(cls, ledger: str, asset: str, sums: Sequence[int]) -> TrustReservePosition:
        return cls(ledger, asset, *(int(v) for v in sums))

    @property
    def virtual(self) -> bool:
        return registered_asset(self.asset).is_virtual

    @property
    def holdings(self) -> int:
        return self.custody_hot + self.custody_cold + self.trust_bank

    @property
    def shortfall(self) -> int:
        return max(self.client_liabilities - self.holdings, 0)

    @property
    def surplus(self) -> int:
        """Holdings beyond what clients are owed: the firm's own money on trust.

        Fees, spread and interest the house earns move liability from clients to house
        accounts without money leaving the trust bank or the custody wallets, so they stay on
        trust until swept out. Client money must not be mixed with the firm's, so compliance
        watches this figure as closely as a shortfall; it is shown, not alerted on (a small
        buffer kept on trust is a firm's choice).
        """
        return max(self.holdings - self.client_liabilities, 0)

    @property
    def cold_ratio(self) -> Fraction | None:
        """Cold share of custody holdings (virtual assets with custody holdings only)."""
        custody = self.custody_hot + self.custody_cold
        if not self.virtual or custody <= 0:
            return None
        return Fraction(self.custody_cold, custody)

    @property
    def cover_required(self) -> int:
        exact = HOT_COVER * max(self.custody_hot, 0) + COLD_COVER * max(self.custody_cold, 0)
        return -((-exact.numerator) // exact.denominator)  # rounded up: cover is a minimum

    @property
    def cover_shortfall(self) -> int:
        return max(self.cover_required - self.insurance_fund, 0)

    @property
    def alerts(self) -> tuple[str, ...]:
        found = []
        if self.shortfall:
            found.append("trust_shortfall")
        ratio = self.cold_ratio
        if ratio is not None and ratio < COLD_STORAGE_MIN:
            found.append("cold_storage_below_98pct")
        if self.cover_shortfall:
            found.append("compensation_cover_shortfall")
        return tuple(found)

    def to_json(self) -> dict[str, Any]:
        def money(units: int) -> str:
            return format_units(units, self.asset)

        ratio = self.cold_ratio
        return {
            "ledger": self.ledger,
            "asset": self.asset,
            "client_liabilities": money(self.client_liabilities),
            "custody_hot": money(self.custody_hot),
            "custody_cold": money(self.custody_cold),
            "trust_bank": money(self.trust_bank),
            "holdings": money(self.holdings),
            "shortfall": money(self.shortfall),
            "surplus": money(self.surplus),
            "cold_ratio": None if ratio is None else _percent(ratio),
            "cover_required": money(self.cover_required),
            "cover_available": money(self.insurance_fund),
            "cover_shortfall": money(self.cover_shortfall),
            "alerts": list(self.alerts),
        }


def _percent(ratio: Fraction) -> str:
    """A ratio as a percentage with two decimals, rounded down (never flatters the firm)."""
    scaled = ratio * 10000
    hundredths = scaled.numerator // scaled.denominator
    return f"{hundredths // 100}.{hundredths % 100:02d}%"
