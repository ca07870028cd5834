"""A mistyped backend option inside a real Airflow of the running line: nothing goes down, tasks fail closed.

``backend_kwargs`` holds ``cache_ttl`` (the option is ``cache_ttl_seconds``). The API server
(webserver on 2.x), scheduler and DAG processor must stay up and say so once, in one line; a
task reading a referenced connection fails with ``BackendOptionError`` naming the option; the
Airflow CLI steps aside (prints the stored reference). Its own Airflow: the configuration differs
from tests/test_compat_standalone.py's.

Runs on every supported line: ``<venv>/bin/python -m pytest -m compat tests/test_compat_bad_option.py``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from standins.aws import AwsStandIn

pytestmark = [pytest.mark.compat, pytest.mark.e2e, pytest.mark.timeout(900)]

DAGS = Path(__file__).resolve().parent / "compat_dags"
DAG_ID = "compat_bad_option"
BACKEND = "airflow_sm_refs.backend.SecretsManagerRefsBackend"
PASSWORD = "bad-option-Pw-51e2c9d4"
REFERENCE = "{{workato:sm:password:compat/bad}}"
#: the one line every process logs (and a task's failure says)
OPTION_ERROR = "unknown option 'cache_ttl' (did you mean 'cache_ttl_seconds'?)"


@dataclass
class BadOptionRun:
    af: Any
    aws: AwsStandIn
    run_id: str
    state: str
    states: dict[str, str | None]
    log: str


@pytest.fixture(scope="module")
def bad_option_run(aws_server: AwsStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BadOptionRun]:
    from standins.airflow_standalone import AirflowStandalone

    aws = aws_server
    aws.reset()
    aws.client().create_secret(Name="compat/bad", SecretString=json.dumps({"password": PASSWORD}))
    root = tmp_path_factory.mktemp("compat-bad-option")
    dags = root / "dags"
    dags.mkdir()
    shutil.copy(DAGS / "compat_bad_option.py", dags / "compat_bad_option.py")
    kwargs = {"region_name": "us-east-1", "endpoint_url": aws.endpoint_url, "cache_ttl": 60}
    config = {("secrets", "backend"): BACKEND, ("secrets", "backend_kwargs"): json.dumps(kwargs)}
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    with AirflowStandalone(home=root / "home", dags_folder=dags, config=config, env=env, triggerer=False) as af:
        conn = {"conn_type": "generic", "login": "bad-option-user", "password": REFERENCE}
        af.run_cli("connections", "add", "compat_bad_meta", "--conn-json", json.dumps(conn))
        af.wait_ready(timeout=300)
        run_id = af.trigger(DAG_ID, timeout=180)
        state = af.wait_for_run(DAG_ID, run_id, timeout=300)
        log = "".join(p.read_text(errors="replace") for p in af.task_log_files(DAG_ID, run_id))
        yield BadOptionRun(af, aws, run_id, state, af.task_states(DAG_ID, run_id), log)


def test_servers_stay_up(bad_option_run: BadOptionRun) -> None:
    af = bad_option_run.af
    health = af.api_request("GET", af.line.health_path)
    assert (health.get("scheduler") or {}).get("status") == "healthy", health
    if not af.line.is_airflow2:
        assert (health.get("dag_processor") or {}).get("status") == "healthy", health
    # Every component process is still running (the harness raises with the log tail if one exited).
    af.wait_ready(timeout=30)


def test_task_reading_a_reference_fails_naming_the_option(bad_option_run: BadOptionRun) -> None:
    run = bad_option_run
    assert run.states.get("reads_connection") == "failed", (run.states, run.log[-3000:])
    assert "COMPAT_UNEXPECTED_SUCCESS" not in run.log, run.log[-3000:]
    # 3.2.2+: the error itself; before, wrapped in SecretLookupAborted (the loops let nothing else through)
    assert "BackendOptionError" in run.log or "SecretLookupAborted" in run.log, run.log[-3000:]
    assert OPTION_ERROR in run.log, run.log[-3000:]
    assert not run.aws.leaked_in(run.log) and PASSWORD not in run.log


def test_components_log_one_error_line_not_a_traceback_storm(bad_option_run: BadOptionRun) -> None:
    af = bad_option_run.af
    logs = {name: path.read_text(errors="replace") for name, path in af.component_logs().items()}
    seen = {name: text.count(OPTION_ERROR) for name, text in logs.items()}
    # A component that looks a connection up says so (3.3: the scheduler and its executor's
    # workers); before 3.3 no server looks one up here, so none has anything to say.
    if not af.line.is_airflow2 and (af.line.major, af.line.minor) >= (3, 3):
        assert sum(seen.values()) >= 1, seen
    for name, text in logs.items():
        # Once per process that built the backend (a server may run a few), never once per lookup.
        assert seen[name] <= 3, seen
        storm = [line for line in text.splitlines() if "BackendOptionError" in line or "_options.py" in line]
        assert len(storm) <= 3, (name, storm[:10])
        assert PASSWORD not in text


def test_airflow_cli_steps_aside_with_one_line(bad_option_run: BadOptionRun) -> None:
    af = bad_option_run.af
    before = bad_option_run.aws.calls()
    proc = af.run_cli("connections", "get", "compat_bad_meta", "--output", "json", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "workato:sm:password:compat/bad" in proc.stdout, output[-3000:]
    # `connections get` reads the metastore itself on some lines (no line then); never more than one.
    assert output.count(OPTION_ERROR) <= 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert bad_option_run.aws.calls() == before and PASSWORD not in output
