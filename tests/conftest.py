"""Session fixtures: a PostgreSQL server and a Kafka-protocol broker for the whole test run.

Both are embedded by default (started in a temporary directory, stopped at the end of the
session), so a machine with nothing but Python runs the suite. To use external services set
``PRIMELEDGER_TEST_DATABASE_URL`` (a server URL whose user may CREATE DATABASE) and/or
``PRIMELEDGER_TEST_KAFKA_BOOTSTRAP``. Every start is bounded by a timeout that raises with the
server's log, so a broken service fails the tests instead of hanging them.

The session broker is shared: a test that calls ``broker.restart()`` wipes every topic
(Tansu's storage is memory), so tests must create the topics they need themselves.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from primeledger.services import (
    EmbeddedPostgres,
    ServiceError,
    TansuBroker,
    drop_database,
    ensure_database,
)

TEST_DATABASE_URL_ENV = "PRIMELEDGER_TEST_DATABASE_URL"
TEST_KAFKA_BOOTSTRAP_ENV = "PRIMELEDGER_TEST_KAFKA_BOOTSTRAP"


class ExternalBroker:
    """A broker this session did not start: tests that need to restart it are skipped."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    def restart(self) -> None:
        pytest.skip(f"{TEST_KAFKA_BOOTSTRAP_ENV} is set: an external broker cannot be restarted")


@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a PostgreSQL server's maintenance database (``postgres``)."""
    external = os.environ.get(TEST_DATABASE_URL_ENV)
    if external:
        yield external
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("postgres") / "data")
    try:
        yield server.start()
    finally:
        server.stop()  # also after a failed start: pg_ctl may have left a server behind


@pytest.fixture
def fresh_db_url(pg_server_url: str) -> Iterator[str]:
    """URL of a new, empty database, dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    url = ensure_database(pg_server_url, name)
    yield url
    try:
        drop_database(pg_server_url, name)
    except (ServiceError, psycopg.Error) as err:
        # A leftover test database is harmless; failing here would hide the test's result.
        print(f"could not drop test database {name}: {err}")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker | ExternalBroker]:
    """The session's Kafka-protocol broker (embedded Tansu unless configured otherwise)."""
    external = os.environ.get(TEST_KAFKA_BOOTSTRAP_ENV)
    if external:
        yield ExternalBroker(external)
        return
    tansu = TansuBroker(None, tmp_path_factory.mktemp("tansu") / "tansu.log")
    try:
        tansu.start()
        yield tansu
    finally:
        tansu.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(broker: TansuBroker | ExternalBroker) -> str:
    """``host:port`` of the session broker; unchanged by ``broker.restart()``."""
    return broker.bootstrap
