"""Opaque page cursors: the sort key of the last item sent, bound to its query.

A cursor is ``base64url(JSON key) "." base64url(tag)``, where the tag is a keyed BLAKE2b
of the endpoint, the query's filters and the key. It is not secret and grants nothing
(every page is authorised on its own); the tag only makes a cursor that was damaged,
made up, or taken from another query (other filters, another endpoint, another project)
a clear 400 instead of a silently wrong page. Keyset pagination: the next page starts
strictly after the key, so pages never repeat an item, and an item inserted or removed
between pages moves nothing else.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Any

import msgspec

from fieldsync.query.params import BadParameterError

# Integrity, not secrecy: a fixed key, so every server process reads every cursor.
_KEY = b"fieldsync query cursor v1"
_TAG_BYTES = 12


def _tag(scope: bytes, payload: bytes) -> bytes:
    return hashlib.blake2b(scope + b"\0" + payload, key=_KEY, digest_size=_TAG_BYTES).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_cursor(scope: bytes, key: Any) -> str:
    """The cursor for the page after ``key`` in the query ``scope`` names."""
    payload = msgspec.json.encode(key)
    return f"{_b64(payload)}.{_b64(_tag(scope, payload))}"


def decode_cursor(scope: bytes, cursor: str, key_type: Any) -> Any:
    """The key a cursor of this query holds, as ``key_type`` (a tuple type);
    BadParameterError for anything else."""
    body, dot, tag = cursor.partition(".")
    try:
        if not dot or not body.isascii() or not tag.isascii():
            raise ValueError
        payload, given = _unb64(body), _unb64(tag)
    except (ValueError, binascii.Error):
        raise BadParameterError("cursor", "is not a cursor this API gave out") from None
    if not hmac.compare_digest(given, _tag(scope, payload)):
        raise BadParameterError(
            "cursor",
            "does not belong to this query: pass the next_cursor of the previous page with "
            "the same other parameters",
        )
    try:
        return msgspec.json.decode(payload, type=key_type)
    except msgspec.ValidationError:  # a tag that matches a key of another shape
        raise BadParameterError("cursor", "is not a cursor of this endpoint") from None
