"""Decode an event body (the bytes the store and Kafka carry) into a light internal form.

The read side checks what it relies on and nothing more, because this runs once per event on
every rebuild: the schema version, a known event type, the fields every projection reads,
well-formed account names, registered assets, and postings that are integers summing to zero
per asset (the write side's invariant, checked again after reading). The hash chain is not
re-verified: a consumer of several partitions sees the chain interleaved, so only an ordered
reader of the store could check it, and the writer checks it on every start.

Anything else is a ``DecodeError`` whose reason names the field: such a message is poison and
goes to the dead-letter topic at once, because retrying cannot make garbage decode.

Speed: a rebuild decodes every event, so ``decode`` tries three paths, fastest first:

1. ``_native`` (C, built with the package where a compiler is found; ``_native.c``) reads a
   body only if it is byte for byte in the writer's canonical form (keys in the writer's
   order, no whitespace or escapes, ASCII) and builds the same event, else returns None. It
   refuses nothing itself, so every reason below comes from the Python paths. About 12k
   instructions per event, against 32k for the typed path.
2. A typed parse (msgspec) of exactly the fields the writer puts in a body: it builds no
   dictionary for the fields nobody reads and checks types as it goes.
3. The old way, for anything the typed parse refuses (an unknown field, a wrong type, invalid
   UTF-8...): orjson, then ``_fast`` (indexes the parsed body) and ``_diagnose`` (slow,
   precise) when something is off.

Paths 1 and 2 accept a body only if the old way would accept it and return the same event
(``tests/test_native.py``, ``tests/test_decode_paths.py``), so what a message decodes to (or
the reason it is refused) does not depend on the path taken. Both keep ``data`` as JSON text,
parsed on first use (``_Data``). ``PRIMELEDGER_PURE_PYTHON=1`` switches path 1 off.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, NamedTuple

import msgspec
import orjson

from ledger.accounts import ID_PATTERN, account_type, split_client_account
from ledger.events import EVENT_TYPES
from ledger.money import ASSETS
from ledger.native import PURE_PYTHON

try:
    from projections import _native
except ImportError:  # not built here (no C compiler): the Python paths give the same events
    _native = None  # type: ignore[assignment]

SCHEMA_VERSION: Final = 1
KNOWN_TYPES: Final = frozenset(EVENT_TYPES)

# Account kinds the projections tell apart.
CLIENT: Final = "client"
CUSTODY_HOT: Final = "custody_hot"
CUSTODY_COLD: Final = "custody_cold"
TRUST_BANK: Final = "trust_bank"
INSURANCE_FUND: Final = "insurance_fund"
OTHER: Final = "other"


class AccountInfo(NamedTuple):
    """An account name parsed once: its kind and, for a client account, its parts."""

    kind: str
    client: str = ""
    sub_account: str = ""
    bucket: str = ""


# (account, asset, signed minor units: + debit, - credit, parsed account). A plain tuple, not a
# NamedTuple: building one per posting is measurably cheaper, and readers unpack it anyway.
Posting = tuple[str, str, int, AccountInfo]


class Event(NamedTuple):
    """What the projections need of an event."""

    ledger: str
    position: int
    type: str
    time: str  # ISO-8601 with offset, as written (PostgreSQL parses it where it is stored)
    data: Mapping[str, Any]
    postings: tuple[Posting, ...]


# Building the tuple directly skips the generated __new__'s extra Python frame (hot path).
_new_event = tuple.__new__


class DecodeError(ValueError):
    """A message the read side cannot use; ``reason`` says why, naming the field."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Account names and ledger names repeat endlessly; each is checked once. Bounded so that a
# stream of distinct garbage cannot grow memory without limit.
_ACCOUNTS: dict[str, AccountInfo] = {}
_LEDGERS: set[str] = set()
_CACHE_MAX: Final = 200_000
# The writer's times look like 2026-11-22T04:40:00.123456+00:00 (``_is_time`` checks them).
_TIME: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?"
    r"(?:[+-](?:[01][0-9]|2[0-3]):[0-5][0-9]|Z)"  # RFC 3339: an offset's minutes < 60
)


