"""Exact money: every asset parses and formats without loss, and nothing else becomes money."""

from __future__ import annotations

from decimal import Context, Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.money import (
    ASSETS,
    MAX_UNITS,
    MoneyError,
    asset,
    format_units,
    parse_positive_units,
    parse_units,
)

ALL_ASSETS = sorted(ASSETS)


def test_registry_holds_the_agreed_scales() -> None:
    # A scale is part of every stored amount: changing one would silently rescale history.
    scales = {code: a.scale for code, a in ASSETS.items()}
    assert scales == {
        "USD": 2,
        "HKD": 2,
        "USDC": 6,
        "USDT": 6,
        "BTC": 8,
        "ETH": 18,
        "SOL": 9,
    }


@pytest.mark.parametrize("code", ALL_ASSETS)
def test_only_fiat_is_not_virtual(code: str) -> None:
    assert asset(code).is_virtual == (asset(code).kind != "fiat")
    assert asset(code).is_virtual == (code not in {"USD", "HKD"})


@pytest.mark.parametrize(
    ("code", "text", "units"),
    [
        ("USD", "1000.50", 100_050),
        ("USD", "0.01", 1),
        ("USD", "7", 700),
        ("USD", "0", 0),
        ("HKD", "-3.07", -307),
        ("USDC", "2.000001", 2_000_001),
        ("USDT", "0.5", 500_000),
        ("BTC", "0.00000001", 1),
        ("BTC", "21000000", 21_000_000 * 10**8),
        ("ETH", "0.000000000000000001", 1),
        ("ETH", "1.000000000000000001", 10**18 + 1),
        ("ETH", "123456789.123456789123456789", 123_456_789_123_456_789_123_456_789),
        ("SOL", "1.5", 1_500_000_000),
        ("USD", "000012.30", 1_230),
    ],
)
def test_parse_exact(code: str, text: str, units: int) -> None:
    assert parse_units(text, code) == units


@pytest.mark.parametrize(
    ("code", "units", "text"),
    [
        ("USD", 100_050, "1000.50"),
        ("USD", 0, "0.00"),
        ("USD", -5, "-0.05"),
        ("BTC", -1, "-0.00000001"),
        ("BTC", 10**8, "1.00000000"),
        ("ETH", 1, "0.000000000000000001"),
        ("ETH", 10**18 + 1, "1.000000000000000001"),
        ("SOL", 1_500_000_000, "1.500000000"),
        ("USDC", 2_000_001, "2.000001"),
    ],
)
def test_format_exact(code: str, units: int, text: str) -> None:
    assert format_units(units, code) == text


@pytest.mark.parametrize("code", ALL_ASSETS)
def test_smallest_unit_of_every_asset(code: str) -> None:
    scale = ASSETS[code].scale
    smallest = "0." + "0" * (scale - 1) + "1"
    assert parse_units(smallest, code) == 1
    assert format_units(1, code) == smallest
    assert parse_units("1", code) == 10**scale


@pytest.mark.parametrize("code", ALL_ASSETS)
def test_one_decimal_too_many_is_refused(code: str) -> None:
    too_fine = "0." + "0" * ASSETS[code].scale + "1"
    with pytest.raises(MoneyError) as caught:
        parse_units(too_fine, code)
    assert caught.value.code == "invalid_amount"
    assert f"allows {ASSETS[code].scale}" in caught.value.message


@pytest.mark.parametrize("code", ALL_ASSETS)
def test_trailing_zeros_within_scale_are_fine(code: str) -> None:
    scale = ASSETS[code].scale
    assert parse_units("1." + "0" * scale, code) == 10**scale


