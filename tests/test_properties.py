"""Property-based tests of parsing and expansion (hypothesis), and bounds on absurd input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_sm_refs import reference
from airflow_sm_refs import ReferenceSyntaxError, SecretReference, parse_reference, split_references
from airflow_sm_refs.expand import Expansion
from airflow_sm_refs.resolver import ResolvedSecret

pytestmark = pytest.mark.compat

# --- strategies ----------------------------------------------------------------
names = st.from_regex(r"[A-Za-z0-9/_+=.@-]{1,40}", fullmatch=True)
keys = st.from_regex(r"[A-Za-z0-9_ .-]{0,20}", fullmatch=True).filter(lambda k: k == k.strip())
stages = st.sampled_from([None, "AWSCURRENT", "AWSPREVIOUS", "custom-stage"])
arn_names = st.builds(
    lambda region, account, name: f"arn:aws:secretsmanager:{region}:{account}:secret:{name}",
    st.sampled_from(["us-east-1", "eu-west-2", "ap-southeast-1"]),
    st.from_regex(r"\d{12}", fullmatch=True),
    names,
)


@st.composite
def tokens(draw: Any) -> str:
    key = draw(keys)
    secret_id = draw(st.one_of(names, arn_names))
    tail = ""
    choice = draw(st.integers(0, 2))
    if choice == 1:
        tail = ":" + draw(st.sampled_from(["AWSCURRENT", "AWSPREVIOUS", "custom-stage"]))
    elif choice == 2:
        tail = "::" + draw(st.from_regex(r"[A-Za-z0-9-]{1,36}", fullmatch=True))
    pad = draw(st.sampled_from(["", " ", "\t"]))
    return f"{{{{{pad}workato:sm:{key}:{secret_id}{tail}{pad}}}}}"


#: literal text that cannot itself start a reference
literals = st.text(st.characters(blacklist_characters="{", blacklist_categories=("Cs",)), max_size=30)
#: any secret value at all, including ones that look like references, JSON or control characters
secret_values = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=60),
    tokens(),
    st.just('", "injected": "x'),
    st.just("\\\n\"{{workato:sm::other}}"),
)


class DictResolver:
    """Stands in for the cache tier: resolves each reference from a dict, counting calls."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.calls = 0

    def resolve(self, ref: SecretReference) -> ResolvedSecret:
        self.calls += 1
        return ResolvedSecret(self.values[ref.text], "process cache", 0.0)

    def resolve_cached(self, ref: SecretReference) -> None:
        return None  # every lookup goes through resolve(), which counts it

    def cache_key(self, ref: SecretReference) -> tuple[str, ...]:
        return ("test", "", ref.secret_id, "stage:AWSCURRENT")


def expansion(values: dict[str, str]) -> tuple[Expansion, DictResolver, list[str]]:
    resolver = DictResolver(values)
    masked: list[str] = []
    return Expansion(resolver, conn_id="prop", mask=masked.append), resolver, masked  # type: ignore[arg-type]


# --- the parser ----------------------------------------------------------------
class TestParserProperties:
    @given(st.text(max_size=300))
    def test_any_text_parses_or_raises_our_syntax_error(self, text: str) -> None:
        try:
            parts = split_references(text)
        except ReferenceSyntaxError:
            return
        rebuilt = "".join(p if isinstance(p, str) else p.text for p in parts)
        assert rebuilt == text

    @given(st.text(alphabet="{}:workatosmAWSCURENT-/ \n", max_size=80))
    def test_near_miss_text_parses_or_raises_our_syntax_error(self, text: str) -> None:
        try:
            split_references("x" + text)
        except ReferenceSyntaxError:
            pass

    @given(st.text(max_size=200))
    def test_parse_reference_never_raises_anything_else(self, text: str) -> None:
        try:
            parse_reference(text)
        except ReferenceSyntaxError:
            pass

    @given(tokens())
    def test_generated_tokens_parse_and_keep_their_text(self, token: str) -> None:
        ref = parse_reference(token)
        assert ref.text == token
        assert token.strip("{} \t").startswith("workato:sm:")


