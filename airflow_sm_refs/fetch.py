"""Fetching one secret from AWS Secrets Manager, and naming what went wrong.

The fetcher knows nothing of expiry: it makes one ``GetSecretValue`` call
(botocore's retry mode applies inside it) and turns failures into this
package's errors, classified as permanent or transient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from airflow_sm_refs._aws import RegionalClients
from airflow_sm_refs._exceptions import (
    SecretAccessDeniedError,
    SecretFetchError,
    SecretNotFoundError,
    SecretTransientError,
)
from airflow_sm_refs._metrics import count, timed
from airflow_sm_refs.reference import SecretReference
from airflow_sm_refs.secret_ids import BatchItem, match_batch

__all__ = ["SecretPayload", "fetch_secret"]

_NOT_FOUND = {"ResourceNotFoundException", "InvalidRequestException"}
_DENIED = {
    "AccessDeniedException",
    "AccessDenied",
    "DecryptionFailure",
    "KMSAccessDeniedException",
    "KMSDisabledException",
    "KMSInvalidStateException",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "ExpiredTokenException",
    # credentials that AWS (or STS, assuming the role) does not accept
    "ExpiredToken",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "MissingAuthenticationTokenException",
}

#: botocore errors meaning "we have no usable credentials": no credentials at
#: all, half of them, or a provider (instance or container role, SSO, a
#: credential process, a profile) that failed to produce them. The worker has
#: lost the identity, which is a revocation as far as a cached value goes.
_CREDENTIAL_ERRORS = (
    "NoCredentialsError",
    "PartialCredentialsError",
    "CredentialRetrievalError",
    "NoAuthTokenError",
    "TokenRetrievalError",
    "SSOError",  # SSOTokenLoadError, UnauthorizedSSOTokenError
    "MetadataRetrievalError",
    "RefreshWithMFAUnsupportedError",
    "UnknownCredentialError",
    "ProfileNotFound",
    "ConfigNotFound",
    "InvalidConfigError",  # InfiniteLoopConfigError: a profile chain that loops
)

#: botocore errors from our own request or settings: trying again cannot help
_REQUEST_ERRORS = ("NoRegionError", "ParamValidationError", "UnknownSignatureVersionError")


def _botocore_classes(names: tuple[str, ...]) -> tuple[type[BaseException], ...]:
    import botocore.exceptions

    return tuple(c for c in (getattr(botocore.exceptions, n, None) for n in names) if isinstance(c, type))
_TRANSIENT = {
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "InternalServiceError",
    "InternalFailure",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeoutException",
}


def _where(clients: RegionalClients, ref: SecretReference) -> str:
    return f"secret {ref.secret_id!r} ({ref.version_label}) in {clients.region_for(ref.region) or 'the default region'}"


def _error_for_code(code: str, status: int, message: str, ref: SecretReference) -> SecretFetchError:
    """This package's error for AWS's error ``code`` (and HTTP ``status``) about ``ref``."""
    if code in _NOT_FOUND:
        return SecretNotFoundError(message, reference=ref.text)
    if code in _DENIED:
        return SecretAccessDeniedError(message, reference=ref.text)
    if code in _TRANSIENT or status >= 500 or status == 429:
        return SecretTransientError(message, reference=ref.text)
    return SecretFetchError(message, reference=ref.text)


def _classified(exc: Exception, where: str, ref: SecretReference) -> BaseException:
    """This package's error for what botocore raised while asking about ``ref``; anything else as it is."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        # AWS's message names the secret and the principal, never the value.
        message = f"{where}: {code or 'error'}: {error.get('Message', '')}".rstrip(": ")
        return _error_for_code(code, status, message, ref)
    if isinstance(exc, BotoCoreError):
        message = f"{where}: {type(exc).__name__}: {exc}"
        if isinstance(exc, _botocore_classes(_CREDENTIAL_ERRORS)):
            return SecretAccessDeniedError(f"{message} (no usable AWS credentials)", reference=ref.text)
        if isinstance(exc, _botocore_classes(_REQUEST_ERRORS)):
            return SecretFetchError(message, reference=ref.text)
        # Connection errors, timeouts and the like: the request may succeed later.
        return SecretTransientError(message, reference=ref.text)
    return exc


@dataclass(frozen=True)
class SecretPayload:
    """What AWS returned for one version of a secret. ``repr`` never shows the value."""

    arn: str
    version_id: str
    string: str | None
    binary: bytes | None
    #: the secret's name, as AWS's answer gave it (``None`` if it gave none)
    name: str | None = None

    def __repr__(self) -> str:
        kind = "string" if self.string is not None else "binary"
        return f"SecretPayload(arn={self.arn!r}, version_id={self.version_id!r}, {kind}=<hidden>)"


