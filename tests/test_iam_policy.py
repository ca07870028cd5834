"""``airflow-sm-refs iam-policy``: the printed policy is enough, and no more, under enforced IAM.

Stock moto (5.0 to 5.2) authenticates requests and checks the *action* once
IAM enforcement is on, but it evaluates every Secrets Manager request against
the resource ``*``: a statement naming secret ARNs never matches, even the
exact ARN, and a ``?`` wildcard breaks its pattern matcher (a 500). So the
enforcing server here is moto with three gaps filled, as AWS documents them:
a Secrets Manager request is evaluated against the secret's ARN, ``?`` matches
exactly one character, a denial is Secrets Manager's ``AccessDeniedException``,
and ``BatchGetSecretValue`` checks ``GetSecretValue`` on each secret, putting
the denied ones in ``Errors``. Signatures, access keys, users and the
allow/deny evaluation of their policies are moto's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BACKEND, get_connection, lookup_fails, reset_plugin_state

# Only the tests marked `compat` also run on every older Airflow line (`make test-compat`):
# those that resolve through Airflow's secrets chain under enforced IAM, or read the
# metastore and what Airflow makes of a broken stored connection. How references become
# a policy (which the first ones also show on every line) runs on the newest line alone.
compat = pytest.mark.compat

ACCOUNT = "123456789012"  # moto's account
REGION = "us-east-1"
REPO = Path(__file__).resolve().parent.parent

# Runs in its own process: moto reads its IAM setting at import and keeps its
# backends per process, and the session's stand-in must stay unenforced.
_ENFORCING_MOTO = r'''
import json, re, sys
from werkzeug.exceptions import HTTPException
from moto.core.exceptions import JsonRESTError
from moto.core.responses import ActionAuthenticatorMixin  # moto.core.authorization from 5.1 on, re-exported
from moto import settings
from moto.iam import access_control
from moto.secretsmanager.responses import SecretsManagerResponse
from moto.server import ThreadedMotoServer


def _match(pattern, string):
    # IAM's wildcards: * any run of characters, ? exactly one
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, string, re.DOTALL)


access_control.IAMPolicyStatement._match = staticmethod(_match)


def _arn_of(self, secret_id):
    try:
        return self.backend.describe_secret(secret_id).arn
    except Exception:
        if secret_id.startswith("arn:"):
            return secret_id
        return f"arn:aws:secretsmanager:{self.region}:{self.current_account}:secret:{secret_id}"


def _determine_resource(self):
    if self._get_action() != "GetSecretValue":
        return "*"
    return _arn_of(self, json.loads(self.body or "{}").get("SecretId", ""))


def _denied(exc, action, resource):
    text = exc.description or ""
    code = re.search(r"<Code>(.*?)</Code>", text)
    message = re.search(r"<Message>(.*?)</Message>", text, re.DOTALL)
    code = code.group(1) if code else "AccessDeniedException"
    if code == "AccessDenied":
        code = "AccessDeniedException"
    message = message.group(1) if message else "not authorized"
    return JsonRESTError(code, f"{message} (secretsmanager:{action} on resource: {resource})")


_authorize = SecretsManagerResponse._authenticate_and_authorize_normal_action


def _authenticate(self, resource="*"):
    try:
        _authorize(self, resource)
    except HTTPException as exc:
        if exc.code != 403 or isinstance(exc, JsonRESTError):
            raise
        raise _denied(exc, self._get_action(), resource) from None


_batch = SecretsManagerResponse.batch_get_secret_value


def _batch_get(self):
    ids = self._get_param("SecretIdList", if_none=[])
    if ActionAuthenticatorMixin.request_count < settings.INITIAL_NO_AUTH_ACTION_COUNT or not ids:
        return _batch(self)
    allowed, errors = [], []
    for secret_id in ids:
        request = access_control.IAMRequest(
            account_id=self.current_account, method=self.method, path=self.raw_path, data=self.data,
            body=self.raw_body, headers=self.headers, action="GetSecretValue",
        )
        try:
            request.check_action_permitted(_arn_of(self, secret_id))
            allowed.append(secret_id)
        except HTTPException:
            errors.append({"SecretId": secret_id, "ErrorCode": "AccessDeniedException",
                           "Message": f"not authorized to perform secretsmanager:GetSecretValue on {secret_id}"})
    values, more, token = ([], [], None)
    if allowed:
        values, more, token = self.backend.batch_get_secret_value(
            secret_id_list=allowed, filters=[], max_results=None, next_token=None
        )
    return json.dumps({"SecretValues": values, "Errors": errors + more, "NextToken": token})


SecretsManagerResponse._determine_resource = _determine_resource
SecretsManagerResponse._authenticate_and_authorize_normal_action = _authenticate
SecretsManagerResponse.batch_get_secret_value = _batch_get

server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
'''


@dataclass(frozen=True)
class Keys:
    access_key_id: str
    secret_access_key: str


class EnforcingAws:
    """The enforcing moto server, and an administrator to set it up with."""

    def __init__(self, port: int) -> None:
        self.endpoint_url = f"http://127.0.0.1:{port}"
        self.admin: Keys | None = None
        self._users = 0

    def client(self, service: str, keys: Keys | None = None) -> Any:
        import boto3

        keys = keys or self.admin
        assert keys is not None
        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=keys.access_key_id,
            aws_secret_access_key=keys.secret_access_key,
        )

    def user_with_policy(self, policy: dict[str, Any]) -> Keys:
        """A new IAM user whose only permissions are ``policy``, and its access keys."""
        iam = self.client("iam")
        self._users += 1
        name = f"reader-{self._users}"
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="airflow-sm-refs", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return Keys(key["AccessKeyId"], key["SecretAccessKey"])


@pytest.fixture(scope="module")
def enforcing_aws() -> Iterator[EnforcingAws]:
    server = subprocess.Popen(
        [sys.executable, "-c", _ENFORCING_MOTO],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        aws = EnforcingAws(int(server.stdout.readline()))
        # The administrator is made before enforcement starts; everything after is signed and checked.
        iam = aws.client("iam", Keys("testing", "testing"))
        iam.create_user(UserName="admin")
        admin_policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="admin", PolicyName="admin", PolicyDocument=json.dumps(admin_policy))
        key = iam.create_access_key(UserName="admin")["AccessKey"]
        aws.admin = Keys(key["AccessKeyId"], key["SecretAccessKey"])
        urllib.request.urlopen(  # noqa: S310 - loopback only
            urllib.request.Request(
                f"{aws.endpoint_url}/moto-api/reset-auth",
                data=b"0",
                method="POST",
                headers={"Content-Type": "text/plain"},
            )
        ).read()
        yield aws
    finally:
        if server.stdin is not None:
            server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


PASSWORD = "iam-pw-7d0c-value"
USERNAME = "iam-user-51fa"
TOKEN_VALUE = "iam-token-c0ffee"
PLAINTEXT = "iam-plaintext-a11ce"
TEAM_TOKEN = "iam-team-token-b0b"
BACKUP = "iam-backup-value-dead"
VALUES = (PASSWORD, USERNAME, TOKEN_VALUE, PLAINTEXT, TEAM_TOKEN, BACKUP)


@dataclass
class Setup:
    """Secrets in the enforcing server, and connections and a Variable that reference them."""

    env: dict[str, str]
    plain_arn: str


@pytest.fixture(scope="module")
def secrets(enforcing_aws: EnforcingAws) -> Setup:
    sm = enforcing_aws.client("secretsmanager")
    sm.create_secret(Name="prod/db", SecretString=json.dumps({"username": USERNAME, "password": PASSWORD}))
    sm.create_secret(Name="api/partner", SecretString=json.dumps({"token": TOKEN_VALUE}))
    plain_arn = sm.create_secret(Name="plain", SecretString=PLAINTEXT)["ARN"]
    sm.create_secret(Name="team/token", SecretString=TEAM_TOKEN)
    # never referenced: a name that `prod/db*` would match and `prod/db-??????` does not
    sm.create_secret(Name="prod/db-backup", SecretString=json.dumps({"password": BACKUP}))
    partial = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:api/partner"
    env = {
        # by plain name
        "AIRFLOW_CONN_WAREHOUSE": json.dumps(
            {
                "conn_type": "postgres",
                "host": "db.internal",
                "login": "{{workato:sm:username:prod/db}}",
                "password": "{{workato:sm:password:prod/db}}",
            }
        ),
        # by partial ARN and by full ARN
        "AIRFLOW_CONN_PARTNER_API": json.dumps(
            {
                "conn_type": "http",
                "host": "api.example.org",
                "extra": {"token": f"Bearer {{{{workato:sm:token:{partial}}}}}", "app": f"{{{{workato:sm::{plain_arn}}}}}"},
            }
        ),
        "AIRFLOW_VAR_TEAM_TOKEN": "{{workato:sm::team/token}}",
        # two secrets in one lookup: fetched together (BatchGetSecretValue) where the plugin batches
        "AIRFLOW_CONN_BOTH": json.dumps(
            {
                "conn_type": "http",
                "login": "{{workato:sm:username:prod/db}}",
                "password": "{{workato:sm:token:api/partner}}",
            }
        ),
    }
    return Setup(env, plain_arn)


def _cli_env(extra: dict[str, str], endpoint_url: str) -> dict[str, str]:
    inherited = ("AIRFLOW_CONN_", "AIRFLOW_VAR_", "AIRFLOW__SECRETS__", "AIRFLOW__WORKERS__")
    env = {k: v for k, v in os.environ.items() if not k.startswith(inherited)}
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=REGION,
        AIRFLOW__CORE__FERNET_KEY="pVgqJ9pNwYTHx4vuxvyQmx6tZiZR_8ZxMLcwHF0aZxQ=",
        AIRFLOW__SECRETS__BACKEND=BACKEND,
        AIRFLOW__SECRETS__BACKEND_KWARGS=json.dumps({"region_name": REGION, "endpoint_url": endpoint_url}),
    )
    env.update(extra)
    return env


def iam_policy(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``airflow-sm-refs iam-policy`` in a fresh process, as an operator would."""
    done = subprocess.run(
        [sys.executable, "-m", "airflow_sm_refs.cli", "iam-policy", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(REPO),
    )
    for value in VALUES:
        assert value not in done.stdout + done.stderr, "a secret value was printed"
    assert "Traceback" not in done.stderr, done.stderr
    return done


@pytest.fixture(scope="module")
def printed(secrets: Setup, enforcing_aws: EnforcingAws) -> dict[str, Any]:
    """The policy ``iam-policy`` prints for both connections and the Variable."""
    env = _cli_env(secrets.env, enforcing_aws.endpoint_url)
    done = iam_policy(env, "warehouse", "partner_api", "--variable", "team_token", "--account-id", ACCOUNT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def as_principal(
    secrets: Setup, enforcing_aws: EnforcingAws, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """Switch this process to a principal's keys, with the backend configured against the enforcing server."""
    from tests.conftest import configure_backend

    for name, value in secrets.env.items():
        monkeypatch.setenv(name, value)
    configure_backend(monkeypatch, region_name=REGION, endpoint_url=enforcing_aws.endpoint_url)

    def use(keys: Keys) -> None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys.access_key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys.secret_access_key)
        reset_plugin_state()  # clients and cached values of another principal

    yield use
    reset_plugin_state()


def _variable(key: str) -> Any:
    """The Variable as the configured backend (the real plugin) resolves it."""
    from airflow_sm_refs._compat import configured_secrets_backend

    return configured_secrets_backend(worker_mode=False).get_variable(key)


def _without(policy: dict[str, Any], needle: str) -> dict[str, Any]:
    document = json.loads(json.dumps(policy))
    statement = document["Statement"][0]
    statement["Resource"] = [r for r in statement["Resource"] if needle not in r]
    return document


@compat
class TestUnderEnforcedIam:
    def test_printed_policy_is_valid_json_with_the_two_statements(self, printed: dict[str, Any], secrets: Setup) -> None:
        get, batch = printed["Statement"]
        assert (get["Action"], batch["Action"], batch["Resource"]) == (
            "secretsmanager:GetSecretValue",
            "secretsmanager:BatchGetSecretValue",
            "*",
        )
        prefix = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:"
        assert sorted(get["Resource"]) == sorted(
            [
                prefix + "prod/db-??????",
                prefix + "api/partner-??????",
                secrets.plain_arn,
                secrets.plain_arn + "-??????",
                prefix + "team/token-??????",
            ]
        )

    def test_exactly_the_printed_policy_resolves_everything(
        self, printed: dict[str, Any], enforcing_aws: EnforcingAws, as_principal: Any
    ) -> None:
        keys = enforcing_aws.user_with_policy(printed)
        as_principal(keys)

        warehouse = get_connection("warehouse")
        partner = get_connection("partner_api")

        assert (warehouse.login, warehouse.password) == (USERNAME, PASSWORD)
        assert partner.extra_dejson == {"token": f"Bearer {TOKEN_VALUE}", "app": PLAINTEXT}
        assert _variable("team_token") == TEAM_TOKEN
        # and nothing else: the `-??????` wildcard does not reach a longer name
        sm = enforcing_aws.client("secretsmanager", keys)
        with pytest.raises(Exception, match="AccessDeniedException"):
            sm.get_secret_value(SecretId="prod/db-backup")
        # the batch statement grants only what GetSecretValue does, secret by secret
        batch = sm.batch_get_secret_value(SecretIdList=["api/partner", "prod/db-backup"])
        assert [v["Name"] for v in batch["SecretValues"]] == ["api/partner"]
        assert [(e["SecretId"], e["ErrorCode"]) for e in batch["Errors"]] == [("prod/db-backup", "AccessDeniedException")]

    def test_a_policy_missing_one_secret_is_denied_for_that_secret(
        self, printed: dict[str, Any], enforcing_aws: EnforcingAws, as_principal: Any
    ) -> None:
        from airflow_sm_refs import SecretAccessDeniedError

        as_principal(enforcing_aws.user_with_policy(_without(printed, "prod/db")))

        with lookup_fails(SecretAccessDeniedError) as raised:
            get_connection("warehouse")
        message = str(raised.value)
        assert "connection 'warehouse'" in message and "secret 'prod/db'" in message
        assert "AccessDeniedException" in message
        # also when it is one of several secrets of one lookup
        with lookup_fails(SecretAccessDeniedError) as raised:
            get_connection("both")
        assert "connection 'both'" in str(raised.value) and "secret 'prod/db'" in str(raised.value)
        # the other secrets still resolve
        assert get_connection("partner_api").extra_dejson["token"] == f"Bearer {TOKEN_VALUE}"

    def test_without_the_batch_statement_lookups_fall_back_to_one_call_per_secret(
        self, printed: dict[str, Any], enforcing_aws: EnforcingAws, as_principal: Any
    ) -> None:
        policy = json.loads(json.dumps(printed))
        policy["Statement"] = [s for s in policy["Statement"] if s["Action"] != "secretsmanager:BatchGetSecretValue"]
        as_principal(enforcing_aws.user_with_policy(policy))

        both = get_connection("both")

        assert (both.login, both.password) == (USERNAME, TOKEN_VALUE)
        assert get_connection("partner_api").extra_dejson["app"] == PLAINTEXT

    def test_without_the_account_id_the_policy_matches_any_account(
        self, secrets: Setup, enforcing_aws: EnforcingAws, as_principal: Any
    ) -> None:
        done = iam_policy(_cli_env(secrets.env, enforcing_aws.endpoint_url), "warehouse")
        assert done.returncode == 0, done.stderr
        policy = json.loads(done.stdout)
        assert policy["Statement"][0]["Resource"] == [f"arn:aws:secretsmanager:{REGION}:*:secret:prod/db-??????"]
        assert "--account-id" in done.stderr and "kms:Decrypt" in done.stderr

        as_principal(enforcing_aws.user_with_policy(policy))

        assert get_connection("warehouse").password == PASSWORD


class TestCommand:
    """What the command reads and prints, against the counting stand-in: it never calls AWS."""

    @pytest.fixture
    def env(self, aws: Any) -> dict[str, str]:
        return _cli_env({}, aws.endpoint_url)

    def test_reads_references_only(self, aws: Any, env: dict[str, str]) -> None:
        env["AIRFLOW_CONN_WAREHOUSE"] = json.dumps(
            {"conn_type": "postgres", "password": "{{workato:sm:password:prod/db:AWSPREVIOUS}}"}
        )
        env["AIRFLOW_VAR_CONFIG"] = json.dumps({"nested": ["{{workato:sm:key:cfg/app}}"]})

        done = iam_policy(env, "warehouse", "--variable", "config", "--account-id", ACCOUNT)

        assert done.returncode == 0, done.stderr
        resources = json.loads(done.stdout)["Statement"][0]["Resource"]
        prefix = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:"
        assert resources == [prefix + "cfg/app-??????", prefix + "prod/db-??????"]
        assert aws.total_calls() == 0  # no secret is fetched, nor anything else

    @compat
    def test_all_covers_environment_and_metastore(self, aws: Any, env: dict[str, str], metastore: Path) -> None:
        from airflow.models import Connection, Variable
        from airflow.utils.session import create_session

        with create_session() as session:
            session.query(Connection).filter(Connection.conn_id == "iam_meta_conn").delete()
            session.query(Variable).filter(Variable.key == "iam_meta_var").delete()
            session.add(Connection(conn_id="iam_meta_conn", conn_type="http", password="{{workato:sm:password:meta/db}}"))
            session.add(Variable(key="iam_meta_var", val="x {{workato:sm:k:meta/var}}"))
        env["AIRFLOW_CONN_ENV_CONN"] = json.dumps({"conn_type": "http", "login": "{{workato:sm:user:env/db}}"})
        env["AIRFLOW_VAR_ENV_VAR"] = "{{workato:sm::env/var}}"
        try:
            done = iam_policy(env, "--all", "--account-id", ACCOUNT)
        finally:
            with create_session() as session:
                session.query(Connection).filter(Connection.conn_id == "iam_meta_conn").delete()
                session.query(Variable).filter(Variable.key == "iam_meta_var").delete()

        assert done.returncode == 0, done.stderr
        names = {r.rsplit(":", 1)[1] for r in json.loads(done.stdout)["Statement"][0]["Resource"]}
        assert {"meta/db-??????", "meta/var-??????", "env/db-??????", "env/var-??????"} <= names
        assert "connection 'iam_meta_conn': 1 secret" in done.stderr

    @compat
    def test_all_reports_a_stored_connection_it_cannot_read(self, env: dict[str, str], metastore: Path) -> None:
        env["AIRFLOW_CONN_GOOD"] = json.dumps({"conn_type": "http", "password": "{{workato:sm:password:prod/db}}"})
        env["AIRFLOW_CONN_BROKEN"] = '{"conn_type": "http", "password": '

        done = iam_policy(env, "--all")

        assert done.returncode == 1 and done.stdout == ""
        assert "connection 'broken': ERROR: not found" in done.stderr and "not valid JSON" in done.stderr

    def test_all_skip_broken_prints_the_policy_for_the_rest(self, env: dict[str, str], metastore: Path) -> None:
        env["AIRFLOW_CONN_GOOD"] = json.dumps({"conn_type": "http", "password": "{{workato:sm:password:prod/db}}"})
        env["AIRFLOW_CONN_BROKEN"] = '{"conn_type": "http", "password": '
        env["AIRFLOW_CONN_TYPO"] = json.dumps(
            {"conn_type": "http", "login": "{{workato:sm:user:typo/ok}}", "password": "{{workato:sm:password}}"}
        )
        env["AIRFLOW_VAR_GOOD_VAR"] = "{{workato:sm::env/var}}"

        without = iam_policy(env, "--all", "--account-id", ACCOUNT)
        done = iam_policy(env, "--all", "--skip-broken", "--account-id", ACCOUNT)

        assert without.returncode == 1 and without.stdout == "" and "--skip-broken" in without.stderr
        assert done.returncode == 2, done.stderr
        names = {r.rsplit(":", 1)[1] for r in json.loads(done.stdout)["Statement"][0]["Resource"]}
        assert {"prod/db-??????", "env/var-??????"} <= names
        # a connection with a malformed reference is left out whole: its tasks fail until it is fixed
        assert "typo/ok-??????" not in names
        skipped = [line for line in done.stderr.splitlines() if line.startswith("skipped, not in the policy")]
        assert len(skipped) == 1 and "connection 'broken'" in skipped[0] and "connection 'typo'" in skipped[0]
        assert "connection 'good'" not in skipped[0]

    def test_skip_broken_with_nothing_left_prints_nothing(self, env: dict[str, str]) -> None:
        env["AIRFLOW_CONN_TYPO"] = json.dumps({"conn_type": "http", "password": "{{workato:sm:password}}"})

        done = iam_policy(env, "typo", "--skip-broken")

        assert done.returncode == 1 and done.stdout == ""

    def test_missing_or_malformed_prints_no_policy(self, env: dict[str, str]) -> None:
        env["AIRFLOW_CONN_TYPO"] = json.dumps({"conn_type": "http", "password": "{{workato:sm:password}}"})
        env["AIRFLOW_CONN_GOOD"] = json.dumps({"conn_type": "http", "password": "{{workato:sm:password:prod/db}}"})

        done = iam_policy(env, "good", "typo", "no_such_conn")

        assert done.returncode == 1
        assert done.stdout == ""
        assert "malformed reference" in done.stderr and "'no_such_conn': ERROR: not found" in done.stderr

    def test_references_outside_allowed_secrets_are_left_out(self, aws: Any, env: dict[str, str]) -> None:
        env["AIRFLOW__SECRETS__BACKEND_KWARGS"] = json.dumps(
            {"region_name": "eu-west-1", "endpoint_url": aws.endpoint_url, "allowed_secrets": ["prod/*"]}
        )
        env["AIRFLOW_CONN_MIXED"] = json.dumps(
            {"conn_type": "http", "login": "{{workato:sm:u:prod/db}}", "password": "{{workato:sm:p:finance/db}}"}
        )

        done = iam_policy(env, "mixed")

        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["Statement"][0]["Resource"] == [
            "arn:aws:secretsmanager:eu-west-1:*:secret:prod/db-??????"
        ]
        assert "skipped, not allowed" in done.stderr and "finance/db" in done.stderr

    def test_no_arguments_is_usage(self, env: dict[str, str]) -> None:
        done = iam_policy(env)

        assert done.returncode == 2 and done.stdout == "" and done.stderr.count("\n") == 1


class TestResources:
    """How one reference becomes ``Resource`` patterns (no Airflow, no AWS)."""

    @staticmethod
    def resources(token: str, region: str = "eu-west-1", account: str = "*") -> list[str]:
        from airflow_sm_refs.cli import PolicyScope, _partition_of, secret_resources
        from airflow_sm_refs.reference import parse_reference

        return secret_resources(parse_reference(token), PolicyScope(region, account, _partition_of(region)))

    def test_plain_name(self) -> None:
        assert self.resources("{{workato:sm:k:prod/db}}", account=ACCOUNT) == [
            f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:prod/db-??????"
        ]

    def test_partition_follows_the_region(self) -> None:
        assert self.resources("{{workato:sm:k:prod/db}}", region="cn-north-1") == [
            "arn:aws-cn:secretsmanager:cn-north-1:*:secret:prod/db-??????"
        ]

    def test_partial_arn_keeps_its_region_and_account(self) -> None:
        arn = "arn:aws:secretsmanager:us-west-2:210987654321:secret:prod/db"
        assert self.resources(f"{{{{workato:sm:k:{arn}:AWSPREVIOUS}}}}") == [arn + "-??????"]

    def test_arn_that_may_be_full_gets_both(self) -> None:
        arn = "arn:aws:secretsmanager:us-west-2:210987654321:secret:prod/db-AbCdEf"
        assert self.resources(f"{{{{workato:sm:k:{arn}}}}}") == [arn, arn + "-??????"]
