"""Deciders for trading, settlement, fees and custody (see ``ledger.trading`` for postings).

As in ``ledger.decide``, each docstring lists the rejection codes in precedence order.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from fractions import Fraction
from typing import Any

from ledger import commands as c
from ledger.accounts import Bucket, client_account
from ledger.decide import Context, Draft, _client, _funds, _money, _move, _units, live
from ledger.errors import Rejection
from ledger.journal import Posting
from ledger.money import asset, format_units
from ledger.state import LedgerState
from ledger.trading import (
    BPS,
    booking_postings,
    fee_units,
    merge,
    notional,
    parse_price,
    reverse,
    round_half_up,
    settlement_postings,
    trade_money,
    value_date,
)

COLD_RULE = Fraction(98, 100)


def _pair(base: str, quote: str) -> None:
    for code in (base, quote):
        try:
            asset(code)
        except ValueError as exc:
            raise Rejection("unknown_asset", f"asset: {exc}") from None
    if base == quote:
        raise Rejection("invalid_pair", "quote: must differ from base")


def set_fee_schedule(state: LedgerState, cmd: c.SetFeeSchedule, ctx: Context) -> list[Draft]:
    """Rejections: none beyond the schema."""
    data = cmd.model_dump(exclude={"key", "type"})
    return [("fee_schedule_set", data, ())]


def set_client_tier(state: LedgerState, cmd: c.SetClientTier, ctx: Context) -> list[Draft]:
    """Rejections: unknown_client, unknown_tier."""
    _client(state, cmd.client)
    if cmd.tier not in state.trading.fee_schedules and cmd.tier != "standard":
        raise Rejection("unknown_tier", f"tier: no fee schedule {cmd.tier!r}")
    return [("client_tier_set", {"client": cmd.client, "tier": cmd.tier}, ())]


def set_holidays(state: LedgerState, cmd: c.SetHolidays, ctx: Context) -> list[Draft]:
    """Rejections: unknown_asset, asset_not_fiat."""
    try:
        found = asset(cmd.currency)
    except ValueError as exc:
        raise Rejection("unknown_asset", f"currency: {exc}") from None
    if found.is_virtual:
        raise Rejection("asset_not_fiat", f"currency: {cmd.currency} has no bank holidays")
    dates = sorted({d.isoformat() for d in cmd.dates})
    return [("holidays_set", {"currency": cmd.currency, "dates": dates}, ())]


def request_quote(state: LedgerState, cmd: c.RequestQuote, ctx: Context) -> list[Draft]:
    """Rejections: unknown_asset, invalid_pair, invalid_amount, unknown_client,
    unknown_sub_account, rfq_exists."""
    _pair(cmd.base, cmd.quote)
    units = _units(cmd.quantity, cmd.base, field="quantity")
    _client(state, cmd.client, cmd.sub_account)
    if cmd.rfq in state.trading.rfqs:
        raise Rejection("rfq_exists", f"rfq: {cmd.rfq!r} exists")
    data = {
        "rfq": cmd.rfq,
        "client": cmd.client,
        "sub_account": cmd.sub_account,
        "side": cmd.side,
        "base": cmd.base,
        "quote": cmd.quote,
        "quantity_units": str(units),
        "quantity": format_units(units, cmd.base),
        "settlement": cmd.settlement,
    }
    return [("rfq_requested", data, ())]


def _open_rfq(state: LedgerState, rfq: str) -> dict[str, Any]:
    # A filled RFQ's quotes are used: accepting one again is "quote_used".
    return live(state.trading.rfqs, rfq, field="rfq", unknown="unknown_rfq", closed="quote_used")


def submit_quote(state: LedgerState, cmd: c.SubmitQuote, ctx: Context) -> list[Draft]:
    """Rejections: unknown_rfq, quote_used, invalid_price, quote_exists, quote_expired."""
    found = _open_rfq(state, cmd.rfq)
    parse_price(cmd.price)
    if cmd.quote_id in found["quotes"]:
        raise Rejection("quote_exists", f"quote_id: {cmd.quote_id!r} exists")
    if cmd.valid_until <= ctx.now:
        raise Rejection("quote_expired", "valid_until: the quote is already expired")
    data = {
        "rfq": cmd.rfq,
        "quote_id": cmd.quote_id,
        "provider": cmd.provider,
        "price": cmd.price,
        "valid_until": cmd.valid_until.isoformat(),
    }
    return [("quote_submitted", data, ())]


def _best(rfq: dict[str, Any], valid: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not valid:
        return None
    # Best price for the client; among equal prices the earliest quote wins.
    if rfq["side"] == "buy":
        return min(valid, key=lambda q: (Fraction(q["price"]), q["seq"]))
    return max(valid, key=lambda q: (Fraction(q["price"]), -q["seq"]))


def accept_quote(state: LedgerState, cmd: c.AcceptQuote, ctx: Context) -> list[Draft]:
    """Rejections: unknown_rfq, quote_used, unknown_quote, quote_expired, invalid_amount,
    insufficient_funds, insufficient_wallet_balance."""
    rfq = _open_rfq(state, cmd.rfq)
    now = ctx.now
    quotes = list(rfq["quotes"].values())
    valid = [q for q in quotes if datetime.fromisoformat(q["valid_until"]) > now]
    best = _best(rfq, valid)
    if cmd.quote_id is None:
        if best is None:
            raise Rejection("quote_expired", "quote_id: no quote of this rfq is still valid")
        chosen = best
    else:
        chosen = rfq["quotes"].get(cmd.quote_id)
        if chosen is None:
            raise Rejection("unknown_quote", f"quote_id: no quote {cmd.quote_id!r} in this rfq")
        if datetime.fromisoformat(chosen["valid_until"]) <= now:
            raise Rejection("quote_expired", f"quote_id: {cmd.quote_id!r} expired")
    evidence = [
        {
            **{k: q[k] for k in ("quote_id", "provider", "price", "valid_until")},
            "outcome": "accepted" if q is chosen else ("expired" if q not in valid else "lost"),
        }
        for q in quotes
    ]
    trade = _new_trade(
        state,
        ctx,
        trade_id=f"{cmd.rfq}.{chosen['quote_id']}",
        client=rfq["client"],
        sub_account=rfq["sub_account"],
        side=rfq["side"],
        base=rfq["base"],
        quote=rfq["quote"],
        quantity_units=int(rfq["quantity_units"]),
        lp_price=Fraction(chosen["price"]),
        counterparty=chosen["provider"],
        settlement=rfq["settlement"],
        liquidity="taker",
        spread=True,
    )
    trade |= {
        "source": "rfq",
        "rfq": cmd.rfq,
        "quote_id": chosen["quote_id"],
        "best_quote_id": best["quote_id"] if best else None,
        "best_price_taken": best is not None
        and Fraction(chosen["price"]) == Fraction(best["price"]),
        "quotes": evidence,
    }
    _funds_for(state, trade)
    return [_booked(state, trade)]


def _new_trade(
    state: LedgerState,
    ctx: Context,
    *,
    trade_id: str,
    client: str,
    sub_account: str,
    side: str,
    base: str,
    quote: str,
    quantity_units: int,
    lp_price: Fraction,
    counterparty: str,
    settlement: str,
    liquidity: str,
    spread: bool,
    amounts: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """A trade's terms; ``amounts`` = (notional, fee) when the caller rounded them already."""
    schedule = state.trading.schedule(client)
    spread_bps = schedule["otc_spread_bps"] if spread else 0
    markup = Fraction(BPS + (spread_bps if side == "buy" else -spread_bps), BPS)
    client_price = lp_price * markup
    if amounts is not None:
        lp_notional = client_notional = amounts[0]
        fee = amounts[1]
    else:
        lp_notional = notional(quantity_units, base, quote, lp_price)
        client_notional = notional(quantity_units, base, quote, client_price)
        if client_notional == 0 or lp_notional == 0:
            raise Rejection("invalid_amount", f"quantity: worth less than one unit of {quote}")
        fee = fee_units(client_notional, schedule[f"{liquidity}_bps"])
    trade_date = ctx.now.date()
    due = value_date(trade_date, settlement, state.trading.holiday_set(base, quote))
    trade = {
        "trade": trade_id,
        "client": client,
        "sub_account": sub_account,
        "side": side,
        "base": base,
        "quote": quote,
        "quantity_units": str(quantity_units),
        "price": _price_text(client_price),
        "lp_price": _price_text(lp_price),
        "notional_units": str(client_notional),
        "lp_notional_units": str(lp_notional),
        "fee_units": str(fee),
        "liquidity": liquidity,
        "counterparty": counterparty,
        "settlement": settlement,
        "trade_date": trade_date.isoformat(),
        "value_date": due.isoformat(),
    }
    return trade | trade_money(trade)


