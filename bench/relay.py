"""Relay throughput: PostgreSQL log -> Kafka, against a raw producer of the same messages.

Set-up (once): funded clients and ``transfers`` transfers written through the real
``ledger.application.Ledger`` into a fresh database.

Two measurements per run, alternating which goes first, on the same broker:

* **ours**: ``streams.relay.Relay`` publishing the whole log (every event, from notification id
  0) to a fresh topic: pages of ``page_size`` events read from PostgreSQL, each body parsed for
  its key and headers, sent, every acknowledgement awaited, the position stored. Its clock
  runs from the first page to the last stored position, the producer's connection included.
* **raw_producer**, the limit: a kafka-python ``KafkaProducer`` with the relay's settings
  (``acks=all``, idempotent, 5 requests in flight, the same linger and batch size) sending the
  same bodies with the same keys and headers, prepared beforehand, to another fresh topic, and
  one ``flush`` at the end. Its clock includes the producer's connection too.

The first run reads both topics back and checks that they hold the same messages, one per
event, and that each partition of the relay's topic is in commit order; the benchmark fails
loudly otherwise. The last stdout line is one JSON object.

Run: ``python -m bench.relay`` (``--quick`` for a short smoke run).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from kafka import KafkaProducer

from bench._common import (
    BenchmarkFailedError,
    fresh_database,
    fresh_topic,
    kafka_broker,
    median,
    note,
    note_kafka_crc32c,
    open_funded_clients,
    parse_args,
    postgres_server,
    print_result,
    print_table,
    run_main,
    submit_all,
    transfer_commands,
)
from ledger.application import Ledger
from ledger.store import EVENTS_TABLE
from streams.contract import H_LEDGER, H_NOTIFICATION, H_POSITION, H_SCHEMA, H_TYPE, event_key
from streams.relay import PAGE_SIZE, Relay
from streams.topics import read_topic

LEDGER = "bench"
LINGER_MS = 5  # the relay's defaults, given to both paths explicitly
BATCH_SIZE = 512 * 1024
TARGET = 0.70


@dataclass(frozen=True)
class Plan:
    runs: int
    transfers: int
    clients: int


FULL = Plan(runs=5, transfers=100_000, clients=1_000)
QUICK = Plan(runs=2, transfers=20_000, clients=200)

Message = tuple[bytes, bytes, list[tuple[str, bytes]]]  # value, key, headers


# --- Set-up ----------------------------------------------------------------------------


def write_log(url: str, plan: Plan) -> None:
    ledger = Ledger(url, LEDGER)
    try:
        clients = open_funded_clients(ledger, plan.clients)
        submit_all(ledger, transfer_commands(clients, plan.transfers, seed=1))
    finally:
        ledger.close()


def load_messages(url: str) -> list[Message]:
    """Every event as the relay sends it: the stored body, its key and its headers."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            f"SELECT notification_id, state FROM {EVENTS_TABLE} ORDER BY notification_id",
            binary=True,
        ).fetchall()
    messages = []
    for notification_id, raw in rows:
        body = bytes(raw)
        event = orjson.loads(body)
        headers = [
            (H_LEDGER, event["ledger"].encode()),
            (H_POSITION, b"%d" % event["position"]),
            (H_TYPE, event["type"].encode()),
            (H_SCHEMA, b"%d" % event["v"]),
            (H_NOTIFICATION, b"%d" % notification_id),
        ]
        messages.append((body, event_key(event), headers))
    return messages


# --- The two paths ---------------------------------------------------------------------


def run_relay(url: str, bootstrap: str, messages: Sequence[Message], check: bool) -> float:
    with fresh_topic(bootstrap, "relay") as spec:
        relay = Relay(url, bootstrap, f"bench-{uuid.uuid4().hex[:8]}", topic=spec)
        try:
            began = time.perf_counter()
            published = 0
            while published < len(messages):
                count = relay.run_once()
                if count == 0:
                    raise BenchmarkFailedError(
                        f"relay: stopped after {published} of {len(messages)} events"
                    )
                published += count
            elapsed = time.perf_counter() - began
        finally:
            relay.close()
        if check:
            check_topic(bootstrap, spec.name, messages, "relay", ordered=True)
    return len(messages) / elapsed


