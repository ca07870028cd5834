"""A DAG file that reads a referenced connection at top level: parsing it must fail (the file's import error).

tests/test_compat_standalone.py copies it into the DAG folder once the other DAGs are triggered
(the harness's trigger() gives up early while some file has an import error), then waits for
the import error that names the connection. If parsing ever resolved it, the DAG would appear
and a marker would say so.
"""

from __future__ import annotations

import os
from datetime import datetime

from tests.airflow_names import DAG, BaseHook
from tests.compat_triggers import raw_fields, record_raw

CONN = BaseHook.get_connection("compat_meta")  # at parse time: must raise
if raw_fields(CONN):
    record_raw(os.environ["COMPAT_PROBE_DIR"], "parser", "compat_meta", raw_fields(CONN))

with DAG(dag_id="compat_parse_refuses", schedule=None, start_date=datetime(2024, 1, 1), catchup=False):
    pass
