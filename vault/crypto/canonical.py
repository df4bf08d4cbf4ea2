"""Canonical JSON of audit events (RFC 8785, for the values events hold). Django-free.

Events hold strings, integers within ±(2^53 - 1), booleans, null, and lists and objects of these,
with ASCII member names. For such values RFC 8785 (JCS) serializes exactly as ``json.dumps`` with
sorted keys, no whitespace and no ASCII escaping does; anything outside that set (a float, a
non-ASCII member name, a lone surrogate, a huge integer) is refused rather than serialized in a
way another JCS implementation might not reproduce.
"""

from __future__ import annotations

import json
from typing import Any

MAX_SAFE_INTEGER = 2**53 - 1
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class NotCanonicalizable(ValueError):
    """The value holds something the audit log's canonical JSON does not carry."""


def check(value: Any, depth: int = 0) -> None:
    """Raise ``NotCanonicalizable`` unless ``value`` has a canonical form here."""
    if depth > 32:
        raise NotCanonicalizable("nested too deeply")
    if value is None or isinstance(value, bool | str):
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise NotCanonicalizable("a string is not valid Unicode") from None
        return
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise NotCanonicalizable("an integer beyond ±(2^53 - 1)")
        return
    if isinstance(value, list | tuple):
        for item in value:
            check(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or not key.isascii():
                raise NotCanonicalizable("member names must be ASCII strings")
            check(item, depth + 1)
        return
    raise NotCanonicalizable(f"a {type(value).__name__} has no canonical form here")


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 serialization of ``value`` as UTF-8 bytes.

    Raises:
        NotCanonicalizable: ``value`` holds a float, a non-ASCII member name, an unpaired
            surrogate, an integer beyond ±(2^53 - 1), or a type JSON does not have.
    """
    check(value)
    return encode(value)


def encode(value: Any) -> bytes:
    """The RFC 8785 serialization of a value already passed through ``check``.

    For callers that build most of a value from known strings and check only the rest.
    """
    return _ENCODER.encode(value).encode("utf-8")


# --- strict reading --------------------------------------------------------------------------


class StrictJsonError(ValueError):
    """JSON the strict decoder refuses: not JSON, a duplicated member, a float, NaN or
    infinity, or nested too deeply."""


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise StrictJsonError("a member appears twice in one object")
    return result


def _no_float(text: str) -> Any:
    raise StrictJsonError("a floating-point number")


def _no_constant(text: str) -> Any:
    raise StrictJsonError(f"{text} is not JSON")


_STRICT = json.JSONDecoder(
    object_pairs_hook=_object_without_duplicates,
    parse_float=_no_float,
    parse_constant=_no_constant,
)


def strict_decode(text: str, start: int = 0) -> tuple[Any, int]:
    """One JSON value of ``text`` from ``start``, and where it ends (as ``raw_decode``), read
    strictly: what an audit bundle, an evidence pack or any other signed document may hold.

    Raises:
        StrictJsonError: anything the canonical form could not have produced.
    """
    try:
        return _STRICT.raw_decode(text, start)
    except RecursionError:
        raise StrictJsonError("nested too deeply") from None
    except StrictJsonError:
        raise
    except ValueError as exc:  # JSONDecodeError, an integer of too many digits
        raise StrictJsonError(f"not JSON ({exc})") from None
