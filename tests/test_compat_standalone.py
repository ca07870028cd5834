"""The plugin inside a real Airflow of the running line: webserver/API server, scheduler, triggerer, tasks.

One Airflow (``standins.airflow_standalone``) per module, one run of ``tests/compat_dags/
compat_refs.py``, whose tasks each prove one thing; the tests below read the task states, the
task logs, marker files the tasks leave, the REST API and ``airflow connections get``.

Runs on every supported line: ``<venv>/bin/python -m pytest -m compat tests/test_compat_standalone.py``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from standins.aws import AwsStandIn

# The module's one Airflow start and DAG run is set up inside the first test's timeout.
pytestmark = [pytest.mark.compat, pytest.mark.e2e, pytest.mark.timeout(900)]

DAGS = Path(__file__).resolve().parent / "compat_dags"
DAG_ID = "compat_refs"
BACKEND = "airflow_sm_refs.backend.SecretsManagerRefsBackend"

# What moto holds. Every value is distinct and long enough to be searched for in logs.
APP_SECRET = {
    "username": "compat-user-4711c",
    "password": "compat-Pw-8f3a91c2e7",
    "client_code": "compat-client-5e7d19",
}
ENV_TOKEN = "compat-env-token-2b9c44a1"
TRIGGER_PASSWORD = "compat-trigger-Pw-77d0e3"
# The password of the HTTP connection the 3.3 worker-side connection test checks.
HTTP_PASSWORD = "compat-http-Pw-3c51a0b9"
PLAINTEXTS = (*APP_SECRET.values(), ENV_TOKEN, TRIGGER_PASSWORD, HTTP_PASSWORD)


def ref(key: str, secret: str) -> str:
    return "{{workato:sm:" + key + ":" + secret + "}}"


# A metastore connection: login, password and a value under an extra key that Airflow does not
# consider sensitive (so the REST API shows it, and only the plugin can get it masked).
META_CONN = {
    "conn_type": "generic",
    "host": "db.compat.invalid",
    "login": ref("username", "compat/app"),
    "password": ref("password", "compat/app"),
    "extra": json.dumps({"client_code": ref("client_code", "compat/app"), "plain": "not-a-secret"}),
}
# In the components' environment: AIRFLOW_CONN_COMPAT_ENV (JSON form).
ENV_CONN = {
    "conn_type": "generic",
    "login": "svc-compat",
    "password": ref("token", "compat/env"),
    "extra": {"header": "Bearer " + ref("token", "compat/env")},
}
MISSING_KEY_REF = ref("pasword", "compat/app")
MISSING_SECRET_REF = ref("password", "compat/does-not-exist")
BROKEN_TRIGGER_REF = ref("password", "compat/trigger-gone")
OTHER_METASTORE_CONNS = {
    "compat_missing_key": {"conn_type": "generic", "password": MISSING_KEY_REF},
    "compat_trigger": {"conn_type": "generic", "password": ref("password", "compat/trigger")},
}
ENV_CONNS = {
    "compat_env": ENV_CONN,
    "compat_missing_secret": {"conn_type": "generic", "password": MISSING_SECRET_REF},
    "compat_trigger_broken": {"conn_type": "generic", "password": BROKEN_TRIGGER_REF},
}


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# "<conn_id>:<field>" -> SHA-256 of the value the field must hold once resolved.
EXPECTED_SHA256 = {
    "compat_env:login": sha("svc-compat"),
    "compat_env:password": sha(ENV_TOKEN),
    "compat_env:extra.header": sha("Bearer " + ENV_TOKEN),
    "compat_meta:login": sha(APP_SECRET["username"]),
    "compat_meta:password": sha(APP_SECRET["password"]),
    "compat_meta:extra.client_code": sha(APP_SECRET["client_code"]),
    "compat_meta:extra.plain": sha("not-a-secret"),
    "compat_trigger:password": sha(TRIGGER_PASSWORD),
    "compat_trigger_broken:password": sha("never-resolves"),
    # tests/compat_dags/compat_entry_points.py: what compat_render's templated field renders to
    "compat_render:text": sha(f"login={APP_SECRET['username']} password={APP_SECRET['password']}"),
}

# The DAGs of tests/compat_dags/compat_entry_points.py (issue 18's entry points), run beside compat_refs;
# compat_async exists only on lines whose PythonOperator awaits a coroutine.
ENTRY_DAG_IDS = ("compat_dag_callback", "compat_render", "compat_marker_subprocess", "compat_async")

# The line the plugin logs for each value it resolves (connection, field, secret, source; no value).
RESOLUTION_LINE = re.compile(r"field '[^']*': secret \S+ \([^)]*\) from (?:aws|worker cache|process cache) in .*")

# Every request the plugin could make to Secrets Manager.
AWS_READS = ("GetSecretValue", "BatchGetSecretValue", "DescribeSecret", "ListSecrets")


def aws_reads(aws: AwsStandIn) -> int:
    return sum(aws.calls(action) for action in AWS_READS)


def messages(log: str) -> list[str]:
    """The messages of a task log: 3.x writes JSON lines (their `event`, and the `exc_value` of
    an exception's `error_detail`), 2.x plain text lines."""
    found = []
    for line in log.splitlines():
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict) and isinstance(record.get("event"), str):
                found.append(record["event"])
                for detail in record.get("error_detail") or []:
                    if isinstance(detail, dict) and detail.get("exc_value"):
                        found.append(f"{detail.get('exc_type')}: {detail['exc_value']}")
                continue
        found.append(line)
    return found


