"""Task processes for the per-worker cache tests and benchmark.

Airflow runs every task attempt in a process forked from a parent that has
already imported Airflow. :class:`TaskProcesses` does the same: it starts one
warm parent (this file run as ``serve``), which forks as many task processes
as asked, holds them at a barrier, and releases them together. Each looks a
connection up with ``BaseHook.get_connection`` and reports a digest of the
field it read (never the value), what the plugin logged, and when it started
and finished. :func:`spawn_lookups` does the same with fresh interpreters
(this file run as ``lookup``), to show nothing depends on what a fork inherits.

The per-batch environment (backend kwargs, ``AIRFLOW_CONN_*``) is applied in
each task process only, after the fork.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
_PLUGIN_LOGGER = "airflow_sm_refs"


def digest(value: str | None) -> str:
    """What a task process reports instead of the value it read."""
    return hashlib.sha256((value or "").encode()).hexdigest()


# --- inside a task process ---------------------------------------------------
class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[list[str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append([record.levelname, record.getMessage()])


def apply_env(env: Mapping[str, str | None]) -> None:
    """Set (or, for ``None``, unset) each variable: a task's configuration, applied after the fork."""
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _lookup(conn_id: str, field: str, capture: _Capture) -> dict[str, Any]:
    from airflow_sm_refs._compat import base_hook

    started = time.time()
    try:
        value = getattr(base_hook().get_connection(conn_id), field)
        result: dict[str, Any] = {"ok": True, "digest": digest(value)}
    except BaseException as exc:  # noqa: BLE001 - reported to the test, which judges it
        # Before Airflow 3.2.2 our error arrives wrapped in SecretLookupAborted.
        error = getattr(exc, "error", exc)
        result = {"ok": False, "error": type(error).__name__, "message": str(error)}
    result.update(pid=os.getpid(), start=started, end=time.time(), log=capture.lines)
    return result


def _prepare(env: Mapping[str, str | None]) -> _Capture:
    apply_env(env)
    capture = _Capture()
    logger = logging.getLogger(_PLUGIN_LOGGER)
    logger.addHandler(capture)
    logger.setLevel(logging.INFO)
    return capture


def write_result(path: str, result: dict[str, Any]) -> None:
    """Write a task process's result whole, or not at all (a reader never sees half of it)."""
    with open(path + ".part", "w") as f:
        json.dump(result, f)
    os.replace(path + ".part", path)


def _task_process(command: dict[str, Any], barrier: Barrier, result_path: str) -> None:
    capture = _prepare(command["env"])
    barrier.wait()
    write_result(result_path, _lookup(command["conn_id"], command["field"], capture))


# --- in the warm parent ------------------------------------------------------
class Barrier:
    """Holds forked task processes until every one is ready, then lets them all go at once.

    Two pipes, made before the forks: each task process writes a byte to the first to say it is
    ready, then reads the second, which returns (at EOF) once the parent closes its write end.
    """

    def __init__(self) -> None:
        self._ready_r, self._ready_w = os.pipe()
        self._go_r, self._go_w = os.pipe()

    def wait(self) -> None:
        """In a task process: say ready, and return when released."""
        os.close(self._ready_r)
        os.close(self._go_w)
        os.write(self._ready_w, b".")
        os.close(self._ready_w)
        os.read(self._go_r, 1)  # returns at EOF: when the parent closes the write end, all go at once

    def wait_ready(self, n: int) -> None:
        """In the parent, once the ``n`` task processes are forked: wait until each is ready (or gone)."""
        os.close(self._ready_w)
        os.close(self._go_r)
        ready = 0
        while ready < n:
            chunk = os.read(self._ready_r, n)
            if not chunk:
                break
            ready += len(chunk)
        os.close(self._ready_r)

    def release(self) -> None:
        """In the parent: every task process goes on now."""
        os.close(self._go_w)


