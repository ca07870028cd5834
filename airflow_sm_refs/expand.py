"""Expanding references in connection fields, extras and variable values (DESIGN §2).

Expansion works on parsed data: ``extra`` is parsed as JSON, string values at
any depth are expanded, and the result is serialised again, so a secret
holding quotes, backslashes or newlines changes nothing but its own value.
A resolved value is spliced in as it is and never scanned again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote, quote_plus

from airflow_sm_refs._exceptions import ReferenceSyntaxError, SecretFetchError, SecretReferenceError
from airflow_sm_refs.reference import SecretReference, has_reference, split_references
from airflow_sm_refs.resolver import SecretResolver

__all__ = [
    "CONNECTION_FIELDS",
    "Expansion",
    "Found",
    "NotCached",
    "build_connection",
    "connection_has_references",
    "expand_connection",
    "json_may_hold_references",
    "map_json_strings",
    "masked_forms",
    "not_json_error",
    "references_in_connection",
    "references_in_text",
    "references_in_variable",
]

log = logging.getLogger("airflow_sm_refs")

#: the plain string fields of a connection that may hold references
CONNECTION_FIELDS = ("host", "schema", "login", "password")

#: ``resolve(reference, field) -> value``
Resolve = Callable[[SecretReference, str], str]


# What has been registered with the masker: per masker, the digests of the
# values registered since its last reset. Registering again costs a message
# to the task supervisor on every lookup, and a warm lookup should cost next
# to nothing; but Airflow resets the masker before each task (3.x
# ``reset_secrets_masker`` gives it a new, empty pattern set), and a
# long-lived process must then register again. So the memory is keyed on the
# masker and its current pattern set, both held here so that neither id can
# be reused by another object.
_MASKED: dict[int, tuple[Any, Any, set[bytes]]] = {}

# (kind, id, field, reference, length) already checked for values too short
# to mask, so that a warm lookup does not parse the value again.
_CHECKED_SHORT: set[tuple[str, str | None, str, str, int]] = set()

# (kind, id, field, reference) already logged as served from the process
# cache: the first such line per task process is INFO, repeats are DEBUG, so a
# hot loop does not flood the task log (fetches from AWS or the worker cache
# are always INFO).
_LOGGED_HITS: set[tuple[str, str | None, str, str]] = set()
_MAX_LOGGED_HITS = 10_000


def _nested_strings(value: str) -> list[str]:
    """The strings inside ``value`` when it is the JSON text of an object or array (a nested key's value)."""
    if value[:1] not in ("{", "["):
        return []
    try:
        document = json.loads(value)
    except (ValueError, RecursionError):
        return []
    found: list[str] = []
    stack = [document]
    while stack:  # iterative: a deeply nested secret must not exhaust the stack
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def masked_forms(value: str) -> list[str]:
    """Every form ``value`` may take in a log, each once: as it is, JSON-escaped, URL-encoded.

    ``extra`` and JSON Variables are written back with ``json.dumps``, which
    escapes quotes, backslashes and (by default) non-ASCII characters; URIs
    percent-encode. When ``value`` is the JSON text of an object or array,
    each string inside it (and its forms) is included too.
    """
    forms: list[str] = []
    for text in (value, *_nested_strings(value)):
        for form in (
            text,
            json.dumps(text, ensure_ascii=True)[1:-1],
            json.dumps(text, ensure_ascii=False)[1:-1],
            quote(text, safe=""),
            quote_plus(text),
        ):
            if form and form not in forms:
                forms.append(form)
    return forms


def _remembered(masker: Any) -> set[bytes]:
    """The digests registered with ``masker`` since it was last reset."""
    patterns = getattr(masker, "patterns", None)
    entry = _MASKED.get(id(masker))
    if entry is None or entry[0] is not masker or entry[1] is not patterns:
        entry = (masker, patterns, set())
        _MASKED[id(masker)] = entry
    return entry[2]


def _default_mask(value: str) -> None:
    from airflow_sm_refs._compat import mask_secret, secrets_masker

    seen = _remembered(secrets_masker())
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()
    if digest in seen:
        return
    for form in masked_forms(value):
        mask_secret(form)
    seen.add(digest)


def _mask_all(values: tuple[str, ...]) -> None:
    """:func:`_default_mask` for each of ``values``, asking for the masker once."""
    from airflow_sm_refs._compat import secrets_masker

    seen = _remembered(secrets_masker())
    for value in values:
        if hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest() not in seen:
            _default_mask(value)


def too_short_to_mask(value: str) -> bool:
    """Whether ``value``, or a string inside it, is non-empty and shorter than Airflow masks."""
    from airflow_sm_refs._compat import min_masked_length

    minimum = min_masked_length()
    return any(0 < len(text) < minimum for text in (value, *_nested_strings(value)))


def log_served(kind: str, conn_id: str | None, field: str, ref: SecretReference, source: str, seconds: float) -> None:
    """The audit line for one resolved reference: INFO, or DEBUG for a process-cache hit logged before."""
    level = logging.INFO
    if source == "process cache":
        seen = (kind, conn_id, field, ref.text)
        if seen in _LOGGED_HITS:
            level = logging.DEBUG
        else:
            if len(_LOGGED_HITS) >= _MAX_LOGGED_HITS:
                _LOGGED_HITS.clear()
            _LOGGED_HITS.add(seen)
    if not log.isEnabledFor(level):
        return
    log.log(
        level,
        "%s %r field %r: secret %s (%s) from %s in %.1f ms: ok",
        kind,
        conn_id,
        field,
        _describe(ref),
        ref.version_label,
        source,
        seconds * 1000,
    )


class NotCached(Exception):  # noqa: N818 - a signal, not an error
    """A cache-only expansion met a reference the in-process cache does not hold fresh."""


def _describe(ref: SecretReference) -> str:
    return ref.secret_id if not ref.key else f"{ref.secret_id} key {ref.key!r}"


class Expansion:
    """Expands the references of one connection or variable, for one resolver.

    :param resolver: resolves references to values
    :param conn_id: the connection id (or variable key), for errors and logs
    :param kind: ``connection`` or ``variable``, for logs
    :param mask: registers a value with Airflow's secrets masker
    :param check: called with each reference before it is resolved (the allowlist)
    :param cached_only: serve references from the in-process cache only, and raise
        :class:`NotCached` for one it does not hold (the event loop must not wait on AWS)
    """

    def __init__(
        self,
        resolver: SecretResolver | Callable[[], SecretResolver],
        *,
        conn_id: str | None = None,
        kind: str = "connection",
        mask: Callable[[str], None] = _default_mask,
        check: Callable[[SecretReference], None] | None = None,
        cached_only: bool = False,
    ) -> None:
        # A factory is called at the first reference, so that a failure to
        # build clients is reported against that reference.
        self._resolver = resolver
        self.cached_only = cached_only
        self.conn_id = conn_id
        self.kind = kind
        self.mask = mask
        self.check = check
        self.references = 0
        #: every reference of the value being expanded, for a batch fetch at the first miss
        self.prefetch_source: Callable[[], list[SecretReference]] | None = None
        self._prefetched = False
        #: cache keys the batch fetched: their first serving is reported as from AWS
        self._batched: set[tuple[str, ...]] = set()
        #: (reference, field, value) of every reference resolved, in order, for :class:`ExpansionMemo`
        self.served: list[tuple[SecretReference, str, str]] = []
        #: the payload each of :attr:`served` was read from (``None`` if the resolver does not say)
        self.payloads: list[Any] = []

    @property
    def resolver(self) -> SecretResolver:
        """The resolver, built on first use when a factory was given."""
        if not hasattr(self._resolver, "resolve"):  # a factory
            self._resolver = self._resolver()
        return self._resolver

    def resolve(self, ref: SecretReference, field: str) -> str:
        """Resolve one reference found in ``field``; mask and log it."""
        self.references += 1
        try:
            if self.check is not None:
                self.check(ref)
            cached = self.resolver.resolve_cached(ref)
            if cached is not None:
                resolved = cached
            elif self.cached_only:
                raise NotCached(ref.text)
            else:
                self._prefetch_once()
                resolved = self.resolver.resolve(ref)
            if self._batched:
                key = self.resolver.cache_key(ref)
                if key in self._batched:
                    self._batched.discard(key)
                    resolved = replace(resolved, source="aws (batch)")
        except NotCached:
            raise
        except SecretReferenceError as exc:
            log.error(
                "%s %r field %r: secret %s (%s): failed: %s",
                self.kind,
                self.conn_id,
                field,
                _describe(ref),
                ref.version_label,
                exc.detail,
            )
            raise exc.located(conn_id=self.conn_id, field=field, reference=ref.text) from None
        except Exception as exc:
            # Anything else (a bad botocore option, a pathological secret) must
            # not reach Airflow's loop, which would try the next backend and
            # hand out the raw reference. Its text may hold a value: keep the type.
            log.error(
                "%s %r field %r: secret %s (%s): failed: unexpected %s",
                self.kind,
                self.conn_id,
                field,
                _describe(ref),
                ref.version_label,
                type(exc).__name__,
            )
            raise SecretFetchError(
                f"unexpected {type(exc).__name__} while resolving the reference; no value was handed out",
                reference=ref.text,
                conn_id=self.conn_id,
                field=field,
            ) from None
        # Masked before anything else can print it, spliced or not, whatever
        # the key it sits under.
        self.mask(resolved.value)
        self.served.append((ref, field, resolved.value))
        self.payloads.append(getattr(resolved, "payload", None))
        self._warn_if_too_short(ref, field, resolved.value)
        log_served(self.kind, self.conn_id, field, ref, resolved.source, resolved.seconds)
        return resolved.value

    def _prefetch_once(self) -> None:
        """At the first miss, fetch the secrets of the whole value that no tier holds in batches."""
        if self._prefetched or self.prefetch_source is None:
            return
        self._prefetched = True
        prefetch = getattr(self.resolver, "prefetch", None)
        if prefetch is None:
            return
        refs = []
        for ref in self.prefetch_source():
            if self.check is not None:
                try:
                    self.check(ref)
                except Exception:  # noqa: BLE001 - reported in its place by resolve()
                    continue
            refs.append(ref)
        if len({r.secret_id for r in refs}) >= 2:
            self._batched = prefetch(refs)

    def _warn_if_too_short(self, ref: SecretReference, field: str, value: str) -> None:
        # Airflow's masker skips short values: say so, once per reference, never showing it.
        seen = (self.kind, self.conn_id, field, ref.text, len(value))
        if seen in _CHECKED_SHORT:
            return
        if len(_CHECKED_SHORT) >= _MAX_LOGGED_HITS:
            _CHECKED_SHORT.clear()
        _CHECKED_SHORT.add(seen)
        if not too_short_to_mask(value):
            return
        log.warning(
            "%s %r field %r: secret %s (%s): the value (or a string inside it) is too short for "
            "Airflow's secrets masker and will not be masked in logs; use a longer secret",
            self.kind,
            self.conn_id,
            field,
            _describe(ref),
            ref.version_label,
        )

    def text(self, value: str, field: str) -> str:
        """Expand every reference in one string."""
        if not has_reference(value):
            return value
        try:
            segments = split_references(value)
        except ReferenceSyntaxError as exc:
            raise exc.located(conn_id=self.conn_id, field=field) from None
        return "".join(seg if isinstance(seg, str) else self.resolve(seg, field) for seg in segments)

    def json_value(self, value: Any, path: str) -> Any:
        """Expand string values at any depth of parsed JSON; keys are left alone."""
        return map_json_strings(value, path, self.text)

    def extra(self, extra: str) -> str:
        """Expand the connection's ``extra`` JSON and serialise it again; unchanged text if it has none."""
        return self.json_text(extra, "extra", must_be_json=True)

    def variable(self, value: str) -> str:
        """Expand a Variable's value: structurally when it is JSON, as text otherwise."""
        self.prefetch_source = lambda: _well_formed(references_in_variable(value))
        return self.json_text(value, "value", must_be_json=False)

    def json_text(self, text: str, field: str, *, must_be_json: bool) -> str:
        """Expand string values inside JSON ``text`` and serialise it again.

        A secret with quotes, backslashes or JSON-looking text then changes
        nothing but its own value. Text that is not JSON is an error when
        ``must_be_json`` (a connection's extra), else it is expanded as text.
        """
        if not json_may_hold_references(text):
            return text
        try:
            document = json.loads(text)
        except ValueError:
            if not must_be_json:
                return self.text(text, field)
            if not has_reference(text):
                return text
            raise not_json_error(field, conn_id=self.conn_id) from None
        if not must_be_json and not isinstance(document, (dict, list, str)):
            return self.text(text, field)
        before = self.references
        expanded = self.json_value(document, field)
        return text if self.references == before else json.dumps(expanded)


#: (result, (cache key, payload) it depends on, values to mask, mask, (kind, id, field, reference) served)
_MemoEntry = tuple[Any, tuple[tuple[tuple[str, ...], Any], ...], tuple[str, ...], Callable[[str], None], tuple[tuple[str, "str | None", str, SecretReference], ...]]


class ExpansionMemo:
    """The results of recent expansions, served again while nothing they depend on has changed.

    A warm lookup would otherwise parse every field, resolve every reference
    and serialise ``extra`` again, to build what it built last time. An entry
    is keyed on the raw value (every field of a connection, or a Variable's
    text), so an edit is a miss. It is served only while each secret it used
    is still the *same* payload object, fresh by the resolver's TTL, in the
    in-process tier: a rotation, an expiry, a stale-served value, a dropped
    entry or a cleared cache is a miss, and the full expansion runs. Its values
    are handed to the masker again on every hit (a no-op unless the masker was
    reset, as Airflow does before each task).
    """

    def __init__(self, maxsize: int = 256) -> None:
        self.maxsize = maxsize
        self._entries: dict[Any, _MemoEntry] = {}

    def get(self, key: Any, resolver: Callable[[], SecretResolver]) -> Any | None:
        """The memoised result for ``key``, or ``None``; ``resolver`` is only called when there is one."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        result, deps, values, mask, served = entry
        current = resolver()
        cache, ttl = current.cache, current.cache_ttl_seconds
        for cache_key, payload in deps:
            if cache.peek(cache_key, ttl) is not payload:
                self._entries.pop(key, None)
                return None
        if mask is _default_mask:
            _mask_all(values)
        else:
            for value in values:
                mask(value)
        from airflow_sm_refs._metrics import count

        count("cache_hit.process", len(values))
        # The audit lines the full expansion would write: each once at INFO, then DEBUG.
        if log.isEnabledFor(logging.DEBUG) or not _LOGGED_HITS.issuperset(
            (kind, conn_id, field, ref.text) for kind, conn_id, field, ref in served
        ):
            for kind, conn_id, field, ref in served:
                log_served(kind, conn_id, field, ref, "process cache", 0.0)
        return result

    def put(self, key: Any, result: Any, expansion: Expansion) -> None:
        """Remember ``result`` of ``expansion`` for ``key``, if every secret it used is in the in-process tier."""
        if not expansion.served or expansion.cached_only:
            return
        resolver = expansion.resolver
        cache = getattr(resolver, "cache", None)
        if cache is None or getattr(resolver, "cache_ttl_seconds", 0) <= 0:
            return
        # Each value depends on exactly the payload it was read from. Not what
        # the tier holds now: another reference of this expansion may have
        # fetched a newer payload meanwhile, and checking that one would keep
        # serving the older value past its TTL.
        deps: dict[tuple[str, ...], Any] = {}
        for (ref, _, _), payload in zip(expansion.served, expansion.payloads):
            cache_key = resolver.cache_key(ref)
            if payload is None or deps.setdefault(cache_key, payload) is not payload:
                return
        if len(self._entries) >= self.maxsize:
            self._entries.clear()
        self._entries[key] = (
            result,
            tuple(deps.items()),
            tuple(value for _, _, value in expansion.served),
            expansion.mask,
            tuple((expansion.kind, expansion.conn_id, field, ref) for ref, field, _ in expansion.served),
        )


def connection_memo_key(conn: Any, conn_class: type | None) -> tuple[Any, ...]:
    """What :class:`ExpansionMemo` keys a connection's expansion on: all of its raw fields."""
    return (
        conn_class,
        conn.conn_id,
        conn.conn_type,
        *(getattr(conn, name, None) for name in CONNECTION_FIELDS),
        getattr(conn, "extra", None),
        conn.port,
        getattr(conn, "description", None),
    )


def json_may_hold_references(text: str) -> bool:
    """Whether JSON ``text`` must be parsed to find its references."""
    # A JSON escape (``\t``, ``\u007b``) can hide a reference from a scan of
    # the raw text, and a hidden reference would be passed on unexpanded: any
    # backslash means the parsed values must be looked at.
    return "\\" in text or has_reference(text)


def not_json_error(field: str, conn_id: str | None = None) -> ReferenceSyntaxError:
    """The error for a reference in a field that must be JSON but is not."""
    return ReferenceSyntaxError(
        f"{field} holds a reference but is not valid JSON; references in {field} are only "
        "expanded in JSON string values",
        conn_id=conn_id,
        field=field,
    )


def map_json_strings(value: Any, path: str, fn: Callable[[str, str], Any]) -> Any:
    """Rebuild parsed JSON with ``fn(string, path)`` applied to every string value; keys are left alone.

    Paths read as in errors: ``extra.headers.Authorization``, ``extra.tokens[0]``.
    """
    if isinstance(value, str):
        return fn(value, path)
    if isinstance(value, dict):
        return {k: map_json_strings(v, f"{path}.{k}", fn) for k, v in value.items()}
    if isinstance(value, list):
        return [map_json_strings(v, f"{path}[{i}]", fn) for i, v in enumerate(value)]
    return value


def build_connection(conn: Any, fields: dict[str, Any], conn_class: type | None = None) -> Any:
    """A connection like ``conn`` (as ``conn_class``, default its own class) with ``fields`` replaced."""
    values = {name: getattr(conn, name, None) for name in (*CONNECTION_FIELDS, "extra")}
    values.update(fields)
    return (conn_class or type(conn))(
        conn_id=conn.conn_id,
        conn_type=conn.conn_type,
        description=getattr(conn, "description", None),
        port=conn.port,
        **values,
    )


# --- listing references (the batch fetch's look-ahead, and the command line) ------------
@dataclass
class Found:
    """One reference found in a connection field or a Variable, or a field that does not parse."""

    field: str
    reference: SecretReference | None = None
    error: str | None = None


def references_in_text(value: str, field: str) -> Iterator[Found]:
    """Every reference in one string (or the syntax error that stops its reading)."""
    if not has_reference(value):
        return
    try:
        segments = split_references(value)
    except ReferenceSyntaxError as exc:
        yield Found(field, error=str(exc))
        return
    for segment in segments:
        if isinstance(segment, SecretReference):
            yield Found(field, segment)


def references_in_connection(conn: Any) -> list[Found]:
    """Every reference in ``conn``, field by field, in the order the expansion resolves them."""
    found: list[Found] = []

    def collect(value: str, field: str) -> str:
        found.extend(references_in_text(value, field))
        return value

    for name in CONNECTION_FIELDS:
        value = getattr(conn, name, None)
        if isinstance(value, str):
            collect(value, name)
    extra = getattr(conn, "extra", None)
    # The expansion's own rule, so a reference hidden by JSON escapes is listed too.
    if isinstance(extra, str) and json_may_hold_references(extra):
        try:
            document = json.loads(extra)
        except ValueError:
            if has_reference(extra):
                found.append(Found("extra", error=not_json_error("extra").detail))
        else:
            map_json_strings(document, "extra", collect)
    return found


def references_in_variable(value: str) -> list[Found]:
    """Every reference in a Variable's value, read as the expansion reads it (JSON or text)."""
    if json_may_hold_references(value):
        try:
            document = json.loads(value)
        except ValueError:
            document = None
        if isinstance(document, (dict, list, str)):
            found: list[Found] = []

            def collect(text: str, field: str) -> str:
                found.extend(references_in_text(text, field))
                return text

            map_json_strings(document, "value", collect)
            return found
    return list(references_in_text(value, "value"))


def _well_formed(found: list[Found]) -> list[SecretReference]:
    return [item.reference for item in found if item.reference is not None]


def connection_has_references(conn: Any) -> bool:
    """Whether any field of ``conn`` claims to hold a reference."""
    values = [getattr(conn, name, None) for name in CONNECTION_FIELDS]
    extra = getattr(conn, "extra", None)
    return any(isinstance(v, str) and has_reference(v) for v in values) or (
        isinstance(extra, str) and json_may_hold_references(extra)
    )


def expand_connection(conn: Any, expansion: Expansion, conn_class: type | None = None) -> Any:
    """Return ``conn`` with every reference expanded: a new object, or ``conn`` itself if it has none.

    :param conn: an Airflow connection (Task SDK or core model)
    :param expansion: resolves, masks and logs the references
    :param conn_class: the class to build the result as (default: the class of ``conn``)
    """
    if not connection_has_references(conn):
        return conn
    expansion.prefetch_source = lambda: _well_formed(references_in_connection(conn))
    fields: dict[str, Any] = {}
    for name in CONNECTION_FIELDS:
        value = getattr(conn, name, None)
        fields[name] = expansion.text(value, name) if isinstance(value, str) else value
    extra = getattr(conn, "extra", None)
    fields["extra"] = expansion.extra(extra) if isinstance(extra, str) else extra
    if expansion.references == 0:
        return conn
    return build_connection(conn, fields, conn_class)
