"""The secrets backend: connections whose fields hold references, resolved on the worker."""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.secrets import BaseSecretsBackend

from airflow_sm_refs._aws import AWS_CONNECTION_KWARGS
from airflow_sm_refs._compat import (
    AUTHORITATIVE_DENY,
    PARSE_ERRORS_MAY_ABORT,
    ProcessRole,
    call_backend,
    configured_secrets_backend,
    connection_class_of,
    expand_before_connection_tests,
    connections_call_the_supervisor_when_built,
    last_resort_connection,
    last_resort_variable,
    later_backends,
    prints_configuration,
    process_role,
)
from airflow_sm_refs._exceptions import (
    BackendOptionError,
    ReferenceNotAllowedError,
    SecretFetchError,
    SecretLookupAborted,
    SecretReferenceError,
)
from airflow_sm_refs.stored import StoredSecrets
from airflow_sm_refs._options import parse_bool, parse_dict, parse_number, parse_str, parse_verify, unknown_option

if TYPE_CHECKING:
    from airflow_sm_refs.expand import Expansion
    from airflow_sm_refs.resolver import SecretResolver

__all__ = ["SecretsManagerBackend", "SecretsManagerRefsBackend", "is_server_process"]

log = logging.getLogger("airflow_sm_refs")

# Per thread and per asyncio task: the lookups this backend is in the middle
# of, so that a backend later in the chain that calls back into the chain
# cannot make us recurse.
_in_progress: ContextVar[frozenset[str]] = ContextVar("airflow_sm_refs_in_progress", default=frozenset())


def is_server_process() -> bool:
    """Whether this process steps aside by default: a server, a DAG parser or Airflow's own CLI.

    Decided from what the process is (:func:`airflow_sm_refs._compat.process_role`),
    on every supported Airflow line.
    """
    return not process_role().resolves


@contextmanager
def _guard(key: str) -> Iterator[bool]:
    active = _in_progress.get()
    if key in active:
        yield False
        return
    token = _in_progress.set(active | {key})
    try:
        yield True
    finally:
        _in_progress.reset(token)


_FAIL_CLOSED_ROLES = frozenset(role for role in ProcessRole if role.resolves)

#: option errors already logged in this process (Airflow builds backends often: one line each)
_OPTION_ERRORS_LOGGED: set[str] = set()
# A reference met while a DAG file is parsed must not be swallowed either: the
# next backend would hand the raw token to the file. Its error becomes the
# file's import error (the 3.x parser catches BaseException around the import).
# Airflow 2's processor does not, and would die of it: there the error is logged
# and Airflow's loop goes on to hand the file the stored reference (no value).
_PARSE_TIME_FAIL_CLOSED_ROLES = _FAIL_CLOSED_ROLES | ({ProcessRole.PARSER} if PARSE_ERRORS_MAY_ABORT else set())

#: what the backend does in this process with a value that holds references
_RESOLVE, _STEP_ASIDE, _REFUSE = "resolve", "step aside", "refuse"

_DICT_OPTIONS = frozenset({"assume_role_kwargs", "config_kwargs", "service_config", "session_kwargs"})


def parse_aws_option(name: str, value: Any) -> Any:
    """One AWS connection option, parsed strictly (a per-key override arrives as a string)."""
    if name in _DICT_OPTIONS:
        return parse_dict(value, name)
    if name == "verify":
        return parse_verify(value, name)
    return parse_str(value, name)


def raw_from_chain(method: str, key: str, team_name: str | None = None, backends: list[Any] | None = None) -> Any:
    """The raw connection or variable ``key`` from the secrets chain, skipping this package's backend.

    Asks every backend of the chain that is not a :class:`SecretsManagerRefsBackend`
    in turn, then the chain's last resort (the supervisor, on 3.0 and 3.1.0).
    An error of ours from a backend stops the search; any other is logged and
    the next backend asked, as Airflow does.

    :param method: ``get_connection`` or ``get_variable``
    :param backends: the backends to ask; ``None``: the current chain, less this package's backends
    """
    if backends is None:
        # This package's backends are asked only for what they read whole from Secrets Manager.
        backends = [
            StoredOnly(b) if isinstance(b, SecretsManagerRefsBackend) else b
            for b in later_backends()
            if not isinstance(b, SecretsManagerRefsBackend) or any(b.stored.enabled.values())
        ]
    for backend in backends:
        try:
            found = call_backend(backend, method, key, team_name)
        except SecretReferenceError:
            raise
        except Exception:
            log.debug("%s.%s(%r) failed; trying the next backend", type(backend).__name__, method, key, exc_info=True)
            continue
        if found is not None:
            return found
    if method == "get_connection":
        return last_resort_connection(key, backends)
    return last_resort_variable(key, backends)


