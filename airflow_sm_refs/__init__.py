"""Resolve AWS Secrets Manager references in Airflow connections at task runtime."""

from __future__ import annotations

from airflow_sm_refs._exceptions import (
    ReferenceNotAllowedError,
    ReferenceSyntaxError,
    SecretAccessDeniedError,
    SecretFetchError,
    SecretKeyError,
    SecretNotFoundError,
    SecretReferenceError,
    SecretTransientError,
)
from airflow_sm_refs.backend import SecretsManagerRefsBackend
from airflow_sm_refs.reference import SecretReference, parse_reference, split_references
from airflow_sm_refs.worker_cache import WorkerCache, clear_worker_cache

__version__ = "0.1.0"

__all__ = [
    "ReferenceNotAllowedError",
    "ReferenceSyntaxError",
    "SecretAccessDeniedError",
    "SecretFetchError",
    "SecretKeyError",
    "SecretNotFoundError",
    "SecretReference",
    "SecretReferenceError",
    "SecretTransientError",
    "SecretsManagerRefsBackend",
    "WorkerCache",
    "clear_worker_cache",
    "parse_reference",
    "split_references",
]
