"""Differential test of "a value only for the secret AWS answered" (DESIGN §7, issue 17).

Random sequences of lookups, by every spelling of a secret, across two
accounts and two regions, through the single path (``resolve``), the batch
path (``prefetch`` then ``resolve``) and the memoised expansion of a Variable
(:class:`ExpansionMemo`, as the backend uses it), in several "processes" (each
a ``SecretResolver`` with its own in-process tier, TTL, stale and negative
windows and default region, all sharing one per-worker directory), while
secrets are rotated, deleted, denied and AWS throttles. Real boto3 clients
talk to :class:`AccountsStandIn`, which answers ids by AWS's rules.

The oracle asks the stand-in itself, as the caller, ``GetSecretValue`` of
every id after every change, and keeps each id's history. Checked on every
lookup:

- a served value is what AWS answered *that exact id* (a plain name: in the
  reader's default region, in the caller's own account) at some time within
  the reader's TTL plus stale window: never another secret's value, never
  another account's for a plain name, never a value past its window;
- once a process has been told a secret it held under an id is gone or denied,
  it serves no value of that secret that AWS has not answered again since
  (not-found and denied drop every spelling);
- a not-found or denied error is AWS's answer for that id, now or within the
  reader's negative window.

The secrets include the collisions of issue 17: the same name in two accounts
and two regions, a secret *named* like another's full ARN
(``prod/db-AbCdEf``), and a name ending in ``-`` and six characters whose
partial ARN AWS reads as a full ARN that no secret has.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule, run_state_machine_as_test

from airflow_sm_refs import SecretAccessDeniedError, SecretNotFoundError, SecretReferenceError, SecretTransientError
from airflow_sm_refs import parse_reference
from airflow_sm_refs._aws import RegionalClients
from airflow_sm_refs.cache import TTLCache
from airflow_sm_refs.expand import Expansion, ExpansionMemo
from airflow_sm_refs.resolver import SecretResolver, clear_process_cache
from airflow_sm_refs.worker_cache import WorkerCache
from standins.aws import INTERNAL_ERROR, THROTTLING
from standins.aws_accounts import OTHER_ACCOUNT, OWN_ACCOUNT, AccountsStandIn
from tests.conftest import FakeClock

pytestmark = pytest.mark.compat

REGIONS = ("us-east-1", "eu-west-1")
IDENTITY = "differential-caller"
#: how many random cases (state machine runs) and lookup steps the property test ran, and how many
#: outcomes were checked (its own and the fixed repros'), for the report
CASES = {"examples": 0, "steps": 0, "lookups": 0, "values": 0, "refusals": 0}
_SERIAL = [0]
EXAMPLES = int(os.environ.get("SECRET_IDS_DIFFERENTIAL_EXAMPLES", "30"))
SHRINK = os.environ.get("SECRET_IDS_DIFFERENTIAL_SHRINK") == "1"

#: the secrets of each case: label -> (account, region, name); "+suffix" names another secret's name and suffix
WORLD: dict[str, tuple[str, str, str]] = {
    "A": (OWN_ACCOUNT, "us-east-1", "prod/db"),
    "B": (OWN_ACCOUNT, "us-east-1", "A+suffix"),  # named like A's full ARN's resource: prod/db-XXXXXX
    "D": (OWN_ACCOUNT, "us-east-1", "svc/key-abcDEF"),  # ends like a suffix: its partial ARN names nothing
    "A2": (OTHER_ACCOUNT, "us-east-1", "prod/db"),
    "B2": (OTHER_ACCOUNT, "us-east-1", "A2+suffix"),
    "X2": (OTHER_ACCOUNT, "us-east-1", "team/only-there"),
    "A3": (OWN_ACCOUNT, "eu-west-1", "prod/db"),
    "A4": (OTHER_ACCOUNT, "eu-west-1", "prod/db"),
}
#: spellings looked up: (label, how)
SPELLINGS = [(label, how) for label in WORLD for how in ("name", "partial", "full")] + [("none", "name")]

#: a module-level stand-in, shared by every case (one moto server for the module)
_STAND_IN: list[AccountsStandIn] = []
_CLIENTS: dict[tuple[str, str], Any] = {}


def caller_client(region: str | None) -> Any:
    """The plugin's client for ``region``: the caller's own credentials, no retries (a throttle is one answer)."""
    import boto3
    from botocore.config import Config

    region = region or "us-east-1"
    key = ("caller", region)
    if key not in _CLIENTS:
        _CLIENTS[key] = boto3.client(
            "secretsmanager",
            region_name=region,
            endpoint_url=_STAND_IN[0].endpoint_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106 - the stand-in's
            config=Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=20),
        )
    return _CLIENTS[key]


def admin_client(account: str, region: str) -> Any:
    key = (account, region)
    if key not in _CLIENTS:
        _CLIENTS[key] = _STAND_IN[0].client(account, region)
    return _CLIENTS[key]


@dataclass
class Secret:
    label: str
    account: str
    region: str
    name: str
    arn: str
    version: int = 1
    deleted: bool = False
    denied: bool = False


@dataclass
class Record:
    """What AWS answered one id from ``start`` until ``end``: a value (and the ARN it came with) or an error code."""

    start: float
    end: float
    value: str | None
    arn: str | None
    code: str | None

    def same_answer(self, value: str | None, arn: str | None, code: str | None) -> bool:
        return (self.value, self.arn, self.code) == (value, arn, code)


def oracle_key(spelling: str, default_region: str) -> tuple[str, str]:
    """The id as AWS reads it: an ARN in its own region, a name in the reader's default region."""
    if spelling.startswith("arn:"):
        return (spelling.split(":")[3], spelling)
    return (default_region, spelling)


