"""Property-based tests: random command sequences never break the ledger's invariants.

A hypothesis ``RuleBasedStateMachine`` drives the pure ``Processor`` (the exact code the single
writer runs) with clients, fiat and crypto deposits (confirmations, reorgs), whitelists,
withdrawals (approvals, rejections, expiries), transfers, holds (place, post, void, expire),
fees, reversals, marks, retries and a clock that moves so that expiries happen. After every
step it checks double entry per asset, that no client bucket is negative, that held money
matches open holds and pending withdrawals, and that replaying the sealed log through a fresh
state (checking the hash chain) gives the live state.

Runs are derandomized so that CI is deterministic; set ``PRIMELEDGER_PROPERTY_RANDOM=1`` (and
``PRIMELEDGER_PROPERTY_EXAMPLES=500``) to explore new sequences locally. Hypothesis prints
the failing sequence as a reproducible program.
"""

from __future__ import annotations

import os
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from ledger.accounts import account_type
from ledger.application import Ledger, load_state
from ledger.journal import open_sealed
from ledger.money import ASSETS, format_units
from ledger.processing import Processor
from ledger.results import CommandResult
from ledger.state import LedgerState
from ledger.store import LedgerStore

T0 = datetime(2026, 3, 3, 9, 0, tzinfo=UTC)
RANDOM = os.environ.get("PRIMELEDGER_PROPERTY_RANDOM") == "1"
EXAMPLES = int(os.environ.get("PRIMELEDGER_PROPERTY_EXAMPLES", "50"))

CLIENTS = ["c1", "c1", "c1", "c2"]  # c1 is opened first; c2 is opened (or not) at random
SUBS = ["s1", "s2", "s3"]
PEOPLE = ["p1", "p2", "p3", "p4"]
FIAT = ["USD", "HKD"]
CRYPTO = ["BTC", "ETH"]
ALL = FIAT + CRYPTO
# Deposits are up to FUND whole units, spending up to SPEND: most spending is covered.
FUND = {"USD": 5000, "HKD": 5000, "BTC": 20, "ETH": 50}
SPEND = {"USD": 500, "HKD": 500, "BTC": 2, "ETH": 5}
TXS = ["tx1", "tx2", "tx3", "tx4"]
WITHDRAWALS = ["w1", "w2", "w3"]
HOLDS = ["h1", "h2", "h3"]
DESTINATIONS = {code: f"d-{code.lower()}" for code in ALL}
EXPIRY = st.integers(0, 12 * 3600).map(lambda s: timedelta(seconds=s))
PAYEES = ["house:fees", "counterparty:lp-1"]


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


# --- command strategies (state-independent: many are rejected, which is tested too) ----------
def amounts(asset_code: str, whole: int) -> st.SearchStrategy[str]:
    """Amounts up to ``whole`` units of the asset, down to its smallest unit (ETH: 1 wei)."""
    scale = ASSETS[asset_code].scale
    return st.integers(1, whole * 10**scale).map(lambda u: format_units(u, asset_code))


@st.composite
def money(draw: st.DrawFn, assets: list[str], limits: dict[str, int]) -> dict[str, str]:
    code = draw(st.sampled_from(assets))
    return {"asset": code, "amount": draw(amounts(code, limits[code]))}


def where() -> dict[str, st.SearchStrategy[str]]:
    return {"client": st.sampled_from(CLIENTS), "sub_account": st.sampled_from(SUBS)}


def fixed(command_type: str, **fields: Any) -> st.SearchStrategy[dict[str, Any]]:
    """A command of this type with fields drawn from the given strategies."""
    return st.fixed_dictionaries({"type": st.just(command_type), **fields})


def with_money(
    base: st.SearchStrategy[dict[str, Any]], assets: list[str], limits: dict[str, int]
) -> st.SearchStrategy[dict[str, Any]]:
    return st.tuples(base, money(assets, limits)).map(lambda pair: {**pair[0], **pair[1]})


