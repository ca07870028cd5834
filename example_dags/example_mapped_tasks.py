"""
Many mapped tasks, one connection: the case the per-worker cache exists for.

Every mapped task instance runs in its own process. Without a cache shared by
the worker's processes each one would call Secrets Manager; with it (the
default, ``shared_cache = true``), a worker makes one call per secret per
``cache_ttl_seconds``, however many task processes ask at once.

Setup: the ``warehouse_db`` connection of ``example_postgres_query`` (login and
password by reference to the ``warehouse/db`` secret). Trigger with
``{"tasks": 32}`` to fan out wider.
"""

from __future__ import annotations

try:  # Airflow 3
    from airflow.sdk import DAG, task
except ImportError:  # Airflow 2 (what Amazon MWAA runs)
    from airflow import DAG
    from airflow.decorators import task

with DAG(
    dag_id="example_mapped_tasks",
    schedule=None,
    catchup=False,
    tags=["airflow-sm-refs", "example"],
    params={"tasks": 8},
    doc_md=__doc__,
) as dag:

    @task
    def shards(**context) -> list[int]:  # noqa: ANN003
        return list(range(int(context["params"]["tasks"])))

    @task
    def query_shard(shard: int) -> int:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        row = PostgresHook(postgres_conn_id="warehouse_db").get_first("SELECT %s::int + 1", parameters=(shard,))
        return int(row[0])

    @task
    def total(results: list[int]) -> int:
        return sum(results)

    total(query_shard.expand(shard=shards()))
