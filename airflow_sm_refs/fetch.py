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


@dataclass(frozen=True)
class SecretPayload:
    """What AWS returned for one version of a secret. ``repr`` never shows the value."""

    arn: str
    version_id: str
    string: str | None
    binary: bytes | None

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
    from botocore.exceptions import BotoCoreError, ClientError

    request: dict[str, Any] = {"SecretId": ref.secret_id}
    if ref.version_id:
        request["VersionId"] = ref.version_id
    elif ref.version_stage:
        request["VersionStage"] = ref.version_stage
    where = f"secret {ref.secret_id!r} ({ref.version_label}) in {clients.region_for(ref.region) or 'the default region'}"
    try:
        # Building the client may already fail (a credential process that errors): inside the try.
        client = clients.client(ref.region)
        count("aws_request")
        with timed("aws_latency"):
            response = client.get_secret_value(**request)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        # AWS's message names the secret and the principal, never the value.
        message = f"{where}: {code or 'error'}: {error.get('Message', '')}".rstrip(": ")
        if code in _NOT_FOUND:
            raise SecretNotFoundError(message, reference=ref.text) from None
        if code in _DENIED:
            raise SecretAccessDeniedError(message, reference=ref.text) from None
        if code in _TRANSIENT or status >= 500 or status == 429:
            raise SecretTransientError(message, reference=ref.text) from None
        raise SecretFetchError(message, reference=ref.text) from None
    except BotoCoreError as exc:
        message = f"{where}: {type(exc).__name__}: {exc}"
        if isinstance(exc, _botocore_classes(_CREDENTIAL_ERRORS)):
            raise SecretAccessDeniedError(f"{message} (no usable AWS credentials)", reference=ref.text) from None
        if isinstance(exc, _botocore_classes(_REQUEST_ERRORS)):
            raise SecretFetchError(message, reference=ref.text) from None
        # Connection errors, timeouts and the like: the request may succeed later.
        raise SecretTransientError(message, reference=ref.text) from None
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
    )
