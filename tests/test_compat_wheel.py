"""On every older line the real Airflow processes run the plugin as users install it: the built wheel.

``.ci/compat-venv.sh`` installs the wheel built from this tree into each
compat venv (not an editable install), and the standalone harness then keeps
this tree's sources off the processes' path, so every real-Airflow test on
those lines (``test_compat_standalone``, the bad-option run) exercises the
wheel. The newest line's ``.venv`` keeps the editable install for development.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from standins.airflow_standalone import AirflowStandalone

pytestmark = pytest.mark.compat

ROOT = Path(__file__).resolve().parent.parent


def test_airflow_processes_import_the_plugin_from_the_wheel_on_compat_lines(tmp_path: Path) -> None:
    harness = AirflowStandalone(home=tmp_path / "home", dags_folder=tmp_path / "dags")
    python = Path(harness.airflow_bin).parent / "python"
    probe = "import airflow_sm_refs, standins; print(airflow_sm_refs.__file__)"
    out = subprocess.run(
        [str(python), "-c", probe], env=harness._build_env({}), cwd=harness.home, capture_output=True, text=True, check=True
    ).stdout.strip()
    if os.environ.get("AIRFLOW_SM_REFS_COMPAT_LINE"):
        assert harness.plugin_from_wheel
        assert "site-packages" in out and not out.startswith(str(ROOT / "airflow_sm_refs")), out
        assert (python.parent / "airflow-sm-refs").exists()  # the wheel's console script
    else:
        assert out == str(ROOT / "airflow_sm_refs" / "__init__.py")
