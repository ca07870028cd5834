"""What tests/compat_dags/stored_secrets.py reads, seeded into the AWS stand-in, and a per-secret read counter.

Shared by tests/test_stored_secrets_dag_test.py (every line) and tests/test_e2e_stored_secrets.py
(a real scheduler on the newest line), which run that DAG with the drop-in ``SecretsManagerBackend``.
"""

from __future__ import annotations

import collections
import hashlib
import http.client
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BACKEND = "airflow_sm_refs.backend.SecretsManagerBackend"

# The secret the stored connection and Variable refer to. Values are distinct and long enough to
# be searched for in logs.
APP_SECRET = {
    "password": "stored-app-Pw-6c1e0f9a",
    "api_key": "stored-api-key-3b7d52e1",
    "token": "stored-token-9e4a10c7",
}
PLAIN_VARIABLE = "plain-stored-variable-41"
BROKEN_REFERENCE = "{{workato:sm:pasword:stored/app}}"  # a key stored/app does not have

# In the provider's layout (its default prefixes): connections as JSON, Variables as plain strings.
STORED = {
    "stored/app": json.dumps(APP_SECRET),
    "airflow/connections/stored_db": json.dumps(
        {
            "conn_type": "generic",
            "host": "db.stored.invalid",
            "login": "svc_stored",
            "password": "{{workato:sm:password:stored/app}}",
            "extra": {"api_key": "{{workato:sm:api_key:stored/app}}", "timeout": 30},
        }
    ),
    "airflow/variables/stored_token": "Bearer {{workato:sm:token:stored/app}}",
    "airflow/variables/stored_plain": PLAIN_VARIABLE,
    "airflow/connections/stored_broken": json.dumps(
        {"conn_type": "generic", "login": "svc_broken", "password": BROKEN_REFERENCE}
    ),
}
#: what the tasks must never show (the stand-in's served values are checked too)
PLAINTEXTS = tuple(APP_SECRET.values())


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


#: "<conn_id>:<field>" or "var:<key>" -> SHA-256 of what the task must get (STORED_EXPECTED_SHA256)
EXPECTED_SHA256 = {
    "stored_db:host": sha("db.stored.invalid"),
    "stored_db:login": sha("svc_stored"),
    "stored_db:password": sha(APP_SECRET["password"]),
    "stored_db:extra.api_key": sha(APP_SECRET["api_key"]),
    "var:stored_token": sha("Bearer " + APP_SECRET["token"]),
    "var:stored_plain": sha(PLAIN_VARIABLE),
}

#: every secret id the DAG's tasks make the backend ask for (aws_default is stored nowhere)
ASKED = (*STORED, "airflow/connections/aws_default")


def seed(client: Any) -> None:
    """Create the stored secrets in the stand-in (emptied by the caller)."""
    for name, value in STORED.items():
        client.create_secret(Name=name, SecretString=value)


_READS = ("GetSecretValue", "BatchGetSecretValue", "DescribeSecret")


class SecretReads:
    """A loopback proxy in front of the AWS stand-in that counts Secrets Manager reads per secret id.

    The stand-in counts by action; whether ``aws_default`` (stored nowhere) is asked once per
    worker, whatever the number of task processes, needs the id.
    """

    def __init__(self, upstream_url: str) -> None:
        parsed = urllib.parse.urlsplit(upstream_url)
        self._upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self._lock = threading.Lock()
        self._reads: collections.Counter[str] = collections.Counter()
        reads = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                action = self.headers.get("X-Amz-Target", "").rsplit(".", 1)[-1]
                if action in _READS:
                    reads._record(body)
                upstream = http.client.HTTPConnection(*reads._upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                finally:
                    upstream.close()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _forward  # noqa: N815

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def _record(self, body: bytes) -> None:
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            request = {}
        ids = [request["SecretId"]] if "SecretId" in request else list(request.get("SecretIdList") or [])
        with self._lock:
            self._reads.update(str(i) for i in ids)

    def __enter__(self) -> SecretReads:
        threading.Thread(target=self._server.serve_forever, daemon=True, name="secret-reads").start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def counts(self) -> dict[str, int]:
        """Reads so far, by the secret id asked (as the caller spelt it)."""
        with self._lock:
            return dict(self._reads)