def _price_text(price: Fraction) -> str:
    """An exact price as a decimal string (prices are kept to 18 decimals at most)."""
    scaled = price * 10**18
    whole = int(scaled)
    return f"{whole // 10**18}.{whole % 10**18:018d}".rstrip("0").rstrip(".")


def _funds_for(state: LedgerState, trade: dict[str, Any]) -> None:
    """The client must have what it gives (plus a buyer's fee) available now."""
    give = trade["quote"] if trade["side"] == "buy" else trade["base"]
    need = (
        int(trade["notional_units"]) + int(trade["fee_units"])
        if trade["side"] == "buy"
        else int(trade["quantity_units"])
    )
    _funds(state, trade["client"], trade["sub_account"], give, need)


def _booked(state: LedgerState, trade: dict[str, Any], extra: tuple[Posting, ...] = ()) -> Draft:
    """A booking event; T+0 trades are settled in the same event (both legs at once)."""
    postings = booking_postings(trade)
    if trade["settlement"] == "T+0":
        trade = trade | {"status": "settled"}
        settlement = settlement_postings(trade)
        _wallets_cover(state, settlement)
        postings = merge(postings, settlement)
    else:
        trade = trade | {"status": "open"}
    return ("trade_booked", trade, merge(extra, postings))


def _open_trade(state: LedgerState, trade: str) -> dict[str, Any]:
    trades = state.trading.trades
    return live(trades, trade, field="trade", unknown="unknown_trade", closed="trade_not_open")


