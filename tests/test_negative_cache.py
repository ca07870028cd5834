"""Not-found and denied answers remembered for ``negative_cache_seconds``, in both tiers.

``TestWindow`` drives a resolver (its own process tier and a worker cache, on
one fake clock) with a fake AWS call; ``TestAcrossTaskProcesses`` runs real
task processes against moto on loopback, counting requests at the server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_sm_refs import (
    SecretAccessDeniedError,
    SecretNotFoundError,
    SecretsManagerRefsBackend,
    SecretTransientError,
    parse_reference,
)
from airflow_sm_refs import resolver as resolver_module
from airflow_sm_refs._aws import RegionalClients
from airflow_sm_refs.cache import TTLCache
from airflow_sm_refs.fetch import SecretPayload
from airflow_sm_refs.resolver import CacheSettings, SecretResolver
from airflow_sm_refs.worker_cache import WorkerCache
from standins.aws import AwsStandIn
from tests.conftest import BACKEND, FakeClock
from tests.worker_proc import TaskProcesses

pytestmark = pytest.mark.compat

REF = parse_reference("{{workato:sm:password:prod/db}}")
VALUE = SecretPayload("arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf", "v1", '{"password": "pw-1"}', None)


class FakeAws:
    """One answer for every GetSecretValue, counted; ``answer`` may be changed between lookups."""

    def __init__(self, answer: SecretPayload | BaseException) -> None:
        self.answer = answer
        self.calls = 0

    def __call__(self, clients: Any, ref: Any) -> SecretPayload:
        self.calls += 1
        if isinstance(self.answer, BaseException):
            raise type(self.answer)(str(self.answer), reference=ref.text)
        return self.answer


def not_found() -> SecretNotFoundError:
    return SecretNotFoundError("secret 'prod/db' (AWSCURRENT): ResourceNotFoundException")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1_800_000_000.0)


@pytest.fixture
def fake_aws(monkeypatch: pytest.MonkeyPatch) -> FakeAws:
    aws = FakeAws(not_found())
    monkeypatch.setattr(resolver_module, "fetch_secret", aws)
    return aws


def process(clock: FakeClock, cache_dir: Path | None, negative: float = 10.0) -> SecretResolver:
    """One task process: its own process tier, the worker directory shared."""
    return SecretResolver(
        RegionalClients(lambda region: None, "us-east-1", "identity-a"),
        cache_ttl_seconds=300,
        stale_if_error_seconds=300,
        cache=TTLCache(timer=clock, jitter=0),
        shared=None if cache_dir is None else WorkerCache(str(cache_dir), timer=clock, jitter=0),
        negative_cache_seconds=negative,
    )


class TestWindow:
    @pytest.mark.parametrize("tiers", ["process only", "process and worker"])
    def test_a_missing_secret_fails_the_same_way_without_a_call_within_the_window(
        self, fake_aws: FakeAws, clock: FakeClock, tmp_path: Path, tiers: str
    ) -> None:
        resolver = process(clock, tmp_path / "cache" if tiers == "process and worker" else None)
        with pytest.raises(SecretNotFoundError, match="ResourceNotFoundException") as first:
            resolver.resolve(REF)
        clock.advance(9.9)
        with pytest.raises(SecretNotFoundError) as again:
            resolver.resolve(REF)
        assert fake_aws.calls == 1
        assert str(again.value) == str(first.value) and "prod/db" in str(again.value)
        clock.advance(0.1)  # the window is over: AWS is asked again
        fake_aws.answer = VALUE
        assert resolver.resolve(REF).value == "pw-1"
        assert fake_aws.calls == 2

    def test_another_process_reads_the_answer_from_the_worker_cache(
        self, fake_aws: FakeAws, clock: FakeClock, tmp_path: Path
    ) -> None:
        fake_aws.answer = SecretAccessDeniedError("secret 'prod/db' (AWSCURRENT): AccessDeniedException")
        with pytest.raises(SecretAccessDeniedError):
            process(clock, tmp_path).resolve(REF)
        clock.advance(6)
        later = process(clock, tmp_path)
        for _ in range(3):
            with pytest.raises(SecretAccessDeniedError, match="AccessDeniedException"):
                later.resolve(REF)
        assert fake_aws.calls == 1
        # The second process keeps the answer's own time: 4 s more, not 10.
        clock.advance(4)
        fake_aws.answer = VALUE
        assert later.resolve(REF).value == "pw-1"
        assert fake_aws.calls == 2

    def test_each_reader_applies_its_own_window(self, fake_aws: FakeAws, clock: FakeClock, tmp_path: Path) -> None:
        with pytest.raises(SecretNotFoundError):
            process(clock, tmp_path, negative=60).resolve(REF)
        clock.advance(5)
        fake_aws.answer = VALUE
        assert process(clock, tmp_path, negative=2).resolve(REF).value == "pw-1"
        assert fake_aws.calls == 2

    def test_transient_failures_are_not_remembered(self, fake_aws: FakeAws, clock: FakeClock, tmp_path: Path) -> None:
        fake_aws.answer = SecretTransientError("secret 'prod/db' (AWSCURRENT): ThrottlingException")
        resolver = process(clock, tmp_path)
        with pytest.raises(SecretTransientError):
            resolver.resolve(REF)
        fake_aws.answer = VALUE
        assert resolver.resolve(REF).value == "pw-1"
        assert fake_aws.calls == 2

    def test_zero_turns_it_off(self, fake_aws: FakeAws, clock: FakeClock, tmp_path: Path) -> None:
        resolver = process(clock, tmp_path, negative=0)
        for _ in range(3):
            with pytest.raises(SecretNotFoundError):
                resolver.resolve(REF)
        assert fake_aws.calls == 3

    def test_a_revocation_is_not_delayed(self, fake_aws: FakeAws, clock: FakeClock, tmp_path: Path) -> None:
        """A value expires at its TTL as before; the denial that follows is then remembered."""
        fake_aws.answer = VALUE
        resolver = process(clock, tmp_path)
        assert resolver.resolve(REF).value == "pw-1"
        clock.advance(300)
        fake_aws.answer = SecretAccessDeniedError("secret 'prod/db' (AWSCURRENT): AccessDeniedException")
        for _ in range(2):
            with pytest.raises(SecretAccessDeniedError):
                resolver.resolve(REF)
        with pytest.raises(SecretAccessDeniedError):
            process(clock, tmp_path).resolve(REF)
        assert fake_aws.calls == 2


class TestOption:
    def test_default_and_parsing(self) -> None:
        assert CacheSettings().negative_cache_seconds == 10
        backend = SecretsManagerRefsBackend(negative_cache_seconds="2.5")
        assert backend.cache_settings.negative_cache_seconds == 2.5
        for bad in ("-1", "ten"):  # kept, named, and nothing resolves until it is fixed
            assert "'negative_cache_seconds'" in (SecretsManagerRefsBackend(negative_cache_seconds=bad).option_error or "")


# --- real task processes ------------------------------------------------------
@pytest.fixture(scope="module")
def task_processes(tmp_path_factory: pytest.TempPathFactory, aws_server: AwsStandIn) -> Iterator[TaskProcesses]:
    with TaskProcesses(tmp_path_factory.mktemp("task-processes") / "stderr.log") as processes:
        yield processes


class TestAcrossTaskProcesses:
    def test_ten_processes_asking_for_a_missing_secret_make_at_most_two_requests(
        self, aws: AwsStandIn, task_processes: TaskProcesses, tmp_path: Path
    ) -> None:
        kwargs = {"region_name": "us-east-1", "endpoint_url": aws.endpoint_url, "shared_cache_dir": str(tmp_path / "c")}
        env: dict[str, str | None] = {
            "AIRFLOW__SECRETS__BACKEND": BACKEND,
            "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps({**kwargs, "negative_cache_seconds": 60}),
            "AIRFLOW_CONN_DB": json.dumps({"conn_type": "postgres", "password": "{{workato:sm:password:no/such}}"}),
        }
        results = task_processes.run(10, env)
        assert [r.get("error") for r in results] == ["SecretNotFoundError"] * 10, results
        assert all("no/such" in r["message"] for r in results)
        assert aws.calls() <= 2
        before = aws.calls()
        results = task_processes.run(10, env)  # still within the window: no request at all
        assert [r.get("error") for r in results] == ["SecretNotFoundError"] * 10, results
        assert aws.calls() == before