class _Posting(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A posting as the writer makes it (``amount`` is display only: not read)."""

    account: str
    asset: str
    units: str
    amount: str = ""


class _Body(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """An event body as the writer makes it (``key``, ``prev``, ``hash``: checked, not read).

    Every field is typed, so every byte of a body is validated either here (strings are
    checked as UTF-8) or by orjson (``data``): nothing is skipped unread.
    """

    v: int
    type: str
    ledger: str
    position: int
    time: str
    data: msgspec.Raw
    postings: list[_Posting]
    key: str = ""
    prev: str = ""
    hash: str = ""


_TYPED = msgspec.json.Decoder(_Body)


class _Data(Mapping[str, Any]):
    """An event's ``data``, parsed on first use.

    Most events' data is never read by a projection (a transfer's amount is in its postings),
    so the typed parse only checks its syntax and keeps the JSON text; ``orjson`` parses it
    when something reads it. Used only for an all-ASCII body (the typed parse does not check
    the UTF-8 of text it skips; ASCII is valid UTF-8). The one thing the syntax check cannot
    see is a number too big for a float (``1e400``): that ``data`` raises ``DecodeError`` when
    read, so a read model that reads it cannot apply the event (the worker dead-letters it,
    a replay leaves it out), and one that never reads it applies the postings as usual.
    """

    __slots__ = ("_parsed", "_raw")

    def __init__(self, raw: msgspec.Raw | bytes) -> None:
        self._raw = raw
        self._parsed: dict[str, Any] | None = None

    def _dict(self) -> dict[str, Any]:
        parsed = self._parsed
        if parsed is None:
            try:
                parsed = self._parsed = orjson.loads(memoryview(self._raw))
            except orjson.JSONDecodeError as exc:
                raise DecodeError(f"data: not readable JSON ({exc})") from None
        return parsed

    def __getitem__(self, key: str) -> Any:
        return self._dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())

    def __repr__(self) -> str:
        return repr(self._dict())

    def __reduce__(self) -> tuple[type[dict[str, Any]], tuple[dict[str, Any]]]:
        return dict, (self._dict(),)  # pickled (to another process) as the plain dict


# orjson reads integers up to this as int (larger ones as float, which the old way refuses).
_ORJSON_INT_MAX: Final = 2**64 - 1
_OPEN_BRACE: Final = ord("{")


def decode(body: bytes | memoryview) -> Event:
    """Parse and check one event body; ``DecodeError`` names what is wrong."""
    if type(body) is not bytes:
        body = bytes(body)
    if _native_decode is not None:
        event = _native_decode(body)
        if event is not None:
            return event
    try:
        event = _typed(_TYPED.decode(body), body.isascii())
    except Exception:  # anything the typed parse refuses: the old way decides (and says why)
        event = None
    return event if event is not None else _generic(body)


# The C path shares this module's caches and types, so it knows what the Python paths know.
# PRIMELEDGER_PURE_PYTHON=1 leaves it out (to compare, or where it could not be built).
_native_decode: Callable[[bytes], Event | None] | None = None
native_sum_postings: Callable[[Sequence[Event]], dict[tuple[str, str, str], int]] | None = None
if _native is not None and not PURE_PYTHON:
    _native.configure(
        _LEDGERS, _ACCOUNTS, {t: t for t in KNOWN_TYPES}, {a: a for a in ASSETS}, Event, _Data
    )
    _native_decode = _native.decode
    native_sum_postings = _native.sum_postings
# Which fast path decodes here, for benchmarks and diagnostics: "native" or "python".
FAST_PATH: Final = "python" if _native_decode is None else "native"


def _generic(body: bytes | memoryview) -> Event:
    """The old way: a generic parse, the fast checks, and the precise diagnosis if needed."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"body: not JSON ({exc})") from None
    try:
        event = _fast(raw)
    except (KeyError, TypeError, ValueError, AttributeError):
        event = None
    return event if event is not None else _diagnose(raw)


