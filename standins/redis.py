"""A throwaway real Redis server for tests (the Celery broker), from Debian's `redis-server`."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

# Starting can race with another process grabbing the free port we picked (as standins/postgres.py).
_START_ATTEMPTS = 3


def find_redis_server() -> str:
    """Return the path of `redis-server`, or raise saying how to install it."""
    found = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise RuntimeError(
            "redis-server not found; install the `redis-server` Debian package (e.g. run .ci/install-redis.sh)."
        )
    return found


def _free_port() -> int:
    """Ask the kernel for a currently unused TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A Redis server in a temp dir, on 127.0.0.1 only, with a password and no persistence."""

    host: str = "127.0.0.1"

    def __init__(self, start_timeout: float = 20.0) -> None:
        """Pick a password; nothing starts until start()."""
        self.password = secrets.token_hex(16)
        self.port = 0
        self.start_timeout = start_timeout
        self._tmpdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def logfile(self) -> Path:
        """Return the server's log file."""
        if self._tmpdir is None:
            raise RuntimeError("RedisServer is not started")
        return self._tmpdir / "redis.log"

    @property
    def pid(self) -> int:
        """Return the server's process id."""
        if self._proc is None:
            raise RuntimeError("RedisServer is not started")
        return self._proc.pid

    def url(self, db: int = 0) -> str:
        """Return a `redis://` URL (with the password) for database `db`."""
        return f"redis://:{self.password}@{self.host}:{self.port}/{db}"

    def __enter__(self) -> RedisServer:
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
        """Start redis-server on a free loopback port and wait until it answers PING."""
        if self._tmpdir is not None:
            raise RuntimeError("RedisServer is already started")
        binary = find_redis_server()
        self._tmpdir = Path(tempfile.mkdtemp(prefix="redis-standin-"))
        try:
            for attempt in range(1, _START_ATTEMPTS + 1):
                self.port = _free_port()
                if self._launch(binary):
                    return
                log = self.logfile.read_text(errors="replace") if self.logfile.exists() else ""
                self._kill()
                if "Address already in use" in log and attempt < _START_ATTEMPTS:
                    continue
                raise RuntimeError(f"redis-server did not start on 127.0.0.1:{self.port}; its log:\n{log[-3000:]}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server at once and remove the temp dir; safe to call twice."""
        self._kill()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def ping(self, timeout: float = 1.0) -> bool:
        """Return True if the server answers an authenticated PING."""
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
                sock.sendall(f"AUTH {self.password}\r\nPING\r\n".encode())
                reply = b""
                while b"+PONG" not in reply and not reply.startswith(b"-"):
                    chunk = sock.recv(256)
                    if not chunk:
                        break
                    reply += chunk
                return b"+PONG" in reply
        except OSError:
            return False

    def _launch(self, binary: str) -> bool:
        """Start one redis-server; return True once it answers, False if it exited."""
        assert self._tmpdir is not None
        # The password goes in through a config file, not argv, so `ps` does not show it.
        conf = self._tmpdir / "redis.conf"
        conf.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            "protected-mode yes\n"
            f"requirepass {self.password}\n"
            # A broker for one test run: nothing to persist.
            'save ""\n'
            "appendonly no\n"
            f"dir {self._tmpdir}\n"
            f"logfile {self.logfile}\n"
            "daemonize no\n"
        )
        conf.chmod(0o600)
        self._proc = subprocess.Popen(
            [binary, str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            if self.ping():
                return True
            time.sleep(0.05)
        return False

    def _kill(self) -> None:
        """SIGKILL the server (nothing is persisted) and reap it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def __repr__(self) -> str:
        """Show where the server listens, not its password."""
        return f"RedisServer(host={self.host!r}, port={self.port})"
