"""The C fast path (``projections._native``) gives exactly what the Python paths give.

``decode`` hands a body to the C decoder first. It reads only bodies byte for byte in the
writer's canonical form and returns None for anything else, and the Python paths then decide.
So the rule tested here: whatever the body, the C decoder returns None or the very event the
generic path builds (same fields, same types, same data); it never refuses or accepts on its
own. Bodies are the writer's own (sealed by ``ledger.journal.seal``), then changed field by
field and byte by byte. ``sum_postings`` must equal the Python loop, insertion order included.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.journal import seal
from projections import base, decode
from projections.decode import DecodeError, _generic
from tests.pure_python import run_pure_python
from tests.test_decode_paths import CHANGES, changed, outcome

pytestmark = pytest.mark.skipif(
    decode.PURE_PYTHON, reason="PRIMELEDGER_PURE_PYTHON=1: the C path is switched off"
)

TIME = "2026-11-22T04:40:00.123456+00:00"
FUND = "client:fund-a:main:available"
ETH_UNITS = 1_234_567_890_123_456_789_012  # 1,234.567... ETH: more digits than 64 bits hold


def sealed(
    event_type: str,
    postings: tuple[tuple[str, str, int], ...],
    data: dict[str, Any] | None = None,
    position: int = 7,
) -> bytes:
    body, _ = seal(
        ledger="native",
        position=position,
        event_type=event_type,
        time=TIME,
        key=f"k{position}",
        data=data if data is not None else {"client": "fund-a", "note": "x"},
        postings=postings,
        prev="0" * 64,
    )
    return body


def writer_bodies() -> list[bytes]:
    return [
        sealed("transferred", ((FUND, "USD", 1280), ("client:fund-a:b:available", "USD", -1280))),
        sealed("mark_set", (), {"asset": "BTC", "quote": "USD", "price": "65000.00"}),
        sealed(
            "fee_charged",
            (
                (FUND, "USD", 300),
                ("house:fees", "USD", -200),
                ("house:insurance_fund", "USD", -100),
            ),
        ),
        sealed(
            "trade_booked",
            (
                (FUND, "USD", 6_500_000),
                ("house:otc_inventory", "USD", -6_500_000),
                ("house:otc_inventory", "ETH", ETH_UNITS),
                (FUND, "ETH", -ETH_UNITS),
            ),
            {"qty": [1, -2.5, 1e-3, True, False, None, {"deep": [[{}]], "e": 12e30}], "s": ""},
        ),
        sealed("crypto_deposit_credited", (("custody:hot:w1", "BTC", 5), (FUND, "BTC", -5))),
    ]


@pytest.fixture(autouse=True)
def known_names() -> None:
    """The generic path registers ledgers and accounts; the C path only looks them up."""
    for body in writer_bodies():
        _generic(body)


def native_outcome(body: bytes) -> tuple[str, Any] | None:
    found = decode._native_decode(body) if decode._native_decode else None
    return None if found is None else outcome(lambda _: found, body)


def test_the_c_path_is_built_and_in_use() -> None:
    from projections import _native

    assert decode._native_decode is _native.decode
    assert decode.native_sum_postings is _native.sum_postings


def test_the_writers_bodies_decode_on_the_c_path_as_on_the_generic_path() -> None:
    for body in writer_bodies():
        event = decode._native_decode(body) if decode._native_decode else None
        assert event is not None, body
        generic = _generic(body)
        assert event == generic
        assert [type(field) for field in event[:4]] == [type(field) for field in generic[:4]]
        assert [tuple(map(type, p)) for p in event.postings] == [
            tuple(map(type, p)) for p in generic.postings
        ]
        assert type(event.data) is not dict  # parsed on first use, like the typed path
        assert dict(event.data) == orjson.loads(body)["data"]


def test_a_name_not_seen_yet_goes_the_python_way() -> None:
    fresh_ledger = sealed("transferred", ((FUND, "USD", 5), ("house:fees", "USD", -5)))
    fresh_ledger = fresh_ledger.replace(b'"ledger":"native"', b'"ledger":"native-2"')
    assert decode._native_decode is not None
    assert decode._native_decode(fresh_ledger) is None  # ledger never checked by the slow path
    assert decode.decode(fresh_ledger).ledger == "native-2"  # ... which now registers it
    assert decode._native_decode(fresh_ledger) == _generic(fresh_ledger)

    account = "client:fund-z:main:available"
    fresh_account = sealed("transferred", ((account, "USD", 5), ("house:fees", "USD", -5)))
    assert decode._native_decode(fresh_account) is None
    assert decode.decode(fresh_account).postings[0][0] == account
    assert decode._native_decode(fresh_account) == _generic(fresh_account)


def canonical_changed(body: bytes, path: str, value: Any) -> bytes:
    """A field changed, keys kept in the writer's order (``hash`` last)."""
    text = json.loads(body)
    digest = text.pop("hash")
    unhashed = changed(text, path, value)
    if "hash" in text:  # the change was to "hash" itself
        return unhashed
    return unhashed[:-1] + b',"hash":"' + digest.encode() + b'"}'


