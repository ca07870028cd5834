"""Options as Airflow hands them over: per-key overrides arrive as raw strings, and must mean what they say."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from airflow_sm_refs import BackendOptionError, SecretsManagerRefsBackend
from airflow_sm_refs._options import parse_bool, parse_dict, parse_list, parse_number
from standins.aws import AwsStandIn
from tests.conftest import configure_backend, get_connection, lookup_fails, set_conn

pytestmark = pytest.mark.compat

PASSWORD = "options-pass-7c1d9e"


def _worker_cache_files() -> list[Path]:
    from airflow_sm_refs import worker_cache

    return [p for p in Path(worker_cache.RAM_FS).rglob("*") if p.is_file()]


@pytest.fixture
def secret(aws: AwsStandIn) -> AwsStandIn:
    aws.client().create_secret(Name="airflow/db", SecretString=json.dumps({"password": PASSWORD}))
    return aws


def _per_key_overrides_supported() -> bool:
    """Whether this Airflow reads ``AIRFLOW__SECRETS__BACKEND_KWARG__<KEY>`` at all."""
    for module in ("airflow.sdk._shared.configuration.parser", "airflow._shared.configuration.parser"):
        try:
            if hasattr(__import__(module, fromlist=["_collect_kwarg_env_vars"]), "_collect_kwarg_env_vars"):
                return True
        except ImportError:
            continue
    return False


class TestParsers:
    @pytest.mark.parametrize(
        ("given", "expected"),
        [(True, True), (False, False), ("false", False), ("FALSE", False), ("No", False), ("0", False),
         ("true", True), ("Yes", True), (" 1 ", True), (1, True), (0, False)],
    )
    def test_booleans(self, given: object, expected: bool) -> None:
        assert parse_bool(given, "shared_cache") is expected

    @pytest.mark.parametrize("given", ["", "off", "maybe", "2", 2, None, [], 1.5])
    def test_anything_else_is_not_a_boolean(self, given: object) -> None:
        with pytest.raises(ValueError, match="'shared_cache'"):
            parse_bool(given, "shared_cache")

    @pytest.mark.parametrize(
        ("given", "expected"),
        [
            ('["airflow/*", "team-a/*"]', ("airflow/*", "team-a/*")),
            ("airflow/*, team-a/*", ("airflow/*", "team-a/*")),
            ("airflow/*", ("airflow/*",)),
            (["airflow/*"], ("airflow/*",)),
            ("[]", ()),
            (None, None),
        ],
    )
    def test_lists(self, given: object, expected: object) -> None:
        assert parse_list(given, "allowed_secrets") == expected

    @pytest.mark.parametrize("given", ['["airflow/*"', '{"a": 1}', "[1]", "a,,b", 5, {"a"}])
    def test_anything_else_is_not_a_list(self, given: object) -> None:
        with pytest.raises(ValueError, match="'allowed_secrets'"):
            parse_list(given, "allowed_secrets")

    def test_numbers_and_dicts(self) -> None:
        assert parse_number("60", "cache_ttl_seconds") == 60.0
        assert parse_number(" 2.5 ", "cache_ttl_seconds") == 2.5
        for bad in ("soon", "nan", "inf", True, None, "-1"):
            with pytest.raises(ValueError, match="'cache_ttl_seconds'"):
                parse_number(bad, "cache_ttl_seconds")
        assert parse_dict('{"retries": {"mode": "standard"}}', "config_kwargs") == {"retries": {"mode": "standard"}}
        for bad in ("retries=3", "[1]", 3):
            with pytest.raises(ValueError, match="'config_kwargs'"):
                parse_dict(bad, "config_kwargs")


class TestBackendOptions:
    def test_string_options_mean_what_they_say(
        self, secret: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Regression: ``bool("false")`` was true, and a string list became one glob character class."""
        set_conn(monkeypatch, "db", {"conn_type": "postgres", "password": "{{workato:sm:password:airflow/db}}"})
        backend = SecretsManagerRefsBackend(
            region_name="us-east-1",
            endpoint_url=secret.endpoint_url,
            shared_cache="false",
            resolve_on_server="false",
            allowed_secrets='["airflow/*"]',
            cache_ttl_seconds="60",
            shared_cache_max_entries="50",
        )
        assert backend.cache_settings.shared_cache is False
        assert backend.cache_settings.cache_ttl_seconds == 60.0
        assert backend.cache_settings.shared_cache_max_entries == 50

        assert backend.get_connection("db").password == PASSWORD  # admitted by airflow/*
        assert _worker_cache_files() == []  # shared_cache="false": nothing written to the RAM disk

        monkeypatch.setattr("sys.argv", ["airflow", "scheduler"])  # a server process
        monkeypatch.setenv("_AIRFLOW_PROCESS_CONTEXT", "server")
        assert backend.get_connection("db") is None  # resolve_on_server="false": steps aside

    @pytest.mark.parametrize(
        ("option", "value"),
        [
            ("resolve_on_server", "flase"),
            ("shared_cache", "off"),
            ("resolve_at_parse_time", "maybe"),
            ("cache_ttl_seconds", "five minutes"),
            ("stale_if_error_seconds", "-1"),
            ("allowed_secrets", '["airflow/*"'),
            ("allowed_conn_ids", 7),
            ("allowed_variables", "[1]"),
            ("config_kwargs", "retries=3"),
            ("assume_role_kwargs", "[]"),
            ("region_name", 5),
            ("verify", ""),
            ("shared_cache_max_entries", "0"),
            ("shared_cache_max_entries", "1.5"),
        ],
    )
    def test_unclear_option_is_kept_naming_it_and_fails_a_lookup_closed(
        self, option: str, value: object, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Built without raising: Airflow builds the backend in every process while it imports.
        backend = SecretsManagerRefsBackend(**{option: value})
        assert backend.option_error is not None and repr(option) in backend.option_error
        assert "\n" not in backend.option_error
        set_conn(monkeypatch, "db", {"conn_type": "postgres", "password": "{{workato:sm:password:airflow/db}}"})
        with lookup_fails(BackendOptionError, match=repr(option)):
            backend.get_connection("db")  # this process resolves: it fails closed, naming the option

    @pytest.mark.parametrize(("given", "meant"), [("cache_ttl", "cache_ttl_seconds"), ("regoin_name", "region_name")])
    def test_a_mistyped_name_gets_the_nearest_one(self, given: str, meant: str) -> None:
        error = SecretsManagerRefsBackend(**{given: 60}).option_error
        assert error == f"SecretsManagerRefsBackend backend_kwargs: unknown option {given!r} (did you mean {meant!r}?)"

    def test_a_server_logs_a_bad_option_once_and_steps_aside(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        monkeypatch.setattr("sys.argv", ["airflow", "scheduler"])
        set_conn(monkeypatch, "db", {"conn_type": "postgres", "password": "{{workato:sm:password:airflow/db}}"})
        with caplog.at_level(logging.ERROR, logger="airflow_sm_refs"):
            for _ in range(3):
                assert SecretsManagerRefsBackend(cache_ttl_seconds="abc").get_connection("db") is None
        lines = [r.getMessage() for r in caplog.records if "cache_ttl_seconds" in r.getMessage()]
        assert len(lines) == 1 and "steps aside" in lines[0]

    def test_credential_option_is_named_but_never_shown(self) -> None:
        error = SecretsManagerRefsBackend(aws_secret_access_key=["wJalrXUtnFEMI-not-shown"]).option_error
        assert error is not None and "'aws_secret_access_key'" in error
        assert "wJalrXUtnFEMI" not in error

    def test_json_strings_for_dict_options_and_verify(self) -> None:
        backend = SecretsManagerRefsBackend(
            config_kwargs='{"retries": {"total_max_attempts": 2}}', assume_role_kwargs="{}", verify="FALSE"
        )
        assert backend.aws_settings["config_kwargs"] == {"retries": {"total_max_attempts": 2}}
        assert backend.aws_settings["assume_role_kwargs"] == {}
        assert backend.aws_settings["verify"] is False
        assert SecretsManagerRefsBackend(verify="/etc/ssl/ca.pem").aws_settings["verify"] == "/etc/ssl/ca.pem"

    @pytest.mark.skipif(not _per_key_overrides_supported(), reason="this Airflow has no per-key backend kwargs")
    def test_per_key_override_through_airflow(self, secret: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        configure_backend(monkeypatch, region_name="us-east-1", endpoint_url=secret.endpoint_url)
        monkeypatch.setenv("AIRFLOW__SECRETS__BACKEND_KWARG__SHARED_CACHE", "False")
        monkeypatch.setenv("AIRFLOW__SECRETS__BACKEND_KWARG__ALLOWED_SECRETS", "airflow/*,other/*")
        from airflow_sm_refs._compat import reset_secrets_chain

        reset_secrets_chain()
        set_conn(monkeypatch, "db", {"conn_type": "postgres", "password": "{{workato:sm:password:airflow/db}}"})
        assert get_connection("db").password == PASSWORD
        assert _worker_cache_files() == []
        assert os.environ["AIRFLOW__SECRETS__BACKEND_KWARG__SHARED_CACHE"] == "False"


class TestHookOptions:
    def test_string_options_mean_what_they_say(self) -> None:
        from airflow_sm_refs.hook import SecretsManagerRefsHook

        hook = SecretsManagerRefsHook(
            aws_conn_id=None, shared_cache="no", cache_ttl_seconds="30", allowed_secrets="team-a/*, team-b/*"
        )
        assert hook.cache_settings.shared_cache is False
        assert hook.cache_settings.cache_ttl_seconds == 30.0
        assert hook.policy.allowed_secrets == ("team-a/*", "team-b/*")

    @pytest.mark.parametrize(
        ("option", "value"),
        [("shared_cache", "nope"), ("cache_ttl_seconds", "x"), ("allowed_conn_ids", 3), ("verify", 3), ("config", "[")],
    )
    def test_unclear_option_is_refused_naming_it(self, option: str, value: object) -> None:
        from airflow_sm_refs.hook import SecretsManagerRefsHook

        with pytest.raises((ValueError, TypeError), match=repr(option)):
            SecretsManagerRefsHook(aws_conn_id=None, **{option: value})


def test_every_backend_option_is_in_the_readme_table() -> None:
    """A user finds each option the backend takes in the README's options table (the keys go to docs/configuration.md)."""
    import re
    from pathlib import Path

    from airflow_sm_refs._options import SECRET_OPTIONS
    from airflow_sm_refs.backend import SecretsManagerRefsBackend
    from airflow_sm_refs.stored import PROVIDER_PASSED_ON

    readme = Path(__file__).resolve().parent.parent / "README.md"
    table = readme.read_text().split("## Options (`backend_kwargs`)", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([a-z_]+)`", table))
    wanted = set(SecretsManagerRefsBackend._known_options()) - SECRET_OPTIONS - set(PROVIDER_PASSED_ON) - {"service_config"}
    assert sorted(wanted - documented) == []
