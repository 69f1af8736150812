"""The chart of accounts: account types with their normal balance, declared once, and names.

Postings are signed integers: a positive amount is a debit, a negative amount a credit. An
account's *balance* is shown in its normal direction, so a client's USD liability of 100 shows
as 100 although its postings sum to -100.

Names (documented in the README):

* ``client:<client>:<sub_account>:<bucket>`` - what the firm owes a client (liability).
* ``house:<purpose>`` - the platform's own accounts (fees income, OTC inventory, ...).
* ``counterparty:<id>`` - liquidity providers and the overseas affiliate (asset: what they owe us).
* ``custody:hot:<wallet>`` / ``custody:cold:<wallet>`` - wallets held on trust (asset).
* ``trust_bank:<bank>`` - segregated client money at a bank (asset).
* ``external:<kind>`` - the outside world that funds move to and from.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Final


class AccountType(StrEnum):
    ASSET = "asset"
    LIABILITY = "liability"
    EQUITY = "equity"
    INCOME = "income"
    EXPENSE = "expense"


# +1: the normal balance is a debit (the posting sum); -1: a credit (minus the posting sum).
NORMAL_SIGN: Final[dict[AccountType, int]] = {
    AccountType.ASSET: 1,
    AccountType.EXPENSE: 1,
    AccountType.LIABILITY: -1,
    AccountType.EQUITY: -1,
    AccountType.INCOME: -1,
}


class Bucket(StrEnum):
    """How a client's balance of one asset in one sub-account is split."""

    AVAILABLE = "available"
    HELD = "held"  # pending withdrawal, open holds, pending settlement
    RECEIVABLE = "receivable"  # bought but not yet settled (T+1)
    PLEDGED = "pledged"
    STAKED = "staked"
    UNBONDING = "unbonding"
    BORROWED = "borrowed"  # what the client owes: shown as a negative liability


HOUSE_ACCOUNTS: Final[dict[str, AccountType]] = {
    "fees": AccountType.INCOME,
    "otc_spread": AccountType.INCOME,
    "interest": AccountType.INCOME,
    "custody_fees": AccountType.INCOME,
    "otc_inventory": AccountType.ASSET,
    "insurance_fund": AccountType.EQUITY,
    "market_maker": AccountType.ASSET,
    "corrections": AccountType.EXPENSE,
}

_ID = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}"
ID_PATTERN: Final = re.compile(_ID)
_ACCOUNT = re.compile(
    rf"client:(?P<client>{_ID}):(?P<sub>{_ID}):(?P<bucket>[a-z]+)"
    rf"|house:(?P<house>[a-z_]+)"
    rf"|counterparty:{_ID}"
    rf"|custody:(?:hot|cold):{_ID}"
    rf"|trust_bank:{_ID}"
    rf"|external:[a-z_]+"
)


def client_account(client: str, sub_account: str, bucket: str = "available") -> str:
    """``bucket`` is a ``Bucket`` (a str enum, formatted as its value) or its value."""
    return f"client:{client}:{sub_account}:{bucket}"


def house_account(purpose: str) -> str:
    if purpose not in HOUSE_ACCOUNTS:
        raise ValueError(f"unknown house account {purpose!r}")
    return f"house:{purpose}"


def counterparty_account(counterparty: str) -> str:
    return f"counterparty:{counterparty}"


def custody_account(temperature: str, wallet: str) -> str:
    if temperature not in ("hot", "cold"):
        raise ValueError(f"custody wallets are hot or cold, not {temperature!r}")
    return f"custody:{temperature}:{wallet}"


def trust_bank_account(bank: str) -> str:
    return f"trust_bank:{bank}"


def account_type(name: str) -> AccountType:
    """The type of a well-formed account name; ``ValueError`` for anything else."""
    match = _ACCOUNT.fullmatch(name)
    if match is None:
        raise ValueError(f"not an account name: {name!r}")
    if match["client"] is not None:
        if match["bucket"] not in Bucket.__members__.values():
            raise ValueError(f"unknown bucket in {name!r}")
        return AccountType.LIABILITY
    if match["house"] is not None:
        found = HOUSE_ACCOUNTS.get(match["house"])
        if found is None:
            raise ValueError(f"unknown house account in {name!r}")
        return found
    if name.startswith("external:"):
        return AccountType.EQUITY  # the outside world: the other side of money in and out
    return AccountType.ASSET


def normal_balance(name: str, posting_sum: int) -> int:
    """A posting sum shown in the account's normal direction."""
    return posting_sum * NORMAL_SIGN[account_type(name)]


def split_client_account(name: str) -> tuple[str, str, str] | None:
    """``(client, sub_account, bucket)`` for a client account name, else ``None``."""
    if not name.startswith("client:"):
        return None
    _, client, sub, bucket = name.split(":", 3)
    return client, sub, bucket