class StoredNotRead(Exception):  # noqa: N818 - what check reports for a stored secret it could not use
    """Why a stored secret gave nothing although it may exist (denied, unreadable, not admitted); names no value."""


class StoredOnly:
    """A backend of this package as a source of raw values: what it reads whole from Secrets Manager, unexpanded.

    :param explain: raise :class:`StoredNotRead` where nothing came back for a reason other than
        "not found" (``check`` shows it), instead of answering ``None``
    """

    def __init__(self, backend: SecretsManagerRefsBackend, *, explain: bool = False) -> None:
        self.backend = backend
        self.explain = explain

    def _get(self, kind: str, key: str, team_name: str | None) -> Any:
        found = self.backend._stored(kind, key, team_name)
        if found is None and self.explain:
            why = self.backend.stored.why_not.get(self.backend.stored.secret_id(kind, key) or key)
            if why is not None:
                raise StoredNotRead(why)
        return found

    def get_connection(self, conn_id: str, team_name: str | None = None) -> Any:
        return self._get("connection", conn_id, team_name)

    def get_variable(self, key: str, team_name: str | None = None) -> Any:
        return self._get("variable", key, team_name)


def _json_holds_reference(text: str) -> bool:
    """Whether ``text`` holds a reference, also inside JSON string values (behind escapes)."""
    from airflow_sm_refs.expand import json_may_hold_references, map_json_strings
    from airflow_sm_refs.reference import has_reference

    if has_reference(text):
        return True
    if not json_may_hold_references(text):
        return False
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        return False
    found: list[bool] = []
    map_json_strings(document, "", lambda value, _path: found.append(has_reference(value)))
    return any(found)


def _holds_references(raw: Any, kind: str) -> bool:
    """Whether a raw connection or variable value holds anything that claims to be a reference."""
    from airflow_sm_refs.expand import CONNECTION_FIELDS
    from airflow_sm_refs.reference import has_reference

    if kind == "variable":
        return isinstance(raw, str) and _json_holds_reference(raw)
    if any(isinstance(v, str) and has_reference(v) for v in (getattr(raw, f, None) for f in CONNECTION_FIELDS)):
        return True
    extra = getattr(raw, "extra", None)
    return isinstance(extra, str) and _json_holds_reference(extra)


