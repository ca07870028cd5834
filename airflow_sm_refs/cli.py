"""``airflow-sm-refs``: check connections' references, read a token, clear the per-worker cache.

    airflow-sm-refs check [CONN_ID ...] [--variable KEY ...] [--all]
    airflow-sm-refs iam-policy [CONN_ID ...] [--variable KEY ...] [--all] [--account-id ID] [--skip-broken]
    airflow-sm-refs parse TOKEN
    airflow-sm-refs cache clear [--dir DIR]

``check`` (in :mod:`airflow_sm_refs._check`) finds each connection and
Variable where a task would, lists every reference in it and whether it
resolves, with the AWS settings of the configured backend. It never prints
a value. Exit codes: 0 all resolved, 1 something failed (or the per-worker
cache directory is refused), 2 bad usage or configuration.

``iam-policy`` prints the least-privilege IAM policy (JSON, on stdout) for
the secrets that connections and Variables reference. It reads references
only: no value is fetched. Exit codes: 0 policy printed, 1 a connection or
Variable is missing or holds a malformed reference (nothing is printed on
stdout: a partial policy would fail tasks later), 2 bad usage, or with
``--skip-broken``: a policy printed for all but the broken ones, named on stderr.

Every error is printed on one line (whitespace collapsed), and never holds a value.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

# The rest of the package is imported inside functions, after main() has
# imported airflow: Airflow builds the configured backend while it imports
# itself, and a configuration it cannot start with must be one line, not a
# traceback from an import at the top of this module.
if TYPE_CHECKING:
    from airflow_sm_refs.expand import Found
    from airflow_sm_refs.reference import SecretReference

__all__ = ["main"]

log = logging.getLogger("airflow_sm_refs")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


NOTHING_NAMED = "name connections (CONN_ID), Variables (--variable KEY) or pass --all"


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
        help="resolve every reference of connections and Variables, as a task would, without printing values",
        description="Show the AWS settings and the per-worker cache a task would use, then find each "
        "connection and Variable as a task would, list every reference in it and whether it resolves, "
        "and warn of text that looks meant as a reference but is not one. Never prints a value.",
    )
    check.add_argument("conn_ids", nargs="*", metavar="CONN_ID")
    check.add_argument(
        "--variable", dest="variables", action="append", default=[], metavar="KEY", help="a Variable (repeatable)"
    )
    check.add_argument(
        "--all",
        dest="everything",
        action="store_true",
        help="every connection and Variable in the metastore and in AIRFLOW_CONN_* / AIRFLOW_VAR_* variables",
    )

    policy = commands.add_parser(
        "iam-policy",
        help="print the least-privilege IAM policy for the secrets connections and Variables reference",
        description="Print, as JSON on stdout, the IAM policy that lets the worker's role read exactly the "
        "secrets the named connections and Variables reference (notes go to stderr). Reads references "
        "only; no secret value is fetched.",
    )
    policy.add_argument("conn_ids", nargs="*", metavar="CONN_ID")
    policy.add_argument(
        "--variable", dest="variables", action="append", default=[], metavar="KEY", help="a Variable (repeatable)"
    )
    policy.add_argument(
        "--all",
        dest="everything",
        action="store_true",
        help="every connection and Variable in the metastore and in AIRFLOW_CONN_* / AIRFLOW_VAR_* variables",
    )
    policy.add_argument(
        "--skip-broken",
        action="store_true",
        help="leave out connections and Variables that are missing or hold a malformed reference, name them "
        "on stderr, print the policy for the rest and exit 2",
    )
    policy.add_argument(
        "--account-id", default=None, help="the account of secrets named by plain name (default: any account, '*')"
    )
    policy.add_argument(
        "--region",
        default=None,
        help="the region of secrets named by plain name (default: the backend's region_name, else AWS's default)",
    )

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
    from airflow_sm_refs.backend import StoredNotRead

    if isinstance(exc, StoredNotRead):
        return str(exc)  # written by this package, naming the secret and never its value
    text = str(exc)
    if "Invalid connection string" in text or "connection string" in text.lower():
        return f"{type(exc).__name__}: the stored connection is not a valid URI"
    if "json" in type(exc).__name__.lower() or "JSON" in text:
        return f"{type(exc).__name__}: the stored connection is not valid JSON"
    return type(exc).__name__


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) made one space: one error, one line."""
    return " ".join(text.split())


