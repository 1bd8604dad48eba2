"""The Python codec against the checked-in conformance vectors (``contract/vectors``).

The same files drive the TypeScript codec's tests, so both implementations agree frame for
frame: a valid frame decodes to the message its JSON shows (and a canonical one is what
``encode`` writes, byte for byte); an invalid one is refused with its error code.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import msgpack
import pytest

from fieldsync.model.limits import DEFAULT_LIMITS
from fieldsync.sync.codec import ProtocolViolation, decode_client, decode_server, encode
from fieldsync.sync.vectors import to_json

VECTORS = Path(__file__).resolve().parents[2] / "contract" / "vectors"
INDEX = json.loads((VECTORS / "index.json").read_text())["vectors"]


def _load(path: str) -> tuple[dict[str, Any], bytes]:
    spec = json.loads((VECTORS / f"{path}.json").read_text())
    return spec, (VECTORS / f"{path}.msgpack").read_bytes()


def _decode(spec: dict[str, Any], frame: bytes) -> Any:
    limits = dataclasses.replace(DEFAULT_LIMITS, **spec.get("limits", {}))
    decode = decode_client if spec["direction"] == "client_to_server" else decode_server
    return decode(frame, limits)


def test_every_message_type_has_a_canonical_vector_in_its_direction() -> None:
    seen: dict[str, set[str]] = {}
    for entry in INDEX:
        spec, _ = _load(entry["path"])
        if spec["valid"] and spec["canonical"]:
            seen.setdefault(spec["direction"], set()).add(spec["message"]["t"])
    assert seen["client_to_server"] == {"hello", "subscribe", "unsubscribe", "push"}
    assert seen["server_to_client"] == {
        "welcome", "project_error", "snapshot_begin", "snapshot_chunk", "snapshot_end",
        "changes", "conflicts", "synced", "push_result", "error", "status",
    }


@pytest.mark.parametrize("path", [e["path"] for e in INDEX if e["valid"]])
def test_valid_vector(path: str) -> None:
    spec, frame = _load(path)
    message = _decode(spec, frame)
    assert to_json(msgpack.unpackb(encode(message), raw=False)) == spec["message"]
    if spec["canonical"]:
        assert encode(message) == frame


@pytest.mark.parametrize("path", [e["path"] for e in INDEX if not e["valid"]])
def test_invalid_vector(path: str) -> None:
    spec, frame = _load(path)
    with pytest.raises(ProtocolViolation) as refused:
        _decode(spec, frame)
    assert refused.value.code.value == spec["error"]["code"]
    assert refused.value.push_id == spec["error"]["push_id"]