class Oracle:
    """Each id's history of AWS's answers to the caller, asked of the stand-in after every change."""

    def __init__(self, clock: FakeClock, keys: list[tuple[str, str]]) -> None:
        self.clock = clock
        self.history: dict[tuple[str, str], list[Record]] = {key: [] for key in keys}

    def ask(self, key: tuple[str, str]) -> tuple[str | None, str | None, str | None]:
        from botocore.exceptions import ClientError

        region, secret_id = key
        try:
            answer = admin_client(OWN_ACCOUNT, region).get_secret_value(SecretId=secret_id)
        except ClientError as exc:
            return None, None, str(exc.response["Error"]["Code"])
        return answer["SecretString"], answer["ARN"], None

    def observe(self, keys: list[tuple[str, str]] | None = None) -> None:
        now = self.clock()
        for key in keys if keys is not None else list(self.history):
            value, arn, code = self.ask(key)
            records = self.history[key]
            if records and records[-1].same_answer(value, arn, code):
                continue
            if records:
                records[-1].end = now
            records.append(Record(now, math.inf, value, arn, code))

    def after_change(self, arn: str, *, refused_too: bool = False) -> None:
        """Ask again every id AWS answered with ``arn``'s secret (and, after a grant, every one it refused).

        By AWS's rules no other id's answer can change when one secret is rotated, deleted or denied.
        """
        self.observe(
            [k for k, r in self.history.items() if r and (r[-1].arn == arn or (refused_too and r[-1].code is not None))]
        )

    def whose(self, value: str) -> str:
        """Which id(s) AWS ever answered with ``value`` (for failure messages)."""
        for records in self.history.values():
            for record in records:
                if record.value == value:
                    return f"the secret {record.arn}"
        return "no secret AWS ever answered"


@dataclass(repr=False)
class View:
    """One task process: its own in-process tier, settings and default region; the shared directory."""

    name: str
    resolver: SecretResolver
    memo: ExpansionMemo
    region: str
    ttl: float
    stale: float
    negative: float
    #: oracle key -> ARN of the secret this process last served for it (its tier holds that payload)
    held: dict[tuple[str, str], str] = field(default_factory=dict)
    #: ARN -> when this process was told (for an id it held that secret under) that it is gone or denied
    refused: dict[str, float] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"<{self.name}: {self.region}, ttl {self.ttl}, stale {self.stale}, negative {self.negative}>"


