"""DVP survives a writer killed at any moment: both legs of a settlement or neither.

A writer process books T+1 trades on Monday and settles them one by one on Tuesday, printing
each result as it is answered. The test kills it (SIGKILL) at seeded points, several times
over the same database, each new writer resuming the same plan with the same idempotency
keys. After every kill the ledger is reopened and every trade is either open (its held and
receivable amounts intact, no settlement posted) or settled (exactly one settlement event
carrying both legs). Finally the plan is finished in the test process: what was committed is
answered from the idempotency record exactly as first answered, the rest is carried out.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ledger.application import Ledger
from ledger.journal import GENESIS_HASH, Entry, open_sealed
from ledger.money import ASSETS
from ledger.state import LedgerState

REPO = Path(__file__).resolve().parents[1]
LEDGER = "dvp"
MONDAY = datetime(2026, 11, 16, 2, 0, tzinfo=UTC)
TUESDAY = datetime(2026, 11, 17, 2, 0, tzinfo=UTC)
TRADES = 8
WAIT = 60.0  # seconds: generous bound on any single wait for the writer
HOT, BANK = "custody:hot:hot-1", "trust_bank:trust-bank-1"

# The writer: plays a plan of (time, command), printing each answer once it is durable.
WRITER = """
import json, sys
from datetime import datetime
from ledger.application import Ledger

url, name, plan_file = sys.argv[1:4]
with open(plan_file) as f:
    plan = json.load(f)
now = [datetime.fromisoformat(plan[0][0])]
ledger = Ledger(url, name, clock=lambda: now[0])
for moment, command in plan:
    now[0] = datetime.fromisoformat(moment)
    result = ledger.submit_one(command)
    print(json.dumps({"answer": result.as_dict(), "replayed": result.replayed}), flush=True)
ledger.close()
print(json.dumps({"done": True}), flush=True)
"""

Plan = list[tuple[str, dict[str, Any]]]


def trade_plan() -> tuple[Plan, list[str], int]:
    """The writer's plan, the trade ids, and the index of the first settlement command."""
    plan: Plan = []

    def at(moment: datetime, command_type: str, key: str, **fields: Any) -> None:
        plan.append((moment.isoformat(), {"type": command_type, "key": key, **fields}))

    setup = MONDAY - timedelta(hours=1)
    at(setup, "set_fee_schedule", "fees", tier="pro", maker_bps=2, taker_bps=6, otc_spread_bps=8)
    for client, fiat, crypto, amount in (
        ("fund-a", "USD", "BTC", "50"),
        ("fund-b", "HKD", "ETH", "900"),
    ):
        at(
            setup,
            "open_client",
            f"open-{client}",
            client=client,
            name=client,
            sub_accounts=["main"],
        )
        at(
            setup,
            "deposit_fiat",
            f"fiat-{client}",
            client=client,
            sub_account="main",
            asset=fiat,
            amount="9000000",
            bank_reference=f"ref-{client}",
        )
        tx = f"tx-{client}"
        at(
            setup,
            "detect_crypto_deposit",
            f"seen-{client}",
            client=client,
            sub_account="main",
            asset=crypto,
            amount=amount,
            chain=crypto.lower(),
            tx_hash=tx,
            required_confirmations=1,
        )
        at(setup, "confirm_crypto_deposit", f"conf-{client}", tx_hash=tx, confirmations=1)
    at(setup, "set_client_tier", "tier-a", client="fund-a", tier="pro")

    trades = []
    for i in range(TRADES):
        client, pair, price = (
            ("fund-a", ("BTC", "USD"), f"6500{i}.15")
            if i % 2 == 0
            else ("fund-b", ("ETH", "HKD"), f"2650{i}.5")
        )
        moment, rfq = MONDAY + timedelta(seconds=i), f"rfq-{i}"
        side = "buy" if i % 4 < 2 else "sell"
        at(
            moment,
            "request_quote",
            f"{rfq}-ask",
            rfq=rfq,
            client=client,
            sub_account="main",
            side=side,
            base=pair[0],
            quote=pair[1],
            quantity=f"{i + 1}.25",
            settlement="T+1",
        )
        valid = (moment + timedelta(hours=1)).isoformat()
        at(
            moment,
            "submit_quote",
            f"{rfq}-quote",
            rfq=rfq,
            quote_id=f"q-{i}",
            provider=f"lp-{i % 3}",
            price=price,
            valid_until=valid,
        )
        at(moment, "accept_quote", f"{rfq}-accept", rfq=rfq, quote_id=f"q-{i}")
        trades.append(f"{rfq}.q-{i}")
    first_settlement = len(plan)
    order = trades[:]
    random.Random(7).shuffle(order)
    for i, trade in enumerate(order):
        at(TUESDAY + timedelta(seconds=i), "settle_trade", f"settle-{trade}", trade=trade)
    return plan, trades, first_settlement