def fork_task(work: Callable[..., None], *args: Any) -> int:
    """Fork a task process that runs ``work(*args)`` and exits, skipping the parent's exit handlers.

    :return: the task process's pid (in the parent; the task process never returns)
    """
    pid = os.fork()
    if pid:
        return pid
    status = 0
    try:
        work(*args)
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        status = 1
    finally:
        sys.stderr.flush()
        os._exit(status)


def read_results(results_dir: str, n: int, crashed: dict[str, Any]) -> list[dict[str, Any]]:
    """What task processes ``0`` to ``n - 1`` wrote (``crashed`` for one that wrote nothing), then remove the folder."""
    results = []
    for i in range(n):
        path = os.path.join(results_dir, f"{i}.json")
        try:
            with open(path) as f:
                results.append(json.load(f))
            os.unlink(path)
        except FileNotFoundError:
            results.append(dict(crashed))
    os.rmdir(results_dir)
    return results


def _run_batch(command: dict[str, Any]) -> list[dict[str, Any]]:
    n = int(command["n"])
    results_dir = tempfile.mkdtemp(prefix="task-results-")
    barrier = Barrier()
    pids = [fork_task(_task_process, command, barrier, os.path.join(results_dir, f"{i}.json")) for i in range(n)]
    barrier.wait_ready(n)
    barrier.release()  # every task process starts its lookup now
    for pid in pids:
        os.waitpid(pid, 0)
    crashed = {"ok": False, "error": "Crashed", "message": "task process wrote no result", "log": []}
    return read_results(results_dir, n, crashed)


def _warm_imports() -> None:
    """What a worker has imported before it forks a task process."""
    import boto3  # noqa: F401
    import botocore.session  # noqa: F401
    from airflow.providers.amazon.aws.hooks import base_aws  # noqa: F401
    from airflow.providers.amazon.aws.secrets import secrets_manager  # noqa: F401
    from airflow.providers.amazon.aws.utils import connection_wrapper  # noqa: F401
    from airflow.secrets import environment_variables  # noqa: F401

    from airflow_sm_refs._compat import base_hook, later_backends  # noqa: F401

    base_hook()

    from airflow_sm_refs import _aws, backend, expand, fetch, resolver, worker_cache  # noqa: F401