def settle_trade(state: LedgerState, cmd: c.SettleTrade, ctx: Context) -> list[Draft]:
    """Rejections: unknown_trade, trade_not_open, settlement_not_due,
    insufficient_wallet_balance."""
    found = _open_trade(state, cmd.trade)
    if ctx.now.date().isoformat() < found["value_date"]:
        raise Rejection("settlement_not_due", f"trade: value date is {found['value_date']}")
    data = {
        "trade": cmd.trade,
        "client": found["client"],
        "sub_account": found["sub_account"],
        "counterparty": found["counterparty"],
        "value_date": found["value_date"],
        "mode": "gross",
    }
    postings = settlement_postings(found)
    _wallets_cover(state, postings)
    return [("trade_settled", data, postings)]


def settle_net(state: LedgerState, cmd: c.SettleNet, ctx: Context) -> list[Draft]:
    """Rejections: settlement_not_due, no_trades_due, insufficient_wallet_balance."""
    day = cmd.value_date.isoformat()
    if ctx.now.date() < cmd.value_date:
        raise Rejection("settlement_not_due", f"value_date: {day} is in the future")
    due = sorted(
        (
            t
            for t in state.trading.trades.values()
            if t["status"] == "open"
            and t["counterparty"] == cmd.counterparty
            and t["value_date"] <= day
        ),
        key=lambda t: t["trade"],
    )
    if not due:
        raise Rejection("no_trades_due", f"counterparty: nothing open with {cmd.counterparty!r}")
    postings = merge(*(settlement_postings(t) for t in due))
    _wallets_cover(state, postings)
    data = {
        "counterparty": cmd.counterparty,
        "value_date": day,
        "trades": [t["trade"] for t in due],
        "mode": "net",
    }
    return [("trades_net_settled", data, postings)]


def _wallets_cover(state: LedgerState, postings: tuple[Posting, ...]) -> None:
    """A wallet cannot deliver what it does not hold: move it from cold first."""
    for account, code, units in postings:
        if account.startswith("custody:") and state.balance(account, code) + units < 0:
            raise Rejection(
                "insufficient_wallet_balance",
                f"trade: {account} holds too little {code} to deliver; move it from cold first",
            )


def fail_settlement(state: LedgerState, cmd: c.FailSettlement, ctx: Context) -> list[Draft]:
    """Rejections: unknown_trade, trade_not_open."""
    found = _open_trade(state, cmd.trade)
    data = {
        "trade": cmd.trade,
        "client": found["client"],
        "reason": cmd.reason,
        "fails": int(found.get("fails", 0)) + 1,
        "first_failed_at": found.get("first_failed_at") or ctx.now.isoformat(),
    }
    return [("settlement_failed", data, ())]


