"""The AsyncAPI 3.0 description of every topic, generated from the code with faststream.

The channels, their payload schemas (``EventV1`` for events and dead letters, ``BalanceV1``
for the compacted balance feed) and their keys and headers come from ``streams.contract`` and
``ledger.events``; ``primeledger asyncapi`` writes the document to ``docs/asyncapi.json`` and a
test fails when the committed copy is stale.
"""

from __future__ import annotations

from typing import Any, Literal

from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI
from pydantic import BaseModel, ConfigDict, Field

from ledger.events import EventV1
from streams.contract import (
    BALANCES_TOPIC,
    DLQ_TOPIC,
    EVENTS_TOPIC,
    H_LEDGER,
    H_NOTIFICATION,
    H_POSITION,
    H_REASON,
    H_SCHEMA,
    H_SOURCE,
    H_TYPE,
    TOPICS,
)


class BalanceV1(BaseModel):
    """The latest balance of one (ledger, client, sub-account, asset), after each change.

    Key: the JSON array ``[ledger, client, sub_account, asset]``; the topic is compacted, so a
    new consumer reads the current balance of every key.
    """

    model_config = ConfigDict(extra="forbid")
    v: Literal[1] = 1
    ledger: str
    client: str
    sub_account: str
    asset: str
    position: int = Field(description="the ledger position of the last event that changed it")
    balances: dict[str, str] = Field(description="bucket -> decimal amount with the asset's scale")
    total: str


def _partitions(topic: str) -> int:
    return next(spec.partitions for spec in TOPICS if spec.name == topic)


def document(bootstrap: str = "localhost:9092") -> dict[str, Any]:
    """The AsyncAPI document as JSON-compatible data."""
    broker = KafkaBroker(bootstrap, description="Kafka (Apache Kafka in production, Tansu here)")
    headers = f"headers: {H_LEDGER}, {H_POSITION}, {H_TYPE}, {H_SCHEMA}, {H_NOTIFICATION}"

    @broker.subscriber(
        EVENTS_TOPIC,
        title="events",
        description=(
            f"Every ledger event in log order per client ({_partitions(EVENTS_TOPIC)} partitions,"
            f" keyed by client id, else ledger name); {headers}. At-least-once: consumers"
            " dedupe by (ledger, position)."
        ),
    )
    async def projections(event: EventV1) -> None:
        """The projection workers (balances, P&L, trust reserve)."""

    broker.publisher(
        DLQ_TOPIC,
        title="dead-letters",
        schema=EventV1,
        description=(
            "Messages a projection worker could not process: the original bytes and headers"
            f" plus {H_REASON} and {H_SOURCE} (topic/partition/offset). Bodies may be invalid."
        ),
    )
    broker.publisher(
        BALANCES_TOPIC,
        title="balances",
        schema=BalanceV1,
        description="Compacted: the latest balance per (ledger, client, sub-account, asset).",
    )
    broker.publisher(
        EVENTS_TOPIC,
        title="relay",
        schema=EventV1,
        description="The relay publishes the stored event bodies unchanged.",
    )
    app = FastStream(
        broker,
        specification=AsyncAPI(
            title="PrimeLedger streams",
            version="1.0.0",
            description="Events, dead letters and the balance feed of PrimeLedger.",
        ),
    )
    return dict(app.schema.to_specification().to_jsonable())
