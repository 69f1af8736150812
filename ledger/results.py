"""What the ledger answers to a command; stored with the idempotency key and returned on retry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson


@dataclass(slots=True)  # not frozen: it is built once per command on the hot path
class CommandResult:
    key: str
    status: Literal["accepted", "rejected"]
    positions: tuple[int, ...] = ()
    event_types: tuple[str, ...] = ()
    code: str | None = None
    message: str | None = None
    replayed: bool = field(default=False, compare=False)  # True when answered from the record

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"

    def to_json(self) -> bytes:
        return orjson.dumps(self.as_dict())  # tuples encode as JSON arrays

    def as_dict(self) -> dict[str, Any]:
        if self.status == "accepted":
            return {
                "key": self.key,
                "status": self.status,
                "positions": list(self.positions),
                "event_types": list(self.event_types),
            }
        return {"key": self.key, "status": self.status, "code": self.code, "message": self.message}

    @classmethod
    def from_json(cls, raw: bytes, *, replayed: bool = False) -> CommandResult:
        body = orjson.loads(raw)
        return cls(
            key=body["key"],
            status=body["status"],
            positions=tuple(body.get("positions", ())),
            event_types=tuple(body.get("event_types", ())),
            code=body.get("code"),
            message=body.get("message"),
            replayed=replayed,
        )
