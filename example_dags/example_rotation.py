"""
See a rotated secret picked up with no restart, no redeploy and no reconnect.

The task reads the ``rotation_demo`` connection and logs a fingerprint of its
password (the first 12 hex digits of its SHA-256), never the password itself.

Try it:

1. ``aws secretsmanager create-secret --name demo/rotating --secret-string '{"password": "first"}'``
   and ``airflow connections add rotation_demo --conn-type generic
   --conn-password '{{workato:sm:password:demo/rotating}}'``.
2. Trigger the DAG: note the fingerprint.
3. Rotate: ``aws secretsmanager put-secret-value --secret-id demo/rotating
   --secret-string '{"password": "second"}'``.
4. Trigger again at once: the same fingerprint, served from the worker's cache.
5. After ``cache_ttl_seconds`` (300 by default; set ``0`` to disable caching),
   trigger again: the new fingerprint. Runs in between never see a mix: each
   lookup returns one version.

To stop using a secret at once instead of at expiry, run
``airflow-sm-refs cache clear`` on the workers.
"""

from __future__ import annotations

import hashlib
import logging

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
    dag_id="example_rotation",
    schedule=None,
    catchup=False,
    tags=["airflow-sm-refs", "example"],
    doc_md=__doc__,
) as dag:

    @task
    def password_fingerprint() -> str:
        conn = BaseHook.get_connection("rotation_demo")
        fingerprint = hashlib.sha256((conn.password or "").encode()).hexdigest()[:12]
        log.info("rotation_demo password fingerprint: %s", fingerprint)
        return fingerprint

    password_fingerprint()
