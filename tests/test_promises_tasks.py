"""README promises about where the plugin runs, checked in real task runs (``dag.test()``).

Not ``compat``: the DAGs are written for the Airflow 3 task SDK. The
version-independent promises are in ``test_promises.py``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from standins.aws import AwsStandIn
from tests.conftest import BACKEND, set_conn

DB = {"username": "app_user", "password": "Promise-pw-4821"}
TOKEN = "metastore-var-token-5150"


def secret(aws: AwsStandIn, name: str, document: Any) -> None:
    aws.client().create_secret(Name=name, SecretString=json.dumps(document))


def run_dag(metastore: Path, dag_id: str, source: str) -> Any:
    """Write ``source`` into the dags folder, run it with dag.test() and return the task's return value."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dags = metastore / "dags"
    dags.mkdir(exist_ok=True)
    path = dags / f"{dag_id}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(dag_id, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run = module.dag.test()
    assert run.state == "success"
    with create_session() as session:
        row = session.scalars(XComModel.get_many(run_id=run.run_id, key="return_value", dag_ids=dag_id)).first()
        assert row is not None, "the task returned nothing"
        return XComModel.deserialize_value(row)


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


WORKERS_DAG = '''
import hashlib

from airflow.sdk import DAG, BaseHook, task

with DAG(dag_id="promises_workers_backend", schedule=None, catchup=False) as dag:

    @task
    def digest_of_password():
        conn = BaseHook.get_connection("db")
        return hashlib.sha256((conn.password or "").encode()).hexdigest()

    digest_of_password()
'''

VARIABLE_DAG = '''
import hashlib

from airflow.sdk import DAG, Variable, task

with DAG(dag_id="promises_metastore_variable", schedule=None, catchup=False) as dag:

    @task
    def digest_of_variable():
        return hashlib.sha256(Variable.get("partner_token").encode()).hexdigest()

    digest_of_variable()
'''


def _has_workers_backend() -> bool:
    from airflow_sm_refs._compat import has_workers_secrets_backend

    return has_workers_secrets_backend()


@pytest.fixture
def metastore_variable(metastore: Path) -> Any:
    """The Variable ``partner_token`` stored in the metastore, holding a reference."""
    from airflow.models import Variable
    from airflow.utils.session import create_session

    with create_session() as session:
        session.query(Variable).filter(Variable.key == "partner_token").delete()
        session.add(Variable(key="partner_token", val="Bearer {{workato:sm:token:prod/api}}"))
    yield
    with create_session() as session:
        session.query(Variable).filter(Variable.key == "partner_token").delete()


@pytest.mark.skipif(not _has_workers_backend(), reason="[workers] secrets_backend is Airflow 3 only")
def test_workers_secrets_backend_is_what_tasks_use(
    metastore: Path, aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_sm_refs._compat import reset_secrets_chain

    secret(aws, "prod/db", DB)
    set_conn(monkeypatch, "db", {"conn_type": "postgres", "password": "{{workato:sm:password:prod/db}}"})
    # [secrets] backend unset: only [workers] names the plugin, as the README offers.
    monkeypatch.delenv("AIRFLOW__SECRETS__BACKEND", raising=False)
    monkeypatch.setenv("AIRFLOW__WORKERS__SECRETS_BACKEND", BACKEND)
    monkeypatch.setenv(
        "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS",
        json.dumps({"region_name": "us-east-1", "endpoint_url": aws.endpoint_url, "shared_cache": False}),
    )
    reset_secrets_chain()
    try:
        assert run_dag(metastore, "promises_workers_backend", WORKERS_DAG) == digest(DB["password"])
        assert aws.calls() == 1
    finally:
        monkeypatch.delenv("AIRFLOW__WORKERS__SECRETS_BACKEND")
        reset_secrets_chain()


def test_variable_stored_in_the_metastore_is_resolved_in_a_task(
    metastore_variable: None, backend_configured: AwsStandIn, metastore: Path
) -> None:
    from airflow.models import Variable
    from airflow.utils.session import create_session

    secret(backend_configured, "prod/api", {"token": TOKEN})
    assert run_dag(metastore, "promises_metastore_variable", VARIABLE_DAG) == digest(f"Bearer {TOKEN}")
    assert backend_configured.calls() == 1
    with create_session() as session:  # the metastore still holds the reference only
        assert session.query(Variable).filter(Variable.key == "partner_token").one().val.startswith("Bearer {{workato")


def test_variable_stored_in_the_metastore_is_resolved_in_a_script(
    metastore_variable: None, backend_configured: AwsStandIn
) -> None:
    from airflow.models import Variable

    secret(backend_configured, "prod/api", {"token": TOKEN})
    assert Variable.get("partner_token") == f"Bearer {TOKEN}"
