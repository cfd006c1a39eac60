"""Request decoding that fails with the same text as Go's encoding/json decoder.

Clients and gateways show Ollama's 400 messages verbatim, so the fake reproduces the
decoder's wording: a syntax check that mirrors Go's scanner, then field type checks
against a small per-request schema.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class DecodeError(Exception):
    """The body is not acceptable; `str(err)` is Go's error text."""


class EmptyBody(DecodeError):
    """Nothing but whitespace: Go's decoder returns io.EOF."""

    def __init__(self) -> None:
        super().__init__("EOF")


@dataclass(frozen=True)
class Field:
    """One struct field: the JSON kind it accepts and the Go type named in errors."""

    kind: str  # string | bool | number | array | object | any | duration
    go_type: str
    items: Mapping[str, Field] | None = None  # fields of a nested struct, or of each element


def decode(body: bytes, go_type: str, fields: Mapping[str, Field]) -> dict[str, Any]:
    """Decode the first JSON value of `body` into a dict keyed by canonical field names."""
    scanner = _Scanner(body)
    start, end = scanner.first_value()
    value = json.loads(body[start:end].decode("utf-8", errors="replace"), object_pairs_hook=_Members)
    if value is None:
        return {}  # Go leaves the struct untouched for a top-level null
    if not isinstance(value, dict):
        raise DecodeError(f"json: cannot unmarshal {_kind(value)} into Go value of type {go_type}")
    return _struct(value, go_type.rsplit(".", 1)[-1], fields)


