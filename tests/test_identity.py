"""Identity layer: pinned JWKS parsing, token verification, dev tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sandbox.errors import AuthenticationError
from sandbox.identity import verifier as verifier_module
from sandbox.identity.issue import (
    default_algorithm,
    generate_key,
    issue_token,
    jwk_thumbprint,
    key_id,
)
from sandbox.identity.keys import key_fits, parse_jwks
from sandbox.identity.verifier import TokenVerifier
from sandbox.policy.inputs import Identity
from sandbox.policy.model import IdentityConfig, Issuer

NOW = 1_700_000_000.0
LEEWAY = 30.0
ISSUER_A = "https://idp.example"
ISSUER_B = "https://partner.example"
UNTRUSTED = "https://stranger.example"
AUDIENCE = "sandbox"
ALGORITHMS_A = ("ES256", "RS256", "PS256", "EdDSA")


@dataclass(frozen=True)
class Signer:
    pem: bytes
    jwks: dict[str, Any]

    @property
    def kid(self) -> str:
        kid: str = self.jwks["keys"][0]["kid"]
        return kid

    @property
    def jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = self.jwks["keys"][0]
        return jwk


@dataclass(frozen=True)
class Keys:
    es256: Signer
    rs256: Signer
    ps256: Signer
    eddsa: Signer
    partner: Signer
    stranger: Signer


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(
        es256=Signer(*generate_key("ES256")),
        rs256=Signer(*generate_key("RS256")),
        ps256=Signer(*generate_key("PS256")),
        eddsa=Signer(*generate_key("EdDSA")),
        partner=Signer(*generate_key("ES256")),
        stranger=Signer(*generate_key("ES256")),
    )


@pytest.fixture(scope="module")
def config(keys: Keys) -> IdentityConfig:
    own = [keys.es256, keys.rs256, keys.ps256, keys.eddsa]
    issuer_a = Issuer(
        issuer=ISSUER_A,
        audiences=(AUDIENCE, "sandbox-admin"),
        algorithms=ALGORITHMS_A,
        jwks_path="a.jwks.json",
        keys=parse_jwks({"keys": [s.jwk for s in own]}, ALGORITHMS_A),
    )
    issuer_b = Issuer(
        issuer=ISSUER_B,
        audiences=(AUDIENCE,),
        algorithms=("ES256",),
        jwks_path="b.jwks.json",
        keys=parse_jwks(keys.partner.jwks, ("ES256",)),
    )
    return IdentityConfig(leeway=LEEWAY, issuers=(issuer_a, issuer_b))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(config: IdentityConfig, clock: Clock) -> TokenVerifier:
    return TokenVerifier(config, clock=clock)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64_json(value: object) -> str:
    return b64(json.dumps(value).encode("utf-8"))


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims for issuer A at NOW; ``None`` removes a claim."""
    base: dict[str, Any] = {
        "iss": ISSUER_A,
        "sub": "alice",
        "aud": AUDIENCE,
        "iat": int(NOW),
        "nbf": int(NOW),
        "exp": int(NOW + 300),
    }
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def signed(
    signer: Signer,
    payload: dict[str, Any],
    *,
    alg: str | None = None,
    headers: dict[str, Any] | None = None,
) -> str:
    private = serialization.load_pem_private_key(signer.pem, password=None)
    header = {"kid": signer.kid} if headers is None else headers
    return jwt.encode(
        payload,
        private,  # type: ignore[arg-type]
        algorithm=alg or default_algorithm(signer.pem),
        headers=header,
    )


def unsigned(header: dict[str, Any], payload: dict[str, Any]) -> str:
    return f"{b64_json(header)}.{b64_json(payload)}."


def hmac_with_public_pem(keys: Keys) -> str:
    """The classic confusion: HS256 keyed with the RSA public key's PEM."""
    private = serialization.load_pem_private_key(keys.rs256.pem, password=None)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": keys.rs256.kid}
    signing_input = f"{b64_json(header)}.{b64_json(claims())}"
    mac = hmac.new(public_pem, signing_input.encode("ascii"), hashlib.sha256)
    return f"{signing_input}.{b64(mac.digest())}"


def tampered(keys: Keys) -> str:
    header, _, signature = signed(keys.es256, claims()).split(".")
    return f"{header}.{b64_json(claims(sub='mallory'))}.{signature}"


def es256_header_with_rsa_kid(keys: Keys) -> str:
    return signed(keys.es256, claims(), headers={"kid": keys.rs256.kid})


