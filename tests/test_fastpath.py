"""The writer's C fast path (``ledger._fastpath``) gives exactly what the Python path gives.

``Processor.process`` hands a transfer to the C path first. It decides, seals and applies only
an accepted transfer in plain form and returns None before changing anything otherwise; the
Python path then decides. So the rule tested here: two processors from the same state and the
same clock, one with the fast path and one without, given the same commands (good, bad,
repeated, odd), return the same outcomes (results, sealed bodies byte for byte, idempotency
records) and end in the same state (balances, position, head, recent bodies, known keys).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import processing
from ledger.journal import open_sealed
from ledger.native import PURE_PYTHON
from ledger.processing import KNOWN_KEYS, RECENT_ENTRIES, Outcome, Processor
from ledger.state import LedgerState
from tests.pure_python import run_pure_python

pytestmark = pytest.mark.skipif(
    processing._fast_transfer is None and PURE_PYTHON,
    reason="PRIMELEDGER_PURE_PYTHON=1: the C path is switched off",
)

START = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)
SET_UP: list[dict[str, Any]] = [
    {"type": "open_client", "key": "o1", "client": "fund-a", "name": "A",
     "sub_accounts": ["main", "b", "c"]},
    {"type": "open_client", "key": "o2", "client": "fund.b_2", "name": "B",
     "sub_accounts": ["main", "x"]},
    {"type": "deposit_fiat", "key": "d1", "client": "fund-a", "sub_account": "main",
     "asset": "USD", "amount": "1000.50", "bank_reference": "r1"},
    {"type": "deposit_fiat", "key": "d2", "client": "fund.b_2", "sub_account": "main",
     "asset": "HKD", "amount": "88.00", "bank_reference": "r2"},
]  # fmt: skip


def ticking(step: timedelta) -> Callable[[], datetime]:
    """A clock that moves by ``step`` per reading, the same for every processor made."""
    times: Iterator[datetime] = (START + step * i for i in range(10**9))
    return lambda: next(times)


def pair(
    step: timedelta = timedelta(microseconds=7), ledger: str = "fast-ledger"
) -> tuple[Processor, Processor]:
    """Two processors, set up alike, with the same clock: one with the C path, one without."""
    fast = Processor(ledger, LedgerState(), clock=ticking(step))
    pure = Processor(ledger, LedgerState(), clock=ticking(step))
    pure.fast_transfer = None
    for processor in (fast, pure):
        processor.knows_all = True
        for command in SET_UP:
            assert processor.process(command).result.accepted
    return fast, pure


def crypto_funding(fast: Processor, pure: Processor) -> None:
    """ETH and BTC in the state, as a credited crypto deposit leaves them (via the Python path)."""
    for processor in (fast, pure):
        for index, (asset, amount) in enumerate([("ETH", "1234.567890123456789"), ("BTC", "2")]):
            detected = processor.process(
                {"type": "detect_crypto_deposit", "key": f"cd{index}", "client": "fund-a",
                 "sub_account": "main", "asset": asset, "amount": amount, "chain": "main",
                 "tx_hash": f"0x{index}", "required_confirmations": 1}
            )  # fmt: skip
            assert detected.result.accepted, detected.result
            confirmed = processor.process(
                {"type": "confirm_crypto_deposit", "key": f"cc{index}", "tx_hash": f"0x{index}",
                 "confirmations": 1}
            )  # fmt: skip
            assert confirmed.result.accepted, confirmed.result


def summary(outcome: Outcome) -> tuple[Any, ...]:
    record = outcome.record
    return (
        outcome.result.as_dict(),
        outcome.result.replayed,
        outcome.events,
        None if record is None else (record.key, record.command_hash, record.result),
    )


def same_state(fast: Processor, pure: Processor) -> None:
    assert fast.state.to_snapshot() == pure.state.to_snapshot()
    assert fast.recent == pure.recent
    assert list(fast.known.items()) == list(pure.known.items())
    assert fast.knows_all == pure.knows_all
    assert fast._last_time == pure._last_time


def run_both(fast: Processor, pure: Processor, commands: list[Any]) -> int:
    """Each command through both; returns how many the C path took."""
    taken = 0
    c_path = fast.fast_transfer
    assert c_path is not None
    for command in commands:
        took = c_path(fast, command) if type(command) is dict else None
        outcome = took if took is not None else fast.process(command)
        taken += took is not None
        assert summary(outcome) == summary(pure.process(command)), command
    same_state(fast, pure)
    return taken


def transfer(amount: str = "12.50", **changes: Any) -> dict[str, Any]:
    command = {"type": "transfer", "key": changes.pop("key", f"t-{amount}"),
               "client": "fund-a", "from_sub_account": "main", "to_sub_account": "b",
               "asset": "USD", "amount": amount}  # fmt: skip
    command.update(changes)
    return {k: v for k, v in command.items() if v is not None}


def test_the_c_path_is_built_and_in_use() -> None:
    from ledger import _fastpath

    assert processing._fast_transfer is _fastpath.transfer
    assert Processor("x", LedgerState()).fast_transfer is _fastpath.transfer


def test_an_accepted_transfer_takes_the_c_path_and_matches_byte_for_byte() -> None:
    fast, pure = pair()
    crypto_funding(fast, pure)
    commands = [
        transfer("12.50"),
        transfer("0.01", key="t2", from_sub_account="b", to_sub_account="c"),
        transfer("988", key="t3"),  # the rest of main: the balance key goes away at zero
        transfer("0000988.0", key="t4", from_sub_account="b", to_sub_account="main"),
        transfer("1234.567890123456789", key="t5", asset="ETH"),  # 22 digits of units
        transfer("0.00000001", key="t6", asset="BTC"),
        transfer("88", key="t7", client="fund.b_2", to_sub_account="x", asset="HKD"),
    ]
    assert run_both(fast, pure, commands) == len(commands)
    for _, _, body in fast.process(transfer("1", key="t8")).events:
        open_sealed(body)  # the hash and the balance check of the reading side


REFUSED_OR_ODD: list[dict[str, Any]] = [
    transfer("12.505", key="r1"),  # too many decimals
    transfer("0", key="r2"),
    transfer("0.00", key="r3"),
    transfer("-5", key="r4"),
    transfer("1e3", key="r5"),
    transfer(" 5", key="r6"),
    transfer("5.", key="r7"),
    transfer(".5", key="r8"),
    transfer("١٢", key="r9"),
    transfer("1" * 41, key="r10"),  # more whole digits than parse_units reads
    transfer("0" * 41 + "1", key="r11"),  # leading zeros count too
    transfer("1" * 35, key="r12"),  # beyond MAX_UNITS
    transfer("99999", key="r13"),  # insufficient funds
    transfer(key="r14", asset="XYZ"),
    transfer(key="r15", asset="usd"),
    transfer(key="r16", client="nobody"),
    transfer(key="r17", from_sub_account="nowhere"),
    transfer(key="r18", to_sub_account="nowhere"),
    transfer(key="r19", to_sub_account="main"),  # same sub-account
    transfer(key="r20", client="-bad"),
    transfer(key="r21", note="extra field"),
    transfer(key="r22", amount=None),  # missing field
    transfer(key="r23", amount=12.5),
    transfer(key=""),
    transfer(key="k" * 201),
    transfer(key='with "quotes"'),
    transfer(key="back\\slash"),
    transfer(key="naïve"),
    transfer(key="tab\there"),
    transfer(key="k" * 200),  # the longest key: still the C path
    transfer(key="r24", type="transfer_x"),
    transfer("3", key="t-12.50"),  # a key used before, other content: a conflict
    transfer("12.50"),  # the same command again: answered from the record
]


def test_refused_odd_and_repeated_commands_give_the_python_outcome() -> None:
    fast, pure = pair()
    assert run_both(fast, pure, [transfer("12.50")]) == 1
    taken = run_both(fast, pure, REFUSED_OR_ODD)
    assert taken == 1  # only the 200-character key was an accepted transfer in plain form


def test_a_ledger_name_that_needs_escaping_goes_the_python_way() -> None:
    fast, pure = pair(ledger='quote"d')
    assert run_both(fast, pure, [transfer("1")]) == 0


def test_a_full_idempotency_cache_goes_the_python_way_and_evicts_alike() -> None:
    fast, pure = pair()
    filler = [(f"old-{i}", ("0" * 64, b"{}")) for i in range(KNOWN_KEYS - len(fast.known))]
    for processor in (fast, pure):
        processor.known.update(filler)
        assert len(processor.known) == KNOWN_KEYS
    assert run_both(fast, pure, [transfer("1")]) == 0
    assert not fast.knows_all
    assert len(fast.known) == KNOWN_KEYS


def test_recent_bodies_roll_over_alike() -> None:
    fast, pure = pair()
    for processor in (fast, pure):
        processor.recent = {processor.state.position + 1 - RECENT_ENTRIES: b"oldest"}
    assert run_both(fast, pure, [transfer("1")]) == 1
    assert b"oldest" not in fast.recent.values()


def test_the_c_path_reads_the_wall_clock_and_never_goes_back() -> None:
    processor = Processor("clock", LedgerState())
    processor.knows_all = True
    for command in SET_UP:
        processor.process(command)
    before = datetime.now(UTC)
    first = processor.process(transfer("1", key="w1"))
    after = datetime.now(UTC)
    time = open_sealed(first.events[0][2]).time
    assert before - timedelta(milliseconds=1) <= datetime.fromisoformat(time) <= after
    assert datetime.fromisoformat(time).isoformat() == time  # isoformat()'s own text
    future = after + timedelta(hours=1)
    processor._last_time = future
    second = processor.process(transfer("1", key="w2"))
    assert open_sealed(second.events[0][2]).time == future.isoformat()
    assert processor._last_time == future
    whole = future.replace(microsecond=0) + timedelta(seconds=1)
    processor._last_time = whole  # isoformat() leaves out zero microseconds
    third = processor.process(transfer("1", key="w3"))
    assert open_sealed(third.events[0][2]).time == whole.isoformat()


# Mostly names that exist, so that a good share of the transfers is accepted (the C path).
ids = st.sampled_from(["main", "b", "c", "main", "b", "c", "x", "nobody", "-no", ""])
commands = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["transfer", "transfer", "transfer", "place_hold"]),
        "key": st.sampled_from([f"k{i}" for i in range(12)] + ['k"5', "ключ"]),
        "client": st.sampled_from(["fund-a", "fund-a", "fund-a", "fund.b_2", "nobody"]),
        "from_sub_account": ids,
        "to_sub_account": ids,
        "asset": st.sampled_from(["USD", "USD", "HKD", "ETH", "BTC", "XYZ", "usd"]),
        "amount": st.one_of(
            st.decimals(min_value=0, max_value=2000, places=3).map(str),
            st.sampled_from(["0.1", "1", "999.99", "1e2", "-1", "00.10", "0.0000000000000000001"]),
        ),
    },
    optional={"note": st.just("x")},
)


@settings(max_examples=150, deadline=None)
@given(batch=st.lists(commands, max_size=25), step=st.integers(min_value=0, max_value=1_000_001))
def test_random_commands_give_the_same_outcomes_and_state(
    batch: list[dict[str, Any]], step: int
) -> None:
    fast, pure = pair(timedelta(microseconds=step))
    crypto_funding(fast, pure)
    run_both(fast, pure, [dict(command) for command in batch])


def test_pure_python_mode_switches_the_c_path_off() -> None:
    script = (
        "from ledger import processing; from ledger.processing import Processor; "
        "from ledger.state import LedgerState; "
        "assert processing._fast_transfer is None; "
        "assert Processor('x', LedgerState()).fast_transfer is None; print('pure')"
    )
    assert run_pure_python(script) == "pure\n"


def test_an_ordered_dict_of_known_keys_keeps_its_order() -> None:
    fast, pure = pair()
    assert isinstance(fast.known, OrderedDict)
    run_both(fast, pure, [transfer("1", key="z1"), transfer("2", key="a1")])
    assert list(fast.known)[-2:] == ["z1", "a1"]


def test_a_key_object_that_changes_the_command_while_compared_cannot_crash_it() -> None:
    """Found in review: field values were borrowed while a key's ``__eq__`` could free them."""
    fast, pure = pair()
    raw = transfer("1", key="uaf")
    amount = raw.pop("amount")

    class Meddling:
        armed = False

        def __hash__(self) -> int:
            return hash("amount")

        def __eq__(self, other: object) -> bool:
            if other == "amount" and Meddling.armed:
                Meddling.armed = False
                raw["client"] = "fund-" + "a"  # frees the value looked up before
                raw["key"] = "x" * 10
            return other == "amount"

    raw["client"] = "".join(["fund", "-a"])  # fresh objects, owned only by the dict
    raw["key"] = "".join(["ua", "f"])
    raw[Meddling()] = amount  # type: ignore[index]
    Meddling.armed = True
    assert fast.fast_transfer is not None
    assert fast.fast_transfer(fast, raw) is None
    outcome = fast.process(raw)
    assert outcome.result.code == "invalid_command"
    assert "Keys should be strings" in (outcome.result.message or "")
    assert pure.process(raw).result.code == "invalid_command"