def fetch_secret(clients: RegionalClients, ref: SecretReference) -> SecretPayload:
    """Make one ``GetSecretValue`` call for ``ref``.

    :raises SecretNotFoundError: the secret or version does not exist (or is deleted)
    :raises SecretAccessDeniedError: not allowed, not decryptable, or no usable credentials
    :raises SecretTransientError: throttling, 5xx, timeout or connection failure after retries,
        or a success answer that holds no secret
    :raises SecretFetchError: anything else (a request botocore refuses to send)
    """
    request: dict[str, Any] = {"SecretId": ref.secret_id}
    if ref.version_id:
        request["VersionId"] = ref.version_id
    elif ref.version_stage:
        request["VersionStage"] = ref.version_stage
    where = _where(clients, ref)
    try:
        # Building the client may already fail (a credential process that errors): inside the try.
        client = clients.client(ref.region)
        count("aws_request")
        with timed("aws_latency"):
            response = client.get_secret_value(**request)
    except Exception as exc:
        raise _classified(exc, where, ref) from None
    if response.get("SecretString") is None and response.get("SecretBinary") is None:
        # A 200 that is not Secrets Manager's answer: botocore parses, say, a
        # proxy's HTML login page to an empty response. It says nothing about
        # the secret (unlike a not-found or a deny), and whatever is in the way
        # may step aside, so it is transient: never a value, never cached, and
        # a value fetched earlier may be served within its stale window.
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        raise SecretTransientError(
            f"{where}: HTTP {status} answer without SecretString or SecretBinary "
            "(not a Secrets Manager response: a proxy or a wrong endpoint_url?)",
            reference=ref.text,
        )
    count("aws_fetch")
    return SecretPayload(
        arn=response.get("ARN", ref.secret_id),
        version_id=response.get("VersionId", ""),
        string=response.get("SecretString"),
        binary=response.get("SecretBinary"),
        name=response.get("Name"),
    )


#: the most secrets one ``BatchGetSecretValue`` call may name
BATCH_LIMIT = 20


class BatchNotAllowed(Exception):  # noqa: N818 - a signal: fall back to one call per secret
    """The identity may not call ``BatchGetSecretValue`` at all."""


def batchable(ref: SecretReference) -> bool:
    """Whether ``ref`` may be fetched in a batch: the batch call has no version parameters."""
    return not ref.version_id and not ref.version_stage


def fetch_batch(
    clients: RegionalClients, region: str | None, refs: list[SecretReference], *, own_account: str | None = None
) -> dict[str, SecretPayload | SecretFetchError]:
    """Fetch up to :data:`BATCH_LIMIT` secrets of one region (current versions) in one ``BatchGetSecretValue`` call.

    AWS's answer lists secrets in no order and does not say which id each
    answers: :func:`airflow_sm_refs.secret_ids.match_batch` decides, and an
    item it matches to no id is not used.

    :param own_account: the account the identity acts in, if known (a plain name matches only its secrets)
    :return: for each requested secret id, its payload or the error AWS gave for it
        (the same classes :func:`fetch_secret` raises); an id AWS said nothing of, or
        answered ambiguously, is left out (it is then fetched on its own)
    :raises BatchNotAllowed: the identity may not call ``BatchGetSecretValue``
    :raises SecretFetchError: the call as a whole failed (its ``reference`` is the first one's)
    """
    ids = list(dict.fromkeys(ref.secret_id for ref in refs))
    if not 2 <= len(ids) <= BATCH_LIMIT:
        raise ValueError(f"a batch names 2 to {BATCH_LIMIT} secrets, got {len(ids)}")
    first = refs[0]
    where = f"{len(ids)} secrets in {clients.region_for(region) or 'the default region'} (BatchGetSecretValue)"
    try:
        client = clients.client(region)
        count("aws_request")
        with timed("aws_latency"):
            response = client.batch_get_secret_value(SecretIdList=ids)
    except Exception as exc:
        error = _classified(exc, where, first)
        if isinstance(error, SecretAccessDeniedError) and type(exc).__name__ == "ClientError":
            raise BatchNotAllowed(str(error)) from None
        raise error from None
    results: dict[str, SecretPayload | SecretFetchError] = {}
    by_id = {ref.secret_id: ref for ref in refs}
    # An id AWS reports an error for gets that error, whatever else the answer holds.
    for error_item in response.get("Errors") or []:
        ref = by_id.get(str(error_item.get("SecretId", "")))
        if ref is None or ref.secret_id in results:
            continue
        code = str(error_item.get("ErrorCode", ""))
        message = f"{_where(clients, ref)}: {code or 'error'}: {error_item.get('Message', '')}".rstrip(": ")
        results[ref.secret_id] = _error_for_code(code, 0, message, ref)
    answered: dict[BatchItem, dict[str, Any]] = {}
    for item in response.get("SecretValues") or []:
        if item.get("SecretString") is None and item.get("SecretBinary") is None:
            continue  # not a whole answer: that secret is fetched on its own
        answered.setdefault(BatchItem(str(item.get("ARN", "")), str(item.get("Name", ""))), item)
    asked = [secret_id for secret_id in ids if secret_id not in results]
    matched = match_batch(asked, answered, region=clients.region_for(region) or "", own_account=own_account)
    for secret_id, key in matched.items():
        item = answered[key]
        count("aws_fetch")
        results[secret_id] = SecretPayload(
            arn=key.arn,
            version_id=str(item.get("VersionId", "")),
            string=item.get("SecretString"),
            binary=item.get("SecretBinary"),
            name=key.name or None,
        )
    return results