def duplicate_member(keys: Keys) -> str:
    header = b64_json({"alg": "ES256", "kid": keys.es256.kid})
    payload = b64(b'{"sub": "alice", "sub": "admin"}')
    return f"{header}.{payload}.AAAA"


Build = Callable[[Keys], str]

HOSTILE: list[tuple[str, Build, str]] = [
    (
        "alg none",
        lambda k: unsigned({"alg": "none", "kid": k.es256.kid}, claims()),
        "alg 'none'",
    ),
    (
        "alg None, other case",
        lambda k: unsigned({"alg": "None", "kid": k.es256.kid}, claims()),
        "unsigned token",
    ),
    ("hs256 keyed with rsa public pem", hmac_with_public_pem, "HMAC-signed"),
    (
        "issuer not trusted",
        lambda k: signed(k.es256, claims(iss=UNTRUSTED)),
        f"issuer {UNTRUSTED!r} is not trusted",
    ),
    (
        "valid token of an issuer the policy does not name",
        lambda k: signed(k.stranger, claims(iss=UNTRUSTED)),
        "is not trusted by this policy",
    ),
    (
        "no iss",
        lambda k: signed(k.es256, claims(iss=None)),
        "no string 'iss'",
    ),
    (
        "wrong audience",
        lambda k: signed(k.es256, claims(aud="billing")),
        "audience ('billing') is not accepted",
    ),
    (
        "no audience",
        lambda k: signed(k.es256, claims(aud=None)),
        "no 'aud' claim",
    ),
    (
        "expired beyond leeway",
        lambda k: signed(k.es256, claims(exp=int(NOW - LEEWAY - 1))),
        "token expired at 2023-11-14T22:12:49Z, 31 s ago",
    ),
    (
        "not yet valid beyond leeway",
        lambda k: signed(k.es256, claims(nbf=int(NOW + LEEWAY + 1))),
        "not valid before 2023-11-14T22:13:51Z, 31 s from now",
    ),
    (
        "issued in the future",
        lambda k: signed(k.es256, claims(iat=int(NOW + 3600))),
        "issued in the future",
    ),
    (
        "unknown kid",
        lambda k: signed(k.es256, claims(), headers={"kid": "no-such-key"}),
        f"kid 'no-such-key' is not a key pinned for issuer {ISSUER_A!r}",
    ),
    (
        "kid of another trusted issuer",
        lambda k: signed(k.partner, claims()),
        f"is not a key pinned for issuer {ISSUER_A!r} (it is pinned for issuer "
        f"{ISSUER_B!r})",
    ),
    (
        "no kid",
        lambda k: signed(k.es256, claims(), headers={}),
        "no string 'kid'",
    ),
    ("not a jwt", lambda k: "hello", "expected three base64url parts"),
    ("four parts", lambda k: "a.b.c.d", "got 4 parts"),
    ("garbage base64", lambda k: "!!!.@@@.###", "header is not base64url"),
    (
        "payload not json",
        lambda k: f"{b64_json({'alg': 'ES256'})}.{b64(b'{nope')}.AAAA",
        "payload is not valid base64url JSON",
    ),
    (
        "payload not an object",
        lambda k: f"{b64_json({'alg': 'ES256'})}.{b64_json([1, 2])}.AAAA",
        "payload must be a JSON object, got list",
    ),
    ("duplicate json member", duplicate_member, "'sub' appears twice"),
    (
        "deeply nested json",
        lambda k: f"{b64_json({'alg': 'ES256'})}.{b64(b'[' * 5000)}.AAAA",
        "payload is not valid base64url JSON",
    ),
    ("one megabyte", lambda k: "a" * 1_000_000, "token is 1000000 bytes"),
    (
        "no exp",
        lambda k: signed(k.es256, claims(exp=None)),
        "no 'exp' claim",
    ),
    (
        "exp not a number",
        lambda k: signed(k.es256, claims(exp="tomorrow")),
        "claim 'exp' must be a number",
    ),
    (
        "no sub",
        lambda k: signed(k.es256, claims(sub=None)),
        "no 'sub' claim",
    ),
    (
        "sub not a string",
        lambda k: signed(k.es256, claims(sub=42)),
        "claim 'sub' must be a non-empty string, got int",
    ),
    (
        "es256 header naming an rsa key",
        es256_header_with_rsa_kid,
        "is an RSA 2048-bit key and cannot verify alg 'ES256'",
    ),
    (
        "alg the issuer does not allow",
        lambda k: signed(k.rs256, claims(iss=ISSUER_B)),
        f"alg 'RS256' is not allowed for issuer {ISSUER_B!r}",
    ),
    (
        "alg outside the allow-list",
        lambda k: unsigned({"alg": "ES512", "kid": k.es256.kid}, claims()),
        "alg 'ES512' is not supported",
    ),
    (
        "critical header extension",
        lambda k: signed(
            k.es256, claims(), headers={"kid": k.es256.kid, "crit": ["exp"]}
        ),
        "critical extensions",
    ),
    ("tampered payload", tampered, "signature does not verify with key"),
]


