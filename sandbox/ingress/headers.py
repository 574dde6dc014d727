"""Which headers cross the proxy, and the ones it sets itself."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping

from multidict import CIMultiDict, CIMultiDictProxy

from sandbox.policy.inputs import Identity

HOP_BY_HOP = frozenset(
    name.lower()
    for name in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)
IDENTITY_PREFIX = "x-sandbox-"
SUBJECT_HEADER = "X-Sandbox-Subject"
ISSUER_HEADER = "X-Sandbox-Issuer"
CLAIMS_HEADER = "X-Sandbox-Claims"
RULE_HEADER = "X-Sandbox-Rule"
REQUEST_ID_HEADER = "X-Request-Id"
# Set by the sandbox only: a caller's own values would be believed by the app.
_SPOOFABLE = frozenset(
    (
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-real-ip",
        "x-request-id",
    )
)


def _connection_tokens(headers: Mapping[str, str] | CIMultiDictProxy[str]) -> set[str]:
    values: Iterable[str] = (
        headers.getall("Connection", [])
        if isinstance(headers, CIMultiDictProxy)
        else [headers.get("Connection", "")]
    )
    return {token.strip().lower() for value in values for token in value.split(",")}


def end_to_end(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """``headers`` less the hop-by-hop ones, including those Connection names."""
    dropped = HOP_BY_HOP | _connection_tokens(headers)
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in dropped)


def upstream_request_headers(
    incoming: CIMultiDictProxy[str],
    *,
    peer: str,
    scheme: str,
    request_id: str,
    identity: Identity | None,
    rule: str,
    forward_token: bool,
) -> CIMultiDict[str]:
    headers = end_to_end(incoming)
    original_host = headers.get("Host", "")
    for name in list(headers):
        lowered = name.lower()
        if (
            lowered in _SPOOFABLE
            or lowered.startswith(IDENTITY_PREFIX)
            or lowered == "host"
            or (lowered == "authorization" and not forward_token)
        ):
            del headers[name]
    headers["X-Forwarded-For"] = peer
    headers["X-Forwarded-Proto"] = scheme
    if original_host:
        headers["X-Forwarded-Host"] = original_host
    headers[REQUEST_ID_HEADER] = request_id
    headers[RULE_HEADER] = rule
    if identity is not None:
        headers.update(identity_headers(identity))
    return headers


def identity_headers(identity: Identity) -> dict[str, str]:
    """The verified caller, in headers the app may trust (see README)."""
    claims = json.dumps(dict(identity.claims), separators=(",", ":"), default=str)
    return {
        SUBJECT_HEADER: _header_safe(identity.subject),
        ISSUER_HEADER: _header_safe(identity.issuer),
        CLAIMS_HEADER: base64.urlsafe_b64encode(claims.encode()).decode().rstrip("="),
    }


def _header_safe(value: str) -> str:
    # Subjects are strings of the issuer's choosing; keep them on one line.
    return "".join(char if " " <= char <= "~" else "?" for char in value)
