"""
Call an HTTP API from a *deferrable* task: the triggerer resolves the reference.

A deferrable operator hands its wait to the triggerer, and the trigger looks
the connection up there (``BaseHook.aget_connection`` on 3.1+, a thread
around ``get_connection`` before). The backend resolves references in the
trigger runner as it does in a task: a cache hit is served in the event loop,
a miss in a worker thread, and a broken reference fails the trigger, and so
the task, instead of sending the raw reference as the header.

Setup: as for ``example_http_bearer_token`` (the ``partner/api`` secret and
the ``partner_api`` connection with
``{"Authorization": "Bearer {{workato:sm:token:partner/api}}"}`` in its
extras), and a running triggerer (``airflow triggerer``). A deferred
``HttpOperator`` needs ``apache-airflow-providers-http`` 5 or later: 4.x (the
version pinned with Airflow 2.10) closes its session before the response is
read and fails at random with "Connection closed" (apache/airflow#45228).
"""

from __future__ import annotations

import json

from airflow.providers.http.operators.http import HttpOperator

try:  # Airflow 3
    from airflow.sdk import DAG
except ImportError:  # Airflow 2 (what Amazon MWAA runs)
    from airflow import DAG

with DAG(
    dag_id="example_deferrable_http",
    schedule=None,
    catchup=False,
    tags=["airflow-sm-refs", "example"],
    doc_md=__doc__,
) as dag:
    HttpOperator(
        task_id="call_api_deferred",
        http_conn_id="partner_api",
        endpoint="/v1/status",
        method="GET",
        deferrable=True,
        response_check=lambda response: response.status_code == 200 and json.loads(response.text)["ok"],
    )
