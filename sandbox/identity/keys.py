"""Pinned public keys: the JWKS a data owner ships inside the policy bundle.

Keys are checked once, when the policy loads, so that the request path can
trust them: public asymmetric keys only, each with a unique ``kid`` and fit
for at least one algorithm the issuer allows. Failures are ``ValueError``
naming the offending entry; the policy loader locates them in the bundle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

ALLOWED_ALGORITHMS: tuple[str, ...] = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "EdDSA",
)

# Below this an RSA signature is forgeable by a well-funded attacker.
MIN_RSA_BITS = 2048

# JWK members that only a private or symmetric key carries (RFC 7518 §6).
_SECRET_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")

# (kty, crv) -> the algorithms such a key can verify; crv is "" for RSA.
_FAMILIES: dict[tuple[str, str], tuple[str, ...]] = {
    ("RSA", ""): ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    ("EC", "P-256"): ("ES256",),
    ("EC", "P-384"): ("ES384",),
    ("OKP", "Ed25519"): ("EdDSA",),
}

_PUBLIC_MEMBERS = {"RSA": ("n", "e"), "EC": ("x", "y"), "OKP": ("x",)}

_CURVES = {"EC": ("P-256", "P-384"), "OKP": ("Ed25519",)}

_EC_CURVE_FOR = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1}


def key_fits(key: jwt.PyJWK, algorithm: str) -> bool:
    """Whether ``key`` can verify a signature made with ``algorithm``.

    Decided on the key object itself, not on the JWK's labels, so a key
    can never be used with an algorithm of another family.
    """
    public = key.key
    if algorithm in _FAMILIES[("RSA", "")]:
        return isinstance(public, rsa.RSAPublicKey)
    if algorithm in _EC_CURVE_FOR:
        return isinstance(public, ec.EllipticCurvePublicKey) and isinstance(
            public.curve, _EC_CURVE_FOR[algorithm]
        )
    if algorithm == "EdDSA":
        return isinstance(public, ed25519.Ed25519PublicKey)
    return False


def describe_key(key: jwt.PyJWK) -> str:
    """``RSA 2048-bit``, ``EC P-256``, ``OKP Ed25519``: for error messages."""
    public = key.key
    if isinstance(public, rsa.RSAPublicKey):
        return f"RSA {public.key_size}-bit"
    if isinstance(public, ec.EllipticCurvePublicKey):
        return f"EC {public.curve.name}"
    if isinstance(public, ed25519.Ed25519PublicKey):
        return "OKP Ed25519"
    return type(public).__name__


def parse_jwks(document: object, algorithms: Sequence[str]) -> dict[str, jwt.PyJWK]:
    """Check a JWK Set and return its keys by ``kid``; raise ``ValueError``."""
    _check_algorithms(algorithms)
    entries = _key_entries(document)

    keys: dict[str, jwt.PyJWK] = {}
    for index, entry in enumerate(entries):
        where = f"keys[{index}]"
        kid, key = _parse_key(entry, where, algorithms)
        if kid in keys:
            raise ValueError(f"{where}: kid {kid!r} appears twice")
        keys[kid] = key
    return keys


def _check_algorithms(algorithms: Sequence[str]) -> None:
    refused = [alg for alg in algorithms if alg not in ALLOWED_ALGORITHMS]
    if refused or not algorithms:
        raise ValueError(
            f"algorithms {list(algorithms)!r} must be a non-empty subset of "
            f"{list(ALLOWED_ALGORITHMS)!r}"
        )


def _key_entries(document: object) -> list[object]:
    if not isinstance(document, Mapping) or "keys" not in document:
        raise ValueError(
            "expected a JWK Set: an object with a 'keys' list, "
            f"got {type(document).__name__}"
            + (" without 'keys'" if isinstance(document, Mapping) else "")
        )
    entries = document["keys"]
    if not isinstance(entries, list):
        raise ValueError(f"keys: expected a list, got {type(entries).__name__}")
    if not entries:
        raise ValueError("keys: the set is empty; pin at least one public key")
    return entries


def _parse_key(
    entry: object, where: str, algorithms: Sequence[str]
) -> tuple[str, jwt.PyJWK]:
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: expected a JWK object, got {type(entry).__name__}")
    kid = _kid(entry, where)
    where = f"{where} (kid {kid!r})"

    family = _family(entry, where)
    usable = _usable_algorithms(entry, family, where, algorithms)
    _check_public_members(entry, family[0], where)

    return kid, _build_key(entry, family, usable[0], where)


def _kid(entry: Mapping[object, object], where: str) -> str:
    if "kid" not in entry:
        raise ValueError(f"{where}: 'kid' is missing; every pinned key needs one")
    kid = entry["kid"]
    if not isinstance(kid, str) or not kid:
        raise ValueError(f"{where}: 'kid' must be a non-empty string, got {kid!r}")
    return kid


def _family(entry: Mapping[object, object], where: str) -> tuple[str, str]:
    """Refuse secret material and unsupported key types; return (kty, crv)."""
    kty = entry.get("kty")
    if kty == "oct":
        raise ValueError(
            f"{where}: symmetric keys (kty 'oct') are refused; pin public keys only"
        )
    secret = [name for name in _SECRET_MEMBERS if name in entry]
    if secret:
        raise ValueError(
            f"{where}: holds private key material ({', '.join(secret)}); "
            "pin public keys only"
        )
    if not isinstance(kty, str) or kty not in _PUBLIC_MEMBERS:
        raise ValueError(
            f"{where}: kty {kty!r} is not supported; expected 'RSA', 'EC' or 'OKP'"
        )
    crv = entry.get("crv", "") if kty != "RSA" else ""
    if kty in _CURVES and crv not in _CURVES[kty]:
        raise ValueError(
            f"{where}: {kty} curve {crv!r} is not supported; "
            f"expected one of {list(_CURVES[kty])!r}"
        )
    use = entry.get("use", "sig")
    if use != "sig":
        raise ValueError(f"{where}: 'use' is {use!r}; a verification key needs 'sig'")
    return str(kty), str(crv)


def _usable_algorithms(
    entry: Mapping[object, object],
    family: tuple[str, str],
    where: str,
    algorithms: Sequence[str],
) -> list[str]:
    fitting = _FAMILIES[family]
    label = " ".join(part for part in family if part)
    if "alg" in entry:
        alg = entry["alg"]
        if alg not in algorithms:
            raise ValueError(
                f"{where}: 'alg' is {alg!r}, which the issuer does not allow; "
                f"allowed: {list(algorithms)!r}"
            )
        if alg not in fitting:
            raise ValueError(f"{where}: 'alg' is {alg!r} but this is an {label} key")
        return [str(alg)]
    usable = [alg for alg in algorithms if alg in fitting]
    if not usable:
        raise ValueError(
            f"{where}: an {label} key can verify {list(fitting)!r}, none of which "
            f"the issuer allows ({list(algorithms)!r})"
        )
    return usable


def _check_public_members(entry: Mapping[object, object], kty: str, where: str) -> None:
    for name in _PUBLIC_MEMBERS[kty]:
        value = entry.get(name)
        if not isinstance(value, str) or not value:
            raise ValueError(
                f"{where}: {name!r} must be a non-empty base64url string; an {kty} "
                f"public key needs {list(_PUBLIC_MEMBERS[kty])!r}"
            )


def _build_key(
    entry: Mapping[object, object], family: tuple[str, str], alg: str, where: str
) -> jwt.PyJWK:
    jwk = {str(name): value for name, value in entry.items()}
    try:
        key = jwt.PyJWK(jwk, algorithm=alg)
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise ValueError(f"{where}: not a valid {family[0]} public key: {exc}") from exc

    if isinstance(key.key, rsa.RSAPublicKey) and key.key.key_size < MIN_RSA_BITS:
        raise ValueError(
            f"{where}: RSA key is {key.key.key_size} bits; "
            f"at least {MIN_RSA_BITS} are required"
        )
    if not key_fits(key, alg):
        raise ValueError(f"{where}: the key does not fit its algorithm {alg!r}")
    return key
