"""Whole connections, Variables and config values stored in Secrets Manager, as the Amazon provider stores them.

The provider's ``SecretsManagerBackend`` reads ``<prefix><sep><id>`` secrets
(``airflow/connections/aws_default``) and turns what it finds into a
connection: a URI, or JSON with its key aliases (``user``, ``pass``...),
``extra_conn_words``, lookup patterns and, where it has them, team-scoped
names. To give the same answers, an instance of the installed provider's own
class does that parsing here; only its client is ours. That client answers
``GetSecretValue`` from this package's cache tiers, so a stored secret costs
one AWS call per cache period per worker, and an id that is stored nowhere
(``aws_default``, which every AWS hook asks for) is remembered as long.

Nothing here is built before the first lookup: Airflow builds backends while
it imports itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cached_property
from typing import Any

from airflow_sm_refs._exceptions import SecretNotFoundError, SecretReferenceError
from airflow_sm_refs.reference import SecretReference, is_secret_id

__all__ = ["PROVIDER_OPTIONS", "PROVIDER_PASSED_ON", "StoredSecrets", "parse_provider_options"]

log = logging.getLogger("airflow_sm_refs")

#: the provider's own options, with its defaults (the drop-in class keeps these; ours turns the prefixes off)
PROVIDER_OPTIONS: dict[str, Any] = {
    "connections_prefix": "airflow/connections",
    "connections_lookup_pattern": None,
    "variables_prefix": "airflow/variables",
    "variables_lookup_pattern": None,
    "config_prefix": "airflow/config",
    "config_lookup_pattern": None,
    "sep": "/",
    "extra_conn_words": None,
}

#: options the provider takes and passes on to its client or ignores (deprecated): handed to it as given
PROVIDER_PASSED_ON = ("api_version", "use_ssl", "full_url_mode", "are_secret_values_urlencoded")


#: the connection fields ``extra_conn_words`` may add words for (``user`` is the provider's old name of ``login``)
_CONN_WORD_FIELDS = ("user", "login", "password", "host", "port", "schema", "conn_type", "extra")


def parse_provider_options(**options: Any) -> dict[str, Any]:
    """The provider's options, parsed strictly: what it would only trip over at lookup time is refused here.

    A prefix is a string (empty: no prefix) or ``None`` (not looked up); a
    lookup pattern must compile; ``extra_conn_words`` maps connection fields
    to lists of words.

    :raises ValueError: naming the option
    """
    import re

    from airflow_sm_refs._options import parse_dict

    parsed: dict[str, Any] = {}
    for kind in ("connections", "variables", "config"):
        prefix = options[f"{kind}_prefix"]
        if prefix is not None and not isinstance(prefix, str):
            raise ValueError(f"option '{kind}_prefix' must be a string or null, got {type(prefix).__name__}")
        parsed[f"{kind}_prefix"] = prefix
        pattern = options[f"{kind}_lookup_pattern"]
        if pattern is not None:
            if not isinstance(pattern, str):
                raise ValueError(f"option '{kind}_lookup_pattern' must be a regular expression, got {type(pattern).__name__}")
            try:
                re.compile(pattern, re.IGNORECASE)
            except re.error as exc:
                raise ValueError(f"option '{kind}_lookup_pattern' is not a valid regular expression: {exc}") from None
        parsed[f"{kind}_lookup_pattern"] = pattern
    sep = options["sep"]
    if not isinstance(sep, str):
        raise ValueError(f"option 'sep' must be a string, got {type(sep).__name__}")
    parsed["sep"] = sep
    words = parse_dict(options["extra_conn_words"], "extra_conn_words")
    for field_name, field_words in (words or {}).items():
        if field_name not in _CONN_WORD_FIELDS:
            raise ValueError(
                f"option 'extra_conn_words' has key {field_name!r}; the keys are connection fields: "
                + ", ".join(_CONN_WORD_FIELDS)
            )
        if not isinstance(field_words, list) or not all(isinstance(w, str) for w in field_words):
            raise ValueError(f"option 'extra_conn_words' must map {field_name!r} to a list of strings")
    parsed["extra_conn_words"] = words
    return parsed


class _NeverRaised(Exception):
    """What the provider catches for errors this client reports in its own way (they reach the backend)."""


class _Exceptions:
    """``client.exceptions`` as the provider's backend uses it.

    Not found (also a secret scheduled for deletion) is the one answer the
    provider turns into "not stored here" that is worth remembering; every
    other failure leaves the provider as one of this package's errors, and
    the backend falls through to the next one, as Airflow does when the
    provider raises.
    """

    ResourceNotFoundException = SecretNotFoundError
    InvalidParameterException = _NeverRaised
    InvalidRequestException = _NeverRaised
    DecryptionFailure = _NeverRaised
    InternalServiceError = _NeverRaised


class _CachedClient:
    """The part of a Secrets Manager client the provider's backend calls, answered from the cache tiers.

    Like the provider's client, it asks one region: an ARN of another region
    (a ``connections_prefix`` such as ``arn:aws:secretsmanager:eu-west-1:...``
    on a backend in ``us-east-1``) is not found there, and is never looked up
    in its own region, as a reference by ARN would be.
    """

    exceptions = _Exceptions

    def __init__(self, payload: Callable[[SecretReference], Any], own_region: Callable[[], str | None] | None = None) -> None:
        self._payload = payload
        self._own_region = own_region

    def get_secret_value(self, SecretId: str, **kwargs: Any) -> dict[str, Any]:  # noqa: N803 - boto3's name
        if kwargs or not isinstance(SecretId, str) or not is_secret_id(SecretId):
            # An id AWS would refuse (a custom ``sep`` such as ``:``, a space in the id): never asked.
            raise SecretNotFoundError(f"{SecretId!r} cannot name a secret", reference=str(SecretId)[:200])
        ref = SecretReference(text=SecretId, key="", secret_id=SecretId)
        own = self._own_region() if ref.region is not None and self._own_region is not None else None
        if own is not None and ref.region != own:
            raise SecretNotFoundError(
                f"{SecretId!r} is an ARN in {ref.region}; this backend's client asks {own} only, as the "
                "Amazon provider's does",
                reference=SecretId,
            )
        payload = self._payload(ref)
        answer: dict[str, Any] = {"ARN": payload.arn, "Name": payload.name}
        if payload.string is not None:
            answer["SecretString"] = payload.string
        else:
            answer["SecretBinary"] = payload.binary
        return answer


class StoredSecrets:
    """Lookups of whole stored connections, Variables and config values, parsed by the provider's class.

    :param options: the provider's options (:data:`PROVIDER_OPTIONS`, :data:`PROVIDER_PASSED_ON`)
    :param payload: fetches a secret's payload through the cache tiers; raises
        :class:`SecretNotFoundError` when AWS says it does not exist
    :param own_region: the region the provider's client would ask (ARNs of any other are not found);
        ``None``: every ARN is asked in its own region
    """

    def __init__(
        self,
        options: dict[str, Any],
        payload: Callable[[SecretReference], Any],
        own_region: Callable[[], str | None] | None = None,
    ) -> None:
        self._options = options
        self._payload = payload
        self._own_region = own_region
        #: why the last lookup of a secret id answered nothing although it may be stored (for ``check``)
        self.why_not: dict[str, str] = {}

    @property
    def enabled(self) -> dict[str, bool]:
        """Which of ``connection``, ``variable``, ``config`` are looked up at all."""
        return {
            "connection": self._options.get("connections_prefix") is not None,
            "variable": self._options.get("variables_prefix") is not None,
            "config": self._options.get("config_prefix") is not None,
        }

    @cached_property
    def provider(self) -> Any:
        """The installed provider's backend, with our client."""
        from airflow.providers.amazon.aws.secrets.secrets_manager import SecretsManagerBackend

        backend = SecretsManagerBackend(**self._options)
        # ``client`` is a cached_property there: an instance attribute takes its place.
        backend.__dict__["client"] = _CachedClient(self._payload, self._own_region)
        return backend

    def secret_id(self, kind: str, key: str) -> str | None:
        """The secret the provider reads first for ``key`` (for messages), or ``None`` when it reads none."""
        prefix = self.provider.connections_prefix if kind == "connection" else (
            self.provider.variables_prefix if kind == "variable" else self.provider.config_prefix
        )
        if prefix is None:
            return None
        return self.provider.build_path(prefix, key, self.provider.sep) if prefix else key

    def lookup(self, kind: str, key: str, team_name: str | None, conn_class: type | None = None) -> Any:
        """What the provider's backend answers for ``key``: a connection, a string, or ``None`` (not stored).

        A failure other than "not found" (access denied, throttling with no
        value to serve stale, a JSON secret that does not parse) is logged,
        naming the secret, never its value, and answered ``None``: the
        provider raises there, and Airflow then asks the next backend.
        """
        if not self.enabled[kind]:
            return None
        from airflow_sm_refs._compat import call_backend

        provider = self.provider
        secret_id = self.secret_id(kind, key) or key
        self.why_not.pop(secret_id, None)
        try:
            if kind == "connection":
                if conn_class is not None:
                    provider._connection_class = conn_class
                return call_backend(provider, "get_connection", key, team_name)
            if kind == "variable":
                return call_backend(provider, "get_variable", key, team_name)
            return provider.get_config(key)
        except SecretReferenceError as exc:
            why = f"reading {secret_id} failed: {' '.join(exc.detail.split())}"
            log.warning("%s %r: %s; asking the next backend, as the Amazon provider's backend does", kind, key, why)
        except Exception as exc:  # noqa: BLE001 - the provider's own parsing: its error text may quote the secret
            why = f"{secret_id} could not be read as the Amazon provider reads it ({type(exc).__name__})"
            log.warning("%s %r: %s; asking the next backend, as that backend does", kind, key, why)
        self.why_not[secret_id] = why
        return None
