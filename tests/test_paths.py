"""Path normalisation and path patterns: pure functions, known answers."""

from __future__ import annotations

import re

import pytest

from sandbox.errors import RequestPathError
from sandbox.policy.normalize import normalize_target
from sandbox.policy.paths import compile_path_pattern


@pytest.mark.parametrize(
    ("raw", "path", "query"),
    [
        ("/", "/", ""),
        ("/v1/../admin", "/admin", ""),
        ("/v1/%2e%2e/admin", "/admin", ""),
        ("/v1/%2E%2e/admin", "/admin", ""),
        ("//admin", "/admin", ""),
        ("/a//b///c", "/a/b/c", ""),
        ("/admin/", "/admin/", ""),
        ("/a/./b/.", "/a/b/", ""),
        ("/a/b/..", "/a/", ""),
        ("/%7Euser/%41", "/~user/A", ""),
        ("/a%20b/%c3%a9", "/a%20b/%C3%A9", ""),
        ("/x?y=1&z=%2f", "/x", "y=1&z=%2f"),
        ("/x?", "/x", ""),
    ],
)
def test_normal_form(raw: str, path: str, query: str) -> None:
    target = normalize_target(raw)

    assert (target.path, target.query) == (path, query)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("/v1/%2fadmin", "encoded slash"),
        ("/v1/%5cadmin", "encoded backslash"),
        ("/v1\\admin", "forbidden character '\\\\'"),
        ("/a%00", "encoded control byte"),
        ("/a%0d%0a", "encoded control byte"),
        ("/a%zz", "invalid percent-encoding"),
        ("/a%2", "invalid percent-encoding"),
        ("/a%", "invalid percent-encoding"),
        ("/a;b", "forbidden character ';'"),
        ("/..", "climbs above the root"),
        ("/a/../../b", "climbs above the root"),
        ("/caf\u00e9", "forbidden character"),
        ("admin", "must start with '/'"),
        ("*", "must start with '/'"),
        ("/x?a b", "query holds a forbidden character"),
    ],
)
def test_ambiguous_targets_are_refused(raw: str, reason: str) -> None:
    with pytest.raises(RequestPathError, match=re.escape(reason)):
        normalize_target(raw)


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/healthz", "/healthz", True),
        ("/healthz", "/healthz/", False),
        ("/healthz", "/HEALTHZ", False),
        ("/v1/models/*/predict", "/v1/models/m1/predict", True),
        ("/v1/models/*/predict", "/v1/models/a/b/predict", False),
        ("/v1/*", "/v1/", False),
        ("/admin/**", "/admin", True),
        ("/admin/**", "/admin/", True),
        ("/admin/**", "/admin/a/b/c", True),
        ("/admin/**", "/administrator", False),
        ("/**", "/", True),
        ("/**", "/anything/at/all", True),
        ("/a/**/z", "/a/z", True),
        ("/a/**/z", "/a/b/c/z", True),
        ("/a/**/z", "/a/b/c/y", False),
        ("/a%20b", "/a%20b", True),
    ],
)
def test_pattern_matching(pattern: str, path: str, matches: bool) -> None:
    assert compile_path_pattern(pattern).matches(path) is matches


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("/v1/**x", "'**' must be a whole segment"),
        ("/v1/x*", "'*' must be a whole segment"),
        ("v1", "must start with '/'"),
        ("/a/../b", "dot segments never appear"),
        ("/a//b", "empty segment"),
        ("/a/%7e", "write '~'"),
        ("/a/%2f", "encoded slash"),
        ("/a;b", "forbidden character"),
        ("/a?b=1", "not the query"),
    ],
)
def test_patterns_that_could_never_match_are_refused(pattern: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        compile_path_pattern(pattern)
