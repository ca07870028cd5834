"""A busy worker on the drop-in ``SecretsManagerBackend`` (DESIGN §5, §7, §8): one call per secret per window.

Every task process of a worker that runs AWS hooks looks up ``aws_default``
(stored nowhere), and typically a stored connection and a Variable. The
Amazon provider's backend asks AWS for each, in each process; ours must ask
once per worker per window. ``TestBurst`` releases real task processes
together (forked from a warm parent, as a worker forks them; one per-worker
cache directory) with the backend as Airflow's ``[secrets] backend`` and
counts ``GetSecretValue`` at the moto server. ``TestMissingWindow`` shows,
on a fake clock, how long the missing id is remembered, and that it is
asked again afterwards.

This module also runs as the task processes' parent (``python -m
tests.test_stored_burst serve``); ``benchmarks/provider_backend.py`` uses the
same parent to compare the provider's backend with ours.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from standins.aws import AwsStandIn
from tests.worker_proc import Barrier, WarmParent, apply_env, digest, fork_task, read_results, serve, write_result

if TYPE_CHECKING:
    from tests.conftest import FakeClock

pytestmark = pytest.mark.compat

PLUGIN = "airflow_sm_refs.backend.SecretsManagerBackend"
PROVIDER = "airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend"

#: stored nowhere; every AWS hook looks it up
MISSING_CONN_ID = "aws_default"
CONN_ID = "burst_db"
CONNECTION = {
    "conn_type": "postgres",
    "login": "app",
    "password": "burst-pw-3e9a71c4",
    "host": "db.internal",
    "port": 5432,
    "schema": "app",
    "extra": {"sslmode": "require"},
}
VARIABLE = "burst_token"
VARIABLE_VALUE = "burst-token-b04d2f6e"
#: what each task process looks up, in this order
LOOKUPS = (("connection", MISSING_CONN_ID), ("connection", CONN_ID), ("variable", VARIABLE))


def fingerprint(value: Any) -> str:
    """What a task process reports instead of the value it read (JSON, keys sorted, hashed)."""
    return digest(json.dumps(value, sort_keys=True))


#: what a task process must report for each lookup: a fingerprint, or the name of the error
EXPECTED = {
    MISSING_CONN_ID: "AirflowNotFoundException",
    CONN_ID: fingerprint(CONNECTION),
    VARIABLE: fingerprint(VARIABLE_VALUE),
}


def store_secrets(aws: AwsStandIn) -> None:
    """The connection and the Variable, stored where the provider's backend reads them (its default prefixes)."""
    client = aws.client()
    client.create_secret(Name=f"airflow/connections/{CONN_ID}", SecretString=json.dumps(CONNECTION))
    client.create_secret(Name=f"airflow/variables/{VARIABLE}", SecretString=VARIABLE_VALUE)