def tagged(log: str, tag: str) -> str:
    """The text after `tag` in the first message holding it ('' if none)."""
    return next((m.split(tag, 1)[1].strip() for m in messages(log) if tag in m), "")


@dataclass
class CompatRun:
    """One finished run of the compat DAG and what it left behind."""

    af: Any
    aws: AwsStandIn
    run_id: str
    state: str
    states: dict[str, str | None]
    marker_dir: Path
    logs: dict[str, str] = field(default_factory=dict)
    log_files: list[Path] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    #: the runs of ENTRY_DAG_IDS (those that exist on this line), by DAG id
    entry: dict[str, EntryRun] = field(default_factory=dict)
    #: where compat_entry_points leaves its hashes (COMPAT_PROBE_DIR)
    probe_dir: Path | None = None

    def markers(self) -> dict[str, str]:
        return {p.name: p.read_text().strip() for p in sorted(self.marker_dir.iterdir())}

    def log(self, task_id: str) -> str:
        assert task_id in self.logs, f"no log file for {task_id}; files: {[str(p) for p in self.log_files]}"
        return self.logs[task_id]

    def diag(self, task_id: str | None = None, lines: int = 40) -> str:
        """States, markers and a log tail, for assertion messages."""
        text = f"line {self.af.line.version}, run {self.state}, states {self.states}, markers {self.markers()}"
        if task_id is not None and task_id in self.logs:
            tail = [m if len(m) <= 400 else m[:400] + " [...]" for m in messages(self.logs[task_id])[-lines:]]
            text += f"\n--- last messages of the {task_id} log ---\n" + "\n".join(tail)
        return text


@dataclass
class EntryRun:
    """One finished run of a DAG of compat_entry_points."""

    run_id: str
    state: str
    states: dict[str, str | None]
    logs: dict[str, str]


def _read_logs(af: Any, dag_id: str, run_id: str) -> dict[str, str]:
    logs: dict[str, str] = {}
    for path in af.task_log_files(dag_id, run_id):
        task_id = next(p.split("=", 1)[1] for p in path.parts if p.startswith("task_id="))
        logs[task_id] = logs.get(task_id, "") + path.read_text(errors="replace")
    return logs


