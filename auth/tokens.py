"""Signed, expiring bearer tokens (JWT, HS256) naming a user.

Verification pins the algorithm (a token claiming ``none`` or an asymmetric algorithm is
refused), requires expiry, subject, audience and issuer, and tolerates a bounded clock skew
between the issuer and this server.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import jwt

AUDIENCE = "fieldsync"
ISSUER = "fieldsync"
ALGORITHM = "HS256"
CLOCK_SKEW_SECONDS = 30
DEFAULT_TTL_SECONDS = 12 * 3600


class TokenError(Exception):
    """The token is not acceptable; ``expired`` says whether a fresh one would do."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user_id: uuid.UUID
    expires_at: int


def issue_token(
    secret: bytes, user_id: uuid.UUID, *, ttl_seconds: int = DEFAULT_TTL_SECONDS,
    now: float | None = None,
) -> str:
    issued = int(time.time() if now is None else now)
    claims = {
        "sub": str(user_id),
        "iat": issued,
        "exp": issued + ttl_seconds,
        "aud": AUDIENCE,
        "iss": ISSUER,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(secret: bytes, token: str) -> TokenClaims:
    """The claims of a valid token; TokenError (never another exception) otherwise."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            leeway=CLOCK_SKEW_SECONDS,
            options={"require": ["exp", "sub", "aud", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("the token has expired", expired=True) from None
    except jwt.PyJWTError as exc:
        raise TokenError(f"the token is not valid: {exc}") from None
    try:
        return TokenClaims(uuid.UUID(str(claims["sub"])), int(claims["exp"]))
    except (ValueError, TypeError):
        raise TokenError("the token's subject is not a user id") from None
