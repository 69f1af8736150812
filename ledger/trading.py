"""Trading and settlement: OTC RFQ, order-book fills, T+0/T+1 DVP settlement, fees.

A trade is booked in one event and settled in one event (delivery versus payment: both legs
or neither). The client *gives* asset G and *receives* asset R (a buy gives the quote asset
and receives the base asset; a sell the reverse):

* booking (open trade): G moves from the client's ``available`` to ``held``; R is
  ``receivable`` from the counterparty; the OTC spread and the trading fee go to house income.
* settlement: the held G leaves our holdings for the counterparty, the counterparty's R
  arrives in our holdings, and the client's receivable becomes available.
* T+0 trades are booked and settled in the same event (the two posting sets merged).
* cancellation posts the exact opposite of the booking.

Net settlement per counterparty and value date merges the settlement postings of its trades:
the client legs are the same as gross, the holding and counterparty legs are netted, so the
final balances equal gross settlement's by construction (a property test checks it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from fractions import Fraction
from typing import Any

from ledger.accounts import Bucket, client_account, counterparty_account
from ledger.errors import Rejection
from ledger.journal import Posting
from ledger.money import asset, format_units

PRICE = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,18})?")
BPS = 10_000


def parse_price(text: str, field: str = "price") -> Fraction:
    """A positive decimal price, exact."""
    if not isinstance(text, str) or PRICE.fullmatch(text) is None:
        raise Rejection("invalid_price", f"{field}: {text!r} is not a plain positive decimal")
    price = Fraction(text)
    if price <= 0:
        raise Rejection("invalid_price", f"{field}: must be greater than zero")
    return price


def round_half_up(value: Fraction) -> int:
    """Round a non-negative exact value to the nearest integer, halves up."""
    return int((value * 2 + 1) // 2)


def notional(quantity_units: int, base: str, quote: str, price: Fraction) -> int:
    """Quote-asset units for ``quantity_units`` of base at ``price`` (quote per whole base)."""
    value = Fraction(quantity_units, 10 ** asset(base).scale) * price * 10 ** asset(quote).scale
    return round_half_up(value)


def fee_units(amount_units: int, bps: int) -> int:
    return round_half_up(Fraction(amount_units * bps, BPS))


def holding_account(asset_code: str) -> str:
    """Where the firm holds client assets on trust: hot wallet for crypto, trust bank for fiat."""
    return "custody:hot:hot-1" if asset(asset_code).is_virtual else "trust_bank:trust-bank-1"


def value_date(trade_date: date, settlement: str, holidays: set[str]) -> date:
    """T+0 is the trade date; T+1 the next business day (no weekend, no holiday given)."""
    if settlement == "T+0":
        return trade_date
    day = trade_date + timedelta(days=1)
    while day.weekday() >= 5 or day.isoformat() in holidays:
        day += timedelta(days=1)
    return day


def merge(*posting_sets: tuple[Posting, ...]) -> tuple[Posting, ...]:
    """Postings summed per (account, asset), zeros dropped, first-seen order kept."""
    sums: dict[tuple[str, str], int] = {}
    for postings in posting_sets:
        for account, code, units in postings:
            sums[(account, code)] = sums.get((account, code), 0) + units
    return tuple((a, s, u) for (a, s), u in sums.items() if u)


def legs(trade: dict[str, Any]) -> tuple[str, int, int, str, int, int]:
    """``(G, g, g_lp, R, r, r_lp)``: what the client gives/receives and the LP's side of it."""
    quantity, client_n, lp_n = (
        int(trade["quantity_units"]),
        int(trade["notional_units"]),
        int(trade["lp_notional_units"]),
    )
    if trade["side"] == "buy":
        return trade["quote"], client_n, lp_n, trade["base"], quantity, quantity
    return trade["base"], quantity, quantity, trade["quote"], client_n, lp_n


def booking_postings(trade: dict[str, Any]) -> tuple[Posting, ...]:
    client, sub, cp = trade["client"], trade["sub_account"], trade["counterparty"]
    give, g, g_lp, receive, r, r_lp = legs(trade)
    # A buyer's fee is held with the payment; a seller's is taken from the proceeds.
    fee = int(trade["fee_units"]) if trade["side"] == "buy" else 0
    postings: list[Posting] = [
        (client_account(client, sub), give, g + fee),
        (client_account(client, sub, Bucket.HELD), give, -(g_lp + fee)),
        (counterparty_account(cp), receive, r_lp),
        (client_account(client, sub, Bucket.RECEIVABLE), receive, -r),
    ]
    if g != g_lp:
        postings.append(("house:otc_spread", give, g_lp - g))
    if r != r_lp:
        postings.append(("house:otc_spread", receive, r - r_lp))
    return merge(tuple(postings))


