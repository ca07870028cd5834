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

import base64
import errno
import hashlib
import json
import logging
import os
import re
import stat
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

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
)

# Environment that decides who botocore's default credential chain acts as,
# or where it sends requests (Secrets Manager, STS for an assumed role, the
# instance metadata service). Part of the identity so that two workers'
# processes with different credentials never share cache entries.
_IDENTITY_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_CREDENTIAL_FILE",
    "BOTO_CONFIG",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_EC2_METADATA_DISABLED",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_SECRETS_MANAGER",
    "AWS_ENDPOINT_URL_STS",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_STS_REGIONAL_ENDPOINTS",
    "AWS_USE_FIPS_ENDPOINT",
    "AWS_USE_DUALSTACK_ENDPOINT",
    "AWS_ACCOUNT_ID",
    "AWS_ACCOUNT_ID_ENDPOINT_MODE",
)

# Secrets among them: they enter the digest as digests of their own. (Not
# AWS_CREDENTIAL_EXPIRATION: it changes with every refresh, not with the principal.)
_IDENTITY_SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
)

#: a file modified this recently is read again next time: a timestamp's
#: granularity may hide a rewrite of the same size (git's "racy clean" problem)
_RACY_NS = 2_000_000_000

#: (how a file is read, its path) -> (what os.stat said, what was read from it)
_FILE_FACTS: dict[tuple[str, str], tuple[tuple[int, ...], Any]] = {}

_WEB_IDENTITY_IN_CONFIG = re.compile(rb"^[ \t]*web_identity_token_file[ \t]*=[ \t]*(\S.*?)[ \t]*\r?$", re.MULTILINE)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_fact(path: str, kind: str, read: Callable[[bytes], Any]) -> Any:
    """What ``read`` makes of the file at ``path``; a missing or unreadable file says so, never raises.

    Kept per (path, device, inode, size, mtime, ctime): a rotated token or an
    edited file is read again, an unchanged one is not.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable: {errno.errorcode.get(exc.errno or 0, type(exc).__name__)}"
    if not stat.S_ISREG(st.st_mode):
        return f"not a regular file: {stat.S_IFMT(st.st_mode):o}"  # never open a FIFO, it would block
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    held = _FILE_FACTS.get((kind, path))
    if held is not None and held[0] == key:
        return held[1]
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable: {errno.errorcode.get(exc.errno or 0, type(exc).__name__)}"
    fact = read(data)
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _RACY_NS:
        _FILE_FACTS[(kind, path)] = (key, fact)
    return fact


def _content(data: bytes) -> Any:
    return {"sha256": _sha256(data), "web_identity_token_files": _token_files_named_in(data)}


def _token_files_named_in(config: bytes) -> list[str]:
    """The ``web_identity_token_file`` paths a config file names (its profiles may assume roles with them)."""
    if b"web_identity_token_file" not in config:
        return []
    return sorted({m.group(1).decode("utf-8", "replace") for m in _WEB_IDENTITY_IN_CONFIG.finditer(config)})


def _service_account(token: bytes) -> Any:
    """Who a Kubernetes service account token (a JWT) names: issuer, subject, audience, namespace and account.

    Not the token itself, nor the pod it names: the token rotates every few
    hours and every pod has its own, while Pod Identity associations and IRSA
    trust policies map a service account to a role. A token that does not
    decode counts by its whole content.
    """
    try:
        body = token.strip().split(b".")[1]
        claims = json.loads(base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4)))
        if not isinstance(claims, dict) or not isinstance(claims.get("sub"), str):
            raise ValueError("no subject")
    except (IndexError, ValueError, TypeError):  # binascii.Error and JSONDecodeError are ValueErrors
        return {"sha256": _sha256(token)}
    kubernetes = claims.get("kubernetes.io")
    kubernetes = kubernetes if isinstance(kubernetes, dict) else {}
    account = kubernetes.get("serviceaccount")
    return {
        "iss": claims.get("iss"),
        "sub": claims["sub"],
        "aud": claims.get("aud"),
        "namespace": kubernetes.get("namespace"),
        "serviceaccount": account.get("name") if isinstance(account, dict) else None,
    }


def _expanded(path: str) -> str:
    """``path`` as botocore expands a config file's path: variables, then ``~``."""
    return os.path.expanduser(os.path.expandvars(path))


def _local_credential_sources() -> dict[str, Any]:
    """Every file the default credential chain may take the principal from, and what it says.

    Each file counts as it is written (``~/.aws/credentials``, or the
    variable's value) with its content, not by its expanded path: workers
    whose HOMEs differ but hold the same files (or none) act as the same
    principal. Read without botocore: on a worker-cache hit nothing AWS is imported.
    """
    env = os.environ
    written = [
        env.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
        env.get("AWS_CONFIG_FILE", "~/.aws/config"),
        env.get("AWS_CREDENTIAL_FILE"),  # the original EC2 tools' file
    ]
    # boto2's config files, still read by botocore after the profile providers
    written += [env["BOTO_CONFIG"]] if "BOTO_CONFIG" in env else ["/etc/boto.cfg", "~/.boto"]
    files = {path: _file_fact(_expanded(path), "content", _content) for path in written if path}
    token_files = {env.get("AWS_WEB_IDENTITY_TOKEN_FILE"), env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")}
    for fact in files.values():
        if isinstance(fact, dict):
            token_files.update(fact["web_identity_token_files"])
    # botocore opens token files as named, unexpanded
    tokens = {path: _file_fact(path, "token", _service_account) for path in sorted(p for p in token_files if p)}
    return {"files": files, "tokens": tokens}


def identity_of(description: Mapping[str, Any]) -> str:
    """A short stable digest of who we act as and where we send requests.

    ``description`` is what the caller's settings say (``profile_name``,
    ``role_arn``, keys, endpoint). To it come every local input of botocore's
    default credential chain: the environment, the credential and config
    files (as named, and their contents), and the service account of a web
    identity or EKS Pod Identity token. Where the principal comes from outside
    (an instance profile, a credential process), two workers can only be
    told apart by their cache directories (docs/deploy.md).

    Secret material (a secret access key, a session token) only ever enters
    the digest, never a log line.
    """
    payload = {
        "settings": dict(description),
        "env": {name: os.environ.get(name) for name in _IDENTITY_ENV},
        "secret_env": {
            name: None if os.environ.get(name) is None else _sha256(os.environ[name].encode("utf-8", "surrogateescape"))
            for name in _IDENTITY_SECRET_ENV
        },
        "sources": _local_credential_sources(),
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


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
