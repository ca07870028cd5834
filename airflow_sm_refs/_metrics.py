"""What the cache saves and costs, counted through Airflow's own ``Stats``.

Metrics reach StatsD or OpenTelemetry as the deployment's ``[metrics]``
section says, under Airflow's configured prefix. Names (without the prefix):

- ``sm_refs.aws_fetch``: one per secret fetched from AWS
- ``sm_refs.aws_request``: one per request to AWS (a batch counts 1)
- ``sm_refs.aws_latency``: timer, per request
- ``sm_refs.cache_hit.process`` and ``sm_refs.cache_hit.worker``
- ``sm_refs.stale_served``: an expired value served because AWS failed transiently
- ``sm_refs.negative_hit``: a remembered not-found or denied answer raised again without a call
- ``sm_refs.error.<ErrorClass>``: a reference that could not be resolved, by error class

A metric never carries a secret's name or value, and a failing metrics
backend never fails a lookup.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

__all__ = ["METRIC_NAMES", "count", "timed"]

log = logging.getLogger("airflow_sm_refs")

PREFIX = "sm_refs."

METRIC_NAMES = (
    "aws_fetch",
    "aws_request",
    "aws_latency",
    "cache_hit.process",
    "cache_hit.worker",
    "stale_served",
    "negative_hit",
    "error.<ErrorClass>",
)


def count(name: str, n: int = 1) -> None:
    """Add ``n`` to counter ``sm_refs.<name>``."""
    try:
        from airflow_sm_refs._compat import stats

        stats().incr(PREFIX + name, n)
    except Exception:  # noqa: BLE001 - metrics must never fail a lookup
        log.debug("Could not count %s", PREFIX + name, exc_info=True)


@contextmanager
def timed(name: str) -> Iterator[None]:
    """Report how long the block took as timer ``sm_refs.<name>``, whether it failed or not."""
    started = time.perf_counter()
    try:
        yield
    finally:
        try:
            from airflow_sm_refs._compat import stats

            stats().timing(PREFIX + name, timedelta(seconds=time.perf_counter() - started))
        except Exception:  # noqa: BLE001
            log.debug("Could not time %s", PREFIX + name, exc_info=True)
