"""pytest plugin: a real PostgreSQL server for the tests of a Postgres-backed Dagster instance.

Enable with ``pytest_plugins = ["clickstream_dagster_tests.postgres_fixtures"]``.

* ``postgres_server`` (session): ``initdb`` in a temporary directory, then ``postgres`` started
  there by the launcher layer (scripts/local_services.py: its own session, ``server.log`` and
  ``server.pid`` beside the data, ready once ``pg_isready`` says so), listening on 127.0.0.1 on a
  free port, password (SCRAM) authentication for TCP connections; stopped (fast shutdown) at the
  end of the session. PostgreSQL refuses to run as root, so under root the server runs as the
  ``postgres`` system user (created by Debian's ``postgresql`` package; ``.ci/run`` installs it).
  The binaries are found on PATH or in ``/usr/lib/postgresql/<version>/bin``.
* ``postgres_env`` (function): the ``DAGSTER_PG_*`` variables ``deploy/dagster.yaml`` reads, for a
  fresh, empty database of its own.

``POSTGRES_START_TIMEOUT_S`` (default 60) bounds the start.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from clickstream_dagster_tests.kafka_fixtures import load_local_services

services = load_local_services()

START_TIMEOUT_S = float(os.environ.get("POSTGRES_START_TIMEOUT_S") or 60)
SUPERUSER = "dagster"
SYSTEM_USER = "postgres"  # who runs the server when the tests run as root
STOP_TIMEOUT_S = 30.0


class PostgresUnavailable(services.ServiceError):
    """No PostgreSQL server binaries, or the server did not start."""


def find_bin(name: str) -> str:
    """A PostgreSQL server binary: on PATH, else the newest /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if not candidates:
        raise PostgresUnavailable(
            f"{name} not found on PATH nor in /usr/lib/postgresql/*/bin: install PostgreSQL "
            f"(apt-get install postgresql; .ci/run does it)"
        )
    return candidates[-1]


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    username: str
    password: str
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen = field(repr=False, compare=False)

    def env(self, db_name: str) -> dict[str, str]:
        """The DAGSTER_PG_* variables deploy/dagster.yaml reads, for ``db_name``."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USERNAME": self.username,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": db_name,
        }

    def connect(self, db_name: str = "postgres"):
        import psycopg2

        return psycopg2.connect(
            host=self.host, port=self.port, user=self.username, password=self.password, dbname=db_name
        )

    def create_database(self, prefix: str = "dagster") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        connection = self.connect()
        try:
            connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return name

    def query(self, db_name: str, sql: str, *params) -> list[tuple]:
        connection = self.connect(db_name)
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall()
        finally:
            connection.close()


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError as error:
        raise PostgresUnavailable(
            f"running as root and no {SYSTEM_USER!r} user to run PostgreSQL as "
            f"(apt-get install postgresql creates it)"
        ) from error
    return ["runuser", "-u", SYSTEM_USER, "--", *command]


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT_S)
    if done.returncode != 0:
        raise PostgresUnavailable(
            f"{what} failed ({done.returncode}): {' '.join(command)}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )


def _accepts_connections(port: int) -> str | None:
    """None once the server accepts connections (not merely listens: it refuses them while it
    starts up), else pg_isready's word for it."""
    done = subprocess.run([find_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-t", "2"],
                          capture_output=True, text=True)
    return None if done.returncode == 0 else (done.stdout.strip() or f"pg_isready exit {done.returncode}")


def start_postgres(root: Path, port: int) -> PostgresServer:
    """A fresh cluster in ``root`` (a directory the server user can write), started on ``port``."""
    data_dir, log_path, password_file = root / "data", root / "server.log", root / "password"
    password = secrets.token_urlsafe(16)
    password_file.write_text(password + "\n")
    if os.geteuid() == 0:
        server_user = pwd.getpwnam(SYSTEM_USER)
        os.chown(root, server_user.pw_uid, server_user.pw_gid)
        os.chown(password_file, server_user.pw_uid, server_user.pw_gid)
    _run(
        _as_server_user([
            find_bin("initdb"), "-D", str(data_dir), "-U", SUPERUSER, f"--pwfile={password_file}",
            "--auth-host=scram-sha-256", "--auth-local=peer", "-E", "UTF8", "--no-locale",
        ]),
        "initdb",
    )  # fmt: skip
    password_file.unlink()
    proc = services.start(
        [find_bin("postgres"), "-D", str(data_dir), "-c", "listen_addresses=127.0.0.1", "-p", str(port),
         "-k", str(root), "-c", "fsync=off", "-c", "max_connections=200"],
        root, log_file=log_path.name, pid_file="server.pid", user=SYSTEM_USER if os.geteuid() == 0 else None,
    )  # fmt: skip
    server = PostgresServer("127.0.0.1", port, SUPERUSER, password, data_dir, log_path, proc)
    try:
        services.wait_until_answers(lambda: _accepts_connections(port), START_TIMEOUT_S,
                                    what="PostgreSQL", where=f"127.0.0.1:{port}", proc=proc)
    except services.ServiceError as error:
        stop_postgres(server)
        raise PostgresUnavailable(f"{error}\n--- server log ---\n{services.tail(log_path)}") from None
    return server


def stop_postgres(server: PostgresServer) -> None:
    # SIGINT is PostgreSQL's fast shutdown (pg_ctl -m fast): open sessions are cut, not waited for.
    services.stop(server.proc.pid, STOP_TIMEOUT_S, proc=server.proc, what="PostgreSQL",
                  shutdown_signal=signal.SIGINT)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    # Not pytest's tmp_path: its parents are private to root, and the server may run as postgres.
    root = Path(tempfile.mkdtemp(prefix="clickstream-postgres-"))
    try:
        server = start_postgres(root, services.free_port(exclude=(5432,)))
    except PostgresUnavailable as error:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {error}", pytrace=False)
    try:
        yield server
    finally:
        try:
            stop_postgres(server)
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_env(postgres_server: PostgresServer) -> dict[str, str]:
    return postgres_server.env(postgres_server.create_database())
