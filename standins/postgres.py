"""A throwaway real PostgreSQL server for tests, built from Debian's binaries."""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

# The bootstrap superuser only ever connects over the unix socket in the temp
# dir (trust auth); a fixed, unusual name keeps it apart from any test role.
_SUPERUSER = "standin_superuser"

# Unprivileged accounts to run the server as when we are root, in order of
# preference: `postgres` comes with the Debian package, `nobody` is everywhere.
_UNPRIVILEGED_USERS = ("postgres", "nobody")

# Starting can race with another process grabbing the free port we picked.
_START_ATTEMPTS = 3

_COMMAND_TIMEOUT_S = 60.0


def find_pg_bindir() -> Path:
    """Return the bin dir of the newest PostgreSQL under /usr/lib/postgresql."""
    candidates: list[tuple[tuple[int, ...], Path]] = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        bindir = Path(initdb).parent
        version = bindir.parent.name
        # Sort "9.6" < "15" < "16" numerically, not as strings.
        key = tuple(int(part) for part in re.findall(r"\d+", version))
        if (bindir / "pg_ctl").exists() and (bindir / "psql").exists():
            candidates.append((key, bindir))
    if not candidates:
        raise RuntimeError(
            "PostgreSQL server binaries (initdb, pg_ctl) not found under "
            "/usr/lib/postgresql/*/bin; install the `postgresql` Debian package "
            "(e.g. run .ci/install-postgres.sh)."
        )
    return max(candidates)[1]