class SecretsManagerRefsBackend(BaseSecretsBackend):
    """
    Resolves ``{{workato:sm:...}}`` references in connections and variables from AWS Secrets Manager.

    Configurable via ``airflow.cfg``:

    .. code-block:: ini

        [secrets]
        backend = airflow_sm_refs.backend.SecretsManagerRefsBackend
        backend_kwargs = {"region_name": "us-east-1", "cache_ttl_seconds": 300}

    The connection itself is found in the backends that come after this one
    (environment variables, then the metastore through the Execution API);
    this backend only expands the references in it.

    :param region_name: region for plain secret names and the default client. ``None``: boto3's default.
    :param endpoint_url: Secrets Manager endpoint. ``None``: AWS's public endpoint.
    :param role_arn: role to assume for every call. ``None``: the worker's own credentials.
    :param assume_role_method: ``assume_role`` (default), ``assume_role_with_saml`` or
        ``assume_role_with_web_identity``, as for the Amazon provider.
    :param assume_role_kwargs: extra arguments to the STS call. ``None``: none.
    :param profile_name: AWS profile to use. ``None``: the default credential chain.
    :param verify: TLS verification: ``False`` or a CA bundle path. ``None``: botocore's default.
    :param config_kwargs: ``botocore.config.Config`` arguments (``retries``, ``connect_timeout``,
        ``read_timeout``...). ``None``: botocore's defaults.
    :param cache_ttl_seconds: how long a fetched secret is served before it is fetched again
        (up to 10% less, at random). ``0`` disables caching. Default 300.
    :param stale_if_error_seconds: after expiry, how long a value may still be served when AWS
        fails for a transient reason (never when the secret is gone or access is denied). Default 300.
    :param resolve_on_server: resolve in server processes (API server, scheduler) too.
        Default ``False``: they step aside, so plaintext stays on the workers.
    :param shared_cache: share cached secrets between all task processes of the worker (one fetch
        per secret per expiry period, however many tasks ask). Default ``True``.
    :param shared_cache_dir: directory for the shared cache, private to the worker's user (``0700``).
        ``None``: ``/dev/shm/airflow-sm-refs-<uid>`` where ``/dev/shm`` exists, else no shared cache.
        Secrets are written there: name a RAM-backed filesystem.
    :param shared_cache_max_entries: most entries in the shared cache directory; the oldest
        fetched are evicted first. Default 1000.
    :param negative_cache_seconds: how long a not-found or denied answer is remembered, in the
        process and the per-worker cache: lookups of that reference within it fail the same way
        without an AWS call. It only remembers failures, so it never delays a revocation; it may
        delay a fix (a secret created, access granted) by as long. ``0``: never. Default 10.
    :param allowed_secrets: glob patterns of the secrets references may name: name patterns
        (``prod/*``) for plain names, ARN patterns (``arn:aws:secretsmanager:*:123456789012:secret:prod/*``)
        for ARNs. ``None``: any secret the worker's AWS identity can read (set it).
    :param allowed_conn_ids: glob patterns of the connections whose references are expanded; a
        reference in any other connection is an error. ``None``: every connection.
    :param allowed_variables: glob patterns of the Variables whose references are expanded; a
        reference in any other Variable is an error. ``None``: every Variable.
    :param resolve_at_parse_time: resolve while the DAG processor parses a DAG file. Default
        ``False``: a connection or Variable holding references, read at the top level of a DAG
        file, fails the file's import with an error naming it, and no AWS call is made.

    Every option may be given as a string, as a per-key override
    (``AIRFLOW__SECRETS__BACKEND_KWARG__<KEY>``) gives it: booleans as
    ``true/false/1/0/yes/no``, lists as JSON arrays or comma-separated, numbers
    and JSON objects as their text. Anything else is refused here, naming the option.
    """

    def __init__(
        self,
        region_name: str | None = None,
        endpoint_url: str | None = None,
        role_arn: str | None = None,
        assume_role_method: str | None = None,
        assume_role_kwargs: dict[str, Any] | None = None,
        profile_name: str | None = None,
        verify: bool | str | None = None,
        config_kwargs: dict[str, Any] | None = None,
        cache_ttl_seconds: float = 300,
        stale_if_error_seconds: float = 300,
        resolve_on_server: bool = False,
        shared_cache: bool = True,
        shared_cache_dir: str | None = None,
        shared_cache_max_entries: int = 1000,
        negative_cache_seconds: float = 10,
        allowed_secrets: list[str] | None = None,
        allowed_conn_ids: list[str] | None = None,
        allowed_variables: list[str] | None = None,
        resolve_at_parse_time: bool = False,
        connections_prefix: str | None = None,
        connections_lookup_pattern: str | None = None,
        variables_prefix: str | None = None,
        variables_lookup_pattern: str | None = None,
        config_prefix: str | None = None,
        config_lookup_pattern: str | None = None,
        sep: str = "/",
        extra_conn_words: dict[str, list[str]] | None = None,
        missing_cache_seconds: float | None = None,
        **kwargs: Any,
    ) -> None:
        # No AWS, disk or heavy import work here: Airflow builds instances
        # often, sometimes while it is still importing itself. Options are
        # parsed strictly, but a bad one must not stop Airflow: every process
        # builds this backend while it imports, the API server and the
        # scheduler included. It is kept as ``option_error``: servers and CLI
        # commands log it once and step aside, a task fails closed with it.
        super().__init__()
        #: what is wrong with the options (one line, naming the option), or ``None``
        self.option_error: str | None = None
        #: whole stored connections, Variables and config values: none until the options say which
        self.stored = StoredSecrets({}, self._stored_payload)
        options = {name: value for name, value in locals().items() if name not in ("self", "kwargs", "__class__")}
        try:
            self._parse_options(**options, **kwargs)
        except Exception as exc:  # noqa: BLE001 - whatever an option does, Airflow must still start
            text = " ".join(str(exc).split())[:300] if isinstance(exc, (TypeError, ValueError)) else type(exc).__name__
            self.option_error = f"{type(self).__name__} backend_kwargs: {text}"

    def _parse_options(
        self,
        region_name: Any,
        endpoint_url: Any,
        role_arn: Any,
        assume_role_method: Any,
        assume_role_kwargs: Any,
        profile_name: Any,
        verify: Any,
        config_kwargs: Any,
        cache_ttl_seconds: Any,
        stale_if_error_seconds: Any,
        resolve_on_server: Any,
        shared_cache: Any,
        shared_cache_dir: Any,
        shared_cache_max_entries: Any,
        negative_cache_seconds: Any,
        allowed_secrets: Any,
        allowed_conn_ids: Any,
        allowed_variables: Any,
        resolve_at_parse_time: Any,
        connections_prefix: Any,
        connections_lookup_pattern: Any,
        variables_prefix: Any,
        variables_lookup_pattern: Any,
        config_prefix: Any,
        config_lookup_pattern: Any,
        sep: Any,
        extra_conn_words: Any,
        missing_cache_seconds: Any,
        **kwargs: Any,
    ) -> None:
        from airflow_sm_refs.stored import PROVIDER_PASSED_ON, parse_provider_options

        unknown = sorted(set(kwargs) - set(AWS_CONNECTION_KWARGS) - set(PROVIDER_PASSED_ON))
        if unknown:
            raise TypeError("; ".join(unknown_option(name, self._known_options()) for name in unknown))
        passed_on = {name: kwargs.pop(name) for name in PROVIDER_PASSED_ON if name in kwargs}
        given = {
            "region_name": region_name,
            "endpoint_url": endpoint_url,
            "role_arn": role_arn,
            "assume_role_method": assume_role_method,
            "assume_role_kwargs": assume_role_kwargs,
            "profile_name": profile_name,
            "verify": verify,
            "config_kwargs": config_kwargs,
            **kwargs,
        }
        self.aws_settings: dict[str, Any] = {name: parse_aws_option(name, value) for name, value in given.items()}
        from airflow_sm_refs.resolver import CacheSettings

        self.cache_settings = CacheSettings.from_options(
            cache_ttl_seconds,
            stale_if_error_seconds,
            shared_cache,
            shared_cache_dir,
            shared_cache_max_entries,
            negative_cache_seconds,
        )
        self.resolve_on_server = parse_bool(resolve_on_server, "resolve_on_server")
        self.resolve_at_parse_time = parse_bool(resolve_at_parse_time, "resolve_at_parse_time")
        from airflow_sm_refs.policy import AccessPolicy

        self.policy = AccessPolicy.from_options(allowed_secrets, allowed_conn_ids, allowed_variables)
        provider_options = parse_provider_options(
            connections_prefix=connections_prefix,
            connections_lookup_pattern=connections_lookup_pattern,
            variables_prefix=variables_prefix,
            variables_lookup_pattern=variables_lookup_pattern,
            config_prefix=config_prefix,
            config_lookup_pattern=config_lookup_pattern,
            sep=sep,
            extra_conn_words=extra_conn_words,
        )
        #: how long a stored id found in no secret is remembered (``aws_default``): as long as a found one
        ttl = self.cache_settings.cache_ttl_seconds
        self.missing_cache_seconds = (
            ttl if missing_cache_seconds is None else parse_number(missing_cache_seconds, "missing_cache_seconds")
        )
        if self.missing_cache_seconds > ttl:
            # It shortens the window: the per-worker tier keeps no entry past what a found value lives.
            raise ValueError(
                f"option 'missing_cache_seconds' ({self.missing_cache_seconds:g}) must not exceed "
                f"cache_ttl_seconds ({ttl:g}): a missing id is remembered as long as a found one at most"
            )
        #: whole connections, Variables and config values stored as the Amazon provider stores them
        self.stored = StoredSecrets({**provider_options, **passed_on}, self._stored_payload, self._client_region)
        from airflow_sm_refs.expand import ExpansionMemo

        #: this backend's recent expansions (its allowlists and identity are fixed, so they hold for it alone)
        self._memo = ExpansionMemo()
        #: (the chain as last seen, the backends after this one in it)
        self._later_memo: tuple[list[Any], list[Any]] | None = None

    @classmethod
    def _known_options(cls) -> list[str]:
        from airflow_sm_refs.stored import PROVIDER_PASSED_ON

        names = [p for p in inspect.signature(SecretsManagerRefsBackend.__init__).parameters if p not in ("self", "kwargs")]
        return names + [n for n in (*AWS_CONNECTION_KWARGS, *PROVIDER_PASSED_ON) if n not in names]

    def _bad_options(self, key: str, kind: str) -> bool:
        """With a bad option: raise in a process that resolves; elsewhere log it once and step aside (``True``)."""
        if self.option_error is None:
            return False
        if process_role().resolves:
            error = BackendOptionError(self.option_error, conn_id=key, field=None if kind == "connection" else "value")
            log.error("%s", error)
            raise self._fail_closed(error, key, kind) from None
        self._log_option_error_once()
        return True

    def _log_option_error_once(self) -> None:
        """Log the bad option once per process: Airflow builds backends often, one line each would be a storm."""
        if self.option_error is not None and self.option_error not in _OPTION_ERRORS_LOGGED:
            _OPTION_ERRORS_LOGGED.add(self.option_error)
            log.error("%s; the backend steps aside in this process until it is fixed", self.option_error)

    @cached_property
    def resolver(self) -> SecretResolver:
        """The resolver for this backend's AWS identity (clients and caches are shared per process)."""
        if self.option_error is not None:
            raise BackendOptionError(self.option_error)
        from airflow_sm_refs._aws import clients_for_settings

        return self.cache_settings.resolver_for(clients_for_settings(self.aws_settings))

    @cached_property
    def _stored_resolver(self) -> SecretResolver:
        """The resolver for whole stored secrets: the same tiers, but "not found" is remembered as long as a value."""
        import dataclasses

        # Not found: remembered for missing_cache_seconds. Denied (a credential hiccup too): as for references.
        resolver = dataclasses.replace(self.resolver, not_found_cache_seconds=self.missing_cache_seconds)
        if not (process_role().resolves or self.resolve_on_server):
            # A server answers stored secrets as the provider does, and like it keeps none on its disk.
            resolver = dataclasses.replace(resolver, shared=None)
        return resolver

    def _client_region(self) -> str | None:
        """The one region the provider's client would ask: its default client's (options, profile, boto3)."""
        return self.resolver.clients.client(None).meta.region_name

    def _stored_payload(self, ref: Any) -> Any:
        """The payload of a stored secret through the cache tiers (what the provider's client call becomes)."""
        import time

        from airflow_sm_refs._exceptions import SecretNotFoundError

        if not self.policy.secret_allowed(ref):
            # Outside allowed_secrets: never asked of AWS, as if it were not stored.
            self.stored.why_not[ref.secret_id] = f"{ref.secret_id} not looked up: not admitted by allowed_secrets"
            if "allowed_secrets" not in _OPTION_ERRORS_LOGGED:
                # Once per process: a drop-in user who set allowed_secrets for references alone
                # would otherwise see every stored connection vanish without a word.
                _OPTION_ERRORS_LOGGED.add("allowed_secrets")
                log.warning(
                    "stored secret %s is not admitted by allowed_secrets, so it is not looked up in Secrets "
                    "Manager and the next backend is asked; to read stored connections, Variables or config, "
                    "add their prefixes to allowed_secrets (e.g. %r)",
                    ref.secret_id,
                    ref.secret_id.rsplit("/", 1)[0] + "/*" if "/" in ref.secret_id else ref.secret_id,
                )
            else:
                log.debug("stored secret %s is outside allowed_secrets; not looked up", ref.secret_id)
            raise SecretNotFoundError(f"{ref.secret_id!r} is outside allowed_secrets", reference=ref.secret_id)
        started = time.perf_counter()
        try:
            payload, source = self._stored_resolver.payload(ref)
        except SecretNotFoundError:
            log.debug("stored secret %s: not found (remembered up to %gs)", ref.secret_id, self.missing_cache_seconds)
            raise
        log.log(
            logging.INFO if source == "aws" else logging.DEBUG,
            "stored secret %s: from %s in %.1f ms",
            ref.secret_id,
            source,
            (time.perf_counter() - started) * 1000,
        )
        return payload

    def _stored(self, kind: str, key: str, team_name: str | None) -> Any:
        """What the provider's layout holds for ``key`` (a connection or a string), or ``None``."""
        if not self.stored.enabled[kind]:
            return None
        if (kind == "connection" and not self.policy.conn_allowed(key)) or (
            kind == "variable" and not self.policy.variable_allowed(key)
        ):
            option = "allowed_conn_ids" if kind == "connection" else "allowed_variables"
            self.stored.why_not[self.stored.secret_id(kind, key) or key] = f"not looked up: not admitted by {option}"
            return None
        found = self.stored.lookup(kind, key, team_name, connection_class_of(self))
        password = getattr(found, "password", None) if kind == "connection" else None
        if password and isinstance(password, str):
            from airflow_sm_refs.expand import _mask_all

            _mask_all((password,))
        return found

    # --- the chain -----------------------------------------------------------
    def _mode(self) -> str:
        """Resolve, step aside (servers, CLI) or refuse references (a DAG file being parsed)."""
        role = process_role()
        if role.resolves:
            return _RESOLVE
        if role is ProcessRole.PARSER:
            return _RESOLVE if self.resolve_at_parse_time else _REFUSE
        if role is ProcessRole.CLI:  # `airflow connections get` must never print a value
            return _STEP_ASIDE
        return _RESOLVE if self.resolve_on_server else _STEP_ASIDE

    def _steps_aside(self) -> bool:
        return self._mode() == _STEP_ASIDE

    def _later_backends(self) -> list[Any]:
        """The backends of the current chain, less any instance of this class."""
        chain = later_backends()
        memo = self._later_memo
        if memo is not None and memo[0] is chain:
            return memo[1]
        later = [b for b in chain if not isinstance(b, SecretsManagerRefsBackend)]
        self._later_memo = (chain, later)
        return later

    def _ask_chain(self, method: str, key: str, team_name: str | None) -> Any:
        """The raw value of ``key`` from the backends after this one, then the chain's last resort."""
        return raw_from_chain(method, key, team_name, self._later_backends())

    def _refuse_at_parse_time(self, raw: Any, key: str, kind: str) -> Any:
        """``raw`` as found, unless it holds references: then the DAG file's import fails, naming it.

        No AWS call is made: resolving here would fetch on every parse and could
        put plaintext into the serialized DAG.
        """
        if not _holds_references(raw, kind):
            return raw
        error = ReferenceNotAllowedError(
            f"{kind} {key!r} holds AWS Secrets Manager references, which are not resolved while a DAG "
            "file is parsed (the value would be fetched on every parse and could be stored in the "
            "serialized DAG); read it inside a task, or set the backend option resolve_at_parse_time",
        )
        log.error("%s", error)
        raise self._fail_closed(error, key, kind, roles=_PARSE_TIME_FAIL_CLOSED_ROLES) from None

    def _expansion(self, conn_id: str, kind: str, *, cached_only: bool = False) -> Expansion:
        from airflow_sm_refs.expand import Expansion

        return Expansion(
            lambda: self.resolver,
            conn_id=conn_id,
            kind=kind,
            check=self.policy.checker(conn_id, kind),
            cached_only=cached_only,
        )

    def _fail_closed(
        self, exc: BaseException, key: str, kind: str, roles: frozenset[ProcessRole] = _FAIL_CLOSED_ROLES
    ) -> BaseException:
        """The error to raise for ``exc`` so that Airflow's lookup stops here.

        Anything unexpected becomes a :class:`SecretFetchError` naming the
        connection (its text could hold a value, so only its type is kept).
        Where the lookup loops do not stop at our errors (before 3.2.2), a
        process that resolves gets :class:`SecretLookupAborted` instead.
        """
        if isinstance(exc, SecretReferenceError):
            error = exc
        else:
            error = SecretFetchError(
                f"unexpected {type(exc).__name__} while expanding references; no value was handed out",
                conn_id=key,
                field=None if kind == "connection" else "value",
            )
        if AUTHORITATIVE_DENY or process_role() not in roles:
            return error
        return SecretLookupAborted(error)

    def _expand_raw_connection(self, raw: Any, conn_id: str) -> Any:
        from airflow_sm_refs.expand import CONNECTION_FIELDS, build_connection, connection_memo_key, expand_connection

        conn_class = connection_class_of(self)
        try:
            memo_key = connection_memo_key(raw, conn_class)
            fields = self._memo.get(memo_key, lambda: self.resolver)
            if fields is not None:
                return build_connection(raw, fields, conn_class)
            expansion = self._expansion(conn_id, "connection")
            conn = expand_connection(raw, expansion, conn_class)
            if conn is not raw:
                self._memo.put(memo_key, {name: getattr(conn, name, None) for name in (*CONNECTION_FIELDS, "extra")}, expansion)
            return conn
        except Exception as exc:
            raise self._fail_closed(exc, conn_id, "connection") from None

    def _expand_raw_variable(self, raw: str, key: str) -> str:
        try:
            memo_key = ("variable", key, raw)
            value = self._memo.get(memo_key, lambda: self.resolver)
            if value is not None:
                return value
            expansion = self._expansion(key, "variable")
            value = expansion.variable(raw)
            self._memo.put(memo_key, value, expansion)
            return value
        except Exception as exc:
            raise self._fail_closed(exc, key, "variable") from None

    # --- BaseSecretsBackend --------------------------------------------------
    def get_conn_value(self, conn_id: str, team_name: str | None = None) -> str | None:
        """Not used: :meth:`get_connection` is overridden."""
        raise NotImplementedError("use get_connection")

    def get_connection(self, conn_id: str, team_name: str | None = None) -> Any:
        """Find the raw connection later in the chain and return it with its references resolved.

        :raises SecretReferenceError: a reference cannot be resolved; the lookup stops here
        :raises SecretLookupAborted: the same, before Airflow 3.2.2, in processes that resolve
        """
        if self._bad_options(conn_id, "connection"):
            return None
        mode = self._mode()
        with _guard(f"conn:{conn_id}") as first:
            if not first:
                return None
            raw = self._stored("connection", conn_id, team_name)
            if raw is None:
                if mode == _STEP_ASIDE:
                    return None
                raw = self._ask_chain("get_connection", conn_id, team_name)
            return self._answer_connection(raw, conn_id, mode)

    def _answer_connection(self, raw: Any, conn_id: str, mode: str) -> Any:
        """``raw`` as this process may have it: expanded, refused (parse time), or as stored (a server)."""
        if raw is None or mode == _STEP_ASIDE:
            return raw
        if mode == _REFUSE:
            return self._refuse_at_parse_time(raw, conn_id, "connection")
        return self._expand_raw_connection(raw, conn_id)

    async def aget_connection(self, conn_id: str, team_name: str | None = None) -> Any:
        """:meth:`get_connection` for the trigger runner's event loop.

        A connection whose references are all in the in-process cache is
        expanded in the loop, with no thread hop; anything that may wait on
        AWS, a file lock or the supervisor (a backend without a native
        ``aget_connection``, a cache miss) runs in a worker thread, so the
        loop is never blocked.
        """
        if self._bad_options(conn_id, "connection"):
            return None
        mode = self._mode()
        if mode == _STEP_ASIDE and not self.stored.enabled["connection"]:
            return None
        from asgiref.sync import sync_to_async

        with _guard(f"conn:{conn_id}") as first:
            if not first:
                return None
            raw = None
            if self.stored.enabled["connection"]:
                raw = await sync_to_async(self._stored)("connection", conn_id, team_name)
            if raw is None:
                if mode == _STEP_ASIDE:
                    return None
                raw = await self._aask_chain_connection(conn_id, team_name)
        if raw is None or mode != _RESOLVE:
            return self._answer_connection(raw, conn_id, mode)
        from airflow_sm_refs.expand import NotCached, expand_connection

        if connections_call_the_supervisor_when_built():
            # 3.0: building a Connection tells the supervisor its password, a call that
            # must never start from inside the loop: the whole expansion goes to a thread.
            return await sync_to_async(self._expand_raw_connection)(raw, conn_id)
        try:
            expansion = self._expansion(conn_id, "connection", cached_only=True)
            return expand_connection(raw, expansion, connection_class_of(self))
        except NotCached:
            pass
        except SecretReferenceError as exc:
            raise self._fail_closed(exc, conn_id, "connection") from None
        except Exception:  # noqa: BLE001 - e.g. a 3.0 Connection that tells the supervisor from inside the loop
            log.debug("expanding %r in the event loop failed; expanding in a worker thread", conn_id, exc_info=True)
        return await sync_to_async(self._expand_raw_connection)(raw, conn_id)

    async def _aask_chain_connection(self, conn_id: str, team_name: str | None) -> Any:
        from asgiref.sync import sync_to_async

        backends = self._later_backends()
        for backend in backends:
            try:
                native = getattr(backend, "aget_connection", None)
                if native is not None:
                    found = await native(conn_id)
                else:
                    # Even building a Connection may call the supervisor (3.0 masks
                    # its password), which must not happen inside the loop.
                    found = await sync_to_async(call_backend)(backend, "get_connection", conn_id, team_name)
            except SecretReferenceError:
                raise
            except Exception:
                log.debug("%s.aget_connection(%r) failed; trying the next backend", type(backend).__name__, conn_id, exc_info=True)
                continue
            if found is not None:
                return found
        return await sync_to_async(last_resort_connection)(conn_id, backends)

    def get_variable(self, key: str, team_name: str | None = None) -> str | None:
        """Find the raw variable later in the chain and return it with its references resolved."""
        if self._bad_options(key, "variable"):
            return None
        mode = self._mode()
        with _guard(f"var:{key}") as first:
            if not first:
                return None
            raw = self._stored("variable", key, team_name)
            if raw is None:
                if mode == _STEP_ASIDE:
                    return None
                raw = self._ask_chain("get_variable", key, team_name)
            if raw is None or mode == _STEP_ASIDE:
                return raw
            if mode == _REFUSE:
                return self._refuse_at_parse_time(raw, key, "variable")
            return self._expand_raw_variable(raw, key)

    def get_config(self, key: str) -> str | None:
        """A config value stored under ``config_prefix`` (off unless set), its references expanded.

        Airflow's own components read these (``sql_alchemy_conn_secret``...), so
        a stored config value is answered, and expanded, in every process that
        needs the setting (``airflow db migrate`` too), except ``airflow config``,
        which prints it: that gets the reference as stored.
        """
        if self.option_error is not None:
            # Read by every component while it starts: logged once, never raised from here.
            self._log_option_error_once()
            return None
        if not self.stored.enabled["config"]:
            return None
        with _guard(f"config:{key}") as first:
            if not first:
                return None
            raw = self._stored("config", key, None)
            if raw is None or not _holds_references(raw, "variable") or prints_configuration():
                # `airflow config get-value/list` prints what it reads: it gets the reference as stored.
                return raw
            try:
                return self._expansion(key, "config").variable(raw)
            except Exception as exc:
                raise self._fail_closed(exc, key, "config") from None


