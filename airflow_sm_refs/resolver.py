"""Turning a parsed reference into its value: cache in front, AWS behind.

``SecretResolver`` is what the backend and the hook share. It asks the
in-process cache (and, when one is configured, the per-worker cache) for the
secret's payload, fetches from AWS on a miss, then reads the key out of the
payload. Key extraction happens after the cache, so tokens naming different
keys of one secret cost one fetch.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from airflow_sm_refs._aws import RegionalClients
from airflow_sm_refs._exceptions import (
    SecretAccessDeniedError,
    SecretFetchError,
    SecretKeyError,
    SecretNotFoundError,
    SecretReferenceError,
)
from airflow_sm_refs._metrics import count
from airflow_sm_refs.cache import FailureWindow, TTLCache, longest
from airflow_sm_refs.fetch import (
    BATCH_LIMIT,
    BatchNotAllowed,
    SecretPayload,
    batchable,
    fetch_batch,
    fetch_secret,
)
from airflow_sm_refs.reference import SecretReference
from airflow_sm_refs.secret_ids import OWN_ACCOUNTS, every_spelling, is_name, region_of, same_secret_ids

__all__ = ["CacheSettings", "SecretResolver", "PROCESS_CACHE", "ResolvedSecret", "clear_process_cache"]

log = logging.getLogger("airflow_sm_refs")

#: the in-process tier, shared by every backend and hook instance in the process
PROCESS_CACHE: TTLCache[SecretPayload] = TTLCache(maxsize=1024)

DEFAULT_CACHE_TTL_SECONDS = 300.0
DEFAULT_STALE_IF_ERROR_SECONDS = 300.0
DEFAULT_NEGATIVE_CACHE_SECONDS = 10.0

#: AWS's answers about the secret itself, remembered for ``negative_cache_seconds``
_NEGATIVE = (SecretNotFoundError, SecretAccessDeniedError)


#: identities that may not call BatchGetSecretValue: they fetch one secret per call from then on
_BATCH_DENIED: set[str] = set()


def clear_process_cache() -> None:
    """Empty the in-process tier, and forget which identities may not batch and which account each acts in."""
    PROCESS_CACHE.clear()
    _BATCH_DENIED.clear()
    OWN_ACCOUNTS.clear()


class SharedTier(Protocol):
    """The per-worker tier, as the resolver sees it."""

    def get_or_fetch(
        self,
        key: tuple[str, ...],
        fetch: Callable[[], SecretPayload],
        *,
        ttl: float,
        stale_if_error: float,
        negative_ttl: FailureWindow = 0.0,
    ) -> tuple[SecretPayload, str, float]:
        """Return the payload, its source (``aws``, ``worker cache``...) and its age: seconds since it was fetched.

        ``ttl``, ``stale_if_error`` and ``negative_ttl`` are the caller's own,
        applied to the fetch time. A remembered not-found or denied answer is
        raised with its age as ``remembered_age``.
        """
        ...

    def fresh(self, key: tuple[str, ...], ttl: float, negative_ttl: FailureWindow = 0.0) -> bool:
        """Whether a lookup of ``key`` would be answered without AWS (a fresh value or a remembered answer)."""
        ...

    def store(self, key: tuple[str, ...], payload: SecretPayload, *, ttl: float, stale_if_error: float) -> None:
        """Record ``payload`` for ``key``, fetched just now."""
        ...

    def store_failure(self, key: tuple[str, ...], exc: SecretFetchError, *, ttl: float, stale_if_error: float) -> None:
        """Record AWS's not-found or denied answer for ``key``."""
        ...

    def drop(self, key: tuple[str, ...]) -> None:
        """Delete the entry for ``key``."""
        ...

    def locked_many(self, keys: list[tuple[str, ...]]) -> AbstractContextManager[None]:
        """Hold the locks of all ``keys``, taken in one fixed order."""
        ...

    def peek(self, key: tuple[str, ...], ttl: float = 0.0) -> tuple[SecretPayload, float] | None:
        """The payload held for ``key``, fresh or not, and when it expires for ``ttl``; ``None`` if none is."""
        ...

    def forget_where(
        self,
        matches: Callable[[tuple[str, ...]], bool],
        *,
        record: Callable[[tuple[str, ...]], bool],
        error: SecretFetchError,
        ttl: float,
        stale_if_error: float,
    ) -> None:
        """Drop the value of every entry whose key ``matches``; record ``error`` in its place where ``record``."""
        ...


