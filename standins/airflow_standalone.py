"""Run the real Airflow components for end-to-end tests, on Airflow 2.10+ and 3.x.

Airflow 3: `airflow api-server`, `scheduler`, `dag-processor` and `triggerer`, LocalExecutor,
SimpleAuthManager (a JWT from POST /auth/token), REST API /api/v2.
Airflow 2: `airflow webserver`, `scheduler` (which also parses DAG files) and `triggerer`,
SequentialExecutor (what `airflow standalone` uses with sqlite), FAB basic auth, REST API /api/v1.

What differs between the lines is decided once, in `AirflowLine.detect()`, from the installed
apache-airflow(-core) distribution of the `airflow` executable's environment.
"""

from __future__ import annotations

import atexit
import base64
import configparser
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import psutil

__all__ = ["AirflowLine", "AirflowStandalone", "AirflowStandaloneError"]

# Two marks on every process we start, so stop() can find anything that escaped the process
# groups (task runners call setpgid) or was orphaned: an env var (survives exec, but Airflow's
# setproctitle() overwrites /proc/<pid>/environ) and an inherited open fd on a marker file
# (survives fork and setproctitle, but not exec with close_fds).
_MARKER_ENV = "AIRFLOW_STANDALONE_HARNESS_ID"

_SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
# Airflow 2: the REST API accepts HTTP basic auth against the FAB user DB with this backend.
# (`airflow.api.auth.backend.basic_auth` is a deprecated alias of it in 2.10/2.11.)
_FAB_BASIC_AUTH = "airflow.providers.fab.auth_manager.api.auth.backend.basic_auth"
# FAB checks the admin's password on every basic-auth request: a werkzeug pbkdf2 hash with few
# iterations keeps that cheap (the default 600k iterations cost ~0.3 s of CPU per API call).
_ADMIN_HASH_ITERATIONS = 1000

# Starting can race with another process grabbing the free port we picked (as standins/postgres.py).
_START_ATTEMPTS = 3
# What uvicorn (Airflow 3; it then exits) and gunicorn (Airflow 2, after 5 tries; the `airflow
# webserver` monitor above it then lingers until its master timeout) log when the port is taken.
_PORT_CLASH_MARKERS = ("error while attempting to bind on address", "can't connect to (")

# Repo root, so the plugin under test is importable in every Airflow process without a pip install.
_REPO_ROOT = Path(__file__).resolve().parents[1]

# Config keys whose values end up in the freshly migrated DB (log_template, default_pool rows);
# the cached template DB is keyed on them so a caller override never reuses a mismatching DB.
_DB_AFFECTING_KEYS = {("logging", "log_filename_template"), ("core", "default_pool_task_slot_count")}

_TERMINAL_RUN_STATES = frozenset({"success", "failed"})


class AirflowStandaloneError(RuntimeError):
    """Raised when an Airflow component dies, an API call fails or a wait times out."""


@dataclass(frozen=True)
class AirflowLine:
    """The installed Airflow release and everything the harness does differently for it."""

    version: str
    major: int
    minor: int

    @classmethod
    def parse(cls, version: str) -> AirflowLine:
        """Build from a version string such as '2.10.3', '3.3.2' or '3.1.0rc1'."""
        match = re.match(r"(\d+)\.(\d+)", version)
        if match is None:
            raise AirflowStandaloneError(f"cannot tell the Airflow line from version {version!r}")
        line = cls(version=version, major=int(match.group(1)), minor=int(match.group(2)))
        if (line.major, line.minor) < (2, 10) or line.major > 3:
            raise AirflowStandaloneError(f"Airflow {version} is not supported by the harness (2.10+ and 3.x are)")
        return line

    @classmethod
    def detect(cls, airflow_bin: str) -> AirflowLine:
        """Read the version of the Airflow installed next to `airflow_bin` (the one place that decides)."""
        return cls.parse(_airflow_version(airflow_bin))

    @property
    def is_airflow2(self) -> bool:
        """True on 2.10/2.11: webserver, no dag processor, SequentialExecutor, FAB basic auth."""
        return self.major == 2

    @property
    def api_prefix(self) -> str:
        """The stable REST API's path prefix."""
        return "/api/v1" if self.is_airflow2 else "/api/v2"

    @property
    def health_path(self) -> str:
        """The unauthenticated health endpoint listing component heartbeats."""
        return f"{self.api_prefix}/health" if self.is_airflow2 else "/api/v2/monitor/health"

    @property
    def api_component(self) -> str:
        """Name of the component serving the REST API (and, on 3.x, the Execution API)."""
        return "webserver" if self.is_airflow2 else "api-server"

    def components(self, triggerer: bool) -> list[tuple[str, list[str]]]:
        """(name, `airflow` arguments) of every long-running component, in start order."""
        # --skip-serve-logs: the log server binds 0.0.0.0 on a fixed port (8793/8794) which would
        # clash between harnesses; the API server/webserver reads local task log files directly.
        names: list[tuple[str, list[str]]] = [
            (self.api_component, ["webserver"] if self.is_airflow2 else ["api-server"]),
            ("scheduler", ["scheduler", "--skip-serve-logs"]),
        ]
        if not self.is_airflow2:
            names.append(("dag-processor", ["dag-processor"]))  # on 2.x the scheduler parses
        if triggerer:
            names.append(("triggerer", ["triggerer", "--skip-serve-logs"]))
        return names

    def health_components(self, triggerer: bool) -> list[str]:
        """Keys of the health response that must report `healthy` before the harness is ready."""
        return ["scheduler"] + ([] if self.is_airflow2 else ["dag_processor"]) + (["triggerer"] if triggerer else [])


