"""Checking an HS256 token signed with our own secret, without PyJWT's general machinery.

A reconnect storm checks thousands of tokens a second, and PyJWT's ``decode`` spent about
64 us on each (its per-character alphabet checks, preparing the key again every time,
options merged per call), a fifth of what a whole resume may cost. This does the same checks
for the one algorithm and key kind the server issues, in about a sixth of the time:

- three segments of the base64url alphabet, no padding; the signature compared, in constant
  time, as the canonical encoding of HMAC-SHA256 over the first two (so no second spelling
  of a signature passes), before any JSON is parsed;
- a header that is a JSON object whose ``alg`` is exactly HS256, with no ``crit``
  extensions, no unencoded payload (``b64``), a string ``kid`` if any;
- required claims present and not null; ``exp``, ``nbf`` and ``iat`` numbers (never
  booleans), the token not expired and not yet valid beyond the tolerated skew; ``iss``
  equal to ours; ``aud`` ours, or a list of strings holding ours; ``sub`` and ``jti`` strings.

Every token it accepts PyJWT accepts with the same claims (``tests/auth`` checks this on
generated tokens); it refuses some PyJWT would take (padded segments, numbers written as
strings), which our tokens never are.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Sequence
from typing import Any

ALGORITHM = "HS256"
MAX_TOKEN_CHARS = 8192  # far above any token we issue: a longer one is not parsed
_SEGMENTS = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)")
_JSON = json.JSONDecoder()


class RefusedTokenError(Exception):
    """Why the token is not acceptable (``expired``: a fresh one would do)."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


def verify_hs256(
    token: str,
    secret: bytes,
    *,
    audience: str,
    issuer: str,
    required: Sequence[str],
    leeway: float,
    now: float,
) -> dict[str, Any]:
    """The claims of ``token`` if every check above passes; raises RefusedTokenError otherwise."""
    if len(token) > MAX_TOKEN_CHARS:
        raise RefusedTokenError("the token is too long")
    parts = _SEGMENTS.fullmatch(token)
    if parts is None:
        raise RefusedTokenError("the token is not three base64url segments")
    header_part, payload_part, signature = parts.groups()
    signing_input = token[: len(header_part) + 1 + len(payload_part)].encode("ascii")
    mac = hmac.digest(secret, signing_input, hashlib.sha256)
    expected = base64.urlsafe_b64encode(mac).rstrip(b"=")
    if not hmac.compare_digest(expected, signature.encode("ascii")):
        raise RefusedTokenError("signature verification failed")
    header = _object(header_part, "header")
    if header.get("alg") != ALGORITHM:
        raise RefusedTokenError("the algorithm is not allowed")
    if "crit" in header or "b64" in header:
        raise RefusedTokenError("the header names extensions that are not supported")
    if "kid" in header and not isinstance(header["kid"], str):
        raise RefusedTokenError("the key id must be a string")
    claims = _object(payload_part, "payload")
    for name in required:
        if claims.get(name) is None:
            raise RefusedTokenError(f'the token is missing the "{name}" claim')
    if "iat" in claims and _number(claims["iat"], "iat") > now + leeway:
        raise RefusedTokenError("the token is not yet valid (iat)")
    if "nbf" in claims and _number(claims["nbf"], "nbf") > now + leeway:
        raise RefusedTokenError("the token is not yet valid (nbf)")
    if "exp" in claims and _number(claims["exp"], "exp") <= now - leeway:
        raise RefusedTokenError("the token has expired", expired=True)
    if claims.get("iss") != issuer:
        raise RefusedTokenError("invalid issuer")
    audiences = claims.get("aud")
    if isinstance(audiences, str):
        audiences = [audiences]
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise RefusedTokenError("invalid audience claim format")
    if audience not in audiences:
        raise RefusedTokenError("the audience does not match")
    for name in ("sub", "jti"):
        if name in claims and not isinstance(claims[name], str):
            raise RefusedTokenError(f'the "{name}" claim must be a string')
    return claims


def _object(segment: str, name: str) -> dict[str, Any]:
    try:
        text = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)).decode()
        value = _JSON.decode(text)  # JWT JSON is UTF-8 (RFC 7519)
    except (ValueError, RecursionError):
        raise RefusedTokenError(f"the {name} is not JSON") from None
    if not isinstance(value, dict):
        raise RefusedTokenError(f"the {name} is not a JSON object")
    return value


def _number(value: object, name: str) -> int:
    """A numeric date claim as PyJWT reads it (truncated to whole seconds)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RefusedTokenError(f'the "{name}" claim must be a number')
    try:
        return int(value)
    except (ValueError, OverflowError):  # NaN, infinity
        raise RefusedTokenError(f'the "{name}" claim must be a number') from None
