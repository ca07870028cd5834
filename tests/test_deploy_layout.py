"""The layouts of docs/deploy.md, as far as one machine can show them.

KubernetesExecutor: every task is its own pod, so only a directory shared by
the pods of a node (a ``hostPath`` on the node's tmpfs, mounted into every
task pod) lets one task's fetch serve the next. Here each "pod" is its own
process tree (a new session, a shell-like parent that starts the task
process) with its own HOME, working directory, AIRFLOW_HOME and TMPDIR; all
they share is the directory named as ``shared_cache_dir`` and the backend
configuration, as task pods built from one pod template do. AWS calls are
counted at the stand-in, whatever process makes them.

CeleryExecutor and Docker Compose: each worker its own directory, so each
worker fetches once.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from standins.aws import AwsStandIn
from tests.conftest import BACKEND

pytestmark = pytest.mark.compat

PASSWORD = "deploy-pw-4b1d-value"
REPO = Path(__file__).resolve().parent.parent

# The pod's entrypoint: starts the task process as a child, as a pod's
# container process does, and relays what it printed.
_POD = r"""
import subprocess, sys
done = subprocess.run([sys.executable, "-c", sys.argv[1]], capture_output=True, text=True, timeout=180)
sys.stdout.write(done.stdout)
sys.stderr.write(done.stderr)
sys.exit(done.returncode)
"""

# The task process: one lookup as a task does; reports a digest and where each value came from.
_TASK = r"""
import hashlib, json, logging, os

class Capture(logging.Handler):
    lines = []
    def emit(self, record):
        self.lines.append(record.levelname + " " + record.getMessage())

capture = Capture()
logger = logging.getLogger("airflow_sm_refs")
logger.addHandler(capture)
logger.setLevel(logging.INFO)

from airflow_sm_refs._compat import base_hook