def _dag_exists(af: Any, dag_id: str) -> bool:
    from standins.airflow_standalone import AirflowStandaloneError

    try:
        af.api_request("GET", f"{af.api_prefix}/dags/{dag_id}")
    except AirflowStandaloneError:
        return False
    return True


@pytest.fixture(scope="module")
def compat_run(aws_server: AwsStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CompatRun]:
    """Start Airflow with the plugin as [secrets] backend, add the connections, run the DAG once."""
    from standins.airflow_standalone import AirflowStandalone

    t0 = time.monotonic()
    aws = aws_server
    aws.reset()
    client = aws.client()
    client.create_secret(Name="compat/app", SecretString=json.dumps(APP_SECRET))
    client.create_secret(Name="compat/env", SecretString=json.dumps({"token": ENV_TOKEN}))
    client.create_secret(Name="compat/trigger", SecretString=json.dumps({"password": TRIGGER_PASSWORD}))
    client.create_secret(Name="compat/http", SecretString=json.dumps({"password": HTTP_PASSWORD}))

    root = tmp_path_factory.mktemp("compat-standalone")
    dags = root / "dags"
    dags.mkdir()
    shutil.copy(DAGS / "compat_refs.py", dags / "compat_refs.py")
    shutil.copy(DAGS / "compat_entry_points.py", dags / "compat_entry_points.py")
    marker_dir = root / "markers"
    marker_dir.mkdir()
    probe_dir = root / "probes"
    probe_dir.mkdir()
    cache_dir = root / "worker-cache"
    cache_dir.mkdir(mode=0o700)
    kwargs = {
        "region_name": "us-east-1",
        "endpoint_url": aws.endpoint_url,
        "cache_ttl_seconds": 300,
        "shared_cache_dir": str(cache_dir),
    }
    config = {
        ("secrets", "backend"): BACKEND,
        ("secrets", "backend_kwargs"): json.dumps(kwargs),
        # 3.3: the UI's Test button (and POST /connections/enqueue-test) runs the test on a worker.
        ("core", "test_connection"): "Enabled",
    }
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "COMPAT_MARKER_DIR": str(marker_dir),
        "COMPAT_PROBE_DIR": str(probe_dir),
        "COMPAT_EXPECTED_SHA256": json.dumps(EXPECTED_SHA256),
        **{f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn) for conn_id, conn in ENV_CONNS.items()},
    }
    conn_file = root / "connections.json"
    conn_file.write_text(json.dumps(OTHER_METASTORE_CONNS))
    seconds: dict[str, float] = {}
    with AirflowStandalone(home=root / "home", dags_folder=dags, config=config, env=env) as af:
        # Both overlap with component start-up: the CLI only needs the DB, which start() created.
        af.run_cli("connections", "add", "compat_meta", "--conn-json", json.dumps(META_CONN))
        af.run_cli("connections", "import", str(conn_file))
        af.wait_ready(timeout=300)
        seconds["ready"] = time.monotonic() - t0
        t_run = time.monotonic()
        run_id = af.trigger(DAG_ID, timeout=180)
        entry_ids = {
            dag_id: af.trigger(dag_id, timeout=180)
            for dag_id in ENTRY_DAG_IDS
            if dag_id != "compat_async" or _dag_exists(af, dag_id)
        }
        # Only now: the harness's trigger() gives up while an import error stands for long.
        shutil.copy(DAGS / "compat_parse_refuses.py", dags / "compat_parse_refuses.py")
        state = af.wait_for_run(DAG_ID, run_id, timeout=420)
        entry = {}
        for dag_id, entry_run_id in entry_ids.items():
            entry_state = af.wait_for_run(dag_id, entry_run_id, timeout=300)
            entry[dag_id] = EntryRun(
                entry_run_id, entry_state, af.task_states(dag_id, entry_run_id), _read_logs(af, dag_id, entry_run_id)
            )
        seconds["run"] = time.monotonic() - t_run
        run = CompatRun(
            af=af, aws=aws, run_id=run_id, state=state, states=af.task_states(DAG_ID, run_id), marker_dir=marker_dir,
            entry=entry, probe_dir=probe_dir,
        )  # fmt: skip
        run.log_files = af.task_log_files(DAG_ID, run_id)
        for path in run.log_files:
            task_id = next(p.split("=", 1)[1] for p in path.parts if p.startswith("task_id="))
            run.logs[task_id] = run.logs.get(task_id, "") + path.read_text(errors="replace")
        run.seconds = seconds
        yield run
    seconds["total"] = time.monotonic() - t0
    print(f"\nCOMPAT STANDALONE Airflow {af.line.version}: {json.dumps({k: round(v, 1) for k, v in seconds.items()})}")


