"""Tokens of an identity provider, checked against its JWKS served from a local HTTP server."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from fieldsync.auth.tokens import JwksVerifier, TokenError, issue_token
from fieldsync.sync.errors import CloseCode, ErrorCode
from fieldsync.sync.messages import Error, Hello
from tests.live_server import TEST_SECRET, running_server
from tests.sync_client import SyncClient

USER = uuid.UUID("6f0d3c2a-1b4e-4c5d-9e8f-7a6b5c4d3e2f")
ISSUER = "https://login.glacier-lab.example/"
AUDIENCE = "fieldsync-api"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
STRANGER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwks() -> dict[str, object]:
    rsa_jwk = RSAAlgorithm.to_jwk(RSA_KEY.public_key(), as_dict=True)
    ec_jwk = ECAlgorithm.to_jwk(EC_KEY.public_key(), as_dict=True)
    return {
        "keys": [
            {**rsa_jwk, "kid": "rsa-1", "alg": "RS256", "use": "sig"},
            {**ec_jwk, "kid": "ec-1", "alg": "ES256", "use": "sig"},
        ]
    }


@pytest.fixture(scope="module")
def jwks_url() -> Iterator[str]:
    body = json.dumps(_jwks()).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    finally:
        server.shutdown()
        server.server_close()


def claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    made: dict[str, object] = {
        "sub": str(USER),
        "iat": now,
        "exp": now + 300,
        "aud": AUDIENCE,
        "iss": ISSUER,
    }
    made.update(overrides)
    return made


def rs256(kid: str = "rsa-1", key: Any = RSA_KEY, **overrides: object) -> str:
    return jwt.encode(claims(**overrides), key, algorithm="RS256", headers={"kid": kid})


def es256(kid: str = "ec-1", **overrides: object) -> str:
    return jwt.encode(claims(**overrides), EC_KEY, algorithm="ES256", headers={"kid": kid})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256_with_the_public_key() -> str:
    """The classic confusion: HMAC 'signed' with the RSA public key the verifier holds."""
    public_pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    import hashlib
    import hmac

    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    payload = _b64(json.dumps(claims()).encode())
    signature = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


def _alg_none() -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "rsa-1"}).encode())
    return f"{header}.{_b64(json.dumps(claims()).encode())}."


def _rs256_header_on_the_ec_key() -> str:
    """An RS256 token naming the ES256 key: the algorithm must be the key's own."""
    good = rs256()
    _, payload, signature = good.split(".")
    header = _b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "ec-1"}).encode())
    return f"{header}.{payload}.{signature}"


def verifier(url: str) -> JwksVerifier:
    return JwksVerifier(url, audience=AUDIENCE, issuer=ISSUER)


@pytest.mark.parametrize("make", [rs256, es256], ids=["RS256", "ES256"])
async def test_tokens_signed_by_a_published_key_are_accepted(jwks_url: str, make: Any) -> None:
    accepted = await verifier(jwks_url).verify(make())
    assert accepted.user_id == USER


@pytest.mark.parametrize(
    ("name", "token"),
    [
        ("hs-rs-confusion", _hs256_with_the_public_key()),
        ("alg-none", _alg_none()),
        ("our-own-hs256", issue_token(TEST_SECRET, USER)),
        ("unpublished-key", rs256(key=STRANGER_KEY)),
        ("unknown-kid", rs256(kid="rotated-away")),
        ("alg-of-another-key", _rs256_header_on_the_ec_key()),
        ("wrong-audience", rs256(aud="someone-else")),
        ("wrong-issuer", rs256(iss="https://evil.example/")),
        ("not-a-user-id", rs256(sub="auth0|12345")),
        ("garbage", "not.a.jwt"),
    ],
)
async def test_refused_tokens(jwks_url: str, name: str, token: str) -> None:
    with pytest.raises(TokenError) as refused:
        await verifier(jwks_url).verify(token)
    assert not refused.value.expired
    assert not refused.value.unavailable
    assert token not in str(refused.value)


async def test_an_expired_token_says_so(jwks_url: str) -> None:
    with pytest.raises(TokenError) as refused:
        await verifier(jwks_url).verify(rs256(exp=int(time.time()) - 3600))
    assert refused.value.expired


async def test_an_unreachable_jwks_is_the_servers_problem_not_the_tokens() -> None:
    unreachable = JwksVerifier(
        "http://127.0.0.1:9/jwks.json", audience=AUDIENCE, issuer=ISSUER, timeout=1
    )
    with pytest.raises(TokenError) as refused:
        await unreachable.verify(rs256())
    assert refused.value.unavailable


def test_only_asymmetric_algorithms_can_be_configured() -> None:
    with pytest.raises(ValueError, match="RS256"):
        JwksVerifier("http://127.0.0.1:9/", algorithms=("HS256",))


async def test_a_server_in_jwks_mode_takes_provider_tokens_and_refuses_its_own_kind(
    jwks_url: str, database_url: str
) -> None:
    async with running_server(database_url, verifier=verifier(jwks_url)) as base:
        client = await SyncClient.connect(base)
        welcome = await client.hello(rs256())
        assert welcome.user_id == str(USER)
        await client.close()
        for token in (issue_token(TEST_SECRET, USER), _hs256_with_the_public_key()):
            refused = await SyncClient.connect(base)
            await refused.send(Hello((1,), token, "probe"))
            messages, code = await refused.read_until_closed()
            assert [(m.code, m.fatal) for m in messages if isinstance(m, Error)] == [
                (ErrorCode.INVALID_TOKEN.value, True)
            ]
            assert code == CloseCode.UNAUTHORIZED
