"""Bearer-token verification against the keys the data owner pinned.

A token is an identity only once every check has passed: structure, an
asymmetric algorithm the issuer allows, a ``kid`` naming one of *that*
issuer's keys, the signature, and the ``aud``/``exp``/``nbf``/``iat``/``sub``
claims. Every refusal is an ``AuthenticationError`` whose reason says what
was expected and what came, and never repeats the token or a key.

Verified tokens are cached by their SHA-256; a cache hit skips the signature
but the time claims are checked again, against the injected clock, on every
use. The work is synchronous and CPU-bound (about 100 µs for ES256), cheap
enough to run on the event loop.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

import jwt

from sandbox.errors import AuthenticationError
from sandbox.identity.keys import ALLOWED_ALGORITHMS, describe_key, key_fits
from sandbox.policy.inputs import Identity
from sandbox.policy.model import IdentityConfig, Issuer

MAX_TOKEN_BYTES = 8192
DEFAULT_CACHE_SIZE = 4096

_SEGMENT = re.compile(r"[A-Za-z0-9_-]*={0,2}")
# An auth scheme short and plain enough to quote back without risking that
# it is really a token sent without the "Bearer" prefix.
_QUOTABLE_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,15}")
_SHOWN_CHARS = 80

_JWS = jwt.PyJWS(
    algorithms=list(ALLOWED_ALGORITHMS),
    # Short RSA keys are refused at load; should one slip through, fail
    # instead of warning on the request path.
    options={"enforce_minimum_key_length": True},
)


@dataclass(frozen=True, slots=True)
class _Verified:
    identity: Identity
    expires: float
    not_before: float | None


class TokenVerifier:
    """Turns bearer tokens into identities, or refuses them with a reason."""

    def __init__(
        self,
        config: IdentityConfig,
        *,
        clock: Callable[[], float] = time.time,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self._issuers = {issuer.issuer: issuer for issuer in config.issuers}
        self._key_owners = {
            kid: issuer.issuer for issuer in config.issuers for kid in issuer.keys
        }
        self._leeway = config.leeway
        self._clock = clock
        self._cache_size = cache_size
        self._cache: OrderedDict[bytes, _Verified] = OrderedDict()

    def authenticate(self, authorization: str | None) -> Identity | None:
        """The caller's identity from an ``Authorization`` header, if any."""
        if authorization is None:
            return None
        return self.verify(_bearer_token(authorization))

    def verify(self, token: str) -> Identity:
        """Verify ``token`` and return who it proves; raise if refused."""
        raw = token.encode("utf-8", "surrogatepass")
        if len(raw) > MAX_TOKEN_BYTES:
            raise _refused(
                f"token is {len(raw)} bytes; at most {MAX_TOKEN_BYTES} are accepted"
            )
        digest = hashlib.sha256(raw).digest()

        cached = self._cache.get(digest)
        if cached is not None:
            return self._reuse(digest, cached)

        verified = self._verify_fresh(token)
        self._remember(digest, verified)
        return verified.identity

    def _reuse(self, digest: bytes, cached: _Verified) -> Identity:
        now = self._now()
        try:
            _check_window(cached.expires, cached.not_before, now)
        except AuthenticationError:
            # Expiry is final; a token not yet valid may become valid later.
            if cached.expires <= now.time - now.leeway:
                del self._cache[digest]
            raise
        self._cache.move_to_end(digest)
        return cached.identity

    def _remember(self, digest: bytes, verified: _Verified) -> None:
        if self._cache_size <= 0:
            return
        self._cache[digest] = verified
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _now(self) -> _Now:
        return _Now(self._clock(), self._leeway)

    def _verify_fresh(self, token: str) -> _Verified:
        header, claims = _decode_unverified(token)
        alg = _signing_algorithm(header)
        issuer = self._issuer(claims)
        _check_allowed(issuer, alg)
        kid, key = _pinned_key(issuer, header, alg, self._key_owners)
        _check_signature(token, key, alg, kid, issuer)
        return _check_claims(issuer, claims, self._now())

    def _issuer(self, claims: Mapping[str, Any]) -> Issuer:
        name = claims.get("iss")
        trusted = sorted(self._issuers)
        if not isinstance(name, str):
            raise _refused(
                f"token has no string 'iss' claim (got {_kind(name)}); "
                f"expected one of {trusted!r}"
            )
        issuer = self._issuers.get(name)
        if issuer is None:
            raise _refused(
                f"issuer {_shown(name)} is not trusted by this policy; "
                f"trusted issuers: {trusted!r}"
            )
        return issuer


