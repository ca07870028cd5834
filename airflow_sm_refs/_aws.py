"""The one place that builds Secrets Manager clients, for the backend and the hook.

Clients are built lazily, one per region (Secrets Manager does not route by
ARN), and kept at module level keyed by the AWS identity they act as, because
Airflow builds backend instances often and each new one must not pay for a
new session.

Fork-safe: a forked child (a task process forked from a warm worker) forgets
every client and session it inherited and gets new locks. A boto3 client's
connection pool shares its sockets with the parent, and a lock held by a
parent thread that was building a client would never be released in the child.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from airflow_sm_refs._identity import identity_of

__all__ = ["AWS_CONNECTION_KWARGS", "RegionalClients", "clients_for_settings", "identity_of", "quiet_secret_bodies"]

#: backend kwargs that describe how to reach AWS; the same names the Amazon
#: provider's SecretsManagerBackend accepts
AWS_CONNECTION_KWARGS = (
    "region_name",
    "endpoint_url",
    "role_arn",
    "assume_role_method",
    "assume_role_kwargs",
    "profile_name",
    "verify",
    "config_kwargs",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "service_config",
    "session_kwargs",
)

class RegionalClients:
    """Secrets Manager clients for one AWS identity, one per region, built on first use.

    :param make_client: builds a client for a region (``None``: the default region)
    :param default_region: the region plain secret names are looked up in
    :param identity: digest of the identity, part of every cache key
    """

    def __init__(self, make_client: Callable[[str | None], Any], default_region: str | None, identity: str) -> None:
        self._make_client = make_client
        self.default_region = default_region
        self.identity = identity
        self._clients: dict[str | None, Any] = {}
        self._lock = threading.Lock()
        _FORK_RESET.add(self)

    def _after_fork(self) -> None:
        self._clients = {}
        self._lock = threading.Lock()

    def region_for(self, region: str | None) -> str | None:
        """The region a request goes to: the ARN's, else the default."""
        return region or self.default_region

    def client(self, region: str | None) -> Any:
        """The client for ``region``, built once."""
        region = self.region_for(region)
        client = self._clients.get(region)
        if client is None:
            with self._lock:
                client = self._clients.get(region)
                if client is None:
                    client = self._clients[region] = self._make_client(region)
        return client


class _DropSecretBodies(logging.Filter):
    """Drop botocore's DEBUG dump of a response body that carries a secret value."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG:
            return True
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a record we cannot render is not ours to judge
            return True
        return not ("SecretString" in text or "SecretBinary" in text)


_BODY_FILTER = _DropSecretBodies()


def quiet_secret_bodies() -> None:
    """Keep secret values out of botocore's DEBUG logs (it logs whole response bodies).

    Airflow's masker cannot help here: botocore logs the body before the
    value is known, let alone registered.
    """
    for name in ("botocore.parsers", "botocore.endpoint", "botocore.hooks", "urllib3.connectionpool"):
        logger = logging.getLogger(name)
        if _BODY_FILTER not in logger.filters:
            logger.addFilter(_BODY_FILTER)


_REGISTRY: dict[str, RegionalClients] = {}
_REGISTRY_LOCK = threading.Lock()

#: what a forked child must reset: every RegionalClients and lazy session of this process
_FORK_RESET: weakref.WeakSet[Any] = weakref.WeakSet()


def _reset_after_fork() -> None:
    global _REGISTRY_LOCK
    _REGISTRY_LOCK = threading.Lock()
    _REGISTRY.clear()
    for holder in list(_FORK_RESET):
        holder._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


class _LazySession:
    """One boto3 session (one set of credentials, one assume-role) for all regions, made on first use.

    Also holds the provider's connection wrapper, made on first use for the same reason.
    """

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._session: Any = None
        self._lock = threading.Lock()
        _FORK_RESET.add(self)

    def _after_fork(self) -> None:
        self._session = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        with self._lock:
            if self._session is None:
                self._session = self._make()
            return self._session


def clients_for_settings(settings: Mapping[str, Any]) -> RegionalClients:
    """Clients built as the provider's ``SecretsManagerBackend`` builds them, shared per identity.

    Nothing AWS is imported or built here: the identity digest and the default
    region come from ``settings`` alone, and the provider's wrapper, the
    session and botocore arrive with the first client, on a cache miss. A task
    process served from the worker cache never imports them.

    :param settings: the backend's AWS kwargs (see :data:`AWS_CONNECTION_KWARGS`)
    """
    quiet_secret_bodies()
    settings = {k: v for k, v in settings.items() if v is not None}
    identity = identity_of(settings)
    with _REGISTRY_LOCK:
        clients = _REGISTRY.get(identity)
        if clients is None:
            clients = _REGISTRY[identity] = _build_from_settings(settings, identity)
        return clients


def check_config_kwargs(config_kwargs: Any) -> None:
    """Refuse ``config_kwargs`` that ``botocore.config.Config`` would not take, naming the option.

    :raises SecretFetchError: naming the unknown options (a typo must not fall through)
    """
    from airflow_sm_refs._exceptions import SecretFetchError

    if config_kwargs is None:
        return
    if not isinstance(config_kwargs, Mapping):
        raise SecretFetchError(f"config_kwargs must be a JSON object of botocore Config options, got {type(config_kwargs).__name__}")
    from botocore.config import Config

    unknown = sorted(set(config_kwargs) - set(Config.OPTION_DEFAULTS))
    if unknown:
        raise SecretFetchError(f"config_kwargs has unknown botocore Config option(s) {unknown}")


def _build_from_settings(settings: dict[str, Any], identity: str) -> RegionalClients:
    def wrapper() -> Any:
        check_config_kwargs(settings.get("config_kwargs"))
        from airflow.providers.amazon.aws.utils.connection_wrapper import AwsConnectionWrapper

        return AwsConnectionWrapper.from_connection_metadata(
            conn_id="SecretsManagerRefsBackend__connection", extra=dict(settings)
        )

    conn_config = _LazySession(wrapper)

    def session() -> Any:
        from airflow.providers.amazon.aws.hooks.base_aws import SessionFactory

        return SessionFactory(conn=conn_config.get()).create_session()

    lazy_session = _LazySession(session)

    def make_client(region: str | None) -> Any:
        config = conn_config.get()
        # The provider's own backend drops the botocore config here; we pass it
        # so retry modes and timeouts from config_kwargs take effect.
        kwargs: dict[str, Any] = {
            "region_name": region or config.region_name,
            "endpoint_url": config.get_service_endpoint_url("secretsmanager"),
            "config": config.botocore_config,
        }
        if config.verify is not None:
            kwargs["verify"] = config.verify
        return lazy_session.get().client("secretsmanager", **{k: v for k, v in kwargs.items() if v is not None})

    # The wrapper takes the region from the same ``region_name`` extra.
    return RegionalClients(make_client, settings.get("region_name"), identity)


def reset_clients() -> None:
    """Forget every client (tests, and after credentials change)."""
    with _REGISTRY_LOCK:
        _REGISTRY.clear()