@dataclass(frozen=True)
class ResolvedSecret:
    """A value and where it came from (``aws``, ``worker cache``, ``process cache``)."""

    value: str = field(repr=False)
    source: str
    seconds: float
    #: the payload the value was read from (what a memoised expansion depends on)
    payload: SecretPayload | None = field(default=None, repr=False, compare=False)


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, SecretFetchError) and exc.transient


@dataclass
class SecretResolver:
    """Resolves references for one AWS identity.

    :param clients: Secrets Manager clients for the identity
    :param cache_ttl_seconds: how long a fetched value is served before it is fetched again
    :param stale_if_error_seconds: how long past expiry a value may still be served when
        AWS fails for a transient reason
    :param cache: the in-process tier (tests inject one with a fake clock)
    :param shared: the per-worker tier, or ``None`` when it is off
    :param negative_cache_seconds: how long a not-found or denied answer is raised again without
        asking AWS. 0 (the default here; :class:`CacheSettings` gives the backend and hook 10): never
    """

    clients: RegionalClients
    cache_ttl_seconds: float = DEFAULT_CACHE_TTL_SECONDS
    stale_if_error_seconds: float = DEFAULT_STALE_IF_ERROR_SECONDS
    cache: TTLCache[SecretPayload] = field(default_factory=lambda: PROCESS_CACHE)
    shared: SharedTier | None = None
    negative_cache_seconds: float = 0.0
    #: how long a not-found answer is remembered, when not ``negative_cache_seconds`` (a denial keeps that)
    not_found_cache_seconds: float | None = None
    _local: threading.local = field(default_factory=threading.local, repr=False)

    @property
    def negative_window(self) -> FailureWindow:
        """How long each kind of remembered answer is raised again without asking AWS."""
        if self.not_found_cache_seconds is None:
            return self.negative_cache_seconds
        return {
            SecretNotFoundError.__name__: self.not_found_cache_seconds,
            SecretAccessDeniedError.__name__: self.negative_cache_seconds,
        }

    def cache_key(self, ref: SecretReference) -> tuple[str, ...]:
        """(identity, region, secret, version): what one cache entry holds."""
        version = f"id:{ref.version_id}" if ref.version_id else f"stage:{ref.version_stage or 'AWSCURRENT'}"
        region = self.clients.region_for(ref.region) or ""
        return (self.clients.identity, region, ref.secret_id, version)

    def payload(self, ref: SecretReference) -> tuple[SecretPayload, str]:
        """The secret's payload for ``ref`` and where it came from."""
        key = self.cache_key(ref)
        negative_ttl = self.negative_window
        remembered = self.cache.recent_failure(key, negative_ttl)
        if remembered is not None:
            count("negative_hit")
            raise remembered
        # Where this thread's load got the payload; ``None`` if another thread
        # loaded it (this one waited on its flight), so nothing here came from AWS.
        fetched_from: list[str | None] = [None]
        # A value read from the worker tier keeps its fetch time in this tier
        # too, so it is never served past cache_ttl_seconds from its fetch;
        # the same for a not-found or denied answer it remembered.
        age = [0.0]

        def load() -> SecretPayload:
            fetched_from[0] = "aws"
            if self.shared is not None:
                try:
                    payload, source, fetched_ago = self.shared.get_or_fetch(
                        key,
                        lambda: fetch_secret(self.clients, ref),
                        ttl=self.cache_ttl_seconds,
                        stale_if_error=self.stale_if_error_seconds,
                        negative_ttl=negative_ttl,
                    )
                except _NEGATIVE as exc:
                    remembered_age = getattr(exc, "remembered_age", None)
                    if remembered_age is not None:
                        count("negative_hit")
                        age[0] = float(remembered_age)
                    raise
                fetched_from[0] = source
                age[0] = fetched_ago
                return payload
            return fetch_secret(self.clients, ref)

        # What this tier held, fresh or not: a not-found or denied answer drops its other spellings too.
        previous = self.cache.value_of(key)
        try:
            result = self.cache.get_or_load(
                key,
                load,
                ttl=self.cache_ttl_seconds,
                stale_if_error=self.stale_if_error_seconds,
                is_transient=_is_transient,
                age=lambda: age[0],
            )
        except _NEGATIVE as exc:
            if fetched_from[0] == "aws" and getattr(exc, "remembered_age", None) is None:
                # AWS said so just now (a remembered answer was acted on when it was given).
                held_arn = getattr(exc, "held_arn", None) or (previous.arn if previous is not None else None)
                held_name = getattr(exc, "held_name", None) or (previous.name if previous is not None else None)
                self._forget(key, exc, held_arn, held_name)
            if longest(negative_ttl) > 0:
                # Only the failure is remembered, never a value: no revocation waits on it.
                self.cache.remember_failure(key, exc, age=age[0])
            raise
        if result.source == "hit":
            count("cache_hit.process")
            return result.value, "process cache"
        if result.source == "stale":
            count("stale_served")
            log.warning(
                "Serving the expired cached value of %s (%s) for up to %ss more: AWS failed: %s",
                ref.secret_id,
                ref.version_label,
                self.stale_if_error_seconds,
                result.error,
            )
            return result.value, "process cache (stale)"
        if fetched_from[0] is None:
            # Loaded by another thread of this process, which did the rest.
            count("cache_hit.process")
            return result.value, "process cache"
        if fetched_from[0] in ("aws", "worker cache"):
            # A name AWS answered (now, or for the process that wrote the worker entry) tells our account.
            OWN_ACCOUNTS.learn(self.clients.identity, ref.secret_id, result.value.arn)
        if fetched_from[0] == "aws":
            self._store(self._alias_keys(key, result.value), result.value)
        if fetched_from[0] == "worker cache":
            count("cache_hit.worker")
        elif fetched_from[0] == "worker cache (stale)":
            count("stale_served")
        return result.value, fetched_from[0]

    def _alias_keys(self, key: tuple[str, ...], payload: SecretPayload) -> list[tuple[str, ...]]:
        """The keys, besides ``key``, a payload AWS answered ``key`` with may be served under.

        :mod:`airflow_sm_refs.secret_ids` decides (full ARN; partial ARN unless
        the name ends like a suffix; the name only in our own account), so a
        lookup by another spelling of the same secret is a hit, not a second
        fetch, and never a hit for a different secret. They are dropped
        together when AWS says the secret is gone or denied (:meth:`_drop_spellings`).
        """
        identity, region, asked, version = key
        own = OWN_ACCOUNTS.get(identity)
        ids = same_secret_ids(asked, payload.arn, payload.name, region=region, own_account=own)
        # An ARN is looked up in its own region, a name in ours (the same, or the name is no alias).
        return [(identity, region_of(other) or region, other, version) for other in ids]

    def _store(self, keys: list[tuple[str, ...]], payload: SecretPayload) -> None:
        """Record ``payload``, fetched just now, under each of ``keys`` in both tiers."""
        for key in keys:
            self.cache.put(key, payload, ttl=self.cache_ttl_seconds)
            if self.shared is not None:
                self.shared.store(key, payload, ttl=self.cache_ttl_seconds, stale_if_error=self.stale_if_error_seconds)

    def _forget(self, key: tuple[str, ...], exc: SecretFetchError, held_arn: str | None, held_name: str | None) -> None:
        """After AWS said not-found or denied for ``key``: no tier serves that secret's older value again.

        Every spelling the secret may be held under (from the id asked, and
        from the ARN of the value held, if any) is dropped in both tiers, in
        every region; a denial drops every version, a not-found only the one
        asked (a missing stage is not a missing secret). Where the spelling
        is provably the same secret (:func:`~airflow_sm_refs.secret_ids.same_secret_ids`),
        the worker tier keeps a record of the answer, so that another process
        holding an older copy in its own tier does not serve it stale when AWS
        then fails for a transient reason.
        """
        identity, region, asked, version = key
        wide = set(every_spelling(asked))
        if held_arn:
            wide |= set(every_spelling(held_arn, held_name))
        # Only an ARN AWS answered with is known to be this secret's: a full ARN that was merely
        # asked may be mistyped (another suffix), and its "not found" says nothing of the name's secret.
        arn = held_arn
        strict = {asked}
        if arn is not None:
            own = OWN_ACCOUNTS.get(identity)
            strict |= set(same_secret_ids(asked, arn, held_name, region=region, own_account=own))
        every_version = isinstance(exc, SecretAccessDeniedError)

        def matches(other: tuple[str, ...]) -> bool:
            return other[0] == identity and other[2] in wide and (every_version or other[3] == version)

        self.cache.drop_where(lambda other: other != key and matches(other))
        if self.shared is None:
            return
        names_region = self.clients.region_for(None) or ""
        for spelling in strict - {asked}:
            self.shared.store_failure(
                (identity, region_of(spelling) or names_region, spelling, version),
                exc,
                ttl=self.cache_ttl_seconds,
                stale_if_error=self.stale_if_error_seconds,
            )
        self.shared.forget_where(
            lambda other: other != key and matches(other),
            record=lambda other: other[2] in strict,
            error=exc,
            ttl=self.cache_ttl_seconds,
            stale_if_error=self.stale_if_error_seconds,
        )

    def _held(self, key: tuple[str, ...]) -> SecretPayload | None:
        """What either tier holds for ``key``, fresh or not."""
        payload = self.cache.value_of(key)
        if payload is None and self.shared is not None:
            seen = self.shared.peek(key)
            payload = seen[0] if seen is not None else None
        return payload

    def _answered_without_aws(self, key: tuple[str, ...]) -> bool:
        if self.cache.peek(key, self.cache_ttl_seconds) is not None:
            return True
        if self.cache.recent_failure(key, self.negative_window) is not None:
            return True
        return self.shared is not None and self.shared.fresh(key, self.cache_ttl_seconds, self.negative_window)

    def prefetch(self, refs: list[SecretReference]) -> set[tuple[str, ...]]:
        """Fetch in batches the secrets of ``refs`` that no tier holds, when two or more of one region do.

        Afterwards each is a hit (or a remembered not-found or denied answer)
        for :meth:`resolve`. Secrets with a version stage or id, a batch that
        fails as a whole and anything AWS left out are left for
        :meth:`resolve` to fetch one by one, as it would have. Never raises
        for a secret: :meth:`resolve` reports each in its place.

        :return: the cache keys of the secrets fetched
        """
        if self.clients.identity in _BATCH_DENIED or self.cache_ttl_seconds <= 0:
            return set()
        wanted: dict[tuple[str, ...], SecretReference] = {}
        for ref in refs:
            if batchable(ref):
                key = self.cache_key(ref)
                if key not in wanted and not self._answered_without_aws(key):
                    wanted[key] = ref
        # Until AWS has told us which account we act in, a plain name and an
        # ARN are never asked in one batch: its answer could not say which
        # item is our account's (secret_ids.match_batch).
        own_known = OWN_ACCOUNTS.get(self.clients.identity) is not None
        groups: dict[tuple[str, bool], list[tuple[tuple[str, ...], SecretReference]]] = {}
        for key, ref in wanted.items():
            groups.setdefault((key[1], own_known or is_name(ref.secret_id)), []).append((key, ref))
        fetched: set[tuple[str, ...]] = set()
        for items in groups.values():
            for start in range(0, len(items), BATCH_LIMIT):
                chunk = items[start : start + BATCH_LIMIT]
                if len(chunk) >= 2:
                    fetched |= self._fetch_batch(chunk)
        return fetched

    def _fetch_batch(self, items: list[tuple[tuple[str, ...], SecretReference]]) -> set[tuple[str, ...]]:
        if self.shared is not None:
            # No two processes fetch one secret at once: hold every entry's
            # stripe, then ask again what another process fetched meanwhile.
            with self.shared.locked_many([key for key, _ in items]):
                items = [(key, ref) for key, ref in items if not self._answered_without_aws(key)]
                return self._fetch_batch_unlocked(items) if len(items) >= 2 else set()
        return self._fetch_batch_unlocked(items)

    def _fetch_batch_unlocked(self, items: list[tuple[tuple[str, ...], SecretReference]]) -> set[tuple[str, ...]]:
        refs = [ref for _, ref in items]
        started = time.perf_counter()
        identity = self.clients.identity
        try:
            results = fetch_batch(self.clients, items[0][0][1], refs, own_account=OWN_ACCOUNTS.get(identity))
        except BatchNotAllowed as exc:
            if self.clients.identity not in _BATCH_DENIED:
                _BATCH_DENIED.add(self.clients.identity)
                log.info(
                    "BatchGetSecretValue is not allowed for this AWS identity (%s); fetching one secret per "
                    "GetSecretValue call from now on in this process. Allow secretsmanager:BatchGetSecretValue "
                    "to make one call for a connection's secrets.",
                    exc,
                )
            return set()
        except SecretReferenceError as exc:
            log.debug("BatchGetSecretValue failed (%s); fetching the secrets one by one", exc.detail)
            return set()
        fetched: set[tuple[str, ...]] = set()
        for key, ref in items:
            result = results.get(ref.secret_id)
            if isinstance(result, SecretPayload):
                fetched.add(key)
                OWN_ACCOUNTS.learn(identity, ref.secret_id, result.arn)
                self._store([key, *self._alias_keys(key, result)], result)
            elif isinstance(result, _NEGATIVE):
                # As after a single fetch: the worker tier records the answer under the id
                # asked (whatever negative_cache_seconds), the value goes under every spelling...
                held = self._held(key)
                self.cache.drop(key)
                if self.shared is not None:
                    self.shared.store_failure(
                        key, result, ttl=self.cache_ttl_seconds, stale_if_error=self.stale_if_error_seconds
                    )
                self._forget(key, result, held.arn if held else None, held.name if held else None)
                if longest(self.negative_window) > 0:
                    # ...and the answer is remembered; resolve() raises it in its place.
                    self.cache.remember_failure(key, result)
        log.info(
            "fetched %d of %d secrets in one BatchGetSecretValue call in %.1f ms",
            len(fetched),
            len(items),
            (time.perf_counter() - started) * 1000,
        )
        return fetched

    def resolve_cached(self, ref: SecretReference) -> ResolvedSecret | None:
        """The value of ``ref`` if the in-process tier holds it fresh, else ``None``; never waits."""
        started = time.perf_counter()
        payload = self.cache.peek(self.cache_key(ref), self.cache_ttl_seconds)
        if payload is None:
            return None
        count("cache_hit.process")
        try:
            value = extract_value(ref, payload)
        except SecretReferenceError as exc:
            count(f"error.{type(exc).__name__}")
            raise
        return ResolvedSecret(value, "process cache", time.perf_counter() - started, payload)

    def resolve(self, ref: SecretReference) -> ResolvedSecret:
        """The value ``ref`` names: the whole secret, or one key of its JSON.

        :raises SecretReferenceError: (a subclass) when it cannot be resolved
        """
        started = time.perf_counter()
        try:
            payload, source = self.payload(ref)
            value = extract_value(ref, payload)
        except SecretReferenceError as exc:
            count(f"error.{type(exc).__name__}")
            raise
        return ResolvedSecret(value, source, time.perf_counter() - started, payload)