@dataclass(frozen=True, slots=True)
class _Now:
    time: float
    leeway: float


def _refused(reason: str) -> AuthenticationError:
    return AuthenticationError(reason, "invalid_token")


def _bearer_token(authorization: str) -> str:
    scheme, _, credentials = authorization.strip().partition(" ")
    token = credentials.strip()
    if scheme.lower() == "bearer" and token and " " not in token:
        return token

    if scheme.lower() == "bearer":
        got = "no token" if not token else "more than one word after 'Bearer'"
    elif not scheme:
        got = "an empty header"
    elif _QUOTABLE_SCHEME.fullmatch(scheme):
        got = f"scheme {scheme!r}"
    else:
        got = "no scheme (a token needs the 'Bearer ' prefix)"
    raise AuthenticationError(
        f"Authorization header: expected 'Bearer <token>', got {got}",
        "invalid_request",
    )


def _decode_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims as JSON objects, before any signature check."""
    parts = token.split(".")
    if len(parts) != 3:
        raise _refused(
            "token is not a JWT: expected three base64url parts separated by "
            f"'.', got {len(parts)} part{'s' if len(parts) != 1 else ''}"
        )
    header = _json_object(parts[0], "header")
    claims = _json_object(parts[1], "payload")
    return header, claims


def _json_object(segment: str, name: str) -> dict[str, Any]:
    if not segment or not _SEGMENT.fullmatch(segment):
        raise _refused(f"token {name} is not base64url text")
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(
            data, object_pairs_hook=_unique_members, parse_constant=_no_constant
        )
    except (binascii.Error, ValueError, RecursionError) as exc:
        # The decoder's line and column mean nothing to a caller who sees
        # base64; only a reason of our own is worth repeating.
        detail = f": {exc}" if isinstance(exc, _DuplicateMember) else ""
        raise _refused(f"token {name} is not valid base64url JSON{detail}") from exc
    if not isinstance(value, dict):
        raise _refused(f"token {name} must be a JSON object, got {_kind(value)}")
    return value


class _DuplicateMember(ValueError):
    """Two parsers could disagree on which duplicate wins: refuse both."""


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members: dict[str, Any] = {}
    for name, value in pairs:
        if name in members:
            raise _DuplicateMember(f"member {_shown(name)} appears twice")
        members[name] = value
    return members


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _signing_algorithm(header: Mapping[str, Any]) -> str:
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise _refused(f"token header has no string 'alg' (got {_kind(alg)})")
    if alg.lower() == "none":
        raise _refused(
            f"unsigned token (alg {_shown(alg)}) refused; tokens must be signed"
        )
    if alg.upper().startswith("HS"):
        raise _refused(
            f"HMAC-signed token (alg {_shown(alg)}) refused; only public-key "
            "signatures checked against pinned keys are accepted"
        )
    if alg not in ALLOWED_ALGORITHMS:
        raise _refused(
            f"alg {_shown(alg)} is not supported; expected one of "
            f"{list(ALLOWED_ALGORITHMS)!r}"
        )
    if "crit" in header:
        raise _refused("token header lists critical extensions; none are supported")
    return alg


def _check_allowed(issuer: Issuer, alg: str) -> None:
    if alg not in issuer.algorithms:
        raise _refused(
            f"alg {alg!r} is not allowed for issuer {issuer.issuer!r}; "
            f"the policy allows {list(issuer.algorithms)!r}"
        )


def _pinned_key(
    issuer: Issuer, header: Mapping[str, Any], alg: str, owners: Mapping[str, str]
) -> tuple[str, jwt.PyJWK]:
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise _refused(
            f"token header has no string 'kid' (got {_kind(kid)}); expected "
            f"the id of a key pinned for issuer {issuer.issuer!r}"
        )
    # Only this issuer's keys: a key trusted for another issuer must never
    # vouch for a token claiming to come from this one.
    key: jwt.PyJWK | None = issuer.keys.get(kid)
    if key is None:
        owner = owners.get(kid)
        hint = f" (it is pinned for issuer {owner!r})" if owner else ""
        raise _refused(
            f"kid {_shown(kid)} is not a key pinned for issuer {issuer.issuer!r}" + hint
        )
    if not key_fits(key, alg):
        raise _refused(
            f"key {kid!r} of issuer {issuer.issuer!r} is an {describe_key(key)} "
            f"key and cannot verify alg {alg!r}"
        )
    return kid, key


def _check_signature(
    token: str, key: jwt.PyJWK, alg: str, kid: str, issuer: Issuer
) -> None:
    try:
        # The raw key object, so that the header's alg (already checked
        # against the allow-list and the key type) picks the verifier.
        _JWS.decode_complete(token, key=key.key, algorithms=[alg])
    except jwt.InvalidSignatureError as exc:
        raise _refused(
            f"signature does not verify with key {kid!r} of issuer "
            f"{issuer.issuer!r} (alg {alg!r})"
        ) from exc
    except jwt.PyJWTError as exc:
        raise _refused(f"token could not be verified: {exc}") from exc


def _check_claims(issuer: Issuer, claims: dict[str, Any], now: _Now) -> _Verified:
    _check_audience(issuer, claims)

    expires = _numeric_date(claims, "exp")
    if expires is None:
        raise _refused("token has no 'exp' claim; tokens must expire")
    not_before = _numeric_date(claims, "nbf")
    issued_at = _numeric_date(claims, "iat")
    _check_window(expires, not_before, now)
    if issued_at is not None and issued_at > now.time + now.leeway:
        raise _refused(
            f"token was issued in the future: iat {_when(issued_at)} is "
            f"{issued_at - now.time:.0f} s ahead (leeway {now.leeway:g} s)"
        )

    if "sub" not in claims:
        raise _refused("token has no 'sub' claim; a subject is required")
    subject = claims["sub"]
    if not isinstance(subject, str) or not subject:
        raise _refused(f"claim 'sub' must be a non-empty string, got {_kind(subject)}")

    identity = Identity(issuer=issuer.issuer, subject=subject, claims=claims)
    return _Verified(identity, expires, not_before)


def _check_audience(issuer: Issuer, claims: Mapping[str, Any]) -> None:
    expected = list(issuer.audiences)
    if "aud" not in claims:
        raise _refused(f"token has no 'aud' claim; expected one of {expected!r}")
    aud = claims["aud"]
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not all(
        isinstance(item, str) for item in audiences
    ):
        raise _refused(
            f"claim 'aud' must be a string or a list of strings, got {_kind(aud)}"
        )
    if not set(audiences) & set(expected):
        shown = ", ".join(_shown(item) for item in audiences[:5]) or "none"
        raise _refused(
            f"token audience ({shown}) is not accepted for issuer "
            f"{issuer.issuer!r}; expected one of {expected!r}"
        )


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    if name not in claims:
        return None
    value = claims[name]
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
    ):
        raise _refused(
            f"claim {name!r} must be a number of seconds since the epoch, "
            f"got {_kind(value)}"
        )
    return float(value)


def _check_window(expires: float, not_before: float | None, now: _Now) -> None:
    if expires <= now.time - now.leeway:
        raise _refused(
            f"token expired at {_when(expires)}, {now.time - expires:.0f} s ago "
            f"(leeway {now.leeway:g} s)"
        )
    if not_before is not None and not_before > now.time + now.leeway:
        raise _refused(
            f"token is not valid before {_when(not_before)}, "
            f"{not_before - now.time:.0f} s from now (leeway {now.leeway:g} s)"
        )


def _when(timestamp: float) -> str:
    try:
        moment = datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, OSError, ValueError):
        return f"{timestamp:.0f} (epoch seconds)"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _shown(value: str) -> str:
    """A value from the token, quoted and cut short enough for a log line."""
    if len(value) <= _SHOWN_CHARS:
        return repr(value)
    return repr(value[:_SHOWN_CHARS]) + f"... ({len(value)} chars)"


def _kind(value: object) -> str:
    return "nothing" if value is None else type(value).__name__
