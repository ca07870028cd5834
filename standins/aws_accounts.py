"""Several AWS accounts on one moto server, answering secret ids by AWS's own resolution rules.

:class:`AwsStandIn` is one moto server behind a counting proxy, all in one
account. Issue 17's bugs live where accounts meet (another account's ARN, the
same name in two accounts) and where moto's lookup is looser than AWS's, so
this stand-in puts a second proxy in front of it:

    boto3 client -> AccountsStandIn (routes, applies AWS's id rules, counts,
                    denies, throttles) -> AwsStandIn proxy -> moto

- **Accounts.** moto keeps one backend per account and picks it from the
  request's ``x-moto-account-id`` header (moto 5.0 and later; before the
  access key). The proxy sets that header, so no IAM users or STS roles are
  needed, and moto does not check signatures, so nothing is re-signed. The
  caller's account is the one its access key belongs to
  (:func:`access_key_for`); any other key (the tests' ``testing``) is the
  caller's own account, :data:`OWN_ACCOUNT`.
- **Which secret an id names** (AWS's rules, where moto differs): a plain name
  is looked up in the caller's own account and the client's region; an ARN in
  the account and region it spells (another region than the client's: not
  found). An ARN whose name part ends in ``-`` and six letters or digits is a
  *full* ARN, matched exactly: if no secret has exactly that ARN the answer is
  ``ResourceNotFoundException``, even when a secret is *named* so (moto would
  take it for that secret's partial ARN).
- **BatchGetSecretValue** is split by account, each part sent to its account,
  and the answers merged: ``SecretValues`` in a shuffled (seeded) order, as
  AWS gives no order, and ``Errors`` merged. A missing, refused or denied id
  is answered in ``Errors`` here, as AWS does whatever moto's version does.
- **Counts** per action, and per action and account; **faults**: the next
  requests (throttling...), every request for a while, reads of one secret
  denied (by its ARN, whatever spelling asks for it).

Setup and oracle clients (:meth:`AccountsStandIn.client`) are neither counted
nor faulted, but their reads are resolved and denied like anyone's: they ask
what AWS would answer. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import collections
import http.client
import json
import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standins.aws import FAKE_SECRET_ACCESS_KEY, AwsStandIn, InjectedFault

__all__ = ["OTHER_ACCOUNT", "OWN_ACCOUNT", "AccountsStandIn", "access_key_for"]

#: the caller's own account (where plain names are looked up)
OWN_ACCOUNT = "111111111111"
#: another account, whose secrets the caller reaches by ARN only
OTHER_ACCOUNT = "222222222222"

#: AWS's suffix on a secret's name in its ARN: an ARN ending so is a full ARN
_SUFFIX = re.compile(r"-[A-Za-z0-9]{6}\Z")
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/[^/]+/([^/]+)/")
#: requests with this header are the test's own (setup, oracle): not counted, not faulted
_UNCOUNTED_HEADER = "x-standin-uncounted"
#: actions that read a secret's value: the ones a deny applies to
_READS = ("GetSecretValue", "BatchGetSecretValue")


def access_key_for(account: str) -> str:
    """The access key id that acts in ``account`` (20 characters, as AWS's)."""
    return f"AKIA{account}STND"


@dataclass(frozen=True)
class _Refusal:
    """The stand-in's own answer for an id, instead of moto's."""

    code: str
    message: str
    status: int = 400


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"__type": code, "message": message}).encode()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def _reply(self, status: int, body: bytes, headers: list[tuple[str, str]] | None = None) -> None:
        self.send_response(status)
        sent = set()
        for key, value in headers or [("Content-Type", "application/x-amz-json-1.1")]:
            if key.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                self.send_header(key, value)
                sent.add(key.lower())
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self, refusal: _Refusal | InjectedFault) -> None:
        code, message, status = refusal.code, refusal.message, refusal.status
        self._reply(
            status,
            _error_body(code, message),
            [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-ErrorType", code)],
        )

    def _handle(self) -> None:
        stand_in = self.server.stand_in
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        target = self.headers.get("X-Amz-Target", "")
        action = target.rsplit(".", 1)[-1] if target else f"{self.command} {self.path}"
        found = _CREDENTIAL.search(self.headers.get("Authorization", ""))
        access_key, region = (found.group(1), found.group(2)) if found else ("", "us-east-1")
        caller = stand_in.account_of(access_key)
        counted = self.headers.get(_UNCOUNTED_HEADER) != "1"
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in ("connection", "keep-alive", "content-length", _UNCOUNTED_HEADER)
        }
        if counted:
            fault = stand_in._record(action)
            if fault is not None and fault.kind == "drop":
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            if fault is not None and fault.kind == "hang":
                time.sleep(fault.delay)
            elif fault is not None:
                self._refuse(fault)
                return
        try:
            request = json.loads(body) if body else {}
        except ValueError:
            request = {}
        if action == "BatchGetSecretValue" and isinstance(request.get("SecretIdList"), list):
            status, data, reply_headers = stand_in._batch(request, region, caller, headers, counted)
            self._reply(status, data, reply_headers)
            return
        secret_id = request.get("SecretId") if isinstance(request, dict) else None
        account = caller
        if isinstance(secret_id, str):
            routed = stand_in._route(secret_id, region, caller, reading=action in _READS)
            if isinstance(routed, _Refusal):
                if counted:
                    stand_in._record_account(action, stand_in._account_in(secret_id, caller))
                self._refuse(routed)
                return
            account = routed
        if counted:
            stand_in._record_account(action, account)
        status, data, reply_headers = stand_in._forward(account, body, headers)
        self._reply(status, data, reply_headers)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    stand_in: AccountsStandIn


