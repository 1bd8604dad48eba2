"""Bearer tokens: what is accepted and every way a token is refused."""

from __future__ import annotations

import base64
import json
import time
import uuid
import warnings

import jwt
import pytest

from fieldsync.auth.secret import load_secret
from fieldsync.auth.tokens import CLOCK_SKEW_SECONDS, TokenError, issue_token, verify_token

SECRET = b"0123456789abcdef0123456789abcdef"
USER = uuid.UUID("2b1f0c8e-8d4e-4a43-9c3f-6e0a4c7d9b11")


def test_a_fresh_token_names_its_user() -> None:
    claims = verify_token(SECRET, issue_token(SECRET, USER, ttl_seconds=60))
    assert claims.user_id == USER
    assert claims.expires_at > time.time()


def test_expired_tokens_are_refused_beyond_the_tolerated_skew() -> None:
    slightly = issue_token(SECRET, USER, ttl_seconds=60, now=time.time() - 60 - 5)
    assert verify_token(SECRET, slightly).user_id == USER
    expired = issue_token(
        SECRET, USER, ttl_seconds=60, now=time.time() - 60 - CLOCK_SKEW_SECONDS - 5
    )
    with pytest.raises(TokenError) as refused:
        verify_token(SECRET, expired)
    assert refused.value.expired


def _forge(header: dict[str, object], claims: dict[str, object], signature: bytes) -> str:
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return ".".join(
        [part(json.dumps(header).encode()), part(json.dumps(claims).encode()), part(signature)]
    )


def _claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": str(USER),
        "iat": now,
        # Made when the tests are collected: valid for long enough that only the defect
        # each case carries can be why it is refused, however late the case runs.
        "exp": now + 86_400,
        "aud": "fieldsync",
        "iss": "fieldsync",
    }
    claims.update(overrides)
    return claims


def _hs512_same_secret() -> str:
    """Signed with our very secret, but not with the pinned algorithm."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jwt.encode(_claims(), SECRET, algorithm="HS512")


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("", id="empty"),
        pytest.param("a.b.c", id="garbage"),
        pytest.param(_forge({"alg": "none", "typ": "JWT"}, _claims(), b""), id="alg-none"),
        pytest.param(jwt.encode(_claims(), b"x" * 32, algorithm="HS256"), id="other-secret"),
        pytest.param(
            jwt.encode(_claims(aud="elsewhere"), SECRET, algorithm="HS256"), id="wrong-audience"
        ),
        pytest.param(
            jwt.encode(_claims(iss="elsewhere"), SECRET, algorithm="HS256"), id="wrong-issuer"
        ),
        pytest.param(
            jwt.encode(_claims(sub="root"), SECRET, algorithm="HS256"), id="subject-not-a-user-id"
        ),
        pytest.param(
            jwt.encode(
                {k: v for k, v in _claims().items() if k != "exp"}, SECRET, algorithm="HS256"
            ),
            id="no-expiry",
        ),
        pytest.param(_hs512_same_secret(), id="other-algorithm-same-secret"),
        pytest.param(
            _forge({"alg": "RS256", "typ": "JWT"}, _claims(), b"\x01" * 256),
            id="asymmetric-algorithm",
        ),
    ],
)
def test_refused_tokens(token: str) -> None:
    with pytest.raises(TokenError) as refused:
        verify_token(SECRET, token)
    assert not refused.value.expired


def test_a_tampered_payload_fails_the_signature() -> None:
    header, _, signature = issue_token(SECRET, USER).split(".")
    other = base64.urlsafe_b64encode(json.dumps(_claims(sub=str(uuid.uuid4()))).encode())
    with pytest.raises(TokenError):
        verify_token(SECRET, f"{header}.{other.rstrip(b'=').decode()}.{signature}")


def test_the_secret_is_generated_once_and_kept_private(tmp_path: object) -> None:
    from pathlib import Path

    data_dir = Path(str(tmp_path))
    first = load_secret(data_dir, environ={})
    assert len(first) == 64
    assert load_secret(data_dir, environ={}) == first
    assert (data_dir / "token-secret").stat().st_mode & 0o777 == 0o600
    assert load_secret(data_dir, environ={"FIELDSYNC_SECRET": "s" * 40}) == b"s" * 40
    with pytest.raises(ValueError, match="at least 32"):
        load_secret(data_dir, environ={"FIELDSYNC_SECRET": "short"})