@pytest.mark.parametrize(("path", "value"), CHANGES)
def test_a_changed_field_gives_none_or_the_generic_event(path: str, value: Any) -> None:
    for body in writer_bodies():
        document = json.loads(body)
        if path.startswith("postings.") and len(document["postings"]) < 2:
            continue
        raw = canonical_changed(body, path, value)
        found = native_outcome(raw)
        assert found is None or found == outcome(_generic, raw), raw


@pytest.mark.parametrize(
    "replace",
    [
        (b'"units":"1280"', b'"units":"1281"'),  # unbalanced
        (b'"USD","units":"-1280"', b'"BTC","units":"-1280"'),  # assets differ
        (b'"v":1,', b'"v":1 ,'),  # whitespace
        (b'"key":"k7"', b'"key":"k\\u0037"'),  # an escape
        (b'"ledger":"native"', b'"ledger":"n\xc3\xa4tive"'),  # not ASCII
        (b'"position":7', b'"position":07'),
        (b'"position":7', b'"position":1000000000000000000'),  # 19 digits: Python decides
        (b'"note":"x"', b'"note":01'),  # not JSON
        (b'"note":"x"', b'"note":[1,]'),
        (b'"note":"x"', b'"note":tru'),
        (b'"note":"x"', b'"note":"x\tx"'),  # a raw control character
        (b'"data":{', b'"data":{"a":1,'),  # a duplicate key is valid JSON: same event
        (b'"hash":"', b'"hash":"x","hash":"'),  # duplicate top-level key: Python decides
    ],
)
def test_edited_bytes_give_none_or_the_generic_event(replace: tuple[bytes, bytes]) -> None:
    body = writer_bodies()[0]
    assert replace[0] in body
    raw = body.replace(*replace, 1)
    found = native_outcome(raw)
    assert found is None or found == outcome(_generic, raw), raw
    assert outcome(decode.decode, raw) == outcome(_generic, raw)


def test_nesting_deeper_than_the_c_limit_goes_the_python_way() -> None:
    deep = sealed("transferred", ((FUND, "USD", 5), ("house:fees", "USD", -5)), {"d": 1})
    raw = deep.replace(b'"d":1', b'"d":' + b"[" * 100 + b"]" * 100)
    assert native_outcome(raw) is None
    assert outcome(decode.decode, raw) == outcome(_generic, raw)


@settings(max_examples=600, deadline=None)
@given(
    index=st.integers(min_value=0, max_value=4),
    cut=st.integers(min_value=0, max_value=700),
    replacement=st.binary(max_size=4),
)
def test_bodies_damaged_byte_by_byte_give_none_or_the_generic_event(
    index: int, cut: int, replacement: bytes
) -> None:
    raw = writer_bodies()[index]
    cut = min(cut, len(raw))
    damaged = raw[:cut] + replacement + raw[cut + len(replacement) :]
    found = native_outcome(damaged)
    if found is None:
        return
    generic = outcome(_generic, damaged)
    if found[0] == "data refused":  # the typed path's documented difference (test_decode_paths)
        assert generic[0] == "refused"
        assert found[1].startswith("data: not readable JSON")
    else:
        assert found == generic, damaged


def test_data_that_is_no_readable_json_is_refused_when_read() -> None:
    raw = sealed("transferred", ((FUND, "USD", 5), ("house:fees", "USD", -5)), {"n": 1})
    raw = raw.replace(b'"n":1', b'"n":1e400')
    event = decode._native_decode(raw) if decode._native_decode else None
    assert event is not None
    with pytest.raises(DecodeError, match="data: not readable JSON"):
        event.data.get("n")


