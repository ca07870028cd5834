"""What every benchmark sets up before importing Airflow: the repo on the path, a throwaway
AIRFLOW_HOME, fake AWS credentials, and no secrets backend or AWS setting inherited from the shell."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: when the benchmark started and how busy the machine was then (before the benchmark's own
#: work), saved with its results: a chart's caption says what machine and load its figures had
RUN = {
    "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    "cpus": os.cpu_count(),
    "load_average_start": list(os.getloadavg()),
}


def prepare() -> Path:
    """Set the process up for a benchmark; return the repo root."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="airflow-sm-refs-bench-")
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    for name in ("AIRFLOW__SECRETS__BACKEND", "AIRFLOW__SECRETS__BACKEND_KWARGS", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        os.environ.pop(name, None)
    return ROOT


#: where benchmarks leave their figures for benchmarks/charts.py
RESULTS = Path(os.environ.get("BENCH_RESULTS_DIR", ROOT / "benchmarks" / "results"))


def save_results(name: str, data: dict) -> None:
    """Write ``data`` as ``<RESULTS>/<name>.json``, with :data:`RUN` and the load average now under ``run``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    run = {**RUN, "load_average_end": list(os.getloadavg())}
    (RESULTS / f"{name}.json").write_text(json.dumps({"run": run, **data}, indent=1))
