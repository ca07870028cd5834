"""``SecretsManagerBackend`` against the Amazon provider's backend of the same name, its oracle (DESIGN §8).

Both are built from the same options (``region_name`` and ``endpoint_url``
of one moto server, plus the case's) and read the same secrets; what a user
sees must be the same: the connection's class and fields, the Variable's or
config value's string, ``None`` for what is not stored. Where the provider
raises, Airflow asks the next backend; ours answers ``None`` and asks it
itself, so both are recorded as that one answer, and a few cases check that
ours then returns the next backend's connection (``AIRFLOW_CONN_<ID>``),
exactly what Airflow's chain gives with the provider.

The provider parses with its own code on every line (its key aliases,
``extra_conn_words``, URI quirks, port types differ between its versions);
ours hands the same text to an instance of the installed provider's class,
so what this guards is everything in between: the client answering from our
cache tiers (``SecretString`` passed through unchanged, ``SecretBinary`` and
deleted secrets read as the provider reads them, ids AWS could not hold never
asked), the connection class, the expansion of references (nothing changes
in a value without any), and falling through where the provider raises.
References inside stored secrets are the one thing ours adds, checked at the
end: expanded where they resolve, this package's error where they do not.
"""

from __future__ import annotations

import inspect
import itertools
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from standins.aws import ACCESS_DENIED, DECRYPTION_FAILURE, INTERNAL_ERROR, THROTTLING, AwsStandIn, InjectedFault
from tests.conftest import lookup_fails, set_conn

pytestmark = pytest.mark.compat

#: random connections the property checks (fewer on the older lines, which run the whole module six times)
EXAMPLES = int(os.environ.get("PROVIDER_DIFFERENTIAL_EXAMPLES", "15" if os.environ.get("AIRFLOW_SM_REFS_COMPAT_LINE") else "40"))

#: moto's default account, for ARN prefixes
ACCOUNT = "123456789012"
#: what both backends answer when the provider raises: Airflow then asks the next backend
RAISED = "raised: the next backend is asked"
#: the client options of every case (ours: no retries, so a throttle or a 5xx is one answer; the
#: provider's client takes no ``config_kwargs``, see :func:`test_aws_failures`)
CLIENT = {"region_name": "us-east-1", "config_kwargs": {"retries": {"max_attempts": 1, "mode": "standard"}}}


@pytest.fixture
def aws(aws_server: AwsStandIn) -> Iterator[AwsStandIn]:
    """The moto server emptied, its counters at zero, every cached secret forgotten (``conftest.aws``),
    but this process's AWS clients kept: building ours again would be most of a case's time."""
    from airflow_sm_refs.resolver import clear_process_cache
    from airflow_sm_refs.worker_cache import clear_worker_cache, reset_worker_caches
    from tests.conftest import reset_airflow_secrets_cache

    def forget() -> None:
        clear_process_cache()
        reset_worker_caches()
        clear_worker_cache()
        reset_airflow_secrets_cache()

    aws_server.reset()
    forget()
    yield aws_server
    forget()


@pytest.fixture(autouse=True)
def provider_bodies_unlogged() -> None:
    """The provider's own client logs whole response bodies at DEBUG (botocore's); ours filters them
    once it builds a client. Filtered from the start here, so the leak guard judges our code only."""
    from airflow_sm_refs._aws import quiet_secret_bodies

    quiet_secret_bodies()


# --- the connection class Airflow sets on the backends it builds ------------------------------
def _has_connection_class() -> bool:
    from airflow.secrets import BaseSecretsBackend

    return hasattr(BaseSecretsBackend, "_set_connection_class")


#: 3.2+ build backends with a connection class: core's in servers, the Task SDK's in tasks
#: (``initialize_secrets_backends`` of ``airflow.configuration`` and of ``airflow.sdk.configuration``);
#: before that the backend builds core Airflow's ``Connection`` itself
CLASSES = ("server", "task") if _has_connection_class() else ("built-in",)


def set_connection_class(backend: Any, which: str) -> None:
    """Give ``backend`` the connection class Airflow gives it in a server or a task (3.2+; else nothing)."""
    from airflow_sm_refs._compat import use_task_connection_class

    if which == "task":
        use_task_connection_class(backend)
    elif which == "server":
        from airflow.models.connection import Connection

        backend._set_connection_class(Connection)


def provider_backend(aws: AwsStandIn, which: str = CLASSES[0], **options: Any) -> Any:
    """The Amazon provider's own backend, as Airflow builds it from ``backend_kwargs``."""
    from airflow.providers.amazon.aws.secrets.secrets_manager import SecretsManagerBackend

    backend = SecretsManagerBackend(**CLIENT, endpoint_url=aws.endpoint_url, **options)
    set_connection_class(backend, which)
    # Its client is built by its own code once per client option set, then shared (a boto3
    # session of its own per instance would cost a third of a second each).
    key = (aws.endpoint_url, options.get("api_version"), options.get("use_ssl"), os.environ.get("AWS_MAX_ATTEMPTS"))
    if key in _PROVIDER_CLIENTS:
        backend.__dict__["client"] = _PROVIDER_CLIENTS[key]
    else:
        _PROVIDER_CLIENTS[key] = backend.client
    return backend


