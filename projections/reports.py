"""Trading reports folded from the public event log: trades, RFQ evidence, settlement.

They read the event bodies of one ledger in log order (plain SQL on the public log table, only
the trading event types) and fold them; nothing here depends on the write side's internals.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any

import orjson
import psycopg

from ledger.events import ledger_id

TRADE_TYPES = (
    "rfq_requested",
    "quote_submitted",
    "trade_booked",
    "trade_settled",
    "trades_net_settled",
    "settlement_failed",
    "trade_cancelled",
    "priority_violation",
)

Row = dict[str, Any]


def _bodies(url: str, ledger: str) -> Iterator[dict[str, Any]]:
    # One ledger's rows, by the store's primary key (originator id, position), so that other
    # ledgers sharing the table are never read; the body's own ledger is checked as well.
    with psycopg.connect(url) as conn, conn.cursor(name="report") as cur:
        cur.itersize = 2000
        cur.execute(
            "SELECT state FROM primeledger_events WHERE originator_id = %s AND topic = ANY(%s)"
            " ORDER BY originator_version",
            (ledger_id(ledger), list(TRADE_TYPES)),
        )
        for (state,) in cur:
            body = orjson.loads(bytes(state))
            if body["ledger"] == ledger:
                yield body


def _fold(url: str, ledger: str) -> tuple[dict[str, Row], dict[str, Row], list[Row]]:
    trades: dict[str, Row] = {}
    rfqs: dict[str, Row] = {}
    violations: list[Row] = []
    for body in _bodies(url, ledger):
        data, kind = body["data"], body["type"]
        if kind == "rfq_requested":
            rfqs[data["rfq"]] = {**data, "requested_at": body["time"], "quotes": []}
        elif kind == "quote_submitted":
            rfqs[data["rfq"]]["quotes"].append({**data, "received_at": body["time"]})
        elif kind == "trade_booked":
            trades[data["trade"]] = {
                **data,
                "booked_at": body["time"],
                "booked_position": body["position"],
                "settled_at": body["time"] if data["status"] == "settled" else None,
            }
        elif kind == "trade_settled":
            trades[data["trade"]] |= {
                "status": "settled",
                "settled_at": body["time"],
                "settlement_mode": "gross",
            }
        elif kind == "trades_net_settled":
            for trade in data["trades"]:
                trades[trade] |= {
                    "status": "settled",
                    "settled_at": body["time"],
                    "settlement_mode": "net",
                }
        elif kind == "settlement_failed":
            trades[data["trade"]] |= {
                "fails": data["fails"],
                "first_failed_at": data["first_failed_at"],
                "last_fail_reason": data["reason"],
            }
        elif kind == "trade_cancelled":
            trades[data["trade"]] |= {"status": "cancelled", "cancel_reason": data["reason"]}
        elif kind == "priority_violation":
            violations.append({**data, "time": body["time"], "position": body["position"]})
    return trades, rfqs, violations


def _trade_row(trade: Row) -> Row:
    return {
        "trade": trade["trade"],
        "trade_date": trade["trade_date"],
        "client": trade["client"],
        "sub_account": trade["sub_account"],
        "source": trade.get("source", ""),
        "side": trade["side"],
        "pair": f"{trade['base']}/{trade['quote']}",
        "quantity": trade["quantity"],
        "price": trade["price"],
        "notional": trade["notional"],
        "fee": trade["fee"],
        "counterparty": trade["counterparty"],
        "settlement": trade["settlement"],
        "value_date": trade["value_date"],
        "status": trade["status"],
    }


def trades_report(url: str, ledger: str, client: str | None = None) -> list[Row]:
    trades, _, _ = _fold(url, ledger)
    return [_trade_row(t) for t in trades.values() if client in (None, t["client"])]


def settlement_report(url: str, ledger: str, on: date) -> list[Row]:
    """Trades with value date ``on``, and every older one still open (fails age)."""
    trades, _, _ = _fold(url, ledger)
    day = on.isoformat()
    rows = []
    for trade in trades.values():
        due, still_open = trade["value_date"], trade["status"] == "open"
        if not (due == day or (still_open and due < day)):
            continue
        failed = trade.get("fails", 0) > 0
        if trade["status"] == "settled":
            dvp = "settled: both legs"
        elif trade["status"] == "cancelled":
            dvp = "cancelled: reversed"
        else:
            dvp = "failed: open" if failed else "pending: neither leg"
        age = (on - date.fromisoformat(trade["first_failed_at"][:10])).days if failed else None
        rows.append(
            _trade_row(trade)
            | {
                "dvp": dvp,
                "settled_at": trade.get("settled_at") or "",
                "mode": trade.get(
                    "settlement_mode", "with booking" if trade["settlement"] == "T+0" else ""
                ),
                "fails": trade.get("fails", 0),
                "fail_age_days": age if age is not None else "",
                "last_fail_reason": trade.get("last_fail_reason", ""),
            }
        )
    return rows


def rfq_report(
    url: str, ledger: str, rfq: str | None = None, quote_id: str | None = None
) -> list[Row]:
    """Every quote of an RFQ (found by RFQ id or by any of its quote ids) and its outcome."""
    trades, rfqs, _ = _fold(url, ledger)
    if quote_id is not None:
        rfq = next(
            (r for r, v in rfqs.items() if any(q["quote_id"] == quote_id for q in v["quotes"])),
            None,
        )
    found = rfqs.get(rfq or "")
    if found is None:
        return []
    trade = next((t for t in trades.values() if t.get("rfq") == rfq), None)
    outcomes = {q["quote_id"]: q["outcome"] for q in (trade or {}).get("quotes", [])}
    return [
        {
            "rfq": rfq,
            "client": found["client"],
            "side": found["side"],
            "pair": f"{found['base']}/{found['quote']}",
            "quantity": found["quantity"],
            "quote_id": q["quote_id"],
            "provider": q["provider"],
            "price": q["price"],
            "received_at": q["received_at"],
            "valid_until": q["valid_until"],
            "outcome": outcomes.get(q["quote_id"], "open"),
            "best": trade is not None and trade.get("best_quote_id") == q["quote_id"],
        }
        for q in found["quotes"]
    ]


def priority_violations(url: str, ledger: str) -> list[Row]:
    """Fills where the affiliated market maker went ahead of waiting client orders."""
    _, _, violations = _fold(url, ledger)
    return [
        {
            "position": v["position"],
            "time": v["time"],
            "order": v["order"],
            "fill": v["fill"],
            "price": v["price"],
            "client_orders_waiting": ",".join(v["client_orders_waiting"]),
        }
        for v in violations
    ]