def test_edges_of_the_state_go_the_python_way_and_decide_alike() -> None:
    """Found in review: a long ledger name, a last reading not in UTC, a huge position."""
    fast, pure = pair(ledger="L" * 201)
    assert run_both(fast, pure, [transfer("1")]) == 0

    clock_user = Processor("clock", LedgerState())  # the system clock, read by the C path
    clock_user.knows_all = True
    for command in SET_UP:
        clock_user.process(command)
    assert clock_user.fast_transfer is not None
    clock_user._last_time = datetime.now(UTC).astimezone(timezone(timedelta(hours=5)))
    assert clock_user.fast_transfer(clock_user, transfer("1", key="tz")) is None
    assert clock_user.process(transfer("1", key="tz")).result.accepted

    fast, pure = pair()
    for processor in (fast, pure):
        processor.state.position = 2**63
    assert run_both(fast, pure, [transfer("1", key="big")]) == 0


def process_all_both(
    fast: Processor, pure: Processor, commands: list[Any]
) -> tuple[list[Any], list[Any], list[Any]]:
    """``process_all`` on both: C's loop on ``fast``, the Python loop on ``pure``; compared."""
    seen = []
    for processor in (fast, pure):
        results: list[Any] = []
        events: list[tuple[int, str, bytes]] = []
        records: list[Any] = []
        processor.process_all(commands, results, events, records)
        seen.append(
            (
                [(r.as_dict(), r.replayed) for r in results],
                events,
                [(r.key, r.command_hash, r.result) for r in records],
            )
        )
    assert seen[0] == seen[1]
    same_state(fast, pure)
    return seen[0]


