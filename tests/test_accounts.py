"""The chart of accounts: types and normal signs declared once, names that parse or fail."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.accounts import (
    HOUSE_ACCOUNTS,
    ID_PATTERN,
    NORMAL_SIGN,
    AccountType,
    Bucket,
    account_type,
    client_account,
    counterparty_account,
    custody_account,
    house_account,
    normal_balance,
    split_client_account,
    trust_bank_account,
)

ids = st.from_regex(ID_PATTERN, fullmatch=True)


def test_normal_signs_follow_double_entry() -> None:
    # Debit-normal accounts show their posting sum, credit-normal ones its opposite.
    assert NORMAL_SIGN == {
        AccountType.ASSET: 1,
        AccountType.EXPENSE: 1,
        AccountType.LIABILITY: -1,
        AccountType.EQUITY: -1,
        AccountType.INCOME: -1,
    }


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("client:fund-a:main:available", AccountType.LIABILITY),
        ("client:fund-a:desk.2:held", AccountType.LIABILITY),
        ("client:F_1:s:borrowed", AccountType.LIABILITY),
        ("house:fees", AccountType.INCOME),
        ("house:otc_inventory", AccountType.ASSET),
        ("house:insurance_fund", AccountType.EQUITY),
        ("house:corrections", AccountType.EXPENSE),
        ("counterparty:lp-1", AccountType.ASSET),
        ("custody:hot:hot-1", AccountType.ASSET),
        ("custody:cold:vault.7", AccountType.ASSET),
        ("trust_bank:trust-bank-1", AccountType.ASSET),
        ("external:chain", AccountType.EQUITY),
        ("external:bank_wire", AccountType.EQUITY),
    ],
)
def test_account_types(name: str, expected: AccountType) -> None:
    assert account_type(name) == expected


@pytest.mark.parametrize("bucket", list(Bucket))
def test_every_client_bucket_is_a_liability(bucket: Bucket) -> None:
    name = client_account("fund-a", "main", bucket)
    assert name == f"client:fund-a:main:{bucket.value}"
    assert account_type(name) == AccountType.LIABILITY
    assert split_client_account(name) == ("fund-a", "main", bucket.value)


@pytest.mark.parametrize(("purpose", "kind"), sorted(HOUSE_ACCOUNTS.items()))
def test_every_house_account_has_its_declared_type(purpose: str, kind: AccountType) -> None:
    assert account_type(house_account(purpose)) == kind


@pytest.mark.parametrize(
    "name",
    [
        "",
        "client",
        "client:fund-a:main",
        "client:fund-a:main:bogus",
        "client:fund-a:main:Available",
        "client::main:available",
        "client:fund-a::available",
        "client:fund-a:main:available:extra",
        "client:-fund:main:available",
        "client:fund a:main:available",
        "client:fund-\u0663:main:available",  # an Arabic-Indic digit is not an id character
        "client:" + "a" * 65 + ":main:available",
        " client:fund-a:main:available",
        "client:fund-a:main:available\n",
        "house:bogus",
        "house:Fees",
        "house:",
        "custody:warm:w1",
        "custody:hot:",
        "custody:hot",
        "trust_bank:",
        "counterparty:",
        "counterparty:-lp",
        "counterparty:.lp",
        "external:",
        "external:Bank",
        "bank:x",
        "CLIENT:fund-a:main:available",
    ],
)
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=r"account name|unknown"):
        account_type(name)


def test_ids_may_be_64_characters_long() -> None:
    longest = "a" * 64
    assert account_type(client_account(longest, longest)) == AccountType.LIABILITY
    assert account_type(counterparty_account(longest)) == AccountType.ASSET


@pytest.mark.parametrize(
    ("name", "posting_sum", "shown"),
    [
        ("client:fund-a:main:available", -10_000, 10_000),  # owed to the client
        ("client:fund-a:main:borrowed", 500, -500),  # the client owes: a negative liability
        ("custody:hot:hot-1", 7, 7),
        ("trust_bank:b", -3, -3),  # an overdrawn bank account shows negative
        ("house:fees", -250, 250),
        ("house:corrections", 40, 40),
        ("external:chain", 9, -9),
    ],
)
def test_normal_balance(name: str, posting_sum: int, shown: int) -> None:
    assert normal_balance(name, posting_sum) == shown


def test_builders_refuse_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="house account"):
        house_account("bonus_pool")
    with pytest.raises(ValueError, match="hot or cold"):
        custody_account("warm", "w1")


def test_builders_produce_the_documented_names() -> None:
    assert client_account("f", "s") == "client:f:s:available"
    assert house_account("fees") == "house:fees"
    assert counterparty_account("lp-1") == "counterparty:lp-1"
    assert custody_account("cold", "c1") == "custody:cold:c1"
    assert trust_bank_account("b1") == "trust_bank:b1"


def test_split_client_account_ignores_other_accounts() -> None:
    assert split_client_account("house:fees") is None
    assert split_client_account("custody:hot:hot-1") is None


@given(client=ids, sub=ids, bucket=st.sampled_from(list(Bucket)))
def test_any_valid_ids_make_a_valid_client_account(client: str, sub: str, bucket: Bucket) -> None:
    name = client_account(client, sub, bucket)
    assert account_type(name) == AccountType.LIABILITY
    assert split_client_account(name) == (client, sub, bucket.value)


@given(wallet=ids, temperature=st.sampled_from(["hot", "cold"]))
def test_any_valid_wallet_makes_an_asset_account(wallet: str, temperature: str) -> None:
    assert account_type(custody_account(temperature, wallet)) == AccountType.ASSET
    assert account_type(trust_bank_account(wallet)) == AccountType.ASSET
    assert account_type(counterparty_account(wallet)) == AccountType.ASSET