@st.composite
def destination_for(draw: st.DrawFn, code: str) -> str:
    """Mostly the destination whitelisted for this asset; sometimes another one."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(sorted(DESTINATIONS.values())))
    return DESTINATIONS[code]


@st.composite
def whitelistings(draw: st.DrawFn) -> dict[str, Any]:
    code = draw(st.sampled_from(ALL))
    return {
        "type": "whitelist_destination",
        "client": draw(st.sampled_from(CLIENTS)),
        "destination": draw(destination_for(code)),
        "asset": code,
        "address": "addr",
    }


@st.composite
def withdrawal_requests(draw: st.DrawFn) -> dict[str, Any]:
    requester = draw(st.sampled_from(PEOPLE))
    others = [p for p in PEOPLE if p != requester]
    approvers = draw(st.lists(st.sampled_from(others), min_size=1, max_size=3, unique=True))
    command = draw(with_money(fixed("request_withdrawal", **where()), ALL, SPEND))
    return command | {
        "withdrawal": draw(st.sampled_from(WITHDRAWALS)),
        "destination": draw(destination_for(command["asset"])),
        "requester": requester,
        "approvers": approvers,
        "approvals_required": draw(st.integers(1, len(approvers))),
        "expires_at": draw(EXPIRY),
    }


COMMANDS: st.SearchStrategy[dict[str, Any]] = st.one_of(
    fixed(
        "open_client",
        client=st.sampled_from(CLIENTS),
        name=st.just("a fund"),
        sub_accounts=st.lists(st.sampled_from(SUBS), min_size=1, max_size=2, unique=True),
    ),
    fixed("open_sub_account", **where()),
    with_money(fixed("deposit_fiat", **where(), bank_reference=st.sampled_from(TXS)), FIAT, FUND),
    with_money(
        fixed(
            "detect_crypto_deposit",
            **where(),
            chain=st.just("chain"),
            tx_hash=st.sampled_from(TXS),
            required_confirmations=st.integers(1, 3),
        ),
        CRYPTO,
        FUND,
    ),
    fixed("confirm_crypto_deposit", tx_hash=st.sampled_from(TXS), confirmations=st.integers(0, 4)),
    fixed("reorg_crypto_deposit", tx_hash=st.sampled_from(TXS)),
    whitelistings(),
    withdrawal_requests(),
    fixed(
        "approve_withdrawal",
        withdrawal=st.sampled_from(WITHDRAWALS),
        approver=st.sampled_from(PEOPLE),
    ),
    fixed(
        "execute_withdrawal",
        withdrawal=st.sampled_from(WITHDRAWALS),
        network_reference=st.just("ref"),
    ),
    fixed(
        "reject_withdrawal",
        withdrawal=st.sampled_from(WITHDRAWALS),
        by=st.sampled_from(PEOPLE),
        reason=st.just("no"),
    ),
    fixed("expire_withdrawal", withdrawal=st.sampled_from(WITHDRAWALS)),
    with_money(
        fixed(
            "transfer",
            client=st.sampled_from(CLIENTS),
            from_sub_account=st.sampled_from(SUBS),
            to_sub_account=st.sampled_from(SUBS),
        ),
        ALL,
        SPEND,
    ),
    with_money(
        fixed(
            "place_hold",
            **where(),
            hold=st.sampled_from(HOLDS),
            payee=st.sampled_from(PAYEES),
            expires_at=EXPIRY,
        ),
        ALL,
        SPEND,
    ),
    fixed(
        "post_hold",
        hold=st.sampled_from(HOLDS),
        amount=st.none() | amounts("USD", 500),
    ),
    fixed("void_hold", hold=st.sampled_from(HOLDS)),
    fixed("expire_hold", hold=st.sampled_from(HOLDS)),
    with_money(
        fixed(
            "charge_fee",
            **where(),
            fee_type=st.sampled_from(["trading", "custody", "withdrawal"]),
        ),
        ALL,
        SPEND,
    ),
    fixed(
        "set_mark",
        asset=st.sampled_from(CRYPTO),
        quote=st.just("USD"),
        price=amounts("USD", 100_000),
    ),
)


def materialize(command: dict[str, Any], key: str, now: datetime) -> dict[str, Any]:
    """A concrete command: its key, and expiries relative to the writer's clock."""
    body = {"key": key, **command}
    if isinstance(body.get("expires_at"), timedelta):
        body["expires_at"] = (now + body["expires_at"]).isoformat()
    return body


