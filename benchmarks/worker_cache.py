"""AWS calls and wall time when N task processes of one worker resolve one connection at once.

Three ways side by side, for N = 1, 8 and 32 task processes forked from a
warm parent (as a worker forks them) and released together:

1. worker tier: this plugin with the per-worker cache (the default);
2. tier off:    this plugin with ``shared_cache: false`` (each process caches for itself);
3. provider:    the Amazon provider's ``SecretsManagerBackend``, the whole connection in one secret.

A cold burst starts with an empty worker cache; a warm burst follows it
within the TTL. Wall time runs from the start of the first lookup to the end
of the last; importing Airflow, which the worker did once before forking, is
not in it. AWS calls are counted at the (moto) server.

Then the cost of one lookup served by each tier, measured in this process.

    .venv/bin/python benchmarks/worker_cache.py [--sizes 1 8 32] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _bench_env import prepare, save_results  # noqa: E402 - benchmarks/ is the script's directory

ROOT = prepare()

from standins.aws import AwsStandIn  # noqa: E402
from tests.worker_proc import TaskProcesses, digest  # noqa: E402

CONN_ID = "bench_db"
SECRET = {"username": "bench_user", "password": "bench-Password-123"}
PLAIN = {"conn_type": "postgres", "host": "db.internal", "port": 5432, "schema": "app", "login": SECRET["username"]}
REFS = {**PLAIN, "login": "{{workato:sm:username:bench/db}}", "password": "{{workato:sm:password:bench/db}}"}
PROVIDER = "airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend"
PLUGIN = "airflow_sm_refs.backend.SecretsManagerRefsBackend"
MODES = ("worker tier", "tier off", "provider")


def mode_env(mode: str, aws: AwsStandIn, cache_dir: str) -> dict[str, str | None]:
    """The environment a task process sees under ``mode``."""
    aws_kwargs = {"region_name": "us-east-1", "endpoint_url": aws.endpoint_url}
    if mode == "provider":
        kwargs = {"connections_prefix": "airflow/connections", "variables_prefix": None, **aws_kwargs}
        return {
            "AIRFLOW__SECRETS__BACKEND": PROVIDER,
            "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps(kwargs),
            f"AIRFLOW_CONN_{CONN_ID.upper()}": None,
        }
    kwargs = {**aws_kwargs, "shared_cache_dir": cache_dir, "shared_cache": mode == "worker tier"}
    return {
        "AIRFLOW__SECRETS__BACKEND": PLUGIN,
        "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps(kwargs),
        f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps(REFS),
    }


def burst(processes: TaskProcesses, aws: AwsStandIn, n: int, env: dict[str, str | None]) -> tuple[int, float]:
    """Release ``n`` task processes at once; return AWS calls and wall milliseconds."""
    aws.reset_counts()
    results = processes.run(n, env, conn_id=CONN_ID, field="password")
    failed = [r for r in results if r.get("digest") != digest(SECRET["password"])]
    if failed:
        raise SystemExit(f"a task process did not get the password: {failed[0]}")
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    return aws.calls(), wall * 1000


def measure_bursts(
    aws: AwsStandIn, sizes: list[int], repeat: int, cache_dir: str, log: Path
) -> dict[tuple[str, int, str], tuple[int, float]]:
    """(mode, N, cold|warm) -> (median AWS calls, median wall ms)."""
    from airflow_sm_refs.worker_cache import clear_worker_cache

    rows: dict[tuple[str, int, str], tuple[int, float]] = {}
    with TaskProcesses(log) as processes:
        burst(processes, aws, 2, mode_env("tier off", aws, cache_dir))  # warm up moto
        for n in sizes:
            for mode in MODES:
                env = mode_env(mode, aws, cache_dir)
                samples: dict[str, list[tuple[int, float]]] = {"cold": [], "warm": []}
                for _ in range(repeat):
                    clear_worker_cache(cache_dir)
                    samples["cold"].append(burst(processes, aws, n, env))
                    samples["warm"].append(burst(processes, aws, n, env))
                for phase, got in samples.items():
                    rows[(mode, n, phase)] = (
                        int(statistics.median(c for c, _ in got)),
                        statistics.median(ms for _, ms in got),
                    )
    return rows


def per_lookup_us(run: Callable[[], Any], count: int, before: Callable[[], None] = lambda: None) -> float:
    """Median microseconds of ``run()``, with ``before()`` outside the timing."""
    samples = []
    for _ in range(count):
        before()
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


def measure_tiers(aws: AwsStandIn, cache_dir: str) -> list[tuple[str, float]]:
    """Cost of one reference lookup (``SecretResolver.resolve``) served by each tier."""
    from airflow_sm_refs._aws import clients_for_settings
    from airflow_sm_refs.cache import TTLCache
    from airflow_sm_refs.reference import parse_reference
    from airflow_sm_refs.resolver import SecretResolver
    from airflow_sm_refs.worker_cache import WorkerCache, clear_worker_cache

    clients = clients_for_settings({"region_name": "us-east-1", "endpoint_url": aws.endpoint_url})
    ref = parse_reference(REFS["password"])
    shared = WorkerCache(cache_dir)
    clear_worker_cache(cache_dir)
    process_tier: TTLCache = TTLCache()
    resolver = SecretResolver(clients, cache=process_tier, shared=shared)
    uncached = SecretResolver(clients, cache_ttl_seconds=0, cache=TTLCache())
    resolver.resolve(ref)  # fill both tiers
    assert resolver.resolve(ref).source == "process cache"
    process_tier.clear()
    assert resolver.resolve(ref).source == "worker cache"
    rows = [
        ("process tier (in-process TTL cache)", per_lookup_us(lambda: resolver.resolve(ref), 20000)),
        (
            "worker tier (file in a 0700 dir, process tier empty)",
            per_lookup_us(lambda: resolver.resolve(ref), 5000, before=process_tier.clear),
        ),
        ("AWS (moto on loopback, no cache)", per_lookup_us(lambda: uncached.resolve(ref), 200)),
    ]
    shared.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32], help="task processes per burst")
    parser.add_argument("--repeat", type=int, default=3, help="bursts per cell; the median is shown")
    args = parser.parse_args()

    ram_fs = "/dev/shm" if os.path.isdir("/dev/shm") else None
    work = tempfile.mkdtemp(prefix="airflow-sm-refs-bench-", dir=ram_fs)
    cache_dir = os.path.join(work, "cache")
    try:
        with AwsStandIn() as aws:
            client = aws.client()
            client.create_secret(Name="bench/db", SecretString=json.dumps(SECRET))
            whole = {**PLAIN, "password": SECRET["password"]}
            client.create_secret(Name=f"airflow/connections/{CONN_ID}", SecretString=json.dumps(whole))
            bursts = measure_bursts(aws, args.sizes, args.repeat, cache_dir, Path(work) / "task-processes.log")
            tiers = measure_tiers(aws, os.path.join(work, "tiers"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nN task processes resolving one connection at once "
        f"(median of {args.repeat}; wall = first lookup start to last end)\n"
    )
    head = f"{'N':>3} {'burst':<5} | " + " | ".join(f"{mode:^21}" for mode in MODES)
    print(head)
    print(f"{'':>3} {'':<5} | " + " | ".join(f"{'AWS calls':>9} {'wall ms':>11}" for _ in MODES))
    print("-" * len(head))
    for n in args.sizes:
        for phase in ("cold", "warm"):
            cells = [bursts[(mode, n, phase)] for mode in MODES]
            print(f"{n:>3} {phase:<5} | " + " | ".join(f"{calls:>9} {ms:>11.1f}" for calls, ms in cells))
    print("\ncold: empty worker cache; warm: the same burst again within the TTL (new processes)")

    save_results(
        "worker_cache",
        {
            "sizes": args.sizes,
            "repeat": args.repeat,
            "bursts": [
                {"mode": mode, "n": n, "phase": phase, "aws_calls": calls, "wall_ms": ms}
                for (mode, n, phase), (calls, ms) in bursts.items()
            ],
        },
    )

    print("\nOne reference lookup (SecretResolver.resolve), by the tier that serves it\n")
    width = max(len(name) for name, _ in tiers)
    for name, us in tiers:
        print(f"  {name:<{width}}  {us:>9.1f} us")


if __name__ == "__main__":
    main()
