"""Exact money: an asset registry with a fixed scale per asset, amounts in integer minor units.

Every decimal string that enters the ledger is parsed here and nowhere else, and every amount
that leaves it as text is formatted here. No float is ever on this path: an amount is an
``int`` counting the asset's smallest unit (cents, satoshis, wei), and the scale that turns it
back into a decimal lives once, in ``ASSETS``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

AssetKind = Literal["fiat", "stablecoin", "crypto"]


@dataclass(frozen=True, slots=True)
class Asset:
    """An asset and its scale: ``1`` minor unit is ``10 ** -scale`` of the asset."""

    code: str
    scale: int
    kind: AssetKind

    @property
    def is_virtual(self) -> bool:
        """Virtual assets are held in custody wallets (hot/cold); fiat sits in trust banks."""
        return self.kind != "fiat"


# Scales are chosen generously and never change: a scale is part of every stored amount.
ASSETS: Final[dict[str, Asset]] = {
    a.code: a
    for a in (
        Asset("USD", 2, "fiat"),
        Asset("HKD", 2, "fiat"),
        Asset("USDC", 6, "stablecoin"),
        Asset("USDT", 6, "stablecoin"),
        Asset("BTC", 8, "crypto"),
        Asset("ETH", 18, "crypto"),
        Asset("SOL", 9, "crypto"),
    )
}

# The largest amount the ledger accepts, in minor units: it keeps every sum of amounts far
# inside PostgreSQL's NUMERIC and the JSON encoders' integer range checks stay meaningful.
MAX_UNITS: Final = 10**36

# ASCII digits only: str.isdigit() and \d accept other scripts' digits, which must not become money.
_DECIMAL = re.compile(r"(-?)([0-9]+)(?:\.([0-9]+))?")


class MoneyError(ValueError):
    """A value that is not an exact amount of the asset; ``code`` is a stable rejection code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def asset(code: str) -> Asset:
    """The registered asset with this code, or ``MoneyError('unknown_asset')``."""
    found = ASSETS.get(code)
    if found is None:
        raise MoneyError("unknown_asset", f"unknown asset {code!r}; known: {', '.join(ASSETS)}")
    return found


def parse_units(text: str, asset_code: str, *, field: str = "amount") -> int:
    """Parse a plain decimal string into integer minor units of the asset.

    Accepts ``[-]digits[.digits]`` in ASCII only. More decimals than the asset's scale, NaN,
    infinity, exponents, spaces, other scripts' digits and anything non-numeric are refused
    with ``invalid_amount``, naming ``field``.
    """
    scale = asset(asset_code).scale
    if not isinstance(text, str):
        raise MoneyError("invalid_amount", f"{field}: expected a decimal string, got {text!r}")
    match = _DECIMAL.fullmatch(text)
    if match is None:
        raise MoneyError(
            "invalid_amount", f"{field}: {text!r} is not a plain decimal (digits, one '.')"
        )
    sign, whole, frac = match.groups()
    frac = frac or ""
    if len(whole) > 40:  # before int(): Python refuses to parse very long digit strings
        raise MoneyError("invalid_amount", f"{field}: {text[:20]!r}... is larger than allowed")
    if len(frac) > scale:
        raise MoneyError(
            "invalid_amount",
            f"{field}: {text!r} has {len(frac)} decimals; {asset_code} allows {scale}",
        )
    units: int = int(whole) * 10**scale + (int(frac) * 10 ** (scale - len(frac)) if frac else 0)
    if units > MAX_UNITS:
        raise MoneyError("invalid_amount", f"{field}: {text!r} is larger than the ledger allows")
    return -units if sign else units


def parse_positive_units(text: str, asset_code: str, *, field: str = "amount") -> int:
    """Like ``parse_units`` but the amount must be greater than zero."""
    units = parse_units(text, asset_code, field=field)
    if units <= 0:
        raise MoneyError("invalid_amount", f"{field}: must be greater than zero, got {text!r}")
    return units


_SCALES: Final[dict[str, int]] = {code: a.scale for code, a in ASSETS.items()}


def format_units(units: int, asset_code: str) -> str:
    """Integer minor units as a decimal string with exactly the asset's scale."""
    scale = _SCALES.get(asset_code)
    if scale is None:
        scale = asset(asset_code).scale  # raises unknown_asset
    # String slicing beats divmod and a format spec on the writer's hot path.
    digits = str(-units if units < 0 else units)
    if scale == 0:
        return f"-{digits}" if units < 0 else digits
    digits = digits.rjust(scale + 1, "0")
    return f"{'-' if units < 0 else ''}{digits[:-scale]}.{digits[-scale:]}"
