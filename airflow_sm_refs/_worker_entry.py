"""The on-disk format of a per-worker cache entry.

An entry file is one header line, then a JSON body::

    airflow-sm-refs-entry 1 <body length> <sha256 of body>
    {"key": [...], "attempt": "...", "payload": {...} | null, "expires_at": ...,
     "retry_at": ..., "error": {...} | null}

The header carries the body's length and SHA-256 and the body carries its key,
so a corrupt, truncated or misplaced file decodes to ``None`` (a miss), never
to a value.

``attempt`` names the fetch that wrote the entry. A process that waited on the
lock compares it with what it saw before waiting: if it changed, another
process has just tried, and its outcome (value, stale value or error) is
reused instead of calling AWS again. ``error`` records a failed attempt (its
message, which never holds a value); after a permanent failure the payload is
gone. ``retry_at`` spaces out calls while AWS fails transiently and a stale
value is being served.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from airflow_sm_refs._exceptions import (
    SecretAccessDeniedError,
    SecretFetchError,
    SecretNotFoundError,
    SecretTransientError,
)
from airflow_sm_refs.fetch import SecretPayload

_MAGIC = b"airflow-sm-refs-entry"
_FORMAT = b"1"
#: a secret is at most 64 KiB; JSON escaping can grow it six-fold
_MAX_ENTRY_BYTES = 1 << 20

_ERRORS: dict[str, type[SecretFetchError]] = {
    cls.__name__: cls for cls in (SecretFetchError, SecretNotFoundError, SecretAccessDeniedError, SecretTransientError)
}


@dataclass(frozen=True)
class _Failure:
    """A failed fetch, as recorded for the processes that waited on it."""

    kind: str
    detail: str
    reference: str | None

    @classmethod
    def of(cls, exc: SecretFetchError) -> _Failure:
        kind = type(exc).__name__
        if kind not in _ERRORS:
            kind = "SecretTransientError" if exc.transient else "SecretFetchError"
        return cls(kind, exc.detail, exc.reference)

    @property
    def transient(self) -> bool:
        return _ERRORS[self.kind].transient

    def error(self) -> SecretFetchError:
        return _ERRORS[self.kind](self.detail, reference=self.reference)


@dataclass(frozen=True)
class _Entry:
    key: tuple[str, ...]
    attempt: str
    payload: SecretPayload | None
    expires_at: float = 0.0
    retry_at: float = 0.0
    failure: _Failure | None = None

    def is_fresh(self, now: float) -> bool:
        return self.payload is not None and now < self.expires_at

    def can_serve_stale(self, now: float, stale_if_error: float) -> bool:
        return self.payload is not None and now < self.expires_at + max(stale_if_error, 0.0)


def _entry_name(key: tuple[str, ...]) -> str:
    return hashlib.sha256(json.dumps(list(key)).encode()).hexdigest()


def _encode(entry: _Entry) -> bytes:
    payload: dict[str, Any] | None = None
    if entry.payload is not None:
        p = entry.payload
        payload = {
            "arn": p.arn,
            "version_id": p.version_id,
            "string": p.string,
            "binary": None if p.binary is None else base64.b64encode(p.binary).decode("ascii"),
        }
    body = json.dumps(
        {
            "key": list(entry.key),
            "attempt": entry.attempt,
            "payload": payload,
            "expires_at": entry.expires_at,
            "retry_at": entry.retry_at,
            "error": None if entry.failure is None else vars(entry.failure),
        }
    ).encode()
    header = b" ".join((_MAGIC, _FORMAT, str(len(body)).encode(), hashlib.sha256(body).hexdigest().encode()))
    return header + b"\n" + body


def _decode(data: bytes, key: tuple[str, ...]) -> _Entry | None:
    """The entry in ``data`` if it is whole, intact and for ``key``; otherwise ``None`` (a miss)."""
    header, newline, body = data.partition(b"\n")
    fields = header.split(b" ")
    if not newline or len(fields) != 4 or fields[0] != _MAGIC or fields[1] != _FORMAT:
        return None
    if fields[2] != str(len(body)).encode() or fields[3] != hashlib.sha256(body).hexdigest().encode():
        return None
    try:
        doc = json.loads(body)
        if tuple(doc["key"]) != key:
            return None
        payload = None
        if doc["payload"] is not None:
            p = doc["payload"]
            payload = SecretPayload(
                arn=str(p["arn"]),
                version_id=str(p["version_id"]),
                string=None if p["string"] is None else str(p["string"]),
                binary=None if p["binary"] is None else base64.b64decode(p["binary"], validate=True),
            )
        failure = None
        if doc["error"] is not None:
            e = doc["error"]
            if e["kind"] not in _ERRORS:
                return None
            reference = None if e["reference"] is None else str(e["reference"])
            failure = _Failure(str(e["kind"]), str(e["detail"]), reference)
        return _Entry(
            key=key,
            attempt=str(doc["attempt"]),
            payload=payload,
            expires_at=float(doc["expires_at"]),
            retry_at=float(doc["retry_at"]),
            failure=failure,
        )
    except (ValueError, KeyError, TypeError):
        return None
