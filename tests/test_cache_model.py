"""A model of the two cache tiers under random interleavings (hypothesis state machine).

Several process views (each a ``SecretResolver`` with its own in-process
``TTLCache``, its own TTL, stale and negative windows, and a ``WorkerCache`` on
one shared directory), all on one fake clock, look secrets up by every
spelling (name, partial ARN, full ARN, all in the caller's own account), and
are fed by a fake AWS that can rotate,
delete, revoke, throttle, answer 5xx, drop the connection, or answer too late
(the read timeout passes, the clock with it). A fork is either a new process
view on the same directory or a real ``os.fork`` that looks up in the child.

Invariants, checked on every lookup:
- a value is never served past its reader's TTL plus stale window after its fetch,
  and only for a spelling of the secret it was fetched for;
- after AWS answered not-found or denied for an id, no value of it fetched before
  that answer is served, except a fresh one from a process's own tier
  (revocation takes effect at expiry, never later);
- once a process is told that a secret it held under an id is gone or denied,
  it serves no value of that secret fetched before, by any spelling (a
  not-found or denied answer drops every spelling);
- only values AWS handed out are returned (never a raw token);
- no lookup hangs.
"""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import signal
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from airflow_sm_refs import SecretAccessDeniedError, SecretNotFoundError, SecretReferenceError, SecretTransientError
from airflow_sm_refs import parse_reference, resolver as resolver_module
from airflow_sm_refs._aws import RegionalClients
from airflow_sm_refs.cache import TTLCache
from airflow_sm_refs.fetch import SecretPayload
from airflow_sm_refs.resolver import SecretResolver
from airflow_sm_refs.worker_cache import WorkerCache
from tests.conftest import FakeClock

pytestmark = pytest.mark.compat

SECRETS = ["app/db", "app/api"]
ACCOUNT = "111111111111"


def arn_of(name: str) -> str:
    return f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:{name}-AbCdEf"


#: every spelling of each secret (all in the caller's own account and region) -> the secret's name
SECRET_OF = {spelling: name for name in SECRETS for spelling in (name, arn_of(name)[:-7], arn_of(name))}
SPELLINGS = list(SECRET_OF)
READ_TIMEOUT = 5.0
LOOKUP_TIMEOUT = 10.0
FAULTS = [None, "throttling", "5xx", "dropped connection", "slow answer"]


@dataclass
class FakeAws:
    """What AWS would answer, and the history of every successful fetch."""

    clock: FakeClock
    version: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SECRETS, 1))
    exists: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(SECRETS, True))
    allowed: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(SECRETS, True))
    fault: str | None = None
    #: fetch serial -> (secret, time of the fetch)
    fetched: dict[str, tuple[str, float]] = field(default_factory=dict)
    #: id asked -> time of the latest not-found or denied answer to it
    refused_at: dict[str, float] = field(default_factory=dict)

    def fetch(self, clients: Any, ref: Any) -> SecretPayload:
        asked, where = ref.secret_id, f"secret {ref.secret_id!r} (AWSCURRENT)"
        name = SECRET_OF[asked]
        if self.fault == "slow answer":
            self.clock.advance(READ_TIMEOUT)  # the read timeout passes, then botocore gives up
            raise SecretTransientError(f"{where}: ReadTimeoutError", reference=ref.text)
        if self.fault is not None:
            raise SecretTransientError(f"{where}: {self.fault}", reference=ref.text)
        if not self.exists[name]:
            self.refused_at[asked] = self.clock()
            raise SecretNotFoundError(f"{where}: ResourceNotFoundException", reference=ref.text)
        if not self.allowed[name]:
            self.refused_at[asked] = self.clock()
            raise SecretAccessDeniedError(f"{where}: AccessDeniedException", reference=ref.text)
        serial = f"fetch-{len(self.fetched)}-{os.getpid()}"
        self.fetched[serial] = (name, self.clock())
        value = json.dumps({"password": f"{name}-v{self.version[name]}"})
        return SecretPayload(arn_of(name), serial, value, None, name=name)