def cancel_trade(state: LedgerState, cmd: c.CancelTrade, ctx: Context) -> list[Draft]:
    """Rejections: unknown_trade, trade_not_open."""
    found = _open_trade(state, cmd.trade)
    data = {"trade": cmd.trade, "client": found["client"], "reason": cmd.reason}
    return [("trade_cancelled", data, reverse(booking_postings(found)))]


# --- order book --------------------------------------------------------------------------
def _reservation(side: str, base: str, quote: str, units: int, price: Fraction, bps: int) -> int:
    if side == "sell":
        return units
    cost = notional(units, base, quote, price)
    return cost + fee_units(cost, bps)


def place_order(state: LedgerState, cmd: c.PlaceOrder, ctx: Context) -> list[Draft]:
    """Rejections: unknown_asset, invalid_pair, invalid_amount, invalid_price, unknown_client,
    unknown_sub_account, order_exists, insufficient_funds.

    (A quantity worth less than one unit of the quote asset is ``invalid_amount`` too.)
    """
    _pair(cmd.base, cmd.quote)
    units = _units(cmd.quantity, cmd.base, field="quantity")
    limit = parse_price(cmd.limit_price, "limit_price")
    _client(state, cmd.client, cmd.sub_account)
    if cmd.order in state.trading.orders:
        raise Rejection("order_exists", f"order: {cmd.order!r} exists")
    schedule = state.trading.schedule(cmd.client)
    bps = max(schedule["maker_bps"], schedule["taker_bps"])
    reserve = _reservation(cmd.side, cmd.base, cmd.quote, units, limit, bps)
    if reserve == 0:
        raise Rejection("invalid_amount", f"quantity: worth less than one unit of {cmd.quote}")
    give = cmd.quote if cmd.side == "buy" else cmd.base
    _funds(state, cmd.client, cmd.sub_account, give, reserve)
    data = cmd.model_dump(exclude={"key", "type"}) | {
        "quantity_units": str(units),
        "reserved_units": str(reserve),
        "reserved_asset": give,
        "reserve_bps": bps,
        "placed_at": ctx.now.isoformat(),
    }
    available = client_account(cmd.client, cmd.sub_account)
    held = client_account(cmd.client, cmd.sub_account, Bucket.HELD)
    return [("order_placed", data, _move(available, held, give, reserve))]


def _live_order(state: LedgerState, order: str) -> dict[str, Any]:
    orders = state.trading.orders
    return live(orders, order, field="order", unknown="unknown_order", closed="order_not_open")


def _release_order(order: dict[str, Any], units: int) -> tuple[Posting, ...]:
    if units == 0:
        return ()
    available = client_account(order["client"], order["sub_account"])
    held = client_account(order["client"], order["sub_account"], Bucket.HELD)
    return _move(held, available, order["reserved_asset"], units)


def cancel_order(state: LedgerState, cmd: c.CancelOrder, ctx: Context) -> list[Draft]:
    """Rejections: unknown_order, order_not_open."""
    found = _live_order(state, cmd.order)
    remaining = int(found["reserved_units"])
    data = {
        "order": cmd.order,
        "client": found["client"],
        "released_units": str(remaining),
        **_money(remaining, found["reserved_asset"]),
    }
    return [("order_cancelled", data, _release_order(found, remaining))]


