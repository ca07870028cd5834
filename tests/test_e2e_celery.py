"""CeleryExecutor end to end: two workers, each with its own per-worker cache, as two hosts would have.

A real Redis broker (``standins.redis``), a real PostgreSQL metastore and Celery result backend
(``standins.postgres``), ``airflow api-server``, ``scheduler`` and ``dag-processor``, and two
``airflow celery worker`` processes (``standins.airflow_standalone``). Each worker has its own
``shared_cache_dir`` (its own ``AIRFLOW__SECRETS__BACKEND_KWARGS``), its own Celery hostname and
its own task-instance hostname, so the test can tell which worker ran which task. Mapped tasks
all read one metastore connection whose password and extra hold references.

Marked ``celery``: the default ``pytest`` run leaves it out (pyproject's addopts); run it with
``make e2e-celery``. Skipped where redis-server or PostgreSQL is missing, unless
``AIRFLOW_SM_REFS_REQUIRE_REDIS`` / ``AIRFLOW_SM_REFS_REQUIRE_POSTGRES`` is set (CI sets both).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import re
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from standins.aws import AwsStandIn
from tests.conftest import postgres_server

# Past every wait below (DB migration, readiness, the run), so that one of them fails first, with
# the tails of the component logs, rather than pytest-timeout.
pytestmark = [pytest.mark.e2e, pytest.mark.celery, pytest.mark.timeout(1200)]

BACKEND = "airflow_sm_refs.backend.SecretsManagerRefsBackend"
DAG_ID = "celery_refs"
CONN_ID = "celery_meta"
MAPPED_TASKS = 24
WORKERS = ("sm-refs-worker-a", "sm-refs-worker-b")
# Each worker signs its AWS requests with its own access key (moto takes any), so the stand-in can
# say whose credentials were used.
ACCESS_KEYS = {"sm-refs-worker-a": "AKIDSMREFSWORKERA", "sm-refs-worker-b": "AKIDSMREFSWORKERB"}
CONCURRENCY = 2

APP_SECRET = {"password": "celery-Pw-3c9e81d07a", "api_key": "celery-api-key-6f02b4d9e1"}
# The reads a worker could make of Secrets Manager for a value.
AWS_READS = ("GetSecretValue", "BatchGetSecretValue")

# The plugin's resolution line when it asked AWS ("... secret <id> (<version>) from aws in 12.3 ms"),
# one request whether alone or batched ("from aws (batch)").
FETCHED_FROM_AWS = re.compile(r"\) from aws\b")

# Generous: a shared 2-core machine; a timeout fails with the tails of every component's log.
READY_TIMEOUT = 300.0
RUN_TIMEOUT = 420.0


def ref(key: str, secret: str) -> str:
    return "{{workato:sm:" + key + ":" + secret + "}}"


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


CONNECTION = {
    "conn_type": "generic",
    "host": "api.celery.invalid",
    "login": "svc-celery",
    "password": ref("password", "celery/app"),
    # api_key is not a key Airflow masks by name: only the plugin's registration masks it.
    "extra": json.dumps({"api_key": ref("api_key", "celery/app"), "plain": "not-a-secret"}),
}

DAG_SOURCE = textwrap.dedent(
    f'''
    """{MAPPED_TASKS} mapped tasks, each reading the connection {CONN_ID!r} on whichever Celery worker runs it."""
    from __future__ import annotations

    import hashlib
    import os

    from airflow.sdk import BaseHook, dag, task

    # SHA-256 of what each field must hold once resolved: a wrong or raw value fails the task,
    # and no value is written into this file.
    EXPECTED = {{
        "password": {sha(APP_SECRET["password"])!r},
        "extra.api_key": {sha(APP_SECRET["api_key"])!r},
        "extra.plain": {sha("not-a-secret")!r},
    }}


    def sha(value):
        return hashlib.sha256(str(value).encode()).hexdigest()


    @dag(dag_id={DAG_ID!r}, schedule=None, catchup=False)
    def celery_refs():
        @task
        def read_conn(shard: int) -> None:
            conn = BaseHook.get_connection({CONN_ID!r})
            extra = conn.extra_dejson
            got = {{
                "password": sha(conn.password),
                "extra.api_key": sha(extra.get("api_key")),
                "extra.plain": sha(extra.get("plain")),
            }}
            wrong = sorted(k for k in EXPECTED if got[k] != EXPECTED[k])
            if wrong:
                raise RuntimeError(f"fields not resolved to the secret's values: {{wrong}}")
            # Masked by Airflow's secrets masker: the log must show *** for both.
            print(f"CELERY_PROBE shard={{shard}} worker={{os.environ.get('SM_REFS_CELERY_WORKER')}} "
                  f"password={{conn.password}} api_key={{extra['api_key']}}")

        read_conn.expand(shard=list(range({MAPPED_TASKS})))


    celery_refs()
    '''
)

# [core] hostname_callable of each worker: the task instance's `hostname` names the worker.
HOSTNAME_MODULE = textwrap.dedent(
    '''
    """The task-instance hostname of a Celery worker of the test: its name, as two hosts would differ."""
    import os


    def hostname() -> str:
        return os.environ["SM_REFS_CELERY_WORKER"]
    '''
)


def require(binary_check: Any, env_var: str, what: str) -> None:
    """Skip where `what` is not installed, unless `env_var` is set (CI): then fail."""
    try:
        binary_check()
    except RuntimeError as exc:
        if os.environ.get(env_var):
            raise
        pytest.skip(f"{what} not installed: {exc}")


@pytest.fixture(scope="module")
def redis_broker() -> Iterator[Any]:
    from standins.redis import RedisServer, find_redis_server

    require(find_redis_server, "AIRFLOW_SM_REFS_REQUIRE_REDIS", "redis-server")
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def metastore_db() -> Iterator[Any]:
    password = hashlib.sha256(os.urandom(16)).hexdigest()[:24]
    with postgres_server(user="airflow", password=password, database="airflow") as server:
        yield server


@dataclass
class CeleryRun:
    af: Any
    aws: AwsStandIn
    run_id: str
    state: str
    task_instances: list[dict[str, Any]]
    log_files: list[Path]
    seconds: dict[str, float]
    root: Path
    redis: Any

    def diag(self, lines: int = 40) -> str:
        from standins.airflow_standalone import _tail

        parts = [f"run {self.run_id}: {self.state}"]
        for name, path in self.af.component_logs().items():
            parts.append(f"--- {name} ({path}) ---\n{_tail(path, lines)}")
        return "\n".join(parts)

    def log_of(self, ti: dict[str, Any]) -> str:
        wanted = f"map_index={ti['map_index']}"
        found = [p for p in self.log_files if wanted in p.parts]
        return "\n".join(p.read_text(errors="replace") for p in found)


@pytest.fixture(scope="module")
def celery_run(
    redis_broker: Any, metastore_db: Any, aws_server: AwsStandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CeleryRun]:
    from standins.airflow_standalone import AirflowStandalone

    began = time.monotonic()
    seconds: dict[str, float] = {}
    aws = aws_server
    aws.reset()
    aws.client().create_secret(Name="celery/app", SecretString=json.dumps(APP_SECRET))

    root = tmp_path_factory.mktemp("celery")
    dags = root / "dags"
    dags.mkdir()
    (dags / f"{DAG_ID}.py").write_text(DAG_SOURCE)
    host_module_dir = root / "hostname"
    host_module_dir.mkdir()
    (host_module_dir / "sm_refs_celery_host.py").write_text(HOSTNAME_MODULE)

    def backend_kwargs(cache_dir: Path) -> str:
        return json.dumps(
            {
                "region_name": "us-east-1",
                "endpoint_url": aws.endpoint_url,
                "cache_ttl_seconds": 600,
                "shared_cache_dir": str(cache_dir),
                "allowed_secrets": ["celery/*"],
            }
        )

    pg = metastore_db
    pg_auth = f"{pg.user}:{pg.password}@{pg.host}:{pg.port}/{pg.database}"
    config = {
        ("core", "executor"): "CeleryExecutor",
        ("database", "sql_alchemy_conn"): f"postgresql+psycopg2://{pg_auth}",
        ("celery", "broker_url"): redis_broker.url(0),
        ("celery", "result_backend"): f"db+postgresql://{pg_auth}",
        ("celery", "worker_concurrency"): str(CONCURRENCY),
        ("secrets", "backend"): BACKEND,
        # What the servers read (they step aside); each worker overrides it with its own cache dir.
        ("secrets", "backend_kwargs"): backend_kwargs(root / "server-cache"),
    }
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    af = AirflowStandalone(
        home=root / "home",
        dags_folder=dags,
        config=config,
        env=env,
        triggerer=False,
        # Tasks running or queued at once: both workers' slots, so neither is left idle.
        parallelism=CONCURRENCY * len(WORKERS),
    )
    for name in WORKERS:
        af.add_component(
            name,
            [
                "celery", "worker",
                "--celery-hostname", f"{name}@%h",
                "--concurrency", str(CONCURRENCY),
                # The log server binds 0.0.0.0 on a fixed port; the API server reads the local files.
                "--skip-serve-logs",
                # Two workers that need not know each other: faster start, no broadcast traffic.
                "--without-mingle", "--without-gossip",
            ],  # fmt: skip
            env={
                "SM_REFS_CELERY_WORKER": name,
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "sm_refs_celery_host.hostname",
                "PYTHONPATH": os.pathsep.join([str(host_module_dir), af.env["PYTHONPATH"]]),
                "AIRFLOW__SECRETS__BACKEND_KWARGS": backend_kwargs(root / f"cache-{name}"),
                "AWS_ACCESS_KEY_ID": ACCESS_KEYS[name],
            },
        )
    with af:
        seconds["started"] = time.monotonic() - began
        af.run_cli("connections", "add", CONN_ID, "--conn-json", json.dumps(CONNECTION))
        # One deadline for every component, the workers and the DAG's first parse together.
        ready_by = time.monotonic() + READY_TIMEOUT
        af.wait_ready(timeout=READY_TIMEOUT)
        for name in WORKERS:
            # Celery's own line once the worker consumes: tasks queued before would all go to the other.
            af.wait_for_log(name, rf"{name}@\S+ ready\.", timeout=max(ready_by - time.monotonic(), 1.0))
        seconds["ready"] = time.monotonic() - began
        aws.reset_counts()
        run_id = af.trigger(DAG_ID, timeout=max(ready_by - time.monotonic(), 30.0))
        state = af.wait_for_run(DAG_ID, run_id, timeout=RUN_TIMEOUT)
        seconds["run"] = time.monotonic() - began - seconds["ready"]
        tis = af._task_instances(DAG_ID, run_id)
        log_files = af.task_log_files(DAG_ID, run_id)
        yield CeleryRun(af, aws, run_id, state, tis, log_files, seconds, root, redis_broker)
    seconds["total"] = time.monotonic() - began
    print(f"\ncelery e2e timings (s): { {k: round(v, 1) for k, v in seconds.items()} }")


def tasks_per_worker(run: CeleryRun) -> collections.Counter[str]:
    return collections.Counter(str(ti.get("hostname")) for ti in run.task_instances)


def test_the_run_succeeds_on_both_workers(celery_run: CeleryRun) -> None:
    run = celery_run
    states = collections.Counter(ti.get("state") for ti in run.task_instances)
    assert run.state == "success", f"task states {dict(states)}\n{run.diag()}"
    assert len(run.task_instances) == MAPPED_TASKS and states == {"success": MAPPED_TASKS}, dict(states)
    per_worker = tasks_per_worker(run)
    print(f"\ntasks per worker: {dict(per_worker)}")
    assert set(per_worker) == set(WORKERS), f"tasks ran on {dict(per_worker)}, not on both workers"
    # Each task says where it ran, from the worker's environment: the same worker as its hostname.
    for ti in run.task_instances:
        assert f"worker={ti['hostname']}" in run.log_of(ti), (ti["map_index"], ti["hostname"])


def test_aws_was_asked_at_most_once_per_worker(celery_run: CeleryRun) -> None:
    run = celery_run
    reads = {action: run.aws.calls(action) for action in AWS_READS}
    # Per worker, from the tasks' own resolution lines: the tasks that fetched from AWS (the rest
    # were served by that worker's cache).
    fetched = collections.Counter(
        str(ti["hostname"]) for ti in run.task_instances if FETCHED_FROM_AWS.search(run.log_of(ti))
    )
    print(f"\nAWS reads at the stand-in: {reads}; tasks that fetched, per worker: {dict(fetched)}")
    assert sum(reads.values()) <= len(WORKERS), f"{reads} for {MAPPED_TASKS} tasks on {len(WORKERS)} workers"
    assert all(n <= 1 for n in fetched.values()), f"more than one fetch on a worker: {dict(fetched)}"
    # What the stand-in counted is what the workers fetched, and with whose credentials.
    assert sum(reads.values()) == sum(fetched.values()), (reads, dict(fetched))
    keys = set().union(*(run.aws.access_keys(action) for action in AWS_READS))
    assert keys == {ACCESS_KEYS[name] for name in fetched}, (keys, dict(fetched))
    # Every other task of a worker was served from that worker's own cache, in its own directory.
    assert " from worker cache in " in "".join(run.log_of(ti) for ti in run.task_instances)
    for name in WORKERS:
        cache_dir = run.root / f"cache-{name}"
        assert cache_dir.is_dir() and any(p.is_file() for p in cache_dir.rglob("*")), f"{name}: {cache_dir} is empty"


def test_task_logs_are_masked_and_hold_no_secret_value(celery_run: CeleryRun) -> None:
    run = celery_run
    assert len(run.log_files) >= MAPPED_TASKS, run.log_files
    assert set(APP_SECRET.values()) <= run.aws.served_values, "sanity: the stand-in saw the secret served"
    for ti in run.task_instances:
        text = run.log_of(ti)
        assert "password=*** api_key=***" in text, (ti["map_index"], text[-2000:])
    for path in run.log_files:
        assert not run.aws.leaked_in(path.read_text(errors="replace")), f"a secret value is in {path}"
    # Nor in what the components wrote (the workers' stdout carries their task supervisors' output).
    for name, path in run.af.component_logs().items():
        assert not run.aws.leaked_in(path.read_text(errors="replace")), f"a secret value is in the {name} log"


def test_every_server_listens_on_loopback_only(celery_run: CeleryRun) -> None:
    import psutil

    procs = list(celery_run.af.running_processes())
    with contextlib.suppress(psutil.Error):
        procs.append(psutil.Process(celery_run.redis.pid))
    listening: dict[str, set[str]] = collections.defaultdict(set)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr:
                    listening[" ".join(proc.cmdline())[:80]].add(f"{conn.laddr.ip}:{conn.laddr.port}")
    assert listening, "no listening socket found at all (the API server should have one)"
    exposed = {cmd: addrs for cmd, addrs in listening.items() if any(not a.startswith("127.0.0.1:") for a in addrs)}
    assert not exposed, f"listening beyond 127.0.0.1: {exposed}"
