# Stub of the C extension built from _native.c (see projections/decode.py).
from collections.abc import Callable, Mapping, Sequence
from typing import Any

def configure(
    ledgers: set[str],
    accounts: dict[str, Any],
    types: dict[str, str],
    assets: dict[str, str],
    event: type[tuple[Any, ...]],
    data: Callable[[bytes], Mapping[str, Any]],
) -> None: ...
def decode(body: bytes) -> Any: ...
def sum_postings(events: Sequence[tuple[Any, ...]]) -> dict[tuple[str, str, str], int]: ...