class _Members(dict[str, Any]):
    """A decoded object that also keeps its members in document order, repeated keys included."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.pairs = pairs


def _struct(value: dict[str, Any], path: str, fields: Mapping[str, Field]) -> dict[str, Any]:
    by_fold = {name.lower(): name for name in fields}
    out: dict[str, Any] = {}
    # Every member in order, as Go's decoder assigns them: the last spelling of a field wins.
    for key, item in value.pairs if isinstance(value, _Members) else value.items():
        # Go matches field names case-insensitively when there is no exact match.
        name = key if key in fields else by_fold.get(key.lower(), key)
        spec = fields.get(name)
        if item is None and spec is not None and spec.kind == "string":
            continue  # null leaves a Go string field as it was
        out[name] = item if spec is None else _field(item, f"{path}.{name}", spec)
    return out


def _field(item: Any, path: str, spec: Field) -> Any:
    if item is None or spec.kind == "any":
        return item
    if spec.kind == "duration":
        return _duration(item)
    if _kind(item) != spec.kind:
        raise DecodeError(f"json: cannot unmarshal {_kind(item)} into Go struct field {path} of type {spec.go_type}")
    if spec.items is not None and isinstance(item, list):
        element = spec.go_type.removeprefix("[]")
        for entry in item:
            if entry is not None and not isinstance(entry, dict):
                kind = _kind(entry)
                raise DecodeError(f"json: cannot unmarshal {kind} into Go struct field {path} of type {element}")
        return [None if e is None else _struct(e, path, spec.items) for e in item]
    if spec.items is not None and isinstance(item, dict):
        return _struct(item, path, spec.items)
    return item


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _duration(item: Any) -> float:
    """api.Duration: seconds as a number or a Go duration string; negative means forever."""
    if isinstance(item, bool):
        raise DecodeError("Unsupported type: 'bool'")
    if isinstance(item, int | float):
        return float("inf") if item < 0 else float(item)
    if isinstance(item, str):
        seconds = parse_go_duration(item)
        return float("inf") if seconds < 0 else seconds
    kind = "[]interface {}" if isinstance(item, list) else "map[string]interface {}"
    raise DecodeError(f"Unsupported type: '{kind}'")


_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_NUMBER = re.compile(r"(\d*)(?:\.(\d*))?")
_UNIT = re.compile(r"[^0-9.]*")


def parse_go_duration(text: str) -> float:
    """time.ParseDuration, returning seconds, with its error messages."""
    quoted = json.dumps(text, ensure_ascii=False)
    rest = text
    negative = rest[:1] == "-"
    if rest[:1] in ("-", "+"):
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise DecodeError(f"time: invalid duration {quoted}")
    total = 0.0
    while rest:
        number = _NUMBER.match(rest)
        assert number is not None  # the pattern matches the empty string
        whole, fraction = number.group(1), number.group(2)
        if not whole and not fraction:
            raise DecodeError(f"time: invalid duration {quoted}")
        rest = rest[number.end() :]
        unit_match = _UNIT.match(rest)
        unit = unit_match.group(0) if unit_match else ""
        if not unit:
            raise DecodeError(f"time: missing unit in duration {quoted}")
        if unit not in _UNITS:
            raise DecodeError(f"time: unknown unit {json.dumps(unit, ensure_ascii=False)} in duration {quoted}")
        rest = rest[len(unit) :]
        total += float(f"{whole or 0}.{fraction or 0}") * _UNITS[unit]
    return -total if negative else total


_SPACE = b" \t\r\n"
_ESCAPES = b'"\\/bfnrt'
_HEX = b"0123456789abcdefABCDEF"
_DIGITS = b"0123456789"


class _Scanner:
    """Validates the first JSON value the way Go's scanner does, with its messages."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def first_value(self) -> tuple[int, int]:
        self._space()
        if self.pos >= len(self.data):
            raise EmptyBody()
        start = self.pos
        self._value()
        return start, self.pos

    def _peek(self) -> int | None:
        return self.data[self.pos] if self.pos < len(self.data) else None

    def _need(self) -> int:
        char = self._peek()
        if char is None:
            raise DecodeError("unexpected EOF")
        return char

    def _space(self) -> None:
        while self.pos < len(self.data) and self.data[self.pos] in _SPACE:
            self.pos += 1

    def _fail(self, char: int, context: str) -> DecodeError:
        return DecodeError(f"invalid character {_quote_char(char)} {context}")

    def _value(self) -> None:
        self._space()
        char = self._need()
        if char == ord("{"):
            self._object()
        elif char == ord("["):
            self._array()
        elif char == ord('"'):
            self._string()
        elif char == ord("-") or char in _DIGITS:
            self._number()
        elif char in b"tfn":
            self._literal({ord("t"): b"true", ord("f"): b"false", ord("n"): b"null"}[char])
        else:
            raise self._fail(char, "looking for beginning of value")

    def _object(self) -> None:
        self.pos += 1
        self._space()
        char = self._need()
        if char == ord("}"):
            self.pos += 1
            return
        while True:
            if char != ord('"'):
                raise self._fail(char, "looking for beginning of object key string")
            self._string()
            self._space()
            char = self._need()
            if char != ord(":"):
                raise self._fail(char, "after object key")
            self.pos += 1
            self._value()
            self._space()
            char = self._need()
            if char == ord("}"):
                self.pos += 1
                return
            if char != ord(","):
                raise self._fail(char, "after object key:value pair")
            self.pos += 1
            self._space()
            char = self._need()

    def _array(self) -> None:
        self.pos += 1
        self._space()
        if self._need() == ord("]"):
            self.pos += 1
            return
        while True:
            self._value()
            self._space()
            char = self._need()
            if char == ord("]"):
                self.pos += 1
                return
            if char != ord(","):
                raise self._fail(char, "after array element")
            self.pos += 1

    def _string(self) -> None:
        self.pos += 1
        while True:
            char = self._need()
            self.pos += 1
            if char == ord('"'):
                return
            if char < 0x20:
                raise self._fail(char, "in string literal")
            if char != ord("\\"):
                continue
            escape = self._need()
            self.pos += 1
            if escape == ord("u"):
                for _ in range(4):
                    digit = self._need()
                    if digit not in _HEX:
                        raise self._fail(digit, "in \\u hexadecimal character escape")
                    self.pos += 1
            elif escape not in _ESCAPES:
                raise self._fail(escape, "in string escape code")

    def _number(self) -> None:
        if self._peek() == ord("-"):
            self.pos += 1
            char = self._need()
            if char not in _DIGITS:
                raise self._fail(char, "in numeric literal")
        if self._peek() == ord("0"):
            self.pos += 1
        else:
            self._digits()
        if self._peek() == ord("."):
            self.pos += 1
            char = self._need()
            if char not in _DIGITS:
                raise self._fail(char, "after decimal point in numeric literal")
            self._digits()
        if self._peek() in (ord("e"), ord("E")):
            self.pos += 1
            if self._peek() in (ord("+"), ord("-")):
                self.pos += 1
            char = self._need()
            if char not in _DIGITS:
                raise self._fail(char, "in exponent of numeric literal")
            self._digits()

    def _digits(self) -> None:
        while (char := self._peek()) is not None and char in _DIGITS:
            self.pos += 1

    def _literal(self, word: bytes) -> None:
        for expected in word:
            char = self._need()
            if char != expected:
                raise self._fail(char, f"in literal {word.decode()} (expecting {_quote_char(expected)})")
            self.pos += 1


_GO_CONTROL = {7: "\\a", 8: "\\b", 9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f", 13: "\\r"}


def _quote_char(char: int) -> str:
    """Go's quoteChar: the byte as a rune, quoted with single quotes."""
    if char == ord("'"):
        return "'\\''"
    if char == ord('"'):
        return "'\"'"
    if char in _GO_CONTROL:
        return f"'{_GO_CONTROL[char]}'"
    if char < 0x20 or char == 0x7F:
        return f"'\\x{char:02x}'"
    if 0x80 <= char <= 0xA0 or char == 0xAD:
        return f"'\\u{char:04x}'"
    if char == ord("\\"):
        return "'\\\\'"
    return f"'{chr(char)}'"