class SecretIdsDifferential(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        _SERIAL[0] += 1
        self.case = _SERIAL[0]
        self.aws = _STAND_IN[0]
        self.aws.reset()
        self.aws.clear_faults()
        clear_process_cache()
        self._forget_own_accounts()
        self.clock = FakeClock(start=1_800_000_000.0)
        self.directory = tempfile.mkdtemp(prefix="sm-differential-")
        self.secrets = self._create_world()
        keys = []
        for spelling in dict.fromkeys(self._spell(label, how) for label, how in SPELLINGS):
            keys += [oracle_key(spelling, region) for region in REGIONS]
        self.oracle = Oracle(self.clock, list(dict.fromkeys(keys)))
        self.oracle.observe()
        self.views: list[View] = []

    @staticmethod
    def _forget_own_accounts() -> None:
        try:
            from airflow_sm_refs import secret_ids
        except ImportError:
            return
        own = getattr(secret_ids, "OWN_ACCOUNTS", None)
        if own is not None:
            own.clear()

    def _create_world(self) -> dict[str, Secret]:
        secrets: dict[str, Secret] = {}
        for label, (account, region, name) in WORLD.items():
            if name.endswith("+suffix"):
                name = secrets[name[: -len("+suffix")]].arn.rsplit(":", 1)[-1]  # prod/db-XXXXXX
            arn = admin_client(account, region).create_secret(Name=name, SecretString=self.value_of(label, 1))["ARN"]
            secrets[label] = Secret(label, account, region, name, arn)
        return secrets

    def value_of(self, label: str, version: int) -> str:
        return f"{label}.v{version}.case{self.case}"

    def _spell(self, label: str, how: str) -> str:
        if label == "none":
            return "nothing/here"
        secret = self.secrets[label]
        return {"name": secret.name, "partial": secret.arn[:-7], "full": secret.arn}[how]

    def teardown(self) -> None:
        self.aws.clear_faults()
        for view in self.views:
            view.resolver.shared.close()  # type: ignore[union-attr]
        shutil.rmtree(self.directory, ignore_errors=True)

    # --- processes --------------------------------------------------------------
    def new_view(
        self,
        ttl: float,
        stale: float,
        negative: float,
        region: str,
        rand: Any,
        worker_rand: Any = None,
        jitter: float = 0.1,
    ) -> View:
        clients = RegionalClients(caller_client, region, IDENTITY)
        shared = WorkerCache(
            os.path.join(self.directory, "worker"),
            timer=self.clock,
            rand=(worker_rand or rand).random,
            jitter=jitter,
            lock_timeout=10,
        )
        # A wide jitter (0.5) makes "one spelling's entry expired, another's still fresh" common.
        cache: TTLCache[Any] = TTLCache(timer=self.clock, rand=rand.random, jitter=jitter)
        resolver = SecretResolver(
            clients, ttl, stale, cache=cache, shared=shared, negative_cache_seconds=negative
        )
        view = View(f"p{len(self.views)}", resolver, ExpansionMemo(), region, ttl, stale, negative)
        self.views.append(view)
        return view

    view_settings = {
        "ttl": st.sampled_from([30.0, 300.0]),
        "stale": st.sampled_from([0.0, 60.0]),
        "negative": st.sampled_from([0.0, 10.0]),
        "region": st.sampled_from(REGIONS),
        "rand": st.randoms(use_true_random=False),
        "jitter": st.sampled_from([0.1, 0.5]),
    }

    @initialize(**view_settings)
    def first_process(self, ttl: float, stale: float, negative: float, region: str, rand: Any, jitter: float) -> None:
        CASES["examples"] += 1
        self.new_view(ttl, stale, negative, region, rand, jitter=jitter)

    @precondition(lambda self: len(self.views) < 3)
    @rule(**view_settings)
    def another_process(self, ttl: float, stale: float, negative: float, region: str, rand: Any, jitter: float) -> None:
        self.new_view(ttl, stale, negative, region, rand, jitter=jitter)

    # --- lookups ----------------------------------------------------------------
    @rule(
        data=st.data(),
        path=st.sampled_from(["single", "batch", "memo"]),
        picks=st.lists(st.sampled_from(SPELLINGS), min_size=1, max_size=4),
    )
    def lookup(self, data: st.DataObject, path: str, picks: list[tuple[str, str]]) -> None:
        view = data.draw(st.sampled_from(self.views), label="process")
        CASES["steps"] += 1
        self.look_up(view, path, [self._spell(*pick) for pick in picks])

    # Lookups are what is checked: twice the weight of any other step.
    lookup_again = lookup

    def look_up(self, view: View, path: str, spellings: list[str]) -> None:
        """Look ``spellings`` up in ``view`` by ``path`` and check every outcome."""
        refs = [parse_reference(f"{{{{workato:sm::{s}}}}}") for s in spellings]
        if path == "memo":
            self._look_up_memo(view, spellings, refs)
            return
        if path == "batch":
            view.resolver.prefetch(refs)
        for spelling, ref in zip(spellings, refs):
            try:
                resolved = view.resolver.resolve(ref)
            except SecretReferenceError as exc:
                self.check_error(view, spelling, exc)
            else:
                self.check_value(view, spelling, resolved.value, f"{path}, from {resolved.source}")

    def _look_up_memo(self, view: View, spellings: list[str], refs: list[Any]) -> None:
        raw = " ;; ".join(ref.text for ref in refs)
        memo_key = ("variable", "differential", raw)
        value = view.memo.get(memo_key, lambda: view.resolver)
        source = "memo"
        if value is None:
            expansion = Expansion(view.resolver, conn_id="differential", kind="variable", mask=lambda v: None)
            try:
                value = expansion.variable(raw)
            except SecretReferenceError as exc:
                failed = {ref.text: s for ref, s in zip(refs, spellings)}.get(exc.reference or "")
                assert failed is not None, f"an error naming no reference of the Variable: {exc}"
                self.check_error(view, failed, exc)
                return
            view.memo.put(memo_key, value, expansion)
            source = "expansion"
        values = value.split(" ;; ")
        assert len(values) == len(spellings), "a value holds the separator"
        for spelling, served in zip(spellings, values):
            self.check_value(view, spelling, served, f"memoised Variable, from {source}")

    # --- the invariants ---------------------------------------------------------
    def check_value(self, view: View, spelling: str, value: str, source: str) -> None:
        CASES["lookups"] += 1
        CASES["values"] += 1
        key = oracle_key(spelling, view.region)
        now = self.clock()
        window = view.ttl + view.stale
        answered = [r for r in self.oracle.history[key] if r.value == value and r.start <= now]
        within = [r for r in answered if r.end > now - window]
        where = f"{view.name} (default region {view.region}, ttl {view.ttl}, stale {view.stale}) looked up {spelling!r} ({source})"
        if not answered:
            pytest.fail(
                f"{where} and was served the value of {self.oracle.whose(value)}, which AWS never answered "
                f"that id with (AWS answers it: {self._answers(key)})"
            )
        if not within:
            pytest.fail(
                f"{where} and was served a value AWS last answered that id with "
                f"{now - answered[-1].end:.0f} s ago, past the reader's {window:.0f} s"
            )
        arn = within[-1].arn
        assert arn is not None
        refused = view.refused.get(arn)
        if refused is not None and not any(r.end > refused for r in within):
            pytest.fail(
                f"{where} and was served a value of {arn} that AWS has not handed out since this process "
                f"was told {now - refused:.0f} s ago that the secret is gone or denied (another spelling)"
            )
        view.held[key] = arn

    def check_error(self, view: View, spelling: str, exc: SecretReferenceError) -> None:
        CASES["lookups"] += 1
        key = oracle_key(spelling, view.region)
        if isinstance(exc, SecretTransientError):
            view.held.pop(key, None)  # the process tier lets go of an expired value it cannot serve stale
            return
        if not isinstance(exc, (SecretNotFoundError, SecretAccessDeniedError)):
            pytest.fail(f"{view.name} looked up {spelling!r}: unexpected {type(exc).__name__}: {exc}")
        CASES["refusals"] += 1
        code = "ResourceNotFoundException" if isinstance(exc, SecretNotFoundError) else "AccessDeniedException"
        now = self.clock()
        said = [
            r for r in self.oracle.history[key] if r.code == code and r.start <= now and r.end > now - view.negative
        ]
        if not said:
            pytest.fail(
                f"{view.name} (default region {view.region}) looked up {spelling!r} and got {code}, but AWS "
                f"answers that id with {self._answers(key)} (negative window {view.negative} s)"
            )
        arn = view.held.pop(key, None)
        if arn is not None:
            # Gone or denied, by an id this process held the secret under: every spelling goes.
            view.refused[arn] = now
            for other, held in list(view.held.items()):
                if held == arn:
                    del view.held[other]

    def _answers(self, key: tuple[str, str]) -> str:
        record = self.oracle.history[key][-1]
        return record.code or f"the value of {record.arn}"

    # --- the world changes --------------------------------------------------------
    @rule(seconds=st.sampled_from([1.0, 9.0, 11.0, 26.0, 31.0, 61.0, 271.0, 301.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(change=st.sampled_from(["rotate", "delete", "deny", "allow"]), label=st.sampled_from(list(WORLD)))
    def the_secret_changes(self, change: str, label: str) -> None:
        if change == "rotate":
            self.rotate(label)
        elif change == "delete":
            self.delete(label)
        else:
            self.deny_or_allow(label, change == "deny")

    def rotate(self, label: str) -> None:
        secret = self.secrets[label]
        if secret.deleted:
            return
        secret.version += 1
        admin_client(secret.account, secret.region).put_secret_value(
            SecretId=secret.arn, SecretString=self.value_of(label, secret.version)
        )
        self.oracle.after_change(secret.arn)

    def delete(self, label: str) -> None:
        secret = self.secrets[label]
        if secret.deleted:
            return
        secret.deleted = True
        admin_client(secret.account, secret.region).delete_secret(SecretId=secret.arn, ForceDeleteWithoutRecovery=True)
        self.oracle.after_change(secret.arn)

    def deny_or_allow(self, label: str, denied: bool) -> None:
        secret = self.secrets[label]
        if secret.denied == denied:
            return
        secret.denied = denied
        (self.aws.deny if denied else self.aws.allow)(secret.arn)
        # Only a grant can turn a refusal into a value.
        self.oracle.after_change(secret.arn, refused_too=not denied)

    @rule(fault=st.sampled_from([THROTTLING, INTERNAL_ERROR]), times=st.integers(1, 3))
    def aws_fails(self, fault: Any, times: int) -> None:
        self.aws.fail_next(fault, times)


@pytest.fixture(scope="module")
def accounts() -> Any:
    with AccountsStandIn(seed=17) as stand_in:
        _STAND_IN[:] = [stand_in]
        yield stand_in
        _STAND_IN.clear()
        _CLIENTS.clear()


@pytest.fixture
def quiet(caplog: pytest.LogCaptureFixture) -> None:
    """botocore's and our DEBUG lines for thousands of requests would cost more than the lookups."""
    caplog.set_level("WARNING", logger="botocore")
    caplog.set_level("WARNING", logger="airflow_sm_refs")


def test_served_values_follow_aws_answers_for_the_exact_id(accounts: AccountsStandIn, quiet: None) -> None:
    run_state_machine_as_test(
        SecretIdsDifferential,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            # Shrinking a failure costs minutes of AWS round trips; the unshrunk steps are printed
            # all the same. SECRET_IDS_DIFFERENTIAL_SHRINK=1 shrinks (locally, to read a failure).
            phases=[p for p in Phase if p is not Phase.shrink or SHRINK],
        ),
    )


# --- issue 17's repros, as fixed sequences of the same steps ---------------------------------
def machine(accounts: AccountsStandIn, worker_rand: Any = None, **view: Any) -> SecretIdsDifferential:
    import random

    m = SecretIdsDifferential()
    settings_ = {"ttl": 300.0, "stale": 0.0, "negative": 10.0, "region": "us-east-1", "rand": random.Random(0)}
    settings_.update(view)
    m.new_view(**settings_, worker_rand=worker_rand)
    return m


def run(m: SecretIdsDifferential, steps: list[tuple[Any, ...]]) -> None:
    try:
        for step in steps:
            if step[0] == "look":
                _, view, path, spellings = step
                m.look_up(m.views[view], path, [m._spell(*s) for s in spellings])
            else:
                getattr(m, step[0])(*step[1:])
    finally:
        m.teardown()


@pytest.mark.parametrize("path", ["single", "batch", "memo"])
def test_another_accounts_arn_never_answers_the_plain_name(accounts: AccountsStandIn, quiet: None, path: str) -> None:
    """Repro 1: looking up account 222's ``prod/db`` by ARN must not make ``prod/db`` serve it."""
    m = machine(accounts)
    run(m, [("look", 0, path, [("A2", "full"), ("X2", "full")]), ("look", 0, path, [("A", "name"), ("X2", "name")])])


@pytest.mark.parametrize("path", ["single", "batch", "memo"])
def test_a_secret_named_like_another_ones_full_arn_is_not_that_secret(
    accounts: AccountsStandIn, quiet: None, path: str
) -> None:
    """Repro 2: B is named ``prod/db-XXXXXX``, A's full ARN ends so; each id gets its own secret's value."""
    m = machine(accounts)
    run(
        m,
        [
            ("look", 0, path, [("B", "name"), ("B", "full")]),
            ("look", 0, path, [("A", "full"), ("B", "partial"), ("D", "partial")]),
            ("look", 0, path, [("A", "name"), ("A", "partial")]),
        ],
    )


def test_a_batch_matches_each_answer_to_the_id_that_asked_for_it(accounts: AccountsStandIn, quiet: None) -> None:
    """Repro 2, batch: a plain name and another account's ARN of the same name in one batch."""
    m = machine(accounts)
    run(m, [("look", 0, "batch", [("A", "name"), ("A2", "full"), ("B2", "name"), ("A2", "partial")])])


class Draws:
    """Jitter draws in a fixed order: ``first`` ones, then 0 (no jitter) for ever."""

    def __init__(self, *first: float) -> None:
        self.first = list(first)

    def random(self) -> float:
        return self.first.pop(0) if self.first else 0.0


def test_a_memoised_expansion_is_not_served_past_the_ttl_of_a_value_in_it(accounts: AccountsStandIn, quiet: None) -> None:
    """Repro 4: a value memoised with a payload another reference refreshed is not served past its own TTL.

    The name's entries draw the most jitter (27 s of a 30 s TTL), its ARN's none:
    at 28 s the ARN is a hit (v1) and the name a fetch (v2, after the rotation),
    which stores the ARN's entry anew. The memoised "v1 ;; v2" depends on the v1
    payload, expired at 30 s, not on the ARN's newer one.
    """
    m = machine(accounts, ttl=30.0, rand=Draws(1.0), worker_rand=Draws(1.0))
    run(
        m,
        [
            ("look", 0, "single", [("A", "name")]),
            ("time_passes", 5.0),
            ("rotate", "A"),
            ("time_passes", 23.0),
            ("look", 0, "memo", [("A", "full"), ("A", "name")]),
            ("time_passes", 8.0),
            ("look", 0, "memo", [("A", "full"), ("A", "name")]),
        ],
    )


@pytest.mark.parametrize("change", ["delete", "deny"])
def test_a_batch_refusal_drops_every_spelling(accounts: AccountsStandIn, quiet: None, change: str) -> None:
    """Repro 5: a batch's not-found/denied answer for one spelling drops the secret's other spellings too.

    The name's entries draw the most jitter (270 s of 300), its ARNs' none: at
    280 s the name goes into a batch, whose Errors say A is gone or denied.
    """
    m = machine(accounts, ttl=300.0, negative=10.0, rand=Draws(1.0), worker_rand=Draws(1.0))
    steps: list[tuple[Any, ...]] = [
        ("look", 0, "single", [("A", "name")]),
        ("time_passes", 280.0),
        ("delete", "A") if change == "delete" else ("deny_or_allow", "A", True),
        ("look", 0, "batch", [("A", "name"), ("D", "name")]),
        ("look", 0, "single", [("A", "full")]),
        ("look", 0, "single", [("A", "partial")]),
    ]
    accounts.reset_counts()
    run(m, steps)
    assert accounts.calls("BatchGetSecretValue") == 1, "the steps no longer reach the batch path"


def test_zz_report_how_many_cases_ran(capsys: pytest.CaptureFixture[str]) -> None:
    """Say how many random cases the property test ran (for the issue's closing note)."""
    line = (
        f"secret-ids differential: {CASES['examples']} random cases, {CASES['steps']} random lookup steps; "
        f"{CASES['lookups']} outcomes checked ({CASES['values']} values, {CASES['refusals']} not-found/denied)"
    )
    with capsys.disabled():
        print("\n" + line)
    report = os.environ.get("SECRET_IDS_DIFFERENTIAL_REPORT")
    if report:
        with open(report, "a", encoding="utf-8") as out:
            out.write(line + "\n")
