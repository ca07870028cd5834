"""The hook: the backend's expansion on demand, AWS credentials from an Airflow AWS connection."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from urllib.parse import quote

import pytest
from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
from airflow.sdk import Connection

from airflow_sm_refs import ReferenceNotAllowedError, SecretKeyError, SecretNotFoundError, SecretReferenceError
from airflow_sm_refs.hook import SecretsManagerRefsHook
from standins.aws import AwsStandIn
from tests.conftest import configure_backend, set_conn

PASSWORD = "hook-pw-4f9a\"quote\\back"

TOKEN_VALUE = "hook-token-c0ffee"


def _aws_conn(monkeypatch: pytest.MonkeyPatch, aws: AwsStandIn, conn_id: str = "aws_refs", **extra: object) -> None:
    """An Airflow AWS connection holding the credentials, region and endpoint of the moto stand-in."""
    set_conn(
        monkeypatch,
        conn_id,
        {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"region_name": "us-east-1", "endpoint_url": aws.endpoint_url, **extra},
        },
    )


@pytest.fixture
def no_ambient_aws(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    """Nothing but the Airflow connection can supply credentials, region or endpoint."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AIRFLOW__SECRETS__BACKEND", raising=False)
    monkeypatch.delenv("AIRFLOW__SECRETS__BACKEND_KWARGS", raising=False)


@pytest.fixture
def secrets(aws: AwsStandIn) -> AwsStandIn:
    client = aws.client()
    client.create_secret(Name="prod/db", SecretString=json.dumps({"username": "app", "password": PASSWORD}))
    client.create_secret(Name="api/partner", SecretString=json.dumps({"token": TOKEN_VALUE}))
    return aws


