"""Mutation check: each core behaviour, broken on purpose, must make a chosen test fail.

For every mutation: copy the repository's working tree (package, tests,
stand-ins, examples) to a temporary directory, apply one fault to the copy of
the package by exact text replacement (a mutation whose text is no longer in
the code is reported as NOT APPLIED, never as caught), and run the chosen
tests there with the copy first on ``sys.path``. A mutation is *caught* when
at least one chosen test fails. Prints a table; exits 1 if any mutation
survived or could not be applied.

Run with ``make test-mutations`` (or ``python -m tests.mutations.run [NAME ...]``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COPIED = ("airflow_sm_refs", "tests", "standins", "example_dags", "demo", "benchmarks", "pyproject.toml")


@dataclass(frozen=True)
class Mutation:
    name: str
    #: (file in the package, exact text, replacement) -- every one must apply
    edits: tuple[tuple[str, str, str], ...]
    #: the tests expected to catch it (pytest arguments)
    tests: tuple[str, ...]


MUTATIONS = (
    Mutation(
        "raw token handed out",
        # a failed reference is handed on as its own text instead of failing the lookup
        (
            (
                "expand.py",
                "            raise exc.located(conn_id=self.conn_id, field=field, reference=ref.text) from None",
                "            return ref.text  # MUTATION",
            ),
        ),
        ("tests/test_backend.py", "tests/test_variables.py", "tests/test_promises.py"),
    ),
    Mutation(
        "value left unmasked",
        (("expand.py", "        self.mask(resolved.value)\n", "        pass  # MUTATION\n"),),
        ("tests/test_masking.py",),
    ),
    Mutation(
        "single-flight broken",
        # every caller loads for itself
        (
            ("cache.py", "            leader = flight is None\n", "            leader = True  # MUTATION\n"),
            ("cache.py", "                del self._flights[key]\n", "                self._flights.pop(key, None)\n"),
        ),
        ("tests/test_cache.py",),
    ),
    Mutation(
        "TTL ignored",
        # entries never expire, in either tier
        (
            (
                "cache.py",
                "        return entry.fetched_at <= now < entry.fetched_at + entry.lifetime(ttl, self.jitter)\n",
                "        return entry.fetched_at <= now  # MUTATION\n",
            ),
            (
                "_worker_entry.py",
                "        return self.payload is not None and self.fetched_at <= now < self.expires_at(ttl, jitter)\n",
                "        return self.payload is not None and self.fetched_at <= now  # MUTATION\n",
            ),
        ),
        ("tests/test_cache.py", "tests/test_worker_cache.py", "-k", "not TestAcrossTaskProcesses"),
    ),
    Mutation(
        "stale served after a deny",
        # any failure, not only a transient one, serves the expired value
        (
            (
                "cache.py",
                "                if entry is not None and is_transient(exc):\n",
                "                if entry is not None:  # MUTATION\n",
            ),
            (
                "worker_cache.py",
                "            if failure.transient and current is not None and current.can_serve_stale(",
                "            if current is not None and current.can_serve_stale(  # MUTATION\n                ",
            ),
        ),
        ("tests/test_cache.py", "tests/test_promises.py", "tests/test_worker_cache.py", "-k", "not TestAcrossTaskProcesses"),
    ),
)


def copy_tree(into: Path) -> None:
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, into / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif source.exists():
            shutil.copy2(source, into / name)


def apply(mutation: Mutation, into: Path) -> str | None:
    """Apply every edit; return why not, if one does not apply."""
    for file, old, new in mutation.edits:
        path = into / "airflow_sm_refs" / file
        text = path.read_text()
        if text.count(old) != 1:
            return f"{file}: the text to mutate occurs {text.count(old)} times"
        path.write_text(text.replace(old, new))
    return None


def run_tests(mutation: Mutation, into: Path) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": f"{into}{os.pathsep}{os.environ.get('PYTHONPATH', '')}".rstrip(os.pathsep)}
    env.pop("AIRFLOW_SM_REFS_SKIP_REPORT", None)
    check = subprocess.run(
        [sys.executable, "-c", "import airflow_sm_refs, sys; sys.stdout.write(airflow_sm_refs.__file__)"],
        cwd=into, env=env, capture_output=True, text=True, check=True,
    )
    assert check.stdout.startswith(str(into)), f"the mutated copy is not what gets imported: {check.stdout}"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not e2e", *mutation.tests],
        cwd=into, env=env, capture_output=True, text=True, timeout=1800,
    )
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", done.stdout, re.MULTILINE)
    return done.returncode, failed[0] if failed else ""


def main(names: list[str]) -> int:
    chosen = [m for m in MUTATIONS if not names or m.name in names]
    rows = []
    for mutation in chosen:
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="airflow-sm-refs-mutant-") as tmp:
            into = Path(tmp)
            copy_tree(into)
            why = apply(mutation, into)
            if why:
                rows.append((mutation.name, "NOT APPLIED", why, 0.0))
                continue
            rc, first = run_tests(mutation, into)
        seconds = time.monotonic() - started
        if rc == 1:
            rows.append((mutation.name, "caught", first, seconds))
        elif rc == 0:
            rows.append((mutation.name, "SURVIVED", "every chosen test passed", seconds))
        else:
            rows.append((mutation.name, f"ERROR (pytest exit {rc})", first, seconds))
        print(f"{mutation.name}: {rows[-1][1]}", file=sys.stderr, flush=True)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'mutation':<{width}}  {'result':<11}  {'s':>5}  first failing test")
    for name, result, detail, seconds in rows:
        print(f"{name:<{width}}  {result:<11}  {seconds:5.0f}  {detail}")
    return 0 if all(r[1] == "caught" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
