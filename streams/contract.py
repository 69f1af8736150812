"""Topic names, partitioning, headers and keys: the stream's public contract.

Messages on ``primeledger.events.v1`` carry the stored event body unchanged (the JSON of
``ledger.events.EventV1``), keyed by client so that one client's events stay ordered on one
partition; events that touch no client are keyed by the ledger name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

EVENTS_TOPIC: Final = "primeledger.events.v1"
DLQ_TOPIC: Final = "primeledger.events.dlq.v1"
BALANCES_TOPIC: Final = "primeledger.balances.v1"

# Headers on every event message.
H_LEDGER: Final = "pl-ledger"
H_POSITION: Final = "pl-position"
H_TYPE: Final = "pl-type"
H_SCHEMA: Final = "pl-schema-version"
H_NOTIFICATION: Final = "pl-notification-id"
# Extra headers on dead letters.
H_REASON: Final = "pl-dlq-reason"
H_SOURCE: Final = "pl-dlq-source"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


TOPICS: Final[tuple[TopicSpec, ...]] = (
    TopicSpec(EVENTS_TOPIC, 6, {"cleanup.policy": "delete", "retention.ms": "-1"}),
    TopicSpec(DLQ_TOPIC, 1, {"cleanup.policy": "delete", "retention.ms": "-1"}),
    TopicSpec(BALANCES_TOPIC, 6, {"cleanup.policy": "compact"}),
)


def event_key(body: dict[str, Any]) -> bytes:
    """The partition key of an event: its client, else the ledger."""
    for posting in body.get("postings", ()):
        account = posting["account"]
        if account.startswith("client:"):
            return str(account.split(":", 2)[1]).encode()
    client = body.get("data", {}).get("client")
    if isinstance(client, str):
        return client.encode()
    return str(body["ledger"]).encode()
