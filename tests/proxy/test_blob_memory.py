"""A model blob is streamed through the gateway, never held in memory."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ALL_SCOPES, issue_key
from tests.fake_ollama import FakeOllama
from tests.servers import gateway_process

pytestmark = pytest.mark.timeout(120)

BLOCK = 1024 * 1024
BLOCKS = 256


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} missing")


def _blocks(seed: bytes) -> Iterator[bytes]:
    for index in range(BLOCKS):
        yield index.to_bytes(4, "big") + seed[4:]


def test_256_mib_blob_upload_is_streamed(fake: FakeOllama, database_url: str) -> None:
    key = issue_key(database_url, "uploader", scopes=ALL_SCOPES)
    seed = os.urandom(BLOCK)
    digest = hashlib.sha256()
    for block in _blocks(seed):
        digest.update(block)
    name = "sha256:" + digest.hexdigest()
    env = {"GATEWAY_UPSTREAM_URL": fake.url, "GATEWAY_DATABASE_URL": database_url}
    with (
        gateway_process(env) as gateway,
        httpx.Client(timeout=60, headers={"Authorization": f"Bearer {key}"}) as client,
    ):
        assert client.get(gateway.url + "/api/version").status_code == 200
        before = _kib(gateway.process.pid, "VmRSS")
        # No Content-Length: streamed chunked, as the Go CLI does.
        response = client.post(f"{gateway.url}/api/blobs/{name}", content=_blocks(seed))
        peak = _kib(gateway.process.pid, "VmHWM")
    assert response.status_code == 201
    recorded = fake.requests[-1]
    assert recorded.body_size == BLOCK * BLOCKS
    assert recorded.body_sha256 == digest.hexdigest()
    assert name in fake.blobs
    growth_mib = (peak - before) / 1024
    assert growth_mib < 64, f"gateway memory grew by {growth_mib:.0f} MiB"
