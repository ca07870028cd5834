"""Build what a user installs: the wheel and sdist, and the bundle Amazon MWAA installs a private package from.

    python scripts/build_dist.py [--out dist] [--mwaa-airflow 2.10.3] [--mwaa-python 3.11]

Writes ``dist/airflow_sm_refs-<version>-py3-none-any.whl``, the sdist, and
``dist/mwaa/``: ``plugins.zip`` (the wheel at its top level) and
``requirements.txt``, which installs that wheel from ``/usr/local/airflow/plugins/``
(where MWAA unpacks ``plugins.zip``) under the constraints of the
environment's Airflow line, as MWAA documents for private packages.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: where MWAA unpacks plugins.zip on every scheduler, worker and web server
MWAA_PLUGINS = "/usr/local/airflow/plugins"
#: Airflow's published constraints for a line and a Python version
CONSTRAINTS_URL = "https://raw.githubusercontent.com/apache/airflow/constraints-{airflow}/constraints-{python}.txt"


def build_packages(out: Path) -> Path:
    """Build the sdist and wheel into ``out`` (uv where it can be had, else pip); return the wheel."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("airflow_sm_refs-*"):
        old.unlink()
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    if Path(uv).exists():
        subprocess.run([uv, "build", "-q", "--out-dir", str(out), str(ROOT)], check=True)
    else:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)], check=True)
    wheels = sorted(out.glob("airflow_sm_refs-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one wheel in {out}, found {[w.name for w in wheels]}")
    return wheels[0]


def mwaa_requirements(wheel_name: str, airflow: str, python: str) -> str:
    """``requirements.txt`` for MWAA: the wheel from plugins.zip, under the line's constraints."""
    return (
        f'--constraint "{CONSTRAINTS_URL.format(airflow=airflow, python=python)}"\n'
        f"{MWAA_PLUGINS}/{wheel_name}\n"
    )


def build_mwaa_bundle(wheel: Path, out: Path, airflow: str, python: str) -> Path:
    """Write ``out/plugins.zip`` (the wheel at its top level) and ``out/requirements.txt``; return ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out / "plugins.zip", "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        bundle.write(wheel, arcname=wheel.name)
    (out / "requirements.txt").write_text(mwaa_requirements(wheel.name, airflow, python))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    parser.add_argument("--mwaa-airflow", default="2.10.3", help="the MWAA environment's Airflow version")
    parser.add_argument("--mwaa-python", default="3.11", help="its Python version (3.11 for Airflow 2.10 and 2.11)")
    args = parser.parse_args(argv)
    wheel = build_packages(args.out)
    bundle = build_mwaa_bundle(wheel, args.out / "mwaa", args.mwaa_airflow, args.mwaa_python)
    print(f"wheel:  {wheel.relative_to(ROOT) if wheel.is_relative_to(ROOT) else wheel}")
    for name in ("plugins.zip", "requirements.txt"):
        path = bundle / name
        print(f"MWAA:   {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
