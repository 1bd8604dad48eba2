"""One contract for every blob store: the file system and a real S3-compatible server."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fieldsync.media.blobs import (
    BlobKeyError,
    BlobStore,
    LocalBlobs,
    original_key,
    part_key,
    variant_key,
)


@pytest.fixture(params=["local", "s3"])
def blobs(request: pytest.FixtureRequest) -> BlobStore:
    store: BlobStore = request.getfixturevalue(
        "local_blobs" if request.param == "local" else "s3_blobs"
    )
    return store


async def test_put_read_ranges_size_delete(blobs: BlobStore) -> None:
    key = variant_key("a1", "small")
    assert await blobs.size(key) is None
    await blobs.put(key, b"0123456789")
    assert await blobs.size(key) == 10
    assert await blobs.read(key) == b"0123456789"
    assert await blobs.read(key, 3, 4) == b"3456"
    assert await blobs.read(key, 8) == b"89"
    await blobs.put(key, b"new")
    assert await blobs.read(key) == b"new"
    await blobs.delete([key, variant_key("a1", "large")])  # a missing key is no error
    assert await blobs.size(key) is None
    with pytest.raises(FileNotFoundError):
        await blobs.read(key)


async def test_compose_writes_only_bytes_that_match_their_hash(blobs: BlobStore) -> None:
    pieces = [b"first-", b"second-", b"third"]
    parts = [part_key("up1", i) for i in (0, 6, 13)]
    for key, piece in zip(parts, pieces, strict=True):
        await blobs.put(key, piece)
    whole = b"".join(pieces)
    target = original_key(hashlib.sha256(whole).hexdigest())
    assert not await blobs.compose(parts, target, "0" * 64)
    assert await blobs.size(target) is None
    assert await blobs.compose(parts, target, hashlib.sha256(whole).hexdigest())
    assert await blobs.read(target) == whole


async def test_a_checked_put_hashes_the_chunks_and_keeps_only_matching_bytes(
    blobs: BlobStore,
) -> None:
    chunks = [b"a" * 70_000, b"b" * 5, b"c" * 100_001]
    sha = hashlib.sha256(b"".join(chunks)).hexdigest()
    key = original_key(sha)
    assert not await blobs.put(key, chunks[:2], sha256=sha)  # a chunk short
    assert await blobs.size(key) is None
    assert await blobs.put(key, chunks, sha256=sha)
    assert await blobs.read(key) == b"".join(chunks)


@pytest.mark.parametrize(
    "key", ["../etc/passwd", "originals/ab/../../x", "/abs", "variants/a b/small", ""]
)
async def test_keys_the_server_did_not_make_are_refused(blobs: BlobStore, key: str) -> None:
    with pytest.raises(BlobKeyError):
        await blobs.put(key, b"x")


def test_ids_that_are_not_entity_ids_never_become_keys() -> None:
    for bad in ("../x", "a/b", "", "x" * 65):
        with pytest.raises(BlobKeyError):
            part_key(bad, 0)
        with pytest.raises(BlobKeyError):
            variant_key(bad, "small")


async def test_local_writes_leave_no_temporary_files(local_blobs: LocalBlobs) -> None:
    await local_blobs.put(variant_key("a2", "large"), b"x" * 1000)
    files = [p.name for p in Path(local_blobs.root).rglob("*") if p.is_file()]  # noqa: ASYNC240
    assert files == ["large"]