# ---------------------------------------------------------------------- resolved in tasks


@pytest.mark.parametrize("task_id", ["env_conn_resolved", "meta_conn_resolved"])
def test_reference_arrives_resolved_in_the_task(compat_run: CompatRun, task_id: str) -> None:
    """AIRFLOW_CONN_* and metastore connections: login, password and extra values all resolved."""
    assert compat_run.states.get(task_id) == "success", compat_run.diag(task_id)
    assert tagged(compat_run.log(task_id), "COMPAT_CHECKED").endswith("wrong=[]"), compat_run.diag(task_id)
    assert not compat_run.markers(), compat_run.diag(task_id)


# ----------------------------------------------------------------- broken ones fail closed


@pytest.mark.parametrize(
    ("task_id", "conn_id", "reference"),
    [
        ("missing_key_fails", "compat_missing_key", MISSING_KEY_REF),
        ("missing_secret_fails", "compat_missing_secret", MISSING_SECRET_REF),
    ],
)
def test_broken_reference_fails_the_task_and_is_never_handed_out(
    compat_run: CompatRun, task_id: str, conn_id: str, reference: str
) -> None:
    assert compat_run.states.get(task_id) == "failed", compat_run.diag(task_id)
    assert not [m for m in compat_run.markers() if conn_id in m], compat_run.diag(task_id)
    log = compat_run.log(task_id)
    assert "COMPAT_UNEXPECTED_SUCCESS" not in log, compat_run.diag(task_id)
    # The failure names the connection and the reference (and never a value: see the log test).
    # The reference is looked for without its braces, so that a message quoting it in another
    # form (e.g. one Airflow's masker, which knows the raw password text, leaves alone) counts.
    failure = [m for m in messages(log) if f"connection '{conn_id}'" in m]
    assert failure, compat_run.diag(task_id, 80)
    assert any(reference.strip("{}") in m for m in failure), (
        f"no failure message names the reference {reference!r}:\n" + "\n".join(failure)
    )


# --------------------------------------------------------------------------- the servers


def test_rest_api_hands_out_the_raw_connection_without_an_aws_call(compat_run: CompatRun) -> None:
    """The API server (webserver on 2.x) reads the stored references; it never resolves them."""
    af = compat_run.af
    before = aws_reads(compat_run.aws)
    conn = af.api_request("GET", f"{af.api_prefix}/connections/compat_meta")
    after = aws_reads(compat_run.aws)
    assert conn["login"] == META_CONN["login"], conn
    assert json.loads(conn["extra"])["client_code"] == json.loads(META_CONN["extra"])["client_code"], conn
    # 3.x redacts the password as '***' whatever it holds; 2.x does not return it at all.
    assert conn.get("password") in (None, "***", META_CONN["password"]), conn
    assert after == before, f"{after - before} Secrets Manager call(s) while the API server served a connection"
    # Neither did it resolve anything for the run, nor write a value to its log.
    api_log = af.component_logs()[af.api_component].read_text(errors="replace")
    assert not RESOLUTION_LINE.findall(api_log), RESOLUTION_LINE.findall(api_log)[:3]
    for value in PLAINTEXTS:
        assert value not in api_log, f"a secret value is in the {af.api_component} log"