def _expand_for_a_connection_test(conn: Any) -> tuple[Any, Any]:
    """What a worker-side connection test should test: (``conn`` expanded, the values resolved), or ``(False, why)``.

    Expanded by the configured backend (its options, allowlists and caches)
    into the Task SDK's connection class, which the test hands to the hook.
    The message of a failure names the connection, the field and the
    reference, never a value: it is what the UI shows.
    """
    backend = configured_secrets_backend(worker_mode=True)
    if not isinstance(backend, SecretsManagerRefsBackend):
        return conn, ()
    try:
        if backend._bad_options(conn.conn_id, "connection"):
            return conn, ()
        expanded = backend._expand_raw_connection(conn, conn.conn_id)
    except (SecretReferenceError, SecretLookupAborted) as exc:
        return False, str(exc)
    from airflow_sm_refs.expand import CONNECTION_FIELDS, build_connection, map_json_strings

    fields = {name: getattr(expanded, name, None) for name in (*CONNECTION_FIELDS, "extra")}
    # What the expansion put in: every field that changed, and every string of extra that is new.
    values = [v for name, v in fields.items() if name != "extra" and v and v != getattr(conn, name, None)]
    old_extra, new_extra = str(getattr(conn, "extra", None) or ""), str(fields.get("extra") or "")
    if new_extra != old_extra:
        try:
            strings: list[str] = []
            map_json_strings(json.loads(new_extra), "extra", lambda text, _: strings.append(text))
            values += [v for v in strings if v not in old_extra]
        except ValueError:
            values.append(new_extra)
    return build_connection(conn, fields), values


