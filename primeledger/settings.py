"""Runtime configuration, read from ``PRIMELEDGER_*`` environment variables.

Every field has a default that runs the whole stack locally: embedded PostgreSQL and an
embedded Tansu broker whose data, pid files and state live under ``home``. Setting
``PRIMELEDGER_DATABASE_URL`` or ``PRIMELEDGER_KAFKA_BOOTSTRAP`` points at an external
service instead, and nothing is started for it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PRIMELEDGER_", extra="ignore")

    # Where embedded PostgreSQL data, the broker's pid file and log, and services.json live.
    home: Path = Path(".primeledger")
    # External PostgreSQL URL; when set, no embedded server is started and it is used as is.
    database_url: str | None = None
    # External Kafka bootstrap servers ("host:port,..."); when set, no embedded broker.
    kafka_bootstrap: str | None = None
    # Name of the ledger this process works on.
    ledger: str = "main"
    # Database created on the embedded server for the application's tables.
    database_name: str = "primeledger"


def load_settings() -> Settings:
    """Settings from the environment (a function so callers and tests have one seam)."""
    return Settings()
