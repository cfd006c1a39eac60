"""Gateway settings: read once at start-up from GATEWAY_* variables (or .env), validated, no I/O."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    # Where Ollama lives. Only scheme, host, port and an optional path prefix are used.
    upstream_url: str = "http://127.0.0.1:11434"
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)

    # Ollama sends nothing until the model is loaded and the first token exists (or, with
    # stream:false, until generation ends), so the read timeout must cover minutes. 0 = no limit.
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=600.0, ge=0)
    write_timeout: float = Field(default=60.0, ge=0)
    upstream_max_connections: int = Field(default=1000, ge=1)

    # JSON request bodies (everything except /api/blobs uploads) larger than this get a 413.
    max_body_bytes: int = Field(default=100 * MiB, ge=1024)

    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed (IPs or CIDRs, comma-separated).
    trusted_proxies: Annotated[tuple[str, ...], NoDecode] = ()

    # Keys and usage live here; the container points it at its data volume.
    database_url: str = "sqlite:///./gateway.db"
    # How often the server notices keys changed by the CLI (seconds).
    key_refresh_interval: float = Field(default=1.0, gt=0, le=5)
    # Failed authentications from one address before it is locked out for the window (seconds).
    auth_failure_limit: int = Field(default=10, ge=1)
    auth_failure_window: float = Field(default=60.0, gt=0)
    # Routes acting with the host owner's ollama.com identity, and ":cloud" models.
    allow_cloud: bool = False
    # Browser origins allowed to call the gateway (comma-separated; "*" = any; wildcards allowed).
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()

    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    # The access log on stdout: one JSON object per request, or a short text line.
    log_format: Literal["json", "text"] = "json"
    # Key names whose request bodies (prompts) are logged; "*" = every key. Default: none.
    log_prompts: Annotated[tuple[str, ...], NoDecode] = ()
    # Usage counts are written to the database this often (seconds); a crash loses at most this.
    usage_flush_interval: float = Field(default=2.0, gt=0, le=60)
    # host:port for a separate /metrics listener. Unset: /metrics on the main port, admin key only.
    metrics_address: str | None = None
    # Seconds in-flight requests get to finish after SIGTERM before they are cut.
    shutdown_grace: float = Field(default=30.0, ge=0)

    @field_validator("upstream_url")
    @classmethod
    def _check_upstream(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:11434")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("must not carry a query, fragment or credentials")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _check_database(cls, value: str) -> str:
        if not value.startswith("sqlite:///") or value == "sqlite:///":
            raise ValueError("must be sqlite:///<path> (e.g. sqlite:////data/gateway.db)")
        return value

    @field_validator("metrics_address")
    @classmethod
    def _check_metrics_address(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be host:port, e.g. 127.0.0.1:9100")
        return value

    @field_validator("trusted_proxies", "cors_origins", "log_prompts", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR") from None
        return value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


def describe_error(error: ValidationError) -> str:
    """One line naming the offending variable(s), for start-up failures."""
    parts = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else "?"
        parts.append(f"GATEWAY_{field.upper()}: {item['msg']}")
    return "invalid configuration: " + "; ".join(parts)