@pytest.mark.parametrize("conn_id", ["compat_meta", "compat_env"])
def test_connections_get_prints_no_resolved_value(compat_run: CompatRun, conn_id: str) -> None:
    before = aws_reads(compat_run.aws)
    proc = compat_run.af.run_cli("connections", "get", conn_id, "--output", "json", check=False)
    after = aws_reads(compat_run.aws)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    leaked = [v for v in {*PLAINTEXTS, *compat_run.aws.served_values} if v in output]
    assert not leaked, f"`airflow connections get {conn_id}` printed {len(leaked)} secret value(s)"
    assert "workato:sm:" in proc.stdout, proc.stdout[-2000:]  # it shows the stored reference instead
    assert after == before, f"{after - before} Secrets Manager call(s) from `airflow connections get`"


# ---------------------------------------------------------------------------- triggers


def test_trigger_lookup_resolves(compat_run: CompatRun) -> None:
    task_id = "deferred_resolved"
    assert compat_run.states.get(task_id) == "success", compat_run.diag(task_id, 80)
    event_text = tagged(compat_run.log(task_id), "COMPAT_TRIGGER_EVENT")
    event = json.loads(event_text) if event_text else {}
    assert event.get("matched") is True and event.get("raw") == [], compat_run.diag(task_id, 80)
    assert not [m for m in compat_run.markers() if "compat_trigger" in m], compat_run.diag(task_id)


def test_broken_reference_fails_the_trigger_and_the_task(compat_run: CompatRun) -> None:
    task_id = "deferred_broken_fails"
    conn_id = "compat_trigger_broken"
    assert compat_run.states.get(task_id) == "failed", compat_run.diag(task_id, 80)
    assert not [m for m in compat_run.markers() if conn_id in m], compat_run.diag(task_id)
    log = compat_run.log(task_id)
    # Failed by the trigger, not after an event came back with the raw text or a wrong password.
    assert "COMPAT_TRIGGER_EVENT" not in log, compat_run.diag(task_id, 80)
    # The trigger's error is in the task log (where the triggerer writes trigger logs) or, failing
    # that, in the triggerer's own log; either way it names the connection and the reference.
    triggerer_log = compat_run.af.component_logs()["triggerer"].read_text(errors="replace")
    assert any(
        f"connection '{conn_id}'" in text and BROKEN_TRIGGER_REF.strip("{}") in text for text in (log, triggerer_log)
    ), compat_run.diag(task_id, 80)


# -------------------------------------------------------------------------------- logs


def test_task_logs_are_masked_and_hold_no_secret_value(compat_run: CompatRun) -> None:
    assert compat_run.log_files, compat_run.diag()
    probe = tagged(compat_run.log("meta_conn_resolved"), "COMPAT_MASK_PROBE").split()
    # The login, the password (a field Airflow masks anyway) and extra.client_code (a key it does
    # not consider sensitive: only the plugin's registration masks it) all show as ***.
    for shown in ("login=***", "password=***", "extra.client_code=***"):
        assert shown in probe, (probe, compat_run.diag("meta_conn_resolved"))
    served = compat_run.aws.served_values
    assert set(APP_SECRET.values()) <= served, "sanity: the stand-in saw the app secret being served"
    for path in compat_run.log_files:
        text = path.read_text(errors="replace")
        for value in served | set(PLAINTEXTS):
            assert value not in text, f"a secret value served by AWS is in {path}"


# ----------------------------------------------- issue 18: every entry point does the right thing


def _entry(compat_run: CompatRun, dag_id: str) -> EntryRun:
    assert dag_id in compat_run.entry, f"{dag_id} did not run; runs: {sorted(compat_run.entry)}"
    return compat_run.entry[dag_id]