@settings(max_examples=100, deadline=None)
@given(batch=st.lists(commands, max_size=80), step=st.integers(min_value=0, max_value=1_000_001))
def test_process_all_in_c_appends_what_the_python_loop_appends(
    batch: list[dict[str, Any]], step: int
) -> None:
    fast, pure = pair(timedelta(microseconds=step))
    crypto_funding(fast, pure)
    # More than 32 commands, so the loop also offers the GIL midway (every 32).
    process_all_both(fast, pure, [dict(command) for command in batch])


def test_process_all_takes_models_replays_and_rejections_in_order() -> None:
    from ledger.commands import parse_command

    fast, pure = pair()
    assert fast.fast_transfer is processing._fast_transfer
    commands: list[Any] = [
        transfer("1", key="a"),
        parse_command(transfer("2", key="m")),  # a pydantic model: the Python path
        transfer("1", key="a"),  # a retry: replayed, no new record
        transfer("3", key="a"),  # the same key, another command: a conflict
        transfer("99999", key="poor"),  # insufficient funds: a rejection, recorded
        {"type": "transfer"},  # no key: refused by the schema, nothing recorded
        transfer("4", key="b"),
    ]
    results, events, records = process_all_both(fast, pure, commands)
    assert [(r["key"], r["status"]) for r, _ in results] == [
        ("a", "accepted"),
        ("m", "accepted"),
        ("a", "accepted"),
        ("a", "rejected"),
        ("poor", "rejected"),
        ("", "rejected"),
        ("b", "accepted"),
    ]
    assert [replayed for _, replayed in results] == [False, False, True, False, False, False, False]
    assert [key for key, _, _ in records] == ["a", "m", "poor", "b"]  # no record: retry, conflict
    assert [position for position, _, _ in events] == [5, 6, 7]


