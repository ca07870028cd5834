"""``airflow-sm-refs check``: what a task on this worker would get, without a value.

First a status block: the region, endpoint and identity digest the backend's
client uses, and whether the per-worker cache directory is usable. Then, for
each connection and Variable, every reference and whether it resolves. Two
things that would otherwise pass quietly are called out:

- text that looks meant as a reference but is not read as one
  (``{workato:sm:...}``, ``{{workato:secretsmanager:...}}``, ``workato.sm``):
  a task receives it as it is, as a literal password. A warning on stderr
  names the connection and field and quotes only the token-like fragment;
- a reference written unencoded in a URI-form ``AIRFLOW_CONN_*``: its ``/``,
  ``:`` or ``+`` break the URI. A hint shows the URL-encoded reference.

Near-misses warn and leave the exit code alone: telling them from ordinary
text is a guess, and a guess must not fail a CI gate nobody can silence.
A refused cache directory is an error (exit 1): every task then calls AWS.

Imported by :mod:`airflow_sm_refs.cli` after Airflow has started.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import quote

from airflow_sm_refs.cli import (
    EXIT_FAILED,
    EXIT_OK,
    ConfiguredBackend,
    _configured_backend,
    _enumerate_all,
    _find_connection,
    _find_variable,
    _one_line,
    _raw_sources,
    one_line,
)
from airflow_sm_refs.expand import (
    CONNECTION_FIELDS,
    Expansion,
    Found,
    map_json_strings,
    references_in_connection,
    references_in_variable,
)
from airflow_sm_refs.reference import has_reference

__all__ = ["CacheStatus", "command_check", "near_misses", "worker_cache_status"]


# --- status ------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheStatus:
    """The per-worker cache as a task process of this worker would find it."""

    #: the directory, or why there is none (``off (...)``)
    directory: str
    owner: str | None = None
    mode: str | None = None
    #: ``usable``, or ``REFUSED`` and why; ``None`` when the tier is off
    status: str | None = None
    #: why tasks cannot use the directory, or ``None``
    refusal: str | None = None


def _owner(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _what_is_there(path: str) -> tuple[str | None, str | None]:
    """Owner and mode of ``path`` as ``lstat`` sees it (a symlink is not followed)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None, None
    if stat.S_ISLNK(st.st_mode):
        return _owner(st.st_uid), f"a symlink to {os.readlink(path)}"
    if not stat.S_ISDIR(st.st_mode):
        return _owner(st.st_uid), f"{stat.S_IMODE(st.st_mode):04o}, not a directory"
    return _owner(st.st_uid), f"{stat.S_IMODE(st.st_mode):04o}"


def worker_cache_status(settings: Any) -> CacheStatus:
    """Whether the per-worker cache of ``settings`` (the backend's ``CacheSettings``) is usable.

    The decision is :mod:`airflow_sm_refs._private_dir`'s, as for a task: the
    directory is created ``0700`` if it is missing, as the first lookup would.
    """
    from airflow_sm_refs._private_dir import _open_private_dir
    from airflow_sm_refs.worker_cache import RAM_FS, default_worker_cache_dir

    if not settings.shared_cache:
        return CacheStatus("off (shared_cache is false): each task process caches for itself")
    if settings.cache_ttl_seconds <= 0:
        return CacheStatus("off (cache_ttl_seconds is 0): nothing is cached")
    path = settings.shared_cache_dir or default_worker_cache_dir()
    if path is None:
        return CacheStatus(f"off: no {RAM_FS} here and no shared_cache_dir; each task process caches for itself")
    path = os.path.abspath(path)
    existed = os.path.lexists(path)
    try:
        fd = _open_private_dir(path, create=True)
    except OSError as exc:
        owner, mode = _what_is_there(path)
        if isinstance(exc, FileNotFoundError) and not existed:
            why = f"cannot be created: {os.path.dirname(path)} does not exist"
        elif isinstance(exc, PermissionError) and str(exc).startswith(path + " "):
            why = str(exc)[len(path) + 1 :]  # the _private_dir verdict, less the path shown above
        else:
            why = f"cannot be opened: {exc.strerror or type(exc).__name__}"
        return CacheStatus(path, owner, mode, f"REFUSED: {why}; tasks cache per process only", refusal=why)
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    status = "usable" if existed else "usable (created now, as the first task would)"
    return CacheStatus(path, _owner(st.st_uid), f"{stat.S_IMODE(st.st_mode):04o}", status)


def _client_facts(backend: Any) -> tuple[str, str, str]:
    """Region, endpoint and identity digest of the client the backend uses for plain names."""
    from airflow_sm_refs._aws import clients_for_settings

    clients = clients_for_settings(backend.aws_settings)
    try:
        client = clients.client(None)
    except Exception as exc:  # the rows below fail with the same cause, one per reference
        return clients.default_region or "(none)", f"(no client: {_one_line(exc)})", clients.identity
    return str(client.meta.region_name), str(client.meta.endpoint_url), clients.identity