def _wait_for_file(path: Path, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.5)
    return None


def _probes(compat_run: CompatRun) -> list[str]:
    assert compat_run.probe_dir is not None
    return sorted(p.name for p in compat_run.probe_dir.iterdir())


def _python_of(af: Any) -> str:
    return str(Path(af.airflow_bin).parent / "python")


def test_dag_failure_callback_resolves(compat_run: CompatRun) -> None:
    """A DAG-level on_failure_callback, run by the DAG processor (2.x: the DAG file processor the
    scheduler forks), gets the resolved password."""
    run = _entry(compat_run, "compat_dag_callback")
    assert run.state == "failed" and run.states.get("fails") == "failed", run.states
    assert compat_run.probe_dir is not None
    # The callback runs after the run is marked failed, whenever the processor gets to it.
    digest = _wait_for_file(compat_run.probe_dir / "dag-callback-compat_meta.sha256", timeout=180)
    assert digest is not None, f"the DAG failure callback left no hash; probes {_probes(compat_run)}"
    assert not [p for p in _probes(compat_run) if p.startswith("raw-dag-callback")], _probes(compat_run)
    assert digest == sha(APP_SECRET["password"]), "the DAG failure callback got another password"


def test_dag_file_reading_a_reference_at_parse_time_is_an_import_error(compat_run: CompatRun) -> None:
    af = compat_run.af
    if af.line.is_airflow2:
        _parse_time_refusal_is_logged_on_airflow2(compat_run)
        return
    deadline = time.monotonic() + 180
    errors: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        data = af.api_request("GET", f"{af.api_prefix}/importErrors")
        errors = [e for e in data.get("import_errors", []) if "compat_parse_refuses" in str(e.get("filename"))]
        if errors:
            break
        time.sleep(1)
    assert errors, f"no import error for compat_parse_refuses.py; probes {_probes(compat_run)}"
    trace = str(errors[0].get("stack_trace"))
    assert "compat_meta" in trace and "not resolved while a DAG file is parsed" in trace, trace[-2000:]
    assert not [p for p in _probes(compat_run) if p.startswith("raw-parser")], _probes(compat_run)
    assert not _dag_exists(af, "compat_parse_refuses")
    for value in PLAINTEXTS:
        assert value not in trace


def _parse_time_refusal_is_logged_on_airflow2(compat_run: CompatRun) -> None:
    """Airflow 2's DAG file processor dies of a lookup that aborts, and its lookup loop goes on
    past any ordinary error: the refusal is logged naming the connection, the file gets the
    stored reference (field names only in the probe, no value), and no AWS call is made."""
    af = compat_run.af
    before = aws_reads(compat_run.aws)
    deadline = time.monotonic() + 180
    logged = ""
    while time.monotonic() < deadline:
        texts = [p.read_text(errors="replace") for p in (af.home / "logs").rglob("*compat_parse_refuses*") if p.is_file()]
        texts += [p.read_text(errors="replace") for p in af.component_logs().values()]
        logged = "\n".join(t for t in texts if "connection 'compat_meta' holds AWS Secrets Manager references" in t)
        if logged and [p for p in _probes(compat_run) if p.startswith("raw-parser")]:
            break
        time.sleep(1)
    assert logged, f"no refusal logged for compat_parse_refuses.py; probes {_probes(compat_run)}"
    assert aws_reads(compat_run.aws) == before  # nothing fetched at parse time
    for value in PLAINTEXTS:
        assert value not in logged


