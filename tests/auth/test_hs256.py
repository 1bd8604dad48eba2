"""Our HS256 check against PyJWT's: on generated tokens, good and bad in every way the
checks look at, both decide the same; where they differ it is only ours refusing what
PyJWT would take (dates written as strings or booleans, padded segments, a ``b64`` header),
never the reverse."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import jwt
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldsync.auth.hs256 import ALGORITHM
from fieldsync.auth.tokens import (
    AUDIENCE,
    CLOCK_SKEW_SECONDS,
    ISSUER,
    REQUIRED_CLAIMS,
    TokenError,
    verify_token,
)

SECRET = b"0123456789abcdef0123456789abcdef"
OTHER = b"fedcba9876543210fedcba9876543210"


def _part(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


NOW = int(time.time())
# Offsets from now, kept well away from the skew's edges (PyJWT reads its own clock).
OFFSETS = (-86_400, -CLOCK_SKEW_SECONDS - 60, -CLOCK_SKEW_SECONDS + 60, 60, 86_400)
TIMES = [v for o in OFFSETS for v in (NOW + o, NOW + o + 0.5, str(NOW + o))]
MISSING = object()
VALID_HEADER: dict[str, object] = {"alg": ALGORITHM, "typ": "JWT"}
VALID_CLAIMS: dict[str, object] = {
    "sub": str(uuid.UUID(int=7)),
    "exp": NOW + 3600,
    "aud": AUDIENCE,
    "iss": ISSUER,
}
# Each defect (or harmless variation) a token may carry: (part, name, value).
CHANGES = (
    [("claims", "sub", v) for v in (MISSING, None, "root", 7, str(uuid.uuid4()))]
    + [("claims", n, v) for n in ("exp", "nbf", "iat") for v in (*TIMES, MISSING, True, None)]
    + [
        ("claims", "aud", v)
        for v in (MISSING, "elsewhere", [AUDIENCE], ["elsewhere", AUDIENCE], [AUDIENCE, 5], [], "")
    ]
    + [("claims", "iss", v) for v in (MISSING, "elsewhere", 5, None)]
    + [("claims", "jti", v) for v in ("a1", 12)]
    + [("header", "alg", v) for v in ("HS512", "none", "RS256", MISSING)]
    + [("header", "kid", v) for v in ("k1", 3)]
    + [("header", "crit", v) for v in (["b64"], ["exp"], [])]
    + [("header", "b64", v) for v in (True, False)]
    + [("header", "typ", MISSING)]
)


def _token(header: dict[str, Any], payload: dict[str, Any], key: bytes, how: str) -> str:
    signing_input = f"{_part(json.dumps(header).encode())}.{_part(json.dumps(payload).encode())}"
    digest = {"HS512": hashlib.sha512}.get(str(header.get("alg")), hashlib.sha256)
    signature = _part(hmac.digest(key, signing_input.encode(), digest))
    if how == "padded":
        signature += "=" * (-len(signature) % 4)
    elif how == "unsigned":
        signature = ""
    elif how == "flipped":
        signature = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    return f"{signing_input}.{signature}"


def _pyjwt(token: str) -> tuple[str, ...]:
    try:
        got = jwt.decode(
            token,
            SECRET,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            leeway=CLOCK_SKEW_SECONDS,
            options={"require": list(REQUIRED_CLAIMS)},
        )
    except jwt.ExpiredSignatureError:
        return ("expired",)
    except jwt.PyJWTError:
        return ("refused",)
    try:
        return ("accepted", str(uuid.UUID(str(got["sub"]))), str(int(got["exp"])))
    except (ValueError, TypeError):
        return ("refused",)


def _ours(token: str) -> tuple[str, ...]:
    try:
        got = verify_token(SECRET, token)
    except TokenError as exc:
        return ("expired",) if exc.expired else ("refused",)
    return ("accepted", str(got.user_id), str(got.expires_at))


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.sampled_from(CHANGES), max_size=2),
    st.sampled_from([SECRET, SECRET, SECRET, OTHER]),
    st.sampled_from(["plain", "plain", "plain", "padded", "unsigned", "flipped"]),
)
def test_our_check_decides_as_pyjwt_does(
    changes: list[tuple[str, str, object]], key: bytes, how: str
) -> None:
    parts = {"header": dict(VALID_HEADER), "claims": dict(VALID_CLAIMS)}
    for part, name, value in changes:
        if value is MISSING:
            parts[part].pop(name, None)
        else:
            parts[part][name] = value
    token = _token(parts["header"], parts["claims"], key, how)
    ours, theirs = _ours(token), _pyjwt(token)
    if ours[0] == "accepted":
        assert theirs == ours
    # PyJWT also takes padded segments, dates written as strings or booleans, and the
    # ``b64`` extension's header when it changes nothing; we never issue those.
    odd = any(isinstance(parts["claims"].get(n), str | bool) for n in ("exp", "nbf", "iat"))
    odd = odd or "b64" in parts["header"] or "crit" in parts["header"]
    if how != "padded" and not odd:
        assert ours == theirs


def test_the_tokens_we_issue_pass_both() -> None:
    token = jwt.encode(
        {"sub": str(uuid.uuid4()), "exp": int(time.time()) + 60, "aud": AUDIENCE, "iss": ISSUER},
        SECRET,
        algorithm=ALGORITHM,
    )
    assert _ours(token)[0] == "accepted"
    assert _ours(token) == _pyjwt(token)
