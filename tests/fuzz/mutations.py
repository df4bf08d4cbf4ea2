"""Mutation strategies shared by the fuzz tests: byte-level, field-level and JSON-level edits of
valid inputs, and the check that only documented exceptions come out.

Three layers, from blind to structure-aware:

- :func:`byte_mutation`: flip, set, truncate, delete, insert, duplicate, overwrite, append or
  splice bytes anywhere, with positions biased towards the input's field boundaries ("hot"
  offsets) so that length and count fields are hit often.
- :func:`field_mutation`: the input as a list of :class:`Field` (an envelope's header fields and
  body segments, a ZIP's record fields): drop, duplicate, swap or move a field, truncate or extend
  it, fill it with random bytes, or set an integer field to a boundary value (0, 1, max, the
  original ±1, ...). This is how lengths, counts, offsets and sizes get changed.
- :func:`json_mutation`: a parsed JSON document: delete, add or duplicate members, replace any
  value by one of another type or a boundary value, edit strings (characters, base64 payloads
  bit by bit, hex digests, the lines of signed notes, JSON nested in base64), reorder, duplicate
  or remove list elements, nest deeply; then serialize in one of several styles.

:func:`mutated` stacks one to three of these. Every mutation is recorded with ``hypothesis.event``
(shown by ``--hypothesis-show-statistics``) and described with ``note`` for failing examples.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from hypothesis import event, settings
from hypothesis import strategies as st

TORTURE = os.environ.get("VAULT_TORTURE", "") == "1"


def sized(ci: int, torture: int) -> settings:
    """The settings of one fuzz test: ``ci`` examples by default, ``torture`` when
    ``VAULT_TORTURE=1`` (profiles from ``tests/fuzz/conftest.py``)."""
    profile = settings.get_profile("vault-fuzz-torture" if TORTURE else "vault-fuzz-ci")
    return settings(profile, max_examples=torture if TORTURE else ci)


def only_documented(
    call: Callable[[], object], allowed: Sequence[type[BaseException]]
) -> tuple[object, BaseException | None]:
    """Run ``call``; return ``(result, None)`` or ``(None, error)`` when it raised exactly one of
    the ``allowed`` classes (the class itself, not a subclass that is not listed). Any other
    exception (``IndexError``, ``KeyError``, ``UnicodeDecodeError``, ``zipfile.BadZipFile``,
    ``json.JSONDecodeError``, ``RecursionError``, ``MemoryError``, ``struct.error``, an
    undocumented ``ValueError``) propagates and fails the test."""
    error: BaseException | None = None
    try:
        return call(), None
    except BaseException as exc:
        if type(exc) not in allowed:
            raise
        error = exc
    code = getattr(error, "code", None)
    assert isinstance(code, str), f"{type(error).__name__} has no stable code"
    assert code, f"{type(error).__name__} has an empty code"
    event(f"raised {type(error).__name__}")
    return None, error


# --------------------------------------------------------------------------------------------
# Bytes


_BOUNDARY_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF, 0x0A, 0x22, 0x5C, 0x7B)


@st.composite
def _position(draw: st.DrawFn, size: int, hot: Sequence[int]) -> int:
    """An offset in ``[0, size]``, often one of the ``hot`` offsets (field starts)."""
    usable = [h for h in hot if 0 <= h <= size]
    if len(usable) > 0 and draw(st.booleans()):
        spot = draw(st.sampled_from(usable))
        return min(size, max(0, spot + draw(st.sampled_from((0, 0, 0, 1, -1, 2)))))
    return draw(st.integers(0, size))


@st.composite
def byte_mutation(
    draw: st.DrawFn,
    data: bytes,
    *,
    hot: Sequence[int] = (),
    donors: Sequence[bytes] = (),
) -> tuple[bytes, str]:
    """One blind edit of ``data``; returns the result and a description."""
    size = len(data)
    ops = ["insert", "append"]
    if size:
        ops += ["flip", "flip", "set", "truncate", "delete", "duplicate", "overwrite"]
    if donors:
        ops.append("splice")
    op = draw(st.sampled_from(ops))
    event(f"bytes:{op}")
    if op == "flip":
        at = min(draw(_position(size, hot)), size - 1)
        mask = draw(st.integers(1, 255))
        out = bytearray(data)
        out[at] ^= mask
        return bytes(out), f"flip byte {at} with {mask:#04x}"
    if op == "set":
        at = min(draw(_position(size, hot)), size - 1)
        value = draw(st.sampled_from(_BOUNDARY_BYTES) | st.integers(0, 255))
        return data[:at] + bytes([value]) + data[at + 1 :], f"set byte {at} to {value:#04x}"
    if op == "truncate":
        at = draw(_position(size, hot))
        return data[:at], f"truncate to {at} bytes"
    if op == "delete":
        at = draw(_position(size, hot))
        length = draw(st.integers(1, 64))
        return data[:at] + data[at + length :], f"delete {length} bytes at {at}"
    if op == "insert":
        at = draw(_position(size, hot))
        blob = draw(_blob())
        return data[:at] + blob + data[at:], f"insert {len(blob)} bytes at {at}"
    if op == "append":
        blob = draw(_blob())
        return data + blob, f"append {len(blob)} bytes"
    if op == "duplicate":
        start = draw(_position(size, hot))
        length = draw(st.integers(1, 128))
        at = draw(_position(size, hot))
        chunk = data[start : start + length]
        return data[:at] + chunk + data[at:], f"copy {start}+{len(chunk)} to {at}"
    if op == "overwrite":
        at = draw(_position(size, hot))
        blob = draw(_blob())
        return data[:at] + blob + data[at + len(blob) :], f"overwrite {len(blob)} bytes at {at}"
    donor = draw(st.sampled_from(list(donors)))
    cut = draw(_position(size, hot))
    other = draw(st.integers(0, len(donor)))
    return data[:cut] + donor[other:], f"splice {cut} bytes with a donor from {other}"


def _blob() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(min_size=1, max_size=64),
        st.builds(
            lambda b, n: bytes([b]) * n, st.sampled_from(_BOUNDARY_BYTES), st.integers(1, 64)
        ),
    )


# --------------------------------------------------------------------------------------------
# Fields


@dataclass(frozen=True)
class Field:
    """One field of a binary input. ``width`` > 0: an unsigned integer of that many bytes, in
    ``order`` ("big" or "little"); 0: opaque bytes."""

    name: str
    data: bytes
    width: int = 0
    order: Literal["big", "little"] = "big"

    def value(self) -> int:
        return int.from_bytes(self.data, self.order)


def join(fields: Sequence[Field]) -> bytes:
    return b"".join(f.data for f in fields)


def offsets(fields: Sequence[Field]) -> list[int]:
    """The offset where each field starts, and the end."""
    out, at = [], 0
    for f in fields:
        out.append(at)
        at += len(f.data)
    return [*out, at]


@st.composite
def field_mutation(draw: st.DrawFn, fields: Sequence[Field]) -> tuple[bytes, str]:
    """One structure-aware edit of the fields; returns the joined result and a description."""
    items = list(fields)
    index = draw(st.integers(0, len(items) - 1))
    target = items[index]
    ops = ["drop", "dup", "swap", "move", "truncate", "extend", "random", "flip"]
    if target.width:
        ops += ["int"] * 6
    op = draw(st.sampled_from(ops))
    event(f"field:{op}")
    what = f"{op} field {index} ({target.name})"
    if op == "int":
        top = (1 << (8 * target.width)) - 1
        old = target.value()
        value = draw(
            st.sampled_from(
                [0, 1, 2, old - 1, old + 1, old + 2, old * 2, old // 2, top, top - 1, top // 2]
            )
            | st.integers(0, top)
        )
        value = min(top, max(0, value))
        items[index] = Field(
            target.name,
            value.to_bytes(target.width, target.order),
            target.width,
            target.order,
        )
        return join(items), f"set {target.name} from {old} to {value}"
    if op == "drop":
        del items[index]
    elif op == "dup":
        items.insert(index, target)
    elif op in ("swap", "move"):
        other = draw(st.integers(0, len(items) - 1))
        if op == "swap":
            items[index], items[other] = items[other], items[index]
        else:
            items.insert(other, items.pop(index))
        what += f" with/to {other}"
    elif op == "truncate":
        keep = draw(st.integers(0, max(0, len(target.data) - 1)))
        items[index] = Field(target.name, target.data[:keep])
    elif op == "extend":
        items[index] = Field(target.name, target.data + draw(_blob()))
    elif op == "random":
        same = draw(st.booleans())
        length = len(target.data) if same else draw(st.integers(0, 2 * len(target.data) + 4))
        items[index] = Field(target.name, draw(st.binary(min_size=length, max_size=length)))
    elif target.data:  # flip
        at = draw(st.integers(0, len(target.data) - 1))
        out = bytearray(target.data)
        out[at] ^= draw(st.integers(1, 255))
        items[index] = Field(target.name, bytes(out))
    return join(items), what


@st.composite
def mutated(
    draw: st.DrawFn,
    fields: Sequence[Field],
    *,
    donors: Sequence[bytes] = (),
    max_stack: int = 3,
) -> tuple[bytes, list[str]]:
    """One to ``max_stack`` stacked edits: the first structure-aware (usually), the rest blind."""
    hot = offsets(fields)
    if draw(st.integers(0, 9)) < 7:
        data, what = draw(field_mutation(fields))
    else:
        data, what = draw(byte_mutation(join(fields), hot=hot, donors=donors))
    steps = [what]
    for _ in range(draw(st.integers(0, max_stack - 1))):
        data, what = draw(byte_mutation(data, hot=hot, donors=donors))
        steps.append(what)
    return data, steps


# --------------------------------------------------------------------------------------------
# JSON

Path = tuple[str | int, ...]


class Pairs(list[tuple[str, Any]]):
    """A JSON object written member by member, so that a member can appear twice."""


def _children(value: Any) -> Iterator[tuple[str | int, Any]]:
    if isinstance(value, dict):
        yield from value.items()
    elif isinstance(value, Pairs):
        yield from value
    elif isinstance(value, list):
        yield from enumerate(value)


def paths(value: Any, prefix: Path = ()) -> list[Path]:
    """Every node of a JSON value, the root (``()``) first."""
    found = [prefix]
    for key, child in _children(value):
        found += paths(child, (*prefix, key))
    return found


def get(value: Any, path: Path) -> Any:
    for key in path:
        value = value[key]
    return value


def replace(value: Any, path: Path, new: Any) -> Any:
    """``value`` with the node at ``path`` replaced (a copy along the path)."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        copy: Any = dict(value)
    else:
        copy = list(value)
    copy[head] = replace(value[head], rest, new)
    return copy


