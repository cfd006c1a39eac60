"""What a newcomer sees when the gateway starts: where it forwards, whether that answered, how to
make the first key; and a readable access log on a terminal, JSON everywhere else."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import pty
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from uvicorn.lifespan.on import LifespanOn

from gateway.app import create_app
from gateway.keys.keyring import Keyring
from gateway.keys.management import KeyAdmin
from gateway.keys.store import open_keystore
from gateway.observe.accesslog import chosen_format
from gateway.runtime.server import uvicorn_config
from gateway.runtime.shutdown import GatewayServer
from tests.conftest import gateway_settings, issue_key
from tests.fake_ollama import FakeOllama
from tests.servers import ROOT, free_port, gateway_process, stop_process

pytestmark = pytest.mark.timeout(30)

NO_KEY = "no API key exists yet, so every request gets 401: create one with `{} keys create <name>`"


def test_a_gateway_without_ollama_or_keys_says_so(database_url: str) -> None:
    port = free_port()
    upstream = f"http://127.0.0.1:{port}"
    env = {"GATEWAY_UPSTREAM_URL": upstream, "GATEWAY_DATABASE_URL": database_url}
    with gateway_process(env) as gateway:
        line = gateway.stderr.wait_for("forwarding to")
        assert line.startswith("WARNING:")
        assert line.rstrip().endswith(
            f"forwarding to {upstream} (GATEWAY_UPSTREAM_URL), which does not answer "
            f"(upstream 127.0.0.1:{port} unavailable: Connection refused): requests get 502"
        )
        # Run as ``python -m gateway``: the hint is this interpreter's, runnable as printed.
        assert gateway.stderr.wait_for(NO_KEY.format(f"{sys.executable} -m gateway")).startswith("WARNING:")


def test_one_server_that_was_down_is_named_when_it_answers(database_url: str) -> None:
    port = free_port()
    env = {"GATEWAY_UPSTREAM_URL": f"http://127.0.0.1:{port}", "GATEWAY_DATABASE_URL": database_url}
    with gateway_process(env) as gateway, FakeOllama([], port=port):
        line = gateway.stderr.wait_for("answers now")
    assert line.rstrip().endswith(f"gateway: http://127.0.0.1:{port} answers now: Ollama 0.33.0")


def test_a_host_that_does_not_resolve_is_named_with_its_setting(database_url: str) -> None:
    env = {"GATEWAY_UPSTREAM_URL": "http://no-such-host.invalid:11434", "GATEWAY_DATABASE_URL": database_url}
    with gateway_process(env) as gateway:
        line = gateway.stderr.wait_for("forwarding to")
        gateway.stop()
    assert line.startswith("WARNING:")
    assert (
        "forwarding to http://no-such-host.invalid:11434 (GATEWAY_UPSTREAM_URL), which does not answer (upstream "
        in line
    )
    assert "unavailable: the host name no-such-host.invalid does not resolve (" in line


@pytest.mark.parametrize("suffix", ["/api", "/api/", "/v1", "/ollama/v1"])
def test_an_upstream_url_ending_in_api_or_v1_is_refused_with_the_base_url(suffix: str, tmp_path: Path) -> None:
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")},
        "GATEWAY_UPSTREAM_URL": f"http://127.0.0.1:11434{suffix}",
    }
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30
    )
    last = suffix.rstrip("/").rpartition("/")[2]
    base = "http://127.0.0.1:11434" + suffix.rstrip("/")[: -len(last) - 1]
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"ollama-gateway: invalid configuration: GATEWAY_UPSTREAM_URL: Value error, must be Ollama's base URL, "
        f"without /{last}: {base} (the gateway adds /api/… and /v1/… itself)\n"
    )
    assert os.listdir(tmp_path) == []


def test_the_hint_names_the_installed_command_by_its_path_when_it_is_not_on_path(tmp_path: Path) -> None:
    program = Path(sys.executable).parent / "ollama-gateway"
    env = {
        "PATH": "/usr/bin:/bin",
        "GATEWAY_UPSTREAM_URL": f"http://127.0.0.1:{free_port()}",
        "GATEWAY_DATABASE_URL": "sqlite:///./gw.db",
    }
    with gateway_process(env, cwd=tmp_path, program=(str(program),), inherit=False) as gateway:
        hint = gateway.stderr.wait_for("no API key")
    assert hint.rstrip().endswith(NO_KEY.format(program))
    assert [line for line in gateway.stderr.lines if "database" in line] == [
        f"INFO:     gateway: keys and usage are in the database {tmp_path.resolve() / 'gw.db'}\n"
    ]


def test_a_healthy_start_names_the_upstream_and_its_version(fake: FakeOllama, database_url: str) -> None:
    issue_key(database_url, "someone")
    env = {"GATEWAY_UPSTREAM_URL": fake.url, "GATEWAY_DATABASE_URL": database_url}
    with gateway_process(env) as gateway:
        line = gateway.stderr.wait_for("forwarding to")
        gateway.stop()
    assert line.startswith("INFO:")
    assert line.rstrip().endswith(f"forwarding to {fake.url}: Ollama 0.33.0 answered")
    assert not [text for text in gateway.stderr.lines if "no API key" in text]


async def test_only_a_key_that_can_authenticate_counts(database_url: str) -> None:
    store = open_keystore(database_url)
    try:
        issue_key(database_url, "old", expires_at=time.time() - 1)
        issue_key(database_url, "gone")
        KeyAdmin(store).revoke(store.get("gone").id)
        keyring = Keyring(lambda: open_keystore(database_url))
        await keyring.start()
        try:
            assert not keyring.has_usable_key()
            issue_key(database_url, "current")
            await keyring.catch_up()
            assert keyring.has_usable_key()
        finally:
            await keyring.close()
    finally:
        store.close()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_log_format_is_text_on_a_terminal_and_json_otherwise() -> None:
    assert chosen_format("auto", _Terminal()) == "text"
    assert chosen_format("auto", io.StringIO()) == "json"
    assert chosen_format("json", _Terminal()) == "json"
    assert chosen_format("text", io.StringIO()) == "text"
    closed = io.StringIO()
    closed.close()
    assert chosen_format("auto", closed) == "json"


def _read_line_containing(fd: int, text: bytes, deadline: float) -> bytes:
    received = b""
    while text not in received:
        readable, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        assert readable, f"nothing with {text!r} on the terminal: {received!r}"
        received += os.read(fd, 65536)
    return next(line for line in received.splitlines() if text in line)


def test_serve_on_a_terminal_logs_text_lines(fake: FakeOllama, database_url: str, tmp_path: Path) -> None:
    key = issue_key(database_url, "terminal")
    port = free_port()
    env = {
        **os.environ,
        "GATEWAY_UPSTREAM_URL": fake.url,
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
    }
    env.pop("GATEWAY_LOG_FORMAT", None)
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve"], env=env, cwd=ROOT, stdout=secondary, stderr=secondary
    )
    os.close(secondary)
    try:
        deadline = time.monotonic() + 20
        _read_line_containing(primary, b"Uvicorn running on", deadline)
        response = httpx.get(f"http://127.0.0.1:{port}/api/tags", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200
        line = _read_line_containing(primary, b" GET /api/tags ", deadline).decode()
        assert " 200 GET /api/tags " in line
        assert "key=terminal" in line
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)
    finally:
        stop_process(process)
        os.close(primary)


def test_the_start_up_lines_come_after_the_server_listens_in_order(
    fake: FakeOllama, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ollama answering before the socket is bound (a quick server, a slow bind) must not put the
    gateway's lines among uvicorn's: they come after "running on", the database first."""
    settings = gateway_settings(upstream_url=fake.url, database_url=database_url, host="127.0.0.1", port=free_port())
    app = create_app(settings)
    server = GatewayServer(uvicorn_config(settings, app), app, grace=1)
    lines: list[str] = []
    said = _Said(lines)
    real_startup = LifespanOn.startup

    async def slow_bind(self: LifespanOn) -> None:
        # The application has started; Ollama is asked and answers before the socket is bound.
        await real_startup(self)
        await asyncio.to_thread(fake.wait_for_request)
        # A line that comes now comes too early: give it its chance (it must not come).
        await asyncio.to_thread(said.wait_for, "forwarding to", 1.0, must=False)

    monkeypatch.setattr(LifespanOn, "startup", slow_bind)
    loggers = [logging.getLogger("uvicorn.error"), logging.getLogger("gateway")]
    for logger in loggers:
        logger.addHandler(said)
        monkeypatch.setattr(logger, "level", logging.INFO)
    thread = threading.Thread(target=server.run, daemon=True)
    try:
        thread.start()
        said.wait_for("no API key exists yet", 10.0)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        for logger in loggers:
            logger.removeHandler(said)
    starts = ("Uvicorn running on", "keys and usage are in the database", f"forwarding to {fake.url}", "no API key")
    assert [start for line in lines for start in starts if line.startswith(start)] == list(starts)


class _Said(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__()
        self.lines = lines
        self._said = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._said:
            self.lines.append(record.getMessage())
            self._said.notify_all()

    def wait_for(self, start: str, timeout: float, *, must: bool = True) -> None:
        with self._said:
            if not self._said.wait_for(lambda: any(line.startswith(start) for line in self.lines), timeout) and must:
                raise TimeoutError(f"no line starting {start!r} in {self.lines}")