def _typed(body: _Body, ascii_only: bool) -> Event | None:
    """The event if the typed parse found everything as the writer makes it, else None.

    The same checks as ``_fast``, on the typed fields, so both give the same event.
    """
    kind, ledger, position, time = body.type, body.ledger, body.position, body.time
    if (
        body.v != SCHEMA_VERSION
        or kind not in KNOWN_TYPES
        or ledger not in _LEDGERS
        or not 1 <= position <= _ORJSON_INT_MAX
        or not _is_time(time)
    ):
        return None
    raw_data = body.data
    if memoryview(raw_data)[0] != _OPEN_BRACE:  # the syntax is checked: "{" is an object
        return None
    data = _Data(raw_data) if ascii_only else orjson.loads(memoryview(raw_data))
    accounts = _ACCOUNTS
    raw_postings = body.postings
    postings: tuple[Posting, ...]
    if len(raw_postings) == 2:  # the common case, inlined: one debit, one credit
        first, second = raw_postings
        text, text2 = first.units, second.units
        asset, units, other = first.asset, int(text), int(text2)
        if asset != second.asset or asset not in ASSETS or units == 0 or units + other:
            return None
        if str(units) != text or str(other) != text2:  # canonical only, as _units demands
            return None
        account, account2 = first.account, second.account
        postings = (
            (account, asset, units, accounts[account]),
            (account2, asset, other, accounts[account2]),
        )
    else:
        postings = tuple(
            [(p.account, p.asset, int(p.units), accounts[p.account]) for p in raw_postings]
        )
        if not _balanced(postings) or any(
            str(units) != p.units
            for (_, _, units, _), p in zip(postings, raw_postings, strict=True)
        ):
            return None
    return _new_event(Event, (ledger, position, kind, time, data, postings))


def _fast(raw: Any) -> Event | None:
    """The event if everything is as the writer makes it, else None (then diagnose)."""
    kind, ledger, position, time = raw["type"], raw["ledger"], raw["position"], raw["time"]
    if (
        type(raw["v"]) is not int  # not True, not 1.0: the version is the integer 1
        or raw["v"] != SCHEMA_VERSION
        or kind not in KNOWN_TYPES
        or ledger not in _LEDGERS
        or type(position) is not int
        or position < 1
        or type(time) is not str
        or not _is_time(time)
        or type(raw["data"]) is not dict
    ):
        return None
    accounts = _ACCOUNTS
    raw_postings = raw["postings"]
    postings: tuple[Posting, ...]
    if len(raw_postings) == 2:  # the common case, inlined: one debit, one credit
        first, second = raw_postings
        text, text2 = first["units"], second["units"]
        asset, units, other = first["asset"], int(text), int(text2)
        if asset != second["asset"] or asset not in ASSETS or units == 0 or units + other:
            return None
        if str(units) != text or str(other) != text2:  # canonical only, as _units demands
            return None
        account, account2 = first["account"], second["account"]
        postings = (
            (account, asset, units, accounts[account]),
            (account2, asset, other, accounts[account2]),
        )
    else:
        postings = tuple(
            [
                (p["account"], p["asset"], int(p["units"]), accounts[p["account"]])
                for p in raw_postings
            ]
        )
        if not _balanced(postings) or any(
            str(units) != p["units"]
            for (_, _, units, _), p in zip(postings, raw_postings, strict=True)
        ):
            return None
    return _new_event(Event, (ledger, position, kind, time, raw["data"], postings))


def _balanced(postings: tuple[Posting, ...]) -> bool:
    """Registered assets, no zero amounts, and a zero sum per asset."""
    if len(postings) == 2:  # the common case: one debit, one credit
        (_, first_asset, first_units, _), (_, second_asset, second_units, _) = postings
        return (
            first_asset == second_asset
            and first_asset in ASSETS
            and first_units != 0
            and first_units + second_units == 0
        )
    sums: dict[str, int] = {}
    for _, code, units, _ in postings:
        if units == 0 or code not in ASSETS:
            return False
        sums[code] = sums.get(code, 0) + units
    return not any(sums.values())


def _diagnose(raw: Any) -> Event:
    """The slow, precise path: the event, or a ``DecodeError`` naming the first bad field."""
    if not isinstance(raw, dict):
        raise DecodeError("body: not a JSON object")
    version = raw.get("v")
    if type(version) is not int or version != SCHEMA_VERSION:
        raise DecodeError(f"v: schema version {version!r} is not {SCHEMA_VERSION}")
    kind = raw.get("type")
    if kind not in KNOWN_TYPES:
        raise DecodeError(f"type: unknown event type {kind!r}")
    ledger = _ledger(raw.get("ledger"))
    position, time, data = raw.get("position"), raw.get("time"), raw.get("data")
    if type(position) is not int or position < 1:
        raise DecodeError(f"position: expected an integer >= 1, got {position!r}")
    if not isinstance(time, str) or not _is_time(time):
        raise DecodeError(f"time: expected an ISO-8601 time with offset, got {time!r}")
    if not isinstance(data, dict):
        raise DecodeError("data: expected an object")
    return Event(ledger, position, kind, time, data, _postings(raw.get("postings")))


