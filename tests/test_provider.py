"""Provider registration: ``airflow providers list`` shows the package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import import_module
from importlib.metadata import entry_points, version
from pathlib import Path

from airflow_sm_refs.provider import get_provider_info


def _import(path: str) -> object:
    module, _, name = path.rpartition(".")
    return getattr(import_module(module), name)


class TestGetProviderInfo:
    def test_matches_airflows_runtime_schema(self) -> None:
        import jsonschema
        import airflow

        schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
        jsonschema.validate(get_provider_info(), schema)

    def test_describes_the_installed_package(self) -> None:
        info = get_provider_info()
        assert info["package-name"] == "airflow-sm-refs"
        assert info["versions"] == [version("airflow-sm-refs")]

    def test_names_classes_that_import(self) -> None:
        from airflow_sm_refs.backend import SecretsManagerBackend, SecretsManagerRefsBackend
        from airflow_sm_refs.hook import SecretsManagerRefsHook

        info = get_provider_info()
        assert [_import(path) for path in info["secrets-backends"]] == [SecretsManagerRefsBackend, SecretsManagerBackend]
        modules = [import_module(m) for hook in info["hooks"] for m in hook["python-modules"]]
        assert any(getattr(m, "SecretsManagerRefsHook", None) is SecretsManagerRefsHook for m in modules)

    def test_entry_point_is_declared(self) -> None:
        points = [p for p in entry_points(group="apache_airflow_provider") if p.value.startswith("airflow_sm_refs.")]
        assert [p.load() for p in points] == [get_provider_info]


def airflow_providers(airflow_home: Path, command: str) -> subprocess.CompletedProcess[str]:
    """``airflow providers COMMAND -o json`` in a real subprocess, with no backend or connections configured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__SECRETS__", "AIRFLOW_CONN_"))}
    env["AIRFLOW_HOME"] = str(airflow_home)
    airflow = Path(sys.executable).parent / "airflow"
    return subprocess.run(
        [str(airflow), "providers", command, "-o", "json"], env=env, capture_output=True, text=True, timeout=300
    )


class TestProvidersList:
    def test_airflow_providers_list_shows_the_package(self, airflow_home: Path) -> None:
        done = airflow_providers(airflow_home, "list")

        assert done.returncode == 0, done.stderr[-2000:]
        listed = {p["package_name"]: p for p in json.loads(done.stdout[done.stdout.index("[") :])}
        assert "airflow-sm-refs" in listed, sorted(listed)
        assert listed["airflow-sm-refs"]["version"] == version("airflow-sm-refs")
        assert "Secrets Manager" in listed["airflow-sm-refs"]["description"]

    def test_airflow_providers_secrets_lists_the_backend(self, airflow_home: Path) -> None:
        done = airflow_providers(airflow_home, "secrets")

        assert done.returncode == 0, done.stderr[-2000:]
        assert "airflow_sm_refs.backend.SecretsManagerRefsBackend" in done.stdout
