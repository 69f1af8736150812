"""A fund's first weeks at the prime broker, told as a story against the real ledger.

Aurora Capital opens an account with two strategies, wires dollars, sends bitcoin on chain,
whitelists its cold wallet and withdraws to it under a two-of-three approval policy. The desk
charges a custody fee and reverses a deposit booked to Aurora by mistake. Every balance is
checked to the last satoshi and cent, and the ledger tells the same story after a restart.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from ledger.application import Ledger
from ledger.results import CommandResult

MONDAY = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Desk:
    """The prime broker's operations desk, speaking to the ledger on Aurora's behalf."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.serial = 0

    def do(self, command_type: str, **fields: Any) -> CommandResult:
        self.serial += 1
        return self.ledger.submit_one({"key": f"ops-{self.serial}", "type": command_type, **fields})

    def balance(self, sub_account: str, asset: str, bucket: str = "available") -> str:
        """What the ledger owes Aurora in one bucket, as the statement would print it."""
        account = f"client:aurora:{sub_account}:{bucket}"
        units = self.ledger.read(lambda s: -s.balance(account, asset))
        scale = {"USD": 2, "BTC": 8}[asset]
        whole, frac = divmod(units, 10**scale)
        return f"{whole}.{frac:0{scale}d}"


def test_a_fund_onboards_deposits_and_withdraws_under_maker_checker(fresh_db_url: str) -> None:
    clock = Clock(MONDAY)
    ledger = Ledger(fresh_db_url, "prime", clock=clock)
    desk = Desk(ledger)
    try:
        # Aurora Capital opens its account with a macro and an arbitrage strategy.
        opened = desk.do(
            "open_client", client="aurora", name="Aurora Capital", sub_accounts=["macro", "arb"]
        )
        assert opened.accepted

        # One million dollars arrive by bank transfer and are credited at once.
        wired = desk.do(
            "deposit_fiat",
            client="aurora",
            sub_account="macro",
            asset="USD",
            amount="1000000.00",
            bank_reference="FEDWIRE-20260302-0001",
        )
        assert wired.event_types == ("fiat_deposited",)
        assert desk.balance("macro", "USD") == "1000000.00"

        # 2.5 BTC are seen on chain; they stay pending until three confirmations.
        seen = desk.do(
            "detect_crypto_deposit",
            client="aurora",
            sub_account="macro",
            asset="BTC",
            amount="2.5",
            chain="bitcoin",
            tx_hash="btc-tx-aaa",
            required_confirmations=3,
        )
        assert seen.event_types == ("crypto_deposit_detected",)
        assert desk.do("confirm_crypto_deposit", tx_hash="btc-tx-aaa", confirmations=1).accepted
        assert desk.balance("macro", "BTC") == "0.00000000"
        credited = desk.do("confirm_crypto_deposit", tx_hash="btc-tx-aaa", confirmations=3)
        assert credited.event_types[0] == "crypto_deposit_credited"
        assert desk.balance("macro", "BTC") == "2.50000000"

        # A second transfer of 1 BTC is seen, then the chain reorganises and it is gone.
        assert desk.do(
            "detect_crypto_deposit",
            client="aurora",
            sub_account="macro",
            asset="BTC",
            amount="1",
            chain="bitcoin",
            tx_hash="btc-tx-bbb",
            required_confirmations=3,
        ).accepted
        assert desk.do("reorg_crypto_deposit", tx_hash="btc-tx-bbb").accepted
        too_late = desk.do("confirm_crypto_deposit", tx_hash="btc-tx-bbb", confirmations=6)
        assert too_late.code == "deposit_not_pending"
        assert desk.balance("macro", "BTC") == "2.50000000"

        # Aurora whitelists its cold wallet, then its trader asks to withdraw 1.2 BTC there;
        # two of the CFO, COO and head of risk must approve, and never the trader.
        assert desk.do(
            "whitelist_destination",
            client="aurora",
            destination="aurora-cold",
            asset="BTC",
            address="bc1q-aurora-cold-0001",
        ).accepted
        requested = desk.do(
            "request_withdrawal",
            withdrawal="wd-1",
            client="aurora",
            sub_account="macro",
            asset="BTC",
            amount="1.2",
            destination="aurora-cold",
            requester="trader",
            approvers=["cfo", "coo", "risk"],
            approvals_required=2,
            expires_at=(MONDAY + timedelta(days=1)).isoformat(),
        )
        assert requested.accepted
        assert desk.balance("macro", "BTC") == "1.30000000"
        assert desk.balance("macro", "BTC", "held") == "1.20000000"

        clock.now += timedelta(minutes=5)
        assert desk.do("approve_withdrawal", withdrawal="wd-1", approver="trader").code == (
            "approver_is_requester"
        )
        assert desk.do("approve_withdrawal", withdrawal="wd-1", approver="cfo").accepted
        early = desk.do("execute_withdrawal", withdrawal="wd-1", network_reference="btc-out-1")
        assert early.code == "not_enough_approvals"
        assert desk.do("approve_withdrawal", withdrawal="wd-1", approver="risk").accepted
        paid = desk.do("execute_withdrawal", withdrawal="wd-1", network_reference="btc-out-1")
        assert paid.event_types[0] == "withdrawal_executed"
        assert desk.balance("macro", "BTC") == "1.30000000"
        assert desk.balance("macro", "BTC", "held") == "0.00000000"
        again = desk.do("execute_withdrawal", withdrawal="wd-1", network_reference="btc-out-2")
        assert again.code == "withdrawal_not_pending"

        # The month's custody fee is charged to the macro strategy.
        clock.now += timedelta(days=1)
        fee = desk.do(
            "charge_fee",
            client="aurora",
            sub_account="macro",
            asset="USD",
            amount="250.00",
            fee_type="custody",
        )
        assert fee.accepted
        assert desk.balance("macro", "USD") == "999750.00"

        # A wire meant for another client is booked to Aurora's arbitrage book by mistake;
        # the desk corrects it with a reversal, never an edit.
        mistake = desk.do(
            "deposit_fiat",
            client="aurora",
            sub_account="arb",
            asset="USD",
            amount="5000.00",
            bank_reference="FEDWIRE-20260303-0042",
        )
        assert desk.balance("arb", "USD") == "5000.00"
        (position,) = mistake.positions
        reversal = desk.do("reverse_event", position=position, reason="wire belongs to client B")
        assert reversal.event_types == ("event_reversed",)
        assert desk.balance("arb", "USD") == "0.00"
        twice = desk.do("reverse_event", position=position, reason="again")
        assert twice.code == "already_reversed"

        # The books balance: what Aurora is owed is exactly what sits in the bank and wallet.
        final = ledger.read(lambda s: dict(s.balances))
        assert final[("trust_bank:trust-bank-1", "USD")] == 100_000_000
        assert final[("house:fees", "USD")] == -25_000
        assert final[("custody:hot:hot-1", "BTC")] == 130_000_000
        assert sum(u for (_, code), u in final.items() if code == "USD") == 0
        assert sum(u for (_, code), u in final.items() if code == "BTC") == 0
    finally:
        ledger.close()

    # After a restart the ledger tells the same story.
    with Ledger(fresh_db_url, "prime", clock=clock) as reopened:
        desk = Desk(reopened)
        assert desk.balance("macro", "USD") == "999750.00"
        assert desk.balance("macro", "BTC") == "1.30000000"
        assert desk.balance("macro", "BTC", "held") == "0.00000000"
        assert desk.balance("arb", "USD") == "0.00"
        assert reopened.read(lambda s: s.withdrawals["wd-1"]["approved_by"]) == ["cfo", "risk"]