def record_fill(state: LedgerState, cmd: c.RecordFill, ctx: Context) -> list[Draft]:
    """Rejections: unknown_order, order_not_open, fill_exists, invalid_price, invalid_amount,
    fill_exceeds_order, price_beyond_limit, unsettled_limit_exceeded, insufficient_funds,
    insufficient_wallet_balance.

    Each fill is paid from the order's hold. Notional and fee are rounded cumulatively over
    the order's fills (each fill costs the rounded running total minus what earlier fills
    cost), and release the hold cumulatively at the limit price, so the fills together never
    cost more than the hold placed for the whole order, whatever their sizes; a fee rise after
    placement is not charged.
    """
    order = _live_order(state, cmd.order)
    if cmd.fill in state.trading.fills:
        raise Rejection("fill_exists", f"fill: {cmd.fill!r} was recorded")
    price = parse_price(cmd.price)
    units = _units(cmd.quantity, order["base"], field="quantity")
    left = int(order["quantity_units"]) - int(order.get("filled_units", 0))
    if units > left:
        raise Rejection("fill_exceeds_order", f"quantity: only {left} units left on the order")
    limit = Fraction(order["limit_price"])
    if (order["side"] == "buy" and price > limit) or (order["side"] == "sell" and price < limit):
        raise Rejection("price_beyond_limit", f"price: beyond the limit {order['limit_price']}")
    shared = order["book"] == "shared"
    costs = _fill_costs(state, order, units, price, cmd.liquidity)
    trade = _new_trade(
        state,
        ctx,
        trade_id=f"{cmd.order}.{cmd.fill}",
        client=order["client"],
        sub_account=order["sub_account"],
        side=order["side"],
        base=order["base"],
        quote=order["quote"],
        quantity_units=units,
        lp_price=price,
        counterparty=cmd.counterparty,
        settlement="T+1" if shared else "T+0",
        liquidity=cmd.liquidity,
        spread=False,
        amounts=(costs["notional"], costs["fee"]),
    )
    if shared:
        # The shared book settles at least daily: its value date is the trade date.
        trade["value_date"] = trade["trade_date"]
        cap = state.trading.shared_limits.get(order["quote"])
        open_units = state.trading.open_shared_units(order["quote"])
        if cap is not None and open_units + int(trade["notional_units"]) > int(cap):
            raise Rejection(
                "unsettled_limit_exceeded",
                f"quantity: unsettled {order['quote']} on the shared book would exceed its limit",
            )
    last = units == left
    release = int(order["reserved_units"]) if last else _release_for(order, units, limit)
    # Fills are paid from what they release; the price improvement goes back to available.
    # Only a client who spent an earlier fill's sub-unit rounding surplus can come up short.
    need = units if order["side"] == "sell" else costs["notional"] + costs["fee"]
    if need > release:
        _funds(
            state, order["client"], order["sub_account"], order["reserved_asset"], need - release
        )
    trade |= {
        "source": "book",
        "book": order["book"],
        "order": cmd.order,
        "fill": cmd.fill,
        "released_units": str(release),
        "cost_exact": str(costs["cost_exact"]),
        "fee_exact": str(costs["fee_exact"]),
        "order_closed": last,
    }
    drafts = [_booked(state, trade, _release_order(order, release))]
    violation = _priority_violation(state, order, price, cmd)
    if violation is not None:
        drafts.append(("priority_violation", violation, ()))
    return drafts


def _release_for(order: dict[str, Any], units: int, limit: Fraction) -> int:
    """The hold a fill frees: the reservation of the filled total minus that of earlier fills."""
    filled = int(order["filled_units"])
    side, base, quote, bps = order["side"], order["base"], order["quote"], order["reserve_bps"]
    before = _reservation(side, base, quote, filled, limit, bps) if filled else 0
    return _reservation(side, base, quote, filled + units, limit, bps) - before


def _fill_costs(
    state: LedgerState, order: dict[str, Any], units: int, price: Fraction, liquidity: str
) -> dict[str, Any]:
    """Notional and fee of a fill, rounded cumulatively over the order's fills."""
    base, quote = order["base"], order["quote"]
    exact = Fraction(units, 10 ** asset(base).scale) * price * 10 ** asset(quote).scale
    cost_exact = Fraction(order["cost_exact"]) + exact
    charge = round_half_up(cost_exact) - int(order["charged_units"])
    rate = state.trading.schedule(order["client"])[f"{liquidity}_bps"]
    bps = min(rate, int(order["reserve_bps"]))  # a fee rise after placement is not charged
    fee_exact = Fraction(order["fee_exact"]) + Fraction(charge * bps, BPS)
    fee = round_half_up(fee_exact) - int(order["fee_charged_units"])
    return {"notional": charge, "fee": fee, "cost_exact": cost_exact, "fee_exact": fee_exact}


def _priority_violation(
    state: LedgerState, order: dict[str, Any], price: Fraction, cmd: c.RecordFill
) -> dict[str, Any] | None:
    """Evidence that the affiliated market maker filled ahead of waiting client orders."""
    if order["participant"] != "affiliated_market_maker":
        return None
    waiting = sorted(
        o["order"]
        for o in state.trading.orders.values()
        if o["status"] == "open"
        and o["participant"] == "client"
        and o["book"] == order["book"]
        and o["side"] == order["side"]
        and o["base"] == order["base"]
        and o["quote"] == order["quote"]
        and Fraction(o["limit_price"]) == price
        and o["placed_at"] <= order["placed_at"]
    )
    if not waiting:
        return None
    return {
        "order": cmd.order,
        "fill": cmd.fill,
        "price": cmd.price,
        "client_orders_waiting": waiting,
        "book": order["book"],
    }