# --- invariants, as functions of a state ----------------------------------------------------
def asset_sums(state: LedgerState) -> dict[str, int]:
    sums: dict[str, int] = defaultdict(int)
    for (_, code), units in state.balances.items():
        sums[code] += units
    return dict(sums)


def check_zero_sum(state: LedgerState) -> None:
    unbalanced = {code: total for code, total in asset_sums(state).items() if total}
    assert not unbalanced, f"postings do not sum to zero: {unbalanced}"


def check_client_buckets(state: LedgerState) -> None:
    # Client accounts are liabilities: a posting sum above zero means the client owes money
    # the ledger never lent (no loans exist in these sequences).
    negative = {
        key: units
        for key, units in state.balances.items()
        if key[0].startswith("client:") and units > 0
    }
    assert not negative, f"client balances below zero: {negative}"


def check_account_names(state: LedgerState) -> None:
    for account, _ in state.balances:
        account_type(account)  # raises for a name outside the chart of accounts


def check_held_matches_commitments(state: LedgerState) -> None:
    """Held money is exactly what open holds and pending withdrawals reserve."""
    expected: dict[tuple[str, str], int] = defaultdict(int)
    for hold in state.holds.values():
        if hold["status"] == "open":
            expected[(f"client:{hold['client']}:{hold['sub_account']}:held", hold["asset"])] += int(
                hold["units"]
            )
    for withdrawal in state.withdrawals.values():
        if withdrawal["status"] == "pending":
            account = f"client:{withdrawal['client']}:{withdrawal['sub_account']}:held"
            expected[(account, withdrawal["asset"])] += int(withdrawal["units"])
    actual = {key: -units for key, units in state.balances.items() if key[0].endswith(":held")}
    assert actual == {k: v for k, v in expected.items() if v}


def replay(bodies: list[bytes]) -> LedgerState:
    """A fresh state from the sealed bodies, verifying the hash chain and positions."""
    state = LedgerState()
    for body in bodies:
        entry = open_sealed(body, prev=state.head_hash)
        assert entry.position == state.position + 1
        state.apply(entry)
    return state


def comparable(snapshot: bytes) -> Any:
    """A snapshot as data: equal states give equal values whatever their key order."""
    body = orjson.loads(snapshot)
    body["balances"] = sorted(body["balances"])
    return body