@dataclass(frozen=True)
class CacheSettings:
    """The cache options the backend and the hook share, validated once.

    :param cache_ttl_seconds: how long a fetched value is served; 0 disables caching
    :param stale_if_error_seconds: how long past expiry a value may be served on transient failures
    :param shared_cache: whether to use the per-worker tier
    :param shared_cache_dir: its directory; ``None``: the default on ``/dev/shm``
    :param shared_cache_max_entries: most entries in that directory; the oldest fetched are evicted first
    :param negative_cache_seconds: how long a not-found or denied answer is remembered in both tiers
        (a lookup within it fails the same way with no AWS call); 0: never
    """

    cache_ttl_seconds: float = DEFAULT_CACHE_TTL_SECONDS
    stale_if_error_seconds: float = DEFAULT_STALE_IF_ERROR_SECONDS
    shared_cache: bool = True
    shared_cache_dir: str | None = None
    shared_cache_max_entries: int = 1000
    negative_cache_seconds: float = DEFAULT_NEGATIVE_CACHE_SECONDS

    def __post_init__(self) -> None:
        ttl, stale = float(self.cache_ttl_seconds), float(self.stale_if_error_seconds)
        negative = float(self.negative_cache_seconds)
        if ttl < 0 or stale < 0 or negative < 0:
            raise ValueError("cache_ttl_seconds, stale_if_error_seconds and negative_cache_seconds must not be negative")
        object.__setattr__(self, "negative_cache_seconds", negative)
        max_entries = self.shared_cache_max_entries
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"shared_cache_max_entries must be a whole number of at least 1, got {max_entries!r}")
        object.__setattr__(self, "cache_ttl_seconds", ttl)
        object.__setattr__(self, "stale_if_error_seconds", stale)
        object.__setattr__(self, "shared_cache", bool(self.shared_cache))

    @classmethod
    def from_options(
        cls,
        cache_ttl_seconds: Any,
        stale_if_error_seconds: Any,
        shared_cache: Any,
        shared_cache_dir: Any,
        shared_cache_max_entries: Any,
        negative_cache_seconds: Any,
    ) -> CacheSettings:
        """Parse the options as an operator wrote them (strings from per-key overrides included), strictly."""
        from airflow_sm_refs._options import parse_bool, parse_int, parse_number, parse_str

        return cls(
            parse_number(cache_ttl_seconds, "cache_ttl_seconds"),
            parse_number(stale_if_error_seconds, "stale_if_error_seconds"),
            parse_bool(shared_cache, "shared_cache"),
            parse_str(shared_cache_dir, "shared_cache_dir"),
            parse_int(shared_cache_max_entries, "shared_cache_max_entries"),
            parse_number(negative_cache_seconds, "negative_cache_seconds"),
        )

    def resolver_for(self, clients: RegionalClients) -> SecretResolver:
        """A resolver for ``clients`` with the process tier and, if enabled and safe, the worker tier."""
        from airflow_sm_refs.worker_cache import open_worker_cache

        return SecretResolver(
            clients,
            cache_ttl_seconds=self.cache_ttl_seconds,
            stale_if_error_seconds=self.stale_if_error_seconds,
            negative_cache_seconds=self.negative_cache_seconds,
            shared=open_worker_cache(
                self.shared_cache_dir,
                enabled=self.shared_cache and self.cache_ttl_seconds > 0,
                max_entries=self.shared_cache_max_entries,
            ),
        )


