from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from gateway.settings import Settings, describe_error
from tests.servers import ROOT


def test_defaults_are_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GATEWAY_UPSTREAM_URL", "GATEWAY_HOST", "GATEWAY_PORT", "GATEWAY_READ_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.upstream_url, settings.host, settings.port) == ("http://127.0.0.1:11434", "127.0.0.1", 8080)
    assert settings.read_timeout >= 300


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_UPSTREAM_URL", "http://ollama:11434/")
    monkeypatch.setenv("GATEWAY_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.1")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.upstream_url == "http://ollama:11434"
    assert settings.trusted_proxies == ("10.0.0.0/8", "192.168.1.1")


def test_the_former_upstream_client_name_still_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_UPSTREAM_CLIENT", "aiohttp")
    assert Settings(_env_file=None).upstream_client == "httptools"  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("GATEWAY_PORT", "eighty", "GATEWAY_PORT"),
        ("GATEWAY_UPSTREAM_URL", "ftp://x", "GATEWAY_UPSTREAM_URL"),
        ("GATEWAY_UPSTREAM_URL", "http://user:pw@x", "GATEWAY_UPSTREAM_URL"),
        ("GATEWAY_TRUSTED_PROXIES", "not-an-ip", "GATEWAY_TRUSTED_PROXIES"),
        ("GATEWAY_LOG_LEVEL", "loud", "GATEWAY_LOG_LEVEL"),
        ("GATEWAY_MAX_BUFFERED_BYTES", "65536", "GATEWAY_MAX_BUFFERED_BYTES must be at least GATEWAY_MAX_BODY_BYTES"),
    ],
)
def test_bad_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)  # type: ignore[call-arg]
    line = describe_error(caught.value)
    assert "\n" not in line
    assert message in line


def test_bad_setting_stops_start_up_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve"],
        env={"PATH": "/usr/bin:/bin", "GATEWAY_PORT": "99999"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("ollama-gateway: invalid configuration: GATEWAY_PORT:")
