"""The on-disk format of a per-worker cache entry.

An entry file is one header line, then a JSON body::

    airflow-sm-refs-entry 2 <body length> <sha256 of body>
    {"key": [...], "attempt": "...", "payload": {...} | null, "fetched_at": ...,
     "draw": ..., "retry_at": ..., "error": {...} | null}

The header carries the body's length and SHA-256 and the body carries its key,
so a corrupt, truncated or misplaced file decodes to ``None`` (a miss), never
to a value.

``fetched_at`` is when the value was fetched (wall clock), not when it
expires: every reader applies its own ``cache_ttl_seconds`` and stale window
to it, so a reader with a TTL of 60 s is never served a value fetched 30
minutes ago by a writer with a TTL of an hour. ``draw`` is the entry's jitter
draw in ``[0, 1)``: a reader's TTL is shortened by ``jitter * draw`` of
itself, never lengthened, and the same entry expires at the same moment for
readers with the same TTL. An entry from the future (the clock stepped back)
is not fresh. The file's mtime is set to ``fetched_at`` (for a failed attempt
without a value, the time of the attempt), so the sweep that bounds the
directory judges ages from ``stat`` alone. Format 1 files (a writer's
``expires_at``) are misses, rewritten on the next fetch.

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
#: 3: payloads carry the secret's name, and entries are stored only under
#: the ids :mod:`airflow_sm_refs.secret_ids` allows; a format-2 entry (written
#: under looser rules) is a miss
_FORMAT = b"3"
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
    #: when the payload was fetched; for a failure without a payload, when the attempt failed
    fetched_at: float = 0.0
    #: the jitter draw, in [0, 1)
    draw: float = 0.0
    retry_at: float = 0.0
    failure: _Failure | None = None

    def lifetime(self, ttl: float, jitter: float) -> float:
        """How long after its fetch the payload is fresh for a reader with ``ttl``."""
        return ttl * (1.0 - jitter * min(max(self.draw, 0.0), 1.0))

    def expires_at(self, ttl: float, jitter: float) -> float:
        return self.fetched_at + self.lifetime(ttl, jitter)

    def is_fresh(self, now: float, ttl: float, jitter: float) -> bool:
        return self.payload is not None and self.fetched_at <= now < self.expires_at(ttl, jitter)

    def can_serve_stale(self, now: float, ttl: float, stale_if_error: float, jitter: float) -> bool:
        return (
            self.payload is not None
            and self.fetched_at <= now < self.expires_at(ttl, jitter) + max(stale_if_error, 0.0)
        )


def _entry_name(key: tuple[str, ...]) -> str:
    return hashlib.sha256(json.dumps(list(key)).encode()).hexdigest()


def _encode(entry: _Entry) -> bytes:
    payload: dict[str, Any] | None = None
    if entry.payload is not None:
        p = entry.payload
        payload = {
            "arn": p.arn,
            "version_id": p.version_id,
            "name": p.name,
            "string": p.string,
            "binary": None if p.binary is None else base64.b64encode(p.binary).decode("ascii"),
        }
    body = json.dumps(
        {
            "key": list(entry.key),
            "attempt": entry.attempt,
            "payload": payload,
            "fetched_at": entry.fetched_at,
            "draw": entry.draw,
            "retry_at": entry.retry_at,
            "error": None if entry.failure is None else vars(entry.failure),
        }
    ).encode()
    header = b" ".join((_MAGIC, _FORMAT, str(len(body)).encode(), hashlib.sha256(body).hexdigest().encode()))
    return header + b"\n" + body


def _decode(data: bytes, key: tuple[str, ...] | None) -> _Entry | None:
    """The entry in ``data`` if it is whole, intact and for ``key`` (``None``: any); otherwise ``None`` (a miss)."""
    header, newline, body = data.partition(b"\n")
    fields = header.split(b" ")
    if not newline or len(fields) != 4 or fields[0] != _MAGIC or fields[1] != _FORMAT:
        return None
    if fields[2] != str(len(body)).encode() or fields[3] != hashlib.sha256(body).hexdigest().encode():
        return None
    try:
        doc = json.loads(body)
        found = tuple(str(part) for part in doc["key"])
        if key is not None and found != key:
            return None
        payload = None
        if doc["payload"] is not None:
            p = doc["payload"]
            payload = SecretPayload(
                arn=str(p["arn"]),
                version_id=str(p["version_id"]),
                string=None if p["string"] is None else str(p["string"]),
                binary=None if p["binary"] is None else base64.b64decode(p["binary"], validate=True),
                name=None if p.get("name") is None else str(p["name"]),
            )
        failure = None
        if doc["error"] is not None:
            e = doc["error"]
            if e["kind"] not in _ERRORS:
                return None
            reference = None if e["reference"] is None else str(e["reference"])
            failure = _Failure(str(e["kind"]), str(e["detail"]), reference)
        return _Entry(
            key=found,
            attempt=str(doc["attempt"]),
            payload=payload,
            fetched_at=float(doc["fetched_at"]),
            draw=float(doc["draw"]),
            retry_at=float(doc["retry_at"]),
            failure=failure,
        )
    except (ValueError, KeyError, TypeError):
        return None
