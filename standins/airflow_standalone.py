"""Run the real Airflow 3 components (API server, scheduler, dag processor, triggerer) for end-to-end tests."""

from __future__ import annotations

import atexit
import base64
import configparser
import contextlib
import fcntl
import hashlib
import json
import os
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
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import psutil

__all__ = ["AirflowStandalone", "AirflowStandaloneError"]

# Env var stamped on every process we start; children (forks, task runners in their own process
# group) inherit it, so stop() can find and kill anything that escaped the process groups.
_MARKER_ENV = "AIRFLOW_STANDALONE_HARNESS_ID"

_SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"

# Repo root, so the plugin under test is importable in every Airflow process without a pip install.
_REPO_ROOT = Path(__file__).resolve().parents[1]

# Config keys whose values end up in the freshly migrated DB (log_template, default_pool rows);
# the cached template DB is keyed on them so a caller override never reuses a mismatching DB.
_DB_AFFECTING_KEYS = {("logging", "log_filename_template"), ("core", "default_pool_task_slot_count")}

_TERMINAL_RUN_STATES = frozenset({"success", "failed"})


class AirflowStandaloneError(RuntimeError):
    """Raised when an Airflow component dies, an API call fails or a wait times out."""


@dataclass
class _Component:
    """One long-running Airflow CLI process and its combined stdout/stderr log file."""

    name: str
    args: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = field(default=None, repr=False)


