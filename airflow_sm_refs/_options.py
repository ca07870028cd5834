"""Strict parsing of the backend's and the hook's options.

Airflow hands ``backend_kwargs`` over as parsed JSON, but a per-key override
(``AIRFLOW__SECRETS__BACKEND_KWARG__<KEY>``) arrives as the raw string of an
environment variable. ``bool("false")`` is true, and a string where a list is
expected reads as a list of characters, so every option is parsed here, and
anything that is not clearly what the option takes is refused when the
backend or hook is built, with an error naming the option (never its value
when the option may hold a credential).

Only the standard library is used: the backend is built while Airflow may
still be importing itself.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "SECRET_OPTIONS",
    "parse_bool",
    "parse_dict",
    "parse_int",
    "parse_list",
    "parse_number",
    "parse_str",
    "parse_verify",
]

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})

#: options whose value is a credential: an error names them but never shows what was given
SECRET_OPTIONS = frozenset({"aws_secret_access_key", "aws_session_token", "aws_access_key_id"})
#: options whose value may carry a credential (a proxy URL with a password, a role's session policy)
_VALUE_NOT_SHOWN = SECRET_OPTIONS | {"endpoint_url", "role_arn", "assume_role_kwargs", "config_kwargs", "profile_name"}


def _shown(option: str, value: Any) -> str:
    if option in _VALUE_NOT_SHOWN:
        return f"<a {type(value).__name__}>"
    return repr(value)[:100]


def parse_bool(value: Any, option: str) -> bool:
    """A boolean: a real one, or ``true/false/1/0/yes/no`` in any case (also the integers 1 and 0).

    :raises ValueError: anything else, naming ``option``
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise ValueError(f"option {option!r} must be a boolean (true/false/1/0/yes/no), got {_shown(option, value)}")


def parse_number(value: Any, option: str, *, minimum: float | None = 0.0) -> float:
    """A finite number: a real one or a numeric string; booleans are refused.

    :raises ValueError: anything else, or a number below ``minimum``, naming ``option``
    """
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise ValueError(f"option {option!r} must be a number, got {_shown(option, value)}")
    if minimum is not None and number < minimum:
        bound = "negative" if minimum == 0 else f"less than {minimum:g}"
        raise ValueError(f"option {option!r} must not be {bound}, got {number:g}")
    return number


def parse_int(value: Any, option: str, *, minimum: int = 1) -> int:
    """A whole number: a real one or its digits as a string; booleans are refused.

    :raises ValueError: anything else, or a number below ``minimum``, naming ``option``
    """
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        number = int(value.strip())
    if number is None:
        raise ValueError(f"option {option!r} must be a whole number, got {_shown(option, value)}")
    if number < minimum:
        raise ValueError(f"option {option!r} must be at least {minimum}, got {number}")
    return number


def parse_list(value: Any, option: str) -> tuple[str, ...] | None:
    """A list of non-empty strings: a real list, a JSON array, or a comma-separated string.

    ``None`` stays ``None`` (the option is unset); an empty string or ``[]`` is
    an empty list.

    :raises ValueError: anything else, naming ``option``
    """
    if value is None:
        return None
    items: Iterable[Any]
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            raise ValueError(f"option {option!r} must be a list, not a JSON object")
        if text.startswith("["):
            try:
                items = json.loads(text)
            except ValueError:
                raise ValueError(f"option {option!r} is not a valid JSON array: {_shown(option, value)}") from None
            if not isinstance(items, list):
                raise ValueError(f"option {option!r} must be a list, got {_shown(option, value)}")
        else:
            items = [part.strip() for part in text.split(",")] if text else []
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        raise ValueError(
            f"option {option!r} must be a list (JSON array or comma-separated string), got {type(value).__name__}"
        )
    result = tuple(items)
    for item in result:
        if not isinstance(item, str) or not item:
            raise ValueError(f"option {option!r} must be a list of non-empty strings, got {item!r}")
    return result


def parse_dict(value: Any, option: str) -> dict[str, Any] | None:
    """A mapping: a real one or a JSON object; ``None`` stays ``None``.

    :raises ValueError: anything else, naming ``option``
    """
    if value is None:
        return None
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            raise ValueError(f"option {option!r} is not a valid JSON object") from None
        if isinstance(parsed, dict):
            return parsed
    raise ValueError(f"option {option!r} must be a JSON object (a dict), got {type(value).__name__}")


def parse_str(value: Any, option: str) -> str | None:
    """A non-empty string, or ``None``.

    :raises ValueError: anything else, naming ``option``
    """
    if value is None:
        return None
    if isinstance(value, str) and value.strip():
        return value
    raise ValueError(f"option {option!r} must be a non-empty string, got {_shown(option, value)}")


def parse_verify(value: Any, option: str = "verify") -> bool | str | None:
    """TLS verification: a boolean (also as a string, as :func:`parse_bool`) or a CA bundle path."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return parse_bool(value, option)
    return parse_str(value, option)


def unknown_option(name: str, known: Sequence[str]) -> str:
    """One line refusing the option ``name``, with the nearest known name if there is one."""
    nearest = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if not nearest:
        nearest = [k for k in known if k.startswith(name) or name.startswith(k)][:1]
    hint = f" (did you mean {nearest[0]!r}?)" if nearest else ""
    return f"unknown option {name!r}{hint}"