def test_process_all_refuses_wrong_arguments() -> None:
    from ledger import _fastpath

    fast, _ = pair()
    with pytest.raises(TypeError):
        _fastpath.process_all(fast, [transfer("1")], (), [], [])
    with pytest.raises(TypeError):
        _fastpath.process_all(fast, 5, [], [], [])


def test_process_all_calls_a_replaced_process_and_takes_any_container() -> None:
    fast, pure = pair()
    calls: list[Any] = []
    real = fast.process

    def counting(raw: Any) -> Outcome:
        calls.append(raw)
        return real(raw)

    fast.process = counting  # type: ignore[method-assign]
    results: list[Any] = []
    fast.process_all([transfer("1", key="p1"), transfer("2", key="p2")], results, [], [])
    assert len(calls) == 2  # as bench.write_bound relies on
    assert [r.accepted for r in results] == [True, True]

    class Results(list[Any]):
        pass

    generated = (transfer(str(i), key=f"g{i}") for i in range(1, 4))
    out, events, records = Results(), Results(), Results()
    pure.process_all(generated, out, events, records)
    assert [r.accepted for r in out] == [True, True, True]
    assert len(events) == len(records) == 3


def test_sha256_goes_straight_to_the_libcrypto_hashlib_loaded() -> None:
    from ledger import _fastpath

    with open("/proc/self/maps") as maps:
        shared = "libcrypto" in maps.read()
    # Where hashlib uses a shared libcrypto, the C path calls it directly (2 x ~0.7 us a
    # transfer saved); with a static one it falls back to hashlib, the same digests.
    assert _fastpath.sha256_direct() is shared


SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>
int clock_gettime(clockid_t clock, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *);
    if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    const char *fake = getenv("FAKE_US");
    if (clock != CLOCK_REALTIME || !fake) return real(clock, ts);
    long long us = atoll(fake), s = us / 1000000, r = us % 1000000;
    if (r < 0) { r += 1000000; s -= 1; }
    ts->tv_sec = s; ts->tv_nsec = r * 1000; return 0;
}
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD clock shim")
@pytest.mark.parametrize(
    ("fake_us", "expected"),
    [
        (-500_000, "1969-12-31T23:59:59.500000+00:00"),
        (-43_200_000_000, "1969-12-31T12:00:00+00:00"),
        (1_795_000_000_123_456, "2026-11-18T11:06:40.123456+00:00"),
    ],
)
def test_the_wall_clock_is_read_alike_before_1970_too(
    tmp_path: Any, fake_us: int, expected: str
) -> None:
    shim = tmp_path / "clock.so"
    source = tmp_path / "clock.c"
    source.write_text(SHIM)
    built = subprocess.run(
        ["gcc", "-shared", "-fPIC", "-o", str(shim), str(source), "-ldl"], capture_output=True
    )
    if built.returncode != 0:
        pytest.skip(f"no C compiler to build the clock shim: {built.stderr.decode()[:200]}")
    script = (
        "from ledger.processing import Processor; from ledger.state import LedgerState; "
        "from ledger.journal import open_sealed; "
        "p = Processor('x', LedgerState()); p.knows_all = True; "
        "p.process({'type': 'open_client', 'key': 'o', 'client': 'c', 'name': 'C', "
        "'sub_accounts': ['a', 'b']}); "
        "p.process({'type': 'deposit_fiat', 'key': 'd', 'client': 'c', 'sub_account': 'a', "
        "'asset': 'USD', 'amount': '5', 'bank_reference': 'r'}); "
        "t = {'type': 'transfer', 'key': 't', 'client': 'c', 'from_sub_account': 'a', "
        "'to_sub_account': 'b', 'asset': 'USD', 'amount': '1'}; "
        "out = p.fast_transfer(p, t); assert out is not None; "
        "print(open_sealed(out.events[0][2]).time)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        env={**os.environ, "LD_PRELOAD": str(shim), "FAKE_US": str(fake_us)},
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == expected
