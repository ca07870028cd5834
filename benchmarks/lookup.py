"""Warm-cache cost of ``BaseHook.get_connection``, three ways side by side.

1. plain:    a connection with plain values, no secrets backend configured;
2. refs:     the same connection with two references, this plugin as backend (warm cache);
3. provider: the Amazon provider's ``SecretsManagerBackend`` serving the whole
             connection from the same moto server.

Prints lookups per second, microseconds per lookup and AWS calls per 100
lookups (counted at the server), plus the cold first lookup of each.
Target: refs costs at most 1.10x plain and makes no AWS call.

    .venv/bin/python benchmarks/lookup.py [--lookups N] [--rounds R] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="airflow-sm-refs-bench-")
os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"

from standins.aws import AwsStandIn  # noqa: E402

SECRET = {"username": "bench_user", "password": "bench-Password-123"}
PLAIN = {"conn_type": "postgres", "host": "db.internal", "port": 5432, "schema": "app", **{"login": SECRET["username"], "password": SECRET["password"]}}
REFS = {**PLAIN, "login": "{{workato:sm:username:bench/db}}", "password": "{{workato:sm:password:bench/db}}"}


def configure(backend: str | None, kwargs: dict | None = None) -> None:
    from airflow.sdk import configuration

    if backend is None:
        os.environ.pop("AIRFLOW__SECRETS__BACKEND", None)
        os.environ.pop("AIRFLOW__SECRETS__BACKEND_KWARGS", None)
    else:
        os.environ["AIRFLOW__SECRETS__BACKEND"] = backend
        os.environ["AIRFLOW__SECRETS__BACKEND_KWARGS"] = json.dumps(kwargs or {})
    configuration._secrets_backend_cache.clear()


def measure(conn_id: str, lookups: int, aws: AwsStandIn, expect_password: str) -> dict[str, float]:
    from airflow.sdk import BaseHook

    aws.reset_counts()
    started = time.perf_counter()
    conn = BaseHook.get_connection(conn_id)
    cold = time.perf_counter() - started
    assert conn.password == expect_password, "wrong credential"
    for _ in range(min(50, lookups)):  # warm up
        BaseHook.get_connection(conn_id)
    aws.reset_counts()
    started = time.perf_counter()
    for _ in range(lookups):
        BaseHook.get_connection(conn_id)
    elapsed = time.perf_counter() - started
    return {
        "cold_ms": cold * 1000,
        "per_lookup_us": elapsed / lookups * 1e6,
        "per_second": lookups / elapsed,
        "aws_per_100": aws.calls() * 100 / lookups,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lookups", type=int, default=3000, help="warm lookups per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating plain/plugin rounds; medians are shown")
    parser.add_argument("--profile", action="store_true", help="profile the warm refs lookups with cProfile")
    args = parser.parse_args()

    import logging

    with AwsStandIn() as aws:
        client = aws.client()
        client.create_secret(Name="bench/db", SecretString=json.dumps(SECRET))
        client.create_secret(Name="airflow/connections/provider_db", SecretString=json.dumps(PLAIN))
        os.environ["AIRFLOW_CONN_PLAIN_DB"] = json.dumps(PLAIN)
        os.environ["AIRFLOW_CONN_REFS_DB"] = json.dumps(REFS)
        logging.getLogger("airflow_sm_refs").setLevel(logging.INFO)

        results: dict[str, dict[str, float]] = {}
        plugin = (
            "airflow_sm_refs.backend.SecretsManagerRefsBackend",
            {"region_name": "us-east-1", "endpoint_url": aws.endpoint_url, "shared_cache": False},
        )
        # Plain and plugin in alternating rounds, the median per lookup of each: a
        # machine whose load changes during the run shifts both alike.
        rounds: dict[str, list[dict[str, float]]] = {"plain, no backend": [], "airflow-sm-refs (2 refs)": []}
        for _ in range(args.rounds):
            configure(None)
            rounds["plain, no backend"].append(measure("plain_db", args.lookups, aws, SECRET["password"]))
            configure(*plugin)
            rounds["airflow-sm-refs (2 refs)"].append(measure("refs_db", args.lookups, aws, SECRET["password"]))
        for name, samples in rounds.items():
            results[name] = {
                "cold_ms": samples[0]["cold_ms"],
                **{k: statistics.median(s[k] for s in samples) for k in ("per_lookup_us", "per_second", "aws_per_100")},
            }
        if args.profile:
            import cProfile
            import pstats

            from airflow.sdk import BaseHook

            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(args.lookups):
                BaseHook.get_connection("refs_db")
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)

        configure(
            "airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend",
            {
                "region_name": "us-east-1",
                "endpoint_url": aws.endpoint_url,
                "connections_prefix": "airflow/connections",
                "variables_prefix": None,
                "config_prefix": None,
            },
        )
        results["provider SecretsManagerBackend"] = measure("provider_db", max(100, args.lookups // 20), aws, SECRET["password"])

    plain = results["plain, no backend"]["per_lookup_us"]
    print()
    print(f"{'BaseHook.get_connection':<32}{'cold ms':>10}{'warm us/lookup':>16}{'lookups/s':>12}{'x plain':>9}{'AWS calls/100':>15}")
    for name, r in results.items():
        print(
            f"{name:<32}{r['cold_ms']:>10.1f}{r['per_lookup_us']:>16.1f}{r['per_second']:>12.0f}"
            f"{r['per_lookup_us'] / plain:>9.2f}{r['aws_per_100']:>15.1f}"
        )
    ratio = results["airflow-sm-refs (2 refs)"]["per_lookup_us"] / plain
    calls = results["airflow-sm-refs (2 refs)"]["aws_per_100"]
    print()
    print(f"target: warm refs lookup <= 1.10x plain and 0 AWS calls -> {ratio:.2f}x, {calls:.0f} calls: {'MET' if ratio <= 1.10 and calls == 0 else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