class Writer:
    """The writer subprocess, its answers read line by line by a thread."""

    def __init__(self, url: str, plan_file: Path, script: Path, log: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.log = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, str(script), url, LEDGER, str(plan_file)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.lines.put(json.loads(raw))
        self.lines.put(None)

    def answers_until(self, key: str) -> Iterator[dict[str, Any]]:
        """Answers as they come, up to and including the one for ``key``."""
        deadline = time.monotonic() + WAIT
        while True:
            line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            assert line is not None, f"writer ended early: {self.log.name}"
            assert "answer" in line, line
            yield line
            if line["answer"]["key"] == key:
                return

    def kill(self) -> list[dict[str, Any]]:
        """SIGKILL; returns the answers printed before the process died."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=WAIT)
        self.log.close()
        rest = []
        while (line := self.lines.get(timeout=WAIT)) is not None:
            rest.append(line)
        return rest


def posting_map(postings: tuple[tuple[str, str, int], ...]) -> dict[tuple[str, str], int]:
    sums: dict[tuple[str, str], int] = {}
    for account, code, units in postings:
        sums[(account, code)] = sums.get((account, code), 0) + units
    return {k: v for k, v in sums.items() if v}


def holding(code: str) -> str:
    return HOT if ASSETS[code].is_virtual else BANK


def both_legs(trade: dict[str, Any]) -> dict[tuple[str, str], int]:
    """The settlement of one trade, spelled out: the asset leg and the cash leg."""
    client = f"client:{trade['client']}:{trade['sub_account']}"
    base, quote, lp = trade["base"], trade["quote"], f"counterparty:{trade['counterparty']}"
    qty, notional = int(trade["quantity_units"]), int(trade["notional_units"])
    lp_notional, fee = int(trade["lp_notional_units"]), int(trade["fee_units"])
    if trade["side"] == "buy":  # pay quote from the bank, receive base into custody
        legs = {
            (f"{client}:held", quote): lp_notional + fee,
            (holding(quote), quote): -lp_notional,
            (holding(base), base): qty,
            (lp, base): -qty,
            (f"{client}:receivable", base): qty,
            (f"{client}:available", base): -qty,
            ("house:fees", quote): -fee,
        }
    else:  # deliver base from custody, receive quote into the bank
        legs = {
            (f"{client}:held", base): qty,
            (holding(base), base): -qty,
            (holding(quote), quote): lp_notional,
            (lp, quote): -lp_notional,
            (f"{client}:receivable", quote): notional,
            (f"{client}:available", quote): fee - notional,
            ("house:fees", quote): -fee,
        }
    return {k: v for k, v in legs.items() if v}


def pending(trade: dict[str, Any]) -> dict[tuple[str, str], int]:
    """What an open trade keeps in the client's held and receivable buckets (posting sums)."""
    client = f"client:{trade['client']}:{trade['sub_account']}"
    qty, notional = int(trade["quantity_units"]), int(trade["notional_units"])
    lp_notional, fee = int(trade["lp_notional_units"]), int(trade["fee_units"])
    if trade["side"] == "buy":
        return {
            (f"{client}:held", trade["quote"]): -(lp_notional + fee),
            (f"{client}:receivable", trade["base"]): -qty,
        }
    return {
        (f"{client}:held", trade["base"]): -qty,
        (f"{client}:receivable", trade["quote"]): -notional,
    }


def read_log(url: str) -> tuple[LedgerState, list[Entry]]:
    """Reopen the ledger as a restarted writer would, and read its whole log."""
    ledger = Ledger(url, LEDGER, clock=lambda: TUESDAY)
    try:
        state = ledger.read(lambda s: LedgerState.from_snapshot(s.to_snapshot()))
        entries, prev = [], GENESIS_HASH
        for body in ledger.store.event_bodies():
            entry = open_sealed(body, prev=prev)
            entries.append(entry)
            prev = entry.hash
    finally:
        ledger.close()
    return state, entries


def check_dvp(state: LedgerState, entries: list[Entry], trades: list[str]) -> int:
    """Every trade open with nothing settled, or settled once with both legs; returns settled."""
    settled_by: dict[str, list[Entry]] = {}
    totals: dict[str, int] = {}
    for entry in entries:
        for _, code, units in entry.postings:
            totals[code] = totals.get(code, 0) + units
        if entry.type == "trade_settled":
            settled_by.setdefault(entry.data["trade"], []).append(entry)
        assert entry.type != "trades_net_settled", "this plan settles gross only"
    assert all(total == 0 for total in totals.values()), totals
    expected_buckets: dict[tuple[str, str], int] = {}
    settled = 0
    for trade_id in trades:
        trade = state.trading.trades.get(trade_id)
        events = settled_by.get(trade_id, [])
        if trade is None or trade["status"] == "open":
            assert events == [], f"{trade_id}: settlement posted for an open trade"
            for account_asset, units in (pending(trade) if trade else {}).items():
                expected_buckets[account_asset] = expected_buckets.get(account_asset, 0) + units
            continue
        assert trade["status"] == "settled"
        assert len(events) == 1, f"{trade_id}: settled {len(events)} times"
        assert posting_map(events[0].postings) == both_legs(trade), trade_id
        settled += 1
    # Held and receivable hold exactly the open trades' amounts: intact, or cleared in full.
    buckets = {
        (account, code): units
        for (account, code), units in state.balances.items()
        if account.endswith((":held", ":receivable"))
    }
    assert buckets == {k: v for k, v in expected_buckets.items() if v}
    return settled


@pytest.mark.parametrize("seed", [3, 17, 2026])
def test_settlement_is_all_or_nothing_when_the_writer_is_killed(
    seed: int, fresh_db_url: str, tmp_path: Path
) -> None:
    plan, trades, first_settlement = trade_plan()
    plan_file, script = tmp_path / "plan.json", tmp_path / "writer.py"
    plan_file.write_text(json.dumps(plan))
    script.write_text(WRITER)
    rng = random.Random(seed)
    # One kill while booking, three while settling; each soon after a chosen command's answer.
    targets = [rng.randrange(first_settlement - 3 * TRADES, first_settlement)]
    targets += sorted(rng.sample(range(first_settlement, len(plan) - 1), 3))
    first_answers: dict[str, dict[str, Any]] = {}
    settled_counts = []
    for target in targets:
        answered_before = set(first_answers)
        writer = Writer(fresh_db_url, plan_file, script, tmp_path / "writer.log")
        answers = list(writer.answers_until(plan[target][1]["key"]))
        time.sleep(rng.uniform(0, 0.004))  # not a synchronisation: moves the kill at random
        answers += writer.kill()
        for line in answers:
            key, answer = line["answer"]["key"], line["answer"]
            assert answer["status"] == "accepted", answer
            # What an earlier writer answered is answered again from the record, word for word.
            assert line["replayed"] or key not in answered_before, key
            assert first_answers.setdefault(key, answer) == answer
        state, entries = read_log(fresh_db_url)
        settled_counts.append(check_dvp(state, entries, trades))

    # Finish in this process: committed commands answer from the record, the rest run now.
    now = [TUESDAY]
    ledger = Ledger(fresh_db_url, LEDGER, clock=lambda: now[0])
    try:
        head = ledger.position
        for moment, command in plan:
            now[0] = datetime.fromisoformat(moment)
            result = ledger.submit_one(command)
            assert result.accepted, result
            if command["key"] in first_answers:
                assert result.replayed
                assert result.as_dict() == first_answers[command["key"]]
            if result.replayed:
                assert max(result.positions, default=0) <= head
            else:
                assert min(result.positions) > head
    finally:
        ledger.close()
    state, entries = read_log(fresh_db_url)
    assert check_dvp(state, entries, trades) == TRADES
    assert settled_counts == sorted(settled_counts)
    assert {t["status"] for t in state.trading.trades.values()} == {"settled"}
    assert [e.position for e in entries] == list(range(1, len(entries) + 1))