def _print_status(setup: ConfiguredBackend, cache: CacheStatus, out: TextIO) -> None:
    region, endpoint, identity = _client_facts(setup.backend)
    rows = [("region", region), ("endpoint", endpoint), ("identity", identity), ("worker cache", cache.directory)]
    if cache.status is not None:
        rows += [("cache owner", cache.owner or "-"), ("cache mode", cache.mode or "-"), ("cache status", cache.status)]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {one_line(value)}", file=out)
    print(file=out)


# --- near-misses and unencoded URIs ------------------------------------------------------
# Something meant as a reference: "workato", a separator, then "sm" or "secrets manager",
# with whatever braces surround it. The parser reads only {{workato:sm:...}}.
_NEAR_MISS = re.compile(
    r"\{*[ \t]*workato[ \t]*[:.][ \t]*(?:sm|secrets?[ _-]?manager)\b[^\s{}]*(?:[ \t]*\}+)?",
    re.IGNORECASE,
)
_SERVICE = re.compile(r"workato[ \t]*([:.])[ \t]*(?:(sm)|secrets?[ _-]?manager)\b[ \t]*([:.])?", re.IGNORECASE)
_MAX_FRAGMENT = 120


def _what_is_wrong(fragment: str) -> str:
    wrong = []
    service = _SERVICE.search(fragment)
    if service is not None and service.group(2) is None:
        wrong.append("the service is written 'sm'")
    if service is not None and "." in (service.group(1), service.group(3)):
        wrong.append("the parts are separated by ':'")
    opening = len(fragment) - len(fragment.lstrip("{"))
    closing = len(fragment) - len(fragment.rstrip("}"))
    if opening == closing == 1:
        wrong.append("single braces: a reference is enclosed in '{{' and '}}'")
    elif opening < 2:
        wrong.append("no opening '{{'")
    if closing < 2 and not opening == closing == 1:
        wrong.append("no closing '}}'")
    return "; ".join(wrong) or "not in the form {{workato:sm:<key>:<secret-id>}}"


def near_misses(text: str) -> list[tuple[str, str]]:
    """``(fragment, what is wrong)`` for each piece of ``text`` meant as a reference but not read as one.

    Text the parser reads as a reference, or refuses as a malformed one, is not a near-miss.
    """
    found = []
    for match in _NEAR_MISS.finditer(text):
        fragment = match.group(0).strip()
        if has_reference(fragment):
            continue
        shown = fragment if len(fragment) <= _MAX_FRAGMENT else fragment[:_MAX_FRAGMENT] + "..."
        found.append((shown, _what_is_wrong(fragment)))
    return found


def _json_strings(text: str, field: str, *, must_be_json: bool) -> Iterator[tuple[str, str]]:
    """``(path, string)`` for each string value of JSON ``text``, or ``text`` itself where it is not JSON."""
    try:
        document = json.loads(text)
    except ValueError:
        yield field, text
        return
    if not must_be_json and not isinstance(document, (dict, list, str)):
        yield field, text
        return
    strings: list[tuple[str, str]] = []
    map_json_strings(document, field, lambda value, path: strings.append((path, value)))
    yield from strings


def _connection_strings(conn: Any) -> Iterator[tuple[str, str]]:
    """Every string a connection's references may sit in, by field, as the expansion reads them."""
    for name in CONNECTION_FIELDS:
        value = getattr(conn, name, None)
        if isinstance(value, str):
            yield name, value
    extra = getattr(conn, "extra", None)
    if isinstance(extra, str) and extra:
        yield from _json_strings(extra, "extra", must_be_json=True)


def _warn_near_misses(label: str, strings: Iterator[tuple[str, str]], err: TextIO) -> int:
    count = 0
    for field, text in strings:
        for fragment, wrong in near_misses(text):
            count += 1
            print(
                f"warning: {label} field {field!r}: {fragment!r} looks like a reference but is not one "
                f"({wrong}); tasks receive this text as it is",
                file=err,
            )
    return count


_RAW_REFERENCE = re.compile(r"\{\{[^{}\n]*\}\}")


def _unencoded_in_uri(conn_id: str, found: list[Found]) -> list[str]:
    """Hints for references written unencoded in a URI-form ``AIRFLOW_CONN_*`` and not read back as written."""
    name = f"AIRFLOW_CONN_{conn_id.upper()}"
    raw = os.environ.get(name, "")
    if not raw or raw.lstrip().startswith("{"):  # not set, or JSON
        return []
    read = {item.reference.text for item in found if item.reference is not None}
    hints = []
    for match in _RAW_REFERENCE.finditer(raw):
        text = match.group(0)
        if has_reference(text) and text not in read:
            hints.append(
                f"hint: {name} is a URI and its reference {text[2:-2].strip()} is not URL-encoded (a '/', ':', "
                f"'@' or '+' in it breaks the URI); write it URL-encoded: {quote(text, safe='')}"
            )
    return hints