def remove(value: Any, path: Path) -> Any:
    parent = get(value, path[:-1])
    if isinstance(parent, dict):
        new: Any = {k: v for k, v in parent.items() if k != path[-1]}
    else:
        new = [v for i, v in enumerate(parent) if i != path[-1]]
    return replace(value, path[:-1], new)


def _deep(depth: int) -> Any:
    """A text of ``depth`` nested lists, as a raw JSON fragment."""
    return Raw("[" * depth + "]" * depth)


@dataclass(frozen=True)
class Raw:
    """A JSON fragment written as is (deep nesting, NaN, a float, invalid escapes)."""

    text: str


def _weird_values() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(
            [
                None,
                True,
                False,
                0,
                -1,
                1,
                2**53,
                2**64 - 1,
                2**64,
                -(2**63),
                10**400,
                "",
                " ",
                "x",
                "\u00e9",
                "\x00",
                "\n",
                "\ud800",
                "=",
                "AAAA",
                "A" * 44,
                "0" * 64,
                [],
                {},
                [None],
                {"": None},
                Raw("1.5"),
                Raw("1e3"),
                Raw("NaN"),
                Raw("-Infinity"),
                Raw('"\\u12"'),
                Raw('"\\x41"'),
            ]
        ),
        st.builds(_deep, st.sampled_from([2, 40, 1000, 100_000])),
        st.text(max_size=20),
        st.integers(),
    )