def backend_env(backend: str, **kwargs: Any) -> dict[str, str | None]:
    """What a task process sees: ``backend`` as ``[secrets] backend`` with ``kwargs``."""
    return {"AIRFLOW__SECRETS__BACKEND": backend, "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps(kwargs)}


# --- inside a task process ----------------------------------------------------
def _variable_class() -> type:
    try:
        from airflow.sdk import Variable
    except ImportError:  # 2.x
        from airflow.models import Variable  # type: ignore[no-redef]
    return Variable


def _connection_fields(conn: Any) -> dict[str, Any]:
    return {
        "conn_type": conn.conn_type,
        "login": conn.login,
        "password": conn.password,
        "host": conn.host,
        "port": conn.port,
        "schema": conn.schema,
        "extra": conn.extra_dejson,
    }


def _look_up(kind: str, key: str) -> dict[str, Any]:
    from airflow_sm_refs._compat import base_hook

    started, cpu = time.perf_counter(), time.process_time()
    try:
        if kind == "connection":
            outcome: dict[str, Any] = {"found": fingerprint(_connection_fields(base_hook().get_connection(key)))}
        else:
            outcome = {"found": fingerprint(_variable_class().get(key))}
    except Exception as exc:  # noqa: BLE001 - reported to the caller, which judges it
        error = getattr(exc, "error", exc)  # before Airflow 3.2.2 ours comes wrapped in SecretLookupAborted
        outcome = {"found": type(error).__name__, "message": str(error)[:300]}
    outcome.update(kind=kind, key=key, seconds=time.perf_counter() - started, cpu_seconds=time.process_time() - cpu)
    return outcome


def _task_process(env: Mapping[str, str | None], result_path: str, barrier: Barrier | None) -> None:
    """Wait to be released (if held); apply the task's environment (after the fork, as a task's
    configuration), then look everything up."""
    if barrier is not None:
        barrier.wait()
    apply_env(env)
    from airflow_sm_refs._compat import reset_secrets_chain

    reset_secrets_chain()
    started = time.time()
    lookups = [_look_up(kind, key) for kind, key in LOOKUPS]
    write_result(result_path, {"pid": os.getpid(), "start": started, "end": time.time(), "lookups": lookups})


def _run_burst(n: int, env: Mapping[str, str | None], concurrency: int) -> dict[str, Any]:
    """``n`` task processes; at most ``concurrency`` at a time, all released together if that is ``n``."""
    results_dir = tempfile.mkdtemp(prefix="burst-results-")
    paths = [os.path.join(results_dir, f"{i}.json") for i in range(n)]
    if concurrency >= n:
        barrier = Barrier()
        pids = [fork_task(_task_process, env, path, barrier) for path in paths]
        barrier.wait_ready(n)
        started = time.time()
        barrier.release()  # every task process starts its lookups now
        for pid in pids:
            os.waitpid(pid, 0)
    else:
        # As a worker with ``concurrency`` slots: the next task starts as soon as one ends.
        started = time.time()
        running: set[int] = set()
        for path in paths:
            if len(running) >= concurrency:
                running.discard(os.wait()[0])
            running.add(fork_task(_task_process, env, path, None))
        for pid in running:
            os.waitpid(pid, 0)
    wall = time.time() - started
    return {"wall": wall, "results": read_results(results_dir, n, {"pid": None, "lookups": [], "crashed": True})}


def _warm_imports() -> None:
    """What a worker has imported before it forks a task process (the same for either backend)."""
    import boto3  # noqa: F401
    import botocore.session  # noqa: F401
    from airflow.providers.amazon.aws.hooks import base_aws  # noqa: F401
    from airflow.providers.amazon.aws.secrets import secrets_manager  # noqa: F401
    from airflow.secrets import environment_variables  # noqa: F401

    from airflow_sm_refs import _aws, backend, expand, fetch, resolver, stored, worker_cache  # noqa: F401
    from airflow_sm_refs._compat import base_hook

    base_hook()
    _variable_class()
    try:  # 3.x: a task process is forked from its supervisor, whose module the secrets chain imports
        from airflow.sdk.execution_time import supervisor  # noqa: F401
    except ImportError:
        pass
    # An id found nowhere ends at the metastore (through the supervisor in a 3.x task; here,
    # with none, directly), whose first query maps every model: seconds of CPU that a
    # worker's task process does not spend per lookup, so it is done once, here.
    from airflow.models.connection import Connection  # noqa: F401
    from sqlalchemy.orm import configure_mappers

    configure_mappers()


# --- the test side -------------------------------------------------------------
@dataclass
class Burst:
    """What a burst of task processes reported."""

    #: seconds from the release (or the first fork) to the end of the last task process
    wall: float
    results: list[dict[str, Any]]

    def found(self) -> list[dict[str, str]]:
        """Per task process: what each lookup found (a fingerprint or an error's name), by key."""
        return [{lookup["key"]: lookup["found"] for lookup in result["lookups"]} for result in self.results]

    def overlapping(self) -> bool:
        """Whether some task processes looked up at the same time."""
        spans = sorted((r["start"], r["end"]) for r in self.results if "start" in r)
        return any(later_start < end for (_, end), (later_start, _) in zip(spans, spans[1:]))


class TaskBursts(WarmParent):
    """A warm parent that forks bursts of task processes, each looking up :data:`LOOKUPS`, as a worker does.

    :param log_path: where the parent's and task processes' stderr (Airflow's logs) go
    """

    def __init__(self, log_path: str | os.PathLike[str]) -> None:
        super().__init__(["-m", "tests.test_stored_burst", "serve"], log_path)

    def run(
        self, n: int, env: Mapping[str, str | None], *, concurrency: int | None = None, timeout: float = 300.0
    ) -> Burst:
        """``n`` task processes with ``env``: all released together, or ``concurrency`` at a time."""
        command = {"n": n, "env": dict(env), "concurrency": n if concurrency is None else concurrency}
        reply = self.ask(command, timeout)
        return Burst(wall=reply["wall"], results=reply["results"])


@pytest.fixture(scope="module")
def bursts(tmp_path_factory: pytest.TempPathFactory, aws_server: AwsStandIn) -> Iterator[TaskBursts]:
    with TaskBursts(tmp_path_factory.mktemp("task-bursts") / "stderr.log") as parent:
        yield parent


@pytest.fixture
def stored(aws: AwsStandIn) -> AwsStandIn:
    store_secrets(aws)
    aws.reset_counts()
    return aws


def plugin_env(aws: AwsStandIn, cache_dir: Path, **kwargs: Any) -> dict[str, str | None]:
    """Our backend for a task process, its worker cache in ``cache_dir``."""
    aws_kwargs = {"region_name": "us-east-1", "endpoint_url": aws.endpoint_url}
    return backend_env(PLUGIN, **aws_kwargs, shared_cache_dir=str(cache_dir), **kwargs)


def assert_right_values(burst: Burst, n: int) -> None:
    found = burst.found()
    assert len(found) == n and found == [EXPECTED] * n, [r.get("lookups") for r in burst.results]
    assert len({r["pid"] for r in burst.results}) == n


class TestBurst:
    def test_one_call_per_secret_for_the_whole_burst_then_none_within_the_ttl(
        self, stored: AwsStandIn, bursts: TaskBursts, tmp_path: Path
    ) -> None:
        env = plugin_env(stored, tmp_path / "worker-cache")
        cold = bursts.run(8, env)
        assert_right_values(cold, 8)
        assert cold.overlapping(), "the task processes ran one after another: this is no burst"
        # Nothing was cached and each of the three ids needs an answer from AWS, so three
        # calls in all means one each: the connection, the Variable and aws_default.
        assert (stored.calls("GetSecretValue"), stored.total_calls()) == (3, 3)
        stored.reset_counts()
        warm = bursts.run(8, env)  # new task processes, within the TTL (and the missing id's window)
        assert_right_values(warm, 8)
        assert stored.total_calls() == 0

    def test_the_provider_asks_in_every_task_process(self, stored: AwsStandIn, bursts: TaskBursts) -> None:
        # What the test above is measured against: the same lookups through the provider's own backend.
        burst = bursts.run(3, backend_env(PROVIDER, region_name="us-east-1", endpoint_url=stored.endpoint_url))
        assert_right_values(burst, 3)
        assert stored.calls("GetSecretValue") == 3 * 3

    @pytest.mark.wallclock
    def test_a_shorter_missing_window_asks_again_for_the_missing_id_only(
        self, stored: AwsStandIn, bursts: TaskBursts, tmp_path: Path
    ) -> None:
        # A window wide enough for a burst of 4 task processes on a loaded 2-core machine to fall inside it.
        env = plugin_env(stored, tmp_path / "worker-cache", missing_cache_seconds=3)
        first = bursts.run(1, env)
        assert_right_values(first, 1)
        assert stored.calls() == 3
        time.sleep(max(0.0, first.results[0]["end"] + 3.1 - time.time()))  # aws_default was asked before its end
        stored.reset_counts()
        assert_right_values(bursts.run(4, env), 4)
        assert stored.calls() == 1  # aws_default, once for the worker; the stored two are still fresh


# --- a fake clock -----------------------------------------------------------------
class ClockedWorker:
    """Task processes of one worker, played in this process on one fake clock.

    Each backend Airflow builds gets its tiers on ``clock``: the process tier
    of the current task process and the worker's directory. A new task
    process has an empty process tier.
    """

    def __init__(self, clock: FakeClock, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        from airflow_sm_refs.cache import TTLCache
        from airflow_sm_refs.resolver import CacheSettings, SecretResolver
        from airflow_sm_refs.worker_cache import WorkerCache

        self.clock = clock
        self._new_tier = lambda: TTLCache(timer=clock, jitter=0)
        self._process_tier = self._new_tier()
        self.shared = shared = WorkerCache(str(cache_dir), timer=clock, jitter=0)
        worker = self

        def resolver_for(settings: CacheSettings, clients: Any) -> SecretResolver:
            return SecretResolver(
                clients,
                cache_ttl_seconds=settings.cache_ttl_seconds,
                stale_if_error_seconds=settings.stale_if_error_seconds,
                negative_cache_seconds=settings.negative_cache_seconds,
                cache=worker._process_tier,
                shared=shared,
            )

        monkeypatch.setattr(CacheSettings, "resolver_for", resolver_for)

    def new_task_process(self) -> None:
        from airflow_sm_refs._compat import reset_secrets_chain

        self._process_tier = self._new_tier()
        reset_secrets_chain()

    def look_up(self) -> dict[str, str]:
        """What this task process finds for each of :data:`LOOKUPS`."""
        return {key: _look_up(kind, key)["found"] for kind, key in LOOKUPS}


@pytest.fixture
def configure(
    stored: AwsStandIn, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Callable[..., ClockedWorker]]:
    from tests.conftest import FakeClock

    workers: list[ClockedWorker] = []

    def configure(**kwargs: Any) -> ClockedWorker:
        """``SecretsManagerBackend`` with ``kwargs`` as Airflow's ``[secrets] backend``, on a fake clock."""
        env = backend_env(PLUGIN, region_name="us-east-1", endpoint_url=stored.endpoint_url, **kwargs)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        worker = ClockedWorker(FakeClock(start=1_800_000_000.0), tmp_path / "worker-cache", monkeypatch)
        worker.new_task_process()
        workers.append(worker)
        return worker

    yield configure
    for worker in workers:
        worker.shared.close()


class TestMissingWindow:
    def test_remembered_as_long_as_a_found_secret_then_asked_again(
        self, stored: AwsStandIn, configure: Callable[..., ClockedWorker]
    ) -> None:
        worker = configure(cache_ttl_seconds=120)
        assert worker.look_up() == EXPECTED
        assert stored.calls() == 3
        # Past negative_cache_seconds (10), well inside the TTL: a new task process asks nothing.
        worker.clock.advance(119.9)
        worker.new_task_process()
        assert worker.look_up() == EXPECTED
        assert stored.calls() == 3
        # The TTL is over, and so is the missing id's window: all three are asked again, once.
        worker.clock.advance(0.1)
        worker.new_task_process()
        assert worker.look_up() == EXPECTED
        worker.new_task_process()
        assert worker.look_up() == EXPECTED
        assert stored.calls() == 6

    def test_a_shorter_missing_window_asks_again_for_the_missing_id_only(
        self, stored: AwsStandIn, configure: Callable[..., ClockedWorker]
    ) -> None:
        worker = configure(missing_cache_seconds=60)  # the TTL stays 300
        assert worker.look_up() == EXPECTED
        assert stored.calls() == 3
        worker.clock.advance(59.9)
        assert worker.look_up() == EXPECTED  # the same task process, later
        worker.new_task_process()
        assert worker.look_up() == EXPECTED
        assert stored.calls() == 3
        worker.clock.advance(0.1)
        assert worker.look_up() == EXPECTED  # a long task asks again, in its own process tier too
        worker.new_task_process()
        assert worker.look_up() == EXPECTED  # and the worker remembers the new answer
        assert stored.calls() == 4
        worker.clock.advance(60)
        worker.new_task_process()
        assert worker.look_up() == EXPECTED
        assert stored.calls() == 5  # the stored two are still fresh (120 s of 300)


if __name__ == "__main__":
    if sys.argv[1:] != ["serve"]:
        sys.exit("usage: python -m tests.test_stored_burst serve")
    serve(lambda command: _run_burst(command["n"], command["env"], command["concurrency"]), _warm_imports)
    # Nothing is left to flush or wait for: skip Airflow's exit handlers (seconds, at each test run's end).
    sys.stderr.flush()
    os._exit(0)
