"""Who the plugin acts as, as far as the cache can tell (DESIGN §7): every local input of the credential chain.

The identity digest is part of every cache key, and the per-worker cache
directory is shared by every process of one uid. ``TestTwoWorkersOneUid`` runs
two workers (warm parents forking task processes, as a worker does) of one
uid that share a cache directory but take their credentials from different
``AWS_SHARED_CREDENTIALS_FILE`` files, against the moto stand-in, which
records which access key signed each call. The other classes hold
``identity_of`` itself to what decides the principal: the credential and
config files and their contents, the profile, and the service account of an
IRSA or EKS Pod Identity token (not the token, which rotates).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_sm_refs import SecretAccessDeniedError
from airflow_sm_refs import _identity
from airflow_sm_refs._aws import identity_of
from standins.aws import AwsStandIn
from tests.conftest import BACKEND, configure_backend, get_connection, lookup_fails, set_conn
from tests.worker_proc import REPO, TaskProcesses, digest

pytestmark = pytest.mark.compat

PASSWORD = "team-a-only-pw-7f3c"
CONN = {"conn_type": "postgres", "host": "db.internal", "password": "{{workato:sm:password:team-a/db}}"}
SETTINGS = {"region_name": "us-east-1"}
POD_IDENTITY_URI = "http://169.254.170.23/v1/credentials"
POD_IDENTITY_TOKEN = "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/eks-pod-identity-token"

#: every variable of the credential chain this module sets; cleared before each test
_CHAIN_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
)


def credentials(key_id: str) -> str:
    return f"[default]\naws_access_key_id = {key_id}\naws_secret_access_key = secret-of-{key_id}\n"


def service_account_token(namespace: str, account: str, *, pod: str = "worker-0", issued: int = 1_800_000_000) -> str:
    """A Kubernetes projected service account token (a JWT) as the kubelet writes it; the signature is not checked."""

    def part(document: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()

    claims = {
        "aud": ["pods.eks.amazonaws.com"],
        "exp": issued + 86400,
        "iat": issued,
        "iss": "https://oidc.eks.us-east-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE",
        "jti": f"jti-{pod}-{issued}",
        "kubernetes.io": {
            "namespace": namespace,
            "node": {"name": "ip-10-0-0-1.ec2.internal", "uid": "node-uid"},
            "pod": {"name": pod, "uid": f"uid-of-{pod}"},
            "serviceaccount": {"name": account, "uid": f"uid-of-{account}"},
        },
        "nbf": issued,
        "sub": f"system:serviceaccount:{namespace}:{account}",
    }
    return f"{part({'alg': 'RS256', 'kid': 'k1'})}.{part(claims)}.c2lnbmF0dXJl"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def chain_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No credentials in the environment, and a HOME of the test's own (so ``~/.aws`` is empty)."""
    for name in _CHAIN_ENV:
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


