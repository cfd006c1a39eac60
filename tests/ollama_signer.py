"""A client that signs requests exactly as Ollama's Go client does with ``OLLAMA_AUTH=1``
(``api/client.go``, ``auth/auth.go``; the facts are in shared/ollama-wire-facts.md, 7.6), written
from those facts with the ``cryptography`` package, reading an OpenSSH key file ``ssh-keygen``
made, as the Go client reads ``~/.ollama/id_ed25519``."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

USER_AGENT = "ollama/0.33.0 (amd64 linux) Go/go1.24.6"


def make_key(folder: Path, comment: str) -> Path:
    """``ssh-keygen -t ed25519`` with no passphrase, as the Go client accepts it; returns the
    private key's path (the public key is beside it, ``.pub``)."""
    assert shutil.which("ssh-keygen"), "ssh-keygen (Debian's openssh-client) is needed"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


def fingerprint_of(public_key_file: Path) -> str:
    """What ``ssh-keygen -lf`` prints as the fingerprint: ``SHA256:…``."""
    printed = subprocess.run(["ssh-keygen", "-lf", str(public_key_file)], check=True, capture_output=True, text=True)
    return printed.stdout.split()[1]


class OllamaSigner:
    def __init__(self, key_file: Path) -> None:
        private = serialization.load_ssh_private_key(key_file.read_bytes(), password=None)
        assert isinstance(private, Ed25519PrivateKey)
        self._private = private
        self.public_file = key_file.with_name(key_file.name + ".pub")
        self.line = self.public_file.read_text().strip()
        self.encoded = self.line.split()[1]

    def authorization(self, method: str, path: str, ts: int) -> str:
        """``<public key>:<signature>`` over ``METHOD,PATH?ts=NOW``: the body is not signed."""
        signature = self._private.sign(f"{method},{path}?ts={ts}".encode())
        return f"{self.encoded}:{base64.b64encode(signature).decode()}"

    def prepare(
        self, method: str, path: str, *, ts: int | None = None, query: dict[str, str] | None = None
    ) -> tuple[str, dict[str, str]]:
        """The URL path with its query (``ts`` set and the query encoded in key order, as
        ``url.Values`` does) and the headers the Go client sends."""
        now = int(time.time()) if ts is None else ts
        params = {**(query or {}), "ts": str(now)}
        headers = {
            "Authorization": self.authorization(method, path, now),
            "User-Agent": USER_AGENT,
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        return f"{path}?{urlencode(sorted(params.items()))}", headers

    def request(
        self, client: httpx.Client, method: str, path: str, body: Any = None, *, ts: int | None = None
    ) -> httpx.Response:
        target, headers = self.prepare(method, path, ts=ts)
        content = None if body is None else json.dumps(body).encode()
        return client.request(method, target, content=content, headers=headers)

    @contextmanager
    def stream(self, client: httpx.Client, method: str, path: str, body: Any) -> Iterator[httpx.Response]:
        target, headers = self.prepare(method, path)
        headers["Accept"] = "application/x-ndjson"
        with client.stream(method, target, content=json.dumps(body).encode(), headers=headers) as response:
            yield response


def signin_url(response: httpx.Response) -> str | None:
    """What the Go client does with a 401: decode the body as ``{"signin_url": …}``."""
    assert response.status_code == 401
    decoded: dict[str, Any] = json.loads(response.content)
    url = decoded.get("signin_url")
    return url if isinstance(url, str) else None