def settlement_postings(trade: dict[str, Any]) -> tuple[Posting, ...]:
    """Both legs of one trade (DVP): the fee reaches house income only on settlement."""
    client, sub, cp = trade["client"], trade["sub_account"], trade["counterparty"]
    give, _, g_lp, receive, r, r_lp = legs(trade)
    fee = int(trade["fee_units"])
    buyer_fee, seller_fee = (fee, 0) if trade["side"] == "buy" else (0, fee)
    return merge(
        (
            (client_account(client, sub, Bucket.HELD), give, g_lp + buyer_fee),
            (holding_account(give), give, -g_lp),
            (holding_account(receive), receive, r_lp),
            (counterparty_account(cp), receive, -r_lp),
            (client_account(client, sub, Bucket.RECEIVABLE), receive, r),
            (client_account(client, sub), receive, -(r - seller_fee)),
            ("house:fees", trade["quote"], -fee),
        )
    )


def reverse(postings: tuple[Posting, ...]) -> tuple[Posting, ...]:
    return tuple((a, s, -u) for a, s, u in postings)


def trade_money(trade: dict[str, Any]) -> dict[str, str]:
    """Human-readable amounts for a trade's event data."""
    return {
        "quantity": format_units(int(trade["quantity_units"]), trade["base"]),
        "notional": format_units(int(trade["notional_units"]), trade["quote"]),
        "fee": format_units(int(trade["fee_units"]), trade["quote"]),
    }


# --- deciders ------------------------------------------------------------------------------
# (Imported lazily by ledger.decide; they use the trading part of the state.)


@dataclass
class TradingState:
    """The trading part of the writer's state (JSON-compatible values for snapshots)."""

    fee_schedules: dict[str, dict[str, int]] = field(default_factory=dict)
    client_tiers: dict[str, str] = field(default_factory=dict)
    holidays: dict[str, list[str]] = field(default_factory=dict)
    rfqs: dict[str, dict[str, Any]] = field(default_factory=dict)
    trades: dict[str, dict[str, Any]] = field(default_factory=dict)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    fills: dict[str, str] = field(default_factory=dict)  # fill id -> trade id
    shared_limits: dict[str, str] = field(default_factory=dict)  # asset -> units
    custody_moves: dict[str, dict[str, Any]] = field(default_factory=dict)
    breaches: list[str] = field(default_factory=list)  # assets whose cold rule is broken
    custody_accruals: list[str] = field(default_factory=list)  # days already charged

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> TradingState:
        return cls(**{k: v for k, v in body.items() if k in cls.__dataclass_fields__})

    def schedule(self, client: str) -> dict[str, int]:
        tier = self.client_tiers.get(client, "standard")
        return self.fee_schedules.get(
            tier, {"maker_bps": 0, "taker_bps": 0, "otc_spread_bps": 0, "custody_bps_per_year": 0}
        )

    def holiday_set(self, *assets: str) -> set[str]:
        days: set[str] = set()
        for code in assets:
            days.update(self.holidays.get(code, ()))
        return days

    def open_shared_units(self, quote: str) -> int:
        return sum(
            int(t["notional_units"])
            for t in self.trades.values()
            if t["status"] == "open" and t.get("book") == "shared" and t["quote"] == quote
        )


# --- appliers (trading events change only the trading state) ---------------------------------
def _fee_schedule_set(t: TradingState, d: Mapping[str, Any]) -> None:
    t.fee_schedules[d["tier"]] = {
        k: int(v) for k, v in d.items() if k.endswith(("_bps", "_per_year"))
    }


def _client_tier_set(t: TradingState, d: Mapping[str, Any]) -> None:
    t.client_tiers[d["client"]] = d["tier"]


def _holidays_set(t: TradingState, d: Mapping[str, Any]) -> None:
    t.holidays[d["currency"]] = list(d["dates"])


def _rfq_requested(t: TradingState, d: Mapping[str, Any]) -> None:
    t.rfqs[d["rfq"]] = {**d, "status": "open", "quotes": {}}