@dataclass
class _Component:
    """One long-running Airflow CLI process and its combined stdout/stderr log file."""

    name: str
    args: list[str]
    log_path: Path
    # Overrides of the harness environment for this process only (extra components).
    env: Mapping[str, str] | None = None
    popen: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = field(default=None, repr=False)
    # Size of the (append-mode) log when this process started: what it wrote comes after.
    log_offset: int = 0

    def own_log(self) -> str:
        """Return what this process (not an earlier one in the same file) has logged."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(self.log_offset)
                return fh.read().decode(errors="replace")
        except OSError:
            return ""


def _free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    """Return True if nothing listens on (or holds) 127.0.0.1:`port` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _werkzeug_pbkdf2_hash(password: str, iterations: int = _ADMIN_HASH_ITERATIONS) -> str:
    """Return `password` hashed as werkzeug's generate_password_hash('pbkdf2:sha256:N') would."""
    salt = uuid.uuid4().hex[:16]
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations).hex()
    return f"pbkdf2:sha256:{iterations}${salt}${digest}"


def _tail(path: Path, lines: int = 60) -> str:
    """Return the last `lines` lines of a text file, or a note if it does not exist."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _is_live(proc: psutil.Process) -> bool:
    """Return True if `proc` still runs (a zombie only awaits reaping by its parent: not live)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_gone(procs: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to `timeout` s for `procs` to exit or turn zombie; return those still live."""
    # Not psutil.wait_procs: it counts zombies (children of other dying processes) as alive
    # and so always burns the full timeout.
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if _is_live(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if _is_live(p)]
    return alive


def _default_airflow_bin() -> str:
    """Return the `airflow` executable of the running interpreter's environment."""
    # Prefer the venv's own script: PATH may point at another Airflow, or at none at all.
    candidate = Path(sys.executable).parent / "airflow"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("airflow")
    if found is None:
        raise AirflowStandaloneError("cannot find the `airflow` executable")
    return found


_VERSION_PROBE = """
from importlib import metadata
for dist in ("apache-airflow-core", "apache-airflow"):
    try:
        print(metadata.version(dist))
        break
    except metadata.PackageNotFoundError:
        pass
else:
    print("unknown")
"""


def _interpreter_of(airflow_bin: str) -> str:
    """Return the Python that runs the `airflow` script `airflow_bin` (its shebang, else its dir's python)."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        with open(airflow_bin, "rb") as fh:
            first = fh.readline(512).decode()
        if first.startswith("#!"):
            interpreter = first[2:].strip().split()[0]
            if os.path.basename(interpreter) != "env" and os.path.exists(interpreter):
                return interpreter
    sibling = Path(airflow_bin).parent / "python"
    return str(sibling) if sibling.exists() else sys.executable


def _airflow_version(airflow_bin: str | None = None) -> str:
    """Return the apache-airflow-core (3.x) or apache-airflow (2.x) version installed for `airflow_bin`.

    Without `airflow_bin`, or when it belongs to the running interpreter, read this environment's
    metadata; otherwise ask that environment's Python.
    """
    interpreter = _interpreter_of(airflow_bin) if airflow_bin else sys.executable
    if Path(interpreter).absolute().parent == Path(sys.executable).absolute().parent:
        for dist in ("apache-airflow-core", "apache-airflow"):
            with contextlib.suppress(metadata.PackageNotFoundError):
                return metadata.version(dist)
        return "unknown"
    proc = subprocess.run(
        [interpreter, "-c", _VERSION_PROBE], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    return proc.stdout.strip() or "unknown"


class AirflowStandalone:
    """Throwaway AIRFLOW_HOME plus the real Airflow components of the installed line.

    3.x: `airflow api-server/scheduler/dag-processor/triggerer`; 2.x: `airflow webserver/scheduler/
    triggerer`. The public methods behave the same on both; `line` says which one runs.
    """

    def __init__(
        self,
        home: Path,
        dags_folder: Path,
        config: Mapping[tuple[str, str], str] | None = None,
        env: Mapping[str, str] | None = None,
        *,
        triggerer: bool = True,
        parallelism: int = 4,
        airflow_bin: str | None = None,
        reuse_db_template: bool = True,
    ) -> None:
        """Write AIRFLOW_HOME/airflow.cfg; nothing is started until start()/__enter__."""
        self.home = Path(home).resolve()
        self.dags_folder = Path(dags_folder).resolve()
        self.airflow_bin = airflow_bin or _default_airflow_bin()
        self.line = AirflowLine.detect(self.airflow_bin)
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.timings: dict[str, float] = {}
        self._parallelism = parallelism
        # Generated once: they must stay the same if the components are relaunched on a new port
        # (connections already added with the fernet key, tokens signed with the JWT secret).
        self._secrets = {
            "fernet_key": base64.urlsafe_b64encode(os.urandom(32)).decode(),
            # 64 bytes: shorter keys make every JWT decode log an InsecureKeyLengthWarning.
            "jwt_secret": base64.b64encode(os.urandom(64)).decode(),
            "secret_key": base64.b64encode(os.urandom(16)).decode(),
        }
        self._triggerer = triggerer
        self._caller_config = dict(config or {})
        self._reuse_db_template = reuse_db_template
        self._marker = uuid.uuid4().hex
        self._marker_fd: int | None = None
        self._components: dict[str, _Component] = {}
        # (name, `airflow` arguments, env overrides) added by add_component(), started after the line's own.
        self._extra_components: list[tuple[str, list[str], dict[str, str]]] = []
        self._token: str | None = None
        self._start_attempt = 1
        self._api_listening_confirmed = False
        self.admin_user = "admin"
        self.admin_password = uuid.uuid4().hex
        self._started_at: float | None = None
        self._ready = False
        self._stopped = False

        self.home.mkdir(parents=True, exist_ok=True)
        self.dags_folder.mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(exist_ok=True)
        (self.home / "plugins").mkdir(exist_ok=True)
        self.config = self._build_config()
        self.cfg_path = self.home / "airflow.cfg"
        self._marker_path = self.home / f".harness-{self._marker}"
        self._write_config()
        if not self.line.is_airflow2:
            pw_file = Path(self.config[("core", "simple_auth_manager_passwords_file")])
            pw_file.write_text(json.dumps({self.admin_user: self.admin_password}) + "\n")
        self.env = self._build_env(env or {})

    @property
    def api_prefix(self) -> str:
        """The REST API prefix of this line: '/api/v1' (2.x) or '/api/v2' (3.x)."""
        return self.line.api_prefix

    @property
    def api_component(self) -> str:
        """Name (in component_logs()) of the component serving the REST API."""
        return self.line.api_component

    # ------------------------------------------------------------------ setup

    def _build_config(self) -> dict[tuple[str, str], str]:
        """Return the full (section, key) -> value config for this line, then caller overrides."""
        home = self.home
        parallelism = self._parallelism
        common: dict[tuple[str, str], str] = {
            ("core", "dags_folder"): str(self.dags_folder),
            ("core", "plugins_folder"): str(home / "plugins"),
            ("core", "load_examples"): "False",
            ("core", "parallelism"): str(parallelism),
            ("core", "max_active_tasks_per_dag"): str(parallelism),
            # Secrets must be identical in every process (the CLI included): left unset, each would
            # generate its own random one and could not read what another encrypted or signed.
            ("core", "fernet_key"): self._secrets["fernet_key"],
            ("core", "hostname_callable"): "socket.gethostname",
            # Re-serialize edited DAG files promptly instead of after 30 s.
            ("core", "min_serialized_dag_update_interval"): "1",
            ("database", "sql_alchemy_conn"): f"sqlite:///{home / 'airflow.db'}",
            # Scheduler: idle loop every 0.2 s (default 1 s): a triggered 2-task run takes ~1.2 s instead
            # of ~3 s, for ~6 % of one core while idle.
            ("scheduler", "scheduler_idle_sleep_time"): "0.2",
            ("scheduler", "enable_health_check"): "False",
            ("logging", "base_log_folder"): str(home / "logs"),
            ("logging", "colored_console_log"): "False",
        }
        cfg = {**common, **(self._airflow2_config() if self.line.is_airflow2 else self._airflow3_config())}
        cfg.update(self._caller_config)
        return cfg

    def _airflow3_config(self) -> dict[tuple[str, str], str]:
        """Airflow 3.0-3.3: api-server, LocalExecutor, SimpleAuthManager, a separate dag processor.

        Every key below exists under this name from 3.0.0 to 3.3 (checked against each release's
        config.yml); a key a release does not know would be ignored, not rejected.
        """
        home = self.home
        return {
            # LocalExecutor forks `parallelism` workers up front; 2 cores do not need 32 of them.
            ("core", "executor"): "LocalExecutor",
            # Auth: SimpleAuthManager with one admin whose password we pre-write, so the harness
            # logs in via POST /auth/token. Not `simple_auth_manager_all_admins`: its middleware
            # appends a UI-audience Authorization header to *every* request, Execution API
            # included, where it only works because the task's own header comes first.
            ("core", "auth_manager"): _SIMPLE_AUTH_MANAGER,
            ("core", "simple_auth_manager_all_admins"): "False",
            ("core", "simple_auth_manager_users"): f"{self.admin_user}:admin",
            ("core", "simple_auth_manager_passwords_file"): str(home / "simple_auth_manager_passwords.json"),
            # The scheduler signs task JWTs which the API server validates: one secret for all.
            ("api_auth", "jwt_secret"): self._secrets["jwt_secret"],
            ("api", "secret_key"): self._secrets["secret_key"],
            # Tasks talk to the API server; default is http://localhost:8080, wrong port and maybe ::1.
            ("core", "execution_api_server_url"): f"{self.base_url}/execution/",
            ("api", "host"): "127.0.0.1",
            ("api", "port"): str(self.port),
            ("api", "base_url"): self.base_url,
            ("api", "workers"): "1",
            # The task supervisor's select() loop only re-checks for its exited child every
            # min_heartbeat_interval s (default 5) once the sockets hit EOF, so each finished task
            # keeps its LocalExecutor worker (and an executor slot) busy ~5 s and delays stop().
            ("workers", "min_heartbeat_interval"): "1",
            # Dag processor: notice new/changed files within ~2 s (defaults 300 s / 5 s).
            ("dag_processor", "refresh_interval"): "2",
            ("dag_processor", "bundle_refresh_check_interval"): "1",
            ("dag_processor", "parsing_processes"): "1",
            ("dag_processor", "print_stats_interval"): "0",
            ("logging", "dag_processor_child_process_log_directory"): str(home / "logs" / "dag_processor"),
        }

    def _airflow2_config(self) -> dict[tuple[str, str], str]:
        """Airflow 2.10/2.11: webserver with FAB basic auth, SequentialExecutor, the scheduler parses."""
        home = self.home
        return {
            # What `airflow standalone` runs with sqlite; 2.x refuses LocalExecutor on sqlite.
            ("core", "executor"): "SequentialExecutor",
            # The REST API (/api/v1) with HTTP basic auth against the FAB user the harness creates.
            ("api", "auth_backends"): _FAB_BASIC_AUTH,
            ("webserver", "web_server_host"): "127.0.0.1",
            ("webserver", "web_server_port"): str(self.port),
            ("webserver", "base_url"): self.base_url,
            ("webserver", "workers"): "1",
            ("webserver", "secret_key"): self._secrets["secret_key"],
            # gunicorn loads the whole Flask app before binding; on 2 busy cores that can exceed
            # the default 120 s master / worker timeouts.
            ("webserver", "web_server_master_timeout"): "300",
            ("webserver", "web_server_worker_timeout"): "300",
            ("webserver", "warn_deployment_exposure"): "False",
            # No ~50 example connections in every new DB.
            ("database", "load_default_connections"): "False",
            # DAG parsing runs inside the scheduler: list the folder every 2 s (default 300 s).
            ("scheduler", "dag_dir_list_interval"): "2",
            ("scheduler", "parsing_processes"): "1",
            ("scheduler", "print_stats_interval"): "0",
            ("scheduler", "standalone_dag_processor"): "False",
            ("scheduler", "child_process_log_directory"): str(home / "logs" / "scheduler"),
            ("logging", "dag_processor_manager_log_location"): str(
                home / "logs" / "dag_processor_manager" / "dag_processor_manager.log"
            ),
        }

    def _write_config(self) -> None:
        """Write self.config to AIRFLOW_HOME/airflow.cfg."""
        parser = configparser.ConfigParser(interpolation=None)
        for (section, key), value in self.config.items():
            if not parser.has_section(section):
                parser.add_section(section)
            # Airflow reads the file with its own interpolation; a literal % must be doubled.
            parser.set(section, key, str(value).replace("%", "%%"))
        with self.cfg_path.open("w") as fh:
            parser.write(fh)

    @property
    def plugin_from_wheel(self) -> bool:
        """Whether the venv holds the plugin as an installed wheel (the compat venvs), not an editable install."""
        site = Path(self.airflow_bin).parent.parent / "lib"
        return any(site.glob("python3*/site-packages/airflow_sm_refs/__init__.py"))

    def _import_root(self) -> str:
        """What Airflow's processes find first on ``sys.path``: the repo's test helpers, and the plugin only if no wheel is installed.

        With the plugin installed as a wheel, the processes must run that wheel,
        not this tree: they get a folder holding only ``standins`` and ``tests``
        (the test DAGs import them).
        """
        if not self.plugin_from_wheel:
            return str(_REPO_ROOT)
        root = self.home / "import-root"
        root.mkdir(exist_ok=True)
        for name in ("standins", "tests"):
            link = root / name
            if not link.exists():
                link.symlink_to(_REPO_ROOT / name, target_is_directory=True)
        return str(root)

    def _build_env(self, extra: Mapping[str, str]) -> dict[str, str]:
        """Return os.environ minus inherited Airflow settings, plus AIRFLOW_HOME, PYTHONPATH and `extra`."""
        env = {
            k: v
            for k, v in os.environ.items()
            # AIRFLOW__*/AIRFLOW_CONFIG from the developer's shell or a parent test would silently
            # override our airflow.cfg; _AIRFLOW_PROCESS_CONTEXT etc. must come from Airflow itself.
            if not (k.startswith("AIRFLOW") or k.startswith("_AIRFLOW"))
        }
        env["AIRFLOW_HOME"] = str(self.home)
        env["AIRFLOW_CONFIG"] = str(self.cfg_path)
        # The venv's bin first, so `airflow`/`python` invoked by tasks or Airflow itself match ours.
        env["PATH"] = os.pathsep.join([str(Path(self.airflow_bin).parent), env.get("PATH", "")])
        env["PYTHONPATH"] = os.pathsep.join(p for p in [self._import_root(), env.get("PYTHONPATH", "")] if p)
        # Task processes call the Execution API over HTTP (httpx honours *_PROXY); keep it local.
        no_proxy = ",".join(p for p in ["127.0.0.1", "localhost", env.get("NO_PROXY", "")] if p)
        env["NO_PROXY"] = env["no_proxy"] = no_proxy
        env["PYTHONUNBUFFERED"] = "1"
        # Each component imports ~1000 modules; with PYTHONDONTWRITEBYTECODE (set on this machine)
        # every process recompiles them all (~40% of start-up CPU). Caching bytecode under a
        # separate prefix keeps the source tree/venv untouched while later starts reuse it.
        if "PYTHONPYCACHEPREFIX" not in extra:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "airflow-standalone-pycache")
        env.update(extra)
        env[_MARKER_ENV] = self._marker
        return env

    def _init_db(self) -> None:
        """Create the metadata DB, copying a cached freshly-migrated sqlite DB when possible."""
        db_path = self.home / "airflow.db"
        # A reused home may hold the WAL of an earlier run, which sqlite would replay onto the new DB.
        for stale in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
            stale.unlink(missing_ok=True)
        conn = self.config[("database", "sql_alchemy_conn")]
        if not self._reuse_db_template or conn != f"sqlite:///{db_path}":
            self._migrate_db()
            return
        key_src = json.dumps(
            [self.line.version, self.airflow_bin]
            + sorted(
                [s, k, v]
                for (s, k), v in self.config.items()
                if (s == "database" and k != "sql_alchemy_conn") or (s, k) in _DB_AFFECTING_KEYS
            )
        )
        key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
        cache_dir = Path(tempfile.gettempdir()) / "airflow-standalone-db-cache" / key
        cache_dir.mkdir(parents=True, exist_ok=True)
        template = cache_dir / "airflow.db"
        # flock: concurrent sessions (xdist, two terminals) must not migrate the same template twice.
        with (cache_dir / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not template.exists():
                self._migrate_db()
                # Airflow runs sqlite in WAL mode: fold the -wal file in so one file is a full copy.
                with contextlib.closing(sqlite3.connect(db_path)) as db:
                    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                tmp = cache_dir / f"airflow.db.{os.getpid()}.tmp"
                shutil.copyfile(db_path, tmp)
                os.replace(tmp, template)
                return
        shutil.copyfile(template, db_path)
        if self.line.is_airflow2:
            # The template's admin has the template's password: give it this instance's own.
            with contextlib.closing(sqlite3.connect(db_path)) as db, db:
                updated = db.execute(
                    "UPDATE ab_user SET password = ? WHERE username = ?",
                    (_werkzeug_pbkdf2_hash(self.admin_password), self.admin_user),
                ).rowcount
            if updated != 1:
                raise AirflowStandaloneError(f"template DB {template} has no FAB user {self.admin_user!r}")

    def _migrate_db(self) -> None:
        """Create the schema; on 2.x also the FAB admin user the REST API's basic auth checks."""
        self.run_cli("db", "migrate", timeout=300)
        if self.line.is_airflow2:
            # Also creates FAB's roles and permissions (Admin included) on first use.
            self.run_cli(
                "users", "create", "--username", self.admin_user, "--password", self.admin_password,
                "--role", "Admin", "--firstname", "Harness", "--lastname", "Admin",
                "--email", "admin@example.invalid",
                timeout=300,
            )  # fmt: skip

    # -------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Initialise the DB and launch the components (does not wait for readiness)."""
        if self._components:
            raise AirflowStandaloneError("already started")
        self._started_at = time.monotonic()
        self._stopped = False
        atexit.register(self.stop)  # safety net for callers that forget `with`
        self._marker_path.touch()
        self._marker_fd = os.open(self._marker_path, os.O_RDONLY | os.O_CLOEXEC)
        t0 = time.monotonic()
        self._init_db()
        self.timings["db_init"] = time.monotonic() - t0
        self._start_attempt = 1
        self._launch()

    def _launch(self) -> None:
        """Start every component; first move to another port if ours was taken meanwhile."""
        if not _port_is_free(self.port):
            self._move_to_new_port()
        if self.line.is_airflow2:
            # gunicorn refuses to start while its pid file names a live process; a reused home may
            # hold one from an earlier run whose pid now belongs to something else.
            for stale in ("airflow-webserver.pid", "airflow-webserver-monitor.pid"):
                (self.home / stale).unlink(missing_ok=True)
        for name, args in self.line.components(self._triggerer):
            self._launch_one(name, args)
        for name, args, env in self._extra_components:
            self._launch_one(name, args, env)

    def _launch_one(self, name: str, args: list[str], env: Mapping[str, str] | None = None) -> None:
        """Start one component process, logging to home/<name>.log."""
        comp = _Component(name=name, args=args, log_path=self.home / f"{name}.log", env=env)
        comp.log_file = comp.log_path.open("ab")
        comp.log_offset = comp.log_file.tell()
        comp.popen = subprocess.Popen(
            [self.airflow_bin, *args],
            env={**self.env, **(env or {}), _MARKER_ENV: self._marker},
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            stdout=comp.log_file,
            stderr=subprocess.STDOUT,
            pass_fds=(self._marker_fd,),
            # Own session/process group: stop() can killpg the whole tree, and a Ctrl-C in the
            # test terminal does not race our orderly shutdown.
            start_new_session=True,
        )
        self._components[name] = comp

    def add_component(self, name: str, args: Iterable[str], env: Mapping[str, str] | None = None) -> None:
        """Also run `airflow *args` as a long-running component named `name` (e.g. a Celery worker).

        `env` overrides the harness environment (`self.env`) for this process only, so two workers
        can differ as two hosts would. The component is started with the others (now, if they are
        already running), watched by the same liveness checks, relaunched with them after a port
        clash and stopped with them. Readiness is the caller's to wait for (see `wait_for_log`).
        """
        if name in self._components or any(name == extra[0] for extra in self._extra_components):
            raise AirflowStandaloneError(f"a component named {name!r} already exists")
        spec = (name, list(args), dict(env or {}))
        self._extra_components.append(spec)
        if self._components and not self._stopped:
            self._launch_one(*spec)

    def wait_for_log(self, name: str, pattern: str, timeout: float = 120.0) -> re.Match[str]:
        """Wait until component `name`'s own log matches the regex `pattern`; return the match."""
        comp = self._components.get(name)
        if comp is None:
            raise AirflowStandaloneError(f"no component named {name!r}")
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(comp.own_log())
            if match is not None:
                return match
            self._check_alive()
            if time.monotonic() > deadline:
                raise AirflowStandaloneError(
                    f"{name} did not log /{pattern}/ within {timeout}s; tail of {comp.log_path}:\n"
                    f"{_tail(comp.log_path)}\n{self._diag()}"
                )
            time.sleep(0.25)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until the API server answers and every started component heartbeats as healthy."""
        if not self._components:
            raise AirflowStandaloneError("not started: use `with AirflowStandalone(...)` or call start()")
        deadline = time.monotonic() + timeout
        wanted = self.line.health_components(self._triggerer)
        # 3.x only: 2.x has no Execution API to warm up.
        warmed = self.line.is_airflow2
        last: Any = None
        while time.monotonic() < deadline:
            if self._retry_on_port_clash():
                continue
            self._check_alive()
            if not self._api_listening():
                # Until our own server holds the port, whatever answers there is someone else's
                # (e.g. another harness that took the port first): never take its health for ours.
                last = f"{self.api_component} not listening on port {self.port} yet"
                time.sleep(0.25)
                continue
            try:
                last = self._request("GET", self.line.health_path, auth=False)
            except (OSError, AirflowStandaloneError) as exc:
                last = exc
            else:
                if not isinstance(last, dict):
                    time.sleep(0.25)
                    continue
                if not warmed:
                    # The Execution API sub-app initialises lazily on its first request (1-2.5 s of
                    # CPU); pay that now, while the other components may still be starting, rather
                    # than inside the first task's `PATCH .../run` call.
                    with contextlib.suppress(OSError, AirflowStandaloneError):
                        self._request("GET", "/execution/health", auth=False)
                    warmed = True
                    continue
                if all((last.get(c) or {}).get("status") == "healthy" for c in wanted):
                    if self._started_at is not None and "ready" not in self.timings:
                        self.timings["ready"] = time.monotonic() - self._started_at
                    self._ready = True
                    return
            time.sleep(0.25)
        raise AirflowStandaloneError(f"Airflow not ready after {timeout}s; last health: {last!r}\n{self._diag()}")

    def _retry_on_port_clash(self) -> bool:
        """If the API component died because its port was taken, relaunch everything on a new port.

        Every component gets the new port (tasks reach the Execution API through the scheduler's
        and triggerer's config), so all of them restart; the DB and its contents stay. Returns True
        if it relaunched; raises once _START_ATTEMPTS launches have clashed (or the port is pinned).
        """
        comp = self._components.get(self.line.api_component)
        if comp is None or comp.popen is None or self._api_listening_confirmed:
            return False
        text = comp.own_log().lower()
        if not any(marker in text for marker in _PORT_CLASH_MARKERS):
            return False
        pinned = {("api", "port"), ("webserver", "web_server_port")} & set(self._caller_config)
        if self._start_attempt >= _START_ATTEMPTS or pinned:
            raise AirflowStandaloneError(
                f"{comp.name} could not bind 127.0.0.1:{self.port} (attempt {self._start_attempt}); "
                f"tail of {comp.log_path}:\n{_tail(comp.log_path)}"
            )
        old_port = self.port
        log_paths = [c.log_path for c in self._components.values()]
        self._terminate_components()
        self._components.clear()
        self._start_attempt += 1
        self._api_listening_confirmed = False
        self._move_to_new_port()
        for path in log_paths:
            with contextlib.suppress(OSError), path.open("a") as fh:
                fh.write(f"\n--- harness: port {old_port} was taken; relaunching on port {self.port} ---\n")
        self._launch()
        return True

    def _api_listening(self) -> bool:
        """Return True once a process of our API component listens on self.port (then remembered)."""
        if self._api_listening_confirmed:
            return True
        comp = self._components.get(self.line.api_component)
        if comp is None or comp.popen is None:
            return False
        try:
            root = psutil.Process(comp.popen.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return False
        for proc in procs:
            try:
                # psutil >= 6 renamed connections() to net_connections().
                conns = getattr(proc, "net_connections", proc.connections)(kind="tcp")
            except psutil.Error:
                continue
            if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self.port for c in conns):
                self._api_listening_confirmed = True
                return True
        return False

    def _move_to_new_port(self) -> None:
        """Pick another free port and rewrite airflow.cfg for it (secrets and DB stay as they are)."""
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.config = self._build_config()
        self._write_config()
        self._token = None

    def stop(self, grace: float = 3.0) -> None:
        """Terminate every process we started (whole trees, incl. escaped task runners); idempotent."""
        if self._stopped:
            return
        self._stopped = True
        t_stop = time.monotonic()
        atexit.unregister(self.stop)
        self._terminate_components(grace)
        if self._marker_fd is not None:
            os.close(self._marker_fd)
            self._marker_fd = None
        self._marker_path.unlink(missing_ok=True)
        if self._started_at is not None:
            self.timings["stop"] = time.monotonic() - t_stop

    def _terminate_components(self, grace: float = 3.0) -> None:
        """Terminate every process we started and close the component logs (the marker stays)."""
        # Snapshot the trees *before* signalling: once a parent dies its children are reparented
        # and no longer reachable via children().
        # Task runners get their own process group (Airflow calls setpgid), so killpg alone misses them.
        procs = {p.pid: p for p in self.running_processes()}
        for comp in self._components.values():
            if comp.popen is None or comp.popen.poll() is not None:
                continue
            if comp.name == self.line.api_component:
                # Nothing to flush, and after uvicorn's 0.2 s shutdown CPython spends ~5 s of CPU
                # finalising the FastAPI app (2.x: gunicorn waits for its workers): kill it outright.
                self._killpg(comp, signal.SIGKILL)
            else:
                # SIGTERM the component's main process only, as `airflow standalone` does. Signalling
                # the whole group would also kill idle LocalExecutor workers, possibly while one holds
                # the task-queue lock; the rest then never receive their poison pill and the
                # scheduler's LocalExecutor.end() waits on them forever.
                comp.popen.send_signal(signal.SIGTERM)
        # Wait for the main processes only: once one has shut down, whatever it leaves behind (an
        # idle worker it failed to join, a task runner) has no purpose and is killed right away.
        roots = [procs[c.popen.pid] for c in self._components.values() if c.popen and c.popen.pid in procs]
        _wait_gone(roots, grace)
        for comp in self._components.values():
            self._killpg(comp, signal.SIGKILL)
        alive = [p for p in procs.values() if _is_live(p)]
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        _wait_gone(alive, grace)
        # Anything forked during shutdown (e.g. a LocalExecutor worker respawn) carries a marker.
        for _ in range(3):
            stragglers = self._marked_processes()
            if not stragglers:
                break
            for proc in stragglers:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            _wait_gone(stragglers, grace)
        for comp in self._components.values():
            if comp.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    comp.popen.wait(timeout=grace)  # reap, so no zombies stay behind
            if comp.log_file is not None:
                comp.log_file.close()

    @staticmethod
    def _killpg(comp: _Component, sig: signal.Signals) -> None:
        """Send `sig` to the component's process group (its pgid is its pid: start_new_session)."""
        if comp.popen is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(comp.popen.pid, sig)

    def __enter__(self) -> AirflowStandalone:
        """Start the components; a failed start still cleans up."""
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Always stop everything."""
        self.stop()

    # ------------------------------------------------------------------- CLI

    def run_cli(self, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run `airflow *args` with this environment and return the completed process."""
        proc = subprocess.run(
            [self.airflow_bin, *args],
            env=self.env,
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AirflowStandaloneError(
                f"`airflow {' '.join(args)}` exited {proc.returncode}\n"
                f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
            )
        return proc

    # ------------------------------------------------------------------- API

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None, timeout: float = 60.0) -> str:
        """Wait for readiness and for `dag_id` to be parsed, unpause it, start a manual run, return its run_id."""
        deadline = time.monotonic() + timeout
        if not self._ready:
            self.wait_ready(timeout)
        quoted = urllib.parse.quote(dag_id, safe="")
        errors_seen_at: float | None = None
        while True:
            self._check_alive()
            status, _ = self._request_status("GET", f"{self.api_prefix}/dags/{quoted}")
            if status == 200:
                break
            if status == 401:
                self._token = None  # re-login on the next call
            errors = self._import_errors()
            if errors:
                # Some file failed to import. Give a good file of the same parsing pass a moment to
                # show up, then fail fast with the traceback instead of waiting out the timeout.
                errors_seen_at = errors_seen_at or time.monotonic()
                if time.monotonic() - errors_seen_at > 5:
                    raise AirflowStandaloneError(f"DAG {dag_id!r} not found; import errors:\n{errors}")
            if time.monotonic() > deadline:
                raise AirflowStandaloneError(f"DAG {dag_id!r} not parsed after {timeout}s\n{self._diag()}")
            time.sleep(0.25)
        self._request("PATCH", f"{self.api_prefix}/dags/{quoted}", {"is_paused": False})
        body: dict[str, Any] = {"conf": dict(conf or {})}
        if not self.line.is_airflow2:
            body["logical_date"] = None  # 3.x: required, and null means "no logical date"
        run = self._request("POST", f"{self.api_prefix}/dags/{quoted}/dagRuns", body)
        return str(run["dag_run_id"])

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 120.0) -> str:
        """Poll until the DAG run is success/failed and return that state."""
        deadline = time.monotonic() + timeout
        path = (
            f"{self.api_prefix}/dags/{urllib.parse.quote(dag_id, safe='')}"
            f"/dagRuns/{urllib.parse.quote(run_id, safe='')}"
        )
        state = None
        while time.monotonic() < deadline:
            self._check_alive()
            state = self._request("GET", path).get("state")
            if state in _TERMINAL_RUN_STATES:
                return str(state)
            time.sleep(0.25)
        raise AirflowStandaloneError(
            f"run {dag_id}/{run_id} still {state!r} after {timeout}s; tasks: "
            f"{self.task_states(dag_id, run_id)}\n{self._diag()}"
        )

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        """Return {task_id (or task_id[map_index] when mapped): state} for one run."""
        states: dict[str, str | None] = {}
        for ti in self._task_instances(dag_id, run_id):
            key = ti["task_id"] if ti.get("map_index", -1) < 0 else f"{ti['task_id']}[{ti['map_index']}]"
            states[key] = ti.get("state")
        return states

    def task_log_files(self, dag_id: str, run_id: str, settle_timeout: float = 10.0) -> list[Path]:
        """Return the run's task log files under home/logs, once finished tasks' logs are complete."""
        # A log file is written by the task's supervisor (a LocalExecutor worker), which goes on
        # draining the task's sockets for up to [workers] min_heartbeat_interval after the state
        # turned final, so a just-finished run may still lack its last lines. While it works, the
        # supervisor's (and task process's) title contains the TI id: wait for those to go.
        # On 2.x TIs have no id; `airflow tasks run <dag> <task> <run> --local` and its forked
        # `airflow task runner: <dag> <task> <run> <job>` name dag, task and run instead.
        done = [
            {str(ti["id"])} if "id" in ti else {dag_id, str(ti["task_id"]), run_id}
            for ti in self._task_instances(dag_id, run_id)
            if ti.get("state") not in (None, "scheduled", "queued", "running", "deferred", "restarting")
        ]
        deadline = time.monotonic() + settle_timeout
        while done and time.monotonic() < deadline:
            titles: list[set[str]] = []
            for proc in self.running_processes():
                with contextlib.suppress(psutil.Error):
                    titles.append(set(" ".join(proc.cmdline()).split()))
            if not any(marks <= words for marks in done for words in titles):
                break
            time.sleep(0.1)
        logs = self.home / "logs"
        # Default template: dag_id=<d>/run_id=<r>/task_id=<t>/[map_index=<i>/]attempt=<n>.log
        run_dir = logs / f"dag_id={dag_id}" / f"run_id={run_id}"
        if run_dir.is_dir():
            return sorted(run_dir.rglob("*.log"))
        # A caller-supplied log_filename_template: fall back to matching both ids in the path.
        return sorted(
            p
            for p in logs.rglob("*.log")
            if "dag_processor" not in p.relative_to(logs).parts[:1]
            and dag_id in str(p.relative_to(logs))
            and run_id in str(p.relative_to(logs))
        )

    def running_processes(self) -> list[psutil.Process]:
        """Return every live process of this harness: component trees plus marked escapees."""
        found: dict[int, psutil.Process] = {}
        for comp in self._components.values():
            if comp.popen is None:
                continue
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(comp.popen.pid)
                for proc in [root, *root.children(recursive=True)]:
                    found[proc.pid] = proc
        for proc in self._marked_processes():
            found.setdefault(proc.pid, proc)
        return [p for p in found.values() if _is_live(p)]

    def component_logs(self) -> dict[str, Path]:
        """Return {component name: its stdout/stderr log file}."""
        return {name: comp.log_path for name, comp in self._components.items()}

    # -------------------------------------------------------------- internals

    def _task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Return the REST API task-instance records of one run (all pages)."""
        path = (
            f"{self.api_prefix}/dags/{urllib.parse.quote(dag_id, safe='')}"
            f"/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances"
        )
        tis: list[dict[str, Any]] = []
        while True:
            page = self._request("GET", f"{path}?limit=100&offset={len(tis)}")
            batch = page.get("task_instances", [])
            tis.extend(batch)
            if not batch or len(tis) >= page.get("total_entries", 0):
                return tis

    def _import_errors(self) -> str:
        """Return the current DAG import errors as text ('' if none)."""
        try:
            data = self._request("GET", f"{self.api_prefix}/importErrors")
        except AirflowStandaloneError:
            return ""
        return "\n".join(f"{e.get('filename')}: {e.get('stack_trace')}" for e in data.get("import_errors", []))

    def api_request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, *, headers: Mapping[str, str] | None = None
    ) -> Any:
        """Call the REST API as the admin (path includes the prefix, see `api_prefix`); return the JSON.

        `headers` are sent as well (e.g. 3.3's `Airflow-Connection-Test-Token`).
        """
        return self._request(method, path, body, headers=headers)

    def _get_token(self) -> str:
        """Log in as the admin user and return the API JWT (3.x)."""
        body = {"username": self.admin_user, "password": self.admin_password}
        data = self._request("POST", "/auth/token", body, auth=False)
        return str(data["access_token"])

    def _request_status(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        auth: bool = True,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """Do one HTTP call to the API server; return (status, decoded JSON or text)."""
        sent = {"Accept": "application/json", **(headers or {})}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        if auth and self.line.is_airflow2:
            basic = base64.b64encode(f"{self.admin_user}:{self.admin_password}".encode()).decode()
            sent["Authorization"] = f"Basic {basic}"
        elif auth:
            if self._token is None:
                self._token = self._get_token()
            sent["Authorization"] = f"Bearer {self._token}"
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=sent)
        # Empty ProxyHandler: never send 127.0.0.1 traffic through an *_PROXY from the environment.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=30) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        text = raw.decode(errors="replace")
        try:
            return status, json.loads(text) if text else None
        except json.JSONDecodeError:
            return status, text

    def _request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        auth: bool = True,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Do one HTTP call and return the JSON body; raise on a non-2xx status."""
        status, payload = self._request_status(method, path, body, auth, headers=headers)
        if status == 401 and auth:
            self._token = None  # token expired or secret rotated: fetch a new one once
            status, payload = self._request_status(method, path, body, auth, headers=headers)
        if not 200 <= status < 300:
            raise AirflowStandaloneError(f"{method} {path} -> HTTP {status}: {payload}")
        return payload

    def _check_alive(self) -> None:
        """Raise with the component's log tail if any component process has exited."""
        for comp in self._components.values():
            if comp.popen is not None and comp.popen.poll() is not None:
                raise AirflowStandaloneError(
                    f"{comp.name} exited with {comp.popen.returncode}; tail of {comp.log_path}:\n"
                    f"{_tail(comp.log_path)}"
                )

    def _diag(self) -> str:
        """Return the tails of all component logs, for error messages."""
        return "\n".join(
            f"--- {comp.name} ({comp.log_path}) ---\n{_tail(comp.log_path, 25)}" for comp in self._components.values()
        )

    def _marked_processes(self) -> list[psutil.Process]:
        """Return live processes (other than us) carrying this harness's env or fd marker."""
        found: list[psutil.Process] = []
        marker_path = str(self._marker_path)
        for proc in psutil.process_iter():
            if proc.pid == os.getpid():
                continue
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                marked = proc.environ().get(_MARKER_ENV) == self._marker
                if not marked:
                    fd_dir = f"/proc/{proc.pid}/fd"
                    for fd in os.listdir(fd_dir):
                        with contextlib.suppress(OSError):
                            if os.readlink(f"{fd_dir}/{fd}") == marker_path:
                                marked = True
                                break
                if marked:
                    found.append(proc)
            except (psutil.Error, OSError):
                continue
        return found