class AccountsStandIn:
    """Two (or more) AWS accounts on one moto server, behind a proxy that resolves ids as AWS does.

    :param accounts: the accounts; the first is the caller's own unless ``own_account`` says otherwise
    :param own_account: the account of a caller whose access key is none of :func:`access_key_for`'s
    :param aws: an :class:`AwsStandIn` to put in front of (started and stopped by its owner);
        ``None``: one of its own
    :param seed: seeds the order of a batch's ``SecretValues``
    """

    def __init__(
        self,
        accounts: tuple[str, ...] = (OWN_ACCOUNT, OTHER_ACCOUNT),
        *,
        own_account: str | None = None,
        aws: AwsStandIn | None = None,
        seed: int = 0,
    ) -> None:
        self.accounts = tuple(accounts)
        self.own_account = own_account or self.accounts[0]
        self.aws = aws if aws is not None else AwsStandIn()
        self._owns_aws = aws is None
        self.seed = seed
        self._rand = random.Random(seed)
        self._lock = threading.Lock()
        self._calls: collections.Counter[str] = collections.Counter()
        self._account_calls: collections.Counter[tuple[str, str]] = collections.Counter()
        self._faults: collections.deque[InjectedFault] = collections.deque()
        self._fail_all: InjectedFault | None = None
        self._denied: set[str] = set()
        self._keys = {access_key_for(account): account for account in self.accounts}
        self._proxy: _Server | None = None

    # lifecycle -----------------------------------------------------------
    def start(self) -> AccountsStandIn:
        """Start moto (unless given one) and the routing proxy, on free loopback ports."""
        if self._owns_aws:
            self.aws.start()
        self._proxy = _Server(("127.0.0.1", 0), _Handler)
        self._proxy.stand_in = self
        threading.Thread(target=self._proxy.serve_forever, daemon=True, name="aws-accounts-stand-in").start()
        return self

    def stop(self) -> None:
        if self._proxy is not None:
            self._proxy.shutdown()
            self._proxy.server_close()
            self._proxy = None
        if self._owns_aws:
            self.aws.stop()

    def __enter__(self) -> AccountsStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint_url(self) -> str:
        """The URL clients use: the routing proxy."""
        assert self._proxy is not None, "start() first"
        return f"http://127.0.0.1:{self._proxy.server_address[1]}"

    def reset(self) -> None:
        """Forget every account's secrets, the counters, faults and denials; reseed the batch order."""
        self.aws.reset()
        with self._lock:
            self._calls.clear()
            self._account_calls.clear()
            self._faults.clear()
            self._fail_all = None
            self._denied.clear()
            self._rand = random.Random(self.seed)

    def account_of(self, access_key: str) -> str:
        """The account a request signed with ``access_key`` acts in."""
        return self._keys.get(access_key, self.own_account)

    # clients -------------------------------------------------------------
    def client(self, account: str | None = None, region_name: str = "us-east-1") -> Any:
        """A boto3 client acting in ``account`` (default: the caller's own), through the proxy, never counted or faulted.

        For setup (creating, rotating, deleting secrets) and for asking what AWS
        answers an id: its reads follow the same rules and denials as anyone's.
        """
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "secretsmanager",
            region_name=region_name,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=access_key_for(account or self.own_account),
            aws_secret_access_key=FAKE_SECRET_ACCESS_KEY,
            config=Config(retries={"max_attempts": 1, "mode": "standard"}),
        )

        def mark(request: Any, **_: Any) -> None:
            request.headers[_UNCOUNTED_HEADER] = "1"

        client.meta.events.register("before-sign.secretsmanager", mark)
        return client

    # counting --------------------------------------------------------------
    def _record(self, action: str) -> InjectedFault | None:
        with self._lock:
            self._calls[action] += 1
            if self._faults:
                return self._faults.popleft()
            return self._fail_all

    def _record_account(self, action: str, account: str) -> None:
        with self._lock:
            self._account_calls[(action, account)] += 1

    def calls(self, action: str = "GetSecretValue", account: str | None = None) -> int:
        """Requests for ``action`` from clients (faulted ones too); with ``account``: the parts sent to that account.

        A batch naming secrets of two accounts is one request, and one part for each account.
        """
        with self._lock:
            if account is None:
                return self._calls[action]
            return self._account_calls[(action, account)]

    def total_calls(self) -> int:
        with self._lock:
            return sum(self._calls.values())

    def reset_counts(self) -> None:
        with self._lock:
            self._calls.clear()
            self._account_calls.clear()

    # faults --------------------------------------------------------------
    def fail_next(self, fault: InjectedFault, times: int = 1) -> None:
        """Answer the next ``times`` counted requests with ``fault``."""
        with self._lock:
            self._faults.extend([fault] * times)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._fail_all = None

    @contextmanager
    def failing(self, fault: InjectedFault) -> Iterator[None]:
        """Answer every counted request with ``fault`` while the block runs."""
        with self._lock:
            self._fail_all = fault
        try:
            yield
        finally:
            with self._lock:
                self._fail_all = None

    def deny(self, arn: str) -> None:
        """Refuse reads of the secret with full ARN ``arn`` (by any spelling): AccessDeniedException, in a batch's Errors too."""
        with self._lock:
            self._denied.add(arn)

    def allow(self, arn: str) -> None:
        with self._lock:
            self._denied.discard(arn)

    @contextmanager
    def denying(self, arn: str) -> Iterator[None]:
        self.deny(arn)
        try:
            yield
        finally:
            self.allow(arn)

    # AWS's rules ---------------------------------------------------------
    def _account_in(self, secret_id: str, caller: str) -> str:
        parts = secret_id.split(":", 6)
        if secret_id.startswith("arn:") and len(parts) == 7 and parts[4]:
            return parts[4]
        return caller

    def _route(self, secret_id: str, region: str, caller: str, *, reading: bool) -> str | _Refusal:
        """The account to send ``secret_id`` to, or AWS's refusal of it."""
        not_found = _Refusal("ResourceNotFoundException", "Secrets Manager can't find the specified secret.")
        if not secret_id.startswith("arn:"):
            account = caller
        else:
            parts = secret_id.split(":", 6)
            if len(parts) != 7 or parts[2] != "secretsmanager" or parts[5] != "secret":
                return caller  # not a secret's ARN: moto answers it
            if parts[3] != region:
                return not_found  # AWS does not route by ARN: another region's secret is not here
            account = parts[4]
            if _SUFFIX.search(parts[6]):
                # A full ARN: exactly that secret or none (moto would take a secret *named* so).
                described = self._describe(account, region, secret_id)
                if described is None or described.get("ARN") != secret_id:
                    return not_found
        if reading:
            with self._lock:
                denied = bool(self._denied)
            if denied:
                described = self._describe(account, region, secret_id)
                if described is not None and described.get("ARN") in self._denied:
                    return _Refusal(
                        "AccessDeniedException",
                        f"User is not authorized to perform: secretsmanager:GetSecretValue on resource: {secret_id}",
                    )
        return account

    def _describe(self, account: str, region: str, secret_id: str) -> dict[str, Any] | None:
        """moto's DescribeSecret of ``secret_id`` in ``account`` and ``region``, straight to moto (not counted)."""
        status, data, _ = self._send(
            self.aws.moto_port,
            account,
            json.dumps({"SecretId": secret_id}).encode(),
            {
                "X-Amz-Target": "secretsmanager.DescribeSecret",
                "Content-Type": "application/x-amz-json-1.1",
                "Authorization": (
                    f"AWS4-HMAC-SHA256 Credential={access_key_for(account)}/20240101/{region}/secretsmanager/aws4_request, "
                    "SignedHeaders=host, Signature=0"
                ),
            },
        )
        if status != 200:
            return None
        document = json.loads(data)
        return document if isinstance(document, dict) else None

    # forwarding ------------------------------------------------------------
    def _send(self, port: int, account: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, list[tuple[str, str]]]:
        headers = {k: v for k, v in headers.items() if k.lower() != "x-moto-account-id"}
        headers["x-moto-account-id"] = account
        upstream = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            upstream.request("POST", "/", body=body, headers=headers)
            response = upstream.getresponse()
            return response.status, response.read(), response.getheaders()
        finally:
            upstream.close()

    def _forward(self, account: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, list[tuple[str, str]]]:
        """Send the request on to the :class:`AwsStandIn` proxy (which records what was served), acting in ``account``."""
        assert self.aws._proxy is not None, "the AwsStandIn is not started"
        return self._send(self.aws._proxy.server_address[1], account, body, headers)

    def _batch(
        self, request: dict[str, Any], region: str, caller: str, headers: dict[str, str], counted: bool
    ) -> tuple[int, bytes, list[tuple[str, str]]]:
        """BatchGetSecretValue: each id routed to its account, the answers merged in a shuffled order."""
        errors: list[dict[str, str]] = []
        by_account: dict[str, list[str]] = {}
        for secret_id in request["SecretIdList"]:
            routed = self._route(str(secret_id), region, caller, reading=True)
            if isinstance(routed, _Refusal):
                errors.append({"SecretId": secret_id, "ErrorCode": routed.code, "Message": routed.message})
            elif self._describe(routed, region, str(secret_id)) is None:
                # AWS answers a missing secret in Errors (moto before 5.1 leaves it out).
                errors.append(
                    {
                        "SecretId": secret_id,
                        "ErrorCode": "ResourceNotFoundException",
                        "Message": "Secrets Manager can't find the specified secret.",
                    }
                )
            else:
                by_account.setdefault(routed, []).append(secret_id)
        values: list[Any] = []
        reply_headers: list[tuple[str, str]] = [("Content-Type", "application/x-amz-json-1.1")]
        for account, ids in by_account.items():
            if counted:
                self._record_account("BatchGetSecretValue", account)
            part = dict(request, SecretIdList=ids)
            status, data, part_headers = self._forward(account, json.dumps(part).encode(), headers)
            if status != 200:
                return status, data, part_headers
            answer = json.loads(data)
            values.extend(answer.get("SecretValues") or [])
            errors.extend(answer.get("Errors") or [])
        with self._lock:
            self._rand.shuffle(values)
        return 200, json.dumps({"SecretValues": values, "Errors": errors}).encode(), reply_headers
