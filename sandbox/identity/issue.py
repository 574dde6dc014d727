"""Development helper: make a signing key, its pinned JWKS, and tokens.

A real deployment gets its tokens from the data owner's identity provider;
this exists so a policy can be tried end to end on a laptop. Keys are
written unencrypted, which is why it is a development helper only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from sandbox.identity.keys import ALLOWED_ALGORITHMS

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

RSA_BITS = 2048

# Claims issue_token sets from its own arguments.
RESERVED_CLAIMS = ("iss", "sub", "aud", "iat", "nbf", "exp")

_CURVE_ALGORITHM = {"secp256r1": "ES256", "secp384r1": "ES384"}

# The members RFC 7638 hashes, per key type, in their lexicographic order.
_THUMBPRINT_MEMBERS = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
}


def generate_key(algorithm: str) -> tuple[bytes, dict[str, Any]]:
    """A new private key (PEM, PKCS8, unencrypted) and the JWKS pinning it."""
    private_key = _new_key(algorithm)
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_jwk = _public_jwk(private_key)
    kid = jwk_thumbprint(public_jwk)
    jwk = {**public_jwk, "kid": kid, "alg": algorithm, "use": "sig"}
    return pem, {"keys": [jwk]}


def key_id(private_key_pem: bytes) -> str:
    """The RFC 7638 thumbprint of the key's public half, used as ``kid``."""
    return jwk_thumbprint(_public_jwk(_load_key(private_key_pem)))


def default_algorithm(private_key_pem: bytes) -> str:
    """ES256 for P-256, ES384 for P-384, RS256 for RSA, EdDSA for Ed25519."""
    return _default_algorithm(_load_key(private_key_pem))


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638: base64url SHA-256 of the key's required public members."""
    kty = jwk.get("kty")
    if not isinstance(kty, str) or kty not in _THUMBPRINT_MEMBERS:
        raise ValueError(f"kty {kty!r} has no thumbprint; expected RSA, EC or OKP")
    names = _THUMBPRINT_MEMBERS[kty]
    missing = [name for name in names if name not in jwk]
    if missing:
        raise ValueError(f"an {kty} JWK needs {list(names)!r}; missing {missing!r}")
    members = {name: jwk[name] for name in names}
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":"))
    return _b64(hashlib.sha256(canonical.encode("utf-8")).digest())


def issue_token(
    private_key_pem: bytes,
    *,
    issuer: str,
    audience: str | Sequence[str],
    subject: str,
    claims: Mapping[str, Any] | None = None,
    expires_in: float = 3600,
    not_before: float | None = None,
    algorithm: str | None = None,
    now: float | None = None,
) -> str:
    """A signed JWT; ``not_before`` is a Unix time, ``now`` by default."""
    private_key = _load_key(private_key_pem)
    alg = algorithm or _default_algorithm(private_key)
    _check_fit(private_key, alg)
    extra = dict(claims or {})
    reserved = sorted(set(extra) & set(RESERVED_CLAIMS))
    if reserved:
        raise ValueError(
            f"claims {reserved!r} are set from the issuer, audience, subject and "
            "times given; do not pass them as extra claims"
        )

    issued_at = time.time() if now is None else now
    payload = {
        **extra,
        "iss": issuer,
        "sub": subject,
        "aud": audience if isinstance(audience, str) else list(audience),
        "iat": int(issued_at),
        "nbf": int(issued_at if not_before is None else not_before),
        "exp": int(issued_at + expires_in),
    }
    kid = jwk_thumbprint(_public_jwk(private_key))
    return jwt.encode(payload, private_key, algorithm=alg, headers={"kid": kid})


def _new_key(algorithm: str) -> SigningKey:
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "ES384":
        return ec.generate_private_key(ec.SECP384R1())
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm in ALLOWED_ALGORITHMS:
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    raise ValueError(
        f"cannot make a key for algorithm {algorithm!r}; "
        f"expected one of {list(ALLOWED_ALGORITHMS)!r}"
    )


def _load_key(private_key_pem: bytes) -> SigningKey:
    try:
        loaded: PrivateKeyTypes = serialization.load_pem_private_key(
            private_key_pem, password=None
        )
    except (ValueError, TypeError) as exc:
        # cryptography raises TypeError for a key that needs a password.
        raise ValueError(f"not an unencrypted PEM private key: {exc}") from exc
    if isinstance(loaded, ec.EllipticCurvePrivateKey):
        if loaded.curve.name not in _CURVE_ALGORITHM:
            raise ValueError(
                f"EC curve {loaded.curve.name!r} is not supported; "
                "expected P-256 (secp256r1) or P-384 (secp384r1)"
            )
        return loaded
    if isinstance(loaded, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        return loaded
    raise ValueError(
        f"{type(loaded).__name__} keys are not supported; "
        "expected an RSA, EC P-256, EC P-384 or Ed25519 private key"
    )


def _default_algorithm(private_key: SigningKey) -> str:
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return _CURVE_ALGORITHM[private_key.curve.name]
    if isinstance(private_key, rsa.RSAPrivateKey):
        return "RS256"
    return "EdDSA"


def _check_fit(private_key: SigningKey, algorithm: str) -> None:
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        fits = algorithm == _default_algorithm(private_key)
    elif isinstance(private_key, rsa.RSAPrivateKey):
        fits = algorithm in ALLOWED_ALGORITHMS and algorithm[:2] in ("RS", "PS")
    else:
        fits = algorithm == "EdDSA"
    if not fits:
        raise ValueError(
            f"algorithm {algorithm!r} does not fit this key; "
            f"it signs with {_default_algorithm(private_key)!r}"
            + (" (or RS*/PS*)" if isinstance(private_key, rsa.RSAPrivateKey) else "")
        )


def _public_jwk(private_key: SigningKey) -> dict[str, str]:
    """The public JWK members that RFC 7638 hashes, and nothing else."""
    if isinstance(private_key, rsa.RSAPrivateKey):
        numbers = private_key.public_key().public_numbers()
        return {"e": _b64_uint(numbers.e), "kty": "RSA", "n": _b64_uint(numbers.n)}
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        point = private_key.public_key().public_numbers()
        size = (private_key.curve.key_size + 7) // 8
        return {
            "crv": "P-256" if size == 32 else "P-384",
            "kty": "EC",
            "x": _b64(point.x.to_bytes(size, "big")),
            "y": _b64(point.y.to_bytes(size, "big")),
        }
    raw = private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return {"crv": "Ed25519", "kty": "OKP", "x": _b64(raw)}


def _b64_uint(value: int) -> str:
    return _b64(value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