def _quote_submitted(t: TradingState, d: Mapping[str, Any]) -> None:
    quotes = t.rfqs[d["rfq"]]["quotes"]
    quotes[d["quote_id"]] = {**d, "seq": len(quotes)}


def _trade_booked(t: TradingState, d: Mapping[str, Any]) -> None:
    t.trades[d["trade"]] = dict(d)
    if d.get("source") == "rfq":
        t.rfqs[d["rfq"]]["status"] = "filled"
    elif d.get("source") == "book":
        order = t.orders[d["order"]]
        order["filled_units"] = str(int(order["filled_units"]) + int(d["quantity_units"]))
        order["reserved_units"] = str(int(order["reserved_units"]) - int(d["released_units"]))
        order["cost_exact"] = d["cost_exact"]
        order["fee_exact"] = d["fee_exact"]
        order["charged_units"] = str(int(order["charged_units"]) + int(d["notional_units"]))
        order["fee_charged_units"] = str(int(order["fee_charged_units"]) + int(d["fee_units"]))
        if d["order_closed"]:
            order["status"] = "filled"
        t.fills[d["fill"]] = d["trade"]


def _trade_settled(t: TradingState, d: Mapping[str, Any]) -> None:
    t.trades[d["trade"]]["status"] = "settled"


def _trades_net_settled(t: TradingState, d: Mapping[str, Any]) -> None:
    for trade in d["trades"]:
        t.trades[trade]["status"] = "settled"


def _settlement_failed(t: TradingState, d: Mapping[str, Any]) -> None:
    t.trades[d["trade"]] |= {
        "fails": d["fails"],
        "first_failed_at": d["first_failed_at"],
        "last_fail_reason": d["reason"],
    }


def _trade_cancelled(t: TradingState, d: Mapping[str, Any]) -> None:
    t.trades[d["trade"]]["status"] = "cancelled"


def _order_placed(t: TradingState, d: Mapping[str, Any]) -> None:
    t.orders[d["order"]] = {
        **d,
        "status": "open",
        "filled_units": "0",
        "cost_exact": "0",
        "charged_units": "0",
        "fee_exact": "0",
        "fee_charged_units": "0",
    }


def _order_cancelled(t: TradingState, d: Mapping[str, Any]) -> None:
    t.orders[d["order"]] |= {"status": "cancelled", "reserved_units": "0"}


def _shared_book_limit_set(t: TradingState, d: Mapping[str, Any]) -> None:
    t.shared_limits[d["asset"]] = d["units"]


def _custody_move_requested(t: TradingState, d: Mapping[str, Any]) -> None:
    t.custody_moves[d["move"]] = {**d, "status": "pending"}


def _custody_moved(t: TradingState, d: Mapping[str, Any]) -> None:
    t.custody_moves[d["move"]]["status"] = "executed"


def _trust_rule_breached(t: TradingState, d: Mapping[str, Any]) -> None:
    if d["asset"] not in t.breaches:
        t.breaches.append(d["asset"])


def _trust_rule_restored(t: TradingState, d: Mapping[str, Any]) -> None:
    if d["asset"] in t.breaches:
        t.breaches.remove(d["asset"])


def _custody_fees_accrued(t: TradingState, d: Mapping[str, Any]) -> None:
    t.custody_accruals.append(d["day"])


TRADING_APPLIERS: dict[str, Callable[[TradingState, Mapping[str, Any]], None]] = {
    "fee_schedule_set": _fee_schedule_set,
    "client_tier_set": _client_tier_set,
    "holidays_set": _holidays_set,
    "rfq_requested": _rfq_requested,
    "quote_submitted": _quote_submitted,
    "trade_booked": _trade_booked,
    "trade_settled": _trade_settled,
    "trades_net_settled": _trades_net_settled,
    "settlement_failed": _settlement_failed,
    "trade_cancelled": _trade_cancelled,
    "order_placed": _order_placed,
    "order_cancelled": _order_cancelled,
    "shared_book_limit_set": _shared_book_limit_set,
    "custody_move_requested": _custody_move_requested,
    "custody_moved": _custody_moved,
    "trust_rule_breached": _trust_rule_breached,
    "trust_rule_restored": _trust_rule_restored,
    "custody_fees_accrued": _custody_fees_accrued,
}