@pytest.mark.parametrize(
    ("build", "expected"),
    [pytest.param(build, expected, id=name) for name, build, expected in HOSTILE],
)
def test_hostile_token_is_refused_with_its_reason(
    verifier: TokenVerifier, keys: Keys, build: Build, expected: str
) -> None:
    token = build(keys)

    with pytest.raises(AuthenticationError) as refused:
        verifier.verify(token)

    assert expected in refused.value.reason
    assert refused.value.code == "invalid_token"
    assert token not in refused.value.reason


@pytest.mark.parametrize("signer_name", ["es256", "rs256", "ps256", "eddsa"])
def test_valid_token_yields_its_identity(
    verifier: TokenVerifier, keys: Keys, signer_name: str
) -> None:
    signer: Signer = getattr(keys, signer_name)
    token = issue_token(
        signer.pem,
        issuer=ISSUER_A,
        audience=["other", "sandbox-admin"],
        subject="alice",
        claims={"groups": ["oncology"]},
        algorithm=signer.jwk["alg"],
        now=NOW,
    )

    identity = verifier.verify(token)

    assert identity.issuer == ISSUER_A
    assert identity.subject == "alice"
    assert identity.claims["groups"] == ["oncology"]
    assert jwt.get_unverified_header(token)["alg"] == signer.jwk["alg"]


def test_token_of_second_issuer_verifies_with_its_own_key(
    verifier: TokenVerifier, keys: Keys
) -> None:
    identity = verifier.verify(signed(keys.partner, claims(iss=ISSUER_B)))

    assert identity == Identity(ISSUER_B, "alice", identity.claims)


def test_expired_within_leeway_is_accepted(verifier: TokenVerifier, keys: Keys) -> None:
    token = signed(keys.es256, claims(exp=int(NOW - LEEWAY + 1)))

    assert verifier.verify(token).subject == "alice"


def test_not_before_within_leeway_is_accepted(
    verifier: TokenVerifier, keys: Keys
) -> None:
    token = signed(keys.es256, claims(nbf=int(NOW + LEEWAY - 1)))

    assert verifier.verify(token).subject == "alice"


def test_cached_token_is_refused_once_the_clock_passes_exp(
    verifier: TokenVerifier, keys: Keys, clock: Clock
) -> None:
    token = signed(keys.es256, claims(exp=int(NOW + 60)))
    verifier.verify(token)

    clock.now = NOW + 60 + LEEWAY + 1
    with pytest.raises(AuthenticationError, match="token expired at"):
        verifier.verify(token)


def test_cached_token_not_yet_valid_is_refused_until_its_nbf(
    verifier: TokenVerifier, keys: Keys, clock: Clock
) -> None:
    token = signed(keys.es256, claims(nbf=int(NOW + 20)))
    verifier.verify(token)

    clock.now = NOW - LEEWAY
    with pytest.raises(AuthenticationError, match="not valid before"):
        verifier.verify(token)
    clock.now = NOW + 20
    assert verifier.verify(token).subject == "alice"


def count_signature_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    checked: list[str] = []
    real = verifier_module._check_signature

    def counting(token: str, *args: Any) -> None:
        checked.append(token)
        real(token, *args)

    monkeypatch.setattr(verifier_module, "_check_signature", counting)
    return checked