conn = base_hook().get_connection("warehouse")
print(json.dumps({
    "digest": hashlib.sha256(conn.password.encode()).hexdigest(),
    "cwd": os.getcwd(),
    "log": capture.lines,
}))
"""


class Node:
    """One node: a tmpfs-like directory, and the pod template every task pod is built from."""

    def __init__(self, root: Path, aws: AwsStandIn) -> None:
        self.root = root
        self.aws = aws
        #: the hostPath directory, as the pod sees it at its mountPath
        self.cache_dir = root / "node-tmpfs" / "airflow-sm-refs"
        self.cache_dir.parent.mkdir(parents=True)

    def prepare_cache_dir(self, mode: int) -> None:
        """What the docs' initContainer does: the directory, owned by the pods' uid, with ``mode``."""
        self.cache_dir.mkdir(exist_ok=True)
        os.chown(self.cache_dir, os.geteuid(), os.getegid())
        self.cache_dir.chmod(mode)

    def pod_env(self, name: str, cache_dir: Path | None = None) -> dict[str, str]:
        pod = self.root / name
        for part in ("home", "work", "airflow", "tmp"):
            (pod / part).mkdir(parents=True, exist_ok=True)
        inherited = ("AIRFLOW", "AWS_", "_AIRFLOW")
        env = {k: v for k, v in os.environ.items() if not k.startswith(inherited)}
        env.update(
            HOME=str(pod / "home"),
            AIRFLOW_HOME=str(pod / "airflow"),
            TMPDIR=str(pod / "tmp"),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__FERNET_KEY="pVgqJ9pNwYTHx4vuxvyQmx6tZiZR_8ZxMLcwHF0aZxQ=",
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            # from the pod template: the same in every pod
            AIRFLOW__SECRETS__BACKEND=BACKEND,
            AIRFLOW__SECRETS__BACKEND_KWARGS=json.dumps(
                {
                    "region_name": "us-east-1",
                    "endpoint_url": self.aws.endpoint_url,
                    "shared_cache_dir": str(cache_dir or self.cache_dir),
                }
            ),
            AIRFLOW_CONN_WAREHOUSE=json.dumps(
                {"conn_type": "postgres", "host": "db.internal", "password": "{{workato:sm:password:prod/db}}"}
            ),
        )
        return env

    def start_pod(self, name: str, cache_dir: Path | None = None) -> subprocess.Popen[str]:
        env = self.pod_env(name, cache_dir)
        env["PYTHONPATH"] = str(REPO)  # the package as installed in the image; the cwd is elsewhere
        return subprocess.Popen(
            [sys.executable, "-c", _POD, _TASK],
            cwd=str(self.root / name / "work"),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )


def _finish(pod: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = pod.communicate(timeout=240)
    assert PASSWORD not in out + err, "a secret value was printed"
    assert pod.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _source(result: dict[str, Any]) -> str:
    lines = [line for line in result["log"] if "field 'password'" in line and ": ok" in line]
    assert len(lines) == 1, result["log"]
    for source in ("worker cache", "process cache", "aws"):
        if f" from {source} " in lines[0]:
            return source
    raise AssertionError(lines[0])


@pytest.fixture
def node(aws: AwsStandIn, tmp_path: Path) -> Node:
    aws.client().create_secret(Name="prod/db", SecretString=json.dumps({"password": PASSWORD}))
    return Node(tmp_path, aws)


EXPECTED = hashlib.sha256(PASSWORD.encode()).hexdigest()


class TestKubernetesNodeCache:
    def test_two_pods_on_one_node_make_one_call(self, node: Node) -> None:
        node.prepare_cache_dir(0o700)

        first = _finish(node.start_pod("pod-a"))
        second = _finish(node.start_pod("pod-b"))

        assert first["digest"] == second["digest"] == EXPECTED
        assert first["cwd"] != second["cwd"]
        assert (_source(first), _source(second)) == ("aws", "worker cache")
        assert node.aws.calls() == 1

    def test_pods_starting_together_make_one_call(self, node: Node) -> None:
        node.prepare_cache_dir(0o700)

        pods = [node.start_pod(f"pod-{i}") for i in range(3)]
        results = [_finish(pod) for pod in pods]

        assert {r["digest"] for r in results} == {EXPECTED}
        assert sorted(_source(r) for r in results) == ["aws", "worker cache", "worker cache"]
        assert node.aws.calls() == 1

    def test_a_directory_open_to_others_is_refused_and_each_pod_fetches(self, node: Node) -> None:
        # what a hostPath of type DirectoryOrCreate makes: 0755
        node.prepare_cache_dir(0o755)

        results = [_finish(node.start_pod(f"pod-{i}")) for i in range(2)]

        assert {r["digest"] for r in results} == {EXPECTED}  # the task still gets its value
        for result in results:
            refused = [line for line in result["log"] if line.startswith("WARNING Not using")]
            assert refused and "0755" in refused[0], result["log"]
        assert node.aws.calls() == 2
        assert os.listdir(node.cache_dir) == []  # nothing was written there

    def test_the_plugin_creates_a_missing_directory_itself(self, node: Node) -> None:
        # a parent the pods' user may write to (an emptyDir, or a hostPath prepared for it)
        node.cache_dir.parent.chmod(0o700)

        results = [_finish(node.start_pod(f"pod-{i}")) for i in range(2)]

        assert [_source(r) for r in results] == ["aws", "worker cache"]
        assert oct(node.cache_dir.stat().st_mode & 0o777) == oct(0o700)


class TestOneCachePerWorker:
    def test_each_celery_worker_has_its_own_directory(self, node: Node) -> None:
        # AIRFLOW__SECRETS__BACKEND_KWARGS per worker, each naming its own shared_cache_dir
        first, second = node.root / "worker-1-shm", node.root / "worker-2-shm"

        results = [
            _finish(node.start_pod("worker-1-task-1", first)),
            _finish(node.start_pod("worker-2-task-1", second)),
            _finish(node.start_pod("worker-1-task-2", first)),
        ]

        assert [_source(r) for r in results] == ["aws", "aws", "worker cache"]
        assert node.aws.calls() == 2
