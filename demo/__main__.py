"""``make demo``: the plugin's main job end to end, on embedded defaults.

Starts a moto server on 127.0.0.1 as the stand-in for AWS and stores a
secret in it, starts a small HTTP API that insists on that secret as a bearer
token, configures the backend in a throwaway AIRFLOW_HOME, and runs the
example DAG twice with ``airflow dags test``: once with a good reference, once
with a reference to a key the secret does not have. It reports what it
measured: task states, the calls that reached the AWS stand-in and where each
lookup's value came from, the requests the API saw, and the one-line error the
broken run failed with.

``python -m demo --keep`` (``make demo DEMO_ARGS=--keep``) keeps the
AIRFLOW_HOME and keeps the stand-ins running until Ctrl-C, and prints how to
use them from another shell.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from standins.aws import AwsStandIn  # noqa: E402
from standins.http_api import BearerTokenApi  # noqa: E402

DAG_ID = "example_http_bearer_token"
SECRET_NAME = "partner/api"
TOKEN = "demo-token-7f3a9c2e51"  # noqa: S105 - a made-up token for the stand-in
GOOD_REF = f"{{{{workato:sm:token:{SECRET_NAME}}}}}"
MISSING_KEY = "api_token"
BROKEN_REF = f"{{{{workato:sm:{MISSING_KEY}:{SECRET_NAME}}}}}"

#: the plugin's audit line for a resolved reference (airflow_sm_refs.expand.log_served)
SERVED = re.compile(r"connection 'partner_api' field '[^']+': secret \S+ key '\w+' \(\w+\) from (.+?) in [\d.]+ ms: ok")
#: the error a lookup fails with, as the task log shows it: "<ErrorClass>: connection ..., reference ...: why"
FAILURE = re.compile(r"(\w+(?:Error|Aborted|Denied)): (connection 'partner_api', field '[^']+', reference '[^']+': .+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Report:
    """Everything the demo prints goes through here, and the token never does."""

    def __init__(self) -> None:
        self.leaked = False

    def __call__(self, text: str = "") -> None:
        if TOKEN in text:
            self.leaked = True
            text = text.replace(TOKEN, "<the token, withheld>")
        print(text, flush=True)


say = Report()


def connection(api: BearerTokenApi, reference: str) -> str:
    """The ``partner_api`` connection (JSON, as in an AIRFLOW_CONN_* variable) with ``reference`` in its header."""
    return json.dumps(
        {
            "conn_type": "http",
            "host": "127.0.0.1",
            "port": api.port,
            "schema": "http",
            "extra": {"Authorization": f"Bearer {reference}"},
        }
    )


def airflow_env(home: Path, api: BearerTokenApi) -> dict[str, str]:
    """The environment of the Airflow commands: config, connection, fake AWS credentials."""
    env = dict(os.environ)
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "example_dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AWS_ACCESS_KEY_ID="demo",
        AWS_SECRET_ACCESS_KEY="demo",
        AWS_DEFAULT_REGION="us-east-1",
        AIRFLOW_CONN_PARTNER_API=connection(api, GOOD_REF),
    )
    return env


def write_config(home: Path, aws: AwsStandIn, cache_dir: str | None) -> None:
    """airflow.cfg with the one [secrets] block a user adds."""
    kwargs: dict[str, object] = {"region_name": "us-east-1", "endpoint_url": aws.endpoint_url, "cache_ttl_seconds": 300}
    if cache_dir is not None:
        # The per-worker cache of this demo alone (on /dev/shm, as the default is), so
        # what it counts is its own and nothing of it outlives the demo.
        kwargs["shared_cache_dir"] = cache_dir
    (home / "airflow.cfg").write_text(
        "[secrets]\n"
        "backend = airflow_sm_refs.backend.SecretsManagerRefsBackend\n"
        f"backend_kwargs = {json.dumps(kwargs)}\n"
    )


def demo_cache_dir() -> str | None:
    """A private directory on /dev/shm for the per-worker cache, or ``None`` where there is none (no worker cache)."""
    if not os.path.isdir("/dev/shm"):
        return None
    return tempfile.mkdtemp(prefix="airflow-sm-refs-demo-cache-", dir="/dev/shm")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep AIRFLOW_HOME and keep the stand-ins running until Ctrl-C, to try things in another shell",
    )
    args = parser.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="airflow-sm-refs-demo-"))
    cache_dir = demo_cache_dir()
    started = time.monotonic()
    try:
        with AwsStandIn() as aws, BearerTokenApi(TOKEN) as api:
            aws.client().create_secret(Name=SECRET_NAME, SecretString=json.dumps({"token": TOKEN}))
            aws.reset_counts()
            write_config(home, aws, cache_dir)
            env = airflow_env(home, api)
            say(f"AIRFLOW_HOME      {home}")
            say(f"AWS stand-in      {aws.endpoint_url} (moto), secret {SECRET_NAME!r} = {{\"token\": ...}}")
            say(f"HTTP API          {api.url} (accepts only the secret's token)")
            say(f"worker cache      {cache_dir or 'none (no /dev/shm): each process caches for itself'}")
            subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)

            ok = good_run(env, aws, api)
            ok = broken_run(env, aws, api) and ok
            say()
            say(f"took {time.monotonic() - started:.1f} s")
            if say.leaked:
                say("ERROR: the token appeared in what the demo was about to print (withheld above)")
                ok = False
            if args.keep:
                keep(home, cache_dir, aws, api, env)
            return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
        if cache_dir is not None:
            shutil.rmtree(cache_dir, ignore_errors=True)


def good_run(env: dict[str, str], aws: AwsStandIn, api: BearerTokenApi) -> bool:
    """Run 1: the connection refers to a key the secret has."""
    say()
    say(f"run 1: partner_api extra = {{\"Authorization\": \"Bearer {GOOD_REF}\"}}")
    before = api.requests
    output, calls = dags_test(env, aws)
    run_id, state, tasks = last_run(env)
    show_tasks(tasks)
    say(f"  DAG run           {state}")
    served = SERVED.findall(output)
    say(f"  AWS calls         {describe_calls(calls)}, for {plural(len(served), 'lookup')} of {SECRET_NAME}: {sources(served)}")
    if "process cache" in served and calls.get("GetSecretValue", 0) + calls.get("BatchGetSecretValue", 0) <= 1:
        say("                    (`airflow dags test` runs every task in one process: the first lookup fetched")
        say("                    the secret, the next found it in that process's cache)")
    say(f"  HTTP API          {api.requests - before} request(s), {api.rejected} rejected")
    header, lookup, calls = masked_header(env, aws)
    say("  the resolved header, as Airflow's secrets masker writes it to task logs:")
    say(f"    Authorization: {header}")
    say(f"    (looked up again in a new process: {describe_calls(calls)}, value from {lookup or 'an unknown source'})")
    if state != "success":
        say(tail(output))
    return state == "success" and api.rejected == 0 and run_id is not None


def broken_run(env: dict[str, str], aws: AwsStandIn, api: BearerTokenApi) -> bool:
    """Run 2: the connection refers to a key the secret does not have."""
    env = dict(env, AIRFLOW_CONN_PARTNER_API=connection(api, BROKEN_REF))
    say()
    say(f"run 2: partner_api extra = {{\"Authorization\": \"Bearer {BROKEN_REF}\"}} (no such key)")
    before = api.requests
    output, calls = dags_test(env, aws)
    _, state, tasks = last_run(env)
    show_tasks(tasks)
    say(f"  DAG run           {state}")
    failures = FAILURE.findall(ANSI.sub("", output))
    say("  the task failed with (from the task log):")
    say(f"    {failures[-1][0]}: {failures[-1][1]}" if failures else "    (no lookup error found in the task log)")
    fetched = calls.get("GetSecretValue", 0) + calls.get("BatchGetSecretValue", 0)
    if fetched == 0:
        why = "the secret was in the worker cache run 1 filled; a missing key needs no AWS call to tell"
    else:
        why = f"the secret came from AWS, which has no key {MISSING_KEY!r} in it"
    say(f"  AWS calls         {describe_calls(calls)}: {why}")
    sent = api.requests - before
    say(f"  HTTP API          {sent} request(s): the raw reference was never sent" if sent == 0 else f"  HTTP API          {sent} request(s)")
    if state != "failed" or not failures:
        say(tail(output))
    return state == "failed" and sent == 0 and bool(failures)


def dags_test(env: dict[str, str], aws: AwsStandIn) -> tuple[str, dict[str, int]]:
    """``airflow dags test``: its output, and the calls that reached the AWS stand-in meanwhile, by action."""
    aws.reset_counts()
    run = subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "test", DAG_ID],
        env=env,
        capture_output=True,
        text=True,
        cwd=env["AIRFLOW_HOME"],
    )
    return run.stdout + run.stderr, counted(aws)


def counted(aws: AwsStandIn) -> dict[str, int]:
    return {action: aws.calls(action) for action in ("GetSecretValue", "BatchGetSecretValue") if aws.calls(action)}


def describe_calls(calls: dict[str, int]) -> str:
    if not calls:
        return "0 GetSecretValue"
    return ", ".join(f"{count} {action}" for action, count in calls.items())


def sources(served: list[str]) -> str:
    return ", ".join(f"{count} from {source}" for source, count in collections.Counter(served).items()) or "none logged"


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def show_tasks(tasks: dict[str, str]) -> None:
    for task_id, task_state in tasks.items():
        say(f"  {task_id:<18}{task_state}")


def tail(output: str) -> str:
    """The end of a command's output, to say why it failed (the token withheld by ``say``)."""
    return ANSI.sub("", output)[-4000:]


