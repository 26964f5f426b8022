"""A throwaway PostgreSQL server for the tests (``initdb`` + ``pg_ctl``, files under a tmp dir).

The ledger's unit tests run on it with trust auth; the integration stack's ledger runs on one with a
password, as a production ledger has, so that the secrets test has a password to look for.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text

from include.control.ledger.store import sqlalchemy_url

SUPERUSER = "postgres"


class PostgresUnavailable(RuntimeError):
    """This machine cannot run a PostgreSQL server for the tests (the reason is the message)."""


@dataclass(frozen=True)
class PostgresServer:
    port: int
    password: str | None = None

    def uri(self, database: str) -> str:
        """A database on this server as an Airflow connection URI (what ``pipeline_ledger`` holds)."""
        login = f"{SUPERUSER}:{self.password}" if self.password else SUPERUSER
        return f"postgres://{login}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database: its name."""
        name = name or f"ledger_{uuid.uuid4().hex[:12]}"
        # CREATE DATABASE cannot run inside a transaction.
        engine = create_engine(sqlalchemy_url(self.uri("postgres")), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return name


def _unprivileged_prefix() -> list[str]:
    """What to put before initdb and pg_ctl so that they agree to run: nothing, unless we are root.

    Found here: the tests run as root (uid 0, in a container), and initdb, pg_ctl and postgres
    all refuse to ("initdb: error: cannot be run as root"). ``runuser -u postgres`` would need the
    data directory owned by that user and every folder above it open to them, but pytest keeps
    its tmp root (/tmp/pytest-of-root) at mode 0700 and resets it if widened. A new user
    namespace that maps root to an ordinary uid works without touching any permission: the
    programs see a non-root uid, and the root-owned tmp dir appears to be theirs. That uid must
    have a passwd entry (initdb looks its name up).
    """
    if os.geteuid() != 0:
        return []
    if shutil.which("unshare") is None:
        raise PostgresUnavailable("running as root, which PostgreSQL refuses, and unshare(1) is not available")
    try:
        account = pwd.getpwnam("postgres")
    except KeyError:
        account = pwd.getpwnam("nobody")
    prefix = ["unshare", "--user", f"--map-user={account.pw_uid}", f"--map-group={account.pw_gid}"]
    if subprocess.run([*prefix, "true"], check=False, capture_output=True).returncode != 0:
        raise PostgresUnavailable("running as root, which PostgreSQL refuses, and user namespaces are not allowed")
    return prefix


def _free_port() -> int:
    # The kernel's ephemeral range (32768-60999 on Linux) holds no port of the project's own stacks.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def postgres_server(root: Path, *, password: str | None = None,
                    settings: tuple[str, ...] = ()) -> Iterator[PostgresServer]:
    """A server with its files in ``root``, stopped on exit even when the body fails. With a
    ``password``, connections must give it (scram-sha-256); without, any local connection may."""
    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
        raise PostgresUnavailable("PostgreSQL's server programs (initdb, pg_ctl) are not on PATH")
    prefix = _unprivileged_prefix()
    data, log = root / "data", root / "pg.log"
    auth = ["--auth=trust"]
    if password:
        password_file = root / "password"
        password_file.write_text(password)
        auth = ["--auth=scram-sha-256", f"--pwfile={password_file}"]
    initialised = subprocess.run(
        [*prefix, "initdb", "-D", str(data), "-U", SUPERUSER, *auth, "--no-sync", "--encoding=UTF8", "--no-locale"],
        check=False, capture_output=True, text=True,
    )
    if password:
        password_file.unlink()
    if initialised.returncode != 0:
        raise RuntimeError(f"initdb failed: {initialised.stderr}")
    port = _free_port()
    options = " ".join([f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
                        *(f"-c {setting}" for setting in settings)])
    started = subprocess.run([*prefix, "pg_ctl", "-D", str(data), "-o", options, "-l", str(log), "-w", "start"],
                             check=False, capture_output=True, text=True)
    try:
        if started.returncode != 0:
            server_log = log.read_text() if log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {started.stderr}\n{server_log}")
        yield PostgresServer(port, password)
    finally:
        subprocess.run([*prefix, "pg_ctl", "-D", str(data), "-m", "immediate", "stop"], check=False,
                       capture_output=True)
