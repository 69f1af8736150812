"""A realistic prime-brokerage day, as commands: what ``make demo`` plays.

Three funds with sub-accounts deposit fiat and crypto, withdraw with approvals, take RFQ quotes
from three liquidity providers, trade on the local and the shared order book, pay fees, sweep
custody to cold storage, and settle T+0 and T+1 - one settlement fails and is retried on the
next business day. The day runs on a simulated clock so that T+1 really is a day later.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

Command = dict[str, Any]


@dataclass
class SimClock:
    """A clock the demo moves forward: a second per command, jumps between phases."""

    now: datetime

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=250)
        return self.now

    def at(self, moment: datetime) -> None:
        self.now = max(self.now, moment)


@dataclass
class Phase:
    title: str
    start: datetime
    commands: list[Command] = field(default_factory=list)


FUNDS = {
    "aurora-capital": ["macro", "basis"],
    "harbour-lane": ["main"],
    "kowloon-quant": ["stat-arb", "treasury"],
}
PROVIDERS = ("lp-janus", "lp-meridian", "lp-pacific")


def business_day(start: date) -> date:
    """The first weekday on or after ``start`` (a trade date; T+1 then skips the weekend)."""
    day = start
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day


def previous_business_day(day: date) -> date:
    """The last weekday before ``day``."""
    day -= timedelta(days=1)
    while day.weekday() >= 5:
        day -= timedelta(days=1)
    return day


def trading_day(today: date) -> list[Phase]:
    """The phases of the day, each a list of commands with unique idempotency keys."""
    day = business_day(today)
    t0 = datetime(day.year, day.month, day.day, 1, 0, tzinfo=UTC)  # 09:00 in Hong Kong
    keys = _keys(day)
    phases = [
        Phase("Onboarding and fee tiers", t0, list(_onboarding(keys))),
        Phase(
            "Deposits: bank transfers and on-chain",
            t0 + timedelta(minutes=30),
            list(_deposits(keys)),
        ),
        Phase(
            "Custody sweep to cold storage",
            t0 + timedelta(hours=1),
            list(_sweep(keys, (("BTC", "51.6"), ("ETH", "590"), ("SOL", "24600")), "sweep")),
        ),
        Phase(
            "OTC RFQ with three liquidity providers",
            t0 + timedelta(hours=2),
            list(_rfqs(keys, t0 + timedelta(hours=2))),
        ),
        Phase("Order book and shared order book", t0 + timedelta(hours=3), list(_book(keys))),
        Phase(
            "Fees and a withdrawal with two approvals",
            t0 + timedelta(hours=5),
            list(_fees_and_withdrawal(keys, t0)),
        ),
        Phase(
            "End of day: settle the shared book (one leg fails), sweep to cold",
            t0 + timedelta(hours=8),
            list(_end_of_day(keys, day)),
        ),
    ]
    next_day = business_day(day + timedelta(days=1))
    t1 = datetime(next_day.year, next_day.month, next_day.day, 1, 0, tzinfo=UTC)
    phases.append(
        Phase(
            "Next business day: net settlement retries the fail; T+1 settles",
            t1,
            list(_next_day(keys, next_day)),
        )
    )
    return phases


def _keys(day: date) -> Callable[[str], str]:
    return lambda name: f"demo-{day.isoformat()}-{name}"


def _onboarding(key: Callable[[str], str]) -> Iterator[Command]:
    for fund, subs in FUNDS.items():
        yield {
            "type": "open_client",
            "key": key(f"open-{fund}"),
            "client": fund,
            "name": fund.replace("-", " ").title(),
            "sub_accounts": subs,
        }
    yield {
        "type": "set_fee_schedule",
        "key": key("tier-pro"),
        "tier": "professional",
        "maker_bps": 2,
        "taker_bps": 6,
        "otc_spread_bps": 8,
        "custody_bps_per_year": 10,
    }
    yield {
        "type": "set_fee_schedule",
        "key": key("tier-inst"),
        "tier": "institutional",
        "maker_bps": 0,
        "taker_bps": 4,
        "otc_spread_bps": 5,
        "custody_bps_per_year": 8,
    }
    yield {
        "type": "set_client_tier",
        "key": key("tier-aurora"),
        "client": "aurora-capital",
        "tier": "institutional",
    }
    yield {
        "type": "set_client_tier",
        "key": key("tier-kowloon"),
        "client": "kowloon-quant",
        "tier": "professional",
    }
    for code, amount in (("BTC", "40"), ("ETH", "250"), ("SOL", "15000")):
        yield {
            "type": "fund_insurance",
            "key": key(f"insurance-{code}"),
            "asset": code,
            "amount": amount,
            "policy": f"Lloyd's HK-VA-2026-{code}",
        }
    yield {
        "type": "set_holidays",
        "key": key("holidays-hkd"),
        "currency": "HKD",
        "dates": ["2026-12-25", "2026-12-26", "2027-01-01"],
    }
    yield {
        "type": "set_shared_book_limit",
        "key": key("shared-limit"),
        "asset": "USD",
        "limit": "300000",
    }


def _deposits(key: Callable[[str], str]) -> Iterator[Command]:
    fiat = [
        ("aurora-capital", "macro", "USD", "5000000"),
        ("harbour-lane", "main", "USD", "1200000"),
        ("kowloon-quant", "treasury", "HKD", "8000000"),
        ("kowloon-quant", "stat-arb", "USD", "900000"),
    ]
    for i, (fund, sub, code, amount) in enumerate(fiat):
        yield {
            "type": "deposit_fiat",
            "key": key(f"dep-fiat-{i}"),
            "client": fund,
            "sub_account": sub,
            "asset": code,
            "amount": amount,
            "bank_reference": f"SWIFT-{i:04d}",
        }
    crypto = [
        ("aurora-capital", "basis", "BTC", "40", "btc"),
        ("harbour-lane", "main", "ETH", "600", "eth"),
        ("kowloon-quant", "stat-arb", "BTC", "12.5", "btc"),
        ("harbour-lane", "main", "SOL", "25000", "sol"),
    ]
    for i, (fund, sub, code, amount, chain) in enumerate(crypto):
        tx = f"0x{i:02d}{'ab' * 20}"
        yield {
            "type": "detect_crypto_deposit",
            "key": key(f"dep-c-{i}"),
            "client": fund,
            "sub_account": sub,
            "asset": code,
            "amount": amount,
            "chain": chain,
            "tx_hash": tx,
            "required_confirmations": 3,
        }
        yield {
            "type": "confirm_crypto_deposit",
            "key": key(f"dep-c-{i}-1"),
            "tx_hash": tx,
            "confirmations": 1,
        }
        yield {
            "type": "confirm_crypto_deposit",
            "key": key(f"dep-c-{i}-3"),
            "tx_hash": tx,
            "confirmations": 3,
        }
    # A deposit seen on chain that a reorganisation removes before it is credited.
    yield {
        "type": "detect_crypto_deposit",
        "key": key("dep-reorg"),
        "client": "harbour-lane",
        "sub_account": "main",
        "asset": "BTC",
        "amount": "3",
        "chain": "btc",
        "tx_hash": "0xreorged",
        "required_confirmations": 3,
    }
    yield {"type": "reorg_crypto_deposit", "key": key("dep-reorg-2"), "tx_hash": "0xreorged"}


def _sweep(
    key: Callable[[str], str],
    moves: tuple[tuple[str, str], ...],
    tag: str,
    cold_to_hot: bool = False,
) -> Iterator[Command]:
    hot, cold = "custody:hot:hot-1", "custody:cold:cold-1"
    for code, amount in moves:
        move = f"{tag}-{code.lower()}"
        yield {
            "type": "move_custody",
            "key": key(move),
            "move": move,
            "asset": code,
            "amount": amount,
            "from_wallet": cold if cold_to_hot else hot,
            "to_wallet": hot if cold_to_hot else cold,
            "requester": "ops-alice",
        }
        yield {
            "type": "approve_custody_move",
            "key": key(f"{move}-ok"),
            "move": move,
            "approver": "ops-bob",
        }


def _rfqs(key: Callable[[str], str], start: datetime) -> Iterator[Command]:
    rfqs = [
        (
            "rfq-1",
            "aurora-capital",
            "macro",
            "buy",
            "BTC",
            "10",
            "T+0",
            ("64950.00", "64925.50", "64990.00"),
        ),
        (
            "rfq-2",
            "harbour-lane",
            "main",
            "sell",
            "ETH",
            "200",
            "T+1",
            ("3405.10", "3398.00", "3410.25"),
        ),
        (
            "rfq-3",
            "kowloon-quant",
            "stat-arb",
            "buy",
            "BTC",
            "4",
            "T+1",
            ("65010.00", "65020.00", "65005.50"),
        ),
    ]
    valid = (start + timedelta(hours=1)).isoformat()
    for rfq, fund, sub, side, base, qty, settle, prices in rfqs:
        yield {
            "type": "request_quote",
            "key": key(rfq),
            "rfq": rfq,
            "client": fund,
            "sub_account": sub,
            "side": side,
            "base": base,
            "quote": "USD",
            "quantity": qty,
            "settlement": settle,
        }
        for provider, price in zip(PROVIDERS, prices, strict=True):
            yield {
                "type": "submit_quote",
                "key": key(f"{rfq}-{provider}"),
                "rfq": rfq,
                "quote_id": f"{rfq}-{provider}",
                "provider": provider,
                "price": price,
                "valid_until": valid,
            }
        yield {"type": "accept_quote", "key": key(f"{rfq}-accept"), "rfq": rfq}


def _book(key: Callable[[str], str]) -> Iterator[Command]:
    yield {
        "type": "place_order",
        "key": key("ord-1"),
        "order": "ord-1",
        "client": "kowloon-quant",
        "sub_account": "stat-arb",
        "side": "buy",
        "base": "SOL",
        "quote": "USD",
        "quantity": "1500",
        "limit_price": "145.00",
    }
    yield {
        "type": "record_fill",
        "key": key("fill-1"),
        "order": "ord-1",
        "fill": "fill-1",
        "price": "144.80",
        "quantity": "1000",
        "liquidity": "maker",
        "counterparty": "local-book",
    }
    yield {
        "type": "record_fill",
        "key": key("fill-2"),
        "order": "ord-1",
        "fill": "fill-2",
        "price": "144.95",
        "quantity": "500",
        "liquidity": "taker",
        "counterparty": "local-book",
    }
    yield {
        "type": "place_order",
        "key": key("ord-2"),
        "order": "ord-2",
        "client": "harbour-lane",
        "sub_account": "main",
        "side": "buy",
        "base": "BTC",
        "quote": "USD",
        "quantity": "5",
        "limit_price": "65000",
        "book": "shared",
    }
    yield {
        "type": "place_order",
        "key": key("ord-mm"),
        "order": "ord-mm",
        "client": "aurora-capital",
        "sub_account": "macro",
        "side": "buy",
        "base": "BTC",
        "quote": "USD",
        "quantity": "1",
        "limit_price": "65000",
        "book": "shared",
        "participant": "affiliated_market_maker",
    }
    yield {
        "type": "record_fill",
        "key": key("fill-3"),
        "order": "ord-2",
        "fill": "fill-3",
        "price": "65000",
        "quantity": "3",
        "liquidity": "maker",
        "counterparty": "overseas-affiliate",
    }
    # The affiliated market maker fills at the same price while a client order still waits:
    # the ledger keeps the evidence and reports the priority violation.
    yield {
        "type": "record_fill",
        "key": key("fill-mm"),
        "order": "ord-mm",
        "fill": "fill-mm",
        "price": "65000",
        "quantity": "1",
        "liquidity": "maker",
        "counterparty": "overseas-affiliate",
    }
    # Beyond the cap on unsettled shared-book value: refused.
    yield {
        "type": "record_fill",
        "key": key("fill-4"),
        "order": "ord-2",
        "fill": "fill-4",
        "price": "65000",
        "quantity": "2",
        "liquidity": "maker",
        "counterparty": "overseas-affiliate",
    }
    yield {"type": "cancel_order", "key": key("ord-2-cancel"), "order": "ord-2"}


def _fees_and_withdrawal(key: Callable[[str], str], t0: datetime) -> Iterator[Command]:
    yield {
        "type": "charge_fee",
        "key": key("fee-custody"),
        "client": "harbour-lane",
        "sub_account": "main",
        "asset": "USD",
        "amount": "125.40",
        "fee_type": "custody",
    }
    yield {
        "type": "transfer",
        "key": key("xfer-1"),
        "client": "aurora-capital",
        "from_sub_account": "macro",
        "to_sub_account": "basis",
        "asset": "USD",
        "amount": "250000",
    }
    yield {
        "type": "whitelist_destination",
        "key": key("wl-1"),
        "client": "aurora-capital",
        "destination": "hsbc-ops",
        "asset": "USD",
        "address": "HSBC HK 004-123456-001",
    }
    yield {
        "type": "request_withdrawal",
        "key": key("wd-1"),
        "withdrawal": "wd-1",
        "client": "aurora-capital",
        "sub_account": "macro",
        "asset": "USD",
        "amount": "100000",
        "destination": "hsbc-ops",
        "requester": "pm-carol",
        "approvers": ["risk-dan", "ops-erin", "cfo-frank"],
        "approvals_required": 2,
        "expires_at": (t0 + timedelta(days=2)).isoformat(),
    }
    yield {
        "type": "approve_withdrawal",
        "key": key("wd-1-a1"),
        "withdrawal": "wd-1",
        "approver": "risk-dan",
    }
    yield {
        "type": "approve_withdrawal",
        "key": key("wd-1-a2"),
        "withdrawal": "wd-1",
        "approver": "ops-erin",
    }
    yield {
        "type": "execute_withdrawal",
        "key": key("wd-1-x"),
        "withdrawal": "wd-1",
        "network_reference": "CHATS-778812",
    }
    for asset_code, quote, price in (
        ("BTC", "USD", "65120.00"),
        ("ETH", "USD", "3390.00"),
        ("SOL", "USD", "146.20"),
        ("USD", "HKD", "7.78"),
    ):
        yield {
            "type": "set_mark",
            "key": key(f"mark-{asset_code}"),
            "asset": asset_code,
            "quote": quote,
            "price": price,
        }


def _end_of_day(key: Callable[[str], str], day: date) -> Iterator[Command]:
    yield {"type": "settle_trade", "key": key("settle-mm"), "trade": "ord-mm.fill-mm"}
    yield {
        "type": "fail_settlement",
        "key": key("fail-fill-3"),
        "trade": "ord-2.fill-3",
        "reason": "affiliate's cash leg missed the cut-off",
    }
    yield from _sweep(key, (("BTC", "10.7"), ("SOL", "1400")), "sweep-eod")
    yield {"type": "check_trust_rules", "key": key("trust-check-eod")}


def _next_day(key: Callable[[str], str], day: date) -> Iterator[Command]:
    previous = previous_business_day(day)
    yield {
        "type": "accrue_custody_fees",
        "key": key("custody-fees"),
        "day": previous.isoformat(),
    }
    yield {
        "type": "settle_net",
        "key": key("net-affiliate"),
        "counterparty": "overseas-affiliate",
        "value_date": day.isoformat(),
    }
    yield from _sweep(key, (("ETH", "190"),), "unsweep-t1", cold_to_hot=True)
    yield {"type": "settle_trade", "key": key("settle-rfq-2"), "trade": "rfq-2.rfq-2-lp-pacific"}
    yield {"type": "settle_trade", "key": key("settle-rfq-3"), "trade": "rfq-3.rfq-3-lp-pacific"}
    yield from _sweep(key, (("BTC", "7"),), "sweep-t1")
    yield {"type": "check_trust_rules", "key": key("trust-check-t1")}
