"""``airflow-sm-refs``, run as a real command with the configuration a worker would have."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from standins.aws import AwsStandIn
from tests.conftest import BACKEND

pytestmark = pytest.mark.compat


def _has_workers_backend() -> bool:
    from airflow_sm_refs._compat import has_workers_secrets_backend

    return has_workers_secrets_backend()


workers_backend = pytest.mark.skipif(not _has_workers_backend(), reason="[workers] secrets_backend is Airflow 3 only")

PASSWORD = "cli-pw-9c1e-secret"
USERNAME = "cli-user-77a3"
TOKEN_VALUE = "cli-token-beef42"
PLAINTEXT = "cli-plaintext-0d15ea5e"
VALUES = (PASSWORD, USERNAME, TOKEN_VALUE, PLAINTEXT)


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


class Cli:
    """Runs ``airflow-sm-refs`` in a fresh process, as an operator on a worker would."""

    def __init__(self, airflow_home: Path, aws: AwsStandIn, tmp_path: Path) -> None:
        self.aws = aws
        self.cache_dir = tmp_path / "worker-cache"
        inherited = ("AIRFLOW_CONN_", "AIRFLOW__SECRETS__", "AIRFLOW__WORKERS__")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(inherited)}
        self.env.update(
            AIRFLOW_HOME=str(airflow_home),
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            # Without one, older lines warn "empty cryptography key" on every start.
            AIRFLOW__CORE__FERNET_KEY="pVgqJ9pNwYTHx4vuxvyQmx6tZiZR_8ZxMLcwHF0aZxQ=",
        )
        self.configure()

    def configure(self, section: str = "SECRETS", backend: str | None = BACKEND, **kwargs: Any) -> None:
        """Set the backend and its kwargs as environment configuration (as airflow.cfg would)."""
        key, kwargs_key = (
            ("BACKEND", "BACKEND_KWARGS") if section == "SECRETS" else ("SECRETS_BACKEND", "SECRETS_BACKEND_KWARGS")
        )
        if backend is None:
            self.env.pop(f"AIRFLOW__{section}__{key}", None)
            self.env.pop(f"AIRFLOW__{section}__{kwargs_key}", None)
            return
        settings = {
            "region_name": "us-east-1",
            "endpoint_url": self.aws.endpoint_url,
            "shared_cache_dir": str(self.cache_dir),
        }
        settings.update(kwargs)
        self.env[f"AIRFLOW__{section}__{key}"] = backend
        self.env[f"AIRFLOW__{section}__{kwargs_key}"] = json.dumps(settings)

    def conn(self, conn_id: str, value: dict[str, Any] | str) -> None:
        self.env[f"AIRFLOW_CONN_{conn_id.upper()}"] = value if isinstance(value, str) else json.dumps(value)

    def __call__(self, *args: str) -> Run:
        done = subprocess.run(
            [sys.executable, "-m", "airflow_sm_refs.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=str(Path(__file__).resolve().parent.parent),
        )
        run = Run(done.returncode, done.stdout, done.stderr)
        for value in VALUES:
            assert value not in run.text, f"a secret value was printed:\n{run.text}"
        assert "Traceback" not in run.text, run.text
        return run


@pytest.fixture
def cli(aws: AwsStandIn, airflow_home: Path, tmp_path: Path) -> Cli:
    client = aws.client()
    client.create_secret(Name="prod/db", SecretString=json.dumps({"username": USERNAME, "password": PASSWORD}))
    client.create_secret(Name="api/partner", SecretString=json.dumps({"token": TOKEN_VALUE}))
    client.create_secret(Name="plain", SecretString=PLAINTEXT)
    return Cli(airflow_home, aws, tmp_path)


WAREHOUSE = {
    "conn_type": "postgres",
    "host": "db.internal",
    "login": "{{workato:sm:username:prod/db}}",
    "password": "{{workato:sm:password:prod/db:AWSCURRENT}}",
    "extra": {"options": {"headers": ["Bearer {{workato:sm:token:api/partner}}"]}, "app": "{{workato:sm::plain}}"},
}


def _row(run: Run, field: str) -> str:
    rows = [line for line in run.out.splitlines() if line.strip().startswith(field + " ")]
    assert len(rows) == 1, run.text
    return rows[0]


class TestCheck:
    def test_good_connection(self, cli: Cli) -> None:
        cli.conn("warehouse", WAREHOUSE)

        run = cli("check", "warehouse")

        assert run.code == 0, run.text
        # nothing but the results on stdout
        assert run.out.splitlines()[0] == "connection 'warehouse': 4 references", run.out
        assert run.out.splitlines()[1].split() == ["FIELD", "SECRET", "KEY", "VERSION", "RESULT"]
        assert len(run.out.splitlines()) == 6
        assert _row(run, "login").split()[:4] == ["login", "prod/db", "username", "AWSCURRENT"]
        assert _row(run, "password").split()[:4] == ["password", "prod/db", "password", "AWSCURRENT"]
        assert _row(run, "extra.options.headers[0]").split()[:3] == ["extra.options.headers[0]", "api/partner", "token"]
        assert "(whole secret)" in _row(run, "extra.app")
        assert run.out.count(" ok (") == 4
        # one fetch per secret, however many keys are read from it
        assert cli.aws.calls() == 3

    def test_broken_reference_fails_and_is_named(self, cli: Cli) -> None:
        cli.conn(
            "broken",
            {
                "conn_type": "http",
                "login": "{{workato:sm:username:prod/db}}",
                "password": "{{workato:sm:pasword:prod/db}}",
                "extra": {"token": "{{workato:sm::gone/away}}"},
            },
        )

        run = cli("check", "broken")

        assert run.code == 1, run.text
        assert " ok (" in _row(run, "login")
        assert "ERROR" in _row(run, "password") and "'pasword'" in _row(run, "password")
        assert "ERROR" in _row(run, "extra.token") and "ResourceNotFoundException" in _row(run, "extra.token")

    def test_reference_hidden_by_json_escapes_in_extra_is_listed(self, cli: Cli) -> None:
        # JSON text as an operator may paste it: the braces written as escapes
        extra = r'{\"token\": \"\\u007b\\u007bworkato:sm:token:api/partner}}\"}'
        cli.conn("escaped", '{"conn_type": "http", "extra": "' + extra + '"}')

        run = cli("check", "escaped")

        assert run.code == 0, run.text
        assert _row(run, "extra.token").split()[:3] == ["extra.token", "api/partner", "token"]

    def test_malformed_reference(self, cli: Cli) -> None:
        cli.conn("typo", {"conn_type": "http", "password": "{{workato:sm:password}}"})

        run = cli("check", "typo")

        assert run.code == 1
        assert "ERROR: " in _row(run, "password") and "malformed reference" in run.out

    def test_missing_connection(self, cli: Cli) -> None:
        cli.conn("warehouse", WAREHOUSE)

        run = cli("check", "warehouse", "no_such_conn")

        assert run.code == 1
        missing = [line for line in run.out.splitlines() if "no_such_conn" in line]
        assert len(missing) == 1 and "not found" in missing[0], run.text
        assert run.out.count(" ok (") == 4  # the other connection is still checked

    def test_connection_without_references(self, cli: Cli) -> None:
        cli.conn("plain_http", "http://user:literal@example.org")

        run = cli("check", "plain_http")

        assert (run.code, run.out.strip()) == (0, "connection 'plain_http': no references")
        assert cli.aws.calls() == 0

    @workers_backend
    def test_uses_the_workers_backend_kwargs_as_tasks_do(self, cli: Cli) -> None:
        # [secrets] points nowhere useful; [workers] is what task processes use
        cli.configure("SECRETS", endpoint_url="http://127.0.0.1:9")
        cli.configure("WORKERS")
        cli.conn("warehouse", WAREHOUSE)

        run = cli("check", "warehouse")

        assert run.code == 0, run.text

    def test_reads_the_aws_settings_of_the_configured_backend(self, cli: Cli) -> None:
        cli.configure("SECRETS", endpoint_url="http://127.0.0.1:9", config_kwargs={"retries": {"max_attempts": 1}})
        cli.conn("warehouse", WAREHOUSE)

        run = cli("check", "warehouse")

        assert run.code == 1
        assert "127.0.0.1:9" in run.out
        assert cli.aws.calls() == 0

    def test_without_this_backend_configured_says_so(self, cli: Cli) -> None:
        cli.configure("SECRETS", backend=None)
        cli.env["AWS_ENDPOINT_URL_SECRETSMANAGER"] = cli.aws.endpoint_url
        cli.env["AWS_ENDPOINT_URL_SECRETS_MANAGER"] = cli.aws.endpoint_url
        cli.conn("warehouse", WAREHOUSE)

        run = cli("check", "warehouse")

        assert run.code == 0, run.text
        assert "note: no secrets backend is configured" in run.err
        assert cli.aws.calls() == 3

    def test_applies_the_backends_allowlists(self, cli: Cli) -> None:
        cli.configure("SECRETS", allowed_secrets=["prod/*"])
        cli.conn("warehouse", WAREHOUSE)

        run = cli("check", "warehouse")

        assert run.code == 1
        assert " ok (" in _row(run, "password")
        assert "ERROR: not allowed" in _row(run, "extra.options.headers[0]")
        assert cli.aws.calls() == 1

    def test_another_backend_configured_is_a_source_and_is_named(self, cli: Cli, tmp_path: Path) -> None:
        connections = tmp_path / "connections.json"
        connections.write_text(json.dumps({"from_file": WAREHOUSE}))
        cli.configure("SECRETS", backend=None)
        cli.env["AIRFLOW__SECRETS__BACKEND"] = "airflow.secrets.local_filesystem.LocalFilesystemBackend"
        cli.env["AIRFLOW__SECRETS__BACKEND_KWARGS"] = json.dumps({"connections_file_path": str(connections)})
        cli.env["AWS_ENDPOINT_URL_SECRETS_MANAGER"] = cli.aws.endpoint_url

        run = cli("check", "from_file")

        assert run.code == 0, run.text
        assert "LocalFilesystemBackend, not this package's" in run.err
        assert run.out.count(" ok (") == 4

    @workers_backend
    def test_finds_connections_of_the_secrets_backend_the_api_server_uses(self, cli: Cli, tmp_path: Path) -> None:
        # Tasks run with [workers] = this backend; the API server hands them
        # connections from its [secrets] backend.
        connections = tmp_path / "connections.json"
        connections.write_text(json.dumps({"from_file": WAREHOUSE}))
        cli.configure("SECRETS", backend=None)
        cli.configure("WORKERS")
        cli.env["AIRFLOW__SECRETS__BACKEND"] = "airflow.secrets.local_filesystem.LocalFilesystemBackend"
        cli.env["AIRFLOW__SECRETS__BACKEND_KWARGS"] = json.dumps({"connections_file_path": str(connections)})

        run = cli("check", "from_file")

        assert (run.code, run.err) == (0, ""), run.text
        assert run.out.count(" ok (") == 4

    @workers_backend  # on 2.x Airflow itself cannot import with bad [secrets] backend_kwargs
    def test_bad_backend_kwargs_are_one_line(self, cli: Cli) -> None:
        cli.configure("WORKERS", no_such_option=1)
        cli.conn("warehouse", WAREHOUSE)

        run = cli("check", "warehouse")

        assert run.code == 2
        assert run.err.strip().count("\n") == 0 and "no_such_option" in run.err


def _in_process(capsys: pytest.CaptureFixture[str], *args: str) -> Run:
    """Run ``main`` in this process: for the commands that only read their arguments."""
    from airflow_sm_refs.cli import main

    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


class TestParse:
    def test_token(self, aws: AwsStandIn, airflow_home: Path, tmp_path: Path) -> None:
        run = Cli(airflow_home, aws, tmp_path)(
            "parse",
            "{{ workato:sm:password:arn:aws:secretsmanager:eu-west-2:123456789012:secret:prod/db:AWSPREVIOUS }}",
        )

        assert run.code == 0, run.text
        shown = dict(line.split(None, 1) for line in run.out.replace("secret id", "secret_id").splitlines())
        assert shown["key"] == "'password'"
        assert shown["secret_id"] == "arn:aws:secretsmanager:eu-west-2:123456789012:secret:prod/db"
        assert (shown["region"], shown["account"], shown["version"]) == ("eu-west-2", "123456789012", "AWSPREVIOUS")

    def test_value_with_tokens(self, capsys: pytest.CaptureFixture[str]) -> None:
        run = _in_process(capsys, "parse", "Bearer {{workato:sm::api/token::0123abcd-aaaa}} and {{workato:sm:k:x}}")

        assert run.code == 0, run.text
        assert run.out.count("reference  ") == 2
        assert "version id 0123abcd-aaaa" in run.out and "(empty: the whole SecretString" in run.out

    @pytest.mark.parametrize(
        "token",
        ["{{workato:sm:password}}", "{{workato:sm:k:prod/db:AWSCURRENT:0123}}", "{{Workato:SM:k:x}}", "no reference"],
    )
    def test_bad_token_is_one_line(self, capsys: pytest.CaptureFixture[str], token: str) -> None:
        run = _in_process(capsys, "parse", token)

        assert run.code == 1
        assert run.out == "" and run.err.count("\n") == 1 and run.err.startswith("error: ")


class TestUsage:
    def test_bad_arguments_are_one_line(self, aws: AwsStandIn, airflow_home: Path, tmp_path: Path) -> None:
        run = Cli(airflow_home, aws, tmp_path)("check")

        assert run.code == 2
        assert run.out == "" and run.err.count("\n") == 1 and "CONN_ID" in run.err

    @pytest.mark.parametrize("args", [(), ("frobnicate",), ("cache",), ("cache", "clear", "--bogus")])
    def test_other_bad_arguments(self, capsys: pytest.CaptureFixture[str], args: tuple[str, ...]) -> None:
        run = _in_process(capsys, *args)

        assert run.code == 2
        assert run.out == "" and run.err.count("\n") == 1 and "error:" in run.err

    def test_console_script_is_installed(self) -> None:
        script = Path(sys.executable).parent / "airflow-sm-refs"
        done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "check" in done.stdout and "parse" in done.stdout


class TestWithoutAirflow:
    """``--help`` and ``parse`` need the grammar only: they import no Airflow, so a broken configuration cannot stop them."""

    def _run(self, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
        script = Path(sys.executable).parent / "airflow-sm-refs"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        # An Airflow that cannot start: importing it would fail loudly.
        env.update(AIRFLOW_HOME=str(tmp_path), AIRFLOW__SECRETS__BACKEND="no.such.module.Backend")
        return subprocess.run(
            [sys.executable, "-X", "importtime", str(script), *args], capture_output=True, text=True, env=env, timeout=120
        )

    @pytest.mark.parametrize("args", [("--help",), ("check", "--help"), ("parse", "{{workato:sm:password:prod/db}}")])
    def test_no_airflow_import(self, tmp_path: Path, args: tuple[str, ...]) -> None:
        done = self._run(tmp_path, *args)
        assert done.returncode == 0, done.stderr[-2000:]
        imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
        assert "airflow_sm_refs.reference" in imported or args[-1] == "--help"
        assert not {name for name in imported if name == "airflow" or name.startswith(("airflow.", "boto"))}

    def test_a_malformed_token_is_still_one_line(self, tmp_path: Path) -> None:
        done = self._run(tmp_path, "parse", "{{workato:sm:password:prod/db:X:y}}")
        errors = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
        assert done.returncode == 1 and len(errors) == 1 and "version stage or a version id" in errors[0]


class TestBadOption:
    def test_check_reports_a_mistyped_option_and_exits_1(self, cli: Cli) -> None:
        cli.configure(cache_ttl=60)
        cli.conn("warehouse", WAREHOUSE)
        run = cli("check", "warehouse")
        assert run.code == 1
        assert "unknown option 'cache_ttl' (did you mean 'cache_ttl_seconds'?)" in run.err
        assert run.out == ""


class TestCacheClear:
    def test_clears_the_configured_directory(self, cli: Cli) -> None:
        cli.conn("warehouse", WAREHOUSE)
        assert cli("check", "warehouse").code == 0  # fills the per-worker cache: 3 secrets

        run = cli("cache", "clear")

        assert run.code == 0, run.text
        # 3 secrets, each under its 3 spellings (name, partial and full ARN)
        assert f"cleared 9 entries from the per-worker cache in {cli.cache_dir}" in run.out
        # the next check fetches again
        cli.aws.reset_counts()
        assert cli("check", "warehouse").code == 0
        assert cli.aws.calls() == 3

    def test_dir_option(self, cli: Cli, tmp_path: Path) -> None:
        empty = tmp_path / "empty"

        run = cli("cache", "clear", "--dir", str(empty))

        assert (run.code, run.out.strip()) == (0, f"cleared 0 entries from the per-worker cache in {empty}")

    def test_refused_directory_is_one_line(self, cli: Cli, tmp_path: Path) -> None:
        open_dir = tmp_path / "open"
        open_dir.mkdir(mode=0o777)
        open_dir.chmod(0o777)

        run = cli("cache", "clear", "--dir", str(open_dir))

        assert run.code == 2
        assert run.err.count("\n") == 1 and "0777" in run.err
