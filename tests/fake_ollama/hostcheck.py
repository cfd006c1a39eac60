"""Ollama's DNS-rebinding guard and CORS origin check (opt-in in the fake)."""

from __future__ import annotations

import ipaddress
import socket

from .records import RecordedRequest

_DEFAULT_ORIGINS = (
    *(
        f"{scheme}://{host}{port}"
        for host in ("localhost", "127.0.0.1", "0.0.0.0")
        for scheme in ("http", "https")
        for port in ("", ":*")
    ),
    *("app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*"),
)

PREFLIGHT_HEADERS = (
    ("access-control-allow-methods", "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"),
    (
        "access-control-allow-headers",
        "Authorization,Content-Type,User-Agent,Accept,X-Requested-With,OpenAI-Beta,"
        "x-stainless-arch,x-stainless-async,x-stainless-custom-poll-interval,"
        "x-stainless-helper-method,x-stainless-lang,x-stainless-os,"
        "x-stainless-package-version,x-stainless-poll-helper,x-stainless-retry-count,"
        "x-stainless-runtime,x-stainless-runtime-version,x-stainless-timeout",
    ),
    ("access-control-max-age", "43200"),
)


def host_allowed(host_header: str) -> bool:
    host = _strip_port(host_header).lower()
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        return address.is_loopback or address.is_private or address.is_unspecified
    if host in ("", "localhost", socket.gethostname().lower()):
        return True
    return host.endswith((".localhost", ".local", ".internal"))


def origin_allowed(origin: str, host_header: str) -> bool:
    if origin in (f"http://{host_header}", f"https://{host_header}"):
        return True  # same origin, e.g. fetch() from a page served by Ollama itself
    return any(_matches(pattern, origin) for pattern in _DEFAULT_ORIGINS)


def cors_headers(record: RecordedRequest) -> list[tuple[str, str]] | None:
    """None: refuse with 403. Otherwise the CORS headers to add (maybe none)."""
    origin = record.header("origin")
    host = record.header("host") or ""
    if origin and not origin_allowed(origin, host):
        return None
    if not host_allowed(host):
        return None
    if not origin or origin in (f"http://{host}", f"https://{host}"):
        return []
    return [("access-control-allow-origin", origin), ("vary", "Origin")]


def _strip_port(host: str) -> str:
    """net.SplitHostPort, keeping the whole value when it has no port."""
    if host.startswith("["):
        end = host.find("]:")
        return host[1:end] if end > 0 else host
    name, sep, _ = host.rpartition(":")
    return name if sep and ":" not in name else host


def _matches(pattern: str, origin: str) -> bool:
    if "*" not in pattern:
        return origin == pattern
    prefix, suffix = pattern.split("*", 1)
    return origin.startswith(prefix) and origin.endswith(suffix) and len(origin) >= len(pattern) - 1