REFUSED_TEXT = [
    "NaN",
    "nan",
    "-NaN",
    "inf",
    "-inf",
    "Infinity",
    "1e5",
    "1E5",
    "1e-2",
    " 1",
    "1 ",
    "1 000",
    "\t1",
    "1\n",
    "+1",
    "--1",
    "١٢",  # Arabic-Indic digits
    "１２",  # fullwidth digits
    "²",
    "",
    ".5",
    "1.",
    "1..2",
    "1.2.3",
    "0x10",
    "1_000",
    "1,50",
    "- 1",
    "abc",
]


@pytest.mark.parametrize("text", REFUSED_TEXT)
def test_refused_text(text: str) -> None:
    with pytest.raises(MoneyError) as caught:
        parse_units(text, "USD", field="amount")
    assert caught.value.code == "invalid_amount"
    assert caught.value.message.startswith("amount:")


@pytest.mark.parametrize("value", [1, 1.5, None, Decimal("1"), b"1", True, ["1"]])
def test_non_string_is_refused(value: Any) -> None:
    with pytest.raises(MoneyError) as caught:
        parse_units(value, "USD", field="price")
    assert caught.value.code == "invalid_amount"
    assert caught.value.message.startswith("price:")


def test_absurdly_long_digit_string_is_a_money_error() -> None:
    # Python refuses int() of more than 4300 digits with a bare ValueError; the parser must
    # still answer with its own code (commands cap the length, direct callers do not).
    with pytest.raises(MoneyError) as caught:
        parse_units("1" * 5000, "USD")
    assert caught.value.code == "invalid_amount"


def test_the_error_names_the_field() -> None:
    with pytest.raises(MoneyError, match=r"^price: "):
        parse_units("1.234", "USD", field="price")


def test_unknown_asset() -> None:
    for call in (lambda: parse_units("1", "XYZ"), lambda: format_units(1, "usd")):
        with pytest.raises(MoneyError) as caught:
            call()
        assert caught.value.code == "unknown_asset"


@pytest.mark.parametrize("text", ["0", "0.00", "-0.01", "-5"])
def test_positive_units_refuses_zero_and_negative(text: str) -> None:
    with pytest.raises(MoneyError) as caught:
        parse_positive_units(text, "USD", field="amount")
    assert caught.value.code == "invalid_amount"
    assert "greater than zero" in caught.value.message


@pytest.mark.parametrize("code", ALL_ASSETS)
def test_max_units_is_the_inclusive_limit(code: str) -> None:
    assert parse_units(format_units(MAX_UNITS, code), code) == MAX_UNITS
    assert parse_units(format_units(-MAX_UNITS, code), code) == -MAX_UNITS
    for beyond in (MAX_UNITS + 1, -(MAX_UNITS + 1)):
        with pytest.raises(MoneyError) as caught:
            parse_units(format_units(beyond, code), code)
        assert caught.value.code == "invalid_amount"


def test_eth_near_max_units_is_exact() -> None:
    units = MAX_UNITS - 1
    text = format_units(units, "ETH")
    assert text == "999999999999999999.999999999999999999"
    assert parse_units(text, "ETH") == units


@given(code=st.sampled_from(ALL_ASSETS), units=st.integers(-MAX_UNITS, MAX_UNITS))
def test_format_then_parse_is_identity(code: str, units: int) -> None:
    assert parse_units(format_units(units, code), code) == units


@given(
    code=st.sampled_from(ALL_ASSETS),
    whole=st.integers(0, 10**12),
    frac=st.text(alphabet="0123456789", max_size=18),
)
def test_parse_matches_decimal_arithmetic(code: str, whole: int, frac: str) -> None:
    scale = ASSETS[code].scale
    text = f"{whole}.{frac}" if frac else str(whole)
    if len(frac) > scale:
        with pytest.raises(MoneyError):
            parse_units(text, code)
        return
    # Decimal is exact for decimal strings: it is the reference, never the implementation.
    exact = Context(prec=100)  # the default 28 digits would round ETH amounts
    assert parse_units(text, code) == int(Decimal(text).scaleb(scale, context=exact))
    assert Decimal(format_units(parse_units(text, code), code)) == Decimal(text)