def _mutate_string(draw: st.DrawFn, text: str, nested: Callable[[Any], Any] | None) -> str:
    """An edit of a string: blind character edits, or edits of what it encodes."""
    kinds = ["char", "char", "truncate", "append"]
    decoded: bytes | None = None
    if text and len(text) % 4 == 0:
        try:
            decoded = binascii.a2b_base64(text, strict_mode=True)
        except (binascii.Error, ValueError):
            decoded = None
    if decoded is not None:
        kinds += ["b64bit", "b64bit", "b64pad", "b64len"]
        if nested is not None and decoded[:1] == b"{":
            kinds += ["b64json"] * 3
    if re.fullmatch(r"[0-9a-f]{64}", text):
        kinds += ["hexbit", "hexbit", "hexcase"]
    if "\n" in text:
        kinds += ["line"] * 4
    kind = draw(st.sampled_from(kinds))
    event(f"json:string:{kind}")
    if kind == "char" and text:
        at = draw(st.integers(0, len(text) - 1))
        ch = draw(
            st.sampled_from(["", "\x00", "\u2014", "\ud800", "é", " ", "\n", "/"]) | st.characters()
        )
        return text[:at] + ch + text[at + 1 :]
    if kind == "truncate":
        return text[: draw(st.integers(0, max(0, len(text) - 1)))]
    if kind == "append" or not text:
        return text + draw(
            st.sampled_from(["=", "\n", " ", "A", "==", "\u00e9"]) | st.text(max_size=4)
        )
    if kind in ("b64bit", "b64pad", "b64len", "b64json"):
        assert decoded is not None
        if kind == "b64bit" and decoded:
            at = draw(st.integers(0, len(decoded) - 1))
            out = bytearray(decoded)
            out[at] ^= 1 << draw(st.integers(0, 7))
            return base64.b64encode(bytes(out)).decode()
        if kind == "b64pad":
            return draw(st.sampled_from([text.rstrip("="), text + "=", text + "\n", " " + text]))
        if kind == "b64len":
            change = draw(st.sampled_from([decoded[:-1], decoded + b"\x00", decoded[1:], b""]))
            return base64.b64encode(change).decode()
        if kind == "b64json" and nested is not None:
            try:
                inner = json.loads(decoded)
            except ValueError:
                return text
            return base64.b64encode(nested(inner)).decode()
        return text
    if kind == "hexbit":
        at = draw(st.integers(0, 63))
        digit = format(int(text[at], 16) ^ draw(st.integers(1, 15)), "x")
        return text[:at] + digit + text[at + 1 :]
    if kind == "hexcase":
        return text.upper()
    # kind == "line": the lines of a signed note
    lines = text.split("\n")
    op = draw(st.sampled_from(["drop", "dup", "swap", "edit", "blank", "int"]))
    event(f"json:note:{op}")
    at = draw(st.integers(0, len(lines) - 1))
    if op == "drop":
        del lines[at]
    elif op == "dup":
        lines.insert(at, lines[at])
    elif op == "swap":
        other = draw(st.integers(0, len(lines) - 1))
        lines[at], lines[other] = lines[other], lines[at]
    elif op == "blank":
        lines.insert(at, "")
    elif op == "int":
        numbers = [i for i, line in enumerate(lines) if line.isdigit()]
        if numbers:
            at = draw(st.sampled_from(numbers))
            delta = draw(st.sampled_from([-1, 1, 2**64, -int(lines[at])]))
            lines[at] = str(max(0, int(lines[at]) + delta))
            if draw(st.booleans()):
                lines[at] = "0" + lines[at]
    else:
        lines[at] = _mutate_string(draw, lines[at], None) if lines[at] else "x"
    return "\n".join(lines)


