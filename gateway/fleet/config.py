"""Which Ollama servers the gateway fronts: one URL, a list in one variable, or a TOML file.

``GATEWAY_UPSTREAM_URL`` names one server. ``GATEWAY_UPSTREAMS`` lists several, comma-separated,
each ``[name=]URL[;weight=N][;max_concurrency=N]``; ``GATEWAY_UPSTREAMS_FILE`` names a TOML file
with one ``[[upstream]]`` table per server (``name``, ``url``, ``weight``, ``max_concurrency``).
Parsing is pure; reading the file is the one piece of I/O, done once at start-up.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from gateway.ollama.surfaces import is_forwarded
from gateway.proxy.upstream import address

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_OPTIONS = ("weight", "max_concurrency")


class FleetConfigError(ValueError):
    """A bad upstream list; the message starts with the setting it came from."""


@dataclass(frozen=True, slots=True)
class MemberSpec:
    name: str
    url: str
    weight: int = 1
    # In-flight inference requests on this server; None: GATEWAY_UPSTREAM_CONCURRENCY; 0: no cap
    # (as for that setting).
    max_concurrency: int | None = None


def check_url(value: str) -> str:
    """An upstream base URL: http(s), a host, no query, fragment or credentials."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:11434")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("must not carry a query, fragment or credentials")
    try:
        parts.port  # noqa: B018 - a bad port raises only when read
    except ValueError:
        raise ValueError("has an invalid port") from None
    suffix = parts.path.rstrip("/").rpartition("/")[2]
    if suffix and is_forwarded(f"/{suffix}/"):
        # The gateway forwards /api/chat as <base>/api/chat: a base ending in /api (or /v1) would
        # send every request to /api/api/chat, and every one would fail as a 404.
        base = value.rstrip("/")[: -len(suffix) - 1]
        raise ValueError(
            f"must be Ollama's base URL, without /{suffix}: {base} (the gateway adds /api/… and /v1/… itself)"
        )
    return value.rstrip("/")


def parse_list(text: str) -> tuple[MemberSpec, ...]:
    """``GATEWAY_UPSTREAMS``: ``gpu-a=http://10.0.0.5:11434;max_concurrency=4,http://10.0.0.6:11434``."""
    entries: list[dict[str, object]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        first, *options = (piece.strip() for piece in item.split(";"))
        name, separator, url = (part.strip() for part in first.partition("="))
        entry: dict[str, object] = {"url": url} if separator and "://" not in name else {"url": first}
        if separator and "://" not in name:
            entry["name"] = name
        for option in filter(None, options):
            key, separator, value = option.partition("=")
            if not separator:
                raise ValueError(f"{option!r}: options are key=value ({', '.join(_OPTIONS)})")
            entry[key.strip()] = value.strip()
        entries.append(entry)
    return members(entries)


def load_file(path: str) -> tuple[MemberSpec, ...]:
    """``GATEWAY_UPSTREAMS_FILE``: ``[[upstream]]`` tables in TOML."""
    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror or error}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid TOML: {error}") from None
    tables = document.get("upstream")
    unknown = sorted(set(document) - {"upstream"})
    if unknown:
        raise ValueError(f"{path}: unknown key {unknown[0]!r} (expected [[upstream]] tables)")
    if not isinstance(tables, list) or not all(isinstance(table, dict) for table in tables):
        raise ValueError(f"{path}: expected one [[upstream]] table per server")
    return members(tables)


def fleet_specs(upstream_url: str, upstreams: str, upstreams_file: str | None) -> tuple[MemberSpec, ...]:
    """The servers the settings name; ``FleetConfigError`` names the setting that is wrong."""
    if upstreams_file:
        try:
            return load_file(upstreams_file)
        except ValueError as error:
            raise FleetConfigError(f"GATEWAY_UPSTREAMS_FILE: {error}") from None
    if upstreams:
        try:
            return parse_list(upstreams)
        except ValueError as error:
            raise FleetConfigError(f"GATEWAY_UPSTREAMS: {error}") from None
    return (MemberSpec(name=address(upstream_url), url=upstream_url),)


def members(entries: list[dict[str, object]]) -> tuple[MemberSpec, ...]:
    """Validated specs; a server without a name is named by its host:port."""
    if not entries:
        raise ValueError("lists no server")
    specs: list[MemberSpec] = []
    for index, entry in enumerate(entries, 1):
        where = f"server {index}"
        unknown = sorted(set(entry) - {"name", "url", *_OPTIONS})
        if unknown:
            raise ValueError(f"{where}: unknown option {unknown[0]!r} (known: name, url, {', '.join(_OPTIONS)})")
        url = entry.get("url")
        if not isinstance(url, str) or not url:
            raise ValueError(f"{where}: no url")
        try:
            url = check_url(url)
        except ValueError as error:
            raise ValueError(f"{where}: {url!r} {error}") from None
        name = entry.get("name", address(url))
        if "name" in entry and not (isinstance(name, str) and _NAME.fullmatch(name)):
            raise ValueError(f"{where}: name {name!r} must be letters, digits, '.', '_' or '-' (at most 63)")
        assert isinstance(name, str)
        specs.append(
            MemberSpec(
                name=name,
                url=url,
                weight=_count(entry.get("weight", 1), f"{where}: weight", minimum=1),
                max_concurrency=None
                if entry.get("max_concurrency") is None
                else _count(entry["max_concurrency"], f"{where}: max_concurrency", minimum=0),
            )
        )
    names = [spec.name for spec in specs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"the name {repeated[0]!r} is used twice (give each server its own: name=URL)")
    return tuple(specs)


def _count(value: object, what: str, *, minimum: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a whole number")
    if isinstance(value, str) and re.fullmatch(r"[0-9]+", value.strip()):
        value = int(value)
    if not isinstance(value, int) or value < minimum or value > 1_000_000:
        raise ValueError(f"{what} must be a whole number from {minimum}")
    return value
