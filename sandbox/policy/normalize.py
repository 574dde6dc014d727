"""Normalise a request target once, so that the policy decides on the form
the app receives.

Percent-encoded unreserved characters are decoded, other escapes have their
hex upper-cased, duplicate slashes and dot segments are removed. Anything
that an app or a framework could read differently from us is refused:
encoded slashes and backslashes, backslashes, NUL and control bytes,
invalid escapes, path parameters (``;``) and dot segments that climb above
the root.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from sandbox.errors import RequestPathError

_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_ESCAPE = re.compile(r"%(.{0,2})", re.DOTALL)
_HEX = frozenset(string.hexdigits)
# RFC 3986 pchar minus ';' (see module docstring) plus '/' and '%'.
_ALLOWED_RAW = frozenset(string.ascii_letters + string.digits + "-._~!$&'()*+,=:@/%")
_AMBIGUOUS_ESCAPES = {
    "2F": "an encoded slash (%2F)",
    "5C": "an encoded backslash (%5C)",
}


@dataclass(frozen=True, slots=True)
class RequestTarget:
    path: str
    query: str  # without '?'; '' when absent

    @property
    def target(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path


def normalize_target(raw: str) -> RequestTarget:
    """Split ``raw`` (origin-form) into a normalised path and its query."""
    path, _, query = raw.partition("?")
    _check_raw_characters(path)
    _check_query(query)
    decoded = _ESCAPE.sub(_decode_escape, path)
    return RequestTarget(_remove_dot_segments(decoded), query)


def _check_raw_characters(path: str) -> None:
    if not path.startswith("/"):
        raise RequestPathError(f"path must start with '/', got {path[:64]!r}")
    for char in path:
        if char not in _ALLOWED_RAW:
            raise RequestPathError(f"path holds a forbidden character {char!r}")


def _check_query(query: str) -> None:
    for char in query:
        if ord(char) < 0x21 or ord(char) > 0x7E:
            raise RequestPathError(f"query holds a forbidden character {char!r}")


def _decode_escape(match: re.Match[str]) -> str:
    hex_digits = match.group(1)
    if len(hex_digits) != 2 or not all(char in _HEX for char in hex_digits):
        raise RequestPathError(f"invalid percent-encoding {match.group(0)!r} in path")
    upper = hex_digits.upper()
    if upper in _AMBIGUOUS_ESCAPES:
        raise RequestPathError(f"path holds {_AMBIGUOUS_ESCAPES[upper]}")
    char = chr(int(upper, 16))
    if char in _UNRESERVED:
        return char
    if int(upper, 16) < 0x20 or upper == "7F":
        raise RequestPathError(f"path holds an encoded control byte (%{upper})")
    return f"%{upper}"


def _remove_dot_segments(path: str) -> str:
    segments = path.split("/")[1:]
    output: list[str] = []
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "..":
            if not output:
                raise RequestPathError("path climbs above the root with '..'")
            output.pop()
            if last:
                output.append("")
        elif segment == ".":
            if last:
                output.append("")
        elif segment or last:
            output.append(segment)
    return "/" + "/".join(output)
