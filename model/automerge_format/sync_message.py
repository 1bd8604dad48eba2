"""A v1 Automerge sync message that carries nothing but raw changes.

The binding has no `apply_changes`; `receive_sync_message` with such a message applies
changes in place at about the cost of a merge, where `load(save() + changes)` reparses the
whole document. The empty heads, need and have lists only reach the SyncState, which the
caller throws away. Malformed changes are dropped silently, and so is every change after
one in the same message, so pass only changes that `parse_change` accepted.
"""

from collections.abc import Sequence

from fieldsync.model.automerge_format.leb128 import encode_uleb128

__all__ = ["changes_message"]

_SYNC_MESSAGE_V1 = b"\x42"
_NO_HEADS_NEED_OR_HAVE = b"\x00\x00\x00"


def changes_message(changes: Sequence[bytes]) -> bytes:
    """Encode `changes` (change chunks, compressed or not) as one sync message."""
    parts = [_SYNC_MESSAGE_V1, _NO_HEADS_NEED_OR_HAVE, encode_uleb128(len(changes))]
    for change in changes:
        parts.append(encode_uleb128(len(change)))
        parts.append(change)
    return b"".join(parts)
