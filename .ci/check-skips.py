"""Fail if a test was skipped that .ci/expected-skips.txt does not list.

Usage: python .ci/check-skips.py REPORT [EXPECTED]
REPORT holds one JSON line per skipped test ({"airflow", "test", "reason"}),
written by tests/conftest.py when AIRFLOW_SM_REFS_SKIP_REPORT names it.
"""

from __future__ import annotations

import fnmatch
import json
import sys
from pathlib import Path


def expected_patterns(path: Path) -> list[tuple[str, str]]:
    patterns = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            version, test = line.split(None, 1)
            patterns.append((version, test.strip()))
    return patterns


def main() -> int:
    report = Path(sys.argv[1])
    expected = expected_patterns(Path(sys.argv[2] if len(sys.argv) > 2 else Path(__file__).with_name("expected-skips.txt")))
    skips = [json.loads(line) for line in report.read_text().splitlines() if line.strip()] if report.exists() else []
    unexpected = [
        s
        for s in skips
        if not any(fnmatch.fnmatchcase(s["airflow"], v) and fnmatch.fnmatchcase(s["test"], t) for v, t in expected)
    ]
    print(f"{len(skips)} skipped test(s), {len(skips) - len(unexpected)} of them expected")
    for s in unexpected:
        print(f"UNEXPECTED SKIP on Airflow {s['airflow']}: {s['test']}: {s['reason']}")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