def _free_port() -> int:
    """Ask the kernel for a currently unused TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _sql_literal(value: str) -> str:
    """Quote a string as an SQL literal (standard_conforming_strings is on)."""
    return "'" + value.replace("'", "''") + "'"


def _sql_ident(value: str) -> str:
    """Quote a string as an SQL identifier."""
    return '"' + value.replace('"', '""') + '"'


def _traversable_by_others(path: Path) -> bool:
    """Tell whether every directory down to path is searchable by any user."""
    for part in [path, *path.parents]:
        if not os.stat(part).st_mode & 0o001:
            return False
    return True


class PostgresServer:
    """A PostgreSQL cluster in a temp dir, on 127.0.0.1, with one password login role."""

    host: str = "127.0.0.1"

    def __init__(
        self,
        user: str = "app",
        password: str = "app-password",
        database: str = "appdb",
        start_timeout: float = 30.0,
    ) -> None:
        """Remember the role and database to create; nothing starts until start()."""
        if user == _SUPERUSER:
            raise ValueError(f"role name {_SUPERUSER!r} is reserved for the stand-in")
        self.user = user
        self.password = password
        self.database = database
        self.port: int = 0
        self.start_timeout = start_timeout
        self.startup_seconds: float | None = None
        self._tmpdir: Path | None = None
        self._run_as: str | None = None
        self._bindir: Path | None = None

    # -- paths ---------------------------------------------------------------

    @property
    def tmpdir(self) -> Path:
        """Return the temp dir holding the data dir, the socket and the log."""
        if self._tmpdir is None:
            raise RuntimeError("PostgresServer is not started")
        return self._tmpdir

    @property
    def datadir(self) -> Path:
        """Return the cluster's data directory."""
        return self.tmpdir / "data"

    @property
    def logfile(self) -> Path:
        """Return the server log file."""
        return self.tmpdir / "postgres.log"

    @property
    def dsn(self) -> str:
        """Return a libpq key/value connection string for the login role."""
        return (
            f"host={self.host} port={self.port} dbname={self.database} "
            f"user={self.user} password={_sql_literal(self.password)}"
        )

    # -- lifecycle -----------------------------------------------------------

    def __enter__(self) -> PostgresServer:
        """Start the server and return self."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server and remove its temp dir."""
        self.stop()

    def start(self) -> None:
        """Create the cluster, start it, and create the role and database."""
        if self._tmpdir is not None:
            raise RuntimeError("PostgresServer is already started")
        began = time.monotonic()
        self._bindir = find_pg_bindir()
        self._run_as = self._pick_unprivileged_user() if os.geteuid() == 0 else None
        try:
            self._tmpdir = Path(tempfile.mkdtemp(prefix="pg-standin-", dir=self._temp_base()))
            if self._run_as is not None:
                # initdb creates the data dir and pg_ctl writes the log here as
                # the unprivileged user, so it must own the temp dir.
                entry = pwd.getpwnam(self._run_as)
                os.chown(self._tmpdir, entry.pw_uid, entry.pw_gid)
            self._initdb()
            self._start_server()
            self._bootstrap()
        except BaseException:
            # A half-started server must not outlive a failed start.
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began

    def stop(self) -> None:
        """Stop the server immediately and remove the temp dir; safe to call twice."""
        tmpdir = self._tmpdir
        if tmpdir is None:
            return
        try:
            if (self.datadir / "postmaster.pid").exists():
                try:
                    self._run(
                        [self._bin("pg_ctl"), "stop", "-D", str(self.datadir), "-m", "immediate", "-w", "-t", "10"],
                        check=False,
                    )
                finally:
                    # pg_ctl can fail or time out; never leave a postmaster behind.
                    self._kill_leftover_postmaster()
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
            self._tmpdir = None

    def set_password(self, new: str) -> None:
        """Change the login role's password (for credential rotation tests)."""
        self._psql(f"ALTER ROLE {_sql_ident(self.user)} WITH PASSWORD {_sql_literal(new)};")
        self.password = new

    # -- internals -----------------------------------------------------------

    @staticmethod
    def _pick_unprivileged_user() -> str:
        """Return an existing unprivileged account to run PostgreSQL as."""
        for name in _UNPRIVILEGED_USERS:
            try:
                pwd.getpwnam(name)
            except KeyError:
                continue
            return name
        raise RuntimeError(
            "running as root, but neither a `postgres` nor a `nobody` user exists "
            "to run PostgreSQL as (it refuses to run as root)"
        )

    def _temp_base(self) -> str | None:
        """Return a parent for the temp dir that the server's user can reach."""
        base = Path(tempfile.gettempdir())
        if self._run_as is not None and not _traversable_by_others(base):
            # e.g. TMPDIR under /root: the unprivileged user could not enter it.
            return "/tmp"
        return str(base)

    def _bin(self, name: str) -> str:
        """Return the full path of a PostgreSQL program."""
        assert self._bindir is not None
        return str(self._bindir / name)

    def _env(self) -> dict[str, str]:
        """Return the environment for PostgreSQL programs, without stray PG* settings."""
        # A developer's PGHOST/PGPORT/PGDATA/PGPASSWORD etc. must not redirect us.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return env

    def _run(
        self, argv: list[str], *, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL program, as the unprivileged user when we are root."""
        program = Path(argv[0]).name
        if self._run_as is not None:
            argv = ["runuser", "-u", self._run_as, "--", *argv]
        proc = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            env=self._env(),
            # The unprivileged user may not be able to enter our cwd (e.g. /root),
            # and initdb/pg_ctl fail when they cannot resolve it.
            cwd=str(self.tmpdir),
            timeout=_COMMAND_TIMEOUT_S,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{program} failed (exit {proc.returncode}): {' '.join(argv)}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def _initdb(self) -> None:
        """Create the cluster and write its config and pg_hba.conf."""
        self._run(
            [
                self._bin("initdb"),
                "-D", str(self.datadir),
                "-U", _SUPERUSER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                # A throwaway cluster needs no fsync; this saves most of initdb's time.
                "--no-sync",
            ]
        )
        # The files belong to the unprivileged user, but root may write them.
        with open(self.datadir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(
                "\n# --- pg-standin ---\n"
                "listen_addresses = '127.0.0.1'\n"
                # Debian compiles in /var/run/postgresql; keep the socket private.
                f"unix_socket_directories = '{self.tmpdir}'\n"
                "password_encryption = 'scram-sha-256'\n"
                # Durability is pointless for a throwaway cluster; speed is not.
                "fsync = off\n"
                "synchronous_commit = off\n"
                "full_page_writes = off\n"
                "max_connections = 50\n"
                "shared_buffers = 16MB\n"
                "logging_collector = off\n"
            )
        (self.datadir / "pg_hba.conf").write_text(
            "# TYPE  DATABASE  USER  ADDRESS  METHOD\n"
            # Only the bootstrap superuser, only over the private socket.
            f"local   all  {_SUPERUSER}  trust\n"
            "host    all  all  127.0.0.1/32  scram-sha-256\n",
            encoding="utf-8",
        )

    def _start_server(self) -> None:
        """Start the postmaster on a free port, retrying if the port was taken."""
        for attempt in range(1, _START_ATTEMPTS + 1):
            self.port = _free_port()
            proc = self._run(
                [
                    self._bin("pg_ctl"), "start",
                    "-D", str(self.datadir),
                    "-l", str(self.logfile),
                    "-w", "-t", str(int(self.start_timeout)),
                    "-o", f"-p {self.port}",
                ],
                check=False,
            )
            if proc.returncode == 0:
                return
            log = self.logfile.read_text(encoding="utf-8", errors="replace") if self.logfile.exists() else ""
            self._kill_leftover_postmaster()
            if "could not bind" in log and attempt < _START_ATTEMPTS:
                continue
            raise RuntimeError(
                f"pg_ctl start failed (exit {proc.returncode}) on port {self.port}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}\nserver log:\n{log}"
            )

    def _psql(self, sql: str, database: str = "postgres") -> None:
        """Run SQL as the bootstrap superuser over the private unix socket."""
        # SQL goes in on stdin so passwords do not show up in `ps` output.
        self._run(
            [
                self._bin("psql"),
                "-X", "-q",
                "-v", "ON_ERROR_STOP=1",
                "-h", str(self.tmpdir),
                "-p", str(self.port),
                "-U", _SUPERUSER,
                "-d", database,
                "-f", "-",
            ],
            input=sql,
        )

    def _bootstrap(self) -> None:
        """Create the login role and the database it owns."""
        # CREATE DATABASE cannot run inside a transaction block, so two calls.
        self._psql(f"CREATE ROLE {_sql_ident(self.user)} LOGIN PASSWORD {_sql_literal(self.password)};")
        self._psql(f"CREATE DATABASE {_sql_ident(self.database)} OWNER {_sql_ident(self.user)};")

    def _kill_leftover_postmaster(self) -> None:
        """SIGKILL the postmaster named in postmaster.pid, if it is still alive."""
        pidfile = self.datadir / "postmaster.pid"
        try:
            pid = int(pidfile.read_text(encoding="utf-8").splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            # Killing the postmaster makes its children exit on their own.
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        except PermissionError:
            # Not our process (a recycled pid); leave it alone.
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                return
            time.sleep(0.05)

    def __repr__(self) -> str:
        """Show where the server listens, not its password."""
        return (
            f"PostgresServer(host={self.host!r}, port={self.port}, "
            f"user={self.user!r}, database={self.database!r})"
        )
