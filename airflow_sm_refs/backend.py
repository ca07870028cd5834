"""The secrets backend: connections whose fields hold references, resolved on the worker."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.secrets import BaseSecretsBackend

from airflow_sm_refs._aws import AWS_CONNECTION_KWARGS

if TYPE_CHECKING:
    from airflow_sm_refs.expand import Expansion
    from airflow_sm_refs.resolver import SecretResolver

__all__ = ["SecretsManagerRefsBackend", "is_server_process"]

log = logging.getLogger("airflow_sm_refs")

# Per thread: the lookups this backend is in the middle of, so that a backend
# later in the chain that calls back into the chain cannot make us recurse.
_in_progress = threading.local()


def is_server_process() -> bool:
    """Whether this is an API server or scheduler process, detected as Airflow itself does.

    The supervisor connection of a task process is absent **and**
    ``_AIRFLOW_PROCESS_CONTEXT`` is ``server``. The variable alone is not
    enough: LocalExecutor task processes inherit it from the scheduler.
    """
    if os.environ.get("_AIRFLOW_PROCESS_CONTEXT") != "server":
        return False
    try:
        from airflow.sdk.execution_time import task_runner
    except ImportError:  # pragma: no cover - Task SDK is a dependency
        return True
    return getattr(task_runner, "SUPERVISOR_COMMS", None) is None


@contextmanager
def _guard(key: str) -> Iterator[bool]:
    active: set[str] = getattr(_in_progress, "keys", None) or set()
    _in_progress.keys = active
    if key in active:
        yield False
        return
    active.add(key)
    try:
        yield True
    finally:
        active.discard(key)


class SecretsManagerRefsBackend(BaseSecretsBackend):
    """
    Resolves ``{{workato:sm:...}}`` references in connections and variables from AWS Secrets Manager.

    Configurable via ``airflow.cfg``:

    .. code-block:: ini

        [secrets]
        backend = airflow_sm_refs.backend.SecretsManagerRefsBackend
        backend_kwargs = {"region_name": "us-east-1", "cache_ttl_seconds": 300}

    The connection itself is found in the backends that come after this one
    (environment variables, then the metastore through the Execution API);
    this backend only expands the references in it.

    :param region_name: region for plain secret names and the default client. ``None``: boto3's default.
    :param endpoint_url: Secrets Manager endpoint. ``None``: AWS's public endpoint.
    :param role_arn: role to assume for every call. ``None``: the worker's own credentials.
    :param assume_role_method: ``assume_role`` (default), ``assume_role_with_saml`` or
        ``assume_role_with_web_identity``, as for the Amazon provider.
    :param assume_role_kwargs: extra arguments to the STS call. ``None``: none.
    :param profile_name: AWS profile to use. ``None``: the default credential chain.
    :param verify: TLS verification: ``False`` or a CA bundle path. ``None``: botocore's default.
    :param config_kwargs: ``botocore.config.Config`` arguments (``retries``, ``connect_timeout``,
        ``read_timeout``...). ``None``: botocore's defaults.
    :param cache_ttl_seconds: how long a fetched secret is served before it is fetched again
        (up to 10% less, at random). ``0`` disables caching. Default 300.
    :param stale_if_error_seconds: after expiry, how long a value may still be served when AWS
        fails for a transient reason (never when the secret is gone or access is denied). Default 300.
    :param resolve_on_server: resolve in server processes (API server, scheduler) too.
        Default ``False``: they step aside, so plaintext stays on the workers.
    :param shared_cache: share cached secrets between all task processes of the worker (one fetch
        per secret per expiry period, however many tasks ask). Default ``True``.
    :param shared_cache_dir: directory for the shared cache, private to the worker's user (``0700``).
        ``None``: ``/dev/shm/airflow-sm-refs-<uid>`` where ``/dev/shm`` exists, else no shared cache.
        Secrets are written there: name a RAM-backed filesystem.
    :param allowed_secrets: glob patterns of the secrets references may name: name patterns
        (``prod/*``) for plain names, ARN patterns (``arn:aws:secretsmanager:*:123456789012:secret:prod/*``)
        for ARNs. ``None``: any secret the worker's AWS identity can read (set it).
    :param allowed_conn_ids: glob patterns of the connections whose references are expanded; a
        reference in any other connection is an error. ``None``: every connection.
    """

    def __init__(
        self,
        region_name: str | None = None,
        endpoint_url: str | None = None,
        role_arn: str | None = None,
        assume_role_method: str | None = None,
        assume_role_kwargs: dict[str, Any] | None = None,
        profile_name: str | None = None,
        verify: bool | str | None = None,
        config_kwargs: dict[str, Any] | None = None,
        cache_ttl_seconds: float = 300,
        stale_if_error_seconds: float = 300,
        resolve_on_server: bool = False,
        shared_cache: bool = True,
        shared_cache_dir: str | None = None,
        allowed_secrets: list[str] | None = None,
        allowed_conn_ids: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        # No AWS, disk or heavy import work here: Airflow builds instances
        # often, sometimes while it is still importing itself.
        super().__init__()
        unknown = set(kwargs) - set(AWS_CONNECTION_KWARGS)
        if unknown:
            raise TypeError(f"SecretsManagerRefsBackend got unknown backend_kwargs: {sorted(unknown)}")
        self.aws_settings: dict[str, Any] = {
            "region_name": region_name,
            "endpoint_url": endpoint_url,
            "role_arn": role_arn,
            "assume_role_method": assume_role_method,
            "assume_role_kwargs": assume_role_kwargs,
            "profile_name": profile_name,
            "verify": verify,
            "config_kwargs": config_kwargs,
            **kwargs,
        }
        from airflow_sm_refs.resolver import CacheSettings

        self.cache_settings = CacheSettings(cache_ttl_seconds, stale_if_error_seconds, shared_cache, shared_cache_dir)
        self.resolve_on_server = bool(resolve_on_server)
        from airflow_sm_refs.policy import AccessPolicy

        self.policy = AccessPolicy.from_options(allowed_secrets, allowed_conn_ids)

    @cached_property
    def resolver(self) -> SecretResolver:
        """The resolver for this backend's AWS identity (clients and caches are shared per process)."""
        from airflow_sm_refs._aws import clients_for_settings

        return self.cache_settings.resolver_for(clients_for_settings(self.aws_settings))

    # --- the chain -----------------------------------------------------------
    def _steps_aside(self) -> bool:
        return not self.resolve_on_server and is_server_process()

    def _later_backends(self) -> list[Any]:
        """The backends of the current chain, less any instance of this class."""
        from airflow.sdk.execution_time.supervisor import ensure_secrets_backend_loaded

        return [b for b in ensure_secrets_backend_loaded() if not isinstance(b, SecretsManagerRefsBackend)]

    def _ask_chain(self, method: str, key: str, team_name: str | None) -> Any:
        from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied

        for backend in self._later_backends():
            try:
                found = getattr(backend, method)(key, team_name=team_name)
            except AirflowSecretsBackendAccessDenied:
                raise
            except Exception:
                log.debug("%s.%s(%r) failed; trying the next backend", type(backend).__name__, method, key, exc_info=True)
                continue
            if found is not None:
                return found
        return None

    def _expansion(self, conn_id: str, kind: str) -> Expansion:
        from airflow_sm_refs.expand import Expansion

        return Expansion(self.resolver, conn_id=conn_id, kind=kind, check=self.policy.checker(conn_id, kind))

    # --- BaseSecretsBackend --------------------------------------------------
    def get_conn_value(self, conn_id: str, team_name: str | None = None) -> str | None:
        """Not used: :meth:`get_connection` is overridden."""
        raise NotImplementedError("use get_connection")

    def get_connection(self, conn_id: str, team_name: str | None = None) -> Any:
        """Find the raw connection later in the chain and return it with its references resolved.

        :raises SecretReferenceError: a reference cannot be resolved; the lookup stops here
        """
        if self._steps_aside():
            return None
        with _guard(f"conn:{conn_id}") as first:
            if not first:
                return None
            raw = self._ask_chain("get_connection", conn_id, team_name)
            if raw is None:
                return None
            from airflow_sm_refs.expand import expand_connection

            return expand_connection(raw, self._expansion(conn_id, "connection"), self._get_connection_class())

    def get_variable(self, key: str, team_name: str | None = None) -> str | None:
        """Find the raw variable later in the chain and return it with its references resolved."""
        if self._steps_aside():
            return None
        with _guard(f"var:{key}") as first:
            if not first:
                return None
            raw = self._ask_chain("get_variable", key, team_name)
            if raw is None:
                return None
            return self._expansion(key, "variable").variable(raw)

    def get_config(self, key: str) -> str | None:
        """Configuration is not served by this backend."""
        return None