def test_cache_hit_skips_the_signature(
    verifier: TokenVerifier, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked = count_signature_checks(monkeypatch)
    token = signed(keys.es256, claims())

    first = verifier.verify(token)
    second = verifier.verify(token)

    assert first is second
    assert checked == [token]


def test_cache_evicts_the_least_recently_used(
    config: IdentityConfig,
    clock: Clock,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checked = count_signature_checks(monkeypatch)
    verifier = TokenVerifier(config, clock=clock, cache_size=2)
    first, second, third = (
        signed(keys.es256, claims(sub=name)) for name in ("a", "b", "c")
    )

    for token in (first, second, first, third, first, second):
        verifier.verify(token)

    assert checked == [first, second, third, second]


def test_refused_token_is_not_cached(
    verifier: TokenVerifier, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked = count_signature_checks(monkeypatch)
    token = tampered(keys)

    for _ in range(2):
        with pytest.raises(AuthenticationError):
            verifier.verify(token)

    assert checked == [token, token]


def test_authenticate_without_header_is_anonymous(verifier: TokenVerifier) -> None:
    assert verifier.authenticate(None) is None


@pytest.mark.parametrize("scheme", ["Bearer ", "bearer ", "BEARER   "])
def test_authenticate_accepts_bearer_in_any_case(
    verifier: TokenVerifier, keys: Keys, scheme: str
) -> None:
    identity = verifier.authenticate(scheme + signed(keys.es256, claims()))

    assert identity is not None
    assert identity.subject == "alice"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Basic YWxpY2U6c2VjcmV0", "got scheme 'Basic'"),
        ("Bearer", "got no token"),
        ("Bearer   ", "got no token"),
        ("", "got an empty header"),
        ("Bearer one two", "more than one word"),
    ],
)
def test_authenticate_refuses_a_malformed_header(
    verifier: TokenVerifier, header: str, expected: str
) -> None:
    with pytest.raises(AuthenticationError) as refused:
        verifier.authenticate(header)

    assert expected in refused.value.reason
    assert refused.value.code == "invalid_request"


def test_authenticate_never_quotes_a_token_sent_without_scheme(
    verifier: TokenVerifier, keys: Keys
) -> None:
    token = signed(keys.es256, claims())

    with pytest.raises(AuthenticationError) as refused:
        verifier.authenticate(token)

    assert refused.value.code == "invalid_request"
    assert token not in refused.value.reason
    assert "'Bearer ' prefix" in refused.value.reason


def test_authenticate_refuses_a_bad_bearer_token(verifier: TokenVerifier) -> None:
    with pytest.raises(AuthenticationError) as refused:
        verifier.authenticate("Bearer not-a-jwt")

    assert refused.value.code == "invalid_token"


def private_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key))
    return {**jwk, "kid": kid}


def rsa_jwk(bits: int, **extra: Any) -> dict[str, Any]:
    public = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    jwk: dict[str, Any] = json.loads(
        jwt.algorithms.RSAAlgorithm.to_jwk(public.public_key())
    )
    return {**jwk, **extra}


def ec_jwk(kid: str = "k1", **extra: Any) -> dict[str, Any]:
    _, jwks = generate_key("ES256")
    jwk: dict[str, Any] = jwks["keys"][0]
    jwk.pop("alg")
    return {**jwk, "kid": kid, **extra}


JWKS_FAULTS: list[tuple[str, Callable[[], object], tuple[str, ...], str]] = [
    (
        "private key material",
        lambda: {"keys": [private_jwk(ec.generate_private_key(ec.SECP256R1()), "p")]},
        ("ES256",),
        "keys[0] (kid 'p'): holds private key material (d); pin public keys only",
    ),
    (
        "symmetric key",
        lambda: {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]},
        ("ES256",),
        "symmetric keys (kty 'oct') are refused",
    ),
    (
        "duplicate kid",
        lambda: {"keys": [ec_jwk("k1"), ec_jwk("k1")]},
        ("ES256",),
        "keys[1]: kid 'k1' appears twice",
    ),
    (
        "missing kid",
        lambda: {"keys": [{k: v for k, v in ec_jwk().items() if k != "kid"}]},
        ("ES256",),
        "keys[0]: 'kid' is missing",
    ),
    (
        "empty kid",
        lambda: {"keys": [ec_jwk("")]},
        ("ES256",),
        "keys[0]: 'kid' must be a non-empty string",
    ),
    (
        "key unusable by the allowed algorithms",
        lambda: {"keys": [ec_jwk()]},
        ("RS256", "EdDSA"),
        "an EC P-256 key can verify ['ES256'], none of which the issuer allows",
    ),
    (
        "key alg outside the allowed algorithms",
        lambda: {"keys": [rsa_jwk(2048, kid="r", alg="PS256")]},
        ("RS256",),
        "'alg' is 'PS256', which the issuer does not allow",
    ),
    (
        "key alg of another family",
        lambda: {"keys": [ec_jwk(alg="RS256")]},
        ("RS256", "ES256"),
        "'alg' is 'RS256' but this is an EC P-256 key",
    ),
    (
        "short rsa key",
        lambda: {"keys": [rsa_jwk(1024, kid="r")]},
        ("RS256",),
        "RSA key is 1024 bits; at least 2048 are required",
    ),
    (
        "unsupported curve",
        lambda: {"keys": [ec_jwk(crv="P-521")]},
        ("ES256",),
        "EC curve 'P-521' is not supported",
    ),
    (
        "encryption key",
        lambda: {"keys": [ec_jwk(use="enc")]},
        ("ES256",),
        "'use' is 'enc'",
    ),
    (
        "missing modulus",
        lambda: {"keys": [{"kty": "RSA", "e": "AQAB", "kid": "r"}]},
        ("RS256",),
        "'n' must be a non-empty base64url string",
    ),
    (
        "bad coordinates",
        lambda: {"keys": [ec_jwk(x="AAAA")]},
        ("ES256",),
        "not a valid EC public key",
    ),
    ("empty set", lambda: {"keys": []}, ("ES256",), "the set is empty"),
    ("not a set", lambda: [ec_jwk()], ("ES256",), "expected a JWK Set"),
    ("no keys member", lambda: {}, ("ES256",), "without 'keys'"),
    (
        "hmac algorithm allowed",
        lambda: {"keys": [ec_jwk()]},
        ("ES256", "HS256"),
        "must be a non-empty subset",
    ),
]