def test_tasks_render_prints_no_value(compat_run: CompatRun) -> None:
    """`airflow tasks render` on a field rendering {{ conn.<id>.password }}: the stored reference, never a value."""
    run = _entry(compat_run, "compat_render")
    # The task itself rendered the values (its check would have failed it otherwise).
    assert run.states.get("render_conn") == "success", (run.states, run.logs.get("render_conn", "")[-2000:])
    assert "matched=True" in tagged(run.logs["render_conn"], "COMPAT_RENDER_CHECKED"), run.logs["render_conn"][-2000:]
    before = aws_reads(compat_run.aws)
    proc = compat_run.af.run_cli("tasks", "render", "compat_render", "render_conn", run.run_id, check=False)
    after = aws_reads(compat_run.aws)
    output = proc.stdout + proc.stderr
    leaked = compat_run.aws.leaked_in(output) + [v for v in PLAINTEXTS if v in output]
    assert not leaked, f"`airflow tasks render` printed {len(leaked)} secret value(s)"
    assert after == before, f"{after - before} Secrets Manager call(s) from `airflow tasks render`"
    if proc.returncode == 0:
        assert "workato:sm:username:compat/app" in proc.stdout, proc.stdout[-2000:]  # the stored reference
    else:
        # 3.3's CLI reads connections through the Task SDK's fallback chain, which has no metastore:
        # Airflow itself cannot render a metastore connection there, with or without this backend.
        assert "AirflowNotFoundException: The conn_id `compat_meta` isn't defined" in output, output[-3000:]
        assert "airflow_sm_refs" not in output, output[-3000:]


def test_script_a_task_starts_with_an_inherited_server_marker_resolves(compat_run: CompatRun) -> None:
    """subprocess.run([sys.executable, script]) from a task, with _AIRFLOW_PROCESS_CONTEXT=server in its env."""
    run = _entry(compat_run, "compat_marker_subprocess")
    log = run.logs.get("script_with_server_marker", "")
    assert run.states.get("script_with_server_marker") == "success", (run.states, log[-2000:])
    assert compat_run.probe_dir is not None
    outcome = (compat_run.probe_dir / "task-child-compat_env.rc").read_text()
    if outcome.split("\n", 1)[0] != "0" and "Could not parse SQLAlchemy URL" in outcome:
        # 3.x: the task's environment blanks the metastore URL, so no Python it starts can import
        # Airflow; test_script_with_an_inherited_server_marker_resolves covers the marker there.
        pytest.skip("a task's child process cannot import Airflow on this line (metastore URL blanked)")
    assert outcome.split("\n", 1)[0] == "0", f"the script failed: {outcome}"
    assert not [p for p in _probes(compat_run) if p.startswith("raw-task-child")], _probes(compat_run)
    digest = (compat_run.probe_dir / "task-child-compat_env.sha256").read_text().strip()
    assert digest == sha(ENV_TOKEN), "the script got another password"


