"""The hook: the backend's expansion on demand, with AWS credentials from an Airflow AWS connection.

For teams that cannot change ``airflow.cfg``, or want one DAG to act as its
own role. It shares the reference parser, the expansion code, the cache tiers
and the error types with the backend; only where the AWS credentials come
from differs.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any

from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

from airflow_sm_refs._exceptions import SecretReferenceError
from airflow_sm_refs._options import parse_dict, parse_str, parse_verify
from airflow_sm_refs.expand import Expansion, build_connection, expand_connection
from airflow_sm_refs.resolver import (
    DEFAULT_CACHE_TTL_SECONDS,
    DEFAULT_STALE_IF_ERROR_SECONDS,
    SecretResolver,
)

__all__ = ["SecretsManagerRefsHook"]

log = logging.getLogger("airflow_sm_refs")


class SecretsManagerRefsHook(AwsBaseHook):
    """
    Expands ``{{workato:sm:...}}`` references with credentials from an Airflow AWS connection.

    .. code-block:: python

        hook = SecretsManagerRefsHook(aws_conn_id="aws_team_a")
        conn = hook.get_resolved_connection("warehouse")
        header = hook.resolve("Bearer {{workato:sm:token:api/partner}}")

    Resolved values are registered with Airflow's secrets masker, as the
    backend does. Errors are the backend's (:class:`~airflow_sm_refs.SecretReferenceError`
    and its subclasses) and never hold a value.

    :param aws_conn_id: the Airflow AWS connection to act as (credentials, region,
        ``endpoint_url``, role to assume...). ``None``: boto3's default credential chain.
    :param region_name: region for plain secret names. ``None``: the connection's, else boto3's default.
    :param verify: TLS verification: ``False`` or a CA bundle path. ``None``: the connection's, else botocore's.
    :param config: ``botocore.config.Config`` (or its arguments). ``None``: the connection's ``config_kwargs``.
    :param cache_ttl_seconds: how long a fetched secret is served before it is fetched again. Default 300.
    :param stale_if_error_seconds: after expiry, how long a value may still be served when AWS
        fails for a transient reason. Default 300.
    :param shared_cache: share cached secrets with every task process of the worker, as the
        backend does. Default ``True``.
    :param shared_cache_dir: directory of the per-worker cache, private to the worker's user.
        ``None``: ``/dev/shm/airflow-sm-refs-<uid>`` where ``/dev/shm`` exists, else no shared cache.
    :param shared_cache_max_entries: most entries in that directory, as for the backend. Default 1000.
    :param negative_cache_seconds: how long a not-found or denied answer is remembered, as for
        the backend. Default 10.
    :param allowed_secrets: glob patterns of the secrets references may name, as for the backend.
        ``None``: any secret the AWS identity can read.
    :param allowed_conn_ids: glob patterns of the connections whose references are expanded.
        ``None``: every connection.
    :param allowed_variables: glob patterns of the Variables whose references are expanded
        (:meth:`get_resolved_variable`). ``None``: every Variable.

    Options are parsed as the backend's are: strings such as ``"false"``,
    ``'["team-a/*"]'`` or ``"60"`` are read as what they say, anything
    unclear is refused here with an error naming the option.
    """

    hook_name = "AWS Secrets Manager references"

    def __init__(
        self,
        aws_conn_id: str | None = AwsBaseHook.default_conn_name,
        *,
        cache_ttl_seconds: float = DEFAULT_CACHE_TTL_SECONDS,
        stale_if_error_seconds: float = DEFAULT_STALE_IF_ERROR_SECONDS,
        shared_cache: bool = True,
        shared_cache_dir: str | None = None,
        shared_cache_max_entries: int = 1000,
        negative_cache_seconds: float = 10,
        allowed_secrets: list[str] | None = None,
        allowed_conn_ids: list[str] | None = None,
        allowed_variables: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        from airflow_sm_refs.policy import AccessPolicy
        from airflow_sm_refs.resolver import CacheSettings

        # Parsed before anything is built, so a bad option fails here, naming it.
        cache_settings = CacheSettings.from_options(
            cache_ttl_seconds,
            stale_if_error_seconds,
            shared_cache,
            shared_cache_dir,
            shared_cache_max_entries,
            negative_cache_seconds,
        )
        policy = AccessPolicy.from_options(allowed_secrets, allowed_conn_ids, allowed_variables)
        if "region_name" in kwargs:
            kwargs["region_name"] = parse_str(kwargs["region_name"], "region_name")
        if "verify" in kwargs:
            kwargs["verify"] = parse_verify(kwargs["verify"], "verify")
        if isinstance(kwargs.get("config"), (str, dict)):
            # a botocore Config passes as it is; its arguments as a dict or JSON object
            kwargs["config"] = parse_dict(kwargs["config"], "config")
        kwargs["client_type"] = "secretsmanager"
        super().__init__(aws_conn_id=aws_conn_id, **kwargs)
        self.cache_settings = cache_settings
        self.policy = policy

    # --- AWS -----------------------------------------------------------------
    @cached_property
    def identity(self) -> str:
        """Digest of who this hook acts as; part of every cache key.

        Two hooks on different AWS connections never share cache entries; the
        secret access key only enters the digest, never a log line.
        """
        from airflow_sm_refs._aws import identity_of

        config = self.conn_config
        return identity_of(
            {
                "source": "hook",
                "aws_conn_id": self.aws_conn_id,
                "aws_access_key_id": config.aws_access_key_id,
                "aws_secret_access_key": config.aws_secret_access_key,
                "aws_session_token": config.aws_session_token,
                "extra": config.extra_config,
                "region_name": config.region_name,
                "endpoint_url": config.get_service_endpoint_url("secretsmanager"),
                "verify": config.verify,
            }
        )

    @cached_property
    def resolver(self) -> SecretResolver:
        """The resolver for this hook's AWS identity; the caches are the backend's, shared per process."""
        from airflow_sm_refs._aws import RegionalClients, quiet_secret_bodies

        quiet_secret_bodies()
        # The provider builds the clients, so every AWS connection option
        # (assume role, profile, endpoint, botocore config) works as for any AWS hook.
        clients = RegionalClients(
            lambda region: self.get_client_type(region_name=region),
            self.region_name,
            self.identity,
        )
        return self.cache_settings.resolver_for(clients)

    # --- expansion -----------------------------------------------------------
    def _expansion(self, conn_id: str | None, kind: str) -> Expansion:
        check = self.policy.checker(conn_id or "", kind)
        return Expansion(self.resolver, conn_id=conn_id, kind=kind, check=check)

    def resolve(self, text: str) -> str:
        """Expand every reference in ``text``; text without references is returned as it is.

        :param text: e.g. ``"Bearer {{workato:sm:token:api/partner}}"``
        :raises SecretReferenceError: a reference is malformed or cannot be resolved
        """
        # The audit line reads "hook.resolve() with AWS connection 'aws_team_a' field 'text': secret ...":
        # there is no connection to name, so it names the AWS connection the hook acts as.
        acting_as = self.aws_conn_id if self.aws_conn_id is not None else "none, boto3's default credentials"
        expansion = Expansion(
            self.resolver,
            conn_id=acting_as,
            kind="hook.resolve() with AWS connection",
            check=self.policy.checker("", "text"),
        )
        try:
            return expansion.text(text, "text")
        except SecretReferenceError as exc:
            # ...but an error names no connection: the AWS connection does not hold the reference.
            exc.conn_id = None
            exc.args = (str(exc),)
            raise

    def resolve_connection(self, conn: Any) -> Any:
        """A copy of ``conn`` with every field expanded as the backend would.

        :param conn: an Airflow connection (Task SDK or core model); it is not changed
        :raises SecretReferenceError: a reference is malformed or cannot be resolved;
            the error names the connection and the field
        """
        expanded = expand_connection(conn, self._expansion(conn.conn_id, "connection"))
        return build_connection(conn, {}) if expanded is conn else expanded

    def get_resolved_connection(self, conn_id: str) -> Any:
        """Find connection ``conn_id`` as a task would, and return it with its references expanded.

        The raw connection is found in Airflow's secrets chain without this
        package's backend, and expanded with this hook's own allowlists and
        AWS identity, whether or not the backend is configured: a hook limited
        to ``team-a/*`` never hands out what a broader backend resolved.

        :raises AirflowNotFoundException: no such connection
        :raises SecretReferenceError: a reference is malformed, not allowed or cannot be resolved
        """
        from airflow_sm_refs.backend import raw_from_chain

        raw = raw_from_chain("get_connection", conn_id)
        if raw is None:
            from airflow_sm_refs._compat import not_found_errors

            raise not_found_errors()[0](f"The conn_id `{conn_id}` isn't defined")
        return self.resolve_connection(raw)

    def get_resolved_variable(self, key: str) -> str | None:
        """Find Variable ``key`` as a task would, and return its value with its references expanded.

        As :meth:`get_resolved_connection`: this hook's allowlists and AWS identity apply.

        :returns: the value, or ``None`` when there is no such Variable
        :raises SecretReferenceError: a reference is malformed, not allowed or cannot be resolved
        """
        from airflow_sm_refs.backend import raw_from_chain

        raw = raw_from_chain("get_variable", key)
        if raw is None:
            return None
        return self._expansion(key, "variable").variable(raw)