def masked_header(env: dict[str, str], aws: AwsStandIn) -> tuple[str, str | None, dict[str, int]]:
    """Look the connection up as a task does, in a new process; show the header through the masker."""
    aws.reset_counts()
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from airflow_sm_refs._compat import base_hook, redact\n"
            "conn = base_hook().get_connection('partner_api')\n"
            "print(redact(conn.extra_dejson['Authorization']))",
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    served = SERVED.findall(result.stdout + result.stderr)
    return result.stdout.strip().splitlines()[-1], (served[-1] if served else None), counted(aws)


def last_run(env: dict[str, str]) -> tuple[str | None, str, dict[str, str]]:
    """The latest run of the DAG: its id, state, and its tasks' states in the order they ran."""
    code = (
        "import json\n"
        "from airflow.models import DagRun, TaskInstance\n"
        "from airflow.utils.session import create_session\n"
        "with create_session() as s:\n"
        f"    run = s.query(DagRun).filter(DagRun.dag_id == {DAG_ID!r}).order_by(DagRun.id.desc()).first()\n"
        "    tis = [] if run is None else s.query(TaskInstance).filter(\n"
        f"        TaskInstance.dag_id == {DAG_ID!r}, TaskInstance.run_id == run.run_id).all()\n"
        "    tis.sort(key=lambda ti: (ti.start_date is None, ti.start_date or 0, ti.task_id))\n"
        "    print(json.dumps([run and run.run_id, run and str(run.state), {ti.task_id: str(ti.state) for ti in tis}]))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True).stdout
    run_id, state, tasks = json.loads(out.strip().splitlines()[-1])
    return run_id, state or "none", tasks


def keep(home: Path, cache_dir: str | None, aws: AwsStandIn, api: BearerTokenApi, env: dict[str, str]) -> None:
    """Keep the home and the stand-ins until Ctrl-C, and say how to use them."""
    names = ["AIRFLOW_HOME", "AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW__CORE__LOAD_EXAMPLES", "AWS_ACCESS_KEY_ID",
             "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AIRFLOW_CONN_PARTNER_API"]  # fmt: skip
    env_file = home / "demo.env"
    env_file.write_text("".join(f"export {name}={shlex.quote(env[name])}\n" for name in names))
    bin_dir = Path(sys.executable).parent
    say()
    say(f"kept AIRFLOW_HOME {home}")
    say(f"  airflow.cfg     {home / 'airflow.cfg'} ([secrets] backend, endpoint_url = the AWS stand-in)")
    say(f"  environment     {env_file} (AIRFLOW_HOME, the dags folder, partner_api, fake AWS credentials)")
    say(f"  AWS stand-in    {aws.endpoint_url} (moto; secret {SECRET_NAME!r}), HTTP API {api.url}")
    say("The stand-ins run until Ctrl-C. In another shell:")
    say(f"  source {bin_dir / 'activate'} && source {env_file}")
    say(f"  airflow dags test {DAG_ID}")
    say("  airflow-sm-refs check partner_api")
    say(f"  aws --endpoint-url {aws.endpoint_url} secretsmanager list-secrets")
    say("After Ctrl-C the endpoint in airflow.cfg answers no more: point backend_kwargs' endpoint_url at")
    say(f"your own moto (moto_server -p 5000), or remove it for real AWS. Remove the home with: rm -rf {home}")
    if cache_dir is not None:
        say(f"The worker cache {cache_dir} holds the token while this runs; it is removed at Ctrl-C.")
    # Ctrl-C works even where the shell started us ignoring SIGINT (a background job); SIGTERM too.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        pass
    say()
    say(f"stopping the stand-ins; {home} kept")


if __name__ == "__main__":
    raise SystemExit(main())
