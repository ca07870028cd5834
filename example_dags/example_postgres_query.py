"""
Query PostgreSQL with a login and password that live only in AWS Secrets Manager.

Setup:

1. One JSON secret holds both::

       aws secretsmanager create-secret --name warehouse/db \\
           --secret-string '{"username": "reporting", "password": "<the password>"}'

2. The connection holds references, not credentials::

       airflow connections add warehouse_db --conn-type postgres \\
           --conn-host db.internal --conn-port 5432 --conn-schema warehouse \\
           --conn-login '{{workato:sm:username:warehouse/db}}' \\
           --conn-password '{{workato:sm:password:warehouse/db}}'

3. ``[secrets] backend = airflow_sm_refs.backend.SecretsManagerRefsBackend``.

Both references name one secret, so a task makes one Secrets Manager call for
them (none at all when the worker's cache already holds it).
"""

from __future__ import annotations

from airflow.providers.common.sql.operators.sql import SQLExecuteQueryOperator

try:  # Airflow 3
    from airflow.sdk import DAG
except ImportError:  # Airflow 2 (what Amazon MWAA runs)
    from airflow import DAG

with DAG(
    dag_id="example_postgres_query",
    schedule=None,
    catchup=False,
    tags=["airflow-sm-refs", "example"],
    doc_md=__doc__,
) as dag:
    SQLExecuteQueryOperator(
        task_id="who_am_i",
        conn_id="warehouse_db",
        sql="SELECT current_user, current_database(), version()",
        show_return_value_in_logs=True,
    )
