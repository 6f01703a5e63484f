"""Session-wide real servers: one nats-server, one PostgreSQL (see tests/support/servers.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.servers import NatsServer, create_database, nats_server, postgres_server


@pytest.fixture(scope="session")
def nats_srv() -> Iterator[NatsServer]:
    with nats_server() as server:
        yield server


@pytest.fixture(scope="session")
def nats_url(nats_srv: NatsServer) -> str:
    return nats_srv.url


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A fresh, empty database of each kind, for storage tests that must hold on both."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/test.db"
    admin = request.getfixturevalue("pg_admin_url")
    return create_database(admin, f"t_{uuid.uuid4().hex[:12]}")