# --- the state machine ----------------------------------------------------------------------
class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock(T0)
        self.processor = Processor("prop", LedgerState(), clock=self.clock)
        self.bodies: list[bytes] = []
        self.history: list[tuple[dict[str, Any], CommandResult]] = []
        self.serial = 0

    @property
    def state(self) -> LedgerState:
        return self.processor.state

    def run(self, command: dict[str, Any]) -> CommandResult:
        self.serial += 1
        body = materialize(command, f"k{self.serial}", self.clock.now)
        before, head = self.state.to_snapshot(), self.state.position
        outcome = self.processor.process(body)
        result = outcome.result
        if result.accepted:
            positions = [position for position, _, _ in outcome.events]
            assert positions == list(range(head + 1, head + 1 + len(positions)))
            assert list(result.positions) == positions
            self.bodies.extend(raw for _, _, raw in outcome.events)
        else:
            assert result.code is not None
            assert outcome.events == []
            assert self.state.to_snapshot() == before, f"rejected {body} changed the state"
        self.history.append((body, result))
        event(f"{body['type']}: {result.code or 'accepted'}")  # --hypothesis-show-statistics
        return result

    @initialize()
    def open_a_funded_client(self) -> None:
        # Without a funded client most random commands would be refused for unknown clients.
        self.run({"type": "open_client", "client": "c1", "name": "Fund 1", "sub_accounts": SUBS})
        for code, amount in (("USD", "10000.00"), ("HKD", "5000.00")):
            self.run(
                {
                    "type": "deposit_fiat",
                    "client": "c1",
                    "sub_account": "s1",
                    "asset": code,
                    "amount": amount,
                    "bank_reference": f"init-{code}",
                }
            )
        self.run(
            {
                "type": "detect_crypto_deposit",
                "client": "c1",
                "sub_account": "s1",
                "asset": "ETH",
                "amount": "12.345678901234567891",
                "chain": "eth",
                "tx_hash": "init-eth",
                "required_confirmations": 1,
            }
        )
        self.run({"type": "confirm_crypto_deposit", "tx_hash": "init-eth", "confirmations": 1})
        for code in ("USD", "ETH"):
            self.run(
                {
                    "type": "whitelist_destination",
                    "client": "c1",
                    "destination": DESTINATIONS[code],
                    "asset": code,
                    "address": "addr",
                }
            )

    @rule(command=COMMANDS)
    def submit(self, command: dict[str, Any]) -> None:
        self.run(command)

    def draw_funded(self, data: st.DataObject) -> tuple[str, str, str, str] | None:
        """A funded client account and an amount it can pay: all of it, or part."""
        funded = sorted(
            (account, code)
            for (account, code), units in self.state.balances.items()
            if account.endswith(":available") and units < 0
        )
        if not funded:
            return None
        account, code = data.draw(st.sampled_from(funded))
        _, client, sub, _ = account.split(":")
        have = -self.state.balance(account, code)
        units = data.draw(st.just(have) | st.integers(1, have))
        return client, sub, code, format_units(units, code)

    @rule(data=st.data())
    def spend(self, data: st.DataObject) -> None:
        """Move or charge what is available, often all of it: balances reach zero exactly."""
        funded = self.draw_funded(data)
        if funded is None:
            return
        client, sub, code, amount = funded
        command: dict[str, Any] = {"client": client, "asset": code, "amount": amount}
        if data.draw(st.booleans()):
            to = data.draw(st.sampled_from(SUBS))
            command |= {"type": "transfer", "from_sub_account": sub, "to_sub_account": to}
        else:
            command |= {"type": "charge_fee", "sub_account": sub, "fee_type": "other"}
        self.run(command)

    # Lifecycles: a whole flow with random choices at each stage, so that later stages (second
    # approvals, execution, posting, crediting) happen often enough to matter.
    @rule(data=st.data())
    def withdrawal_lifecycle(self, data: st.DataObject) -> None:
        request = data.draw(withdrawal_requests())
        funded = self.draw_funded(data) if data.draw(st.integers(0, 4)) else None
        if funded is not None:
            client, sub, code, amount = funded
            destination = DESTINATIONS[code]
            request |= {"client": client, "sub_account": sub, "asset": code, "amount": amount}
            request |= {"destination": destination}
            whitelist = {"type": "whitelist_destination", "destination": destination}
            self.run(whitelist | {"client": client, "asset": code, "address": "addr"})
        self.run(request)
        withdrawal = request["withdrawal"]
        people = data.draw(st.permutations([request["requester"], *request["approvers"]]))
        for approver in people[: data.draw(st.integers(0, len(people)))]:
            self.run({"type": "approve_withdrawal", "withdrawal": withdrawal, "approver": approver})
        ending = data.draw(st.sampled_from(["execute", "reject", "expire", "leave"]))
        if ending == "execute":
            self.run(
                {"type": "execute_withdrawal", "withdrawal": withdrawal, "network_reference": "n"}
            )
        elif ending == "reject":
            self.run(
                {"type": "reject_withdrawal", "withdrawal": withdrawal, "by": "p1", "reason": "no"}
            )
        elif ending == "expire":
            self.clock.now += data.draw(EXPIRY)
            self.run({"type": "expire_withdrawal", "withdrawal": withdrawal})

    @rule(data=st.data())
    def hold_lifecycle(self, data: st.DataObject) -> None:
        funded = self.draw_funded(data)
        if funded is None:
            return
        client, sub, code, amount = funded
        hold = data.draw(st.sampled_from(HOLDS))
        payee = data.draw(st.sampled_from(PAYEES))
        self.run(
            {
                "type": "place_hold",
                "hold": hold,
                "client": client,
                "sub_account": sub,
                "asset": code,
                "amount": amount,
                "payee": payee,
                "expires_at": data.draw(EXPIRY),
            }
        )
        ending = data.draw(st.sampled_from(["post_all", "post_part", "void", "expire", "leave"]))
        if ending == "post_part":
            part = data.draw(amounts(code, SPEND[code]))
            self.run({"type": "post_hold", "hold": hold, "amount": part})
        elif ending == "post_all":
            self.run({"type": "post_hold", "hold": hold})
        elif ending == "expire":
            self.clock.now += data.draw(EXPIRY)
            self.run({"type": "expire_hold", "hold": hold})
        elif ending == "void":
            self.run({"type": "void_hold", "hold": hold})

    @rule(data=st.data())
    def crypto_lifecycle(self, data: st.DataObject) -> None:
        tx = data.draw(st.sampled_from(TXS))
        detect = data.draw(
            with_money(
                fixed(
                    "detect_crypto_deposit",
                    **where(),
                    chain=st.just("chain"),
                    required_confirmations=st.integers(1, 3),
                ),
                CRYPTO,
                FUND,
            )
        )
        self.run(detect | {"tx_hash": tx})
        for confirmations in data.draw(st.lists(st.integers(0, 4), max_size=3)):
            self.run(
                {"type": "confirm_crypto_deposit", "tx_hash": tx, "confirmations": confirmations}
            )
        if data.draw(st.booleans()):
            self.run({"type": "reorg_crypto_deposit", "tx_hash": tx})

    @rule(data=st.data())
    def reverse(self, data: st.DataObject) -> None:
        """Reverse an event: mostly one that carries postings, sometimes any position at all."""
        with_postings = [
            number
            for number, raw in enumerate(self.bodies, start=1)
            if orjson.loads(raw)["postings"]
        ]
        anywhere = st.integers(1, self.state.position + 1)
        position = data.draw(
            st.sampled_from(with_postings) | anywhere if with_postings else anywhere
        )
        self.run({"type": "reverse_event", "position": position, "reason": "correction"})

    @rule(seconds=st.integers(0, 8 * 3600))
    def advance_clock(self, seconds: int) -> None:
        self.clock.now += timedelta(seconds=seconds)

    @precondition(lambda self: bool(self.history))
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        """A retry with the same key and content replays the first answer and writes nothing."""
        body, first = data.draw(st.sampled_from(self.history))
        before = self.state.to_snapshot()
        outcome = self.processor.process(body)
        assert outcome.result.replayed
        assert outcome.result == first
        assert outcome.events == []
        assert self.state.to_snapshot() == before

    @invariant()
    def double_entry(self) -> None:
        check_zero_sum(self.state)

    @invariant()
    def no_client_bucket_below_zero(self) -> None:
        check_client_buckets(self.state)

    @invariant()
    def accounts_are_in_the_chart(self) -> None:
        check_account_names(self.state)

    @invariant()
    def held_is_what_is_reserved(self) -> None:
        check_held_matches_commitments(self.state)

    @invariant()
    def replay_equals_live(self) -> None:
        replayed = replay(self.bodies)
        assert replayed.position == self.state.position
        assert replayed.head_hash == self.state.head_hash
        assert comparable(replayed.to_snapshot()) == comparable(self.state.to_snapshot())


LedgerMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=40,
    deadline=None,
    derandomize=not RANDOM,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLedgerMachine = LedgerMachine.TestCase


def test_replayed_state_is_byte_identical_to_live() -> None:
    """Snapshots are compared as bytes (audit, restart): equal states must give equal bytes."""
    clock = Clock(T0)
    processor = Processor("bytes", LedgerState(), clock=clock)
    commands: list[dict[str, Any]] = [
        {"type": "open_client", "client": "c", "name": "C", "sub_accounts": ["a"]},
        {
            "type": "detect_crypto_deposit",
            "client": "c",
            "sub_account": "a",
            "asset": "BTC",
            "amount": "1",
            "chain": "btc",
            "tx_hash": "tx",
            "required_confirmations": 1,
        },
        {"type": "confirm_crypto_deposit", "tx_hash": "tx", "confirmations": 1},
    ]
    bodies = [
        raw
        for number, command in enumerate(commands)
        for _, _, raw in processor.process({"key": f"k{number}", **command}).events
    ]
    assert replay(bodies).to_snapshot() == processor.state.to_snapshot()


# --- one property against the real PostgreSQL ------------------------------------------------
@st.composite
def sessions(draw: st.DrawFn) -> list[list[dict[str, Any]] | timedelta]:
    """Batches of commands, with clock moves between them."""
    opening: list[dict[str, Any]] = [
        {"type": "open_client", "client": "c1", "name": "Fund 1", "sub_accounts": SUBS},
        *(
            {
                "type": "deposit_fiat",
                "client": "c1",
                "sub_account": sub,
                "asset": "USD",
                "amount": "10000.00",
                "bank_reference": f"init-{sub}",
            }
            for sub in SUBS
        ),
        {
            "type": "detect_crypto_deposit",
            "client": "c1",
            "sub_account": "s1",
            "asset": "ETH",
            "amount": "12.345678901234567891",
            "chain": "eth",
            "tx_hash": "init-eth",
            "required_confirmations": 1,
        },
        {"type": "confirm_crypto_deposit", "tx_hash": "init-eth", "confirmations": 1},
        *(
            {
                "type": "whitelist_destination",
                "client": "c1",
                "destination": DESTINATIONS[code],
                "asset": code,
                "address": "addr",
            }
            for code in ALL
        ),
    ]
    steps: list[list[dict[str, Any]] | timedelta] = [opening]
    for _ in range(draw(st.integers(1, 8))):
        if draw(st.booleans()):
            steps.append(timedelta(seconds=draw(st.integers(0, 8 * 3600))))
        reversal = fixed("reverse_event", position=st.integers(1, 40), reason=st.just("correction"))
        steps.append(draw(st.lists(COMMANDS | reversal, min_size=1, max_size=8)))
    return steps


