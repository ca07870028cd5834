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
PLAINTEXTS = (*APP_SECRET.values(), ENV_TOKEN, TRIGGER_PASSWORD)


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
}

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

    root = tmp_path_factory.mktemp("compat-standalone")
    dags = root / "dags"
    dags.mkdir()
    shutil.copy(DAGS / "compat_refs.py", dags / "compat_refs.py")
    marker_dir = root / "markers"
    marker_dir.mkdir()
    cache_dir = root / "worker-cache"
    cache_dir.mkdir(mode=0o700)
    kwargs = {
        "region_name": "us-east-1",
        "endpoint_url": aws.endpoint_url,
        "cache_ttl_seconds": 300,
        "shared_cache_dir": str(cache_dir),
    }
    config = {("secrets", "backend"): BACKEND, ("secrets", "backend_kwargs"): json.dumps(kwargs)}
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "COMPAT_MARKER_DIR": str(marker_dir),
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
        state = af.wait_for_run(DAG_ID, run_id, timeout=420)
        seconds["run"] = time.monotonic() - t_run
        run = CompatRun(
            af=af, aws=aws, run_id=run_id, state=state, states=af.task_states(DAG_ID, run_id), marker_dir=marker_dir
        )
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
