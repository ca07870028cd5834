"""``airflow-sm-refs``, run as a real command with the configuration a worker would have."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from standins.aws import AwsStandIn
from tests.conftest import BACKEND

# Only the tests marked `compat` also run on every older Airflow line (`make test-compat`):
# those whose outcome can depend on the line. That is what Airflow's import prints, how it
# reads [secrets] / [workers] and their kwargs, how it builds a connection (JSON, string
# extra, URI) or a Variable, another configured backend and the metastore. Where cases differ
# only in this package's own logic (near-miss patterns, refused cache directories), one
# stands for them there. Parsing, the tables, cache clearing and usage errors, which only
# read what such a test already has Airflow hand over, run on the newest line alone.
compat = pytest.mark.compat


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
    rows = [line for line in _results(run) if line.strip().startswith(field + " ")]
    assert len(rows) == 1, run.text
    return rows[0]


def _results(run: Run) -> list[str]:
    """The lines of stdout after the status block."""
    lines = run.out.splitlines()
    assert "" in lines, run.text
    return lines[lines.index("") + 1 :]


def _status(run: Run) -> dict[str, str]:
    """The status block that opens stdout: name -> value."""
    lines = run.out.splitlines()
    return dict(re.split(r"\s{2,}", line, maxsplit=1) for line in lines[: lines.index("")])  # type: ignore[misc]


class TestCheck:
    @compat
    def test_good_connection(self, cli: Cli) -> None:
        cli.conn("warehouse", WAREHOUSE)

        run = cli("check", "warehouse")

        assert run.code == 0, run.text
        # nothing but the status block and the results on stdout; no warning
        assert _results(run)[0] == "connection 'warehouse': 4 references", run.out
        assert _results(run)[1].split() == ["FIELD", "SECRET", "KEY", "VERSION", "RESULT"]
        assert len(_results(run)) == 6
        assert "warning" not in run.err
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

    @compat
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

    @compat
    def test_missing_connection(self, cli: Cli) -> None:
        cli.conn("warehouse", WAREHOUSE)

        run = cli("check", "warehouse", "no_such_conn")

        assert run.code == 1
        missing = [line for line in _results(run) if "no_such_conn" in line]
        assert len(missing) == 1 and "not found" in missing[0], run.text
        assert run.out.count(" ok (") == 4  # the other connection is still checked

    def test_connection_without_references(self, cli: Cli) -> None:
        cli.conn("plain_http", "http://user:literal@example.org")

        run = cli("check", "plain_http")

        assert (run.code, _results(run)) == (0, ["connection 'plain_http': no references"])
        assert cli.aws.calls() == 0

    @compat
    @workers_backend
    def test_uses_the_workers_backend_kwargs_as_tasks_do(self, cli: Cli) -> None:
        # [secrets] points nowhere useful; [workers] is what task processes use
        cli.configure("SECRETS", endpoint_url="http://127.0.0.1:9")
        cli.configure("WORKERS")
        cli.conn("warehouse", WAREHOUSE)

        run = cli("check", "warehouse")

        assert run.code == 0, run.text

    @compat
    def test_reads_the_aws_settings_of_the_configured_backend(self, cli: Cli) -> None:
        cli.configure("SECRETS", endpoint_url="http://127.0.0.1:9", config_kwargs={"retries": {"max_attempts": 1}})
        cli.conn("warehouse", WAREHOUSE)

        run = cli("check", "warehouse")

        assert run.code == 1
        assert "127.0.0.1:9" in run.out
        assert cli.aws.calls() == 0

    @compat
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

    @compat
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

    @compat
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

    @compat
    @workers_backend  # on 2.x Airflow itself cannot import with bad [secrets] backend_kwargs
    def test_bad_backend_kwargs_are_one_line(self, cli: Cli) -> None:
        cli.configure("WORKERS", no_such_option=1)
        cli.conn("warehouse", WAREHOUSE)

        run = cli("check", "warehouse")

        # kept by the backend and named (it no longer stops Airflow from starting): nothing resolves
        assert run.code == 1
        assert run.err.strip().count("\n") == 0 and "no_such_option" in run.err


class TestCheckVariablesAndAll:
    @compat
    def test_variables_are_checked_as_tasks_read_them(self, cli: Cli) -> None:
        cli.env["AIRFLOW_VAR_PARTNER_TOKEN"] = "Bearer {{workato:sm:token:api/partner}}"
        cli.env["AIRFLOW_VAR_CONFIG"] = json.dumps({"db": {"password": "{{workato:sm:pasword:prod/db}}"}})

        run = cli("check", "--variable", "partner_token", "--variable", "config", "--variable", "no_such_var")

        assert run.code == 1, run.text
        results = _results(run)
        assert results[0] == "Variable 'partner_token': 1 reference"
        assert _row(run, "value").split()[:3] == ["value", "api/partner", "token"] and " ok (" in _row(run, "value")
        assert "ERROR" in _row(run, "value.db.password") and "'pasword'" in _row(run, "value.db.password")
        assert [line for line in results if "no_such_var" in line] == [
            line for line in results if line.startswith("Variable 'no_such_var': ERROR: not found")
        ]

    @compat
    def test_all_covers_environment_and_metastore(self, cli: Cli, metastore: Path) -> None:
        from airflow.models import Connection, Variable
        from airflow.utils.session import create_session

        def forget() -> None:
            with create_session() as session:
                session.query(Connection).filter(Connection.conn_id == "check_meta_conn").delete()
                session.query(Variable).filter(Variable.key == "check_meta_var").delete()

        forget()
        with create_session() as session:
            session.add(Connection(conn_id="check_meta_conn", conn_type="http", password="{{workato:sm:password:prod/db}}"))
            session.add(Variable(key="check_meta_var", val="{{workato:sm::plain}}"))
        cli.conn("warehouse", WAREHOUSE)
        cli.env["AIRFLOW_VAR_ENV_VAR"] = "{{workato:sm:token:api/partner}}"
        try:
            run = cli("check", "--all")
        finally:
            forget()

        assert run.code == 0, run.text
        headings = [line for line in _results(run) if not line.startswith(" ")]
        for heading in (
            "connection 'check_meta_conn': 1 reference",
            "connection 'warehouse': 4 references",
            "Variable 'check_meta_var': 1 reference",
            "Variable 'env_var': 1 reference",
        ):
            assert heading in headings, run.text
        assert run.out.count(" ok (") >= 7

    def test_nothing_named_is_a_usage_error(self, cli: Cli) -> None:
        run = cli("check", "--variable")  # argparse: --variable needs a KEY
        assert run.code == 2 and run.out == ""

        run = cli("check")
        assert run.code == 2 and run.out == "" and run.err.count("\n") == 1
        assert "CONN_ID" in run.err and "--variable" in run.err and "--all" in run.err


class TestStatus:
    """The block that opens ``check``: what a task on this worker would use."""

    def test_region_endpoint_identity_and_a_usable_cache(self, cli: Cli) -> None:
        cli.conn("warehouse", WAREHOUSE)

        run = cli("check", "warehouse")

        assert run.code == 0, run.text
        status = _status(run)
        assert status["region"] == "us-east-1"
        assert status["endpoint"] == cli.aws.endpoint_url
        assert re.fullmatch(r"[0-9a-f]{24}", status["identity"])
        assert status["worker cache"] == str(cli.cache_dir)
        assert status["cache mode"] == "0700" and f"uid {os.geteuid()}" in status["cache owner"]
        assert status["cache status"].startswith("usable")
        # other credentials, another identity (and other cache entries)
        cli.env["AWS_ACCESS_KEY_ID"] = "testing-other"
        assert _status(cli("check", "warehouse"))["identity"] != status["identity"]

    def test_shows_what_the_backend_is_configured_with(self, cli: Cli) -> None:
        cli.configure("SECRETS", region_name="eu-west-2", shared_cache=False)
        cli.conn("plain_http", "http://user:literal@example.org")

        run = cli("check", "plain_http")

        assert run.code == 0, run.text
        assert _status(run)["region"] == "eu-west-2"
        assert _status(run)["worker cache"].startswith("off (shared_cache is false)")
        assert "cache status" not in _status(run)

    @staticmethod
    def _refused(tmp_path: Path, kind: str) -> Path:
        target = tmp_path / kind
        if kind == "open":
            target.mkdir(mode=0o755)
            target.chmod(0o755)
        elif kind == "missing-parent":
            target = tmp_path / "no" / "such" / "cache"
        elif kind == "file":
            target.write_text("")
        elif kind == "symlink":
            private = tmp_path / "private"
            private.mkdir(mode=0o700)
            target.symlink_to(private)
        elif kind == "other-owner":
            if os.geteuid() != 0:
                pytest.skip("giving a directory to another user needs root")
            target.mkdir(mode=0o700)
            os.chown(target, 4242, 4242)
        return target

    @pytest.mark.parametrize(
        ("kind", "why"),
        [
            # on every line: the worker cache's own log line stays off stdout, whatever logging Airflow set up
            pytest.param("open", "has mode 0755, open to group or others", marks=compat),
            ("missing-parent", "cannot be created"),
            ("file", "is not a directory"),
            ("symlink", "is a symlink"),
            ("other-owner", "is owned by uid 4242"),
        ],
    )
    def test_a_refused_cache_directory_fails_the_check(self, cli: Cli, tmp_path: Path, kind: str, why: str) -> None:
        directory = self._refused(tmp_path, kind)
        cli.configure("SECRETS", shared_cache_dir=str(directory))
        cli.conn("warehouse", WAREHOUSE)

        run = cli("check", "warehouse")

        assert run.code == 1, run.text
        status = _status(run)
        assert status["worker cache"] == str(directory)
        assert status["cache status"].startswith("REFUSED: ") and why in status["cache status"], run.out
        if kind == "open":
            assert status["cache mode"] == "0755"
        if kind == "symlink":
            assert status["cache mode"].startswith("a symlink to ")
        # every reference still resolves (tasks fall back to their own cache), and the error says why it failed
        assert run.out.count(" ok (") == 4
        assert f"error: the per-worker cache directory {directory} is refused" in run.err
        assert "Not using" not in run.out  # the worker cache's own log line goes to stderr, not among the results
        assert not (kind == "missing-parent" and directory.parent.exists())


class TestNearMisses:
    """Text meant as a reference that is not read as one: a task would get it as a literal password."""

    @pytest.mark.parametrize(
        ("written", "why"),
        [
            pytest.param("{{workato:secretsmanager:password:prod/db}}", "the service is written 'sm'", marks=compat),
            ("{workato:sm:password:prod/db}", "single braces"),
            ("{{ workato.sm.password.prod/db }}", "separated by ':'"),
            ("workato:sm:password:prod/db}}", "no opening '{{'"),
            ("{workato:sm:password:prod/db", "no closing '}}'"),
        ],
    )
    def test_warns_naming_connection_field_and_fragment_only(self, cli: Cli, written: str, why: str) -> None:
        cli.conn("near", {"conn_type": "http", "login": "app", "extra": {"auth": f"LITERAL-PREFIX {written} LITERAL-TAIL"}})

        run = cli("check", "near")

        assert run.code == 0, run.text  # a warning: telling a near-miss from text is a guess
        assert _results(run) == ["connection 'near': no references; 1 near-miss, see the warning"]
        warnings = [line for line in run.err.splitlines() if line.startswith("warning: ")]
        assert len(warnings) == 1, run.err
        assert warnings[0].startswith("warning: connection 'near' field 'extra.auth': ")
        assert repr(written) in warnings[0] and why in warnings[0]
        assert "LITERAL" not in run.text  # the fragment, never the rest of the field
        assert cli.aws.calls() == 0

    def test_a_near_miss_beside_a_reference_and_in_a_variable(self, cli: Cli) -> None:
        cli.conn("mixed", {"conn_type": "http", "password": "{{workato:sm:password:prod/db}} {workato:sm:x:y}"})
        cli.env["AIRFLOW_VAR_NEAR"] = json.dumps({"token": "{{workato:secrets_manager:token:api/partner}}"})

        run = cli("check", "mixed", "--variable", "near")

        assert run.code == 0, run.text
        assert "connection 'mixed': 1 reference; 1 near-miss, see the warning" in _results(run)
        assert " ok (" in _row(run, "password")
        assert "Variable 'near': no references; 1 near-miss, see the warning" in _results(run)
        assert "warning: Variable 'near' field 'value.token': '{{workato:secrets_manager:" in run.err

    def test_a_reference_missing_its_closing_braces_is_an_error_not_a_warning(self, cli: Cli) -> None:
        cli.conn("open_ended", {"conn_type": "http", "password": "{{workato:sm:password:prod/db"})

        run = cli("check", "open_ended")

        assert run.code == 1
        assert "no closing '}}'" in _row(run, "password") and "warning" not in run.err


@compat
class TestUriForm:
    def test_an_unencoded_reference_gets_a_hint_with_its_encoded_form(self, cli: Cli) -> None:
        cli.conn("uri_db", "postgres://app:{{workato:sm:password:prod/db}}@db.internal/app")

        run = cli("check", "uri_db")

        assert run.code == 1
        results = _results(run)
        assert results[0].startswith("connection 'uri_db': ERROR: not found")
        hints = [line.strip() for line in results if line.strip().startswith("hint: ")]
        assert len(hints) == 1 and "AIRFLOW_CONN_URI_DB" in hints[0] and "URL-encoded" in hints[0]
        assert hints[0].endswith(": %7B%7Bworkato%3Asm%3Apassword%3Aprod%2Fdb%7D%7D")

    def test_the_encoded_form_resolves(self, cli: Cli) -> None:
        cli.conn("uri_db", "postgres://app:%7B%7Bworkato%3Asm%3Apassword%3Aprod%2Fdb%7D%7D@db.internal/app")

        run = cli("check", "uri_db")

        assert run.code == 0, run.text
        assert " ok (" in _row(run, "password") and "hint" not in run.text

    def test_a_reference_the_uri_parses_into_something_else_gets_the_hint(self, cli: Cli) -> None:
        # a query string reads '+' as a space: the reference parsed is not the one written
        cli.aws.client().create_secret(Name="team+a", SecretString=json.dumps({"token": TOKEN_VALUE}))
        cli.conn("uri_api", "http://api.example.org/?token={{workato:sm:token:team+a}}")

        run = cli("check", "uri_api")

        assert run.code == 1
        assert any(line.strip().endswith(": %7B%7Bworkato%3Asm%3Atoken%3Ateam%2Ba%7D%7D") for line in _results(run))


class TestOneLineErrors:
    def test_an_aws_message_with_newlines_stays_in_its_row(self, cli: Cli) -> None:
        from standins.aws import InjectedFault

        cli.conn("warehouse", WAREHOUSE)
        cli.aws.fail_next(InjectedFault(400, "AccessDeniedException", "User: worker is not authorized\n  to perform:\r\nGetSecretValue"))

        run = cli("check", "warehouse")

        assert run.code == 1
        denied = [line for line in _results(run) if "AccessDeniedException" in line]
        assert denied and all("is not authorized to perform: GetSecretValue" in line for line in denied), run.out
        # every line of the table is a heading or a row
        assert all(line.startswith(("connection ", "  ")) for line in _results(run)), run.out


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


    @pytest.mark.parametrize(
        ("token", "named"),
        [
            ("{{workato:sm:password:prod/db", "'workato:sm:password:prod/db'"),
            ("{{workato:sm:k:x}", "'workato:sm:k:x}'"),
            ("{{workato:sm:k:" + "x" * 2100 + "}}", "'workato:sm:k:xxx"),
            ("{{workato:sm:password}}", "'workato:sm:password'"),
        ],
    )
    def test_a_malformed_reference_is_named_without_its_braces(
        self, capsys: pytest.CaptureFixture[str], token: str, named: str
    ) -> None:
        # as every message names references (a stored password that is exactly one is masked with its braces)
        run = _in_process(capsys, "parse", token)

        assert run.code == 1
        assert f"reference {named}" in run.err and "'{{" not in run.err, run.err


class TestUsage:
    @compat  # on every line: importing Airflow adds nothing to the one line on stderr
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
    @compat
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
        empty.mkdir(mode=0o700)

        run = cli("cache", "clear", "--dir", str(empty))

        assert (run.code, run.out.strip()) == (0, f"cleared 0 entries from the per-worker cache in {empty}")

    def test_a_dir_that_does_not_exist_is_an_error(self, cli: Cli, tmp_path: Path) -> None:
        run = cli("cache", "clear", "--dir", str(tmp_path / "no" / "such" / "dir"))

        assert run.code == 2 and run.out == ""
        assert run.err.count("\n") == 1 and "no such directory" in run.err and "cleared 0" not in run.text

    @compat
    def test_a_configured_dir_no_task_has_made_yet_is_nothing_to_clear(self, cli: Cli) -> None:
        run = cli("cache", "clear")

        assert (run.code, run.out.strip()) == (0, f"no per-worker cache in {cli.cache_dir} yet: nothing to clear")

    def test_refused_directory_is_one_line(self, cli: Cli, tmp_path: Path) -> None:
        open_dir = tmp_path / "open"
        open_dir.mkdir(mode=0o777)
        open_dir.chmod(0o777)

        run = cli("cache", "clear", "--dir", str(open_dir))

        assert run.code == 2
        assert run.err.count("\n") == 1 and "0777" in run.err
