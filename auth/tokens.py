"""Signed, expiring bearer tokens (JWT) naming a user: HS256 with our secret, or a JWKS.

By default the server signs and verifies its own tokens with HS256 and a configured secret.
Alternatively it verifies tokens of an existing identity provider against the provider's
JWKS (RS256 or ES256). Either way verification pins the algorithms (``none`` is refused, and
so is a token whose algorithm belongs to the other mode: an HS256 token "signed" with a
public key, or an RS256 token in secret mode), requires expiry, subject, audience and
issuer, and tolerates a bounded clock skew. No message raised here contains the token.
Our own HS256 tokens are checked by ``auth.hs256`` (the same checks, in a sixth of PyJWT's
time: a reconnect storm checks thousands a second); a provider's go through PyJWT.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import jwt

from fieldsync.auth.hs256 import ALGORITHM, RefusedTokenError, verify_hs256

AUDIENCE = "fieldsync"
ISSUER = "fieldsync"
JWKS_ALGORITHMS = ("RS256", "ES256")
CLOCK_SKEW_SECONDS = 30
REQUIRED_CLAIMS = ("exp", "sub", "aud", "iss")
DEFAULT_TTL_SECONDS = 12 * 3600


class TokenError(Exception):
    """The token is not acceptable; ``expired`` says whether a fresh one would do."""

    def __init__(self, message: str, *, expired: bool = False, unavailable: bool = False) -> None:
        super().__init__(message)
        self.expired = expired
        self.unavailable = unavailable  # the keys could not be fetched: not the token's fault


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user_id: uuid.UUID
    expires_at: int


def issue_token(
    secret: bytes,
    user_id: uuid.UUID,
    *,
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
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


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_at: str  # ISO 8601, UTC


def issue(secret: bytes, user_id: uuid.UUID, ttl_seconds: int = DEFAULT_TTL_SECONDS) -> IssuedToken:
    """A token for the user with its expiry, as the admin command and API hand it out."""
    now = time.time()
    token = issue_token(secret, user_id, ttl_seconds=ttl_seconds, now=now)
    expires = datetime.fromtimestamp(int(now) + ttl_seconds, UTC).isoformat()
    return IssuedToken(token, expires)


def verify_token(secret: bytes, token: str, now: float | None = None) -> TokenClaims:
    """The claims of a valid token; TokenError (never another exception) otherwise."""
    try:
        claims = verify_hs256(
            token,
            secret,
            audience=AUDIENCE,
            issuer=ISSUER,
            required=REQUIRED_CLAIMS,
            leeway=CLOCK_SKEW_SECONDS,
            now=time.time() if now is None else now,
        )
    except RefusedTokenError as exc:
        if exc.expired:
            raise TokenError("the token has expired", expired=True) from None
        raise TokenError(f"the token is not valid: {exc}") from None
    return _claims(claims)


def _decode(
    token: str, key: Any, algorithms: Sequence[str], audience: str, issuer: str
) -> TokenClaims:
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=list(algorithms),
            audience=audience,
            issuer=issuer,
            leeway=CLOCK_SKEW_SECONDS,
            options={"require": list(REQUIRED_CLAIMS)},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("the token has expired", expired=True) from None
    except jwt.PyJWTError as exc:
        raise TokenError(f"the token is not valid: {exc}") from None
    return _claims(claims)


def _claims(claims: dict[str, Any]) -> TokenClaims:
    try:
        return TokenClaims(uuid.UUID(str(claims["sub"])), int(claims["exp"]))
    except (ValueError, TypeError):
        raise TokenError("the token's subject is not a user id") from None


class TokenVerifier(Protocol):
    """How the server checks bearer tokens (the WebSocket hello and the HTTP endpoints)."""

    @property
    def secret(self) -> bytes | None:
        """The signing secret if this server issues its own tokens, else None."""

    async def verify(self, token: str) -> TokenClaims: ...

    def verify_now(self, token: str) -> TokenClaims | None:
        """The claims when checking is CPU work alone (a secret), so the caller need not
        wait or start a task; None when it must wait for keys (then ``verify``). Raises
        TokenError like ``verify``."""


class SecretVerifier:
    """Tokens this server issued itself, signed with HS256 and its secret."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    @property
    def secret(self) -> bytes | None:
        return self._secret

    async def verify(self, token: str) -> TokenClaims:
        return verify_token(self._secret, token)

    def verify_now(self, token: str) -> TokenClaims | None:
        return verify_token(self._secret, token)


class JwksVerifier:
    """Tokens of an identity provider, checked against the keys its JWKS URL publishes.

    Keys are cached (and the JWKS refetched when a token names an unknown key id); fetching
    runs in a thread so the event loop never waits on the network. Only RS256 and ES256 are
    accepted, and the token's algorithm must be the one of the key it names.
    """

    def __init__(
        self,
        url: str,
        *,
        audience: str = AUDIENCE,
        issuer: str = ISSUER,
        algorithms: Sequence[str] = JWKS_ALGORITHMS,
        timeout: float = 5.0,
    ) -> None:
        unsupported = set(algorithms) - set(JWKS_ALGORITHMS)
        if unsupported:
            raise ValueError(f"JWKS algorithms must be among {JWKS_ALGORITHMS}: {unsupported}")
        self._client = jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=timeout)
        self._audience = audience
        self._issuer = issuer
        self._algorithms = tuple(algorithms)

    @property
    def secret(self) -> bytes | None:
        return None

    def verify_now(self, token: str) -> TokenClaims | None:
        return None  # the keys may have to be fetched: never on the event loop

    async def verify(self, token: str) -> TokenClaims:
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.PyJWTError as exc:
            raise TokenError(f"the token is not valid: {exc}") from None
        if algorithm not in self._algorithms:
            raise TokenError(
                f"the token is not valid: algorithm {str(algorithm)[:16]!r} is not accepted"
            )
        try:
            key = await asyncio.to_thread(self._client.get_signing_key_from_jwt, token)
        except jwt.PyJWKClientConnectionError as exc:
            raise TokenError(f"the token keys cannot be fetched: {exc}", unavailable=True) from None
        except jwt.PyJWTError as exc:
            raise TokenError(f"the token is not valid: {exc}") from None
        if key.algorithm_name != algorithm:
            raise TokenError(
                f"the token is not valid: its key is for {key.algorithm_name}, not {algorithm}"
            )
        return _decode(token, key.key, (algorithm,), self._audience, self._issuer)