def play(
    steps: list[list[dict[str, Any]] | timedelta],
    submit: Any,
    clock: Clock,
) -> Iterator[CommandResult]:
    serial = 0
    for step in steps:
        if isinstance(step, timedelta):
            clock.now += step
            continue
        batch = []
        for command in step:
            serial += 1
            batch.append(materialize(command, f"k{serial}", clock.now))
        yield from submit(batch)


@pytest.mark.timeout(240)
@settings(
    max_examples=12,
    deadline=None,
    derandomize=not RANDOM,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=sessions(), snapshot_every=st.sampled_from([2, 7, 50_000]))
def test_postgres_round_trip_equals_live(
    fresh_db_url: str,
    steps: list[list[dict[str, Any]] | timedelta],
    snapshot_every: int,
) -> None:
    """Through the real store: reopen and load_state give the live state; so does pure code."""
    name = f"prop-{uuid.uuid4().hex[:8]}"
    clock = Clock(T0)
    ledger = Ledger(fresh_db_url, name, clock=clock, snapshot_every=snapshot_every)
    try:
        results = list(play(steps, ledger.submit, clock))
        live = ledger.read(lambda s: s.to_snapshot())
        check_zero_sum(ledger.read(lambda s: s))
    finally:
        ledger.close()

    # The same sequence through the pure Processor gives the same answers and the same state.
    pure_clock = Clock(T0)
    processor = Processor(name, LedgerState(), clock=pure_clock)
    pure = list(play(steps, lambda batch: [processor.process(c).result for c in batch], pure_clock))
    assert results == pure
    assert processor.state.to_snapshot() == live

    reopened = Ledger(fresh_db_url, name, clock=clock, snapshot_every=snapshot_every)
    try:
        assert comparable(reopened.read(lambda s: s.to_snapshot())) == comparable(live)
    finally:
        reopened.close()
    store = LedgerStore(fresh_db_url, name)
    try:
        assert comparable(load_state(store).to_snapshot()) == comparable(live)
        assert replay(list(store.event_bodies())).head_hash == orjson.loads(live)["head_hash"]
    finally:
        store.close()