def extract_value(ref: SecretReference, payload: SecretPayload) -> str:
    """Read ``ref.key`` out of ``payload``; the whole secret when the key is empty.

    :raises SecretKeyError: the key is missing, or the secret is not a JSON object
    """
    if payload.string is None:
        binary = payload.binary or b""
        if ref.key:
            raise SecretKeyError(
                f"key {ref.key!r} asked of secret {ref.secret_id!r}, which holds binary data (SecretBinary); "
                "use the whole-secret form {{workato:sm::<secret-id>}} to get it base64-encoded",
                reference=ref.text,
            )
        return base64.b64encode(binary).decode("ascii")
    if not ref.key:
        return payload.string
    try:
        document: Any = json.loads(payload.string)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise SecretKeyError(
            f"key {ref.key!r} asked of secret {ref.secret_id!r}, whose value is not a JSON object; "
            "use an empty key ({{workato:sm::<secret-id>}}) for a plaintext secret",
            reference=ref.text,
        )
    if ref.key not in document:
        raise SecretKeyError(
            f"secret {ref.secret_id!r} ({ref.version_label}) has no key {ref.key!r}", reference=ref.text
        )
    value = document[ref.key]
    if isinstance(value, str):
        return value
    # Numbers, booleans, nested objects: their JSON text (a port 5432 becomes "5432").
    return json.dumps(value)
