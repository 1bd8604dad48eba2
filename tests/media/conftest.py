"""A real S3-compatible server (moto's server mode, in a process of its own) and the blob
stores the attachment tests run against."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import boto3
import httpx
import pytest

from fieldsync.media.blobs import LocalBlobs, S3Blobs
from tests.live_server import free_port

S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """``moto_server`` on a free port: a real HTTP S3 endpoint, stopped after the session."""
    port = free_port()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.get(url + "/moto-api/", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        else:
            raise RuntimeError("moto_server did not start")
        for name, value in S3_KEYS.items():
            os.environ.setdefault(name, value)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def new_bucket(endpoint: str) -> str:
    name = f"fs-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    client.create_bucket(Bucket=name)
    client.close()
    return name


@pytest.fixture
async def s3_blobs(s3_endpoint: str) -> AsyncIterator[S3Blobs]:
    blobs = S3Blobs(
        new_bucket(s3_endpoint), endpoint_url=s3_endpoint,
        access_key="testing", secret_key="testing",
    )  # fmt: skip
    yield blobs
    await blobs.close()


@pytest.fixture
def local_blobs(tmp_path: Path) -> LocalBlobs:
    return LocalBlobs(tmp_path / "attachments")
