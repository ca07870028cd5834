"""What a task process pays at start for one connection lookup, whole process, side by side.

A fresh interpreter imports Airflow, runs one ``BaseHook.get_connection`` and
reads the password, as a task process does. Three ways, each run in turn
(round-robin, so a busy moment of the machine hits all three alike):

1. plain:    the connection's values in ``AIRFLOW_CONN_*``, no secrets backend;
2. plugin:   this plugin, a 2-reference connection, both secrets in the worker cache
             (warmed once before measuring), as every task after the first on a worker;
3. provider: the Amazon provider's ``SecretsManagerBackend``, the whole connection in one
             secret (it has no cache across processes: one AWS call per process).

Wall time is measured by the parent, from spawn to exit; CPU time (user +
system) and peak RSS by the child itself at its end. Medians of ``--runs``.

    .venv/bin/python benchmarks/task_start.py [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from _bench_env import prepare, save_results  # noqa: E402 - benchmarks/ is the script's directory

ROOT = prepare()

from standins.aws import AwsStandIn  # noqa: E402

CONN_ID = "bench_db"
SECRET = {"username": "bench_user", "password": "bench-Password-123"}
PLAIN = {"conn_type": "postgres", "host": "db.internal", "port": 5432, "schema": "app", "login": SECRET["username"], "password": SECRET["password"]}
REFS = {**PLAIN, "login": "{{workato:sm:username:bench/db}}", "password": "{{workato:sm:password:bench/db}}"}
PROVIDER = "airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend"
PLUGIN = "airflow_sm_refs.backend.SecretsManagerRefsBackend"
MODES = ("plain", "plugin (worker cache)", "provider")

TASK = f"""
import json, resource, sys
try:
    from airflow.sdk import BaseHook
except ImportError:
    from airflow.hooks.base import BaseHook
ok = BaseHook.get_connection({CONN_ID!r}).password == {SECRET["password"]!r}
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"ok": ok, "cpu": usage.ru_utime + usage.ru_stime, "rss_kib": usage.ru_maxrss,
                  "botocore": "botocore" in sys.modules}}))
"""


def mode_env(mode: str, aws: AwsStandIn, cache_dir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    aws_kwargs = {"region_name": "us-east-1", "endpoint_url": aws.endpoint_url}
    if mode == "plain":
        env[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = json.dumps(PLAIN)
    elif mode == "provider":
        env["AIRFLOW__SECRETS__BACKEND"] = PROVIDER
        env["AIRFLOW__SECRETS__BACKEND_KWARGS"] = json.dumps(
            {"connections_prefix": "airflow/connections", "variables_prefix": None, **aws_kwargs}
        )
    else:
        env["AIRFLOW__SECRETS__BACKEND"] = PLUGIN
        env["AIRFLOW__SECRETS__BACKEND_KWARGS"] = json.dumps(
            {**aws_kwargs, "shared_cache_dir": cache_dir, "cache_ttl_seconds": 3600}  # outlives a slow run
        )
        env[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = json.dumps(REFS)
    return env


def run_task(env: dict[str, str]) -> dict[str, float]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", TASK], env=env, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not result["ok"]:
        raise RuntimeError("wrong password")
    return {"wall": wall, "cpu": result["cpu"], "rss_kib": result["rss_kib"], "botocore": result["botocore"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    cache_dir = tempfile.mkdtemp(prefix="bench-cache-")
    os.chmod(cache_dir, 0o700)
    with AwsStandIn() as aws:
        client = aws.client()
        client.create_secret(Name="bench/db", SecretString=json.dumps(SECRET))
        client.create_secret(Name=f"airflow/connections/{CONN_ID}", SecretString=json.dumps(PLAIN))
        envs = {mode: mode_env(mode, aws, cache_dir) for mode in MODES}
        run_task(envs["plugin (worker cache)"])  # fills the worker cache, as the worker's first task does
        for mode in MODES:  # one unmeasured run each: the OS page cache
            run_task(envs[mode])
        aws.reset_counts()
        samples: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
        calls = dict.fromkeys(MODES, 0)
        for _ in range(args.runs):
            for mode in MODES:
                before = aws.calls()
                samples[mode].append(run_task(envs[mode]))
                calls[mode] += aws.calls() - before
    shutil.rmtree(cache_dir, ignore_errors=True)
    plain = {k: statistics.median(s[k] for s in samples["plain"]) for k in ("wall", "cpu", "rss_kib")}
    save_results(
        "task_start",
        {
            "runs": args.runs,
            "modes": {
                mode: {k: statistics.median(s[k] for s in samples[mode]) / plain[k] for k in ("wall", "cpu")}
                for mode in MODES
            },
        },
    )
    print(f"{args.runs} runs each, medians; AWS calls counted at the server\n")
    print("| task process | wall ms | × plain | CPU ms | × plain | peak RSS MiB | botocore imported | AWS calls / run |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for mode in MODES:
        wall = statistics.median(s["wall"] for s in samples[mode])
        cpu = statistics.median(s["cpu"] for s in samples[mode])
        rss = statistics.median(s["rss_kib"] for s in samples[mode])
        boto = "yes" if any(s["botocore"] for s in samples[mode]) else "no"
        print(
            f"| {mode} | {wall * 1000:.0f} | {wall / plain['wall']:.3f} | {cpu * 1000:.0f} | {cpu / plain['cpu']:.3f} "
            f"| {rss / 1024:.1f} | {boto} | {calls[mode] / args.runs:g} |"
        )


if __name__ == "__main__":
    main()
