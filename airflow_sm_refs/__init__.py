"""Resolve AWS Secrets Manager references in Airflow connections at task runtime."""

from __future__ import annotations

import logging
import sys
import warnings

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
