"""
Call an HTTP API with a bearer token that lives only in AWS Secrets Manager.

Setup:

1. Store the token in a JSON secret::

       aws secretsmanager create-secret --name partner/api \\
           --secret-string '{"token": "<the token>"}'

2. Create the connection ``partner_api`` with the *reference* in its extras
   (the HTTP hook sends every extra as a request header)::

       airflow connections add partner_api --conn-type http \\
           --conn-host api.partner.example --conn-schema https \\
           --conn-extra '{"Authorization": "Bearer {{workato:sm:token:partner/api}}"}'

3. Enable the backend in ``airflow.cfg``::

       [secrets]
       backend = airflow_sm_refs.backend.SecretsManagerRefsBackend
       backend_kwargs = {"region_name": "us-east-1"}

At task runtime the worker swaps the reference for the token, the request is
sent with ``Authorization: Bearer <token>``, and the token shows up in the
task log as ``***`` if anything prints it.
"""

from __future__ import annotations

import json
import logging

from airflow.providers.http.operators.http import HttpOperator

# Airflow 2.10 to 3.3: the Task SDK's names where there is one (MWAA runs 2.x).
try:
    from airflow.sdk import DAG, task
except ImportError:  # Airflow 2
    from airflow import DAG
    from airflow.decorators import task
try:
    from airflow.sdk import BaseHook
except ImportError:  # Airflow 2 and 3.0
    from airflow.hooks.base import BaseHook

log = logging.getLogger(__name__)

with DAG(
    dag_id="example_http_bearer_token",
    schedule=None,
    catchup=False,
    tags=["airflow-sm-refs", "example"],
    doc_md=__doc__,
) as dag:

    @task
    def show_connection() -> None:
        """Log what the task received: the masker prints the token as ***."""
        conn = BaseHook.get_connection("partner_api")
        log.info("partner_api Authorization header: %s", conn.extra_dejson.get("Authorization"))

    call_api = HttpOperator(
        task_id="call_api",
        http_conn_id="partner_api",
        endpoint="/v1/status",
        method="GET",
        response_check=lambda response: response.status_code == 200 and json.loads(response.text)["ok"],
        log_response=True,
    )

    show_connection() >> call_api
