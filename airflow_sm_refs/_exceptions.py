"""The errors this package raises.

Every error is an :class:`SecretReferenceError`, which Airflow treats as an
authoritative deny: the lookup stops there instead of falling through to a
backend that would hand out the raw reference as if it were the credential.

    SecretReferenceError (airflow.sdk.exceptions.AirflowSecretsBackendAccessDenied)
    ├── ReferenceSyntaxError      the text starts like a reference but does not parse
    ├── ReferenceNotAllowedError  the reference or connection is outside the allowlist
    ├── SecretKeyError            the key is missing, or the secret is not a JSON object
    └── SecretFetchError          AWS did not return the secret
        ├── SecretNotFoundError   gone, or never existed
        ├── SecretAccessDeniedError  access denied, or it cannot be decrypted
        └── SecretTransientError  throttling, 5xx, timeout, connection error

Context travels as attributes (``conn_id``, ``field``, ``reference``), and
every message names them. No message ever holds a secret value.
"""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied


class SecretReferenceError(AirflowSecretsBackendAccessDenied):
    """A reference in a connection or variable could not be resolved."""

    def __init__(
        self,
        message: str,
        *,
        reference: str | None = None,
        conn_id: str | None = None,
        field: str | None = None,
    ) -> None:
        self.detail = message
        self.reference = reference
        self.conn_id = conn_id
        self.field = field
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.conn_id is not None:
            where.append(f"connection {self.conn_id!r}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        if self.reference is not None:
            where.append(f"reference {self.reference!r}")
        return f"{', '.join(where)}: {self.detail}" if where else self.detail

    def located(self, *, conn_id: str | None, field: str | None) -> SecretReferenceError:
        """Return this error with the connection and field filled in where unknown."""
        if self.conn_id is None:
            self.conn_id = conn_id
        if self.field is None:
            self.field = field
        self.args = (self._render(),)
        return self

    def __str__(self) -> str:
        return self._render()

    def __reduce__(self):  # noqa: ANN204 - keep attributes across pickling (subprocesses)
        return (
            _rebuild,
            (type(self), self.detail, self.reference, self.conn_id, self.field),
        )


def _rebuild(
    cls: type[SecretReferenceError], detail: str, reference: str | None, conn_id: str | None, field: str | None
) -> SecretReferenceError:
    return cls(detail, reference=reference, conn_id=conn_id, field=field)


class ReferenceSyntaxError(SecretReferenceError, ValueError):
    """Text that starts like a reference does not follow the grammar."""


class ReferenceNotAllowedError(SecretReferenceError):
    """The reference, or references in this connection, are not allowed by the configuration."""


class SecretKeyError(SecretReferenceError, KeyError):
    """The secret has no such key, or is not a JSON object a key can be read from."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self._render()


class SecretFetchError(SecretReferenceError):
    """AWS Secrets Manager did not return the secret."""

    #: whether trying again later may succeed (throttling, 5xx, network)
    transient: bool = False


class SecretNotFoundError(SecretFetchError):
    """The secret, or the requested version of it, does not exist."""


class SecretAccessDeniedError(SecretFetchError):
    """The worker's AWS identity may not read or decrypt the secret."""


class SecretTransientError(SecretFetchError):
    """A failure that may pass: throttling, a 5xx, a timeout or a connection error."""

    transient = True