expand_before_connection_tests(_expand_for_a_connection_test)


class SecretsManagerBackend(SecretsManagerRefsBackend):
    """
    A drop-in for the Amazon provider's ``SecretsManagerBackend``: its options, defaults and answers.

    Connections, Variables and config values stored whole under
    ``connections_prefix``, ``variables_prefix`` and ``config_prefix`` are
    read as the installed provider reads them (URI or JSON, its key aliases,
    ``extra_conn_words``, lookup patterns, ``sep``, team-scoped names), and,
    unlike there, through the per-process and per-worker caches: one
    ``GetSecretValue`` per stored secret per ``cache_ttl_seconds`` per worker,
    and an id stored nowhere (``aws_default``) remembered as long
    (``missing_cache_seconds``). References inside what it finds, and in
    connections and Variables found later in the chain, are expanded as
    :class:`SecretsManagerRefsBackend` expands them; every option of that
    class applies. Switch by changing the class path in ``airflow.cfg``:

    .. code-block:: ini

        [secrets]
        backend = airflow_sm_refs.backend.SecretsManagerBackend
        backend_kwargs = {"connections_prefix": "airflow/connections", "region_name": "eu-west-1"}

    :param connections_prefix: prefix of connection secrets; ``None``: connections are not looked up,
        ``""``: the id alone. Default ``airflow/connections``.
    :param variables_prefix: the same for Variables. Default ``airflow/variables``.
    :param config_prefix: the same for config values. Default ``airflow/config``.
    """

    def __init__(
        self,
        connections_prefix: str | None = "airflow/connections",
        variables_prefix: str | None = "airflow/variables",
        config_prefix: str | None = "airflow/config",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            connections_prefix=connections_prefix,
            variables_prefix=variables_prefix,
            config_prefix=config_prefix,
            **kwargs,
        )
