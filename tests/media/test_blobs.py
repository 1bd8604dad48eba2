"""One contract for every blob store: the file system and a real S3-compatible server."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


async def test_parts_join_into_a_blob_only_when_they_match_their_hash(blobs: BlobStore) -> None:
    pieces = [[b"first-"], [b"sec", b"ond-"], [b"third"]]
    offsets = (0, 6, 13)
    for offset, piece in zip(offsets, pieces, strict=True):
        await blobs.put_part("up1", offset, piece)
    whole = b"first-second-third"
    sha = hashlib.sha256(whole).hexdigest()
    target = original_key(sha)
    assert not await blobs.join_parts("up1", offsets, len(whole), target, "0" * 64)
    assert await blobs.size(target) is None
    assert await blobs.join_parts("up1", offsets, len(whole), target, sha)
    assert await blobs.read(target) == whole
    await blobs.delete_parts("up1")


@given(
    data=st.binary(min_size=1, max_size=4000),
    cuts=st.lists(st.integers(1, 3999), max_size=6),
    retried=st.lists(st.booleans(), max_size=7),
)
@settings(max_examples=40, deadline=None)
async def test_local_parts_cut_anywhere_and_written_again_join_to_the_bytes(
    data: bytes, cuts: list[int], retried: list[bool]
) -> None:
    """A part sent twice (a retry whose first answer was lost) changes nothing."""
    offsets = sorted({0, *(c for c in cuts if c < len(data))})
    ends = [*offsets[1:], len(data)]
    with tempfile.TemporaryDirectory() as root:
        blobs = LocalBlobs(Path(root))
        for n, (start, end) in enumerate(zip(offsets, ends, strict=True)):
            for _ in range(2 if n < len(retried) and retried[n] else 1):
                await blobs.put_part("prop", start, [data[start:end]])
        sha = hashlib.sha256(data).hexdigest()
        assert await blobs.join_parts("prop", offsets, len(data), original_key(sha), sha)
        assert await blobs.read(original_key(sha)) == data


async def test_a_later_part_of_an_upload_whose_parts_are_gone_is_refused(
    blobs: BlobStore,
) -> None:
    await blobs.put_part("up2", 0, [b"first-"])
    await blobs.delete_parts("up2")
    if isinstance(blobs, LocalBlobs):  # S3 finds out when the parts are joined
        with pytest.raises(FileNotFoundError):
            await blobs.put_part("up2", 6, [b"second"])
    else:
        await blobs.put_part("up2", 6, [b"second"])
    with pytest.raises(FileNotFoundError):
        await blobs.join_parts("up2", (0, 6), 12, original_key("1" * 64), "1" * 64)


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


async def test_delete_parts_removes_every_part_of_one_upload_only(blobs: BlobStore) -> None:
    for offset in (0, 5, 10):
        await blobs.put_part("gone", offset, [b"piece"])
    await blobs.put_part("kept", 0, [b"piece"])
    await blobs.delete_parts("gone")
    with pytest.raises(FileNotFoundError):
        await blobs.join_parts("gone", (0, 5, 10), 15, original_key("2" * 64), "2" * 64)
    kept = hashlib.sha256(b"piece").hexdigest()
    assert await blobs.join_parts("kept", (0,), 5, original_key(kept), kept)
    await blobs.delete_parts("gone")  # nothing left: no error


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
