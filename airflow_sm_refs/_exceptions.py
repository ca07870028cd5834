"""The errors this package raises.

Every error is a :class:`SecretReferenceError`. Where the Task SDK has
``AirflowSecretsBackendAccessDenied`` (Airflow 3.2.2+), it derives from it and
Airflow treats it as an authoritative deny: the lookup stops there instead of
falling through to a backend that would hand out the raw reference as if it
were the credential. On older lines it is an ordinary ``Exception``, and the
backend raises :class:`SecretLookupAborted` in its place in processes that
resolve, so that the lookup stops there too.

    SecretReferenceError (AirflowSecretsBackendAccessDenied on 3.2.2+, else Exception)
    ├── ReferenceSyntaxError      the text starts like a reference but does not parse
    ├── ReferenceNotAllowedError  the reference or connection is outside the allowlist
    ├── BackendOptionError        the backend's options (backend_kwargs) are invalid
    ├── SecretKeyError            the key is missing, or the secret is not a JSON object
    └── SecretFetchError          AWS did not return the secret
        ├── SecretNotFoundError   gone, or never existed
        ├── SecretAccessDeniedError  access denied, or it cannot be decrypted
        └── SecretTransientError  throttling, 5xx, timeout, connection error

    SecretLookupAborted (BaseException)  a SecretReferenceError that must stop Airflow's lookup
                                         loop on lines without the authoritative deny

Context travels as attributes (``conn_id``, ``field``, ``reference``), and
every message names them. No message ever holds a secret value.
"""

from __future__ import annotations

from airflow_sm_refs._compat import DenyBase


class SecretReferenceError(DenyBase):  # type: ignore[misc,valid-type]
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
            where.append(f"reference {_as_named(self.reference)!r}")
        return f"{', '.join(where)}: {self.detail}" if where else self.detail

    def located(
        self, *, conn_id: str | None, field: str | None, reference: str | None = None
    ) -> SecretReferenceError:
        """Return this error with the connection, field and reference filled in where unknown."""
        if self.conn_id is None:
            self.conn_id = conn_id
        if self.field is None:
            self.field = field
        if self.reference is None:
            self.reference = reference
        self.args = (self._render(),)
        return self

    def __str__(self) -> str:
        return self._render()

    def __reduce__(self):  # noqa: ANN204 - keep attributes across pickling (subprocesses)
        return (
            _rebuild,
            (type(self), self.detail, self.reference, self.conn_id, self.field),
        )


def _as_named(reference: str) -> str:
    """The reference as messages name it: without its braces.

    Airflow registers a connection's *stored* password with the secrets
    masker (3.x's supervisor, 2.x/3.0's ``Connection``), and a password that
    is exactly one reference would turn the reference in a task log into
    ``***``; named without the braces it stays readable.
    """
    text = reference.strip()
    # Each end on its own: a malformed reference may lack its closing braces
    # ("no closing '}}'") or be cut short ("...") and is named the same way.
    if text.startswith("{{"):
        text = text[2:]
    if text.endswith("}}"):
        text = text[:-2]
    return text.strip()


def _rebuild(
    cls: type[SecretReferenceError], detail: str, reference: str | None, conn_id: str | None, field: str | None
) -> SecretReferenceError:
    return cls(detail, reference=reference, conn_id=conn_id, field=field)


class ReferenceSyntaxError(SecretReferenceError, ValueError):
    """Text that starts like a reference does not follow the grammar."""


class ReferenceNotAllowedError(SecretReferenceError):
    """The reference, or references in this connection, are not allowed by the configuration."""


class BackendOptionError(SecretReferenceError):
    """The backend's options are invalid: nothing is resolved until they are fixed."""


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


class SecretLookupAborted(BaseException):
    """A :class:`SecretReferenceError` raised so that Airflow's lookup loop cannot swallow it.

    Before Airflow 3.2.2 every lookup loop catches ``Exception`` and tries the
    next backend, which hands out the raw reference. This error is not an
    ``Exception`` (nor ``SystemExit``, ``KeyboardInterrupt``, ``GeneratorExit``
    or ``CancelledError``, which the triggerer drops quietly), so it passes
    every loop; the 2.x ``_run_raw_task``, the 3.x ``task_runner.run`` and the
    triggerer's ``cleanup_finished_triggers`` catch ``BaseException`` and fail
    the task cleanly, with retries honoured. The message is the error's own.

    :param error: the error it carries, also as ``__cause__``
    """

    def __init__(self, error: SecretReferenceError) -> None:
        self.error = error
        super().__init__(str(error))

    def __str__(self) -> str:
        return str(self.error)

    def __reduce__(self):  # noqa: ANN204 - survive pickling between processes
        return (type(self), (self.error,))
