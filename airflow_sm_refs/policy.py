"""What references may name, and which connections and variables may hold them (the allowlists).

Anyone allowed to edit connections can write a reference, and the worker's AWS
role can usually read far more than one team should see. The allowlists bound
that: a reference outside them fails before any AWS call is made.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from airflow_sm_refs._exceptions import ReferenceNotAllowedError
from airflow_sm_refs._options import parse_list
from airflow_sm_refs.reference import SecretReference

__all__ = ["AccessPolicy"]


@dataclass(frozen=True)
class AccessPolicy:
    """The allowlists of one backend or hook; ``None`` allows everything.

    :param allowed_secrets: glob patterns. A plain-name reference must match a
        name pattern (``prod/*``); an ARN reference must match an ARN pattern
        (``arn:aws:secretsmanager:*:123456789012:secret:prod/*``). Name
        patterns never admit ARNs, so another account's ``prod/x`` is not
        admitted by ``prod/*``.
    :param allowed_conn_ids: glob patterns of the connection ids whose
        references are expanded; a reference in any other connection is an error.
    :param allowed_variables: glob patterns of the Variable keys whose
        references are expanded; a reference in any other Variable is an error.
    """

    allowed_secrets: tuple[str, ...] | None = None
    allowed_conn_ids: tuple[str, ...] | None = None
    allowed_variables: tuple[str, ...] | None = None

    @classmethod
    def from_options(
        cls,
        allowed_secrets: str | Iterable[str] | None = None,
        allowed_conn_ids: str | Iterable[str] | None = None,
        allowed_variables: str | Iterable[str] | None = None,
    ) -> AccessPolicy:
        """Validate the kwargs as an operator wrote them (lists, JSON arrays or comma-separated strings).

        :raises ValueError: naming the option that is not a list of non-empty patterns
        """
        return cls(
            parse_list(allowed_secrets, "allowed_secrets"),
            parse_list(allowed_conn_ids, "allowed_conn_ids"),
            parse_list(allowed_variables, "allowed_variables"),
        )

    @property
    def unrestricted(self) -> bool:
        """Whether no list is set."""
        return self.allowed_secrets is None and self.allowed_conn_ids is None and self.allowed_variables is None

    def secret_allowed(self, ref: SecretReference) -> bool:
        """Whether ``ref`` names a secret the allowlist admits."""
        if self.allowed_secrets is None:
            return True
        if ref.is_arn:
            return any(p.startswith("arn:") and fnmatchcase(ref.secret_id, p) for p in self.allowed_secrets)
        return any(not p.startswith("arn:") and fnmatchcase(ref.secret_id, p) for p in self.allowed_secrets)

    def check_reference(self, ref: SecretReference) -> None:
        """Raise unless ``ref`` is admitted; called before any AWS call for it.

        :raises ReferenceNotAllowedError: naming the reference
        """
        if not self.secret_allowed(ref):
            kind = "ARN" if ref.is_arn else "secret name"
            raise ReferenceNotAllowedError(
                f"not allowed: {kind} {ref.secret_id!r} matches no pattern in allowed_secrets",
                reference=ref.text,
            )

    def conn_allowed(self, conn_id: str) -> bool:
        """Whether references in connection ``conn_id`` may be expanded."""
        return self.allowed_conn_ids is None or any(fnmatchcase(conn_id, p) for p in self.allowed_conn_ids)

    def check_connection(self, conn_id: str) -> None:
        """Raise unless references in ``conn_id`` may be expanded.

        :raises ReferenceNotAllowedError: naming the connection
        """
        if not self.conn_allowed(conn_id):
            raise ReferenceNotAllowedError(
                "not allowed: this connection holds references but matches no pattern in allowed_conn_ids",
                conn_id=conn_id,
            )

    def variable_allowed(self, key: str) -> bool:
        """Whether references in Variable ``key`` may be expanded."""
        return self.allowed_variables is None or any(fnmatchcase(key, p) for p in self.allowed_variables)

    def check_variable(self, key: str) -> None:
        """Raise unless references in Variable ``key`` may be expanded.

        :raises ReferenceNotAllowedError: naming the variable
        """
        if not self.variable_allowed(key):
            raise ReferenceNotAllowedError(
                f"not allowed: variable {key!r} holds references but matches no pattern in allowed_variables",
            )

    def checker(self, owner: str, kind: str = "connection") -> Callable[[SecretReference], None] | None:
        """The check to run before resolving each reference of one connection (or variable).

        ``allowed_conn_ids`` applies to connections, ``allowed_variables`` to
        Variables; ``allowed_secrets`` to both.
        """
        if self.unrestricted:
            return None

        def check(ref: SecretReference) -> None:
            if kind == "connection":
                self.check_connection(owner)
            elif kind == "variable":
                self.check_variable(owner)
            self.check_reference(ref)

        return check
