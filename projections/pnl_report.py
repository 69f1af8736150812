"""The P&L report: figures by sub-account, day and asset, and totals in a chosen currency.

Amounts are kept in the currency they arose in (realised P&L and trade fees in the quote,
fees in the asset charged). Totals convert them at the latest marks: directly (``HKD/USD``),
or through the inverse mark (``USD/HKD``); a currency without either is listed as unpriced
and left out of the totals rather than guessed. Open lots are valued at the latest mark of
their pair (unrealised = quantity x mark - cost). Conversions are exact fractions, rounded
half-even only when a figure is formatted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from ledger.money import ASSETS, format_units
from projections.pnl import PNL_COLUMNS, price_of


@dataclass(frozen=True, slots=True)
class PnlLine:
    """One day's P&L of a sub-account in one asset, in ``currency`` minor units."""

    client: str
    sub_account: str
    day: str
    asset: str
    currency: str
    realised: int
    fees: int
    interest: int
    staking_rewards: int
    funding: int


@dataclass(frozen=True, slots=True)
class OpenPosition:
    client: str
    sub_account: str
    asset: str
    quote: str
    quantity: int  # base minor units
    cost: int  # quote minor units
    mark: str | None
    unrealised: int | None  # quote minor units; None without a mark


@dataclass(frozen=True, slots=True)
class PnlReport:
    ledger: str
    currency: str
    cost_method: str
    lines: list[PnlLine]
    positions: list[OpenPosition]
    totals: dict[str, dict[str, str]]  # "client/sub_account" -> figure -> amount in currency
    unpriced: list[str]  # currencies without a mark into the reporting currency

    def to_json(self) -> dict[str, Any]:
        return {
            "ledger": self.ledger,
            "currency": self.currency,
            "cost_method": self.cost_method,
            "totals": self.totals,
            "by_day": [
                {
                    **{k: getattr(line, k) for k in ("client", "sub_account", "day", "asset")},
                    "currency": line.currency,
                    **{c: format_units(getattr(line, c), line.currency) for c in PNL_COLUMNS},
                }
                for line in self.lines
            ],
            "open_positions": [
                {
                    "client": p.client,
                    "sub_account": p.sub_account,
                    "asset": p.asset,
                    "quote": p.quote,
                    "quantity": format_units(p.quantity, p.asset),
                    "cost": format_units(p.cost, p.quote),
                    "mark": p.mark,
                    "unrealised": None
                    if p.unrealised is None
                    else format_units(p.unrealised, p.quote),
                }
                for p in self.positions
            ],
            "unpriced": self.unpriced,
        }


def build_report(
    ledger: str,
    currency: str,
    cost_method: str,
    lines: list[PnlLine],
    lots: Iterable[tuple[str, str, str, str, int, int]],
    marks: Mapping[tuple[str, str], str],
) -> PnlReport:
    """Open positions valued at the latest marks, and totals per sub-account in ``currency``.

    ``lots`` are (client, sub, base, quote, quantity, cost); lots of a pool are summed.
    """
    if currency not in ASSETS:
        raise ValueError(f"currency: unknown asset {currency!r}")
    rates = {pair: price_of(price) for pair, price in marks.items()}
    positions = _positions(lots, marks, rates)
    totals: dict[str, dict[str, Fraction]] = {}
    unpriced: set[str] = set()

    def add(owner: str, figure: str, units: int, asset_code: str) -> None:
        value = _convert(units, asset_code, currency, rates)
        if value is None:
            unpriced.add(asset_code)
            return
        figures = totals.setdefault(owner, {})
        figures[figure] = figures.get(figure, Fraction(0)) + value

    for line in lines:
        for column in PNL_COLUMNS:
            add(f"{line.client}/{line.sub_account}", column, getattr(line, column), line.currency)
    for position in positions:
        if position.unrealised is None:
            unpriced.add(position.asset)
        else:
            add(
                f"{position.client}/{position.sub_account}",
                "unrealised",
                position.unrealised,
                position.quote,
            )
    return PnlReport(
        ledger=ledger,
        currency=currency,
        cost_method=cost_method,
        lines=sorted(lines, key=lambda x: (x.client, x.sub_account, x.day, x.asset, x.currency)),
        positions=positions,
        totals={
            owner: _format_totals(figures, currency) for owner, figures in sorted(totals.items())
        },
        unpriced=sorted(unpriced),
    )


def _positions(
    lots: Iterable[tuple[str, str, str, str, int, int]],
    marks: Mapping[tuple[str, str], str],
    rates: Mapping[tuple[str, str], Fraction],
) -> list[OpenPosition]:
    pools: dict[tuple[str, str, str, str], list[int]] = {}
    for client, sub, base, quote, quantity, cost in lots:
        pool = pools.setdefault((client, sub, base, quote), [0, 0])
        pool[0] += quantity
        pool[1] += cost
    out = []
    for (client, sub, base, quote), (quantity, cost) in sorted(pools.items()):
        rate = rates.get((base, quote))
        unrealised = None
        if rate is not None:
            unrealised = round(quantity * rate * _scale(quote, base)) - cost
        out.append(
            OpenPosition(
                client, sub, base, quote, quantity, cost, marks.get((base, quote)), unrealised
            )
        )
    return out


def _convert(
    units: int, source: str, target: str, rates: Mapping[tuple[str, str], Fraction]
) -> Fraction | None:
    """``units`` of ``source`` in major units of ``target``, via a direct or inverse mark."""
    amount = Fraction(units, 10 ** ASSETS[source].scale)
    if source == target:
        return amount
    if (source, target) in rates:
        return amount * rates[(source, target)]
    inverse = rates.get((target, source))
    if inverse:
        return amount / inverse
    return None


def _format_totals(figures: dict[str, Fraction], currency: str) -> dict[str, str]:
    scale = 10 ** ASSETS[currency].scale
    units = {k: round(v * scale) for k, v in figures.items()}
    for figure in (*PNL_COLUMNS, "unrealised"):
        units.setdefault(figure, 0)
    gains = units["realised"] + units["interest"] + units["staking_rewards"] + units["funding"]
    units["net"] = gains + units["unrealised"] - units["fees"]
    return {k: format_units(v, currency) for k, v in units.items()}


def _scale(quote: str, base: str) -> Fraction:
    """Quote minor units per (base minor unit x price)."""
    return Fraction(10 ** ASSETS[quote].scale, 10 ** ASSETS[base].scale)
