"""The responses the sandbox itself gives: a JSON body, never app content."""

from __future__ import annotations

from aiohttp import web

from sandbox.ingress.headers import REQUEST_ID_HEADER

ERROR_NAMES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    429: "too_many_requests",
    502: "bad_gateway",
    503: "unavailable",
    504: "gateway_timeout",
}
REALM = "policy-sandbox"


def refusal_response(
    status: int, reason: str, request_id: str, *, bearer_error: str | None = None
) -> web.Response:
    body = {"error": ERROR_NAMES[status], "reason": reason, "request_id": request_id}
    response = web.json_response(body, status=status)
    response.headers[REQUEST_ID_HEADER] = request_id
    response.headers["Cache-Control"] = "no-store"
    if status == 401:
        response.headers["WWW-Authenticate"] = _bearer_challenge(
            bearer_error or "invalid_token", reason
        )
    return response


def _bearer_challenge(error: str, reason: str) -> str:
    # RFC 6750 allows only %x20-21 / %x23-5B / %x5D-7E in error_description.
    description = "".join(
        char for char in reason if " " <= char <= "~" and char not in '"\\'
    )
    return f'Bearer realm="{REALM}", error="{error}", error_description="{description}"'
