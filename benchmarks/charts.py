"""PNG charts of the benchmarks' figures, for the README (needs the ``bench`` extra: matplotlib).

Reads what ``benchmarks/worker_cache.py`` and ``benchmarks/task_start.py`` saved under
``benchmarks/results/`` and writes:

- ``docs/aws-calls.png``: AWS calls against task processes per worker (a cold burst), for this
  plugin with the per-worker cache, with it off, and for the Amazon provider's backend;
- ``docs/task-start.png``: a fresh task process's wall and CPU time, × a plain one.

Each chart has a caption under it: what was measured, against what, the machine's CPUs and
load average, and when (the ``run`` the benchmark saved with its figures).

    .venv/bin/python benchmarks/charts.py [--out docs]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _bench_env import RESULTS, ROOT


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        print(f"charts: no {path}; run benchmarks/{name}.py first")
        return None
    return json.loads(path.read_text())


def measured_on(data: dict) -> str:
    """The CPUs, load average and date of the run ``data`` comes from, for a caption."""
    run = data.get("run")
    if run is None:  # saved before the run was recorded
        return "machine and load not recorded."

    def load(key: str) -> str:
        return " ".join(f"{x:.1f}" for x in run[key])

    return (
        f"this machine: {run['cpus']} CPUs, load average (1, 5, 15 min) {load('load_average_start')} when the "
        f"benchmark started, {load('load_average_end')} when it ended; run {run['started'][:16].replace('T', ' ')} UTC."
    )


def _save(fig: object, path: Path, caption: str) -> Path:
    """Write ``fig`` to ``path`` with ``caption`` under the chart."""
    import matplotlib.pyplot as plt

    fig.text(0.01, 0.01, caption, ha="left", va="bottom", fontsize=7.5, wrap=True)  # type: ignore[attr-defined]
    fig.tight_layout(rect=(0, 0.17, 1, 1))  # type: ignore[attr-defined]
    fig.savefig(path)  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return path


def aws_calls_chart(data: dict, out: Path) -> Path:
    import matplotlib.pyplot as plt

    # (label, line style, marker): the tier-off and provider lines coincide, so they must both show
    styles = {
        "worker tier": ("this plugin (per-worker cache)", "-", "o"),
        "tier off": ("this plugin, per-worker cache off", "--", "s"),
        "provider": ("provider SecretsManagerBackend", ":", "^"),
    }
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    for mode, (label, line, marker) in styles.items():
        points = sorted((b["n"], b["aws_calls"]) for b in data["bursts"] if b["mode"] == mode and b["phase"] == "cold")
        ax.plot([n for n, _ in points], [c for _, c in points], linestyle=line, marker=marker, markersize=8, label=label)
    ax.set_xlabel("task processes on one worker, at once (cold)")
    ax.set_ylabel("AWS calls")
    ax.set_title("AWS calls for one connection, per worker")
    ax.grid(True, alpha=0.3)
    ax.legend()
    sizes = ", ".join(str(n) for n in data["sizes"])
    caption = (
        f"Measured: a cold burst (empty worker cache) of {sizes} task processes forked from a warm parent and released "
        "together on one worker, each looking up one connection with 2 references (the provider: the whole "
        f"connection in one secret); median of {data.get('repeat', 3)} bursts. AWS calls counted at a local moto "
        f"stand-in on 127.0.0.1, not AWS; {measured_on(data)}"
    )
    return _save(fig, out / "aws-calls.png", caption)


def task_start_chart(data: dict, out: Path) -> Path:
    import matplotlib.pyplot as plt

    modes = [m for m in data["modes"] if m != "plain"]
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    width = 0.35
    xs = range(len(modes))
    ax.bar([x - width / 2 for x in xs], [data["modes"][m]["wall"] for m in modes], width, label="wall time")
    ax.bar([x + width / 2 for x in xs], [data["modes"][m]["cpu"] for m in modes], width, label="CPU time")
    ax.axhline(1.0, color="grey", linewidth=1, linestyle="--")
    ax.set_xticks(list(xs), modes)
    ax.set_ylabel("× a task process with plain values")
    ax.set_title(f"Task process start, one lookup (median of {data['runs']})")
    ax.legend()
    caption = (
        f"Measured: {data['runs']} fresh task processes each way, one at a time, the ways in turn; each imports "
        "Airflow and looks up one connection (BaseHook.get_connection). Plugin: 2 references, both secrets already in "
        "the worker cache (warm, no AWS call); provider: the whole connection in one secret, one call per process "
        "(it has no cache across processes), against a local moto stand-in on 127.0.0.1, not AWS. Medians, × a "
        f"process with plain values and no backend; {measured_on(data)}"
    )
    return _save(fig, out / "task-start.png", caption)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    args.out.mkdir(parents=True, exist_ok=True)
    for name, draw in (("worker_cache", aws_calls_chart), ("task_start", task_start_chart)):
        data = _load(name)
        if data is not None:
            print(f"charts: wrote {draw(data, args.out)}")


if __name__ == "__main__":
    main()
