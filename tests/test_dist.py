"""What a user installs: the built wheel, the MWAA bundle and the Dockerfile's install line, each in a fresh venv.

The wheel is built from this tree (``scripts/build_dist.py``, what ``make dist``
runs). The MWAA bundle's ``requirements.txt`` and the Dockerfile's ``RUN`` line
are then run as written, with two substitutions only this machine needs:
Airflow's published constraints URL becomes the same line's constraints file
in ``constraints/`` (no network here but the package index), and MWAA's
``/usr/local/airflow/plugins`` becomes the directory ``plugins.zip`` was
unpacked into. Each fresh venv then resolves a referenced connection through
``BaseHook.get_connection`` against the moto stand-in, with the backend
configured as the README says.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from standins.aws import AwsStandIn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import build_dist  # noqa: E402

PASSWORD = "dist-check-Pw-61a9c0"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The wheel and the MWAA bundle directory, built from this tree."""
    out = tmp_path_factory.mktemp("dist")
    wheel = build_dist.build_packages(out)
    return wheel, build_dist.build_mwaa_bundle(wheel, out / "mwaa", "2.10.3", "3.11")


def _uv() -> str:
    found = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    if not Path(found).exists():
        pytest.fail("uv is needed to build a fresh venv quickly (make venv installs it)")
    return found


def _fresh_venv(path: Path) -> Path:
    subprocess.run([_uv(), "venv", "-q", "--python", sys.executable, str(path)], check=True, env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"})
    return path / "bin" / "python"


def _pip_install(python: Path, args: list[str]) -> None:
    """``pip install ARGS`` into ``python``'s venv (with uv's resolver: the same arguments, minutes faster)."""
    args = [a for a in args if a != "--no-cache-dir"]
    done = subprocess.run([_uv(), "pip", "install", "-q", "--python", str(python), *args], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


def _resolves(python: Path, aws: AwsStandIn, tmp_path: Path) -> None:
    """The fresh venv's Airflow, configured as the README says, hands a task the secret's value."""
    aws.client().create_secret(Name=f"dist/{tmp_path.name}", SecretString=json.dumps({"password": PASSWORD}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW", "PYTHONPATH"))}
    env.update(
        AIRFLOW_HOME=str(tmp_path / "home"),
        AIRFLOW__SECRETS__BACKEND="airflow_sm_refs.backend.SecretsManagerRefsBackend",
        AIRFLOW__SECRETS__BACKEND_KWARGS=json.dumps(
            {"region_name": "us-east-1", "endpoint_url": aws.endpoint_url, "shared_cache": False}
        ),
        AIRFLOW_CONN_DIST_DB=json.dumps(
            {"conn_type": "generic", "password": f"{{{{workato:sm:password:dist/{tmp_path.name}}}}}"}
        ),
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
    )
    script = (
        "import hashlib, airflow_sm_refs\n"
        "from airflow.hooks.base import BaseHook\n"
        "digest = hashlib.sha256(BaseHook.get_connection('dist_db').password.encode()).hexdigest()\n"
        "print('WHERE=' + airflow_sm_refs.__file__)\n"
        "print('DIGEST=' + digest)\n"
    )
    done = subprocess.run([str(python), "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = dict(line.split("=", 1) for line in done.stdout.splitlines() if line.startswith(("WHERE=", "DIGEST=")))
    where, digest = found["WHERE"], found["DIGEST"]
    assert "site-packages" in where, f"imported {where}, not the installed wheel"
    assert digest == hashlib.sha256(PASSWORD.encode()).hexdigest()
    assert PASSWORD not in done.stdout + done.stderr


def test_the_wheel_carries_what_an_installer_and_an_index_need(built: tuple[Path, Path]) -> None:
    wheel, _ = built
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(info).decode())
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "airflow_sm_refs/py.typed" in names and "airflow_sm_refs/backend.py" in names
    assert not [n for n in names if n.startswith(("tests/", "standins/", "benchmarks/", "demo/"))]
    assert any(n.endswith("LICENSE") for n in names)
    assert metadata["Requires-Python"] == ">=3.10"
    assert "Framework :: Apache Airflow" in metadata.get_all("Classifier")
    assert metadata["Description-Content-Type"] == "text/markdown" and "## Quick start" in metadata.get_payload()
    assert {r.split(">")[0].split("<")[0].strip() for r in metadata.get_all("Requires-Dist") if "extra ==" not in r} == {
        "apache-airflow",
        "apache-airflow-providers-amazon",
        "boto3",
    }
    assert "airflow-sm-refs = airflow_sm_refs.cli:main" in entry_points
    assert "provider_info = airflow_sm_refs.provider:get_provider_info" in entry_points


def test_the_mwaa_bundle_installs_on_mwaas_line(built: tuple[Path, Path], aws: AwsStandIn, tmp_path: Path) -> None:
    wheel, bundle = built
    with zipfile.ZipFile(bundle / "plugins.zip") as archive:
        assert archive.namelist() == [wheel.name]  # at the top level, where MWAA unpacks it
        plugins = tmp_path / "plugins"
        archive.extractall(plugins)
    lines = (bundle / "requirements.txt").read_text().splitlines()
    assert lines == [
        '--constraint "https://raw.githubusercontent.com/apache/airflow/constraints-2.10.3/constraints-3.11.txt"',
        f"/usr/local/airflow/plugins/{wheel.name}",
    ]
    local = tmp_path / "requirements.txt"
    local.write_text(
        "\n".join(lines)
        .replace(build_dist.CONSTRAINTS_URL.format(airflow="2.10.3", python="3.11"), str(ROOT / "constraints/airflow-2.10.3.txt"))
        .replace(build_dist.MWAA_PLUGINS, str(plugins))
    )
    python = _fresh_venv(tmp_path / "venv")
    _pip_install(python, ["-r", str(local)])
    _resolves(python, aws, tmp_path)


def test_the_dockerfile_install_line_installs_the_wheel(built: tuple[Path, Path], aws: AwsStandIn, tmp_path: Path) -> None:
    wheel, _ = built
    dockerfile = (ROOT / "Dockerfile").read_text()
    versions = dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile, re.MULTILINE))
    (run,) = re.findall(r"^RUN (pip install .*)$", dockerfile, re.MULTILINE)
    for name, value in versions.items():
        run = run.replace(f"${{{name}}}", value)
    line = versions["AIRFLOW_VERSION"]
    constraints = ROOT / ("constraints.txt" if (ROOT / "constraints.txt").read_text().count(f"apache-airflow=={line}\n") else f"constraints/airflow-{line}.txt")
    run = run.replace(build_dist.CONSTRAINTS_URL.format(airflow=line, python=versions["PYTHON_VERSION"]), str(constraints))
    run = run.replace("/tmp/wheels/airflow_sm_refs-*.whl", str(wheel))
    args = shlex.split(run)
    assert args[:2] == ["pip", "install"] and f"apache-airflow=={line}" in args
    python = _fresh_venv(tmp_path / "venv")
    _pip_install(python, args[2:])
    _resolves(python, aws, tmp_path)