def _free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 60) -> str:
    """Return the last `lines` lines of a text file, or a note if it does not exist."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


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


def _airflow_version() -> str:
    """Return the installed apache-airflow-core version (key for the template DB cache)."""
    for dist in ("apache-airflow-core", "apache-airflow"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(dist)
    return "unknown"


class AirflowStandalone:
    """Throwaway AIRFLOW_HOME plus real `airflow api-server/scheduler/dag-processor/triggerer` processes."""

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
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.airflow_bin = airflow_bin or _default_airflow_bin()
        self.timings: dict[str, float] = {}
        self._triggerer = triggerer
        self._caller_config = dict(config or {})
        self._reuse_db_template = reuse_db_template
        self._marker = uuid.uuid4().hex
        self._components: dict[str, _Component] = {}
        self._token: str | None = None
        self._started_at: float | None = None
        self._stopped = False

        self.home.mkdir(parents=True, exist_ok=True)
        self.dags_folder.mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(exist_ok=True)
        (self.home / "plugins").mkdir(exist_ok=True)
        self.config = self._build_config(parallelism)
        self.cfg_path = self.home / "airflow.cfg"
        self._write_config()
        self.env = self._build_env(env or {})

    # ------------------------------------------------------------------ setup

    def _build_config(self, parallelism: int) -> dict[tuple[str, str], str]:
        """Return the full (section, key) -> value config: harness defaults, then caller overrides."""
        home = self.home
        cfg: dict[tuple[str, str], str] = {
            ("core", "dags_folder"): str(self.dags_folder),
            ("core", "plugins_folder"): str(home / "plugins"),
            ("core", "executor"): "LocalExecutor",
            ("core", "load_examples"): "False",
            # LocalExecutor forks `parallelism` workers up front; 2 cores do not need 32 of them.
            ("core", "parallelism"): str(parallelism),
            ("core", "max_active_tasks_per_dag"): str(parallelism),
            # Auth: every API caller is admin, so the harness needs no login; a token is still fetched.
            ("core", "auth_manager"): _SIMPLE_AUTH_MANAGER,
            ("core", "simple_auth_manager_all_admins"): "True",
            # Secrets must be identical in every process: the scheduler signs task JWTs which the
            # API server validates. Left unset, each process would generate its own random one.
            ("core", "fernet_key"): base64.urlsafe_b64encode(os.urandom(32)).decode(),
            ("api_auth", "jwt_secret"): base64.b64encode(os.urandom(32)).decode(),
            ("api", "secret_key"): base64.b64encode(os.urandom(16)).decode(),
            # Tasks talk to the API server; default is http://localhost:8080, wrong port and maybe ::1.
            ("core", "execution_api_server_url"): f"{self.base_url}/execution/",
            ("core", "hostname_callable"): "socket.gethostname",
            # Re-serialize edited DAG files promptly instead of after 30 s.
            ("core", "min_serialized_dag_update_interval"): "1",
            ("database", "sql_alchemy_conn"): f"sqlite:///{home / 'airflow.db'}",
            ("api", "host"): "127.0.0.1",
            ("api", "port"): str(self.port),
            ("api", "base_url"): self.base_url,
            ("api", "workers"): "1",
            # Scheduler: wake up quickly so a queued run / finished task is acted on within ~0.5 s.
            ("scheduler", "scheduler_idle_sleep_time"): "0.5",
            ("scheduler", "enable_health_check"): "False",
            # Dag processor: notice new/changed files within ~2 s (defaults 300 s / 5 s).
            ("dag_processor", "refresh_interval"): "2",
            ("dag_processor", "bundle_refresh_check_interval"): "1",
            ("dag_processor", "parsing_processes"): "1",
            ("dag_processor", "print_stats_interval"): "0",
            ("logging", "base_log_folder"): str(home / "logs"),
            ("logging", "dag_processor_child_process_log_directory"): str(home / "logs" / "dag_processor"),
            ("logging", "colored_console_log"): "False",
        }
        cfg.update(self._caller_config)
        return cfg

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
        env["PYTHONPATH"] = os.pathsep.join(p for p in [str(_REPO_ROOT), env.get("PYTHONPATH", "")] if p)
        # Task processes call the Execution API over HTTP (httpx honours *_PROXY); keep it local.
        no_proxy = ",".join(p for p in ["127.0.0.1", "localhost", env.get("NO_PROXY", "")] if p)
        env["NO_PROXY"] = env["no_proxy"] = no_proxy
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra)
        env[_MARKER_ENV] = self._marker
        return env

    def _init_db(self) -> None:
        """Create the metadata DB, copying a cached freshly-migrated sqlite DB when possible."""
        db_path = self.home / "airflow.db"
        conn = self.config[("database", "sql_alchemy_conn")]
        if not self._reuse_db_template or conn != f"sqlite:///{db_path}":
            self.run_cli("db", "migrate", timeout=300)
            return
        key_src = json.dumps(
            [_airflow_version(), self.airflow_bin]
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
                self.run_cli("db", "migrate", timeout=300)
                # Airflow runs sqlite in WAL mode: fold the -wal file in so one file is a full copy.
                with contextlib.closing(sqlite3.connect(db_path)) as db:
                    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                tmp = cache_dir / f"airflow.db.{os.getpid()}.tmp"
                shutil.copyfile(db_path, tmp)
                os.replace(tmp, template)
                return
        shutil.copyfile(template, db_path)

    # -------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Initialise the DB and launch the components (does not wait for readiness)."""
        if self._components:
            raise AirflowStandaloneError("already started")
        self._started_at = time.monotonic()
        atexit.register(self.stop)
        t0 = time.monotonic()
        self._init_db()
        self.timings["db_init"] = time.monotonic() - t0
        names: list[tuple[str, list[str]]] = [
            ("api-server", ["api-server"]),
            # --skip-serve-logs: the log server binds 0.0.0.0 on a fixed port (8793/8794) which
            # would clash between harnesses; the API server reads local task log files directly.
            ("scheduler", ["scheduler", "--skip-serve-logs"]),
            ("dag-processor", ["dag-processor"]),
        ]
        if self._triggerer:
            names.append(("triggerer", ["triggerer", "--skip-serve-logs"]))
        for name, args in names:
            comp = _Component(name=name, args=args, log_path=self.home / f"{name}.log")
            comp.log_file = comp.log_path.open("ab")
            comp.popen = subprocess.Popen(
                [self.airflow_bin, *args],
                env=self.env,
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=comp.log_file,
                stderr=subprocess.STDOUT,
                # Own session/process group: stop() can killpg the whole tree, and a Ctrl-C in the
                # test terminal does not race our orderly shutdown.
                start_new_session=True,
            )
            self._components[name] = comp

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until the API server answers and every started component heartbeats as healthy."""
        deadline = time.monotonic() + timeout
        wanted = ["scheduler", "dag_processor"] + (["triggerer"] if self._triggerer else [])
        last: Any = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                last = self._request("GET", "/api/v2/monitor/health", auth=False)
            except (OSError, AirflowStandaloneError) as exc:
                last = exc
            else:
                if all((last.get(c) or {}).get("status") == "healthy" for c in wanted):
                    if self._started_at is not None and "ready" not in self.timings:
                        self.timings["ready"] = time.monotonic() - self._started_at
                    return
            time.sleep(0.25)
        raise AirflowStandaloneError(f"Airflow not ready after {timeout}s; last health: {last!r}\n{self._diag()}")

    def stop(self, grace: float = 5.0) -> None:
        """Terminate every process we started (whole trees, incl. escaped task runners); idempotent."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        # Snapshot the trees *before* signalling: once a parent dies its children are reparented
        # and no longer reachable via children().
        procs: dict[int, psutil.Process] = {}
        for comp in self._components.values():
            if comp.popen is None:
                continue
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(comp.popen.pid)
                procs[root.pid] = root
                for child in root.children(recursive=True):
                    procs[child.pid] = child
        # Task runners get their own process group (Airflow calls setpgid), so killpg misses them.
        for proc in self._marked_processes():
            procs.setdefault(proc.pid, proc)
        for comp in self._components.values():
            if comp.popen is not None and comp.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(comp.popen.pid, signal.SIGTERM)
        for proc in procs.values():
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _, alive = psutil.wait_procs(list(procs.values()), timeout=grace)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        for comp in self._components.values():
            if comp.popen is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(comp.popen.pid, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=grace)
        # Anything forked during shutdown (e.g. a worker respawn) still carries the marker.
        for _ in range(3):
            stragglers = self._marked_processes()
            if not stragglers:
                break
            for proc in stragglers:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            psutil.wait_procs(stragglers, timeout=grace)
        for comp in self._components.values():
            if comp.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    comp.popen.wait(timeout=grace)  # reap, so no zombies stay behind
            if comp.log_file is not None:
                comp.log_file.close()

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
        """Wait for `dag_id` to be parsed, unpause it, create a manual run and return its run_id."""
        deadline = time.monotonic() + timeout
        quoted = urllib.parse.quote(dag_id, safe="")
        while True:
            self._check_alive()
            status, _ = self._request_status("GET", f"/api/v2/dags/{quoted}")
            if status == 200:
                break
            errors = self._import_errors()
            if errors:
                raise AirflowStandaloneError(f"DAG {dag_id!r} not found; import errors:\n{errors}")
            if time.monotonic() > deadline:
                raise AirflowStandaloneError(f"DAG {dag_id!r} not parsed after {timeout}s\n{self._diag()}")
            time.sleep(0.25)
        self._request("PATCH", f"/api/v2/dags/{quoted}", {"is_paused": False})
        body = {"logical_date": None, "conf": dict(conf or {})}
        run = self._request("POST", f"/api/v2/dags/{quoted}/dagRuns", body)
        return str(run["dag_run_id"])

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 120.0) -> str:
        """Poll until the DAG run is success/failed and return that state."""
        deadline = time.monotonic() + timeout
        path = f"/api/v2/dags/{urllib.parse.quote(dag_id, safe='')}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
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
        path = (
            f"/api/v2/dags/{urllib.parse.quote(dag_id, safe='')}"
            f"/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances"
        )
        states: dict[str, str | None] = {}
        offset = 0
        while True:
            page = self._request("GET", f"{path}?limit=100&offset={offset}")
            tis = page.get("task_instances", [])
            for ti in tis:
                key = ti["task_id"] if ti.get("map_index", -1) < 0 else f"{ti['task_id']}[{ti['map_index']}]"
                states[key] = ti.get("state")
            offset += len(tis)
            if not tis or offset >= page.get("total_entries", 0):
                return states

    def task_log_files(self, dag_id: str, run_id: str) -> list[Path]:
        """Return the task log files of one run under home/logs (all tasks, all attempts)."""
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

    def component_logs(self) -> dict[str, Path]:
        """Return {component name: its stdout/stderr log file}."""
        return {name: comp.log_path for name, comp in self._components.items()}

    # -------------------------------------------------------------- internals

    def _import_errors(self) -> str:
        """Return the current DAG import errors as text ('' if none)."""
        try:
            data = self._request("GET", "/api/v2/importErrors")
        except AirflowStandaloneError:
            return ""
        return "\n".join(f"{e.get('filename')}: {e.get('stack_trace')}" for e in data.get("import_errors", []))

    def _get_token(self) -> str:
        """Fetch a JWT from the all-admins SimpleAuthManager token endpoint."""
        data = self._request("GET", "/auth/token", auth=False)
        return str(data["access_token"])

    def _request_status(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, auth: bool = True
    ) -> tuple[int, Any]:
        """Do one HTTP call to the API server; return (status, decoded JSON or text)."""
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if auth:
            if self._token is None:
                self._token = self._get_token()
            headers["Authorization"] = f"Bearer {self._token}"
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
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

    def _request(self, method: str, path: str, body: Mapping[str, Any] | None = None, auth: bool = True) -> Any:
        """Do one HTTP call and return the JSON body; raise on a non-2xx status."""
        status, payload = self._request_status(method, path, body, auth)
        if status == 401 and auth:
            self._token = None  # token expired or secret rotated: fetch a new one once
            status, payload = self._request_status(method, path, body, auth)
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
        """Return live processes (other than us) whose environment carries this harness's marker."""
        found: list[psutil.Process] = []
        needle = self._marker
        for proc in psutil.process_iter():
            if proc.pid == os.getpid():
                continue
            try:
                if proc.environ().get(_MARKER_ENV) == needle and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except psutil.Error:
                continue
        return found
