"""AWS round trips: a cold connection of k secrets, and a burst of task processes on a broken reference.

1. Cold connection of k = 1, 3 and 10 secrets (nothing cached), side by side:
   - plugin:            this plugin (BatchGetSecretValue for 2+ cold secrets);
   - plugin, no batch:  this plugin with the batch action denied (one GetSecretValue per secret,
                        as before batching; the one refused batch try is in the first lookup only);
   - provider:          the Amazon provider's SecretsManagerBackend, which keeps the whole
                        connection in one secret.
   Round trips are counted at the (moto) server; wall time is the median of the cold lookups.
2. A burst of task processes of one worker (forked from a warm parent, released together)
   looking up a connection whose reference names a missing secret: AWS calls with the default
   negative_cache_seconds (10) and with it off (0).

    .venv/bin/python benchmarks/aws_calls.py [--repeat 5] [--burst 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from _bench_env import prepare  # noqa: E402 - benchmarks/ is the script's directory

ROOT = prepare()

from standins.aws import AwsStandIn  # noqa: E402
from tests.worker_proc import TaskProcesses  # noqa: E402

PLUGIN = "airflow_sm_refs.backend.SecretsManagerRefsBackend"
PROVIDER = "airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend"
SIZES = (1, 3, 10)


def configure(backend: str, kwargs: dict) -> None:
    from airflow_sm_refs._compat import reset_secrets_chain

    os.environ["AIRFLOW__SECRETS__BACKEND"] = backend
    os.environ["AIRFLOW__SECRETS__BACKEND_KWARGS"] = json.dumps(kwargs)
    reset_secrets_chain()


def connection_of(k: int) -> dict:
    """A connection whose password and extra name k distinct secrets."""
    extra = {f"key{i}": f"{{{{workato:sm:value:bench/k{i}}}}}" for i in range(1, k)}
    return {"conn_type": "http", "host": "api.internal", "password": "{{workato:sm:value:bench/k0}}", "extra": extra}


def cold_lookups(aws: AwsStandIn, conn_id: str, repeat: int, expect: str) -> tuple[float, float]:
    """(median round trips, median wall ms) of a lookup with every cache empty."""
    from airflow.sdk import BaseHook

    from airflow_sm_refs.resolver import PROCESS_CACHE
    from airflow_sm_refs.worker_cache import clear_worker_cache, reset_worker_caches

    trips, walls = [], []
    for _ in range(repeat):
        PROCESS_CACHE.clear()  # values only: a refused batch stays remembered, as in a worker
        reset_worker_caches()
        clear_worker_cache(os.environ["BENCH_CACHE_DIR"])
        aws.reset_counts()
        started = time.perf_counter()
        conn = BaseHook.get_connection(conn_id)
        walls.append((time.perf_counter() - started) * 1000)
        if conn.password != expect:
            raise SystemExit(f"{conn_id}: wrong credential")
        trips.append(aws.total_calls())
    return statistics.median(trips), statistics.median(walls)


def measure_cold(aws: AwsStandIn, repeat: int) -> dict[tuple[str, int], tuple[float, float]]:
    client = aws.client()
    for i in range(max(SIZES)):
        client.create_secret(Name=f"bench/k{i}", SecretString=json.dumps({"value": f"bench-value-{i:02d}-Kq9"}))
    rows: dict[tuple[str, int], tuple[float, float]] = {}
    cache_dir = tempfile.mkdtemp(prefix="bench-cache-")
    os.environ["BENCH_CACHE_DIR"] = cache_dir
    plugin_kwargs = {"region_name": "us-east-1", "endpoint_url": aws.endpoint_url, "shared_cache_dir": cache_dir}
    for k in SIZES:
        conn = connection_of(k)
        os.environ[f"AIRFLOW_CONN_BENCH_K{k}"] = json.dumps(conn)
        client.create_secret(
            Name=f"airflow/connections/bench_provider_k{k}",
            SecretString=json.dumps({**conn, "password": "bench-value-00-Kq9", "extra": json.dumps({})}),
        )
    configure(PLUGIN, plugin_kwargs)
    for k in SIZES:
        rows[("plugin", k)] = cold_lookups(aws, f"bench_k{k}", repeat, "bench-value-00-Kq9")
    with aws.denying("BatchGetSecretValue"):
        for k in SIZES:
            rows[("plugin, no batch", k)] = cold_lookups(aws, f"bench_k{k}", repeat, "bench-value-00-Kq9")
    configure(
        PROVIDER,
        {
            "region_name": "us-east-1",
            "endpoint_url": aws.endpoint_url,
            "connections_prefix": "airflow/connections",
            "variables_prefix": None,
            "config_prefix": None,
        },
    )
    for k in SIZES:
        rows[("provider", k)] = cold_lookups(aws, f"bench_provider_k{k}", repeat, "bench-value-00-Kq9")
    return rows


def measure_broken_burst(aws: AwsStandIn, n: int) -> dict[str, int]:
    """AWS calls when ``n`` task processes look up a reference to a missing secret at once."""
    calls: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as scratch, TaskProcesses(Path(scratch) / "tasks.log") as processes:
        for label, negative in (("negative cache 10 s (default)", None), ("negative cache off", 0)):
            kwargs: dict = {"region_name": "us-east-1", "endpoint_url": aws.endpoint_url}
            kwargs["shared_cache_dir"] = str(Path(scratch) / f"cache-{negative}")
            if negative is not None:
                kwargs["negative_cache_seconds"] = negative
            env = {
                "AIRFLOW__SECRETS__BACKEND": PLUGIN,
                "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps(kwargs),
                "AIRFLOW_CONN_BROKEN": json.dumps({"conn_type": "http", "password": "{{workato:sm:value:bench/no-such}}"}),
            }
            aws.reset_counts()
            results = processes.run(n, env, conn_id="broken", timeout=600)
            failed = [r for r in results if r.get("error") != "SecretNotFoundError"]
            if failed:
                raise SystemExit(f"a task process did not fail with SecretNotFoundError: {failed[0]}")
            calls[label] = aws.total_calls()
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="cold lookups per cell; the median is shown")
    parser.add_argument("--burst", type=int, default=200, help="task processes in the broken-reference burst")
    args = parser.parse_args()
    import logging

    logging.getLogger("airflow_sm_refs").setLevel(logging.WARNING)
    with AwsStandIn() as aws:
        cold = measure_cold(aws, args.repeat)
        burst = measure_broken_burst(aws, args.burst)

    print()
    print("Cold connection of k secrets: AWS round trips and wall ms (median of %d)" % args.repeat)
    header = f"{'':<20}" + "".join(f"{f'k={k} trips':>12}{f'k={k} ms':>10}" for k in SIZES)
    print(header)
    for mode in ("plugin", "plugin, no batch", "provider"):
        cells = "".join(f"{rows_trips:>12.0f}{rows_ms:>10.1f}" for rows_trips, rows_ms in (cold[(mode, k)] for k in SIZES))
        print(f"{mode:<20}{cells}")
    print()
    print(f"Burst of {args.burst} task processes on one worker, reference to a missing secret: AWS calls")
    for label, count in burst.items():
        print(f"  {label:<32}{count:>6}")
    met = all(cold[("plugin", k)][0] == 1 for k in SIZES) and burst["negative cache 10 s (default)"] <= 2
    print()
    print(f"target: one round trip per cold connection, one call per worker for a broken reference -> {'MET' if met else 'NOT MET'}")


if __name__ == "__main__":
    main()
