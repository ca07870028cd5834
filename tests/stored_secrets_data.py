"""What tests/compat_dags/stored_secrets.py reads, seeded into the AWS stand-in.

Shared by tests/test_stored_secrets_dag_test.py (every line) and tests/test_e2e_stored_secrets.py
(a real scheduler on the newest line), which run that DAG with the drop-in ``SecretsManagerBackend``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

BACKEND = "airflow_sm_refs.backend.SecretsManagerBackend"

# The secret the stored connection and Variable refer to. Values are distinct and long enough to
# be searched for in logs.
APP_SECRET = {
    "password": "stored-app-Pw-6c1e0f9a",
    "api_key": "stored-api-key-3b7d52e1",
    "token": "stored-token-9e4a10c7",
}
PLAIN_VARIABLE = "plain-stored-variable-41"
BROKEN_REFERENCE = "{{workato:sm:pasword:stored/app}}"  # a key stored/app does not have

# In the provider's layout (its default prefixes): connections as JSON, Variables as plain strings.
STORED = {
    "stored/app": json.dumps(APP_SECRET),
    "airflow/connections/stored_db": json.dumps(
        {
            "conn_type": "generic",
            "host": "db.stored.invalid",
            "login": "svc_stored",
            "password": "{{workato:sm:password:stored/app}}",
            "extra": {"api_key": "{{workato:sm:api_key:stored/app}}", "timeout": 30},
        }
    ),
    "airflow/variables/stored_token": "Bearer {{workato:sm:token:stored/app}}",
    "airflow/variables/stored_plain": PLAIN_VARIABLE,
    "airflow/connections/stored_broken": json.dumps(
        {"conn_type": "generic", "login": "svc_broken", "password": BROKEN_REFERENCE}
    ),
}
#: what the tasks must never show (the stand-in's served values are checked too)
PLAINTEXTS = tuple(APP_SECRET.values())


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


#: "<conn_id>:<field>" or "var:<key>" -> SHA-256 of what the task must get (STORED_EXPECTED_SHA256)
EXPECTED_SHA256 = {
    "stored_db:host": sha("db.stored.invalid"),
    "stored_db:login": sha("svc_stored"),
    "stored_db:password": sha(APP_SECRET["password"]),
    "stored_db:extra.api_key": sha(APP_SECRET["api_key"]),
    "var:stored_token": sha("Bearer " + APP_SECRET["token"]),
    "var:stored_plain": sha(PLAIN_VARIABLE),
}

#: every secret id the DAG's tasks make the backend ask for (aws_default is stored nowhere)
ASKED = (*STORED, "airflow/connections/aws_default")


def seed(client: Any) -> None:
    """Create the stored secrets in the stand-in (emptied by the caller)."""
    for name, value in STORED.items():
        client.create_secret(Name=name, SecretString=value)
