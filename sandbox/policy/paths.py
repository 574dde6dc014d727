"""Path patterns: exact segments, ``*`` (one segment), ``**`` (any number).

Patterns are matched against paths the ingress adapter has already
normalised, so a pattern must itself be in normal form to ever match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sandbox.errors import RequestPathError
from sandbox.policy.normalize import normalize_target


@dataclass(frozen=True, slots=True)
class PathPattern:
    text: str
    regex: re.Pattern[str]

    def matches(self, path: str) -> bool:
        return self.regex.fullmatch(path) is not None


def compile_path_pattern(text: str) -> PathPattern:
    """Compile ``text``; raises ValueError saying why it is not a pattern."""
    if not text.startswith("/"):
        raise ValueError(f"{text!r} is not a valid path pattern: must start with '/'")
    segments = text[1:].split("/")
    if "" in segments[:-1]:
        raise ValueError(
            f"{text!r} is not a valid path pattern: empty segment ('//'), which "
            "a normalised path never has"
        )
    parts = [_segment_regex(text, segment) for segment in segments]
    return PathPattern(text, re.compile("".join(parts)))


def _segment_regex(text: str, segment: str) -> str:
    if segment == "**":
        return "(?:/[^/]*)*"
    if segment == "*":
        return "/[^/]+"
    problem = _segment_problem(segment)
    if problem:
        raise ValueError(f"{text!r} is not a valid path pattern: {problem}")
    return "/" + re.escape(segment)


def _segment_problem(segment: str) -> str:
    if "**" in segment:
        return "'**' must be a whole segment"
    if "*" in segment:
        return "'*' must be a whole segment"
    if segment in (".", ".."):
        return "dot segments never appear in a normalised path"
    if "?" in segment:
        return "a pattern matches the path only, not the query ('?')"
    try:
        normal = normalize_target("/" + segment).path
    except RequestPathError as exc:
        return f"requests with {exc} are refused before any rule is checked"
    if normal != "/" + segment:
        return (
            f"segment {segment!r} never matches a normalised path; write {normal[1:]!r}"
        )
    return ""