_PROVIDER_CLIENTS: dict[tuple[Any, ...], Any] = {}


def our_backend(aws: AwsStandIn, which: str = CLASSES[0], **options: Any) -> Any:
    """This package's drop-in, from the same ``backend_kwargs``."""
    from airflow_sm_refs.backend import SecretsManagerBackend

    backend = SecretsManagerBackend(**CLIENT, endpoint_url=aws.endpoint_url, **options)
    assert backend.option_error is None, backend.option_error
    set_connection_class(backend, which)
    return backend


def takes_team_name(backend: Any, method: str) -> bool:
    return "team_name" in inspect.signature(getattr(backend, method)).parameters


# --- what a user sees -----------------------------------------------------------------------
CONN_FIELDS = ("conn_id", "conn_type", "login", "password", "host", "port", "schema", "extra")


def seen(answer: Any) -> Any:
    """A connection as its user reads it (class and fields), a string as is, ``None`` as ``None``."""
    if answer is None or isinstance(answer, str):
        return answer
    view = {"class": f"{type(answer).__module__}.{type(answer).__qualname__}"}
    view.update({name: getattr(answer, name, None) for name in CONN_FIELDS})
    try:
        view["extra_dejson"] = answer.extra_dejson
    except Exception as exc:  # noqa: BLE001 - the same failure on both sides is the same answer
        view["extra_dejson"] = f"raises {type(exc).__name__}"
    return view


def ask(backend: Any, kind: str, key: str, team_name: str | None = None) -> Any:
    """``backend``'s answer for ``key``: what it returns, or :data:`RAISED`."""
    method = {"connection": "get_connection", "variable": "get_variable", "config": "get_config"}[kind]
    args = {"team_name": team_name} if team_name is not None else {}
    try:
        return seen(getattr(backend, method)(key, **args))
    except Exception:  # noqa: BLE001 - Airflow's lookup loops catch Exception and ask the next backend
        return RAISED


def chain_holds(kind: str, key: str) -> Any:
    """What the backends after ours (environment variables, the metastore) hold for ``key``."""
    from airflow_sm_refs.backend import raw_from_chain

    if kind == "config":
        return None
    return raw_from_chain("get_connection" if kind == "connection" else "get_variable", key)


def same_answer(
    aws: AwsStandIn, kind: str, key: str, which: str = CLASSES[0], team_name: str | None = None, **options: Any
) -> Any:
    """The provider's answer for ``key``, after checking that ours is the same; :data:`RAISED` is ``None`` in ours."""
    assert chain_holds(kind, key) is None, "the later backends must hold nothing for this id"
    theirs = ask(provider_backend(aws, which, **options), kind, key, team_name)
    ours = ask(our_backend(aws, which, **options), kind, key, team_name)
    assert ours is not RAISED, "ours raised where no reference is involved"
    assert ours == (None if theirs is RAISED else theirs)
    return theirs


def store(aws: AwsStandIn, secrets: dict[str, Any], region: str = "us-east-1") -> None:
    """Create ``secrets`` in moto: ``str`` as SecretString, ``bytes`` as SecretBinary, anything else as JSON."""
    client = aws.client(region_name=region)
    for name, value in secrets.items():
        if isinstance(value, bytes):
            client.create_secret(Name=name, SecretBinary=value)
        else:
            client.create_secret(Name=name, SecretString=value if isinstance(value, str) else json.dumps(value))


def store_unvalidated(aws: AwsStandIn, name: str, **kwargs: Any) -> None:
    """Create a secret botocore's own checks would refuse to send (an empty SecretString)."""
    import boto3
    from botocore.config import Config

    boto3.client(
        "secretsmanager",
        region_name="us-east-1",
        endpoint_url=f"http://127.0.0.1:{aws.moto_port}",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 - moto's
        config=Config(parameter_validation=False),
    ).create_secret(Name=name, **kwargs)


# --- connections: every format the provider documents, and its corner cases ------------------
@dataclass
class Case:
    """A stored secret (or none), the id looked up, the options both backends get, and the provider's verdict."""

    stored: Any
    options: dict[str, Any] = field(default_factory=dict)
    key: str = "pd_conn"
    name: str = "airflow/connections/pd_conn"
    #: ``found``, ``none`` or ``raises``: what the provider answers on every line; ``None``: it varies
    provider: str | None = "found"
    #: where the secret is stored (both backends are in us-east-1)
    region: str = "us-east-1"


FULL = {
    "conn_type": "postgres",
    "login": "app user",
    "password": "pw:/@?#%-0c1d",
    "host": "db.example.test",
    "port": 5432,
    "schema": "app db",
    "extra": {"sslmode": "require", "options": {"nested": [1, "two", None, True]}},
}