@dataclass
class View:
    """One task process: its own in-process tier and settings, the shared directory."""

    resolver: SecretResolver
    #: secret -> when this view was told, for an id it held the secret under, that it is gone or denied
    refused_at: dict[str, float] = field(default_factory=dict)
    #: id -> the secret this view last served for it (its tier holds that payload)
    held: dict[str, str] = field(default_factory=dict)


def lookup_with_timeout(view: View, name: str) -> tuple[str, Any]:
    """``("ok", (payload, source))``, ``("error", exc)``, or fail the test if it hangs."""
    outcome: list[tuple[str, Any]] = []

    def run() -> None:
        try:
            outcome.append(("ok", view.resolver.payload(parse_reference(f"{{{{workato:sm:password:{name}}}}}"))))
        except SecretReferenceError as exc:
            outcome.append(("error", exc))
        except BaseException as exc:  # noqa: BLE001
            outcome.append(("unexpected", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(LOOKUP_TIMEOUT)
    assert outcome, f"a lookup of {name} hung"
    assert outcome[0][0] != "unexpected", repr(outcome[0][1])
    return outcome[0]


def check(aws: FakeAws, view: View, spelling: str, outcome: tuple[str, Any], now: float) -> None:
    """The invariants, for one lookup's outcome."""
    kind, result = outcome
    name = SECRET_OF[spelling]
    if kind == "error":
        if isinstance(result, (SecretNotFoundError, SecretAccessDeniedError)):
            if view.held.pop(spelling, None) is not None:
                # Told it is gone, by an id this view held it under: every spelling goes.
                view.refused_at[name] = now
                view.held = {k: v for k, v in view.held.items() if v != name}
        else:
            view.held.pop(spelling, None)  # an expired value not served stale is let go of
        return
    payload, source = result
    assert payload.version_id in aws.fetched, f"{spelling}: served something AWS never handed out"
    secret, fetched_at = aws.fetched[payload.version_id]
    assert secret == name, f"{spelling}: served the value of {secret}"
    assert payload.string is not None and not payload.string.startswith("{{")
    age = now - fetched_at
    ttl, stale = view.resolver.cache_ttl_seconds, view.resolver.stale_if_error_seconds
    assert age < ttl + stale, f"{spelling}: served {age} s after its fetch, past {ttl} + {stale} ({source})"
    refused = aws.refused_at.get(spelling)
    if refused is not None and fetched_at < refused:
        assert source == "process cache" and age < ttl, (
            f"{spelling}: a value fetched before AWS refused it, served from {source} {age} s after its fetch"
        )
    assert view.refused_at.get(name, -1.0) < fetched_at, (
        f"{spelling}: served a value of {name} fetched before this process was told it is gone or denied ({source})"
    )
    view.held[spelling] = name


class CacheModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(start=1_800_000_000.0)
        self.aws = FakeAws(self.clock)
        self.directory = tempfile.mkdtemp(prefix="cache-model-")
        self.views: list[View] = []
        self.rand = random.Random(0)
        resolver_module.clear_process_cache()  # which account our identity acts in is learned again
        self._real_fetch = resolver_module.fetch_secret
        resolver_module.fetch_secret = self.aws.fetch  # type: ignore[assignment]

    def teardown(self) -> None:
        resolver_module.fetch_secret = self._real_fetch  # type: ignore[assignment]
        for view in self.views:
            if view.resolver.shared is not None:
                view.resolver.shared.close()  # type: ignore[attr-defined]
        shutil.rmtree(self.directory, ignore_errors=True)

    def new_view(self, ttl: float, stale: float, negative: float = 10.0, jitter: float = 0.1) -> View:
        clients = RegionalClients(lambda region: None, "us-east-1", "model-identity")
        shared = WorkerCache(
            os.path.join(self.directory, "worker"),
            timer=self.clock,
            rand=self.rand.random,
            jitter=jitter,
            lock_timeout=2,
            max_entries=50,
        )
        # A wide jitter (0.5) makes "one spelling's entry expired, another's still fresh" common.
        cache: TTLCache[SecretPayload] = TTLCache(timer=self.clock, rand=self.rand.random, jitter=jitter)
        view = View(SecretResolver(clients, ttl, stale, cache=cache, shared=shared, negative_cache_seconds=negative))
        self.views.append(view)
        return view

    @initialize(
        ttl=st.sampled_from([30.0, 60.0, 300.0]),
        stale=st.sampled_from([0.0, 60.0, 300.0]),
        negative=st.sampled_from([0.0, 10.0]),
        jitter=st.sampled_from([0.1, 0.5]),
    )
    def first_process(self, ttl: float, stale: float, negative: float, jitter: float) -> None:
        self.new_view(ttl, stale, negative, jitter)

    @precondition(lambda self: len(self.views) < 4)
    @rule(
        ttl=st.sampled_from([30.0, 60.0, 300.0]),
        stale=st.sampled_from([0.0, 60.0, 300.0]),
        negative=st.sampled_from([0.0, 10.0]),
        jitter=st.sampled_from([0.1, 0.5]),
    )
    def fork_new_process(self, ttl: float, stale: float, negative: float, jitter: float) -> None:
        self.new_view(ttl, stale, negative, jitter)

    @rule(data=st.data(), name=st.sampled_from(SPELLINGS))
    def lookup(self, data: st.DataObject, name: str) -> None:
        view = data.draw(st.sampled_from(self.views), label="view")
        outcome = lookup_with_timeout(view, name)
        check(self.aws, view, name, outcome, self.clock())

    @rule(seconds=st.sampled_from([0.5, 4.0, 10.0, 29.0, 31.0, 59.0, 61.0, 120.0, 299.0, 301.0, 700.0]))
    def clock_step(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(name=st.sampled_from(SECRETS))
    def rotate(self, name: str) -> None:
        self.aws.version[name] += 1

    @rule(name=st.sampled_from(SECRETS), exists=st.booleans())
    def delete_or_restore(self, name: str, exists: bool) -> None:
        self.aws.exists[name] = exists

    @rule(name=st.sampled_from(SECRETS), allowed=st.booleans())
    def revoke_or_grant(self, name: str, allowed: bool) -> None:
        self.aws.allowed[name] = allowed

    @rule(fault=st.sampled_from(FAULTS))
    def aws_fault(self, fault: str | None) -> None:
        self.aws.fault = fault

    @precondition(lambda self: hasattr(os, "fork"))
    @rule(data=st.data(), name=st.sampled_from(SPELLINGS))
    def real_fork(self, data: st.DataObject, name: str) -> None:
        """A real fork: the child inherits a view (its in-process tier too) and looks up."""
        view = data.draw(st.sampled_from(self.views), label="view")
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report "ok" or what went wrong, never raise
            os.close(read_end)
            try:
                check(self.aws, view, name, lookup_with_timeout(view, name), self.clock())
                report = "ok"
            except BaseException as exc:  # noqa: BLE001
                report = f"{type(exc).__name__}: {exc}"[:2000]
            # What AWS answered the child is history the other processes share (through the directory).
            reply = {"report": report, "fetched": self.aws.fetched, "refused_at": self.aws.refused_at}
            os.write(write_end, json.dumps(reply).encode())
            os._exit(0)
        os.close(write_end)
        try:
            ready, _, _ = select.select([read_end], [], [], LOOKUP_TIMEOUT + 5)
            if not ready:
                os.kill(pid, signal.SIGKILL)
            chunks = []
            while ready and (chunk := os.read(read_end, 65536)):
                chunks.append(chunk)
        finally:
            os.close(read_end)
            os.waitpid(pid, 0)
        assert ready, "the forked child hung"
        reply = json.loads(b"".join(chunks))
        self.aws.fetched.update({k: tuple(v) for k, v in reply["fetched"].items()})  # type: ignore[misc]
        self.aws.refused_at.update(reply["refused_at"])
        assert reply["report"] == "ok", reply["report"]

    @invariant()
    def directory_is_bounded(self) -> None:
        files = os.listdir(os.path.join(self.directory, "worker")) if self.views else []
        assert len([f for f in files if f.endswith(".lock")]) <= 64
        assert len([f for f in files if f.endswith(".entry")]) <= 50
        assert not [f for f in files if f.endswith(".tmp")]


CacheModel.TestCase.settings = settings(
    max_examples=int(os.environ.get("CACHE_MODEL_EXAMPLES", "40")),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCacheModel = CacheModel.TestCase
