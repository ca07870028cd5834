"""The Airflow names that tests/compat_dags use, imported the way DAG code does on each Airflow line.

The DAGs import them from here rather than each repeating the ``try: from airflow.sdk import ...``
blocks; like ``tests.compat_triggers``, this module is found through the repo root on the
PYTHONPATH of every component the tests start. ``example_dags/`` keeps its own imports: users
copy those files.
"""

from __future__ import annotations

import airflow

try:  # Airflow 3.1+
    from airflow.sdk import BaseHook, Variable
except ImportError:  # 2.x, 3.0
    from airflow.hooks.base import BaseHook  # type: ignore[no-redef]
    from airflow.models import Variable  # type: ignore[no-redef]
try:  # Airflow 3
    from airflow.sdk import DAG, BaseOperator, task
except ImportError:  # 2.x
    from airflow.decorators import task  # type: ignore[no-redef]
    from airflow.models.baseoperator import BaseOperator  # type: ignore[no-redef]
    from airflow.models.dag import DAG  # type: ignore[no-redef]
try:  # Airflow 3
    from airflow.providers.standard.operators.python import PythonOperator
except ImportError:  # 2.x
    from airflow.operators.python import PythonOperator  # type: ignore[no-redef]

#: whether this line's PythonOperator (and so ``@task``) awaits an ``async def`` callable
#: (3.1's common.compat provider has ``aexecute`` too, but raises "Async operators require Airflow 3.2+")
ASYNC_TASKS = hasattr(PythonOperator, "aexecute") and tuple(int(p) for p in airflow.__version__.split(".")[:2]) >= (3, 2)

__all__ = ["ASYNC_TASKS", "DAG", "BaseHook", "BaseOperator", "PythonOperator", "Variable", "task"]