def set_shared_book_limit(
    state: LedgerState, cmd: c.SetSharedBookLimit, ctx: Context
) -> list[Draft]:
    """Rejections: unknown_asset, invalid_amount."""
    units = _units(cmd.limit, cmd.asset, field="limit")
    return [("shared_book_limit_set", {"asset": cmd.asset, **_money(units, cmd.asset)}, ())]


# --- custody -------------------------------------------------------------------------------
def move_custody(state: LedgerState, cmd: c.MoveCustody, ctx: Context) -> list[Draft]:
    """Rejections: unknown_asset, invalid_amount, asset_not_crypto, same_wallet, move_exists,
    insufficient_wallet_balance."""
    units = _units(cmd.amount, cmd.asset)
    if not asset(cmd.asset).is_virtual:
        raise Rejection("asset_not_crypto", f"asset: {cmd.asset} is not held in wallets")
    if cmd.from_wallet == cmd.to_wallet:
        raise Rejection("same_wallet", "to_wallet: must differ from from_wallet")
    if cmd.move in state.trading.custody_moves:
        raise Rejection("move_exists", f"move: {cmd.move!r} exists")
    if state.balance(cmd.from_wallet, cmd.asset) < units:
        raise Rejection("insufficient_wallet_balance", f"from_wallet: holds less than {cmd.amount}")
    data = cmd.model_dump(exclude={"key", "type"}) | _money(units, cmd.asset)
    return [("custody_move_requested", data, ())]


def approve_custody_move(
    state: LedgerState, cmd: c.ApproveCustodyMove, ctx: Context
) -> list[Draft]:
    """Rejections: unknown_move, move_not_pending, approver_is_requester,
    insufficient_wallet_balance."""
    moves = state.trading.custody_moves
    move = live(
        moves,
        cmd.move,
        field="move",
        unknown="unknown_move",
        closed="move_not_pending",
        status="pending",
    )
    if cmd.approver == move["requester"]:
        raise Rejection("approver_is_requester", "approver: maker-checker needs another person")
    units, code = int(move["units"]), move["asset"]
    if state.balance(move["from_wallet"], code) < units:
        raise Rejection("insufficient_wallet_balance", "move: the source wallet no longer holds it")
    postings = ((move["to_wallet"], code, units), (move["from_wallet"], code, -units))
    data = {"move": cmd.move, "approver": cmd.approver, **_money(units, code)}
    return [("custody_moved", data, postings)]


def fund_insurance(state: LedgerState, cmd: c.FundInsurance, ctx: Context) -> list[Draft]:
    """Rejections: unknown_asset, invalid_amount."""
    units = _units(cmd.amount, cmd.asset)
    postings = (
        ("external:insurance", cmd.asset, units),
        ("house:insurance_fund", cmd.asset, -units),
    )
    data = {"policy": cmd.policy, **_money(units, cmd.asset)}
    return [("insurance_funded", data, postings)]


def accrue_custody_fees(state: LedgerState, cmd: c.AccrueCustodyFees, ctx: Context) -> list[Draft]:
    """Rejections: accrual_not_due, already_accrued.

    Per (client, sub-account, virtual asset): the day's fee is the holding across all buckets
    times the tier's yearly rate / 365, rounded half up, paid from ``available`` (at most what
    is there; the rest is reported as unpaid) to house custody-fee income, as ``fee_charged``
    events so that P&L shows them with the other fees.
    """
    day = cmd.day.isoformat()
    if cmd.day >= ctx.now.date():
        raise Rejection("accrual_not_due", f"day: {day} is not over yet")
    if day in state.trading.custody_accruals:
        raise Rejection("already_accrued", f"day: custody fees for {day} were accrued")
    holdings: dict[tuple[str, str, str], int] = {}
    for (account, code), units in state.balances.items():
        if account.startswith("client:") and asset(code).is_virtual:
            _, client, sub, _ = account.split(":")
            key = (client, sub, code)
            holdings[key] = holdings.get(key, 0) - units
    drafts: list[Draft] = []
    unpaid = 0
    for (client, sub, code), units in sorted(holdings.items()):
        bps = state.trading.schedule(client)["custody_bps_per_year"]
        due = round_half_up(Fraction(max(units, 0) * bps, BPS * 365))
        paid = min(due, max(-state.balance(client_account(client, sub), code), 0))
        unpaid += due - paid
        if paid:
            data = {
                "client": client,
                "sub_account": sub,
                "fee_type": "custody",
                "day": day,
                **_money(paid, code),
            }
            postings = _move(client_account(client, sub), "house:custody_fees", code, paid)
            drafts.append(("fee_charged", data, postings))
    drafts.append(
        (
            "custody_fees_accrued",
            {"day": day, "charges": len(drafts), "unpaid_units": str(unpaid)},
            (),
        )
    )
    return drafts