def run_raw(bootstrap: str, messages: Sequence[Message], check: bool) -> float:
    with fresh_topic(bootstrap, "raw") as spec:
        began = time.perf_counter()
        producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            client_id="primeledger-bench-raw",
            acks="all",
            enable_idempotence=True,
            max_in_flight_requests_per_connection=5,
            allow_auto_create_topics=False,
            max_request_size=4 * 1024 * 1024,
            linger_ms=LINGER_MS,
            batch_size=BATCH_SIZE,
        )
        try:
            send, topic = producer.send, spec.name
            futures = [send(topic, value=v, key=k, headers=h) for v, k, h in messages]
            producer.flush()
            elapsed = time.perf_counter() - began
        finally:
            producer.close()
        failed = [f for f in futures if not f.succeeded()]
        if failed:
            raise BenchmarkFailedError(f"raw: {len(failed)} messages not acknowledged")
        if check:
            check_topic(bootstrap, spec.name, messages, "raw", ordered=False)
    return len(messages) / elapsed


def check_topic(
    bootstrap: str, topic: str, messages: Sequence[Message], label: str, *, ordered: bool
) -> None:
    """The topic holds exactly the messages (as a multiset); with ``ordered``, every partition
    is in notification-id order, as the relay promises."""
    records = read_topic(bootstrap, topic, timeout=120)
    got = sorted((r.value, r.key, tuple(r.headers)) for r in records)
    want = sorted((v, k, tuple(h)) for v, k, h in messages)
    if got != want:
        raise BenchmarkFailedError(
            f"{label}: the topic holds {len(got)} messages, not the {len(want)} events"
        )
    if ordered:
        last: dict[int, int] = {}
        for record in records:
            notification = int(dict(record.headers)[H_NOTIFICATION])
            if notification <= last.get(record.partition, 0):
                raise BenchmarkFailedError(f"{label}: partition {record.partition} out of order")
            last[record.partition] = notification


# --- Report ----------------------------------------------------------------------------


def measure(plan: Plan, runs: int) -> tuple[list[float], list[float], list[Message]]:
    ours: list[float] = []
    raw: list[float] = []
    with (
        postgres_server() as server_url,
        kafka_broker() as bootstrap,
        fresh_database(server_url, "relay") as url,
    ):
        began = time.perf_counter()
        write_log(url, plan)
        messages = load_messages(url)
        note(f"set-up: {len(messages):,} events written in {time.perf_counter() - began:.1f} s")
        for run in range(runs):
            check = run == 0
            # Alternate the order, so that neither path always gets the warmer broker.
            if run % 2 == 0:
                ours.append(run_relay(url, bootstrap, messages, check))
                raw.append(run_raw(bootstrap, messages, check))
            else:
                raw.append(run_raw(bootstrap, messages, check))
                ours.append(run_relay(url, bootstrap, messages, check))
            note(
                f"run {run + 1}/{runs}: relay {ours[-1]:,.0f} events/s, "
                f"raw producer {raw[-1]:,.0f} msg/s" + (" (topics checked)" if check else "")
            )
    return ours, raw, messages


def row(label: str, rates: list[float], ours: float) -> list[Any]:
    mid = median(rates)
    return [
        label,
        len(rates),
        f"{mid:,.0f}",
        f"{min(rates):,.0f}",
        f"{max(rates):,.0f}",
        f"{ours / mid:.2f}",
    ]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args("Relay throughput against a raw producer of the same messages.", argv)
    plan = QUICK if args.quick else FULL
    crc = note_kafka_crc32c()
    ours, raw, messages = measure(plan, args.runs or plan.runs)
    size = sum(len(v) for v, _, _ in messages) / len(messages)
    mine, limit = median(ours), median(raw)
    print_table(
        f"Relay: {len(messages):,} events per run ({size:.0f} B bodies), pages of {PAGE_SIZE:,}, "
        f"acks=all, idempotent, linger {LINGER_MS} ms, batch {BATCH_SIZE // 1024} KiB, "
        "6 partitions",
        ["path", "runs", "median /s", "min /s", "max /s", "ours / this"],
        [row("ours: streams.relay.Relay", ours, mine), row("raw KafkaProducer", raw, mine)],
    )
    ratio = mine / limit
    verdict = "met" if ratio >= TARGET else "MISSED"
    note(f"relay / raw producer = {ratio:.2f} (target >= {TARGET:.2f}: {verdict})")
    print_result(
        {
            "bench": "relay",
            "unit": "events/s",
            "ours": round(mine),
            "baseline": "raw_producer",
            "baseline_value": round(limit),
            "ratio": round(ratio, 3),
            "events": len(messages),
            "runs": len(ours),
            "kafka_crc32c": crc,
        }
    )


if __name__ == "__main__":
    run_main("relay", main)
