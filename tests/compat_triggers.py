"""A trigger for tests/compat_dags: looks a connection up the way triggers do on each Airflow line.

Imported by the triggerer (and, on Airflow 3, its trigger-runner subprocess) as
``tests.compat_triggers.ConnectionLookupTrigger``: the repo root is on the PYTHONPATH of every
component the AirflowStandalone harness starts. It never puts a connection value into its event,
only whether the password's SHA-256 matched and which fields still held reference text.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

# Text that must never reach a trigger: the start of an unresolved reference (with or without
# the spaces the format allows just inside the braces).
RAW_MARKERS = ("{{workato:sm:", "{{ workato:sm:")


def raw_fields(conn: Any) -> list[str]:
    """Names of the connection's fields that still hold reference text."""
    fields = {
        "host": conn.host,
        "schema": conn.schema,
        "login": conn.login,
        "password": conn.password,
        "extra": conn.extra,
    }
    return [name for name, value in fields.items() if value and any(m in str(value) for m in RAW_MARKERS)]


def record_raw(marker_dir: str, who: str, conn_id: str, fields: list[str]) -> None:
    """Leave a marker file saying that `who` was handed reference text (field names only)."""
    path = Path(marker_dir) / f"raw-{who}-{conn_id}.txt"
    path.write_text(",".join(fields) + "\n")


def sha256(value: str | None) -> str:
    return hashlib.sha256((value or "").encode()).hexdigest()


class ConnectionLookupTrigger(BaseTrigger):
    """Look `conn_id` up once and report whether its password hashes to `expected_sha256`.

    The lookup is what triggers do on the running line: ``await BaseHook.aget_connection()``
    where the Task SDK has it (3.1+), else ``await sync_to_async(BaseHook.get_connection)()``.
    A lookup that raises fails the trigger, and so the deferred task.
    """

    def __init__(self, conn_id: str, expected_sha256: str, marker_dir: str) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.expected_sha256 = expected_sha256
        self.marker_dir = marker_dir

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"conn_id": self.conn_id, "expected_sha256": self.expected_sha256, "marker_dir": self.marker_dir},
        )

    async def _lookup(self) -> tuple[Any, str]:
        try:  # Airflow 3.1+
            from airflow.sdk import BaseHook
        except ImportError:  # 2.x, 3.0
            from airflow.hooks.base import BaseHook  # type: ignore[no-redef]
        aget = getattr(BaseHook, "aget_connection", None)
        if aget is not None:
            return await aget(self.conn_id), "aget_connection"
        from asgiref.sync import sync_to_async

        return await sync_to_async(BaseHook.get_connection)(self.conn_id), "sync_to_async(get_connection)"

    async def run(self) -> AsyncIterator[TriggerEvent]:
        conn, how = await self._lookup()
        self.log.info("COMPAT_TRIGGER looked up %r with %s in pid %s", self.conn_id, how, os.getpid())
        raw = raw_fields(conn)
        if raw:
            record_raw(self.marker_dir, "trigger", self.conn_id, raw)
        yield TriggerEvent(
            {"conn_id": self.conn_id, "how": how, "matched": sha256(conn.password) == self.expected_sha256, "raw": raw}
        )
