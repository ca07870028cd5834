"""The Amazon provider's ``SecretsManagerBackend`` against this plugin's drop-in, on a busy worker.

Each task process of one worker looks up ``aws_default`` (stored nowhere, as
every AWS hook does), one connection and one Variable stored in Secrets
Manager the provider's way, through Airflow's ``[secrets] backend``
(``BaseHook.get_connection``, ``Variable.get``). The processes are forked from
a warm parent and run ``--concurrency`` at a time, the next starting as one
ends, as a worker with that many slots runs them (tests/test_stored_burst.py's
parent, the one its burst test uses). Side by side in one run, against the
same moto stand-in on loopback:

1. provider: ``airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend``;
2. plugin:   ``airflow_sm_refs.backend.SecretsManagerBackend``, the same options (its defaults:
             per-worker cache, TTL 300 s, the missing id remembered as long).

"cold" starts with an empty worker cache; "warm" is the same number of new
task processes within the TTL. AWS calls are counted at the server. Wall time
is the whole batch, forks to last exit; per-lookup times are measured in the
task process. The first lookup (``aws_default``) also pays for what a task
process builds once: the backend chain, and for the provider its boto3
client (the plugin builds none on a warm worker cache). Where no supervisor
is there to ask (here), the plugin looks an id it finds nowhere up in the
metastore itself, as a 3.x task asks its supervisor; it costs this run a
SQLite query that the provider's chain here does not make.

Then a fleet-day estimate from the measured calls: a day's GetSecretValue
calls and their cost at $0.05 per 10,000 API calls.

    .venv/bin/python benchmarks/provider_backend.py [--tasks 50] [--concurrency 4]
        [--workers 10] [--tasks-per-day 2000] [--out docs]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from _bench_env import prepare, save_results  # noqa: E402 - benchmarks/ is the script's directory

ROOT = prepare()

from standins.aws import AwsStandIn  # noqa: E402
from tests.test_stored_burst import (  # noqa: E402
    EXPECTED,
    LOOKUPS,
    PLUGIN,
    PROVIDER,
    Burst,
    TaskBursts,
    backend_env,
    store_secrets,
)

MODES = {"provider": PROVIDER, "plugin": PLUGIN}
LABELS = {"provider": "provider SecretsManagerBackend", "plugin": "this plugin's SecretsManagerBackend"}
PHASES = ("cold", "warm")
TTL = 300.0
#: the TTL is shortened by up to this much at random (airflow_sm_refs.cache.DEFAULT_JITTER)
JITTER = 0.1
#: AWS Secrets Manager's price per API call
PRICE_PER_CALL = 0.05 / 10_000
DAY = 86_400


def median_ms(burst: Burst, measure: str) -> dict[str, float]:
    """Median milliseconds of ``measure`` (``seconds``: wall, ``cpu_seconds``) per task and per lookup."""
    per_key: dict[str, list[float]] = {key: [] for _, key in LOOKUPS}
    per_task = []
    for result in burst.results:
        for lookup in result["lookups"]:
            per_key[lookup["key"]].append(lookup[measure])
        per_task.append(sum(lookup[measure] for lookup in result["lookups"]))
    return {"task": 1000 * statistics.median(per_task)} | {
        key: 1000 * statistics.median(times) for key, times in per_key.items()
    }


def run_batch(
    processes: TaskBursts, aws: AwsStandIn, mode: str, env: dict, tasks: int, concurrency: int
) -> dict[str, Any]:
    """``tasks`` task processes, ``concurrency`` at a time: AWS calls, wall time and per-lookup times."""
    aws.reset_counts()
    burst = processes.run(tasks, env, concurrency=concurrency, timeout=1800)
    wrong = [found for found in burst.found() if found != EXPECTED]
    if wrong:
        raise SystemExit(f"{mode}: a task process did not find what is stored: {wrong[0]}")
    return {
        "get_secret_value": aws.calls("GetSecretValue"),
        "all_calls": aws.total_calls(),
        "wall_s": burst.wall,
        "wall_ms": median_ms(burst, "seconds"),
        "cpu_ms": median_ms(burst, "cpu_seconds"),
    }


def measure(tasks: int, concurrency: int, work: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(mode, phase) -> the batch's figures."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    with AwsStandIn() as aws, TaskBursts(work / "task-processes.log") as processes:
        store_secrets(aws)
        aws_kwargs = {"region_name": "us-east-1", "endpoint_url": aws.endpoint_url}
        # One warm-up batch, so neither mode pays for moto's first answers.
        run_batch(processes, aws, "provider", backend_env(PROVIDER, **aws_kwargs), concurrency, concurrency)
        for mode, backend in MODES.items():
            kwargs = dict(aws_kwargs)
            if mode == "plugin":
                kwargs["shared_cache_dir"] = str(work / "worker-cache")  # empty: cold
            env = backend_env(backend, **kwargs)
            for phase in PHASES:
                rows[(mode, phase)] = run_batch(processes, aws, mode, env, tasks, concurrency)
    return rows


def fleet_day(
    rows: dict[tuple[str, str], dict[str, Any]], tasks: int, workers: int, per_day: int
) -> list[tuple[str, int, int]]:
    """(row, fewest calls a day, most) for the fleet, from the measured calls."""
    provider_per_task = rows[("provider", "cold")]["get_secret_value"] / tasks
    # The plugin asks once per id per worker per TTL (measured: a cold batch, then nothing
    # within the TTL), so a worker asks in each TTL window that has a task: at most DAY / TTL
    # windows a day, up to DAY / (TTL * (1 - JITTER)) when every entry draws the shortest TTL.
    per_window = rows[("plugin", "cold")]["get_secret_value"] + rows[("plugin", "warm")]["get_secret_value"]
    per_id = per_window / len(LOOKUPS)
    windows = (min(per_day, DAY / TTL), min(per_day, DAY / (TTL * (1 - JITTER))))
    # For comparison: the missing id remembered only negative_cache_seconds (10 s), the found ones a TTL.
    missing_short = min(per_day, DAY / 10) * per_id
    provider = round(workers * per_day * provider_per_task)
    return [
        (LABELS["provider"], provider, provider),
        (LABELS["plugin"], round(workers * windows[0] * per_window), round(workers * windows[1] * per_window)),
        (
            "  (computed) the plugin, missing id kept 10 s",
            round(workers * (missing_short + windows[0] * (per_window - per_id))),
            round(workers * (missing_short + windows[1] * (per_window - per_id))),
        ),
    ]


def draw(
    rows: dict[tuple[str, str], dict[str, Any]], fleet: list[tuple[str, int, int]], args: argparse.Namespace, load: str
) -> Path:
    """docs/provider-calls.png: the measured batches, and the fleet-day estimate, captioned with what was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (batch_ax, day_ax) = plt.subplots(1, 2, figsize=(9.6, 4.6), dpi=100, width_ratios=[3, 2])
    width = 0.38
    for offset, mode in ((-width / 2, "provider"), (width / 2, "plugin")):
        calls = [rows[(mode, phase)]["get_secret_value"] for phase in PHASES]
        bars = batch_ax.bar([x + offset for x in range(len(PHASES))], calls, width, label=LABELS[mode])
        batch_ax.bar_label(bars)
    batch_ax.set_xticks(range(len(PHASES)), [f"{phase} batch" for phase in PHASES])
    batch_ax.set_ylabel("GetSecretValue calls")
    batch_ax.set_title(f"{args.tasks} task processes on one worker")
    batch_ax.grid(True, axis="y", alpha=0.3)
    batch_ax.legend()
    names = ["provider", "plugin"]
    most = [fleet[0][2], fleet[1][2]]
    bars = day_ax.bar(names, most, 0.6, color=["C0", "C1"])
    day_ax.bar_label(bars, labels=[f"{n:,}\n${n * PRICE_PER_CALL:.2f} a day" for n in most])
    day_ax.set_ylabel("GetSecretValue calls a day")
    day_ax.set_title(f"Fleet day: {args.workers} workers × {args.tasks_per_day:,} tasks")
    day_ax.set_ylim(0, max(most) * 1.25)
    day_ax.grid(True, axis="y", alpha=0.3)
    caption = (
        f"Measured: {args.tasks} task processes forked from a warm parent, {args.concurrency} at a time, each looking "
        "up aws_default (stored nowhere), one stored connection and one Variable through [secrets] backend, against a "
        f"local moto stand-in on loopback, on this machine ({os.cpu_count()} CPUs, load average {load}); "
        "cold = empty worker cache, warm = new processes within the TTL. Fleet day: computed from those calls, "
        f"TTL {TTL:.0f} s (the most, with its jitter), $0.05 per 10,000 API calls."
    )
    fig.text(0.01, 0.01, caption, ha="left", va="bottom", fontsize=7.5, wrap=True)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "provider-calls.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def dollars(fewest: float, most: float) -> str:
    """What ``fewest`` to ``most`` API calls cost."""
    low, high = fewest * PRICE_PER_CALL, most * PRICE_PER_CALL
    return f"${low:,.2f}" if f"{low:.2f}" == f"{high:.2f}" else f"${low:,.2f}-{high:,.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=50, help="task processes per batch")
    parser.add_argument("--concurrency", type=int, default=4, help="task processes at a time (the worker's slots)")
    parser.add_argument("--workers", type=int, default=10, help="workers in the fleet-day estimate")
    parser.add_argument("--tasks-per-day", type=int, default=2000, help="tasks a day per worker in the estimate")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where provider-calls.png goes")
    args = parser.parse_args()

    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    ram_fs = "/dev/shm" if os.path.isdir("/dev/shm") else None
    work = Path(tempfile.mkdtemp(prefix="airflow-sm-refs-bench-", dir=ram_fs))
    try:
        rows = measure(args.tasks, args.concurrency, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fleet = fleet_day(rows, args.tasks, args.workers, args.tasks_per_day)

    keys = [key for _, key in LOOKUPS]
    print(
        f"\n{args.tasks} task processes on one worker, {args.concurrency} at a time, each looking up "
        f"{', '.join(keys)} ({keys[0]} is stored nowhere); {os.cpu_count()} CPUs, load average {load} at the start\n"
    )
    head = (
        f"{'':<36} {'batch':<5} | {'GetSecretValue':>14} {'all calls':>9} | {'wall s':>6} | "
        + " | ".join(f"{name:>15}" for name in ["per task ms", *(f"{key} ms" for key in keys)])
    )
    print(head)
    print(f"{'':<36} {'':<5} | {'':>14} {'':>9} | {'':>6} | " + " | ".join(f"{'wall / CPU':>15}" for _ in range(4)))
    print("-" * len(head))
    for mode in MODES:
        for phase in PHASES:
            row = rows[(mode, phase)]
            cells = [f"{row['wall_ms'][name]:7.1f} /{row['cpu_ms'][name]:6.1f}" for name in ["task", *keys]]
            print(
                f"{LABELS[mode]:<36} {phase:<5} | {row['get_secret_value']:>14} {row['all_calls']:>9} | "
                f"{row['wall_s']:>6.2f} | " + " | ".join(f"{cell:>15}" for cell in cells)
            )
    print(
        "\ncold: empty worker cache; warm: new task processes within the TTL. wall s: the whole batch, first fork "
        "to last exit; ms: medians over the task processes, wall time and the process's CPU time"
    )

    print(
        f"\nFleet day: {args.workers} workers × {args.tasks_per_day:,} tasks a day each "
        f"({args.workers * args.tasks_per_day:,} tasks, {len(LOOKUPS)} lookups each), TTL {TTL:.0f} s, "
        "$0.05 per 10,000 API calls\n"
    )
    print(f"{'':<46} {'GetSecretValue calls/day':>26} {'cost/day':>17} {'cost/year':>19}")
    for label, fewest, most in fleet:
        calls = f"{fewest:,}" if fewest == most else f"{fewest:,}-{most:,}"
        day = dollars(fewest, most)
        year = dollars(365 * fewest, 365 * most)
        print(f"{label:<46} {calls:>26} {day:>17} {year:>19}")
    print(
        "\nthe plugin: one call per id per worker per TTL window with a task in it (fewest: the full TTL; "
        f"most: every entry drawing the TTL {JITTER:.0%} shorter)"
    )

    save_results(
        "provider_backend",
        {
            "tasks": args.tasks,
            "concurrency": args.concurrency,
            "batches": [{"mode": mode, "phase": phase, **row} for (mode, phase), row in rows.items()],
            "fleet_day": [{"row": label, "fewest": fewest, "most": most} for label, fewest, most in fleet],
        },
    )
    try:
        print(f"\nchart: wrote {draw(rows, fleet, args, load)}")
    except ImportError:
        print("\nchart: matplotlib is not installed (the bench extra); no chart drawn")


if __name__ == "__main__":
    main()
