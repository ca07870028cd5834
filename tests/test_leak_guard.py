"""The leak guard of tests/conftest.py must catch short secret values too.

Airflow's own masker ignores values under 5 characters, so the guard cannot
lean on it: a 3-5 character value counts as leaked where it stands as a whole
token, and is not mistaken for part of a longer word.
"""

from __future__ import annotations

import json

import boto3
import pytest

from standins.aws import AwsStandIn

pytestmark = pytest.mark.compat


def served(aws: AwsStandIn, name: str, document: dict[str, str]) -> None:
    """Store a secret and read it through the counting proxy, as the plugin would."""
    aws.client().create_secret(Name=name, SecretString=json.dumps(document))
    client = boto3.client("secretsmanager", region_name="us-east-1", endpoint_url=aws.endpoint_url)
    client.get_secret_value(SecretId=name)


def test_short_values_are_caught_as_whole_tokens(aws: AwsStandIn) -> None:
    served(aws, "short/one", {"password": "Zq9", "pin": "40417", "long": "long-enough-value"})
    try:
        assert aws.leaked_in("login failed: password=Zq9") == ["Zq9"]
        assert aws.leaked_in("pin 40417 rejected") == ["40417"]
        assert aws.leaked_in("token long-enough-value!") == ["long-enough-value"]
        # inside longer words, file names or paths: not a leak
        assert aws.leaked_in("Zq9x and x40417 and /tmp/Zq9/ and Zq9.json") == []
        # the 6+ character view used elsewhere is unchanged
        assert "long-enough-value" in aws.served_values and "Zq9" not in aws.served_values
    finally:
        aws.reset()  # nothing here was the plugin's: keep the autouse guard out of it


def test_escaped_and_encoded_forms_count_as_leaks(aws: AwsStandIn) -> None:
    """A value logged inside re-serialised JSON or a URI is still a leak."""
    served(aws, "awkward/one", {"password": 'Pä"ss\\wörd/+&=42'})
    try:
        value = 'Pä"ss\\wörd/+&=42'
        # (the whole SecretString, also served, may be found too)
        assert value in aws.leaked_in('extra={"password": ' + json.dumps(value) + "}")
        assert value in aws.leaked_in("extra=" + json.dumps({"password": value}, ensure_ascii=False))
        from urllib.parse import quote

        assert value in aws.leaked_in("postgres://u:" + quote(value, safe="") + "@h/db")
        assert aws.leaked_in("nothing here") == []
    finally:
        aws.reset()
