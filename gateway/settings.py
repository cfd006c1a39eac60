"""Gateway settings: read once at start-up from GATEWAY_* variables (or .env), validated, no I/O."""

from __future__ import annotations

import difflib
import ipaddress
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gateway.database.postgres import redacted
from gateway.fleet.config import check_url, parse_list
from gateway.keys.store import QUOTA_NAMES

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
    # Several Ollama servers instead of one (README, Several Ollama servers): a list,
    # "[name=]URL[;weight=N][;max_concurrency=N]" comma-separated, or a TOML file naming them.
    # Either one replaces upstream_url (which the image and compose file always set).
    upstreams: str = ""
    upstreams_file: str | None = None
    # With several servers: how often each is asked for its version, models and loaded models
    # (seconds); a server that is down is asked again sooner, backing off up to this long.
    upstream_refresh_interval: float = Field(default=10.0, gt=0, le=3600)
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)

    # Ollama sends nothing until the model is loaded and the first token exists (or, with
    # stream:false, until generation ends), so the read timeout must cover minutes. 0 = no limit.
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=600.0, ge=0)
    write_timeout: float = Field(default=60.0, ge=0)
    upstream_max_connections: int = Field(default=1000, ge=1)
    # The HTTP client that talks to Ollama (see README, Performance).
    upstream_client: Literal["httptools", "httpx"] = "httptools"

    # JSON request bodies (everything except /api/blobs uploads) larger than this get a 413.
    max_body_bytes: int = Field(default=100 * MiB, ge=1024)
    # JSON request bodies held in memory at once, across the process: past it, a new body waits
    # (at most queue_timeout seconds) for others to finish, then gets a 503. At least one
    # max_body_bytes body must fit.
    max_buffered_bytes: int = Field(default=256 * MiB, ge=1024)

    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed (IPs or CIDRs, comma-separated).
    trusted_proxies: Annotated[tuple[str, ...], NoDecode] = ()

    # Keys and usage live here; the container points it at its data volume. sqlite:///<path> for
    # one machine; postgresql://user:password@host:5432/db (libpq options such as sslmode in the
    # query) for several replicas sharing one database (the postgres extra).
    database_url: str = "sqlite:///./gateway.db"
    # PostgreSQL only: connections this process opens at most (plus one listening for changes).
    database_pool_size: int = Field(default=5, ge=1, le=100)
    # PostgreSQL only: a statement running longer than this (seconds) is cancelled.
    database_statement_timeout: float = Field(default=5.0, gt=0, le=300)
    # How often the server notices keys changed elsewhere: the CLI, another replica (seconds).
    key_refresh_interval: float = Field(default=1.0, gt=0, le=5)
    # Failed authentications from one address before it is locked out for the window (seconds).
    auth_failure_limit: int = Field(default=10, ge=1)
    auth_failure_window: float = Field(default=60.0, gt=0)
    # Routes acting with the host owner's ollama.com identity, and ":cloud" models.
    allow_cloud: bool = False
    # The ollama command's signed requests: how far their timestamp may be from this clock (seconds).
    signature_max_skew: float = Field(default=300.0, gt=0, le=3600)
    # Where clients reach the gateway (https://gpu.example.com): the base of the sign-in link an
    # unknown Ollama key is sent to. Unset: from the request's Host and scheme.
    public_url: str | None = None
    # Browser origins allowed to call the gateway (comma-separated; "*" = any; wildcards allowed).
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()

    # Limits for keys that set none of their own (empty or "unlimited" = no limit): one per quota
    # of gateway.keys.store.Limits, named default_<quota> (each a documented setting of its own).
    default_rpm: int | None = Field(default=None, ge=0)
    default_tpm: int | None = Field(default=None, ge=0)
    default_tpd: int | None = Field(default=None, ge=0)
    default_concurrency: int | None = Field(default=None, ge=0)
    # Completion tokens reserved when a request sets no cap of its own (trued up afterwards).
    default_max_tokens: int = Field(default=1024, ge=1)
    # Inference requests in flight to Ollama at once; size it to OLLAMA_NUM_PARALLEL times the
    # models kept loaded. The rest wait in a fair queue, at most queue_timeout seconds. 0 = no cap.
    upstream_concurrency: int = Field(default=4, ge=0)
    queue_timeout: float = Field(default=60.0, gt=0)
    # Shared limits for several gateway processes; without it limits live in this process.
    redis_url: str | None = None
    # When Redis is unreachable: serve on local limits (default) or refuse with 503.
    redis_fail_closed: bool = False
    workers: int = Field(default=1, ge=1)

    # The admin API (/admin/api) and web page (/admin/), for keys with the admin scope; false: 404.
    admin_ui: bool = True
    # host:port for a separate admin listener (then the main port answers /admin with 404).
    admin_address: str | None = None

    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    # The access log on stdout: one JSON object per request, or a short text line; "auto" is
    # text on a terminal and JSON otherwise (log shippers, the container).
    log_format: Literal["auto", "json", "text"] = "auto"
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
        return check_url(value)

    @field_validator("upstreams")
    @classmethod
    def _check_upstreams(cls, value: str, info: ValidationInfo) -> str:
        if value.strip():
            parse_list(value)
        return value.strip()

    @field_validator("upstreams_file")
    @classmethod
    def _one_list(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value and info.data.get("upstreams"):
            raise ValueError("set GATEWAY_UPSTREAMS or GATEWAY_UPSTREAMS_FILE, not both")
        return value or None

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError("expected the gateway's base URL, e.g. https://gpu.example.com")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _check_database(cls, value: str) -> str:
        if value.startswith(("postgresql://", "postgres://")):
            if not urlsplit(value).hostname and "host=" not in value:
                raise ValueError("a PostgreSQL URL names its server: postgresql://user:password@host:5432/db")
            return value
        if not value.startswith("sqlite:///") or value == "sqlite:///":
            raise ValueError(
                "must be sqlite:///<path> (e.g. sqlite:////data/gateway.db) or postgresql://user:password@host:5432/db"
            )
        return value

    @field_validator("upstream_client", mode="before")
    @classmethod
    def _former_client(cls, value: object) -> object:
        # "aiohttp" was a choice in earlier versions; its successor keeps such settings starting.
        return "httptools" if isinstance(value, str) and value.strip().lower() == "aiohttp" else value

    @field_validator(*(f"default_{name}" for name in QUOTA_NAMES), mode="before")
    @classmethod
    def _unlimited(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("", "unlimited", "none"):
            return None
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis:// (or rediss://, unix://) URL")
        return value

    @field_validator("workers")
    @classmethod
    def _workers_need_redis(cls, value: int, info: ValidationInfo) -> int:
        if value > 1 and not info.data.get("redis_url"):
            raise ValueError("several workers need GATEWAY_REDIS_URL: in-process limits would be per worker")
        return value

    @field_validator("metrics_address")
    @classmethod
    def _check_metrics_address(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or value == "":
            return None
        if info.data.get("workers", 1) > 1:
            raise ValueError("a separate metrics listener needs GATEWAY_WORKERS=1 (each worker would bind it)")
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

    @field_validator("admin_address")
    @classmethod
    def _check_admin_address(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or value == "":
            return None
        if info.data.get("workers", 1) > 1:
            raise ValueError("a separate admin listener needs GATEWAY_WORKERS=1 (each worker would bind it)")
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be host:port, e.g. 127.0.0.1:9200")
        return value

    @model_validator(mode="after")
    def _one_body_fits(self) -> Settings:
        if self.max_buffered_bytes < self.max_body_bytes:
            raise ValueError("GATEWAY_MAX_BUFFERED_BYTES must be at least GATEWAY_MAX_BODY_BYTES")
        return self

    @model_validator(mode="after")
    def _admin_apart_from_metrics(self) -> Settings:
        if self.admin_address is not None and self.admin_address == self.metrics_address:
            raise ValueError("GATEWAY_ADMIN_ADDRESS and GATEWAY_METRICS_ADDRESS must differ")
        return self


def describe_error(error: ValidationError) -> str:
    """One line naming the offending variable(s), for start-up failures."""
    parts = []
    for item in error.errors():
        if not item["loc"]:
            parts.append(item["msg"].removeprefix("Value error, "))
            continue
        parts.append(f"GATEWAY_{str(item['loc'][0]).upper()}: {item['msg']}")
    return "invalid configuration: " + "; ".join(parts)


PREFIX = "GATEWAY_"


def variable(field: str) -> str:
    """The environment variable that sets a field."""
    return PREFIX + field.upper()


def variables() -> list[str]:
    return [variable(field) for field in Settings.model_fields]


def unknown_variables(sources: dict[str, list[str]]) -> list[str]:
    """One warning per ``GATEWAY_*`` name that no setting reads (``sources``: where each name was
    set, e.g. ``{"the environment": [...], ".env": [...]}``), naming the closest setting: a
    misspelt setting is otherwise silently ignored."""
    known = variables()
    lines = []
    for where, names in sources.items():
        for name in sorted({name.upper() for name in names if name.upper().startswith(PREFIX)} - set(known)):
            # Compared without the prefix, which every name shares and would make any two alike.
            close = difflib.get_close_matches(
                name.removeprefix(PREFIX), [item.removeprefix(PREFIX) for item in known], n=1
            )
            hint = f"did you mean {PREFIX}{close[0]}?" if close else "`ollama-gateway config` lists the settings"
            lines.append(f"{name} (in {where}) is not a setting and is ignored: {hint}")
    return lines


def masked(value: object) -> str:
    """A setting as ``config`` shows it: a password in a URL (``redis://:secret@host``, and
    ``postgresql://…?password=secret``) hidden."""
    text = ",".join(value) if isinstance(value, tuple) else "" if value is None else str(value)
    return redacted(text) if "://" in text else text
