"""A moto server on loopback, behind a small proxy that counts and can break requests.

The proxy is what lets tests and benchmarks say how many AWS calls were made
(counted at the server side, whatever process made them) and make AWS
throttle or fail on purpose, while every request is still served by the real
moto server over HTTP.
"""

from __future__ import annotations

import collections
import http.client
import json
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAKE_ACCESS_KEY_ID = "testing"
FAKE_SECRET_ACCESS_KEY = "testing"  # noqa: S105 - moto accepts any credentials


#: values this long are matched anywhere in a text; shorter ones as whole tokens
SHORT_VALUE = 6


def _written_forms(value: str) -> set[str]:
    """``value`` and the forms it takes when written into JSON or a URI."""
    quote = urllib.parse.quote
    forms = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
    forms |= {quote(value, safe=""), urllib.parse.quote_plus(value)}
    return {form for form in forms if form}


@dataclass(frozen=True)
class InjectedFault:
    """A response the proxy returns instead of forwarding a request."""

    status: int
    code: str
    message: str = "injected by the test stand-in"
    #: ``"answer"``: reply with the error; ``"drop"``: close the connection
    #: without a reply; ``"hang"``: wait ``delay`` seconds, then forward
    kind: str = "answer"
    delay: float = 0.0


THROTTLING = InjectedFault(400, "ThrottlingException", "Rate exceeded")
INTERNAL_ERROR = InjectedFault(500, "InternalServiceError", "injected 5xx")
ACCESS_DENIED = InjectedFault(400, "AccessDeniedException", "not authorized")
DECRYPTION_FAILURE = InjectedFault(400, "DecryptionFailure", "Secrets Manager can't decrypt the protected secret text")
KMS_ACCESS_DENIED = InjectedFault(400, "KMSAccessDeniedException", "Access to KMS is not allowed")
#: the connection is closed with no reply (a dropped connection)
DROPPED_CONNECTION = InjectedFault(0, "", kind="drop")


def hanging(seconds: float) -> InjectedFault:
    """A request answered only after ``seconds`` (a client with a shorter read timeout times out)."""
    return InjectedFault(0, "", kind="hang", delay=seconds)


#: the actions that read a secret, counted by the secret id asked as well
_SECRET_READS = ("GetSecretValue", "BatchGetSecretValue", "DescribeSecret")


class _ProxyHandler(BaseHTTPRequestHandler):
    server: _ProxyServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle's algorithm and
    # delayed ACKs that costs ~40 ms per request on loopback.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # keep test output clean

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        target = self.headers.get("X-Amz-Target", "")
        action = target.rsplit(".", 1)[-1] if target else f"{self.command} {self.path}"
        if not target:  # query protocol (STS): the action is a form field
            form = urllib.parse.parse_qs(body.decode("latin-1"))
            if form.get("Action"):
                action = form["Action"][0]
        credential = re.search(r"Credential=([^/,\s]+)/", self.headers.get("Authorization", ""))
        fault = self.server.stand_in._record(action, credential.group(1) if credential else None)
        if action in _SECRET_READS:
            self.server.stand_in._record_secret_ids(body)
        if fault is not None and fault.kind == "drop":
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if fault is not None and fault.kind == "hang":
            time.sleep(fault.delay)
            fault = None
        if fault is not None:
            payload = json.dumps({"__type": fault.code, "message": fault.message}).encode()
            self.send_response(fault.status)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("x-amzn-ErrorType", fault.code)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.stand_in.moto_port, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
        finally:
            upstream.close()
        if action in ("GetSecretValue", "BatchGetSecretValue") and response.status == 200:
            self.server.stand_in._remember_served(data)
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    stand_in: AwsStandIn