@pytest.mark.parametrize(
    ("make", "algorithms", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in JWKS_FAULTS],
)
def test_parse_jwks_refuses(
    make: Callable[[], object], algorithms: tuple[str, ...], expected: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(expected)):
        parse_jwks(make(), algorithms)


def test_parse_jwks_binds_an_rsa_key_without_alg_to_every_rsa_algorithm() -> None:
    keys = parse_jwks({"keys": [rsa_jwk(2048, kid="r")]}, ("PS256", "RS512"))

    assert key_fits(keys["r"], "PS256")
    assert key_fits(keys["r"], "RS512")
    assert not key_fits(keys["r"], "ES256")


def test_jwk_thumbprint_matches_rfc_7638_example() -> None:
    # RFC 7638 section 3.1; alg and kid are not part of the thumbprint.
    jwk = {
        "kty": "RSA",
        "n": (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7"
            "aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBX"
            "Arwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9"
            "c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM"
            "4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
        ),
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }

    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize(
    ("algorithm", "default"),
    [("ES256", "ES256"), ("ES384", "ES384"), ("PS384", "RS256"), ("EdDSA", "EdDSA")],
)
def test_generated_key_is_pinned_under_its_thumbprint(
    algorithm: str, default: str
) -> None:
    pem, jwks = generate_key(algorithm)

    (jwk,) = jwks["keys"]
    assert jwk["kid"] == key_id(pem) == jwk_thumbprint(jwk)
    assert jwk["alg"] == algorithm
    assert jwk["use"] == "sig"
    assert default_algorithm(pem) == default
    assert b"BEGIN PRIVATE KEY" in pem
    assert list(parse_jwks(jwks, (algorithm,))) == [jwk["kid"]]


def test_generate_key_refuses_hmac() -> None:
    with pytest.raises(ValueError, match="cannot make a key for algorithm 'HS256'"):
        generate_key("HS256")


def test_issue_token_sets_header_and_time_claims(keys: Keys) -> None:
    token = issue_token(
        keys.es256.pem,
        issuer=ISSUER_A,
        audience=AUDIENCE,
        subject="alice",
        expires_in=60,
        not_before=NOW + 5,
        now=NOW,
    )

    header = jwt.get_unverified_header(token)
    payload = jwt.decode(token, options={"verify_signature": False})
    assert header["kid"] == keys.es256.kid
    assert header["alg"] == "ES256"
    assert payload == claims(iat=int(NOW), nbf=int(NOW + 5), exp=int(NOW + 60))


def test_issue_token_refuses_registered_claims_as_extras(keys: Keys) -> None:
    with pytest.raises(ValueError, match=r"claims \['exp'\] are set from"):
        issue_token(
            keys.es256.pem,
            issuer=ISSUER_A,
            audience=AUDIENCE,
            subject="alice",
            claims={"exp": 1},
        )


def test_issue_token_refuses_an_algorithm_the_key_cannot_make(keys: Keys) -> None:
    with pytest.raises(ValueError, match="algorithm 'RS256' does not fit this key"):
        issue_token(
            keys.es256.pem,
            issuer=ISSUER_A,
            audience=AUDIENCE,
            subject="alice",
            algorithm="RS256",
        )