def _ledger(name: object) -> str:
    # Ledger names end up in text COPY rows and Kafka keys: no control characters, no '\\'.
    if not isinstance(name, str) or not name or len(name) > 200:
        raise DecodeError("ledger: expected a non-empty string of at most 200 characters")
    if not name.isprintable() or "\\" in name:
        raise DecodeError(f"ledger: {name!r} has control characters or a backslash")
    if len(_LEDGERS) >= _CACHE_MAX:
        _LEDGERS.clear()
    _LEDGERS.add(name)
    return name


def _is_time(text: str) -> bool:
    """RFC 3339 with an offset, a real date and time: what PostgreSQL stores as timestamptz.

    The writer writes ``isoformat()`` of an aware UTC time; a looser shape (Python also reads
    week dates or another separator) could reach a read model and fail only when written.
    """
    if _TIME.fullmatch(text) is None:
        return False
    try:
        return datetime.fromisoformat(text).utcoffset() is not None
    except ValueError:
        return False


def _postings(raw: object) -> tuple[Posting, ...]:
    if not isinstance(raw, list):
        raise DecodeError("postings: expected a list")
    out: list[Posting] = []
    sums: dict[str, int] = {}
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise DecodeError(f"postings[{index}]: expected an object")
        account, code = item.get("account"), item.get("asset")
        if not isinstance(code, str) or code not in ASSETS:
            raise DecodeError(f"postings[{index}].asset: unknown asset {code!r}")
        try:
            info = account_info(account)
        except ValueError as exc:
            raise DecodeError(f"postings[{index}].account: {exc}") from None
        value = _units(index, item.get("units"))
        out.append((str(account), code, value, info))
        sums[code] = sums.get(code, 0) + value
    unbalanced = sorted(code for code, total in sums.items() if total)
    if unbalanced:
        raise DecodeError(f"postings: unbalanced in {', '.join(unbalanced)}")
    return tuple(out)


def _units(index: int, units: object) -> int:
    """Non-zero integer units in canonical form (no '+', spaces, '_' or leading zeros)."""
    if not isinstance(units, str) or not units.lstrip("-").isdigit() or not units.isascii():
        raise DecodeError(f"postings[{index}].units: expected an integer string, got {units!r}")
    value = int(units)
    if value == 0 or str(value) != units:
        raise DecodeError(f"postings[{index}].units: expected a non-zero integer, got {units!r}")
    return value


def account_info(account: object) -> AccountInfo:
    """The kind and parts of a well-formed account name (cached); ``ValueError`` otherwise."""
    if not isinstance(account, str):
        raise ValueError(f"expected a string, got {account!r}")
    found = _ACCOUNTS.get(account)
    if found is not None:
        return found
    account_type(account)  # ValueError for anything that is not a well-formed account name
    info = _classify(account)
    if len(_ACCOUNTS) >= _CACHE_MAX:
        _ACCOUNTS.clear()
    _ACCOUNTS[account] = info
    return info


def _classify(account: str) -> AccountInfo:
    parts = split_client_account(account)
    if parts is not None:
        client, sub, bucket = parts
        if ID_PATTERN.fullmatch(client) is None or ID_PATTERN.fullmatch(sub) is None:
            raise ValueError(f"bad client or sub-account id in {account!r}")
        return AccountInfo(CLIENT, client, sub, bucket)
    if account.startswith("custody:hot:"):
        return AccountInfo(CUSTODY_HOT)
    if account.startswith("custody:cold:"):
        return AccountInfo(CUSTODY_COLD)
    if account.startswith("trust_bank:"):
        return AccountInfo(TRUST_BANK)
    if account == "house:insurance_fund":
        return AccountInfo(INSURANCE_FUND)
    return AccountInfo(OTHER)