def check_trust_rules(state: LedgerState, cmd: c.CheckTrustRules, ctx: Context) -> list[Draft]:
    """Rejections: none; records the current position of every virtual asset."""
    codes = sorted({s for (a, s) in state.balances if asset(s).is_virtual})
    checks = [trust_position(state, code) for code in codes]
    return [("trust_rules_checked", {"assets": checks}, ())]


def trust_position(
    state: LedgerState, code: str, pending: tuple[Posting, ...] = ()
) -> dict[str, Any]:
    """Client liabilities vs hot/cold holdings of one asset, after ``pending`` postings."""
    sums: dict[str, int] = {"clients": 0, "hot": 0, "cold": 0}
    delta: dict[str, int] = {}
    for account, s, units in pending:
        if s == code:
            delta[account] = delta.get(account, 0) + units
    for (account, s), units in state.balances.items():
        if s == code:
            _add(sums, account, units + delta.pop(account, 0))
    for account, units in delta.items():
        _add(sums, account, units)
    liabilities, hot, cold = sums["clients"], sums["hot"], sums["cold"]
    # The rule is about where client assets sit: cold / (hot + cold) >= 98%.
    held = hot + cold
    cold_ok = held <= 0 or Fraction(cold, held) >= COLD_RULE
    return {
        "asset": code,
        "client_liabilities": str(liabilities),
        "hot": str(hot),
        "cold": str(cold),
        "cold_rule_met": cold_ok,
        "cover_required": str(hot + (cold + 1) // 2),
    }


def _add(sums: dict[str, int], account: str, units: int) -> None:
    if account.startswith("client:"):
        sums["clients"] -= units
    elif account.startswith("custody:hot:"):
        sums["hot"] += units
    elif account.startswith("custody:cold:"):
        sums["cold"] += units


def trust_alerts(state: LedgerState, codes: set[str], postings: tuple[Posting, ...]) -> list[Draft]:
    """Alert events when custody postings break (or restore) the 98% cold-storage rule.

    Only a change is an event: deposits land in hot wallets all day, and one alert per breach
    (then one when a sweep to cold restores the rule) is what an operator can act on.
    """
    drafts: list[Draft] = []
    for code in sorted(codes):
        if not asset(code).is_virtual:
            continue
        position = trust_position(state, code, postings)
        breached = code in state.trading.breaches
        if breached == (not position["cold_rule_met"]):
            continue
        kind = "trust_rule_restored" if breached else "trust_rule_breached"
        drafts.append((kind, {"rule": "cold_98", **position}, ()))
    return drafts


TRADING_DECIDERS: dict[str, Callable[[LedgerState, Any, Context], list[Draft]]] = {
    "set_fee_schedule": set_fee_schedule,
    "set_client_tier": set_client_tier,
    "set_holidays": set_holidays,
    "request_quote": request_quote,
    "submit_quote": submit_quote,
    "accept_quote": accept_quote,
    "settle_trade": settle_trade,
    "settle_net": settle_net,
    "fail_settlement": fail_settlement,
    "cancel_trade": cancel_trade,
    "place_order": place_order,
    "cancel_order": cancel_order,
    "record_fill": record_fill,
    "set_shared_book_limit": set_shared_book_limit,
    "move_custody": move_custody,
    "approve_custody_move": approve_custody_move,
    "fund_insurance": fund_insurance,
    "accrue_custody_fees": accrue_custody_fees,
    "check_trust_rules": check_trust_rules,
}