def _one_line(exc: BaseException, limit: int = 300) -> str:
    # A database error carries the driver's own error as ``orig``; its SQL is noise here.
    text = one_line(str(getattr(exc, "orig", None) or exc))
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- finding the raw connection ------------------------------------------------------
def _stored_layout(backend: Any) -> list[tuple[str, str]]:
    """(option, secret-name pattern) for each kind the backend reads whole from Secrets Manager."""
    stored = getattr(backend, "stored", None)
    if stored is None:
        return []
    layout = []
    for kind, option in (("connection", "connections_prefix"), ("variable", "variables_prefix"), ("config", "config_prefix")):
        if stored.enabled[kind]:
            layout.append((option, stored.secret_id(kind, "*")))
    return layout


def _raw_sources(other: Any | None, backend: Any | None = None) -> list[tuple[str, Any]]:
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
    layout = dict(_stored_layout(backend))
    if "connections_prefix" in layout or "variables_prefix" in layout:
        # The configured backend asks these first, as the provider's backend does.
        names = ", ".join(v for k, v in layout.items() if k != "config_prefix")
        from airflow_sm_refs.backend import StoredOnly

        sources.append((f"Secrets Manager ({names})", StoredOnly(backend, explain=True)))
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


# --- iam-policy ----------------------------------------------------------------------
#: a secret's ARN ends in ``-`` and six random characters; IAM's ``?`` matches one
_ARN_SUFFIX = "-??????"
_LOOKS_SUFFIXED = re.compile(r"-[A-Za-z0-9]{6}$")

KMS_NOTE = (
    "note: secrets encrypted with a customer-managed KMS key also need kms:Decrypt on that key "
    '(Resource: the key ARN; Condition {"StringEquals": {"kms:ViaService": "secretsmanager.<region>.amazonaws.com"}}); '
    "secrets under the AWS managed key aws/secretsmanager need nothing more"
)


@dataclass(frozen=True)
class PolicyScope:
    """Where plain secret names live: what turns a name into an ARN pattern."""

    region: str
    account: str
    partition: str


def _partition_of(region: str) -> str:
    """The ARN partition of ``region`` (``aws``, ``aws-cn``, ``aws-us-gov``...), as botocore knows it."""
    try:
        import botocore.session

        return str(botocore.session.get_session().get_partition_for_region(region))
    except Exception:  # an unknown region or an old botocore: AWS's rule of thumb
        if region.startswith("cn-"):
            return "aws-cn"
        if region.startswith("us-gov-"):
            return "aws-us-gov"
        return "aws"


def secret_resources(ref: SecretReference, scope: PolicyScope) -> list[str]:
    """The ``Resource`` ARN patterns that grant ``GetSecretValue`` on the secret ``ref`` names.

    A plain name or a partial ARN lacks the six random characters AWS adds to
    every secret's ARN, so it gets ``-??????``. An ARN whose name already ends
    in ``-`` and six characters may be full, or partial for a name that merely
    ends so (``db-backup``): both patterns are given.
    """
    if not ref.is_arn:
        arn = f"arn:{scope.partition}:secretsmanager:{scope.region}:{scope.account}:secret:{ref.secret_id}"
        return [arn + _ARN_SUFFIX]
    if _LOOKS_SUFFIXED.search(ref.secret_id):
        return [ref.secret_id, ref.secret_id + _ARN_SUFFIX]
    return [ref.secret_id + _ARN_SUFFIX]


def iam_policy_document(resources: Sequence[str]) -> dict[str, Any]:
    """The policy: ``GetSecretValue`` on exactly ``resources``, ``BatchGetSecretValue`` on ``*``.

    AWS authorises ``BatchGetSecretValue`` only on ``*``; it then checks
    ``GetSecretValue`` on each secret, so the batch grants nothing more.
    """
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadReferencedSecrets",
                "Effect": "Allow",
                "Action": "secretsmanager:GetSecretValue",
                "Resource": sorted(set(resources)),
            },
            {
                "Sid": "BatchReadReferencedSecrets",
                "Effect": "Allow",
                "Action": "secretsmanager:BatchGetSecretValue",
                "Resource": "*",
            },
        ],
    }


def _find_variable(key: str, sources: list[tuple[str, Any]]) -> tuple[str | None, list[str]]:
    """The raw Variable, and what went wrong in the sources that could not be asked."""
    problems: list[str] = []
    for name, source in sources:
        try:
            value = source.get_variable(key)
        except Exception as exc:
            problems.append(f"{name} not readable ({_safe_reason(exc)})")
            continue
        if value is not None:
            return value, problems
    return None, problems