class TestSecretsManagerRefsHook:
    def test_is_an_aws_hook_for_secrets_manager(self) -> None:
        hook = SecretsManagerRefsHook()
        assert isinstance(hook, AwsBaseHook)
        assert hook.aws_conn_id == "aws_default"
        assert hook.client_type == "secretsmanager"

    def test_resolve_with_credentials_and_endpoint_from_the_aws_connection(
        self, secrets: AwsStandIn, monkeypatch: pytest.MonkeyPatch, no_ambient_aws: None
    ) -> None:
        _aws_conn(monkeypatch, secrets)
        hook = SecretsManagerRefsHook(aws_conn_id="aws_refs")

        assert hook.resolve("Bearer {{workato:sm:token:api/partner}}") == f"Bearer {TOKEN_VALUE}"
        # the request went to the connection's endpoint_url (counted at the stand-in)
        assert secrets.calls() == 1

    def test_text_without_references_makes_no_call(self, secrets: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        _aws_conn(monkeypatch, secrets)
        assert SecretsManagerRefsHook(aws_conn_id="aws_refs").resolve("plain {{ jinja }}") == "plain {{ jinja }}"
        assert secrets.calls() == 0

    def test_resolve_connection_expands_every_field_into_a_copy(
        self, secrets: AwsStandIn, monkeypatch: pytest.MonkeyPatch, no_ambient_aws: None
    ) -> None:
        _aws_conn(monkeypatch, secrets)
        raw = Connection(
            conn_id="warehouse",
            conn_type="postgres",
            host="db.internal",
            login="{{workato:sm:username:prod/db}}",
            password="{{ workato:sm:password:prod/db }}",
            port=5432,
            extra=json.dumps({"headers": {"Authorization": "Bearer {{workato:sm:token:api/partner}}"}, "n": 1}),
        )
        hook = SecretsManagerRefsHook(aws_conn_id="aws_refs")

        conn = hook.resolve_connection(raw)

        assert (conn.login, conn.password, conn.host, conn.port) == ("app", PASSWORD, "db.internal", 5432)
        # a password holding quotes and backslashes cannot change the structure of extra
        assert conn.extra_dejson == {"headers": {"Authorization": f"Bearer {TOKEN_VALUE}"}, "n": 1}
        assert raw.password == "{{ workato:sm:password:prod/db }}"
        # two keys of one secret, and another secret: both in one BatchGetSecretValue request
        assert secrets.calls("BatchGetSecretValue") == 1
        assert secrets.calls() == 0

    def test_resolve_connection_of_a_metastore_connection(
        self, secrets: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from airflow.models.connection import Connection as StoredConnection

        _aws_conn(monkeypatch, secrets)
        raw = StoredConnection(conn_id="stored", conn_type="postgres", password="{{workato:sm:password:prod/db}}")

        conn = SecretsManagerRefsHook(aws_conn_id="aws_refs").resolve_connection(raw)

        assert isinstance(conn, StoredConnection) and conn.password == PASSWORD

    def test_resolve_connection_without_references_is_an_equal_copy(self, aws: AwsStandIn) -> None:
        raw = Connection(conn_id="plain", conn_type="http", host="example.org", password="literal", extra="{}")
        conn = SecretsManagerRefsHook(aws_conn_id=None).resolve_connection(raw)
        assert conn is not raw
        assert (conn.conn_id, conn.host, conn.password, conn.extra) == ("plain", "example.org", "literal", "{}")
        assert aws.calls() == 0

    def test_get_resolved_connection_without_the_backend(
        self, secrets: AwsStandIn, monkeypatch: pytest.MonkeyPatch, no_ambient_aws: None
    ) -> None:
        _aws_conn(monkeypatch, secrets)
        # in the URI form, the token is percent-encoded like any login
        login = quote("{{workato:sm:username:prod/db}}", safe="")
        set_conn(monkeypatch, "warehouse", f"postgres://{login}@db.internal:5432/app")
        set_conn(
            monkeypatch,
            "partner",
            {"conn_type": "http", "host": "api.example.org", "password": "{{workato:sm:token:api/partner}}"},
        )
        hook = SecretsManagerRefsHook(aws_conn_id="aws_refs")

        warehouse = hook.get_resolved_connection("warehouse")
        partner = hook.get_resolved_connection("partner")

        assert (warehouse.login, warehouse.host, warehouse.schema) == ("app", "db.internal", "app")
        assert partner.password == TOKEN_VALUE

    def test_get_resolved_connection_does_not_scan_the_backends_output_again(
        self, secrets: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        client = secrets.client()
        # a secret whose text looks like a reference must stay literal
        client.create_secret(Name="looks-like-a-token", SecretString="{{workato:sm:password:prod/db}}")
        configure_backend(monkeypatch, region_name="us-east-1", endpoint_url=secrets.endpoint_url)
        set_conn(monkeypatch, "tricky", {"conn_type": "http", "password": "{{workato:sm::looks-like-a-token}}"})
        _aws_conn(monkeypatch, secrets)

        conn = SecretsManagerRefsHook(aws_conn_id="aws_refs").get_resolved_connection("tricky")

        assert conn.password == "{{workato:sm:password:prod/db}}"
        assert secrets.calls() == 1

    def test_get_resolved_connection_missing(self, aws: AwsStandIn) -> None:
        from airflow.sdk.exceptions import AirflowNotFoundException

        with pytest.raises(AirflowNotFoundException) as excinfo:
            SecretsManagerRefsHook(aws_conn_id=None).get_resolved_connection("no_such_conn")
        assert "no_such_conn" in str(excinfo.value)

    def test_missing_key_names_key_connection_and_field_never_the_value(
        self, secrets: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _aws_conn(monkeypatch, secrets)
        raw = Connection(conn_id="warehouse", conn_type="postgres", password="{{workato:sm:pasword:prod/db}}")

        with pytest.raises(SecretKeyError) as excinfo:
            SecretsManagerRefsHook(aws_conn_id="aws_refs").resolve_connection(raw)

        message = str(excinfo.value)
        assert "'pasword'" in message and "prod/db" in message
        assert excinfo.value.conn_id == "warehouse" and excinfo.value.field == "password"
        assert PASSWORD not in message

    def test_missing_secret(self, secrets: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        _aws_conn(monkeypatch, secrets)
        with pytest.raises(SecretNotFoundError, match="gone/away"):
            SecretsManagerRefsHook(aws_conn_id="aws_refs").resolve("{{workato:sm::gone/away}}")

    def test_malformed_reference_is_an_error_not_a_literal(self, aws: AwsStandIn) -> None:
        with pytest.raises(SecretReferenceError, match="malformed reference"):
            SecretsManagerRefsHook(aws_conn_id=None).resolve("{{workato:sm:password}}")
        assert aws.calls() == 0

    def test_resolved_values_are_masked(self, secrets: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        from airflow.sdk.log import redact

        _aws_conn(monkeypatch, secrets)
        SecretsManagerRefsHook(aws_conn_id="aws_refs").resolve("Bearer {{workato:sm:token:api/partner}}")
        assert redact(f"sent {TOKEN_VALUE} upstream") == "sent *** upstream"

    def test_cache_is_shared_by_hooks_of_one_identity_and_split_between_identities(
        self, secrets: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _aws_conn(monkeypatch, secrets, "aws_team_a")
        _aws_conn(monkeypatch, secrets, "aws_team_b")
        token = "{{workato:sm:token:api/partner}}"

        SecretsManagerRefsHook(aws_conn_id="aws_team_a").resolve(token)
        SecretsManagerRefsHook(aws_conn_id="aws_team_a").resolve(token)
        assert secrets.calls() == 1
        # another AWS connection may not read what the first one fetched
        SecretsManagerRefsHook(aws_conn_id="aws_team_b").resolve(token)
        assert secrets.calls() == 2

    def test_cache_ttl_zero_fetches_every_time(self, secrets: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        _aws_conn(monkeypatch, secrets)
        hook = SecretsManagerRefsHook(aws_conn_id="aws_refs", cache_ttl_seconds=0, shared_cache=False)
        hook.resolve("{{workato:sm:token:api/partner}}")
        hook.resolve("{{workato:sm:token:api/partner}}")
        assert secrets.calls() == 2

    def test_arn_in_another_region_uses_a_client_for_that_region(
        self, aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        arn = aws.client(region_name="eu-west-2").create_secret(Name="eu/db", SecretString="eu-value-123")["ARN"]
        _aws_conn(monkeypatch, aws)
        assert SecretsManagerRefsHook(aws_conn_id="aws_refs").resolve(f"{{{{workato:sm::{arn}}}}}") == "eu-value-123"

    def test_allowlists_apply_before_any_aws_call(self, secrets: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        _aws_conn(monkeypatch, secrets)
        hook = SecretsManagerRefsHook(
            aws_conn_id="aws_refs", allowed_secrets=["prod/*"], allowed_conn_ids=["warehouse"]
        )
        elsewhere = Connection(conn_id="other", conn_type="http", password="{{workato:sm:password:prod/db}}")

        with pytest.raises(ReferenceNotAllowedError, match="api/partner"):
            hook.resolve("{{workato:sm:token:api/partner}}")
        with pytest.raises(ReferenceNotAllowedError, match="'other'"):
            hook.resolve_connection(elsewhere)
        assert secrets.calls() == 0
        assert hook.resolve("{{workato:sm:password:prod/db}}") == PASSWORD

    def test_negative_ttl_is_refused(self) -> None:
        with pytest.raises(ValueError, match="must not be negative"):
            SecretsManagerRefsHook(cache_ttl_seconds=-1)

    def test_shares_the_per_worker_cache_with_later_task_processes(
        self, secrets: AwsStandIn, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        from airflow_sm_refs.resolver import clear_process_cache

        _aws_conn(monkeypatch, secrets)
        directory = str(tmp_path / "shared")
        token = "{{workato:sm:token:api/partner}}"
        assert SecretsManagerRefsHook(aws_conn_id="aws_refs", shared_cache_dir=directory).resolve(token) == TOKEN_VALUE
        clear_process_cache()  # as in the next task process on the worker

        assert SecretsManagerRefsHook(aws_conn_id="aws_refs", shared_cache_dir=directory).resolve(token) == TOKEN_VALUE
        assert secrets.calls() == 1


class TestAuditLine:
    """``resolve(text)`` has no connection: its audit line names the AWS connection the hook acts as."""

    def test_resolve_names_the_aws_connection_not_none(
        self, secrets: AwsStandIn, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        _aws_conn(monkeypatch, secrets)
        caplog.set_level(logging.INFO, logger="airflow_sm_refs")

        SecretsManagerRefsHook(aws_conn_id="aws_refs").resolve("Bearer {{workato:sm:token:api/partner}}")

        lines = [r.getMessage() for r in caplog.records if r.name == "airflow_sm_refs" and "api/partner" in r.getMessage()]
        assert len(lines) == 1, lines
        assert lines[0].startswith("hook.resolve() with AWS connection 'aws_refs' field 'text': secret api/partner key 'token'")
        assert "None" not in lines[0]

    def test_an_error_of_resolve_names_no_connection(
        self, secrets: AwsStandIn, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        _aws_conn(monkeypatch, secrets)
        caplog.set_level(logging.INFO, logger="airflow_sm_refs")

        with pytest.raises(SecretNotFoundError) as raised:
            SecretsManagerRefsHook(aws_conn_id="aws_refs").resolve("{{workato:sm::gone/away}}")

        # the AWS connection does not hold the reference: the error must not call it the connection
        assert str(raised.value).startswith("field 'text', reference 'workato:sm::gone/away': ")
        assert raised.value.conn_id is None
        failed = [r.getMessage() for r in caplog.records if "gone/away" in r.getMessage() and r.levelno == logging.ERROR]
        assert failed and failed[0].startswith("hook.resolve() with AWS connection 'aws_refs' field 'text': ")

    def test_a_malformed_reference_is_named_without_braces(self, aws: AwsStandIn) -> None:
        with pytest.raises(SecretReferenceError) as raised:
            SecretsManagerRefsHook(aws_conn_id=None).resolve("Bearer {{workato:sm:token:api/partner")
        assert "reference 'workato:sm:token:api/partner'" in str(raised.value) and "'{{" not in str(raised.value)
