"""Tests for the real-PostgreSQL stand-in in standins/postgres.py."""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg2
import pytest

from standins.postgres import PostgresServer
from tests.conftest import postgres_server

USER = "app"
PASSWORD = "s3cret-pw"
DATABASE = "appdb"


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    """Start one server for the module; startup is well under a second.

    Skipped where PostgreSQL is not installed, unless ``AIRFLOW_SM_REFS_REQUIRE_POSTGRES``
    is set (as in CI), like every other PostgreSQL test.
    """
    with postgres_server(user=USER, password=PASSWORD, database=DATABASE) as server:
        yield server


def _connect(pg: PostgresServer, password: str) -> psycopg2.extensions.connection:
    """Connect over TCP to the stand-in as its login role."""
    return psycopg2.connect(
        host=pg.host,
        port=pg.port,
        user=pg.user,
        password=password,
        dbname=pg.database,
        connect_timeout=5,
    )


def test_attributes(pg: PostgresServer) -> None:
    """The server exposes where and as whom to connect."""
    assert pg.host == "127.0.0.1"
    assert isinstance(pg.port, int) and pg.port > 0
    assert (pg.user, pg.password, pg.database) == (USER, PASSWORD, DATABASE)


def test_right_password_connects(pg: PostgresServer) -> None:
    """The configured password logs in and queries work."""
    conn = _connect(pg, PASSWORD)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
            cur.execute(
                "SELECT current_user, current_database(), pg_get_userbyid(datdba),"
                " current_setting('password_encryption')"
                " FROM pg_database WHERE datname = current_database()"
            )
            assert cur.fetchone() == (USER, DATABASE, USER, "scram-sha-256")
    finally:
        conn.close()


def test_wrong_password_rejected(pg: PostgresServer) -> None:
    """A wrong password is refused by scram-sha-256 host authentication."""
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        _connect(pg, "not-the-password")


def test_set_password_rotates(pg: PostgresServer) -> None:
    """After set_password the old password fails and the new one works."""
    # Quote and backslash check that the password is passed as a proper literal.
    new = "r0tated'pw\\x"
    pg.set_password(new)
    try:
        assert pg.password == new
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            _connect(pg, PASSWORD)
        conn = _connect(pg, new)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                assert cur.fetchone() == (1,)
        finally:
            conn.close()
    finally:
        # The module-scoped server is shared: put the original password back.
        pg.set_password(PASSWORD)


def test_exit_stops_server_and_removes_tmpdir() -> None:
    """Leaving the context stops the server and deletes its temp dir."""
    with postgres_server(user="other", password="pw-2", database="otherdb") as server:
        tmpdir = server.tmpdir
        port = server.port
        assert tmpdir.is_dir()
    assert not os.path.exists(tmpdir)
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(
            host="127.0.0.1", port=port, user="other", password="pw-2", dbname="otherdb", connect_timeout=2
        )