postings = st.lists(
    st.tuples(
        st.sampled_from([FUND, "house:fees", "custody:hot:w1"]),
        st.sampled_from(["USD", "BTC", "ETH"]),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.none(),
    ),
    max_size=5,
).map(tuple)
events = st.lists(
    st.tuples(st.sampled_from(["a", "b"]), st.integers(1, 9), st.just("t"), st.just(TIME),
              st.just({}), postings),
    max_size=30,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(batch=events)
def test_sum_postings_in_c_equals_the_python_loop(batch: list[tuple[Any, ...]]) -> None:
    assert decode.native_sum_postings is not None
    expected = base.sum_postings(batch)  # type: ignore[arg-type]
    assert list(decode.native_sum_postings(batch).items()) == list(expected.items())  # type: ignore[arg-type]


@pytest.mark.parametrize("batch", [[("a", 1)], [("a", 1, "t", TIME, {}, [("x", "USD", 1)])], [5]])
def test_sum_postings_refuses_what_is_not_decoded_events(batch: list[Any]) -> None:
    assert decode.native_sum_postings is not None
    with pytest.raises(TypeError, match="sum_postings: expected decoded"):
        decode.native_sum_postings(batch)


def test_pure_python_mode_switches_the_c_path_off_and_decodes_alike() -> None:
    script = (
        "import sys; from projections import decode as d; "
        "assert d._native_decode is None and d.native_sum_postings is None; "
        "body = sys.stdin.buffer.read(); e = d.decode(body); "
        "print(e.ledger, e.position, e.type, sorted(d.dict(e.data)), e.postings[0][:3])"
    )
    body = writer_bodies()[0]
    output = run_pure_python(script.replace("d.dict", "dict"), stdin=body)
    event = _generic(body)
    expected = (
        f"{event.ledger} {event.position} {event.type} {sorted(event.data)} "
        f"{event.postings[0][:3]}\n"
    )
    assert output == expected


def test_sum_postings_keeps_its_events_alive_while_python_code_runs() -> None:
    """An addition can run Python code; the C loop must not read a list that code emptied."""
    batch: list[tuple[Any, ...]] = []

    class Clearing(int):
        def __radd__(self, other: int) -> int:
            batch.clear()  # drops the caller's only reference to every event
            return int(self) + other

    batch.append(("L", 1, "t", TIME, {}, (("a" * 200, "USD", Clearing(5), None),)))
    batch.append(("L", 2, "t", TIME, {}, (("b" * 200, "USD", 7, None),)))
    assert decode.native_sum_postings is not None
    sums = decode.native_sum_postings(batch)
    assert sums == {("L", "a" * 200, "USD"): 5, ("L", "b" * 200, "USD"): 7}


@settings(max_examples=500, deadline=None)
@given(
    # Small values often, so that every field is in range in a good share of the examples.
    fields=st.lists(st.integers(0, 99) | st.integers(1, 12), min_size=8, max_size=8),
    century=st.sampled_from([0, 19, 20, 21, 99]),
    sign=st.sampled_from("+-"),
    micros=st.one_of(st.none(), st.integers(min_value=0, max_value=999_999)),
)
def test_times_in_the_writers_shape_are_judged_like_python_judges_them(
    fields: list[int], century: int, sign: str, micros: int | None
) -> None:
    """Every date and clock field in and out of range: the C check agrees with Python's."""
    year, month, day, hour, minute, second, off_hour, off_minute = fields
    fraction = "" if micros is None else f".{micros:06d}"
    time = (
        f"{century:02d}{year:02d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
        f"{fraction}{sign}{off_hour:02d}:{off_minute:02d}"
    )
    raw = canonical_changed(writer_bodies()[0], "time", time)
    generic = outcome(_generic, raw)
    assert native_outcome(raw) == (generic if generic[0] == "event" else None), time


@pytest.mark.parametrize(
    "time",
    [
        "2024-02-29T00:00:00+00:00",
        "2000-02-29T12:30:45.000001+05:30",
        "0001-01-01T00:00:00-23:59",
        "9999-12-31T23:59:59.999999+23:59",
    ],
)
def test_edge_times_in_range_take_the_c_path(time: str) -> None:
    raw = canonical_changed(writer_bodies()[0], "time", time)
    found = native_outcome(raw)
    assert found is not None
    assert found == outcome(_generic, raw)