def serve(handle: Callable[[dict[str, Any]], Any], warm: Callable[[], None]) -> None:
    """Be a warm parent: ``warm()``, say ready, then answer each command (a JSON line on stdin)
    with what ``handle`` returns for it (a JSON line on stdout), until stdin ends."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed (Airflow's logs) goes to stderr, not into the replies
    warm()
    replies.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        if line.strip():
            replies.write(json.dumps(handle(json.loads(line))) + "\n")
    replies.close()


def lookup_once(command: dict[str, Any]) -> None:
    """One task process in a fresh interpreter: import, say ready, wait for the go file, look up."""
    capture = _prepare(command["env"])
    _warm_imports()
    Path(command["ready_file"]).touch()
    while not os.path.exists(command["go_file"]):
        time.sleep(0.002)
    write_result(command["result_file"], _lookup(command["conn_id"], command["field"], capture))


# --- the test side -----------------------------------------------------------
def _base_env(env: Mapping[str, str] | None) -> dict[str, str]:
    base = dict(os.environ if env is None else env)
    base["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), base.get("PYTHONPATH")) if p)
    base.pop("AIRFLOW__SECRETS__BACKEND", None)
    base.pop("AIRFLOW__SECRETS__BACKEND_KWARGS", None)
    return base


_Parent = TypeVar("_Parent", bound="WarmParent")


class WarmParent:
    """A process that imports what a worker has, then answers commands as :func:`serve` does.

    :param args: what its interpreter runs (a script or ``-m`` and a module, and their arguments)
    :param log_path: where the parent's and task processes' stderr (Airflow's logs) go
    :param env: the parent's environment (default: this process's)
    """

    def __init__(
        self, args: Sequence[str], log_path: str | os.PathLike[str], env: Mapping[str, str] | None = None
    ) -> None:
        self.log_path = Path(log_path)
        self._args = list(args)
        self._env = _base_env(env)
        self._proc: subprocess.Popen[str] | None = None

    def start(self: _Parent, timeout: float = 120.0) -> _Parent:
        """Start the parent and wait until it has imported Airflow."""
        with open(self.log_path, "ab") as log_file:
            self._proc = subprocess.Popen(
                [sys.executable, "-u", *self._args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                env=self._env,
                cwd=REPO,
                text=True,
            )
        reply = self._reply(timeout)
        if reply != {"ready": True}:
            raise RuntimeError(f"task process parent did not start: {reply!r}; see {self.log_path}")
        return self

    def ask(self, command: dict[str, Any], timeout: float) -> Any:
        """Send one command and return the parent's reply to it."""
        assert self._proc is not None and self._proc.stdin is not None, "start() first"
        self._proc.stdin.write(json.dumps(command) + "\n")
        self._proc.stdin.flush()
        return self._reply(timeout)

    def _reply(self, timeout: float) -> Any:
        assert self._proc is not None and self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        line = self._proc.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"no reply from the task process parent; see {self.log_path}")
        return json.loads(line)

    def stop(self) -> None:
        """Stop the parent."""
        if self._proc is not None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None

    def __enter__(self: _Parent) -> _Parent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TaskProcesses(WarmParent):
    """A warm parent that forks task processes on demand, as an Airflow worker does.

    :param log_path: where the parent's and task processes' stderr (Airflow's logs) go
    :param env: the parent's environment (default: this process's)
    """

    def __init__(self, log_path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> None:
        super().__init__([str(Path(__file__).resolve()), "serve"], log_path, env)

    def run(
        self,
        n: int,
        env: Mapping[str, str | None],
        *,
        conn_id: str = "db",
        field: str = "password",
        timeout: float = 120.0,
    ) -> list[dict[str, Any]]:
        """Fork ``n`` task processes with ``env``, start their lookups at once, return their results."""
        return self.ask({"n": n, "env": dict(env), "conn_id": conn_id, "field": field}, timeout)


def spawn_lookups(
    n: int,
    env: Mapping[str, str | None],
    workdir: str | os.PathLike[str],
    *,
    conn_id: str = "db",
    field: str = "password",
    timeout: float = 180.0,
) -> list[dict[str, Any]]:
    """Start ``n`` fresh interpreters, release them together once all have imported Airflow, return their results."""
    work = Path(tempfile.mkdtemp(prefix="spawn-", dir=workdir))
    go_file = work / "go"
    procs = []
    with open(work / "stderr.log", "ab") as log_file:
        for i in range(n):
            command = {
                "env": dict(env),
                "conn_id": conn_id,
                "field": field,
                "ready_file": str(work / f"{i}.ready"),
                "go_file": str(go_file),
                "result_file": str(work / f"{i}.json"),
            }
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "lookup", json.dumps(command)],
                    stdout=log_file,
                    stderr=log_file,
                    env=_base_env(None),
                    cwd=REPO,
                )
            )
    deadline = time.monotonic() + timeout
    try:
        while not all((work / f"{i}.ready").exists() for i in range(n)):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"task processes did not get ready; see {work / 'stderr.log'}")
            time.sleep(0.02)
        go_file.touch()
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = []
    for i in range(n):
        path = work / f"{i}.json"
        results.append(json.loads(path.read_text()) if path.exists() else {"ok": False, "error": "Crashed", "log": []})
    return results


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    if sys.argv[1:] == ["serve"]:
        serve(_run_batch, _warm_imports)
    elif len(sys.argv) == 3 and sys.argv[1] == "lookup":
        lookup_once(json.loads(sys.argv[2]))
    else:
        sys.exit(f"usage: {sys.argv[0]} serve | lookup <json>")