# --- expansion -----------------------------------------------------------------
class TestExpansionProperties:
    @given(st.lists(st.one_of(literals, tokens()), max_size=8), st.data())
    @settings(suppress_health_check=[HealthCheck.too_slow])
    def test_output_is_literals_and_resolved_values_only(self, parts: list[str], data: Any) -> None:
        token_texts = [p for p in parts if p.startswith("{{")]
        values = {t: data.draw(secret_values) for t in token_texts}
        text = "".join(parts)
        exp, resolver, masked = expansion(values)
        expected = "".join(values[p] if p.startswith("{{") else p for p in parts)
        assert exp.text(text, "password") == expected
        # each reference resolved once per occurrence; values never scanned again
        assert resolver.calls == len(token_texts)
        assert masked == [values[t] for t in token_texts]

    @given(
        st.recursive(
            st.one_of(st.none(), st.booleans(), st.integers(), literals, tokens()),
            lambda children: st.one_of(
                st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
            ),
            max_leaves=12,
        ),
        st.data(),
    )
    @settings(suppress_health_check=[HealthCheck.too_slow])
    def test_extra_keeps_its_structure_for_any_secret_content(self, document: Any, data: Any) -> None:
        found: list[str] = []

        def walk(node: Any) -> None:
            if isinstance(node, str) and node.startswith("{{"):
                found.append(node)
            elif isinstance(node, list):
                for child in node:
                    walk(child)
            elif isinstance(node, dict):
                for child in node.values():
                    walk(child)

        walk(document)
        values = {t: data.draw(secret_values) for t in found}
        exp, _, _ = expansion(values)
        expanded = json.loads(exp.extra(json.dumps(document)))

        def same_shape(before: Any, after: Any) -> None:
            if isinstance(before, dict):
                assert isinstance(after, dict) and list(after) == list(before)
                for k in before:
                    same_shape(before[k], after[k])
            elif isinstance(before, list):
                assert isinstance(after, list) and len(after) == len(before)
                for b, a in zip(before, after):
                    same_shape(b, a)
            elif isinstance(before, str) and before.startswith("{{"):
                assert after == values[before]
            else:
                assert after == before

        same_shape(document, expanded)


# --- absurd input --------------------------------------------------------------
class CountingPattern:
    """A compiled pattern that counts its searches."""

    def __init__(self, pattern: Any) -> None:
        self.pattern = pattern
        self.searches = 0

    def search(self, *args: Any) -> Any:
        self.searches += 1
        return self.pattern.search(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pattern, name)


class CountingStr(str):
    """A string that records the span of every ``find`` on it."""

    finds: list[tuple[int, int]]

    def find(self, sub: Any, start: Any = None, end: Any = None) -> int:  # type: ignore[override]
        if not hasattr(self, "finds"):
            self.finds = []
        lo = 0 if start is None else start
        hi = len(self) if end is None else end
        self.finds.append((lo, hi))
        return super().find(sub, lo, hi)


class TestBounds:
    # "Refused in time proportional to its length" is asserted as work done,
    # not wall-clock time (which a loaded 2-core CI machine makes meaningless):
    # how often the text is scanned and how much of it each scan may cover.

    def test_megabyte_value_without_references_is_scanned_once(self, monkeypatch: pytest.MonkeyPatch) -> None:
        start = CountingPattern(reference._START)
        monkeypatch.setattr(reference, "_START", start)
        text = "x{" * 500_000
        exp, resolver, _ = expansion({})
        assert exp.text(text, "password") == text
        assert resolver.calls == 0
        # one search per place a scan starts: a handful, never one per character
        assert 1 <= start.searches <= 3

    def test_ten_thousand_references_are_refused_after_the_limit(self, monkeypatch: pytest.MonkeyPatch) -> None:
        parsed = 0
        parse = reference.parse_reference

        def counting_parse(text: str) -> SecretReference:
            nonlocal parsed
            parsed += 1
            return parse(text)

        monkeypatch.setattr(reference, "parse_reference", counting_parse)
        start = CountingPattern(reference._START)
        monkeypatch.setattr(reference, "_START", start)
        text = "{{workato:sm:k:s}}" * 10_000
        exp, resolver, _ = expansion({"{{workato:sm:k:s}}": "v"})
        with pytest.raises(ReferenceSyntaxError, match="more than 1000 references"):
            exp.text(text, "password")
        assert parsed <= reference.MAX_REFERENCES_PER_VALUE  # stopped at the limit, not after all 10 000
        assert start.searches <= 2 * (reference.MAX_REFERENCES_PER_VALUE + 1)
        assert resolver.calls == 0  # refused before anything is resolved

    def test_megabyte_unclosed_reference_looks_no_further_than_the_longest_token(self) -> None:
        text = CountingStr("{{workato:sm:k:" + "a" * 1_000_000)
        with pytest.raises(ReferenceSyntaxError, match="closing"):
            split_references(text)
        assert text.finds, "the closing braces were never looked for"
        assert sum(end - start for start, end in text.finds) <= reference.MAX_TOKEN_LENGTH

    def test_overlong_token_is_refused_with_a_short_message(self) -> None:
        text = "{{workato:sm:k:" + "a" * 5000 + "}}"
        with pytest.raises(ReferenceSyntaxError) as info:
            split_references(text)
        assert len(str(info.value)) < 500
