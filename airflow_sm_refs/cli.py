"""``airflow-sm-refs``: check connections' references, read a token, clear the per-worker cache.

    airflow-sm-refs check CONN_ID [CONN_ID ...]
    airflow-sm-refs parse TOKEN
    airflow-sm-refs cache clear [--dir DIR]

``check`` finds each connection where a task would, lists every reference in
it and whether it resolves, with the AWS settings of the configured backend.
It never prints a value. Exit codes: 0 all resolved, 1 something failed,
2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

# The rest of the package is imported inside functions, after main() has
# imported airflow: Airflow builds the configured backend while it imports
# itself, and a configuration it cannot start with must be one line, not a
# traceback from an import at the top of this module.
if TYPE_CHECKING:
    from airflow_sm_refs.reference import SecretReference

__all__ = ["main"]

log = logging.getLogger("airflow_sm_refs")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad arguments or configuration: one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not the usage block: it is read in CI logs and terminals alike.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="airflow-sm-refs",
        description="Check and inspect AWS Secrets Manager references in Airflow connections.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    check = commands.add_parser(
        "check",
        help="resolve every reference of connections, as a task would, without printing values",
        description="Find each connection as a task would, list every reference in it and whether it "
        "resolves, using the AWS settings of the configured secrets backend. Never prints a value.",
    )
    check.add_argument("conn_ids", nargs="+", metavar="CONN_ID")

    parse = commands.add_parser("parse", help="show how a token (or a value holding tokens) is read")
    parse.add_argument("token", metavar="TOKEN")

    cache = commands.add_parser("cache", help="manage the per-worker cache")
    cache_commands = cache.add_subparsers(dest="cache_command", metavar="ACTION", parser_class=_Parser)
    cache_commands.required = True
    clear = cache_commands.add_parser("clear", help="remove every entry of the per-worker cache now")
    clear.add_argument(
        "--dir",
        dest="directory",
        default=None,
        help="the cache directory (default: the configured backend's shared_cache_dir, else the default)",
    )
    return parser


# --- configuration --------------------------------------------------------------
@dataclass
class ConfiguredBackend:
    """The backend ``check`` resolves with, and the other backend (if any) tasks would ask first."""

    backend: Any
    #: a configured backend that is not this package's: a place raw connections may live
    other: Any | None
    #: what to tell the operator about the configuration, or ``None``
    note: str | None


def _configured_backend() -> ConfiguredBackend:
    """Build the backend from configuration exactly as a task's secrets chain does.

    ``[workers] secrets_backend`` and its kwargs, else ``[secrets] backend``
    and its kwargs (Airflow's own worker-mode lookup).
    """
    from airflow_sm_refs._compat import configured_secrets_backend
    from airflow_sm_refs.backend import SecretsManagerRefsBackend

    try:
        configured = configured_secrets_backend(worker_mode=True)
    except Exception as exc:
        raise UsageError(f"cannot build the configured secrets backend: {_one_line(exc)}") from None
    if isinstance(configured, SecretsManagerRefsBackend):
        return ConfiguredBackend(configured, None, None)
    if configured is None:
        note = (
            "no secrets backend is configured ([workers] secrets_backend, [secrets] backend): tasks will "
            "not resolve references; checking with this package's backend and AWS's default settings"
        )
    else:
        note = (
            f"the configured secrets backend is {type(configured).__module__}.{type(configured).__qualname__}, "
            "not this package's: tasks will not resolve references; checking with this package's backend "
            "and AWS's default settings"
        )
    return ConfiguredBackend(SecretsManagerRefsBackend(), configured, note)


def _safe_reason(exc: BaseException) -> str:
    """Why a source could not be read, without anything the error quotes from the stored value."""
    text = str(exc)
    if "Invalid connection string" in text or "connection string" in text.lower():
        return f"{type(exc).__name__}: the stored connection is not a valid URI"
    if "json" in type(exc).__name__.lower() or "JSON" in text:
        return f"{type(exc).__name__}: the stored connection is not valid JSON"
    return type(exc).__name__


def _one_line(exc: BaseException, limit: int = 300) -> str:
    # A database error carries the driver's own error as ``orig``; its SQL is noise here.
    text = " ".join(str(getattr(exc, "orig", None) or exc).split())
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- finding the raw connection ------------------------------------------------------
def _raw_sources(other: Any | None) -> list[tuple[str, Any]]:
    """Where a task finds a connection, in the same order, less this package's backend.

    A task asks its own chain (the ``[workers]`` backend, environment
    variables), then the API server, whose chain is the ``[secrets]`` backend,
    its environment and the metastore. A command on the worker cannot ask the
    API server as a task does, so it asks the ``[secrets]`` backend and the
    metastore itself, when it can reach them.
    """
    from airflow.secrets.environment_variables import EnvironmentVariablesBackend

    from airflow_sm_refs._compat import use_task_connection_class

    sources: list[tuple[str, Any]] = []
    if other is not None:
        sources.append((type(other).__name__, other))
    sources.append(("environment variables", EnvironmentVariablesBackend()))
    server = _server_backend()
    if server is not None:
        sources.append((f"{type(server).__name__} ([secrets] backend)", server))
    for _, source in sources:
        use_task_connection_class(source)
    try:
        from airflow.secrets.metastore import MetastoreBackend

        sources.append(("metastore", MetastoreBackend()))
    except Exception as exc:  # pragma: no cover - core Airflow is installed with the package
        log.debug("metastore not available: %s", exc)
    return sources


def _server_backend() -> Any | None:
    """The ``[secrets]`` backend the API server asks, when ``[workers]`` names another one and it is not ours."""
    from airflow_sm_refs._compat import airflow_conf, configured_secrets_backend
    from airflow_sm_refs.backend import SecretsManagerRefsBackend

    if not airflow_conf().get("workers", "secrets_backend", fallback=""):
        return None  # tasks use the [secrets] backend themselves: it is already in the chain
    try:
        server = configured_secrets_backend(worker_mode=False)
    except Exception as exc:
        raise UsageError(f"cannot build the [secrets] backend: {_one_line(exc)}") from None
    return None if server is None or isinstance(server, SecretsManagerRefsBackend) else server


def _find_connection(conn_id: str, sources: list[tuple[str, Any]]) -> tuple[Any | None, list[str]]:
    """The raw connection, and what went wrong in the sources that could not be asked."""
    from airflow_sm_refs._exceptions import SecretReferenceError

    problems: list[str] = []
    for name, source in sources:
        try:
            conn = source.get_connection(conn_id)
        except SecretReferenceError:
            raise
        except Exception as exc:
            # Not the message: a backend's error can quote the stored value
            # ("Invalid connection string: postgres://user:<password>@...").
            problems.append(f"{name} not readable ({_safe_reason(exc)})")
            continue
        if conn is not None:
            return conn, problems
    return None, problems


# --- listing references ---------------------------------------------------------------
@dataclass
class Found:
    """One reference found in a connection field, or a field that does not parse."""

    field: str
    reference: SecretReference | None = None
    error: str | None = None


def _references_in_text(value: str, field: str) -> Iterator[Found]:
    from airflow_sm_refs._exceptions import ReferenceSyntaxError
    from airflow_sm_refs.reference import SecretReference, has_reference, split_references

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
    from airflow_sm_refs.expand import CONNECTION_FIELDS, json_may_hold_references, map_json_strings, not_json_error
    from airflow_sm_refs.reference import has_reference

    found: list[Found] = []

    def collect(value: str, field: str) -> str:
        found.extend(_references_in_text(value, field))
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


# --- commands --------------------------------------------------------------------
def _table(rows: list[tuple[str, ...]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]
        print("  " + "  ".join(cells).rstrip(), file=out)


def _check_one(conn_id: str, setup: ConfiguredBackend, sources: list[tuple[str, Any]], out: TextIO) -> bool:
    from airflow_sm_refs._exceptions import SecretReferenceError

    conn, problems = _find_connection(conn_id, sources)
    if conn is None:
        looked = ", ".join(name for name, _ in sources)
        extra = f"; {'; '.join(problems)}" if problems else ""
        print(f"connection {conn_id!r}: ERROR: not found (looked in {looked}{extra})", file=out)
        return False
    found = references_in_connection(conn)
    if not found:
        print(f"connection {conn_id!r}: no references", file=out)
        return True
    expansion = setup.backend._expansion(conn_id, "connection")
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
    count = len(found)
    print(f"connection {conn_id!r}: {count} reference{'s' if count != 1 else ''}", file=out)
    _table(rows, out)
    return ok


def command_check(conn_ids: Sequence[str], out: TextIO, err: TextIO) -> int:
    """Resolve every reference of each connection; print results, never values."""
    setup = _configured_backend()
    if setup.note:
        print(f"note: {setup.note}", file=err)
    sources = _raw_sources(setup.other)
    results = [_check_one(conn_id, setup, sources, out) for conn_id in conn_ids]
    return EXIT_OK if all(results) else EXIT_FAILED


def _describe(ref: SecretReference, out: TextIO) -> None:
    rows = [
        ("reference", ref.text),
        ("key", repr(ref.key) if ref.key else "(empty: the whole SecretString, or SecretBinary base64-encoded)"),
        ("secret id", ref.secret_id),
        ("named by", "ARN" if ref.is_arn else "name (looked up in the backend's default region and account)"),
        ("region", ref.region or "the backend's default region"),
        ("version", ref.version_label + ("" if ref.version_stage or ref.version_id else " (default)")),
    ]
    if ref.is_arn:
        rows.insert(4, ("account", ref.secret_id.split(":")[4]))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}", file=out)


def command_parse(token: str, out: TextIO, err: TextIO) -> int:
    """Show how ``token`` is read: one whole token, or each token in a longer value."""
    from airflow_sm_refs._exceptions import ReferenceSyntaxError
    from airflow_sm_refs.reference import SecretReference, parse_reference, split_references

    try:
        if token.strip(" \t").startswith("{{") and token.count("{{") == 1 and token.strip(" \t").endswith("}}"):
            references = [parse_reference(token.strip(" \t"))]
        else:
            references = [s for s in split_references(token) if isinstance(s, SecretReference)]
    except ReferenceSyntaxError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_FAILED
    if not references:
        print("error: no reference in the text (a reference looks like {{workato:sm:<key>:<secret-id>}})", file=err)
        return EXIT_FAILED
    for index, ref in enumerate(references):
        if index:
            print(file=out)
        _describe(ref, out)
    return EXIT_OK


def command_cache_clear(directory: str | None, out: TextIO) -> int:
    """Remove every entry of the per-worker cache: the configured directory, or ``directory``."""
    from airflow_sm_refs.worker_cache import clear_worker_cache, default_worker_cache_dir

    if directory is None:
        try:
            directory = _configured_shared_cache_dir() or default_worker_cache_dir()
        except UsageError as exc:
            # Clearing some other directory instead would look like success.
            raise UsageError(f"{exc}; name the cache directory with --dir") from None
    if directory is None:
        print("no per-worker cache on this machine (no /dev/shm and no shared_cache_dir): nothing to clear", file=out)
        return EXIT_OK
    try:
        removed = clear_worker_cache(directory)
    except OSError as exc:
        raise UsageError(f"cannot clear the per-worker cache in {directory}: {_one_line(exc)}") from None
    print(f"cleared {removed} entr{'y' if removed == 1 else 'ies'} from the per-worker cache in {directory}", file=out)
    return EXIT_OK


def _configured_shared_cache_dir() -> str | None:
    """``shared_cache_dir`` of the configured backend, if it is this package's and names one."""
    setup = _configured_backend()
    if setup.note is not None:
        return None
    return setup.backend.cache_settings.shared_cache_dir


def _start_airflow() -> None:
    """Import airflow before anything of ours, as every entry point of the package does.

    Airflow builds the configured secrets backend while it imports itself;
    a configuration it cannot start with is one line here, not a traceback.
    """
    try:
        import airflow  # noqa: F401
    except Exception as exc:
        raise UsageError(f"Airflow cannot start with this configuration: {_one_line(exc)}") from None
    # Airflow's logging setup prints library chatter (botocore's "Found
    # credentials...") on stdout, among the results.
    for name in ("botocore", "boto3", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = _build_parser().parse_args(argv)
    out, err = sys.stdout, sys.stderr
    # stdout is for results only: anything else that prints there (Airflow's
    # console logging, set up while it imports; "empty cryptography key" on
    # older lines) goes to stderr.
    sys.stdout = err
    try:
        return _run(args, out, err)
    finally:
        sys.stdout = out


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        _start_airflow()
        from airflow_sm_refs._exceptions import SecretReferenceError
    except UsageError as exc:
        print(f"airflow-sm-refs: error: {exc}", file=err)
        return EXIT_USAGE
    try:
        if args.command == "check":
            return command_check(args.conn_ids, out, err)
        if args.command == "parse":
            return command_parse(args.token, out, err)
        return command_cache_clear(args.directory, out)
    except UsageError as exc:
        print(f"airflow-sm-refs: error: {exc}", file=err)
        return EXIT_USAGE
    except SecretReferenceError as exc:
        print(f"airflow-sm-refs: error: {exc}", file=err)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