class TestCredentialFiles:
    def test_changing_the_credentials_file_changes_the_identity(self, chain_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
        path = write(tmp_path / "credentials", credentials("AKIATEAMA0000000001"))
        chain_env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(path))
        before = identity_of(SETTINGS)

        # same length, same path, same inode: only the content differs
        path.write_text(credentials("AKIATEAMB0000000002"))

        assert identity_of(SETTINGS) != before

    def test_the_same_content_rewritten_at_the_same_path_keeps_the_identity(
        self, chain_env: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        path = write(tmp_path / "credentials", credentials("AKIATEAMA0000000001"))
        chain_env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(path))
        before = identity_of(SETTINGS)

        path.unlink()
        write(path, credentials("AKIATEAMA0000000001"))

        assert identity_of(SETTINGS) == before

    def test_an_edit_that_keeps_size_and_mtime_is_still_seen(self, chain_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
        # A file is remembered by its stat once it is a few seconds old (here
        # at once); an edit that restores the mtime (cp -p, tar) still changes its ctime.
        chain_env.setattr(_identity, "_RACY_NS", 0)
        path = write(tmp_path / "credentials", credentials("AKIATEAMA0000000001"))
        os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
        chain_env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(path))
        before = identity_of(SETTINGS)
        assert identity_of(SETTINGS) == before

        time.sleep(0.01)
        path.write_text(credentials("AKIATEAMB0000000002"))
        os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))

        assert identity_of(SETTINGS) != before

    def test_the_default_files_are_read_from_home(self, chain_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
        before = identity_of(SETTINGS)
        aws_dir = tmp_path / "home" / ".aws"
        aws_dir.mkdir()
        write(aws_dir / "credentials", credentials("AKIATEAMA0000000001"))
        with_credentials = identity_of(SETTINGS)
        write(aws_dir / "config", "[default]\nrole_arn = arn:aws:iam::123456789012:role/team-a\n")

        assert len({before, with_credentials, identity_of(SETTINGS)}) == 3

    def test_workers_with_other_homes_but_the_same_files_agree(
        self, chain_env: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        # Pods of one image: the same ~/.aws (or none) under each their own HOME.
        homes = [tmp_path / "pod-a", tmp_path / "pod-b"]
        seen = []
        for home in homes:
            home.mkdir()
            chain_env.setenv("HOME", str(home))
            seen.append(identity_of(SETTINGS))
        for home in homes:
            (home / ".aws").mkdir()
            write(home / ".aws" / "credentials", credentials("AKIATEAMA0000000001"))
            chain_env.setenv("HOME", str(home))
            seen.append(identity_of(SETTINGS))

        assert seen[0] == seen[1] != seen[2] == seen[3]

    def test_a_missing_file_an_empty_file_and_a_directory_differ(
        self, chain_env: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        path = tmp_path / "credentials"
        chain_env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(path))
        missing = identity_of(SETTINGS)
        path.write_text("")
        empty = identity_of(SETTINGS)
        path.unlink()
        path.mkdir()  # unreadable as a file: counted in, not raised
        directory = identity_of(SETTINGS)

        assert len({missing, empty, directory}) == 3

    def test_the_same_content_at_another_path_is_another_identity(
        self, chain_env: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        a = write(tmp_path / "a", credentials("AKIATEAMA0000000001"))
        b = write(tmp_path / "b", credentials("AKIATEAMA0000000001"))
        chain_env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(a))
        at_a = identity_of(SETTINGS)
        chain_env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(b))

        assert identity_of(SETTINGS) != at_a

    def test_the_config_file_and_the_profile_are_part_of_it(self, chain_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
        config = write(tmp_path / "config", "[profile team-a]\nrole_arn = arn:aws:iam::123456789012:role/team-a\n")
        chain_env.setenv("AWS_CONFIG_FILE", str(config))
        seen = {identity_of(SETTINGS)}
        config.write_text("[profile team-a]\nrole_arn = arn:aws:iam::123456789012:role/team-b\n")
        seen.add(identity_of(SETTINGS))
        chain_env.setenv("AWS_PROFILE", "team-a")
        seen.add(identity_of(SETTINGS))
        chain_env.delenv("AWS_PROFILE")
        chain_env.setenv("AWS_DEFAULT_PROFILE", "team-a")
        seen.add(identity_of(SETTINGS))
        seen.add(identity_of({**SETTINGS, "profile_name": "team-a"}))

        assert len(seen) == 5


class TestServiceAccountTokens:
    """EKS Pod Identity and IRSA: the role follows the service account the token names."""

    @pytest.fixture
    def token_file(self, chain_env: pytest.MonkeyPatch, tmp_path: Path) -> Path:
        # What the EKS Pod Identity webhook puts in every pod, whatever its role.
        chain_env.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", POD_IDENTITY_URI)
        path = tmp_path / "eks-pod-identity-token"
        chain_env.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", str(path))
        return path

    def test_pods_of_different_service_accounts_differ(self, token_file: Path) -> None:
        write(token_file, service_account_token("airflow", "team-a"))
        team_a = identity_of(SETTINGS)
        write(token_file, service_account_token("airflow", "team-b"))
        team_b = identity_of(SETTINGS)
        write(token_file, service_account_token("other-ns", "team-a"))

        assert len({team_a, team_b, identity_of(SETTINGS)}) == 3

    def test_a_rotated_token_or_another_pod_of_the_same_service_account_keeps_it(self, token_file: Path) -> None:
        write(token_file, service_account_token("airflow", "team-a", pod="worker-0", issued=1_800_000_000))
        before = identity_of(SETTINGS)
        write(token_file, service_account_token("airflow", "team-a", pod="worker-0", issued=1_800_080_000))
        rotated = identity_of(SETTINGS)
        write(token_file, service_account_token("airflow", "team-a", pod="worker-7", issued=1_800_000_500))

        assert before == rotated == identity_of(SETTINGS)

    def test_a_token_that_does_not_decode_counts_by_its_content(self, token_file: Path) -> None:
        write(token_file, "not-a-jwt-1")
        first = identity_of(SETTINGS)
        write(token_file, "not-a-jwt-2")
        second = identity_of(SETTINGS)
        token_file.unlink()

        assert len({first, second, identity_of(SETTINGS)}) == 3

    def test_irsa_takes_the_role_and_the_tokens_service_account(
        self, chain_env: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        token = tmp_path / "token"
        chain_env.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
        chain_env.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/team-a")
        write(token, service_account_token("airflow", "team-a"))
        team_a = identity_of(SETTINGS)
        write(token, service_account_token("airflow", "team-a", issued=1_800_090_000))
        assert identity_of(SETTINGS) == team_a  # rotated
        write(token, service_account_token("airflow", "team-b"))
        other_account = identity_of(SETTINGS)
        chain_env.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/team-b")

        assert len({team_a, other_account, identity_of(SETTINGS)}) == 3

    def test_a_token_file_named_by_a_config_profile_counts_too(
        self, chain_env: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        token = tmp_path / "token"
        config = tmp_path / "config"
        write(config, f"[default]\nrole_arn = arn:aws:iam::123456789012:role/r\nweb_identity_token_file = {token}\n")
        chain_env.setenv("AWS_CONFIG_FILE", str(config))
        write(token, service_account_token("airflow", "team-a"))
        team_a = identity_of(SETTINGS)
        write(token, service_account_token("airflow", "team-b"))

        assert identity_of(SETTINGS) != team_a

    @pytest.mark.parametrize(
        "spelling",
        ["web_identity_token_file = ", "web_identity_token_file: ", "Web_Identity_Token_File = "],
        ids=["equals", "colon", "mixed case"],
    )
    def test_a_token_file_named_in_the_config_counts_however_configparser_spells_it(
        self, chain_env: pytest.MonkeyPatch, tmp_path: Path, spelling: str
    ) -> None:
        # botocore reads the config with configparser: option names in any case, "=" or ":".
        # Two workers with this config text and the same token path, whose tokens name
        # different service accounts (so IRSA gives them different roles), must not share entries.
        import configparser

        token = tmp_path / "token"
        config = write(tmp_path / "config", f"[default]\nrole_arn = arn:aws:iam::123456789012:role/r\n{spelling}{token}\n")
        parsed = configparser.RawConfigParser()
        parsed.read(config)
        assert parsed.get("default", "web_identity_token_file") == str(token)  # what botocore will use
        chain_env.setenv("AWS_CONFIG_FILE", str(config))
        write(token, service_account_token("airflow", "team-a"))
        team_a = identity_of(SETTINGS)
        write(token, service_account_token("airflow", "team-b"))

        assert identity_of(SETTINGS) != team_a


def test_identity_of_imports_no_aws_library(tmp_path: Path) -> None:
    # A task served from the worker cache computes the identity and nothing
    # more: it must not pay for importing botocore.
    token = write(tmp_path / "token", service_account_token("airflow", "team-a"))
    config = write(tmp_path / "config", f"[default]\nweb_identity_token_file = {token}\n")
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "AWS_SHARED_CREDENTIALS_FILE": str(write(tmp_path / "credentials", credentials("AKIATEAMA0000000001"))),
        "AWS_CONFIG_FILE": str(config),
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": POD_IDENTITY_URI,
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token),
    }
    script = (
        "import sys\n"
        "from airflow_sm_refs._aws import identity_of\n"
        "identity_of({'region_name': 'us-east-1', 'profile_name': 'team-a'})\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('botocore', 'boto3', 's3transfer')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_an_unknown_profile_is_access_denied(aws: AwsStandIn, chain_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    aws.client().create_secret(Name="team-a/db", SecretString=json.dumps({"password": PASSWORD}))
    set_conn(chain_env, "db", CONN)
    chain_env.setenv("AWS_CONFIG_FILE", str(write(tmp_path / "config", "[profile other]\nregion = us-east-1\n")))
    configure_backend(chain_env, region_name="us-east-1", endpoint_url=aws.endpoint_url, profile_name="nope")

    with lookup_fails(SecretAccessDeniedError, match="no usable AWS credentials") as raised:
        get_connection("db")

    assert "nope" in str(raised.value)
    assert aws.calls() == 0


# --- two workers of one uid, one cache directory -----------------------------------
KEY_A = "AKIATEAMAWORKER00001"
KEY_B = "AKIATEAMBWORKER00002"


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, TaskProcesses]]:
    """Two workers: warm parents of one uid, each with its own credentials file and nothing else different."""
    root = tmp_path_factory.mktemp("workers")
    started: dict[str, TaskProcesses] = {}
    try:
        for name, key in (("a", KEY_A), ("b", KEY_B)):
            env = {k: v for k, v in os.environ.items() if k not in _CHAIN_ENV}
            env["AWS_SHARED_CREDENTIALS_FILE"] = str(write(root / f"credentials-{name}", credentials(key)))
            env["AWS_CONFIG_FILE"] = str(root / "no-config")
            started[name] = TaskProcesses(root / f"worker-{name}.log", env=env).start()
        yield started
    finally:
        for processes in started.values():
            processes.stop()


def task_env(aws: AwsStandIn, cache_dir: Path) -> dict[str, str | None]:
    """The same backend configuration and connection on both workers, the same cache directory."""
    kwargs = {"region_name": "us-east-1", "endpoint_url": aws.endpoint_url, "shared_cache_dir": str(cache_dir)}
    return {
        "AIRFLOW__SECRETS__BACKEND": BACKEND,
        "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps(kwargs),
        "AIRFLOW_CONN_DB": json.dumps(CONN),
    }


def source(result: dict[str, Any]) -> str:
    """Where a task process's value came from, as its log line says."""
    lines = [message for _, message in result["log"] if message.endswith(": ok")]
    assert len(lines) == 1, result
    return lines[0].rsplit(" from ", 1)[1].rsplit(" in ", 1)[0]


class TestTwoWorkersOneUid:
    def test_a_worker_denied_by_iam_never_gets_another_workers_value(
        self, aws: AwsStandIn, workers: dict[str, TaskProcesses], tmp_path: Path
    ) -> None:
        aws.client().create_secret(Name="team-a/db", SecretString=json.dumps({"password": PASSWORD}))
        env = task_env(aws, tmp_path / "worker-cache")
        with aws.denying_key(KEY_B):  # IAM grants team A's secret to A's principal only
            (a,) = workers["a"].run(1, env)
            assert a.get("digest") == digest(PASSWORD), a
            assert source(a) == "aws"

            (b,) = workers["b"].run(1, env)

        assert b.get("error") == "SecretAccessDeniedError", b
        assert "digest" not in b
        assert "team-a/db" in b["message"]
        # B asked AWS with its own key, and was told no.
        assert aws.access_keys() == {KEY_A, KEY_B}
        assert aws.calls() == 2
        for result in (a, b):
            assert not any(PASSWORD in message for _, message in result["log"])

    def test_each_workers_principal_fetches_once_and_then_shares_with_its_own_tasks(
        self, aws: AwsStandIn, workers: dict[str, TaskProcesses], tmp_path: Path
    ) -> None:
        aws.client().create_secret(Name="team-a/db", SecretString=json.dumps({"password": PASSWORD}))
        env = task_env(aws, tmp_path / "worker-cache")

        first = [workers[name].run(1, env)[0] for name in ("a", "b")]
        again = [result for name in ("a", "b") for result in workers[name].run(2, env)]

        assert [r.get("digest") for r in first + again] == [digest(PASSWORD)] * 6
        assert [source(r) for r in first] == ["aws", "aws"]
        assert [source(r) for r in again] == ["worker cache"] * 4
        assert aws.access_keys() == {KEY_A, KEY_B}
        assert aws.calls() == 2
