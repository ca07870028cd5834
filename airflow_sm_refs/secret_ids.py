"""Which strings name the same secret, by AWS's own resolution rules (DESIGN §7).

This module owns one rule, and every place that stores, matches or drops a
cached payload asks it:

    A payload is served for a secret id only if AWS answered that exact id
    with it, or the id names the same secret by AWS's rules: the secret's full
    ARN always; its partial ARN (the ARN without AWS's ``-XXXXXX`` suffix)
    unless the name itself ends in a hyphen and six characters; its plain name
    only in the caller's own account, in the ARN's region.

Why each part:

- A **full ARN** names exactly one secret, in the account and region it spells.
- A **partial ARN** ``...:secret:<name>`` names the secret called ``<name>`` in
  that account and region, but if ``<name>`` ends in ``-`` and six characters,
  AWS takes the string for a *full* ARN: ``...:secret:prod/db-seMZmf`` is the
  secret ``prod/db`` (whose suffix is ``seMZmf``), not the secret named
  ``prod/db-seMZmf``. Nothing is ever stored under such a string unless AWS
  answered it.
- A **plain name** is looked up in the caller's own account and the client's
  region. Another account's ARN never makes its name an alias. The caller's
  account is learned from AWS itself: the ARN it answers a plain name with is
  in the caller's account (:class:`OwnAccounts`).

Knows nothing of caches or clients: strings in, strings out.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "OWN_ACCOUNTS",
    "BatchItem",
    "OwnAccounts",
    "SecretArn",
    "every_spelling",
    "full_arn",
    "is_name",
    "looks_complete",
    "match_batch",
    "region_of",
    "same_secret_ids",
    "spelling_keys",
]

#: AWS adds a hyphen and six characters to a secret's name to make its ARN
_SUFFIX = re.compile(r"-[A-Za-z0-9]{6}\Z")


def is_name(secret_id: str) -> bool:
    """Whether ``secret_id`` is a plain name (looked up in the caller's account), not an ARN."""
    return not secret_id.startswith("arn:")


def looks_complete(name: str) -> bool:
    """Whether ``name`` ends like a full ARN's resource (``-`` and six characters).

    AWS reads an ARN ending so as a full ARN, never as a partial one.
    """
    return _SUFFIX.search(name) is not None


@dataclass(frozen=True)
class SecretArn:
    """The parts of a secret's ARN that resolution depends on."""

    arn: str
    partition: str
    region: str
    account: str
    #: what follows ``secret:``: the name, and for a full ARN the suffix
    resource: str

    @classmethod
    def parse(cls, arn: str) -> SecretArn | None:
        """The parts of ``arn``; ``None`` if it is not a Secrets Manager secret ARN."""
        parts = arn.split(":", 6)
        if len(parts) != 7 or parts[0] != "arn" or parts[2] != "secretsmanager" or parts[5] != "secret":
            return None
        if not parts[3] or not parts[4] or not parts[6]:
            return None
        return cls(arn, parts[1], parts[3], parts[4], parts[6])

    @property
    def name_if_full(self) -> str | None:
        """The secret's name if this is a full ARN (it ends in the suffix), else ``None``."""
        return self.resource[:-7] if looks_complete(self.resource) and len(self.resource) > 7 else None

    @property
    def partial(self) -> str | None:
        """The partial ARN of the same secret, when AWS would resolve it to this one; else ``None``."""
        name = self.name_if_full
        if name is None or looks_complete(name):
            return None
        return self.arn[:-7]


class OwnAccounts:
    """The account each AWS identity acts in, as learned from AWS's answers to plain names.

    A plain name is resolved in the caller's own account, so the ARN AWS
    answers one with names that account. Until it is known, no ARN is taken
    to be the same secret as a name.
    """

    def __init__(self) -> None:
        self._accounts: dict[str, str] = {}
        self._lock = threading.Lock()

    def get(self, identity: str) -> str | None:
        return self._accounts.get(identity)

    def learn(self, identity: str, asked: str, answered_arn: str) -> None:
        """Record the account of ``answered_arn`` if AWS answered the plain name ``asked`` with it."""
        if not is_name(asked):
            return
        parsed = SecretArn.parse(answered_arn)
        if parsed is not None:
            with self._lock:
                self._accounts[identity] = parsed.account

    def clear(self) -> None:
        with self._lock:
            self._accounts.clear()


#: the process's knowledge of which account each identity acts in
OWN_ACCOUNTS = OwnAccounts()


def same_secret_ids(
    asked: str, arn: str, name: str | None, *, region: str, own_account: str | None
) -> list[str]:
    """The ids besides ``asked`` that a payload AWS answered ``asked`` with may also be served for.

    :param asked: the id AWS was asked (and answered): a name, a partial or a full ARN
    :param arn: the ARN in AWS's answer
    :param name: the ``Name`` in AWS's answer, if it gave one
    :param region: the region ``asked`` was sent to (a name is only an alias in it; empty: not known)
    :param own_account: the caller's account, if known
    """
    parsed = SecretArn.parse(arn)
    if parsed is None or parsed.name_if_full is None:
        # Not a full ARN of a secret (a stand-in's answer, a wrong endpoint): only what was asked.
        return []
    if region and parsed.region != region:
        return []  # an answer from another region than asked is no one's alias
    ids = [parsed.arn]
    if parsed.partial is not None:
        ids.append(parsed.partial)
    secret_name = name if name is not None else parsed.name_if_full
    if (
        secret_name == parsed.name_if_full
        and own_account is not None
        and parsed.account == own_account
        and parsed.region == region
    ):
        ids.append(secret_name)
    return [i for i in dict.fromkeys(ids) if i != asked]


def every_spelling(arn: str, name: str | None = None) -> list[str]:
    """Every string that may have been stored for the secret with ``arn``: for dropping, never for serving.

    Dropping too much costs at most a fetch; dropping too little could serve a
    revoked value, so this is the widest set :func:`same_secret_ids` could give.
    """
    parsed = SecretArn.parse(arn)
    if parsed is None:
        return [arn]
    ids = [parsed.arn]
    full_name = parsed.name_if_full
    if full_name is not None:
        ids += [parsed.arn[:-7], full_name]
    if name:
        ids.append(name)
    return list(dict.fromkeys(ids))


@dataclass(frozen=True)
class BatchItem:
    """One secret in a ``BatchGetSecretValue`` answer, as far as matching goes."""

    arn: str
    name: str


def _answers_arn(asked: str, item: BatchItem) -> bool:
    if item.arn == asked:
        return True
    wanted = SecretArn.parse(asked)
    got = SecretArn.parse(item.arn)
    if wanted is None or got is None or looks_complete(wanted.resource):
        # AWS reads an id ending in -XXXXXX as a full ARN: only that exact ARN answers it.
        return False
    return got.partial == asked


def match_batch(
    asked: Sequence[str], items: Iterable[BatchItem], *, region: str, own_account: str | None
) -> Mapping[str, BatchItem]:
    """Which answered item is the answer to each asked id; an id no item answers exactly is left out.

    AWS gives the items in no order and says nothing of which id each answers.
    A full ARN is matched exactly, a partial ARN by the rule above, a plain
    name by its ``Name`` in the caller's own account and ``region`` only.
    When that account is not known, names are matched only in a batch that asks
    names alone (AWS answers names from the caller's account only).
    """
    items = list(items)
    names_only = all(is_name(a) for a in asked)
    matched: dict[str, BatchItem] = {}
    for wanted in asked:
        if is_name(wanted):
            candidates = []
            for item in items:
                parsed = SecretArn.parse(item.arn)
                if item.name != wanted or parsed is None or parsed.name_if_full != wanted:
                    continue
                if region and parsed.region != region:
                    continue
                if own_account is not None:
                    if parsed.account == own_account:
                        candidates.append(item)
                elif names_only:
                    candidates.append(item)
        else:
            candidates = [item for item in items if _answers_arn(wanted, item)]
            exact = [item for item in candidates if item.arn == wanted]
            candidates = exact or candidates
        arns = {item.arn for item in candidates}
        if len(arns) == 1:
            matched[wanted] = candidates[0]
    return matched


def spelling_keys(key: tuple[str, ...], arn: str, name: str | None = None) -> list[tuple[str, ...]]:
    """The cache keys, other than ``key``, of every spelling of the secret with ``arn``: for drops.

    ``key`` is (identity, region, secret id, version); the others keep its
    identity and version, in the ARN's region (the only one a name can alias in).
    """
    identity, region, asked, version = key
    parsed = SecretArn.parse(arn)
    where = parsed.region if parsed is not None else region
    return [(identity, where, spelling, version) for spelling in every_spelling(arn, name) if (where, spelling) != (region, asked)]


def region_of(secret_id: str) -> str | None:
    """The region an ARN names; ``None`` for a plain name."""
    parsed = SecretArn.parse(secret_id)
    return parsed.region if parsed is not None else None


def full_arn(secret_id: str) -> bool:
    """Whether ``secret_id`` reads as a full ARN to AWS (its name part ends in ``-`` and six characters)."""
    parsed = SecretArn.parse(secret_id)
    return parsed is not None and parsed.name_if_full is not None
