"""The token grammar of DESIGN §1, parsed without AWS."""

from __future__ import annotations

import pytest

from airflow_sm_refs import ReferenceSyntaxError, SecretReference, parse_reference, split_references

pytestmark = pytest.mark.compat

ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf"


class TestParseReference:
    @pytest.mark.parametrize(
        ("token", "key", "secret_id", "stage", "version_id", "region"),
        [
            ("{{workato:sm:password:prod/db}}", "password", "prod/db", None, None, None),
            ("{{workato:sm::plain-token}}", "", "plain-token", None, None, None),
            (f"{{{{workato:sm:password:{ARN}}}}}", "password", ARN, None, None, "us-east-1"),
            (
                "{{workato:sm:password:arn:aws:secretsmanager:eu-west-2:123456789012:secret:prod/db}}",
                "password",
                "arn:aws:secretsmanager:eu-west-2:123456789012:secret:prod/db",
                None,
                None,
                "eu-west-2",
            ),
            ("{{workato:sm:password:prod/db:AWSPREVIOUS}}", "password", "prod/db", "AWSPREVIOUS", None, None),
            (f"{{{{workato:sm::{ARN}:AWSPENDING}}}}", "", ARN, "AWSPENDING", None, "us-east-1"),
            (
                "{{workato:sm:password:prod/db::0d1c2b3a-1111-2222-3333-444455556666}}",
                "password",
                "prod/db",
                None,
                "0d1c2b3a-1111-2222-3333-444455556666",
                None,
            ),
            (
                f"{{{{workato:sm:k:{ARN}::0d1c2b3a-1111-2222-3333-444455556666}}}}",
                "k",
                ARN,
                None,
                "0d1c2b3a-1111-2222-3333-444455556666",
                "us-east-1",
            ),
            ("{{ workato:sm:password:prod/db }}", "password", "prod/db", None, None, None),
            ("{{\tworkato:sm:password:prod/db\t}}", "password", "prod/db", None, None, None),
            ("{{workato:sm:user name:a+b=c.d@e_f-g}}", "user name", "a+b=c.d@e_f-g", None, None, None),
            (
                "{{workato:sm:password:arn:aws-us-gov:secretsmanager:us-gov-west-1:123456789012:secret:x}}",
                "password",
                "arn:aws-us-gov:secretsmanager:us-gov-west-1:123456789012:secret:x",
                None,
                None,
                "us-gov-west-1",
            ),
        ],
    )
    def test_valid_forms(
        self, token: str, key: str, secret_id: str, stage: str | None, version_id: str | None, region: str | None
    ) -> None:
        ref = parse_reference(token)
        assert (ref.key, ref.secret_id, ref.version_stage, ref.version_id, ref.region) == (
            key,
            secret_id,
            stage,
            version_id,
            region,
        )
        assert ref.text == token

    @pytest.mark.parametrize(
        ("token", "why"),
        [
            ("{{workato:sm:password:prod/db:AWSCURRENT:0d1c2b3a-1111}}", "not both"),
            ("{{workato:sm:password}}", "expected <key>:<secret-id>"),
            ("{{workato:sm:password:}}", "secret id is missing"),
            ("{{workato:sm:password:prod db}}", "secret name"),
            ("{{workato:sm:password:prod/db:}}", "empty version stage"),
            ("{{workato:sm:password:prod/db::}}", "empty version id"),
            ("{{workato:sm:password:prod/db:A:B:C}}", "too many fields"),
            ("{{workato:sm:password:arn:aws:s3:us-east-1:123456789012:secret:x}}", "not a Secrets Manager"),
            ("{{workato:sm:password:arn:aws:secretsmanager:us-east-1:1234:secret:x}}", "12 digits"),
            ("{{workato:sm:password:arn:aws:secretsmanager::123456789012:secret:x}}", "region"),
            ("{{workato:sm:password:arn:aws:secretsmanager:us-east-1:123456789012:secret}}", "7 fields"),
            ("{{Workato:SM:password:prod/db}}", "lower case"),
            ("{{workato: sm:password:prod/db}}", "lower case"),
            ("{{workato:sm:pass{word:prod/db}}", "key may not contain"),
        ],
    )
    def test_malformed_tokens_are_errors(self, token: str, why: str) -> None:
        with pytest.raises(ReferenceSyntaxError) as info:
            split_references(f"prefix {token} suffix")
        assert why in str(info.value)
        assert info.value.reference is not None

    def test_error_names_the_reference(self) -> None:
        with pytest.raises(ReferenceSyntaxError, match=r"prod/db:AWSCURRENT:abc"):
            parse_reference("{{workato:sm:password:prod/db:AWSCURRENT:abc}}")


class TestSplitReferences:
    def test_token_inside_longer_text(self) -> None:
        parts = split_references("Bearer {{workato:sm:token:api/partner}}")
        assert parts[0] == "Bearer "
        assert isinstance(parts[1], SecretReference) and parts[1].secret_id == "api/partner"

    def test_several_tokens(self) -> None:
        parts = split_references("{{workato:sm:u:a}}:{{workato:sm:p:b}}@host")
        assert [p if isinstance(p, str) else p.secret_id for p in parts] == ["a", ":", "b", "@host"]

    def test_text_without_tokens_is_one_literal(self) -> None:
        assert split_references("plain {{ jinja }} text") == ["plain {{ jinja }} text"]

    @pytest.mark.parametrize(
        "value",
        ["{{workato:sm:password:prod/db", "{{workato:sm:password:prod/db\n}}", "x {{workato:sm:a:b {{workato:sm:c:d}}"],
    )
    def test_unclosed_token_is_an_error(self, value: str) -> None:
        with pytest.raises(ReferenceSyntaxError, match="closing"):
            split_references(value)

    def test_too_many_references_are_refused(self) -> None:
        with pytest.raises(ReferenceSyntaxError, match="more than"):
            split_references("{{workato:sm::a}}" * 1001)
