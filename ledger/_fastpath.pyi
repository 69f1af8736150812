# Stub of the C extension built from _fastpath.c (see ledger/processing.py).
from collections.abc import Callable, Mapping, Sequence
from datetime import tzinfo
from typing import Any

def configure(
    scales: dict[str, int],
    result: type[Any],
    record: type[Any],
    outcome: type[Any],
    sha256: Callable[[bytes], Any],
    utc: tzinfo,
    recent_entries: int,
    known_keys: int,
    max_units: int,
) -> None: ...
def transfer(processor: Any, raw: Mapping[str, Any]) -> Any: ...
def process_all(
    processor: Any,
    commands: Sequence[Any],
    results: list[Any],
    events: list[tuple[int, str, bytes]],
    records: list[Any],
) -> None: ...
def sha256_direct() -> bool: ...