def _enumerate_all() -> tuple[list[str], list[str]]:
    """Every connection id and Variable key in ``AIRFLOW_CONN_*``/``AIRFLOW_VAR_*`` and the metastore.

    :raises UsageError: the metastore cannot be read (the list would be incomplete)
    """
    import os

    conn_ids = {name[len("AIRFLOW_CONN_"):].lower() for name in os.environ if name.startswith("AIRFLOW_CONN_")}
    keys = {name[len("AIRFLOW_VAR_"):].lower() for name in os.environ if name.startswith("AIRFLOW_VAR_")}
    try:
        from airflow.models import Connection, Variable
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            conn_ids.update(session.scalars(select(Connection.conn_id)))
            keys.update(session.scalars(select(Variable.key)))
    except Exception as exc:
        raise UsageError(
            f"--all cannot list the metastore's connections and Variables ({_one_line(exc)}); "
            "run it where the metastore is reachable, or name the connections and Variables"
        ) from None
    conn_ids.discard("")
    keys.discard("")
    return sorted(conn_ids), sorted(keys)


def _policy_scope(setup: ConfiguredBackend, region: str | None, account_id: str | None) -> PolicyScope:
    region = region or setup.backend.aws_settings.get("region_name")
    if not region:
        import botocore.session

        region = botocore.session.get_session().get_config_variable("region")
    if not region:
        raise UsageError("no region for plain secret names: set the backend's region_name or pass --region")
    if account_id is not None and not re.fullmatch(r"\d{12}", account_id):
        raise UsageError(f"--account-id must be 12 digits, got {account_id!r}")
    return PolicyScope(region, account_id or "*", _partition_of(region))


def command_iam_policy(
    conn_ids: Sequence[str],
    variables: Sequence[str],
    everything: bool,
    account_id: str | None,
    region: str | None,
    out: TextIO,
    err: TextIO,
    skip_broken: bool = False,
) -> int:
    """Print the IAM policy for the secrets ``conn_ids`` and ``variables`` reference; never a value.

    :param skip_broken: leave out what is missing or malformed instead of printing nothing
        (they are named on stderr, and the exit code is 2)
    """
    if not (conn_ids or variables or everything):
        raise UsageError(NOTHING_NAMED)
    setup = _configured_backend()
    if setup.note:
        print(f"note: {setup.note}", file=err)
    scope = _policy_scope(setup, region, account_id)
    sources = _raw_sources(setup.other, setup.backend)
    conn_ids, variables = list(dict.fromkeys(conn_ids)), list(dict.fromkeys(variables))
    named = {("connection", c) for c in conn_ids} | {("variable", k) for k in variables}
    if everything:
        all_conns, all_keys = _enumerate_all()
        conn_ids += [c for c in all_conns if c not in conn_ids]
        variables += [k for k in all_keys if k not in variables]

    from airflow_sm_refs._exceptions import SecretReferenceError
    from airflow_sm_refs.expand import references_in_connection, references_in_variable

    looked = ", ".join(name for name, _ in sources)
    resources: list[str] = []
    #: what is missing or malformed: no policy is printed, or with --skip-broken it is left out
    broken: list[str] = []
    owners: list[tuple[str, str, list[Found]]] = []
    for conn_id in conn_ids:
        conn, problems = _find_connection(conn_id, sources)
        if conn is None:
            # Listed by --all and not found: stored but unreadable (a bad URI), as much an error.
            broken.append(f"connection {conn_id!r}")
            extra = f"; {'; '.join(problems)}" if problems else ""
            print(f"connection {conn_id!r}: ERROR: not found (looked in {looked}{extra})", file=err)
            continue
        owners.append(("connection", conn_id, references_in_connection(conn)))
    for key in variables:
        value, problems = _find_variable(key, sources)
        if value is None:
            broken.append(f"Variable {key!r}")
            extra = f"; {'; '.join(problems)}" if problems else ""
            print(f"Variable {key!r}: ERROR: not found (looked in {looked}{extra})", file=err)
            continue
        owners.append(("variable", key, references_in_variable(value)))

    for kind, owner, found in owners:
        label = f"{'connection' if kind == 'connection' else 'Variable'} {owner!r}"
        if not found:
            if (kind, owner) in named:
                print(f"{label}: no references", file=err)
            continue
        malformed = [item for item in found if item.reference is None]
        for item in malformed:
            print(f"{label} field {item.field!r}: ERROR: {one_line(item.error or '')}", file=err)
        if malformed:
            # Its tasks fail until it is fixed; its other secrets are granted when it is.
            broken.append(label)
            continue
        check = setup.backend.policy.checker(owner, kind)
        secrets: list[str] = []
        for item in found:
            assert item.reference is not None
            try:
                if check is not None:
                    check(item.reference)
            except SecretReferenceError as exc:
                # The plugin refuses it before any AWS call: granting it would only widen the role.
                print(f"{label} field {item.field!r}: skipped, {one_line(exc.detail)}", file=err)
                continue
            secrets.append(item.reference.secret_id)
            resources.extend(secret_resources(item.reference, scope))
        count = len(set(secrets))
        print(f"{label}: {count} secret{'s' if count != 1 else ''}", file=err)
    for option, pattern in _stored_layout(setup.backend):
        # Every id a task looks up is asked under the prefix, the missing ones (aws_default) too.
        resources.append(f"arn:{scope.partition}:secretsmanager:{scope.region}:{scope.account}:secret:{pattern}")
        print(f"stored {option.split('_')[0]}: {pattern} ({option})", file=err)
    if broken and not skip_broken:
        print(
            "no policy printed: fix the errors above (a partial policy would fail tasks later), "
            "or pass --skip-broken for a policy without them",
            file=err,
        )
        return EXIT_FAILED
    if broken:
        print(f"skipped, not in the policy (fix them and run again): {', '.join(broken)}", file=err)
    if not resources:
        print("no references found: no policy needed", file=err)
        return EXIT_FAILED
    if scope.account == "*":
        print("note: secrets named by plain name match any account ('*'); pin it with --account-id", file=err)
    role_arn = setup.backend.aws_settings.get("role_arn")
    if role_arn:
        print(f"note: the backend assumes {role_arn}: attach the policy to that role", file=err)
    print(KMS_NOTE, file=err)
    json.dump(iam_policy_document(resources), out, indent=2)
    print(file=out)
    # 2, not 0: a script that applies the policy must notice it is partial
    return EXIT_USAGE if broken else EXIT_OK


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
    import os

    from airflow_sm_refs.worker_cache import clear_worker_cache, default_worker_cache_dir

    if directory is not None and not os.path.lexists(directory):
        # A mistyped --dir must not read as "cleared 0 entries": the real cache would be left as it is.
        raise UsageError(f"--dir {directory}: no such directory; nothing was cleared")
    if directory is None:
        try:
            directory = _configured_shared_cache_dir() or default_worker_cache_dir()
        except UsageError as exc:
            # Clearing some other directory instead would look like success.
            raise UsageError(f"{exc}; name the cache directory with --dir") from None
    if directory is None:
        print("no per-worker cache on this machine (no /dev/shm and no shared_cache_dir): nothing to clear", file=out)
        return EXIT_OK
    if not os.path.lexists(directory):
        # The configured (or default) directory: no task has cached anything there yet.
        print(f"no per-worker cache in {directory} yet: nothing to clear", file=out)
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


