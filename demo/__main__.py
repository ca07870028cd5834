"""``make demo``: the plugin's main job end to end, on embedded defaults.

Starts a moto server on 127.0.0.1 as the stand-in for AWS and stores a
secret in it, starts a small HTTP API that insists on that secret as a bearer
token, configures the backend in a throwaway AIRFLOW_HOME, runs the example
DAG with ``airflow dags test``, and reports what happened.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from standins.aws import AwsStandIn  # noqa: E402
from standins.http_api import BearerTokenApi  # noqa: E402

DAG_ID = "example_http_bearer_token"
SECRET_NAME = "partner/api"
TOKEN = "demo-token-7f3a9c2e51"  # noqa: S105 - a made-up token for the stand-in


def airflow_env(home: Path, aws: AwsStandIn, api: BearerTokenApi) -> dict[str, str]:
    """The environment of the Airflow commands: config, connection, fake AWS credentials."""
    env = dict(os.environ)
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "example_dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AWS_ACCESS_KEY_ID="demo",
        AWS_SECRET_ACCESS_KEY="demo",
        AWS_DEFAULT_REGION="us-east-1",
        AIRFLOW_CONN_PARTNER_API=json.dumps(
            {
                "conn_type": "http",
                "host": "127.0.0.1",
                "port": api.port,
                "schema": "http",
                "extra": {"Authorization": f"Bearer {{{{workato:sm:token:{SECRET_NAME}}}}}"},
            }
        ),
    )
    return env


def write_config(home: Path, aws: AwsStandIn) -> None:
    """airflow.cfg with the one [secrets] block a user adds."""
    kwargs = {"region_name": "us-east-1", "endpoint_url": aws.endpoint_url, "cache_ttl_seconds": 300}
    (home / "airflow.cfg").write_text(
        "[secrets]\n"
        "backend = airflow_sm_refs.backend.SecretsManagerRefsBackend\n"
        f"backend_kwargs = {json.dumps(kwargs)}\n"
    )


def main() -> int:
    home = Path(tempfile.mkdtemp(prefix="airflow-sm-refs-demo-"))
    started = time.monotonic()
    try:
        with AwsStandIn() as aws, BearerTokenApi(TOKEN) as api:
            aws.client().create_secret(Name=SECRET_NAME, SecretString=json.dumps({"token": TOKEN}))
            aws.reset_counts()
            write_config(home, aws)
            env = airflow_env(home, aws, api)
            airflow = [sys.executable, "-m", "airflow"]
            print(f"AIRFLOW_HOME      {home}")
            print(f"AWS stand-in      {aws.endpoint_url} (moto), secret {SECRET_NAME!r} stored")
            print(f"HTTP API          {api.url} (accepts only the secret's token)")
            print("connection        partner_api extra = {\"Authorization\": \"Bearer {{workato:sm:token:partner/api}}\"}")
            subprocess.run([*airflow, "db", "migrate"], env=env, check=True, capture_output=True, text=True)
            run = subprocess.run(
                [*airflow, "dags", "test", DAG_ID], env=env, capture_output=True, text=True, cwd=home
            )
            output = run.stdout + run.stderr
            state = _run_state(env)
            print()
            print("task states:")
            for task_id, task_state in sorted(_task_states(env).items()):
                print(f"  {task_id:<18}{task_state}")
            print(f"DAG run           {state}")
            print(f"AWS calls         {aws.calls()} GetSecretValue (one per secret per task process, then cached)")
            print(f"HTTP API          {api.requests} request(s), {api.rejected} rejected")
            print("resolved value, as Airflow's secrets masker shows it in task logs:")
            print("  Authorization: " + _masked_header(env))
            print(f"took {time.monotonic() - started:.1f} s")
            if state != "success":
                print(output[-4000:])
            return 0 if state == "success" and api.rejected == 0 else 1
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _masked_header(env: dict[str, str]) -> str:
    """Look the connection up as a task does, then show the header through the masker."""
    return _query(
        env,
        "from airflow.sdk import BaseHook\n"
        "from airflow.sdk._shared.secrets_masker import redact\n"
        "conn = BaseHook.get_connection('partner_api')\n"
        "print(redact(conn.extra_dejson['Authorization']))",
    )


def _query(env: dict[str, str], code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    ).stdout.strip().splitlines()[-1]


def _run_state(env: dict[str, str]) -> str:
    return _query(
        env,
        "from airflow.models import DagRun\n"
        f"runs = DagRun.find(dag_id={DAG_ID!r})\n"
        "print(runs[-1].state if runs else 'none')",
    )


def _task_states(env: dict[str, str]) -> dict[str, str]:
    return json.loads(
        _query(
            env,
            "import json\n"
            "from airflow.models import TaskInstance\n"
            "from airflow.utils.session import create_session\n"
            "with create_session() as s:\n"
            f"    tis = s.query(TaskInstance).filter(TaskInstance.dag_id == {DAG_ID!r}).all()\n"
            "    print(json.dumps({ti.task_id: str(ti.state) for ti in tis}))",
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