CONNECTION_CASES: dict[str, Case] = {
    # URI form
    "uri, every part URL-encoded": Case(
        "postgres://us%40er%3Ax:p%3Aw%2F%40d%23%25-7f:@h%2Fost.example:5432/sc%2Fh%20ema?sslmode=require&x=a%20b&x2=%26%3D"
    ),
    "uri, no port, schema or query": Case("mysql://user:pass-4e5f@db.example"),
    "uri, login only": Case("sftp://only-login@files.example:2222"),
    "uri, __extra__ JSON": Case(
        "http://api.example:8080/v1?__extra__=" + quote(json.dumps({"a": 1, "b": {"c": [True, None]}}), safe="")
    ),
    "uri, repeated query key": Case("http://api.example?k=1&k=2"),
    "uri, hyphenated scheme": Case("google-cloud-platform://?key_path=%2Fkeys%2Fsa.json&num_retries=5"),
    "uri, empty after the scheme": Case("aws://"),
    "uri, surrounding spaces": Case("  postgres://u:pw-1a2b@h.example:1/s  "),
    "uri, unicode quoted": Case("postgres://%C3%BCser:p%C3%A4ss-9e@h%C3%B6st:5432/d%E4%B8%AD"),
    "uri, no scheme (read as scheme user:)": Case("user:pass-77aa@host.example:1234/schema"),
    "uri, bare word": Case("just-a-word"),
    "uri, port not a number": Case("postgres://u:p@h.example:notaport/s", provider="raises"),
    # JSON with the standard names, and the provider's aliases
    "json, standard names": Case(FULL),
    "json, standard names, port as string": Case({**FULL, "port": "5432"}),
    "json, port not a number": Case({**FULL, "port": "five"}, provider="raises"),
    "json, aliases user/pass/remote_host/database/engine": Case(
        {"engine": "mysql", "user": "u1", "pass": "pw-a1", "remote_host": "r.example", "database": "d1", "port": "3306"}
    ),
    "json, aliases username/key/server/connection_type": Case(
        {"connection_type": "generic", "username": "u2", "key": "pw-b2", "server": "s.example", "schema": "https"}
    ),
    "json, aliases user_name/conn_id": Case({"conn_id": "sftp", "user_name": "u3", "password": "pw-c3", "host": "h3"}),
    "json, first alias in the secret wins": Case(
        {"conn_type": "generic", "user": "first", "login": "second", "key": "k-1", "pass": "p-2"}
    ),
    "json, extra as a JSON string": Case(
        {"conn_type": "generic", "host": "h.example", "extra": json.dumps({"a": 1, "b": "two"})}
    ),
    # core's Connection refuses these (3.0+), the Task SDK's and 2.x's take them
    "json, extra a string that is not JSON": Case({"conn_type": "generic", "extra": "not json at all"}, provider=None),
    "json, extra a list": Case({"conn_type": "generic", "extra": [1, 2]}, provider=None),
    "json, nulls and unknown keys": Case({"conn_type": "generic", "login": None, "description": "dropped", "foo": "bar"}),
    "json, no conn_type": Case({"login": "u4", "password": "pw-d4", "host": "h4.example"}),
    "json, only unknown keys": Case({"foo": "bar"}),
    "json, unicode and escapes": Case(
        {"conn_type": "generic", "login": "üser", "password": "p\\w\"'-e5", "extra": {"path": "C:\\dir\\f", "q": "\u00e9\u4e2d"}}
    ),
    "json, padded with spaces": Case("  " + json.dumps(FULL) + "\n"),
    "json, a list (read as a URI)": Case(json.dumps([FULL])),
    "json, near AWS's 64 KiB limit": Case({**FULL, "extra": {"blob": "x0-" * 21_000}}),
    # what the provider skips or fails on
    "json that does not parse": Case('{"conn_type": "generic", "password": "pw-f6", ', provider="raises"),
    "only whitespace": Case("   ", provider="raises"),
    "SecretBinary": Case(b"\x00binary-conn\xff", provider="none"),
    "not stored": Case(None, provider="none"),
}


def _store_case(aws: AwsStandIn, case: Case) -> None:
    if case.stored is not None:
        store(aws, {case.name: case.stored}, case.region)


@pytest.mark.parametrize("which", CLASSES)
@pytest.mark.parametrize("case", CONNECTION_CASES.values(), ids=CONNECTION_CASES.keys())
def test_connection_formats(aws: AwsStandIn, case: Case, which: str) -> None:
    _store_case(aws, case)
    theirs = same_answer(aws, "connection", case.key, which, **case.options)
    if case.provider is not None:
        verdict = "raises" if theirs is RAISED else ("none" if theirs is None else "found")
        assert verdict == case.provider


def test_empty_secret_string(aws: AwsStandIn) -> None:
    """botocore refuses to send an empty SecretString; sent anyway, no value is kept (AWSCURRENT names
    no version): not stored, for a connection as for a Variable."""
    store_unvalidated(aws, "airflow/connections/pd_empty", SecretString="")
    store_unvalidated(aws, "airflow/variables/pd_empty", SecretString="")
    assert same_answer(aws, "connection", "pd_empty") is None
    assert same_answer(aws, "variable", "pd_empty") is None


