"""Parsing ``{{workato:sm:...}}`` references (DESIGN §1).

This module knows the grammar and nothing else: no AWS, no Airflow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

from airflow_sm_refs._exceptions import ReferenceSyntaxError

__all__ = ["SecretReference", "parse_reference", "split_references", "has_reference"]

PREFIX = "workato:sm:"

#: Refuse absurd input before doing any work on it (see README, "Limits").
MAX_TOKEN_LENGTH = 2048
MAX_REFERENCES_PER_VALUE = 1000

# The start of anything that claims to be a reference. Deliberately loose
# (any case, spaces around the colons) so that a near-miss such as
# ``{{Workato:SM:...}}`` is reported as an error instead of being passed on
# as a literal password.
_START = re.compile(r"\{\{\s*workato\s*:\s*sm\b", re.IGNORECASE)
_NAME = re.compile(r"[A-Za-z0-9/_+=.@-]{1,512}")
_STAGE = re.compile(r"[A-Za-z0-9_.+=@/-]{1,256}")
_VERSION_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
_KEY_FORBIDDEN = re.compile(r"[:{}\x00-\x1f\x7f]")
_ACCOUNT = re.compile(r"\d{12}")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")
_PARTITION = re.compile(r"aws(-[a-z]+)*")


@dataclass(frozen=True)
class SecretReference:
    """One parsed reference: which secret, which version, which key."""

    #: the reference exactly as written, braces included
    text: str
    #: top-level JSON key to read; empty means the whole secret
    key: str
    #: a full or partial ARN, or a plain name
    secret_id: str
    version_stage: str | None = None
    version_id: str | None = None

    @property
    def is_arn(self) -> bool:
        """Whether the secret is named by ARN (which fixes its region and account)."""
        return self.secret_id.startswith("arn:")

    @property
    def region(self) -> str | None:
        """The region from the ARN; ``None`` for a plain name (the default region applies)."""
        return self.secret_id.split(":")[3] if self.is_arn else None

    @property
    def version_label(self) -> str:
        """The version in words, for logs and errors."""
        if self.version_id:
            return f"version id {self.version_id}"
        return self.version_stage or "AWSCURRENT"

    def __str__(self) -> str:
        return self.text


def _syntax(text: str, why: str) -> ReferenceSyntaxError:
    shown = text if len(text) <= 200 else text[:200] + "..."
    return ReferenceSyntaxError(f"malformed reference: {why}", reference=shown)


def _parse_secret_id(text: str, rest: str) -> tuple[str, str]:
    """Split ``rest`` into the secret id and what follows it (``:stage...`` or empty)."""
    if rest.startswith("arn:"):
        parts = rest.split(":")
        if len(parts) < 7:
            raise _syntax(text, "an ARN needs 7 fields: arn:<partition>:secretsmanager:<region>:<account>:secret:<name>")
        _, partition, service, region, account, resource, name = parts[:7]
        if not _PARTITION.fullmatch(partition):
            raise _syntax(text, f"unknown partition {partition!r} in the ARN")
        if service != "secretsmanager" or resource != "secret":
            raise _syntax(text, "the ARN is not a Secrets Manager secret ARN")
        if not _REGION.fullmatch(region):
            raise _syntax(text, f"the ARN has no valid region (got {region!r})")
        if not _ACCOUNT.fullmatch(account):
            raise _syntax(text, "the ARN's account must be 12 digits")
        if not _NAME.fullmatch(name):
            raise _syntax(text, "the secret name in the ARN is empty or has characters outside A-Za-z0-9/_+=.@-")
        tail = parts[7:]
        return ":".join(parts[:7]), (":" + ":".join(tail)) if tail else ""
    name, sep, tail = rest.partition(":")
    if not _NAME.fullmatch(name):
        raise _syntax(text, "the secret name is empty or has characters outside A-Za-z0-9/_+=.@-")
    return name, (sep + tail)


def is_secret_id(text: str) -> bool:
    """Whether ``text`` alone names a secret: a plain name, or a Secrets Manager ARN with nothing after it."""
    try:
        secret_id, tail = _parse_secret_id(text, text)
    except ReferenceSyntaxError:
        return False
    return secret_id == text and not tail


def parse_reference(text: str) -> SecretReference:
    """Parse one whole token, braces included.

    :param text: e.g. ``{{workato:sm:password:prod/db}}``
    :raises ReferenceSyntaxError: if it does not follow the grammar
    """
    if len(text) > MAX_TOKEN_LENGTH:
        raise _syntax(text, f"longer than {MAX_TOKEN_LENGTH} characters")
    if not (text.startswith("{{") and text.endswith("}}")):
        raise _syntax(text, "a reference is enclosed in {{ and }}")
    body = text[2:-2].strip(" \t")
    if not body.startswith(PREFIX):
        raise _syntax(text, f"a reference starts with {PREFIX!r} (lower case, no spaces)")
    body = body[len(PREFIX):]
    key, sep, rest = body.partition(":")
    if not sep:
        raise _syntax(text, "expected <key>:<secret-id> after 'workato:sm:' (the key may be empty)")
    if _KEY_FORBIDDEN.search(key) or key != key.strip():
        raise _syntax(text, "the key may not contain ':', braces, control characters or outer spaces")
    if not rest:
        raise _syntax(text, "the secret id is missing")
    secret_id, tail = _parse_secret_id(text, rest)
    stage: str | None = None
    version_id: str | None = None
    if tail:
        fields = tail[1:].split(":")
        if len(fields) > 2:
            raise _syntax(text, "too many fields after the secret id (expected [:<stage>[:<version-id>]])")
        stage = fields[0] or None
        version_id = fields[1] if len(fields) == 2 else None
        if version_id == "":
            raise _syntax(text, "empty version id")
        if stage and version_id:
            raise _syntax(text, "give a version stage or a version id, not both (use ::<version-id> for an id)")
        if stage is None and version_id is None:
            raise _syntax(text, "empty version stage")
        if stage is not None and not _STAGE.fullmatch(stage):
            raise _syntax(text, "the version stage has invalid characters")
        if version_id is not None and not _VERSION_ID.fullmatch(version_id):
            raise _syntax(text, "the version id has invalid characters")
    return SecretReference(text=text, key=key, secret_id=secret_id, version_stage=stage, version_id=version_id)


Segment = Union[str, SecretReference]


def has_reference(value: str) -> bool:
    """Whether ``value`` holds anything that claims to be a reference."""
    return _START.search(value) is not None


def split_references(value: str) -> list[Segment]:
    """Split ``value`` into literal text and references, in order.

    Text that merely contains ``{{`` is literal; text that starts like a
    reference must parse.

    :raises ReferenceSyntaxError: for the first malformed reference
    """
    segments: list[Segment] = []
    pos = 0
    count = 0
    while True:
        match = _START.search(value, pos)
        if match is None:
            break
        # Look for the closing braces only within the longest token allowed,
        # so a huge value costs time in proportion to its length.
        window_end = min(len(value), match.start() + MAX_TOKEN_LENGTH)
        end = value.find("}}", match.end(), window_end)
        if end < 0:
            raise _syntax(value[match.start() : window_end][:200], "no closing '}}'")
        # a reference never spans a newline or another opening brace pair
        if "\n" in value[match.end() : end] or "{{" in value[match.end() : end]:
            raise _syntax(value[match.start() : end + 2][:200], "no closing '}}' before the next line or '{{'")
        count += 1
        if count > MAX_REFERENCES_PER_VALUE:
            raise ReferenceSyntaxError(f"more than {MAX_REFERENCES_PER_VALUE} references in one value")
        if match.start() > pos:
            segments.append(value[pos : match.start()])
        segments.append(parse_reference(value[match.start() : end + 2]))
        pos = end + 2
    if pos < len(value):
        segments.append(value[pos:])
    return segments