def _start_airflow(out: TextIO, err: TextIO) -> None:
    """Import airflow before anything of ours, as every entry point of the package does.

    Airflow builds the configured secrets backend while it imports itself;
    a configuration it cannot start with is one line here, not a traceback.
    """
    try:
        import airflow  # noqa: F401
    except Exception as exc:
        raise UsageError(f"Airflow cannot start with this configuration: {_one_line(exc)}") from None
    # Airflow 3 logs to the stdout it found at import (``python -m`` imports it
    # with the package, before main() moves stdout): log lines such as "Not
    # using <dir> for the per-worker secrets cache" would land among the results.
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) is out:
            handler.setStream(err)
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
    if args.command == "parse":
        # The grammar alone: no Airflow (whose import builds the configured backend) and no AWS.
        return command_parse(args.token, out, err)
    if args.command == "check" and not (args.conn_ids or args.variables or args.everything):
        print(f"airflow-sm-refs check: error: {NOTHING_NAMED} (see --help)", file=err)
        return EXIT_USAGE
    try:
        _start_airflow(out, err)
        from airflow_sm_refs._exceptions import SecretReferenceError
    except UsageError as exc:
        print(f"airflow-sm-refs: error: {exc}", file=err)
        return EXIT_USAGE
    try:
        if args.command == "check":
            from airflow_sm_refs._check import command_check

            return command_check(args.conn_ids, args.variables, args.everything, out, err)
        if args.command == "iam-policy":
            return command_iam_policy(
                args.conn_ids, args.variables, args.everything, args.account_id, args.region, out, err, args.skip_broken
            )
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
    # Run the package's module, not this __main__ copy of it: airflow_sm_refs._check
    # imports from airflow_sm_refs.cli, and two copies would have two UsageErrors.
    from airflow_sm_refs.cli import main as _main

    raise SystemExit(_main())
