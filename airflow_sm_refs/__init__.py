"""Resolve AWS Secrets Manager references in Airflow connections at task runtime."""

from __future__ import annotations

import logging
import os
import sys
import warnings


def _cli_needs_no_airflow(argv: list[str]) -> bool:
    """This package's command line, asked for ``--help`` or ``parse``: the grammar alone, no Airflow.

    Importing Airflow takes seconds and builds the configured secrets backend;
    neither is needed to print help or read a token.
    """
    if "airflow" in sys.modules or not argv or os.path.basename(argv[0]) != "airflow-sm-refs":
        return False
    words = argv[1:]
    return not words or words[0] == "parse" or "-h" in words or "--help" in words


#: set only in this package's own command line for ``--help`` and ``parse``:
#: nothing here imports Airflow, and ``_compat`` assumes no Task SDK
WITHOUT_AIRFLOW: bool = _cli_needs_no_airflow(sys.argv)

if not WITHOUT_AIRFLOW:
    # Airflow first: importing it may build the configured secrets backend, which
    # imports this package; it must find Airflow done, not half-imported. (2.10
    # warns about its own deprecated config key on every import; where this
    # package is what imports Airflow — its command line — that is noise.)
    if "airflow" not in sys.modules:
        # Also 3.1 logs alembic's plugin set-up at INFO on every import.
        logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="airflow.configuration")
        import airflow  # noqa: F401

    from airflow_sm_refs._exceptions import (
        BackendOptionError,
        ReferenceNotAllowedError,
        ReferenceSyntaxError,
        SecretAccessDeniedError,
        SecretFetchError,
        SecretKeyError,
        SecretLookupAborted,
        SecretNotFoundError,
        SecretReferenceError,
        SecretTransientError,
    )
    from airflow_sm_refs.backend import SecretsManagerRefsBackend
    from airflow_sm_refs.reference import SecretReference, parse_reference, split_references
    from airflow_sm_refs.worker_cache import WorkerCache, clear_worker_cache

__version__ = "0.1.0"

__all__ = [
    "BackendOptionError",
    "ReferenceNotAllowedError",
    "ReferenceSyntaxError",
    "SecretAccessDeniedError",
    "SecretFetchError",
    "SecretKeyError",
    "SecretLookupAborted",
    "SecretNotFoundError",
    "SecretReference",
    "SecretReferenceError",
    "SecretTransientError",
    "SecretsManagerRefsBackend",
    "SecretsManagerRefsHook",
    "WorkerCache",
    "clear_worker_cache",
    "parse_reference",
    "split_references",
]


def __getattr__(name: str) -> object:
    # The hook pulls in the Amazon provider's hook machinery; load it only when
    # asked for, not every time Airflow loads the backend.
    if name == "SecretsManagerRefsHook":
        from airflow_sm_refs.hook import SecretsManagerRefsHook

        return SecretsManagerRefsHook
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