class AwsStandIn:
    """Moto on 127.0.0.1 with a counting, fault-injecting proxy in front of it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: collections.Counter[str] = collections.Counter()
        self._faults: collections.deque[InjectedFault] = collections.deque()
        self._fail_all: InjectedFault | None = None
        #: actions answered AccessDeniedException, as an IAM policy without them would
        self._denied_actions: set[str] = set()
        #: access key ids whose every request is answered AccessDeniedException, as IAM would a principal without a grant
        self._denied_keys: set[str] = set()
        self._served: set[str] = set()
        self._keys: collections.defaultdict[str, set[str]] = collections.defaultdict(set)
        self._secret_reads: collections.Counter[str] = collections.Counter()
        self._moto = None
        self._proxy: _ProxyServer | None = None
        self._tls: _ProxyServer | None = None
        self.moto_port = 0

    # lifecycle -----------------------------------------------------------
    def start(self) -> AwsStandIn:
        """Start moto and the proxy, each on a free loopback port."""
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)

        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._moto.start()
        self.moto_port = self._moto.get_host_and_port()[1]
        self._proxy = _ProxyServer(("127.0.0.1", 0), _ProxyHandler)
        self._proxy.stand_in = self
        threading.Thread(target=self._proxy.serve_forever, daemon=True, name="aws-stand-in").start()
        return self

    def stop(self) -> None:
        """Stop the proxy and moto."""
        self.stop_tls()
        if self._proxy is not None:
            self._proxy.shutdown()
            self._proxy.server_close()
        if self._moto is not None:
            self._moto.stop()

    def __enter__(self) -> AwsStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start_tls(self, directory: str) -> str:
        """Serve the proxy over HTTPS too, with a self-signed certificate for 127.0.0.1.

        Returns the path of the certificate (PEM), which is also its own CA:
        a client trusts the endpoint only with ``verify=<that path>`` or
        ``verify=False``. The URL is :attr:`tls_endpoint_url`.
        """
        import datetime
        import ipaddress
        import os
        import ssl

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aws-stand-in")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        cert_path = os.path.join(directory, "aws-stand-in.pem")
        key_path = os.path.join(directory, "aws-stand-in.key")
        with open(cert_path, "wb") as out:
            out.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(key_path, "wb") as out:
            out.write(
                key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        self._tls = _ProxyServer(("127.0.0.1", 0), _ProxyHandler)
        self._tls.stand_in = self
        self._tls.socket = context.wrap_socket(self._tls.socket, server_side=True)
        threading.Thread(target=self._tls.serve_forever, daemon=True, name="aws-stand-in-tls").start()
        return cert_path

    def stop_tls(self) -> None:
        """Stop the HTTPS proxy started by :meth:`start_tls`."""
        if self._tls is not None:
            self._tls.shutdown()
            self._tls.server_close()
            self._tls = None

    @property
    def tls_endpoint_url(self) -> str:
        """The HTTPS URL of the proxy (after :meth:`start_tls`)."""
        assert self._tls is not None, "start_tls() first"
        return f"https://127.0.0.1:{self._tls.server_address[1]}"

    @property
    def endpoint_url(self) -> str:
        """The URL clients should use: the proxy, so calls are counted."""
        assert self._proxy is not None, "start() first"
        return f"http://127.0.0.1:{self._proxy.server_address[1]}"

    def reset(self) -> None:
        """Forget all state in moto, the counters and any pending faults."""
        import urllib.request

        urllib.request.urlopen(  # noqa: S310 - loopback only
            urllib.request.Request(f"http://127.0.0.1:{self.moto_port}/moto-api/reset", method="POST")
        ).read()
        with self._lock:
            self._calls.clear()
            self._faults.clear()
            self._fail_all = None
            self._denied_actions.clear()
            self._denied_keys.clear()
            self._served.clear()
            self._keys.clear()
            self._secret_reads.clear()

    # what was served -----------------------------------------------------
    def _remember_served(self, body: bytes) -> None:
        import base64

        try:
            document = json.loads(body)
        except ValueError:
            return
        # BatchGetSecretValue: one answer per secret, each like GetSecretValue's.
        for item in document.get("SecretValues") or []:
            if isinstance(item, dict):
                self._remember_served(json.dumps(item).encode())
        values: list[str] = []
        text = document.get("SecretString")
        if isinstance(text, str):
            values.append(text)
            try:
                inner = json.loads(text)
            except ValueError:
                inner = None
            if isinstance(inner, dict):
                values.extend(v for v in inner.values() if isinstance(v, str))
        binary = document.get("SecretBinary")
        if isinstance(binary, str):  # base64 on the wire, which is also how the plugin hands it out
            values.append(binary)
            values.append(base64.b64decode(binary).decode("latin-1"))
        # Every non-empty value, short ones too (Airflow's own masker skips
        # values under 5 characters, so the guard must not rely on it); the
        # guard matches short ones as whole tokens only (see ``leaked_in``).
        with self._lock:
            self._served.update(v for v in values if v)

    @property
    def served_values(self) -> frozenset[str]:
        """Every secret value (and JSON value inside one) of 6+ characters GetSecretValue has returned since the last reset."""
        with self._lock:
            return frozenset(v for v in self._served if len(v) >= SHORT_VALUE)

    @property
    def all_served_values(self) -> frozenset[str]:
        """As :attr:`served_values`, short values included (match those as whole tokens: :meth:`leaked_in`)."""
        with self._lock:
            return frozenset(self._served)

    def leaked_in(self, text: str) -> list[str]:
        """The served values that appear in ``text`` (for the leak guard; not shown, they are secrets).

        Values of 6 characters or more count wherever they appear. Shorter
        ones (Airflow's masker ignores values under 5 characters) count as
        whole tokens only -- not next to a letter, digit, ``_``, ``-``, ``.``
        or ``/`` -- so that a 3-character password ``abc`` is caught in
        ``password=abc`` but not inside ``abcdef`` or ``x-abc.json``. One- and
        two-character values are too common to tell from ordinary text and
        are not checked.
        """
        found = []
        for value in self.all_served_values:
            if len(value) >= SHORT_VALUE:
                # Also as it reads once re-serialised: JSON-escaped (extra, JSON
                # Variables) or URL-encoded (a connection URI).
                if any(form in text for form in _written_forms(value)):
                    found.append(value)
            elif len(value) >= 3 and re.search(rf"(?<![\w./-]){re.escape(value)}(?![\w./-])", text):
                found.append(value)
        return found

    # counting ------------------------------------------------------------
    def _record(self, action: str, access_key: str | None = None) -> InjectedFault | None:
        with self._lock:
            self._calls[action] += 1
            if access_key:
                self._keys[action].add(access_key)
            if action in self._denied_actions:
                return InjectedFault(400, "AccessDeniedException", f"not authorized to perform secretsmanager:{action}")
            if access_key in self._denied_keys:
                return InjectedFault(
                    400, "AccessDeniedException", f"{access_key} is not authorized to perform secretsmanager:{action}"
                )
            if self._faults:
                return self._faults.popleft()
            return self._fail_all

    def _record_secret_ids(self, body: bytes) -> None:
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            request = {}
        if not isinstance(request, dict):
            return
        ids = [request["SecretId"]] if "SecretId" in request else list(request.get("SecretIdList") or [])
        with self._lock:
            self._secret_reads.update(str(i) for i in ids)

    def calls(self, action: str = "GetSecretValue") -> int:
        """How many requests for ``action`` reached the stand-in (including failed ones)."""
        with self._lock:
            return self._calls[action]

    def total_calls(self) -> int:
        """How many requests of any action reached the stand-in."""
        with self._lock:
            return sum(self._calls.values())

    def access_keys(self, action: str = "GetSecretValue") -> frozenset[str]:
        """The access key ids that signed requests for ``action`` (whose credentials were used)."""
        with self._lock:
            return frozenset(self._keys[action])

    def secret_reads(self) -> dict[str, int]:
        """Secret reads (``GetSecretValue``, ``BatchGetSecretValue``, ``DescribeSecret``) by the id asked, as spelt."""
        with self._lock:
            return dict(self._secret_reads)

    def reset_counts(self) -> None:
        """Zero the counters, keeping moto's data."""
        with self._lock:
            self._calls.clear()
            self._keys.clear()
            self._secret_reads.clear()

    # faults --------------------------------------------------------------
    def fail_next(self, fault: InjectedFault, times: int = 1) -> None:
        """Answer the next ``times`` requests with ``fault`` instead of forwarding them."""
        with self._lock:
            self._faults.extend([fault] * times)

    @contextmanager
    def denying(self, action: str) -> Iterator[None]:
        """Answer every ``action`` request with AccessDeniedException while the block runs (counted, not forwarded)."""
        with self._lock:
            self._denied_actions.add(action)
        try:
            yield
        finally:
            with self._lock:
                self._denied_actions.discard(action)

    @contextmanager
    def denying_key(self, access_key_id: str) -> Iterator[None]:
        """Answer every request signed with ``access_key_id`` with AccessDeniedException while the block runs (counted)."""
        with self._lock:
            self._denied_keys.add(access_key_id)
        try:
            yield
        finally:
            with self._lock:
                self._denied_keys.discard(access_key_id)

    @contextmanager
    def failing(self, fault: InjectedFault) -> Iterator[None]:
        """Answer every request with ``fault`` while the block runs."""
        with self._lock:
            self._fail_all = fault
        try:
            yield
        finally:
            with self._lock:
                self._fail_all = None

    # convenience ---------------------------------------------------------
    def client(self, service: str = "secretsmanager", region_name: str = "us-east-1"):  # noqa: ANN201
        """A boto3 client that talks to moto directly (not counted)."""
        import boto3

        return boto3.client(
            service,
            region_name=region_name,
            endpoint_url=f"http://127.0.0.1:{self.moto_port}",
            aws_access_key_id=FAKE_ACCESS_KEY_ID,
            aws_secret_access_key=FAKE_SECRET_ACCESS_KEY,
        )
