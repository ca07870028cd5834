"""A small HTTP API on loopback that insists on a bearer token, for the examples and tests."""

from __future__ import annotations

import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    disable_nagle_algorithm = True  # no 40 ms Nagle/delayed-ACK stall per response

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # never echo request lines (they could carry a token)

    def do_GET(self) -> None:  # noqa: N802
        api = self.server.api
        header = self.headers.get("Authorization", "")
        ok = hmac.compare_digest(header.encode(), f"Bearer {api.token}".encode())
        with api._lock:
            api.requests += 1
            api.rejected += 0 if ok else 1
        body = {"ok": True, "path": self.path} if ok else {"ok": False, "error": "invalid or missing bearer token"}
        payload = json.dumps(body).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    api: BearerTokenApi


class BearerTokenApi:
    """Answers 200 to ``Authorization: Bearer <token>`` and 401 to anything else.

    :param token: the one token it accepts; ``set_token`` changes it (rotation)
    """

    def __init__(self, token: str) -> None:
        self.token = token
        self.requests = 0
        self.rejected = 0
        self._lock = threading.Lock()
        self._server: _Server | None = None

    def start(self) -> BearerTokenApi:
        """Listen on a free 127.0.0.1 port."""
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.api = self
        threading.Thread(target=self._server.serve_forever, daemon=True, name="bearer-api").start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def set_token(self, token: str) -> None:
        """Accept only ``token`` from now on."""
        self.token = token

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> BearerTokenApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