# --- results -----------------------------------------------------------------------
def _table(rows: list[tuple[str, ...]], out: TextIO) -> None:
    rows = [tuple(one_line(cell) for cell in row) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]
        print("  " + "  ".join(cells).rstrip(), file=out)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 'es' if word.endswith('s') else 's'}"


def _report(label: str, found: list[Found], expansion: Expansion, warnings: int, out: TextIO) -> bool:
    """Resolve each reference found; print a table of results, never a value. Whether all resolved."""
    from airflow_sm_refs._exceptions import SecretReferenceError

    heading = f"{label}: {_plural(len(found), 'reference') if found else 'no references'}"
    if warnings:
        heading += f"; {_plural(warnings, 'near-miss')}, see the warning{'s' if warnings != 1 else ''}"
    print(heading, file=out)
    if not found:
        return True
    rows: list[tuple[str, ...]] = [("FIELD", "SECRET", "KEY", "VERSION", "RESULT")]
    ok = True
    for item in found:
        if item.reference is None:
            ok = False
            rows.append((item.field, "-", "-", "-", f"ERROR: {item.error}"))
            continue
        ref = item.reference
        try:
            if expansion.check is not None:
                expansion.check(ref)
            resolved = expansion.resolver.resolve(ref)
        except SecretReferenceError as exc:
            ok = False
            result = f"ERROR: {exc.detail}"
        else:
            # The value itself is dropped here; only where it came from is shown.
            result = f"ok ({resolved.source}, {resolved.seconds * 1000:.0f} ms)"
        rows.append((item.field, ref.secret_id, ref.key or "(whole secret)", ref.version_label, result))
    _table(rows, out)
    return ok


def _not_found(label: str, sources: list[tuple[str, Any]], problems: list[str], out: TextIO) -> None:
    looked = ", ".join(name for name, _ in sources)
    extra = f"; {'; '.join(problems)}" if problems else ""
    print(f"{label}: ERROR: not found (looked in {looked}{extra})", file=out)


def _check_connection(
    conn_id: str, setup: ConfiguredBackend, sources: list[tuple[str, Any]], out: TextIO, err: TextIO
) -> bool:
    label = f"connection {conn_id!r}"
    conn, problems = _find_connection(conn_id, sources)
    if conn is None:
        _not_found(label, sources, problems, out)
        ok, hints = False, _unencoded_in_uri(conn_id, [])
    else:
        found = references_in_connection(conn)
        warnings = _warn_near_misses(label, _connection_strings(conn), err)
        ok = _report(label, found, setup.backend._expansion(conn_id, "connection"), warnings, out)
        hints = _unencoded_in_uri(conn_id, found)
    for hint in hints:
        print(f"  {hint}", file=out)
    # a reference written in the URI that tasks do not receive as written fails them too
    return ok and not hints


def _check_variable(
    key: str, setup: ConfiguredBackend, sources: list[tuple[str, Any]], out: TextIO, err: TextIO
) -> bool:
    label = f"Variable {key!r}"
    value, problems = _find_variable(key, sources)
    if value is None:
        _not_found(label, sources, problems, out)
        return False
    warnings = _warn_near_misses(label, _json_strings(value, "value", must_be_json=False), err)
    return _report(label, references_in_variable(value), setup.backend._expansion(key, "variable"), warnings, out)


def command_check(
    conn_ids: Sequence[str], variables: Sequence[str], everything: bool, out: TextIO, err: TextIO
) -> int:
    """Print the status block, then resolve every reference of each connection and Variable; never a value."""
    setup = _configured_backend()
    if setup.note:
        print(f"note: {setup.note}", file=err)
    option_error = getattr(setup.backend, "option_error", None)
    if option_error is not None:
        # Servers step aside and tasks fail on it: nothing would resolve.
        print(f"error: {one_line(option_error)}; tasks fail until it is fixed", file=err)
        return EXIT_FAILED
    conn_ids, variables = list(dict.fromkeys(conn_ids)), list(dict.fromkeys(variables))
    if everything:
        all_conns, all_keys = _enumerate_all()
        conn_ids += [c for c in all_conns if c not in conn_ids]
        variables += [k for k in all_keys if k not in variables]
    sources = _raw_sources(setup.other, setup.backend)
    cache = worker_cache_status(setup.backend.cache_settings)
    _print_status(setup, cache, out)
    results = [_check_connection(conn_id, setup, sources, out, err) for conn_id in conn_ids]
    results += [_check_variable(key, setup, sources, out, err) for key in variables]
    if not (conn_ids or variables):
        print("no connections or Variables found", file=out)
    if cache.refusal is not None:
        print(
            f"error: the per-worker cache directory {cache.directory} is refused ({one_line(cache.refusal)}): "
            "every task process calls AWS for itself",
            file=err,
        )
        return EXIT_FAILED
    return EXIT_OK if all(results) else EXIT_FAILED