@st.composite
def json_edit(draw: st.DrawFn, document: Any, *, nested_style: str = "canonical") -> Any:
    """One edit of a parsed JSON document (which is not changed); returns the edited value,
    possibly holding :class:`Pairs` and :class:`Raw` nodes that only :func:`dumps` writes."""
    all_paths = paths(document)
    path = draw(st.sampled_from(all_paths))
    node = get(document, path)
    ops = ["replace", "replace"]
    if path:
        ops += ["delete"]
    if isinstance(node, dict):
        ops += ["add", "duplicate", "duplicate"]
    if isinstance(node, list) and node:
        ops += ["list"] * 3
    if isinstance(node, str):
        ops += ["string"] * 6
    if type(node) is int:
        ops += ["int"] * 3
    op = draw(st.sampled_from(ops))
    event(f"json:{op}")
    if op == "delete":
        return remove(document, path)
    if op == "add":
        name = draw(st.sampled_from(["extra", "", "v", "\u00e9", "leaves"]) | st.text(max_size=8))
        if name in node:
            name += "_"
        return replace(document, path, {**node, name: draw(_weird_values())})
    if op == "duplicate":
        if not node:
            return replace(document, path, Pairs([("x", 1), ("x", 1)]))
        items = list(node.items())
        at = draw(st.integers(0, len(items) - 1))
        value = items[at][1] if draw(st.booleans()) else draw(_weird_values())
        items.insert(draw(st.integers(0, len(items))), (items[at][0], value))
        return replace(document, path, Pairs(items))
    if op == "list":
        items = list(node)
        kind = draw(st.sampled_from(["swap", "dup", "drop", "reverse", "insert"]))
        event(f"json:list:{kind}")
        at = draw(st.integers(0, len(items) - 1))
        if kind == "swap":
            other = draw(st.integers(0, len(items) - 1))
            items[at], items[other] = items[other], items[at]
        elif kind == "dup":
            items.insert(draw(st.integers(0, len(items))), items[at])
        elif kind == "drop":
            del items[at]
        elif kind == "reverse":
            items.reverse()
        else:
            items.insert(at, draw(_weird_values()))
        return replace(document, path, items)
    if op == "int":
        delta = draw(st.sampled_from([-1, 1, 2, -(node), 2**64, 2**53]))
        if draw(st.integers(0, 4)) == 0:
            return replace(document, path, Raw(f"{node}.0"))
        if draw(st.integers(0, 4)) == 0:
            return replace(document, path, str(node))
        return replace(document, path, node + delta)
    if op == "string":

        def nested(inner: Any) -> bytes:
            return dumps(draw(json_edit(inner)), style=nested_style)

        return replace(document, path, _mutate_string(draw, node, nested))
    return replace(document, path, draw(_weird_values()))


