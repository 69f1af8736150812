"""The typed decode path (msgspec) gives exactly what the generic path (orjson) gives.

``decode`` tries a typed parse first and falls back to the generic parse and its precise
diagnosis. Whatever a body is, both must agree: the same event (same fields, same data), or
the same refusal with the same reason. Bodies here are the writer's own, then mutated field by
field and byte by byte.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projections.decode import DecodeError, Event, _generic, decode


def writer_body(position: int = 7) -> dict[str, Any]:
    return {
        "v": 1, "ledger": "paths", "position": position, "type": "transferred", "key": "k7",
        "time": "2026-11-22T04:40:00.123456+00:00", "prev": "0" * 64, "hash": "1" * 64,
        "data": {"client": "fund-a", "from_sub_account": "a", "to_sub_account": "b",
                 "asset": "USD", "units": "1280", "amount": "12.80"},
        "postings": [
            {"account": "client:fund-a:a:available", "asset": "USD", "units": "1280",
             "amount": "12.80"},
            {"account": "client:fund-a:b:available", "asset": "USD", "units": "-1280",
             "amount": "-12.80"},
        ],
    }  # fmt: skip


def three_legs() -> dict[str, Any]:
    body = writer_body()
    body["type"] = "fee_charged"
    body["postings"] = [
        {"account": "client:fund-a:a:available", "asset": "USD", "units": "300"},
        {"account": "house:fees", "asset": "USD", "units": "-200"},
        {"account": "house:insurance_fund", "asset": "USD", "units": "-100"},
    ]
    return body


def outcome(path: Any, body: bytes) -> tuple[str, Any]:
    try:
        event: Event = path(body)
    except DecodeError as exc:
        return ("refused", exc.reason)
    try:
        data = dict(event.data)
    except DecodeError as exc:  # data parsed on first use (the typed path) that cannot be
        return ("data refused", exc.reason)
    return ("event", (*event[:4], data, event.postings))


def same(body: bytes) -> None:
    assert outcome(decode, body) == outcome(_generic, body)


# Field-level changes: each replaces one value of the writer's body (None: the key removed).
CHANGES: list[tuple[str, Any]] = [
    ("v", 2), ("v", True), ("v", "1"), ("v", 1.0),
    ("type", "teleported"), ("type", 5),
    ("ledger", ""), ("ledger", "a\\b"), ("ledger", "a\tb"), ("ledger", 3), ("ledger", "é-ledger"),
    ("position", 0), ("position", -1), ("position", 1.0), ("position", "7"), ("position", True),
    ("position", 2**63), ("position", 2**64 - 1), ("position", 2**64), ("position", 10**30),
    ("time", "2026-11-22 04:40:00"), ("time", "2026-11-22T04:40:00"), ("time", 5),
    ("time", "2026-11-22T04:40:00Z"), ("time", "xxxxxxxxxxTxxxxxxxxxxxxxxxxxxxx+00:00"),
    ("time", "aaaaa-aaaaT"), ("time", "2026-02-29T04:40:00.123456+00:00"),
    ("time", "2024-02-29T04:40:00.123456+00:00"), ("time", "2026-11-22T24:00:00+00:00"),
    ("time", "2026-11-22T04:40:00.123456+24:00"), ("time", "2026-11-22T04:40:00+00:60"),
    ("time", "2026-13-22T04:40:00+00:00"), ("time", "0000-11-22T04:40:00+00:00"),
    ("time", "2026-W47-7T04:40:00+00:00"), ("time", "2026-11-22X04:40:00+00:00"),
    ("time", "2026-11-22T04:40:00.123+00:00"), ("time", "2026-11-22T04:40:00.1234567+00:00"),
    ("time", "２026-11-22T04:40:00+00:00"), ("time", "2026-11-22T04:40:00-05:30"),
    ("data", []), ("data", "x"), ("data", None), ("data", {"note": "naïve"}),
    ("data", {"big": 10**30}), ("data", {"nested": {"a": [1, 2, {"b": None}]}}),
    ("key", 5), ("key", None), ("prev", 7), ("hash", None), ("extra", 1),
    ("postings", []), ("postings", {}), ("postings", None),
    ("postings.0.units", "01280"), ("postings.0.units", "+1280"), ("postings.0.units", "1_280"),
    ("postings.0.units", " 1280"), ("postings.0.units", 1280), ("postings.0.units", "1281"),
    ("postings.0.units", "0"), ("postings.0.units", "١٢٨٠"), ("postings.0.units", "abc"),
    ("postings.0.asset", "XYZ"), ("postings.0.asset", "BTC"), ("postings.0.asset", None),
    ("postings.0.account", "client:fund-a:a:nonsense"), ("postings.0.account", "nobody"),
    ("postings.0.account", 5), ("postings.0.amount", 12.8), ("postings.0.amount", None),
    ("postings.0.extra", "x"), ("postings.0", "x"),
]  # fmt: skip


def changed(body: dict[str, Any], path: str, value: Any) -> bytes:
    target: Any = body
    *parents, last = path.split(".")
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    target[int(last) if last.isdigit() else last] = value
    # The standard library's encoder writes integers of any size (orjson stops at 64 bits).
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_the_writers_bodies_take_the_typed_path_and_decode_alike() -> None:
    for body in (writer_body(), three_legs()):
        raw = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        same(raw)
        event = decode(raw)
        assert type(event.data) is not dict  # the typed path: data parsed on first use
        assert dict(event.data) == body["data"]


@pytest.mark.parametrize(("path", "value"), CHANGES)
def test_a_changed_field_decodes_alike_on_both_paths(path: str, value: Any) -> None:
    for body in (writer_body(), three_legs()):
        if path.startswith("postings.") and path.count(".") >= 2 and len(body["postings"]) < 2:
            continue
        same(changed(body, path, value))


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00garbage{",
        b"[1, 2]",
        b'{"data":{"a":"\xff"}}',
        orjson.dumps(writer_body()) + b" x",
        orjson.dumps(writer_body()) + b" \n",
        orjson.dumps(writer_body()).replace(b'"k7"', b'"\xed\xa0\x80"'),  # not UTF-8
        orjson.dumps(writer_body()).replace(b'"hash"', b'"type":"fee_charged","hash"'),  # twice
        orjson.dumps(writer_body()).replace(b'"fund-a"', b'"fund-\\u0061"'),  # escaped text
        orjson.dumps(writer_body()).replace(b'"amount":"12.80"', b'"amount":"12.80\\n"', 1),
    ],
)
def test_odd_bytes_decode_alike_on_both_paths(raw: bytes) -> None:
    same(raw)


def test_data_that_is_no_readable_json_is_refused_when_read() -> None:
    """The one documented difference: a number no float holds, inside ``data``.

    The typed path checks data's syntax and parses it on first use: the postings still
    decode, and reading the data raises ``DecodeError`` naming ``data``.
    """
    raw = orjson.dumps(writer_body()).replace(b'"amount":"12.80"}', b'"amount":1e400}', 1)
    assert outcome(_generic, raw)[0] == "refused"
    event = decode(raw)
    assert event.postings == decode(orjson.dumps(writer_body())).postings
    with pytest.raises(DecodeError, match="data: not readable JSON"):
        event.data.get("amount")


@settings(max_examples=400, deadline=None)
@given(
    base=st.sampled_from([writer_body, three_legs]),
    cut=st.integers(min_value=0, max_value=600),
    replacement=st.binary(max_size=4),
)
def test_bodies_damaged_byte_by_byte_decode_alike(base: Any, cut: int, replacement: bytes) -> None:
    raw = orjson.dumps(base(), option=orjson.OPT_SORT_KEYS)
    cut = min(cut, len(raw))
    damaged = raw[:cut] + replacement + raw[cut + len(replacement) :]
    typed, generic = outcome(decode, damaged), outcome(_generic, damaged)
    if typed[0] == "data refused":  # the one documented difference (see above)
        assert generic[0] == "refused"
        assert typed[1].startswith("data: not readable JSON")
    else:
        assert typed == generic


@pytest.mark.parametrize("version", [True, 1.0, "1"])
def test_the_schema_version_is_the_integer_one(version: Any) -> None:
    """``true == 1`` and ``1.0 == 1`` in Python; neither is schema version 1 in JSON."""
    raw = changed(writer_body(), "v", version)
    with pytest.raises(DecodeError, match=r"^v: schema version"):
        decode(raw)
    with pytest.raises(DecodeError, match=r"^v: schema version"):
        _generic(raw)


@pytest.mark.parametrize(
    "time",
    [
        "aaaaa-aaaaT",
        "xxxxxxxxxxTxxxxxxxxxxxxxxxxxxxx+00:00",
        "2026-02-29T04:40:00.123456+00:00",
        "2026-11-22T24:00:00+00:00",
        "2026-11-22T04:40:00+24:00",
        "2026-W47-7T04:40:00+00:00",
        "2026-11-22T04:40:00",
    ],
)
def test_a_time_that_is_not_rfc_3339_with_an_offset_is_refused_by_name(time: str) -> None:
    """PostgreSQL stores the time as timestamptz: refuse at decode what it could not store."""
    raw = changed(writer_body(), "time", time)
    with pytest.raises(DecodeError, match=r"^time: expected an ISO-8601 time with offset"):
        decode(raw)
