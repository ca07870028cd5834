"""Who this process acts as in AWS, as a short digest: part of every cache key.

Two workers' processes that act as different principals must never share a
cache entry (the per-worker directory is shared by every process of one uid).
So the digest covers every local input that decides the principal botocore's
default credential chain picks: the backend's settings, the environment,
the credential and config files and their contents, and the service account
an IRSA or EKS Pod Identity token names (not the token, which rotates). It is
read without importing botocore: a task served from the worker cache never
imports it.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["identity_of"]

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

# botocore reads the config with RawConfigParser: keys in any case, ``=`` or ``:``
_WEB_IDENTITY_IN_CONFIG = re.compile(
    rb"^[ \t]*web_identity_token_file[ \t]*[=:][ \t]*(\S.*?)[ \t]*\r?$", re.MULTILINE | re.IGNORECASE
)


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
    if b"web_identity_token_file" not in config.lower():
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