def test_script_with_an_inherited_server_marker_resolves(compat_run: CompatRun) -> None:
    """A script run from a shell or container that has _AIRFLOW_PROCESS_CONTEXT=server (and the
    components' configuration): its own command line is no server's, so it resolves."""
    from tests.compat_dags.compat_entry_points import CHILD_SCRIPT

    af = compat_run.af
    assert compat_run.probe_dir is not None
    script = compat_run.probe_dir.parent / "read_connection.py"
    script.write_text(CHILD_SCRIPT)
    env = {**af.env, "_AIRFLOW_PROCESS_CONTEXT": "server"}
    proc = subprocess.run(
        [_python_of(af), str(script), str(compat_run.probe_dir), "shell", "compat_meta"],
        env=env, cwd=af.home, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert not compat_run.aws.leaked_in(output), "the script printed a secret value"
    assert proc.returncode == 0, output[-3000:]
    assert not [p for p in _probes(compat_run) if p.startswith("raw-shell")], _probes(compat_run)
    digest = (compat_run.probe_dir / "shell-compat_meta.sha256").read_text().strip()
    assert digest == sha(APP_SECRET["password"]), "the script got another password"


class _BasicAuthApi:
    """An HTTP endpoint on loopback answering 200 only to HTTP basic auth with one login and password."""

    def __init__(self, login: str, password: str) -> None:
        import base64
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        expected = "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()
        api = self
        self.accepted = 0
        self.rejected = 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # never echo a request (it carries the credentials)

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                ok = self.headers.get("Authorization", "") == expected
                if ok:
                    api.accepted += 1
                else:
                    api.rejected += 1
                payload = b'{"ok": true}' if ok else b'{"ok": false}'
                self.send_response(200 if ok else 401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_HEAD = _answer  # noqa: N815

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_worker_connection_test_resolves(compat_run: CompatRun) -> None:
    """3.3+: POST /connections/enqueue-test runs the test on a worker, which resolves the reference;
    the result shown holds no value."""
    af = compat_run.af
    if af.line.is_airflow2 or (af.line.major, af.line.minor) < (3, 3):
        pytest.skip("workers test connections from Airflow 3.3 ([core] test_connection)")
    api = _BasicAuthApi("probe-user", HTTP_PASSWORD)
    try:
        body = {
            "connection_id": "compat_http_probe",
            "conn_type": "http",
            "host": "127.0.0.1",
            "port": api.port,
            "schema": "http",
            "login": "probe-user",
            "password": ref("password", "compat/http"),
        }
        queued = af.api_request("POST", f"{af.api_prefix}/connections/enqueue-test", body)
        token = queued["token"]
        deadline = time.monotonic() + 180
        result: dict[str, Any] = queued
        while time.monotonic() < deadline:
            result = af.api_request(
                "GET", f"{af.api_prefix}/connections/enqueue-test", headers={"Airflow-Connection-Test-Token": token}
            )
            if result.get("state") in ("success", "failed"):
                break
            time.sleep(1)
    finally:
        api.stop()
    shown = json.dumps(result)
    assert not compat_run.aws.leaked_in(shown) and HTTP_PASSWORD not in shown, "the test result holds a value"
    assert result.get("state") == "success", (result, api.accepted, api.rejected)
    assert api.accepted >= 1, (api.accepted, api.rejected)


def test_async_task_log_shows_resolved_values_masked(compat_run: CompatRun) -> None:
    """An `async def` @task (3.2+) prints resolved values: its log shows ***."""
    if "compat_async" not in compat_run.entry:
        pytest.skip("this line's PythonOperator does not await a coroutine (3.2+)")
    run = compat_run.entry["compat_async"]
    log = run.logs.get("async_prints_values", "")
    assert run.states.get("async_prints_values") == "success", (run.states, log[-3000:])
    assert "matched=True" in tagged(log, "COMPAT_ASYNC_CHECKED"), log[-3000:]
    assert not compat_run.aws.leaked_in(log), "a secret value is in the async task's log"
    probe = tagged(log, "COMPAT_ASYNC_PROBE").split()
    for shown in ("login=***", "password=***", "client_code=***"):
        assert shown in probe, probe


def test_no_value_in_any_component_or_processor_log(compat_run: CompatRun) -> None:
    """The callbacks, parses and runs above left no value in any log Airflow wrote."""
    af = compat_run.af
    paths = [*af.component_logs().values(), *(p for p in (af.home / "logs").rglob("*") if p.is_file())]
    for path in paths:
        text = path.read_text(errors="replace")
        if path.name.endswith(".log") and path.parent == af.home:
            # Airflow's LocalExecutor supervisor also echoes what a task sends it into the
            # scheduler's own log without its masker: what the task prints (3.3, tagged
            # [task.stdout]) and, at debug level, the task's messages such as its rendered
            # fields (3.0). The task's log file, written by the same supervisor, is masked (see
            # the task-log tests). The probe tasks above print and render values on purpose;
            # what the plugin and Airflow log of their own must hold none.
            echoes = ("[task.stdout]", "Received message from task runner")
            text = "\n".join(line for line in text.splitlines() if not any(e in line for e in echoes))
        assert not compat_run.aws.leaked_in(text), f"a secret value is in {path}"
