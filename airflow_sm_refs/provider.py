"""What ``airflow providers list`` shows about this package (the ``apache_airflow_provider`` entry point)."""

from __future__ import annotations

from typing import Any

__all__ = ["get_provider_info"]


def get_provider_info() -> dict[str, Any]:
    """The provider description Airflow's providers manager reads.

    Imports nothing from the rest of the package: Airflow calls it while it
    discovers providers, and only needs this dictionary.
    """
    from importlib.metadata import version

    return {
        "package-name": "airflow-sm-refs",
        "name": "AWS Secrets Manager references",
        "description": (
            "Resolve ``{{workato:sm:...}}`` references to AWS Secrets Manager secrets in "
            "connections and variables at task runtime, on the worker."
        ),
        "versions": [version("airflow-sm-refs")],
        "integrations": [
            {
                "integration-name": "AWS Secrets Manager references",
                "external-doc-url": "https://aws.amazon.com/secrets-manager/",
                "tags": ["aws"],
            }
        ],
        "hooks": [
            {
                "integration-name": "AWS Secrets Manager references",
                "python-modules": ["airflow_sm_refs.hook"],
            }
        ],
        "secrets-backends": [
            "airflow_sm_refs.backend.SecretsManagerRefsBackend",
            "airflow_sm_refs.backend.SecretsManagerBackend",
        ],
    }
