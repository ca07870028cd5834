"""A task process served from the worker cache imports no AWS SDK.

Fresh interpreters, as a task process on a worker that spawns them: the first
looks a 2-reference connection up cold (fetching from moto), the second finds
both secrets in the worker cache and must not have imported ``botocore``,
``boto3`` or the Amazon provider's hooks by the time it has its value.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from standins.aws import AwsStandIn
from tests.conftest import BACKEND
from tests.worker_proc import REPO

pytestmark = pytest.mark.compat

HEAVY = ("botocore", "boto3", "airflow.providers.amazon.aws.hooks")

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from airflow_sm_refs._compat import base_hook

    conn = base_hook().get_connection("db")
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("botocore", "boto3")
                   or m.startswith("airflow.providers.amazon.aws.hooks"))
    print(json.dumps({"login": conn.login == "app-user", "password": conn.password == "pw-2", "heavy": heavy}))
    """
)


def run_task(env: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    script = tmp_path / "task.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)], env=env, cwd=REPO, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def task_env(aws: AwsStandIn, cache_dir: Path) -> dict[str, str]:
    kwargs = {"region_name": "us-east-1", "endpoint_url": aws.endpoint_url, "shared_cache_dir": str(cache_dir)}
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
        "AIRFLOW__SECRETS__BACKEND": BACKEND,
        "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps(kwargs),
        "AIRFLOW_CONN_DB": json.dumps(
            {
                "conn_type": "postgres",
                "login": "{{workato:sm:user:start/db}}",
                "password": "{{workato:sm::start/token}}",
            }
        ),
    }


def test_a_worker_cache_hit_leaves_botocore_unimported(aws: AwsStandIn, tmp_path: Path) -> None:
    aws.client().create_secret(Name="start/db", SecretString='{"user": "app-user"}')
    aws.client().create_secret(Name="start/token", SecretString="pw-2")
    env = task_env(aws, tmp_path / "cache")
    cold = run_task(env, tmp_path)
    assert cold["login"] and cold["password"]
    assert "botocore" in cold["heavy"]  # a miss builds clients, as it must
    aws.reset_counts()
    warm = run_task(env, tmp_path)
    assert warm["login"] and warm["password"]
    assert aws.calls() == 0
    assert warm["heavy"] == [], warm["heavy"]