def test_secret_without_a_value_scheduled_for_deletion_or_missing(aws: AwsStandIn) -> None:
    client = aws.client()
    client.create_secret(Name="airflow/connections/pd_no_value")
    store(aws, {"airflow/connections/pd_deleted": FULL, "airflow/variables/pd_deleted": "v-deleted-1"})
    store(aws, {"airflow/variables/pd_binary": b"binary-variable", "airflow/config/pd_binary": b"binary-option"})
    client.delete_secret(SecretId="airflow/connections/pd_deleted", RecoveryWindowInDays=7)
    client.delete_secret(SecretId="airflow/variables/pd_deleted", RecoveryWindowInDays=7)
    for kind, key in [
        ("connection", "pd_no_value"),
        ("connection", "pd_deleted"),
        ("variable", "pd_deleted"),
        ("variable", "pd_binary"),
        ("config", "pd_binary"),
        ("connection", "pd_missing"),
        ("variable", "pd_missing"),
        ("config", "pd_missing"),
    ]:
        assert same_answer(aws, kind, key) is None, (kind, key)


# --- the options -----------------------------------------------------------------------------
OPTION_CASES: dict[str, Case] = {
    "default prefix": Case(FULL),
    "prefix with a trailing sep": Case(FULL, {"connections_prefix": "airflow/connections/"}),
    "prefix with trailing seps": Case(FULL, {"connections_prefix": "airflow/connections//"}),
    "sep -": Case(FULL, {"connections_prefix": "airflow-conns", "sep": "-"}, name="airflow-conns-pd_conn"),
    "sep - with a trailing one": Case(FULL, {"connections_prefix": "airflow-conns-", "sep": "-"}, name="airflow-conns-pd_conn"),
    "sep _": Case(FULL, {"connections_prefix": "conns_", "sep": "_"}, name="conns_pd_conn"),
    "sep :, an ARN prefix": Case(
        FULL, {"connections_prefix": f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret", "sep": ":"}, name="pd_conn"
    ),
    "ARN prefix, sep /": Case(
        FULL, {"connections_prefix": f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:team/conns"}, name="team/conns/pd_conn"
    ),
    # the provider's client asks its own region only, whatever region an ARN names
    "ARN prefix in another region": Case(
        FULL,
        {"connections_prefix": f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:conns"},
        name="conns/pd_conn",
        region="eu-west-1",
        provider="none",
    ),
    "ARN prefix in another region, sep :": Case(
        FULL,
        {"connections_prefix": f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret", "sep": ":"},
        name="pd_conn",
        region="eu-west-1",
        provider="none",
    ),
    "empty prefix": Case(FULL, {"connections_prefix": ""}, name="pd_conn"),
    "empty prefix, the id holds slashes": Case(FULL, {"connections_prefix": ""}, key="team/pd_conn", name="team/pd_conn"),
    "empty prefix, the id an ARN": Case(
        FULL, {"connections_prefix": ""}, key=f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:pd/conn", name="pd/conn"
    ),
    "empty prefix, the id an ARN in another region": Case(
        FULL,
        {"connections_prefix": ""},
        key=f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:pd/conn",
        name="pd/conn",
        region="eu-west-1",
        provider="none",
    ),
    "empty sep": Case(FULL, {"sep": ""}, name="airflow/connectionspd_conn"),
    "no prefix (None)": Case(FULL, {"connections_prefix": None}, provider="none"),
    "other prefix": Case(FULL, {"connections_prefix": "elsewhere"}, provider="none"),
    "lookup pattern matches": Case(FULL, {"connections_lookup_pattern": r"^pd_"}),
    "lookup pattern, case-insensitive": Case(FULL, {"connections_lookup_pattern": r"^PD_C"}),
    "lookup pattern matches a prefix only (re.match)": Case(FULL, {"connections_lookup_pattern": r"pd"}),
    "lookup pattern does not match": Case(FULL, {"connections_lookup_pattern": r"^prod_"}, provider="none"),
    "lookup pattern anchored later (re.match)": Case(FULL, {"connections_lookup_pattern": r"conn"}, provider="none"),
    "extra_conn_words, every field": Case(
        {"kind": "postgres", "account": "u5", "secret_pw": "pw-g7", "endpoint": "e.example", "port_no": 6543, "db": "d5", "opts": {"x": 1}},
        {
            "extra_conn_words": {
                "conn_type": ["kind"],
                "login": ["account"],
                "password": ["secret_pw"],
                "host": ["endpoint"],
                "port": ["port_no"],
                "schema": ["db"],
                "extra": ["opts"],
            }
        },
    ),
    "extra_conn_words, the old key user": Case(
        {"conn_type": "generic", "account": "u6", "password": "pw-h8"}, {"extra_conn_words": {"user": ["account"]}}
    ),
    "extra_conn_words, a default alias first": Case(
        {"conn_type": "generic", "account": "u7", "user": "u8"}, {"extra_conn_words": {"user": ["account"]}}
    ),
    "extra_conn_words, URI form untouched": Case("http://u9:pw-i9@h.example", {"extra_conn_words": {"user": ["account"]}}),
    "deprecated options": Case(FULL, {"full_url_mode": False, "are_secret_values_urlencoded": False}),
    "client options": Case(FULL, {"api_version": "2017-10-17", "use_ssl": False}),
}


@pytest.mark.parametrize("case", OPTION_CASES.values(), ids=OPTION_CASES.keys())
def test_connection_options(aws: AwsStandIn, case: Case) -> None:
    _store_case(aws, case)
    theirs = same_answer(aws, "connection", case.key, **case.options)
    assert ("none" if theirs is None else "found") == case.provider


def test_sep_colon_names_what_aws_cannot_hold_and_is_never_asked(aws: AwsStandIn) -> None:
    """``airflow/connections:pd_conn`` is no name AWS lets a secret have (``:``, spaces and non-ASCII are
    not in its alphabet): the provider asks and is told "not found"; ours answers the same without asking.
    (moto is laxer than AWS and would store such names, so none is stored here.)"""
    for options, key in [({"sep": ":"}, "pd_conn"), ({}, "has space"), ({}, "caf\u00e9")]:
        assert same_answer(aws, "connection", key, **options) is None
        aws.reset_counts()
        assert our_backend(aws, **options).get_connection(key) is None
        assert aws.calls() == 0


VARIABLE_VALUES = {
    "plain": "hello world",
    "JSON object": json.dumps({"a": 1, "b": [True, None], "c": "x"}),
    "JSON list": "[1, 2, 3]",
    "JSON string": '"quoted"',
    "JSON number": "42",
    "JSON with escapes": json.dumps({"path": "C:\\dir", "q": "\"'\u00e9"}),
    "JSON-looking, does not parse": '{"a": ',
    "braces, not a reference": "{{ ds }} and {{x}}",
    "spaces kept": "  padded value \n",
    "unicode": "\u00fc\u4e2d\U0001f600",
    "URI-looking": "postgres://u:p@h:5432/d",
}


@pytest.mark.parametrize("value", VARIABLE_VALUES.values(), ids=VARIABLE_VALUES.keys())
def test_variable_and_config_values(aws: AwsStandIn, value: str) -> None:
    store(aws, {"airflow/variables/pd_var": value, "airflow/config/pd_option": value})
    assert same_answer(aws, "variable", "pd_var") == value
    assert same_answer(aws, "config", "pd_option") == value


@pytest.mark.parametrize(
    ("options", "variable", "config"),
    [
        ({}, "found", "found"),
        ({"variables_prefix": "airflow/variables/", "config_prefix": "airflow/config/"}, "found", "found"),
        ({"variables_prefix": None, "config_prefix": None}, "none", "none"),
        ({"variables_prefix": "", "config_prefix": ""}, "found bare", "found bare"),
        ({"variables_prefix": "vars", "config_prefix": "cfg", "sep": "-"}, "found sep", "found sep"),
        ({"variables_lookup_pattern": "^PD_", "config_lookup_pattern": "^pd_opt"}, "found", "found"),
        ({"variables_lookup_pattern": "^other", "config_lookup_pattern": "other"}, "none", "none"),
        ({"connections_prefix": None, "variables_lookup_pattern": "pd"}, "found", "found"),
    ],
    ids=["defaults", "trailing sep", "None", "empty", "sep -", "patterns match", "patterns do not match", "others off"],
)
def test_variable_and_config_options(aws: AwsStandIn, options: dict[str, Any], variable: str, config: str) -> None:
    store(
        aws,
        {
            "airflow/variables/pd_var": "v-default",
            "airflow/config/pd_option": "c-default",
            "pd_var": "v-bare",
            "pd_option": "c-bare",
            "vars-pd_var": "v-sep",
            "cfg-pd_option": "c-sep",
        },
    )
    expected = {"found": "default", "found bare": "bare", "found sep": "sep", "none": None}
    v, c = expected[variable], expected[config]
    assert same_answer(aws, "variable", "pd_var", **options) == (v and f"v-{v}")
    assert same_answer(aws, "config", "pd_option", **options) == (c and f"c-{c}")


@pytest.mark.parametrize(
    "fault", [ACCESS_DENIED, DECRYPTION_FAILURE, INTERNAL_ERROR, THROTTLING], ids=lambda f: f.code
)
def test_aws_failures(aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch, fault: InjectedFault) -> None:
    """The provider returns ``None`` for some failures and raises for others: Airflow asks the next backend either way."""
    store(aws, {"airflow/connections/pd_conn": FULL, "airflow/variables/pd_var": "v-1"})
    # The provider's client takes no retry options (config_kwargs only reach its session): botocore's
    # environment does, so a throttle or a 5xx is one answer there too.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with aws.failing(fault):
        assert same_answer(aws, "connection", "pd_conn") in (None, RAISED)
        assert same_answer(aws, "variable", "pd_var") in (None, RAISED)


# --- where the provider answers None (or raises), ours gives what Airflow's chain would next -------
ENV_CONN = {"conn_type": "generic", "login": "env-user", "password": "env-pw-3c4d", "host": "env.example", "port": 8443}


@pytest.mark.parametrize(
    ("stored", "options"),
    [
        (None, {}),
        (b"binary", {}),
        ('{"broken": ', {}),
        (FULL, {"connections_lookup_pattern": "^prod_"}),
        (FULL, {"connections_prefix": None}),
    ],
    ids=["not stored", "SecretBinary", "JSON that does not parse", "lookup pattern does not match", "prefix None"],
)
def test_next_backend_answers_where_the_provider_does_not(
    aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch, stored: Any, options: dict[str, Any]
) -> None:
    if stored is not None:
        store(aws, {"airflow/connections/pd_env": stored})
    set_conn(monkeypatch, "pd_env", ENV_CONN)
    theirs = ask(provider_backend(aws, **options), "connection", "pd_env")
    assert theirs in (None, RAISED)
    conn = our_backend(aws, **options).get_connection("pd_env")
    env = chain_holds("connection", "pd_env")
    assert seen(conn) == seen(env)
    assert (conn.login, conn.password, conn.host, conn.port) == ("env-user", "env-pw-3c4d", "env.example", 8443)


def test_the_trigger_runners_lookup(aws: AwsStandIn) -> None:
    """``aget_connection`` (the trigger runner's event loop) answers what the provider's ``get_connection`` does."""
    import asyncio

    secrets = {
        "pd_json": {**FULL, "port": "5432"},
        "pd_uri": CONNECTION_CASES["uri, every part URL-encoded"].stored,
        "pd_bad": '{"broken": ',
        "pd_binary": b"bin",
    }
    store(aws, {f"airflow/connections/{key}": value for key, value in secrets.items()})
    for which in CLASSES:
        provider, ours = provider_backend(aws, which), our_backend(aws, which)
        for key in (*secrets, "pd_missing"):
            theirs = ask(provider, "connection", key)
            assert seen(asyncio.run(ours.aget_connection(key))) == (None if theirs is RAISED else theirs), key


# --- team-scoped names (providers with ``TEAM_SEP``) ----------------------------------------------
def _team_sep() -> str | None:
    from airflow.providers.amazon.aws.secrets import secrets_manager

    return getattr(secrets_manager, "TEAM_SEP", None)


needs_teams = pytest.mark.skipif(_team_sep() is None, reason="this line's provider has no team-scoped names")


@needs_teams
@pytest.mark.parametrize("multi_team", [True, False], ids=["multi_team", "single team"])
def test_team_scoped_names(aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch, multi_team: bool) -> None:
    monkeypatch.setenv("AIRFLOW__CORE__MULTI_TEAM", str(multi_team))
    sep = _team_sep()
    store(
        aws,
        {
            f"airflow/connections/team_a{sep}pd_conn": {**FULL, "login": "team-a-user"},
            "airflow/connections/pd_conn": {**FULL, "login": "global-user"},
            "airflow/connections/pd_global": FULL,
            f"airflow/connections/pd{sep}dashed": FULL,
            f"airflow/variables/team_a{sep}pd_var": "v-team-a",
            "airflow/variables/pd_var": "v-global",
            f"airflow/variables/pd{sep}dashed": "v-dashed",
            f"airflow/config/pd{sep}dashed": "c-dashed",
        },
    )
    provider = provider_backend(aws)
    assert takes_team_name(provider, "get_connection") and takes_team_name(provider, "get_variable")
    # the team's own name first, then the shared one; another team's never
    assert same_answer(aws, "connection", "pd_conn", team_name="team_a")["login"] == "team-a-user"
    assert same_answer(aws, "connection", "pd_conn", team_name="team_b")["login"] == "global-user"
    assert same_answer(aws, "connection", "pd_conn")["login"] == "global-user"
    assert same_answer(aws, "connection", "pd_global", team_name="team_a") is not None
    assert same_answer(aws, "variable", "pd_var", team_name="team_a") == "v-team-a"
    assert same_answer(aws, "variable", "pd_var", team_name="team_b") == "v-global"
    # an id holding the team separator is refused in multi-team mode, by every getter
    dashed = f"pd{sep}dashed"
    expected = None if multi_team else "found"
    for kind in ("connection", "variable", "config"):
        for team in (None, "team_a") if kind != "config" else (None,):
            answer = same_answer(aws, kind, dashed, team_name=team)
            assert (answer if answer is None else "found") == expected, (kind, team)


@pytest.mark.skipif(_team_sep() is not None, reason="checked by test_team_scoped_names on this line")
def test_team_name_where_the_provider_has_no_teams(aws: AwsStandIn) -> None:
    """A provider without team-scoped names reads the shared name whatever team asks (where it takes ``team_name``)."""
    store(aws, {"airflow/connections/pd_conn": FULL, "airflow/connections/team_a--pd_conn": {**FULL, "login": "never"}})
    provider = provider_backend(aws)
    team = "team_a" if takes_team_name(provider, "get_connection") else None
    assert same_answer(aws, "connection", "pd_conn", team_name=team)["login"] == FULL["login"]


# --- generated connections -----------------------------------------------------------------
#: the provider's own words for each field (``_standardize_secret_keys``), and one extra_conn_words word each
ALIASES = {
    "login": ["login", "user", "username", "user_name", "account_name"],
    "password": ["password", "pass", "key", "secret_word"],
    "host": ["host", "remote_host", "server", "endpoint"],
    "port": ["port", "port_number"],
    "schema": ["database", "schema", "db_name"],
    "conn_type": ["conn_type", "conn_id", "connection_type", "engine", "kind"],
    "extra": ["extra", "options"],
}
EXTRA_CONN_WORDS = {
    "user": ["account_name"],
    "password": ["secret_word"],
    "host": ["endpoint"],
    "port": ["port_number"],
    "schema": ["db_name"],
    "conn_type": ["kind"],
    "extra": ["options"],
}

_PLAIN = "abcXYZ019_.-~"
#: characters a URI must quote, JSON must escape, or that are not ASCII
_SPECIAL = ":/@?#&=+%;, \"'\\[]{}$!*()\u00e9\u00fc\u4e2d\U0001f600\t"
#: every generated value holds at least one special character (which also keeps it from reading like a log word)
values = st.builds(
    lambda head, special, tail: head + special + tail,
    st.text(_PLAIN + _SPECIAL, max_size=8),
    st.sampled_from(list(_SPECIAL)),
    st.text(_PLAIN + _SPECIAL, max_size=8),
)
json_leaves = st.one_of(values, st.integers(-(10**6), 10**6), st.booleans(), st.none())
extras = st.dictionaries(
    st.text(_PLAIN, min_size=1, max_size=6),
    st.one_of(
        json_leaves,
        st.lists(json_leaves, max_size=2),
        st.dictionaries(st.text(_PLAIN, min_size=1, max_size=4), json_leaves, max_size=2),
    ),
    max_size=3,
)
CONN_TYPES = ["postgres", "mysql", "sftp", "google_cloud_platform", "my-custom"]


@st.composite
def stored_connections(draw: st.DrawFn) -> str:
    """A connection as someone would store it for the provider: a URI, or JSON with any of its key words."""
    login, password, host, schema = (draw(st.none() | values) for _ in range(4))
    port = draw(st.none() | st.integers(1, 65535))
    extra = draw(st.none() | extras)
    conn_type = draw(st.sampled_from(CONN_TYPES))
    if draw(st.booleans()):  # URI
        auth = ""
        if login is not None or password is not None:
            auth = quote(login or "", safe="") + (":" + quote(password, safe="") if password is not None else "") + "@"
        uri = f"{conn_type.replace('_', '-')}://{auth}{quote(host or '', safe='')}"
        uri += f":{port}" if port is not None else ""
        uri += "/" + quote(schema, safe="") if schema is not None else ""
        if extra:
            flat = all(isinstance(v, str) for v in extra.values())
            uri += "?" + (urlencode(extra) if flat and draw(st.booleans()) else urlencode({"__extra__": json.dumps(extra)}))
        return uri
    document: dict[str, Any] = {}
    for name, value in [("conn_type", conn_type), ("login", login), ("password", password), ("host", host), ("schema", schema)]:
        if value is not None or draw(st.booleans()):
            document[draw(st.sampled_from(ALIASES[name]))] = value
    if port is not None:
        document[draw(st.sampled_from(ALIASES["port"]))] = draw(st.sampled_from([port, str(port)]))
    if extra is not None:
        document[draw(st.sampled_from(ALIASES["extra"]))] = draw(st.sampled_from([extra, json.dumps(extra)]))
    items = list(document.items())
    order = draw(st.permutations(range(len(items))))
    return json.dumps(dict(items[i] for i in order), ensure_ascii=draw(st.booleans()))


def test_generated_connections(aws: AwsStandIn, caplog: pytest.LogCaptureFixture) -> None:
    # botocore's DEBUG lines for every request would cost more than the lookups
    caplog.set_level("WARNING", logger="botocore")
    options = {"extra_conn_words": EXTRA_CONN_WORDS}
    pairs = {which: (provider_backend(aws, which, **options), our_backend(aws, which, **options)) for which in CLASSES}
    serial = itertools.count()
    verdicts: dict[str, int] = {"found": 0, "none": 0, "raises": 0}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(secret=stored_connections(), which=st.sampled_from(CLASSES))
    def check(secret: str, which: str) -> None:
        key = f"pd_gen_{next(serial)}"
        store(aws, {f"airflow/connections/{key}": secret})
        provider, ours = pairs[which]
        theirs = ask(provider, "connection", key)
        mine = ask(ours, "connection", key)
        assert mine == (None if theirs is RAISED else theirs)
        verdicts["raises" if theirs is RAISED else ("none" if theirs is None else "found")] += 1

    check()
    assert verdicts["found"] > 0, verdicts


# --- references inside stored secrets: what ours adds ----------------------------------------------
TOKEN = "tok-5e6f7a8b9c"
DB_PASSWORD = "db-pw-1a2b3c4d5e"


def _with(answer: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**answer, **changes}


@pytest.mark.parametrize("which", CLASSES)
def test_references_are_expanded_in_what_the_provider_answers(aws: AwsStandIn, which: str) -> None:
    ref_pw, ref_token = "{{workato:sm:password:pd/db}}", "{{workato:sm:token:pd/api}}"
    store(
        aws,
        {
            "pd/db": {"password": DB_PASSWORD},
            "pd/api": {"token": TOKEN},
            "airflow/connections/pd_json": {
                **FULL,
                "password": ref_pw,
                "extra": {"headers": {"Authorization": f"Bearer {ref_token}"}, "n": 1},
            },
            "airflow/connections/pd_uri": (
                f"postgres://app:{quote(ref_pw, safe='')}@db.example:5432/app?token={quote(ref_token, safe='')}"
            ),
            "airflow/connections/pd_alias": {"engine": "mysql", "user": "app", "pass": ref_pw, "extra": json.dumps({"t": ref_token})},
            "airflow/variables/pd_var": f"Bearer {ref_token}",
            "airflow/variables/pd_json_var": json.dumps({"token": ref_token, "n": [1, ref_pw]}),
            "airflow/config/pd_option": ref_pw,
        },
    )
    provider, ours = provider_backend(aws, which), our_backend(aws, which)
    for key, extra in [
        ("pd_json", {"headers": {"Authorization": f"Bearer {TOKEN}"}, "n": 1}),
        ("pd_uri", {"token": TOKEN}),
        ("pd_alias", {"t": TOKEN}),
    ]:
        theirs, mine = ask(provider, "connection", key), ask(ours, "connection", key)
        assert theirs["password"] == ref_pw  # the provider hands the reference out as text
        assert mine["password"] == DB_PASSWORD
        assert mine["extra_dejson"] == extra
        unchanged = ("class", "conn_id", "conn_type", "login", "host", "port", "schema")
        assert {k: mine[k] for k in unchanged} == {k: theirs[k] for k in unchanged}
    assert ours.get_variable("pd_var") == f"Bearer {TOKEN}"
    assert json.loads(ours.get_variable("pd_json_var")) == {"token": TOKEN, "n": [1, DB_PASSWORD]}
    assert ours.get_config("pd_option") == DB_PASSWORD


@pytest.mark.parametrize(
    ("stored", "error", "named"),
    [
        ({"conn_type": "generic", "password": "{{workato:sm:nokey:pd/api}}"}, "SecretKeyError", "password"),
        ({"conn_type": "generic", "extra": {"h": "{{workato:sm:token:pd/missing}}"}}, "SecretNotFoundError", "extra"),
        ("http://u:" + quote("{{workato:sm:}}", safe="") + "@h.example", "ReferenceSyntaxError", "password"),
    ],
    ids=["missing key", "missing secret in extra", "malformed, URI form"],
)
def test_a_broken_reference_in_a_stored_connection_is_our_error(
    aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch, stored: Any, error: str, named: str
) -> None:
    import airflow_sm_refs

    store(aws, {"pd/api": {"token": TOKEN}, "airflow/connections/pd_broken": stored})
    # the next backend holds the id too: it must not be asked (the lookup fails closed)
    set_conn(monkeypatch, "pd_broken", ENV_CONN)
    assert ask(provider_backend(aws), "connection", "pd_broken") not in (None, RAISED)
    with lookup_fails(getattr(airflow_sm_refs, error)) as raised:
        our_backend(aws).get_connection("pd_broken")
    assert "'pd_broken'" in str(raised.value) and named in str(raised.value)


def test_a_broken_reference_in_a_stored_variable_or_config_value_is_our_error(aws: AwsStandIn) -> None:
    from airflow_sm_refs import SecretKeyError, SecretNotFoundError

    store(
        aws,
        {
            "pd/api": {"token": TOKEN},
            "airflow/variables/pd_var": "{{workato:sm:nokey:pd/api}}",
            "airflow/config/pd_option": "{{workato:sm::pd/gone}}",
        },
    )
    with lookup_fails(SecretKeyError, match="pd_var"):
        our_backend(aws).get_variable("pd_var")
    with lookup_fails(SecretNotFoundError, match="pd_option"):
        our_backend(aws).get_config("pd_option")


# --- through Airflow's own lookup, each configured as [secrets] backend -----------------------------
@contextmanager
def configured(monkeypatch: pytest.MonkeyPatch, backend: str, **kwargs: Any) -> Iterator[None]:
    from tests.conftest import reset_airflow_secrets_cache

    monkeypatch.setenv("AIRFLOW__SECRETS__BACKEND", backend)
    monkeypatch.setenv("AIRFLOW__SECRETS__BACKEND_KWARGS", json.dumps(kwargs))
    reset_airflow_secrets_cache()
    try:
        yield
    finally:
        monkeypatch.delenv("AIRFLOW__SECRETS__BACKEND")
        monkeypatch.delenv("AIRFLOW__SECRETS__BACKEND_KWARGS")
        reset_airflow_secrets_cache()


def test_through_airflows_lookup(aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_sm_refs._compat import base_hook, not_found_errors

    store(
        aws,
        {
            "airflow/connections/pd_json": FULL,
            "airflow/connections/pd_uri": "mysql://u:pw-j1@h.example:3306/d?x=1",
            "airflow/connections/pd_bad": '{"broken": ',
            "airflow/connections/pd_binary": b"bin",
        },
    )
    for key in ("pd_bad", "pd_binary", "pd_env"):
        set_conn(monkeypatch, key, ENV_CONN)
    keys = ("pd_json", "pd_uri", "pd_bad", "pd_binary", "pd_env", "pd_missing")

    def answers() -> dict[str, Any]:
        found = {}
        for key in keys:
            try:
                found[key] = seen(base_hook().get_connection(key))
            except not_found_errors():
                found[key] = "not found"
        return found

    kwargs = {**CLIENT, "endpoint_url": aws.endpoint_url}
    with configured(monkeypatch, "airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend", **kwargs):
        theirs = answers()
    with configured(monkeypatch, "airflow_sm_refs.backend.SecretsManagerBackend", **kwargs):
        ours = answers()
    assert ours == theirs
    assert theirs["pd_bad"]["login"] == theirs["pd_env"]["login"] == "env-user"
    assert theirs["pd_missing"] == "not found"
