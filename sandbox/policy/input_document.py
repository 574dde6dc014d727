"""The input document v1: what every decision engine is asked about.

One JSON document for both directions and both engines, described by
``docs/input-document.schema.json``. Ingress::

    {"version": 1, "direction": "ingress",
     "request": {"method", "path", "segments", "query", "headers",
                 "body_length"},
     "identity": null | {"issuer", "subject", "claims"},
     "source": {"address"}}

Egress::

    {"version": 1, "direction": "egress",
     "destination": {"scheme", "host", "port", "addresses", "declared"},
     "request": null | {"method", "path", "segments", "query", "headers"}}

``path`` is the normalised path; ``segments`` splits it after the leading
slash, so ``/`` is ``[""]`` and a trailing slash adds an empty last segment.
Header names are lower case, repeated fields are joined with ``", "``, and
credentials (Authorization, Proxy-Authorization) never appear.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sandbox.policy.inputs import Identity, IngressRequest

INPUT_VERSION = 1
INGRESS = "ingress"
EGRESS = "egress"
DIRECTIONS = (INGRESS, EGRESS)
# A policy decides on what a request asks for, never on the caller's secrets.
_WITHHELD_HEADERS = frozenset({"authorization", "proxy-authorization"})


def path_segments(path: str) -> list[str]:
    """The segments of a normalised path, as path patterns read them."""
    return path[1:].split("/")


def header_fields(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Lower-case names; repeated fields joined with ", "; no credentials."""
    fields: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        if key in _WITHHELD_HEADERS:
            continue
        fields[key] = f"{fields[key]}, {value}" if key in fields else value
    return fields


def ingress_document(request: IngressRequest) -> dict[str, Any]:
    return {
        "version": INPUT_VERSION,
        "direction": INGRESS,
        "request": {
            "method": request.method,
            "path": request.path,
            "segments": path_segments(request.path),
            "query": request.query,
            "headers": header_fields(request.headers.items()),
            "body_length": request.body_length,
        },
        "identity": _identity(request.identity),
        "source": {"address": request.source},
    }


def egress_document(
    *,
    host: str,
    port: int,
    addresses: Sequence[object],
    scheme: str | None = None,
    method: str | None = None,
    path: str | None = None,
    query: str = "",
    headers: Iterable[tuple[str, str]] = (),
    declared: bool = False,
) -> dict[str, Any]:
    """The egress document; ``request`` is null until a request is seen.

    ``addresses`` are the resolved addresses (``ipaddress`` objects or
    text), which the policy checks before any connection is made; with
    ``declared`` they are the one address the operator declared for the
    host, never looked up.
    """
    request = None
    if method is not None:
        normal = path or "/"
        request = {
            "method": method,
            "path": normal,
            "segments": path_segments(normal),
            "query": query,
            "headers": header_fields(headers),
        }
    return {
        "version": INPUT_VERSION,
        "direction": EGRESS,
        "destination": {
            "scheme": scheme,
            "host": host,
            "port": port,
            "addresses": [str(address) for address in addresses],
            "declared": declared,
        },
        "request": request,
    }


def ingress_request(document: Mapping[str, Any]) -> IngressRequest:
    """The request an ingress document was built from (for the YAML engine)."""
    request = document["request"]
    identity = document.get("identity")
    return IngressRequest(
        method=request["method"],
        path=request["path"],
        identity=(
            Identity(identity["issuer"], identity["subject"], identity["claims"])
            if identity is not None
            else None
        ),
        source=document.get("source", {}).get("address", ""),
        query=request.get("query", ""),
        headers=request.get("headers", {}),
        body_length=request.get("body_length"),
    )


def _identity(identity: Identity | None) -> dict[str, Any] | None:
    if identity is None:
        return None
    return {
        "issuer": identity.issuer,
        "subject": identity.subject,
        "claims": dict(identity.claims),
    }