def _plain(value: Any) -> bool:
    """No :class:`Pairs` or :class:`Raw` node anywhere (so it can be edited again)."""
    if isinstance(value, Pairs | Raw):
        return False
    return all(_plain(child) for _, child in _children(value))


def _encode(value: Any, *, sort: bool, ascii_only: bool, space: bool) -> str:
    comma, colon = (", ", ": ") if space else (",", ":")
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Pairs | dict):
        items = list(value) if isinstance(value, Pairs) else list(value.items())
        if sort and isinstance(value, dict):
            items.sort(key=lambda kv: kv[0])
        inner = comma.join(
            json.dumps(k, ensure_ascii=ascii_only)
            + colon
            + _encode(v, sort=sort, ascii_only=ascii_only, space=space)
            for k, v in items
        )
        return "{" + inner + "}"
    if isinstance(value, list):
        return (
            "["
            + comma.join(_encode(v, sort=sort, ascii_only=ascii_only, space=space) for v in value)
            + "]"
        )
    return json.dumps(value, ensure_ascii=ascii_only)


def dumps(value: Any, *, style: str) -> bytes:
    """Serialize in a style: ``canonical`` (sorted, compact, UTF-8: RFC 8785 for these values),
    ``compact`` (member order kept, ASCII), ``spaced``."""
    if style == "canonical":
        text = _encode(value, sort=True, ascii_only=False, space=False)
    elif style == "compact":
        text = _encode(value, sort=False, ascii_only=True, space=False)
    else:
        text = _encode(value, sort=False, ascii_only=False, space=True)
    return text.encode("utf-8", "surrogatepass")


@st.composite
def json_mutated(
    draw: st.DrawFn, document: Any, *, styles: Sequence[str], max_stack: int = 2
) -> tuple[bytes, list[str]]:
    """One to ``max_stack`` JSON edits of ``document``, serialized in one of ``styles``."""
    value = document
    steps = []
    for _ in range(draw(st.integers(1, max_stack))):
        if not _plain(value):
            break
        value = draw(json_edit(value, nested_style=styles[0]))
        steps.append("json edit")
    style = draw(st.sampled_from(list(styles)))
    return dumps(value, style=style), [*steps, f"style {style}"]
