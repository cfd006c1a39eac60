"""The container image, the Compose deployment and the deploy/ recipes.

No container engine runs here, so the files are parsed and their safety invariants asserted, and
the image's exact entrypoint and environment, and the systemd unit's command, are run as
processes against the fake Ollama from the virtualenvs each way installs (tests/shipped.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from gateway.database.sqlite import sqlite_path
from gateway.fleet.config import parse_list
from gateway.settings import Settings
from tests.dockerfile import Stage, stages
from tests.fake_ollama import Behaviour, FakeOllama, StepGate
from tests.servers import ROOT, GatewayProcess, RunningGateway, free_port, gateway_process, stop_process
from tests.shipped import BUILD_TIMEOUT, Venv

DEPLOY = ROOT / "deploy"
COMPOSE_FILES = (
    "docker-compose.yml",
    "docker-compose.gpu.yml",
    "docker-compose.shared.yml",
    "docker-compose.offline.yml",
    "docker-compose.fleet.yml",
    "deploy/caddy/docker-compose.caddy.yml",
)
NGINX_SNIPPET = DEPLOY / "nginx" / "ollama-gateway-proxy.conf"
# Where the image and docker-compose.yml fix the gateway's own address, upstream and database.
FIXED_BY_COMPOSE = {"GATEWAY_HOST", "GATEWAY_PORT", "GATEWAY_UPSTREAM_URL", "GATEWAY_DATABASE_URL"}


def _default(name: str) -> Any:
    return Settings.model_fields[name].default


SHUTDOWN_GRACE: float = _default("shutdown_grace")
READ_TIMEOUT: float = _default("read_timeout")


# --- Dockerfile -------------------------------------------------------------------------------


def _healthcheck(stage: Stage) -> list[str]:
    options, marker, command = stage.last("HEALTHCHECK").partition(" CMD ")
    assert marker, "HEALTHCHECK must use CMD"
    assert all(option.startswith("--") for option in options.split())
    parsed = json.loads(command)
    assert isinstance(parsed, list), "HEALTHCHECK CMD must be exec form"
    return [str(word) for word in parsed]


def _entrypoint(stage: Stage) -> list[str]:
    return [*json.loads(stage.last("ENTRYPOINT")), *json.loads(stage.last("CMD"))]


def test_image_is_built_on_one_pinned_slim_python() -> None:
    found = stages()
    assert len(found) == 2
    # The virtualenv is built in the first stage and copied into the second: same interpreter.
    assert found[0].base == found[1].base
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", found[1].base), found[1].base


def test_dependencies_are_a_layer_of_their_own_before_the_project() -> None:
    build = stages()[0]
    order = [(item.keyword, item.value) for item in build.body]
    copy_lock = order.index(("COPY", "requirements.lock ./"))
    install = next(i for i, (kw, value) in enumerate(order) if kw == "RUN" and "-r requirements.lock" in value)
    copy_code = order.index(("COPY", "gateway/ gateway/"))
    assert copy_lock < install < copy_code
    words = shlex.split(order[install][1])
    # Exactly the locked versions, checked against their hashes, wheels only (nothing compiled).
    assert {"--require-hashes", "--only-binary=:all:", "--no-deps"} <= set(words)
    # --no-deps trusts the lock to be whole: pip check fails the build if a package's own needs are missing.
    project = next(value for kw, value in order if kw == "RUN" and "pip install --no-deps ." in value)
    assert "pip check" in project
    assert not any(kw == "COPY" and "pyproject.toml" in value for kw, value in order[:install])


def _locked() -> dict[str, tuple[str, list[str]]]:
    """requirements.lock: canonical name -> (version, hashes)."""
    entries: dict[str, tuple[str, list[str]]] = {}
    current: list[str] | None = None
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            name, _, rest = line.partition("==")
            version = rest.split(";")[0].split("\\")[0].strip()
            assert canonicalize_name(name) not in entries, f"{name} locked twice"
            current = []
            entries[canonicalize_name(name)] = (version, current)
        elif current is not None and line.strip().startswith("--hash=sha256:"):
            current.append(line.strip().removeprefix("--hash=").rstrip(" \\"))
    return entries


def test_the_lock_pins_every_runtime_dependency_within_pyproject_with_hashes() -> None:
    locked = _locked()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for text in [*project["dependencies"], *project["optional-dependencies"]["redis"]]:
        requirement = Requirement(text)
        wanted = canonicalize_name(requirement.name)
        assert wanted in locked, f"{requirement} is not in requirements.lock (run make lock)"
        assert requirement.specifier.contains(locked[wanted][0], prereleases=True), (wanted, locked[wanted][0], text)
    for name, (version, hashes) in locked.items():
        assert re.fullmatch(r"[0-9][0-9A-Za-z.+!]*", version), (name, version)
        assert hashes, f"{name} has no hashes"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", digest) for digest in hashes), name


def test_final_stage_installs_nothing_and_runs_as_a_fixed_non_root_user() -> None:
    final = stages()[1]
    assert final.all("COPY") == ["--from=build /opt/venv /opt/venv"]
    for command in final.all("RUN"):
        assert not re.search(r"\b(apt-get|apt|apk|pip|gcc|cc|make)\b", command), command
    user, _, group = final.last("USER").partition(":")
    # Numeric, so that Kubernetes' runAsNonRoot can check it.
    assert user.isdigit()
    assert group.isdigit()
    assert int(user) != 0
    assert int(group) != 0


def test_image_listens_everywhere_keeps_its_database_on_the_volume_and_stops_on_sigterm() -> None:
    final = stages()[1]
    env = final.env()
    assert env["GATEWAY_HOST"] == "0.0.0.0"
    assert env["GATEWAY_PORT"] == final.last("EXPOSE") == "8080"
    assert env["PATH"].startswith("/opt/venv/bin:")
    volumes = json.loads(final.last("VOLUME"))
    assert volumes == ["/data"]
    assert _database_dir(env["GATEWAY_DATABASE_URL"]) == PurePosixPath("/data")
    # The working directory is not the volume: a stray .env there would be read as settings.
    assert not PurePosixPath(final.last("WORKDIR")).is_relative_to("/data")
    assert final.last("STOPSIGNAL") == "SIGTERM"
    # `python` is the virtualenv's: the tests run this command with the image's virtualenv on PATH.
    assert _entrypoint(final) == ["python", "-m", "gateway", "serve"]
    check = _healthcheck(final)
    assert check[:2] == ["python", "-c"]
    assert "/healthz" in check[2]


def test_dockerignore_admits_exactly_what_the_image_copies() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # Everything is excluded first, so .git, .venv, .env and databases never reach the context.
    assert patterns[0] == "*"
    admitted = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    copied = {
        source.rstrip("/")
        for stage in stages()
        for value in stage.all("COPY")
        if not value.startswith("--from")
        for source in value.split()[:-1]
    }
    assert admitted == copied == {"pyproject.toml", "requirements.lock", "README.md", "LICENSE", "gateway"}


def test_package_metadata_builds_without_deprecation_warnings() -> None:
    """pyproject.toml as setuptools applies it on every install: an SPDX licence, no warning."""
    code = (
        "from setuptools.config.pyprojecttoml import apply_configuration\n"
        "from setuptools.dist import Distribution\n"
        "dist = apply_configuration(Distribution(), 'pyproject.toml')\n"
        "print(dist.metadata.license_expression, *dist.metadata.license_files)\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["MIT", "LICENSE"]


# --- Compose ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tagged:
    """A Compose merge tag (!reset, !override) and the value it carries."""

    tag: str
    value: Any


class _ComposeLoader(yaml.SafeLoader):
    pass


def _tagged(loader: yaml.SafeLoader, node: yaml.Node) -> Tagged:
    if isinstance(node, yaml.SequenceNode):
        return Tagged(node.tag, loader.construct_sequence(node, deep=True))
    if isinstance(node, yaml.MappingNode):
        return Tagged(node.tag, loader.construct_mapping(node, deep=True))
    assert isinstance(node, yaml.ScalarNode)
    return Tagged(node.tag, loader.construct_scalar(node))


_ComposeLoader.add_constructor("!reset", _tagged)
_ComposeLoader.add_constructor("!override", _tagged)


def _compose(name: str) -> dict[str, Any]:
    loaded = yaml.load((ROOT / name).read_text(), Loader=_ComposeLoader)
    assert isinstance(loaded, dict)
    return loaded


def _interpolated(value: str) -> str:
    """What Compose makes of ${VAR:-default} / ${VAR:?error} / ${VAR} with nothing set."""
    return re.sub(r"\$\{(\w+)(?::-([^}]*)|:\?[^}]*)?\}", lambda match: match.group(2) or "", value)


def _networks(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    networks = service.get("networks", {})
    if isinstance(networks, Tagged):
        networks = networks.value
    if isinstance(networks, list):
        return {name: {} for name in networks}
    return {name: options or {} for name, options in networks.items()}


def _database_dir(database_url: str) -> PurePosixPath:
    return PurePosixPath(str(sqlite_path(database_url))).parent


def _seconds(duration: str) -> float:
    """A Compose/Caddy/nginx/systemd duration: 45s, 15m, 900s, 45."""
    match = re.fullmatch(r"(\d+)(ms|s|m|h)?", duration)
    assert match, duration
    return int(match.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[match.group(2)]


def test_ollama_is_reachable_only_through_the_gateway() -> None:
    compose = _compose("docker-compose.yml")
    services, networks = compose["services"], compose["networks"]
    ollama = services["ollama"]
    assert {"ports", "expose", "network_mode"}.isdisjoint(ollama)
    publishing = {name for name, service in services.items() if service.get("ports")}
    assert publishing == {"gateway"}
    for network in _networks(ollama):
        members = {name for name, service in services.items() if network in _networks(service)}
        # Docker forwards no host port into an internal network; any other network is Ollama's alone.
        assert (networks[network] or {}).get("internal") is True or members == {"ollama"}, network
    # The network the gateway shares with Ollama is internal ...
    shared = set(_networks(ollama)) & set(_networks(services["gateway"]))
    assert shared == {"backend"}
    assert networks["backend"]["internal"] is True
    # ... and the gateway's first network, which carries its published port, is not Ollama's and
    # not internal (a port published on an internal first network is silently not published).
    priorities = {name: options.get("priority", 0) for name, options in _networks(services["gateway"]).items()}
    first = max(priorities, key=priorities.__getitem__)
    assert first == "frontend"
    # Strictly first: on a tie Compose orders by name, and "backend" sorts before "frontend".
    assert list(priorities.values()).count(priorities[first]) == 1
    assert first not in _networks(ollama)
    assert not (networks[first] or {}).get("internal")


def test_no_compose_file_publishes_ollama_or_redis() -> None:
    for name in COMPOSE_FILES:
        services = _compose(name)["services"]
        for internal in ("ollama", "redis"):
            assert "ports" not in services.get(internal, {}), (name, internal)


def test_gateway_service_reaches_ollama_by_name_and_keeps_its_data_on_a_volume() -> None:
    compose = _compose("docker-compose.yml")
    services = compose["services"]
    gateway = services["gateway"]
    env = gateway["environment"]
    assert env["GATEWAY_UPSTREAM_URL"] == "http://ollama:11434"
    upstream = urlsplit(env["GATEWAY_UPSTREAM_URL"])
    assert upstream.hostname in services
    # The same values the image carries, so `docker run` and Compose agree.
    image_env = stages()[1].env()
    for name in ("GATEWAY_HOST", "GATEWAY_PORT", "GATEWAY_DATABASE_URL"):
        assert env[name] == image_env[name], name
    # Ollama's usual port on the host, the gateway's port in the container.
    assert [_interpolated(port) for port in gateway["ports"]] == [f"11434:{env['GATEWAY_PORT']}"]
    assert gateway["build"] == "."
    assert gateway["env_file"] == [{"path": ".env", "required": False}]
    assert gateway["volumes"] == [f"gateway-data:{_database_dir(env['GATEWAY_DATABASE_URL'])}"]
    assert services["ollama"]["volumes"] == ["ollama-models:/root/.ollama"]
    assert set(compose["volumes"]) == {"gateway-data", "ollama-models"}


def test_healthchecks_start_order_and_stop_grace() -> None:
    services = _compose("docker-compose.yml")["services"]
    ollama, gateway = services["ollama"], services["gateway"]
    # `ollama list` fails unless the server answers (the image has no curl).
    assert ollama["healthcheck"]["test"] == ["CMD", "ollama", "list"]
    assert gateway["healthcheck"]["test"] == ["CMD", *_healthcheck(stages()[1])]
    assert gateway["depends_on"] == {"ollama": {"condition": "service_healthy"}}
    # Docker kills after stop_grace_period; streams get GATEWAY_SHUTDOWN_GRACE before that.
    assert _seconds(gateway["stop_grace_period"]) > SHUTDOWN_GRACE
    assert ollama["restart"] == gateway["restart"] == "unless-stopped"


def test_gpu_override_only_reserves_nvidia_gpus_for_ollama() -> None:
    assert _compose("docker-compose.gpu.yml") == {
        "services": {
            "ollama": {
                "deploy": {
                    "resources": {
                        "reservations": {"devices": [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]}
                    }
                }
            }
        }
    }


def test_offline_override_leaves_ollama_only_the_internal_network() -> None:
    override = _compose("docker-compose.offline.yml")
    assert override == {"services": {"ollama": {"networks": Tagged("!override", ["backend"])}}}
    assert _compose("docker-compose.yml")["networks"]["backend"]["internal"] is True


def test_fleet_override_adds_a_second_ollama_reachable_only_through_the_gateway() -> None:
    base, override = _compose("docker-compose.yml"), _compose("docker-compose.fleet.yml")
    first, second = base["services"]["ollama"], override["services"]["ollama-b"]
    # The same image, networks and health check as the first; its own models; nothing published.
    assert {"ports", "expose", "network_mode"}.isdisjoint(second)
    for field in ("image", "networks", "healthcheck", "restart", "environment"):
        assert second[field] == first[field], field
    assert second["volumes"] == ["ollama-b-models:/root/.ollama"]
    assert set(override["volumes"]) == {"ollama-b-models"}
    gateway = override["services"]["gateway"]
    assert gateway["depends_on"] == {"ollama-b": {"condition": "service_healthy"}}
    # The list the gateway itself parses: both servers, by their service names.
    specs = parse_list(gateway["environment"]["GATEWAY_UPSTREAMS"])
    assert [(spec.name, spec.url) for spec in specs] == [
        ("ollama-a", base["services"]["gateway"]["environment"]["GATEWAY_UPSTREAM_URL"]),
        ("ollama-b", "http://ollama-b:11434"),
    ]
    assert {urlsplit(spec.url).hostname for spec in specs} == {"ollama", "ollama-b"}


def _proxy_override(name: str, proxy: str) -> dict[str, Any]:
    """The checks shared by the overrides that put a proxy in front; returns their services."""
    compose = _compose(name)
    services: dict[str, Any] = compose["services"]
    assert "ollama" not in services
    gateway, front = services["gateway"], services[proxy]
    # The proxy takes over; the gateway's own port is no longer published.
    assert gateway["ports"] == Tagged("!reset", [])
    address = _networks(front)["edge"]["ipv4_address"]
    assert address in gateway["environment"]["GATEWAY_TRUSTED_PROXIES"].split(",")
    assert "edge" in _networks(gateway)
    # Pinned outside the range Docker hands out, so no other container can take the address.
    assert compose["networks"]["edge"]["ipam"]["config"] == [
        {"subnet": "172.30.84.0/24", "ip_range": "172.30.84.128/25"}
    ]
    for volume in front.get("volumes", []):
        source = volume.split(":")[0]
        if source.startswith("./"):
            assert (ROOT / source).is_file(), source
    return services


def test_shared_override_runs_two_replicas_on_postgres_and_redis_behind_one_balancer() -> None:
    services = _proxy_override("docker-compose.shared.yml", "balancer")
    gateway, redis, balancer = services["gateway"], services["redis"], services["balancer"]
    postgres = services["postgres"]
    assert gateway["deploy"]["replicas"] == 2
    assert gateway["environment"]["GATEWAY_REDIS_URL"] == "redis://redis:6379/0"
    healthy = {"condition": "service_healthy"}
    assert gateway["depends_on"] == {"postgres": healthy, "redis": healthy}
    # Keys and usage in PostgreSQL, its password from .env only: no default, Compose refuses to
    # start without one, and the gateway's URL carries the same variable.
    password = "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD in .env}"
    assert postgres["environment"]["POSTGRES_PASSWORD"] == password
    url = urlsplit(gateway["environment"]["GATEWAY_DATABASE_URL"].replace(password, "stand-in"))
    assert (url.scheme, url.hostname, url.port, url.path) == ("postgresql", "postgres", 5432, "/gateway")
    assert (url.username, url.password) == (postgres["environment"]["POSTGRES_USER"], "stand-in")
    assert url.path == "/" + postgres["environment"]["POSTGRES_DB"]
    assert postgres["volumes"] == ["postgres-data:/var/lib/postgresql/data"]
    assert "postgres-data" in _compose("docker-compose.shared.yml")["volumes"]
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    # PostgreSQL and Redis sit on the internal network with Ollama: reachable by the gateways only.
    assert _networks(postgres) == {"backend": {}}
    assert "ports" not in postgres
    assert _networks(redis) == {"backend": {}}
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert [_interpolated(port) for port in balancer["ports"]] == ["11434:8080"]
    listen = re.search(r"\blisten\s+(\d+);", (DEPLOY / "nginx" / "replicas.conf").read_text())
    assert listen is not None
    assert listen.group(1) == "8080"


def test_caddy_override_publishes_https_only() -> None:
    services = _proxy_override("deploy/caddy/docker-compose.caddy.yml", "caddy")
    caddy = services["caddy"]
    assert caddy["ports"] == ["80:80", "443:443", "443:443/udp"]
    assert caddy["volumes"][0] == "./deploy/caddy/Caddyfile:/etc/caddy/Caddyfile:ro"
    # No default domain: Compose refuses to start without one.
    assert caddy["environment"]["DOMAIN"].startswith("${DOMAIN:?")


def _secret_like(name: str) -> bool:
    return re.search(r"KEY|SECRET|TOKEN|PASSWORD|PASSWD", name.upper()) is not None


def _deploy_texts() -> Iterator[tuple[str, str]]:
    names = [*COMPOSE_FILES, ".env.example", "Dockerfile"]
    names += [str(path.relative_to(ROOT)) for path in sorted(DEPLOY.rglob("*")) if path.is_file()]
    for name in names:
        yield name, (ROOT / name).read_text()


def test_no_secret_literals_anywhere_in_the_deployment() -> None:
    for name, text in _deploy_texts():
        # An API key (ogw_<id>_<secret>), or credentials inside a URL.
        assert not re.search(r"ogw_[A-Za-z0-9]+_[A-Za-z0-9_-]{8,}", text), name
        # (A password taken from a variable, `${POSTGRES_PASSWORD…}`, is no literal.)
        assert not re.search(r"://[^/\s:@]+:(?!\$\{)[^/\s@]+@", text), name
    for name in COMPOSE_FILES:
        for service, config in _compose(name)["services"].items():
            for variable, value in (config.get("environment") or {}).items():
                if _secret_like(variable):
                    assert value in (None, "") or str(value).startswith("${"), (name, service, variable)
    for document in _kubernetes():
        if document["kind"] == "ConfigMap":
            assert not [variable for variable in document["data"] if _secret_like(variable)]
    # .env.example only documents: every line is a comment, so copying it sets nothing.
    for line in (ROOT / ".env.example").read_text().splitlines():
        assert not line.strip() or line.startswith("#"), line


def _documented() -> dict[str, str]:
    """The `# NAME=value` lines of .env.example."""
    found = re.findall(r"^# ([A-Z][A-Z0-9_]*)=(.*)$", (ROOT / ".env.example").read_text(), re.MULTILINE)
    return dict(found)


def test_env_example_documents_every_setting_with_its_real_default(monkeypatch: pytest.MonkeyPatch) -> None:
    documented = _documented()
    settings = {f"GATEWAY_{name.upper()}" for name in Settings.model_fields}
    assert settings - FIXED_BY_COMPOSE - set(documented) == set()
    assert not FIXED_BY_COMPOSE & set(documented)
    # Uncommenting every line changes nothing: the examples are the defaults.
    for name in list(os.environ):
        if name.startswith("GATEWAY_"):
            monkeypatch.delenv(name)
    for name, value in documented.items():
        if name in settings:
            monkeypatch.setenv(name, value)
    configured = Settings(_env_file=None)  # type: ignore[call-arg]
    for field, info in Settings.model_fields.items():
        assert getattr(configured, field) == info.default, field


def test_env_example_documents_every_compose_variable() -> None:
    used: set[str] = set()
    for name in COMPOSE_FILES:
        used |= set(re.findall(r"\$\{(\w+)", (ROOT / name).read_text()))
    assert used - set(_documented()) == set()


# --- Front proxies ------------------------------------------------------------------------------


def _nginx_directives(text: str) -> dict[str, list[str]]:
    """Simple directives (name -> each occurrence's arguments) of a config without blocks."""
    found: dict[str, list[str]] = {}
    body = re.sub(r"#[^\n]*", "", text)
    for statement in body.split(";"):
        words = statement.split(None, 1)
        if words:
            found.setdefault(words[0], []).append(words[1].strip() if len(words) > 1 else "")
    return found


def _nginx_block(text: str, header: str) -> str:
    match = re.search(re.escape(header) + r"\s*\{([^{}]*)\}", re.sub(r"#[^\n]*", "", text))
    assert match, header
    return match.group(1)


def test_nginx_snippet_has_the_settings_streaming_needs() -> None:
    directives = _nginx_directives(NGINX_SNIPPET.read_text())
    for name, value in {
        "proxy_buffering": "off",
        "proxy_cache": "off",
        "gzip": "off",
        "proxy_request_buffering": "off",
        "client_max_body_size": "0",
        "proxy_http_version": "1.1",
    }.items():
        assert directives[name] == [value], name
    assert 'Connection ""' in directives["proxy_set_header"]
    # Longer than the gateway's own read timeout, so the gateway answers first.
    for name in ("proxy_read_timeout", "proxy_send_timeout"):
        assert _seconds(directives[name][0]) > READ_TIMEOUT, name
    assert "proxy_pass" not in directives


def test_nginx_configs_use_the_snippet_with_kept_alive_upstreams() -> None:
    for name, server in (("ollama-gateway.conf", "127.0.0.1:8080"), ("replicas.conf", "gateway:8080 resolve")):
        text = (DEPLOY / "nginx" / name).read_text()
        upstream = _nginx_directives(_nginx_block(text, "upstream ollama_gateway"))
        assert upstream["server"] == [server]
        assert "keepalive" in upstream
        location = _nginx_directives(_nginx_block(text, "location /"))
        assert location["proxy_pass"] == ["http://ollama_gateway"]
        assert location["include"] == [f"/etc/nginx/snippets/{NGINX_SNIPPET.name}"]
        assert "proxy_buffering on" not in text


def test_caddyfile_flushes_immediately_and_waits_long_enough() -> None:
    lines = [line.split("#")[0].strip() for line in (DEPLOY / "caddy" / "Caddyfile").read_text().splitlines()]
    lines = [line for line in lines if line]
    assert "reverse_proxy gateway:8080 {" in lines
    assert "flush_interval -1" in lines
    # Compression would hold tokens back.
    assert not any(line.split()[0] == "encode" for line in lines)
    start = lines.index("transport http {")
    transport = dict(line.split(None, 1) for line in lines[start + 1 : lines.index("}", start)])
    for name in ("read_timeout", "write_timeout", "response_header_timeout"):
        assert _seconds(transport[name]) > READ_TIMEOUT, name


# --- systemd and Kubernetes ---------------------------------------------------------------------


def _unit() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in (DEPLOY / "systemd" / "ollama-gateway.service").read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def test_systemd_unit_runs_serve_as_its_own_user_and_outlasts_the_grace() -> None:
    unit = _unit()
    command = shlex.split(unit["ExecStart"][0])
    assert PurePosixPath(command[0]).name == "ollama-gateway"
    assert command[1:] == _entrypoint(stages()[1])[3:]
    assert unit["User"] == ["ollama-gateway"]
    assert unit["KillSignal"] == ["SIGTERM"]
    assert _seconds(unit["TimeoutStopSec"][0]) > SHUTDOWN_GRACE
    env = dict(item.partition("=")[::2] for item in unit["Environment"])
    assert _database_dir(env["GATEWAY_DATABASE_URL"]) == PurePosixPath("/var/lib") / unit["StateDirectory"][0]
    assert urlsplit(env["GATEWAY_UPSTREAM_URL"]).hostname == "127.0.0.1"


def _kubernetes() -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        documents += [document for document in yaml.safe_load_all(path.read_text()) if document]
    return documents


def _kind(kind: str) -> dict[str, Any]:
    (found,) = [document for document in _kubernetes() if document["kind"] == kind]
    return found


def test_kubernetes_manifests_probe_health_and_drain_like_the_container() -> None:
    kustomization = _kind("Kustomization")
    files = {path.name for path in (DEPLOY / "kubernetes").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    config = _kind("ConfigMap")["data"]
    deployment = _kind("Deployment")["spec"]
    pod = deployment["template"]["spec"]
    (container,) = pod["containers"]
    # The image's own entrypoint, unchanged.
    assert "command" not in container
    assert "args" not in container
    assert container["ports"] == [{"name": "http", "containerPort": int(config["GATEWAY_PORT"])}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert {"configMapRef": {"name": "ollama-gateway"}} in container["envFrom"]
    assert {"secretRef": {"name": "ollama-gateway", "optional": True}} in container["envFrom"]
    # The image's user, checked by the kubelet.
    uid = int(stages()[1].last("USER").partition(":")[0])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # Endpoint removal pause, then the gateway's drain, then a margin before SIGKILL.
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > pause + float(config["GATEWAY_SHUTDOWN_GRACE"])
    # SQLite on a ReadWriteOnce claim: one pod, never two during an update.
    claim = _kind("PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert deployment["replicas"] == 1
    assert deployment["strategy"] == {"type": "Recreate"}
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    data = str(_database_dir(config["GATEWAY_DATABASE_URL"]))
    (name,) = [name for name, path in mounts.items() if path == data]
    assert volumes[name]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert _kind("Service")["spec"]["ports"] == [{"name": "http", "port": 11434, "targetPort": "http"}]


def _rendered(recipe: str) -> dict[str, list[dict[str, Any]]]:
    """``kubectl kustomize`` of a recipe (kubectl from its wheel, offline): each kind's documents."""
    kubectl = Path(sys.executable).parent / "kubectl"
    result = subprocess.run(
        [str(kubectl), "kustomize", str(DEPLOY / recipe)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    kinds: dict[str, list[dict[str, Any]]] = {}
    for document in yaml.safe_load_all(result.stdout):
        kinds.setdefault(document["kind"], []).append(document)
    return kinds


def test_kubernetes_replicas_variant_rolls_several_pods_on_postgres() -> None:
    """deploy/kubernetes-replicas: the base recipe with two pods rolled one at a time, a disruption
    budget, the database URL from the required Secret, and no volume (state is in PostgreSQL)."""
    base, replicas = _rendered("kubernetes"), _rendered("kubernetes-replicas")
    assert set(base) - set(replicas) == {"PersistentVolumeClaim"}
    assert set(replicas) - set(base) == {"PodDisruptionBudget"}
    [deployment] = replicas["Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    # A new pod is ready (its /readyz) before an old one goes: never fewer than two serving.
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["envFrom"] == [
        {"configMapRef": {"name": "ollama-gateway"}},
        {"secretRef": {"name": "ollama-gateway"}},
    ]
    [config] = replicas["ConfigMap"]
    assert "GATEWAY_DATABASE_URL" not in config["data"]
    assert [volume["name"] for volume in pod["volumes"]] == ["tmp"]
    assert [mount["mountPath"] for mount in container["volumeMounts"]] == ["/tmp"]
    # The rest is the base's: the same probes, drain and hardening.
    [original] = base["Deployment"]
    [base_container] = original["spec"]["template"]["spec"]["containers"]
    for field in ("livenessProbe", "lifecycle", "securityContext", "ports", "image"):
        assert container[field] == base_container[field], field
    assert pod["terminationGracePeriodSeconds"] == original["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    [budget] = replicas["PodDisruptionBudget"]
    assert budget["spec"]["minAvailable"] == 1
    labels = pod.get("metadata", spec["template"]["metadata"])["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


# --- The container's command, run as a process ----------------------------------------------------


def _container_env(data: Path, upstream: str) -> dict[str, str]:
    """The image's and docker-compose.yml's GATEWAY_* environment, with host stand-ins.

    /data becomes `data`, Ollama becomes the fake, and the listener stays on loopback with the
    port that gateway_process picks.
    """
    env = {name: value for name, value in stages()[1].env().items() if name.startswith(("GATEWAY_", "PYTHON"))}
    env.update(_compose("docker-compose.yml")["services"]["gateway"]["environment"])
    container_data = str(_database_dir(env["GATEWAY_DATABASE_URL"]))
    env["GATEWAY_DATABASE_URL"] = env["GATEWAY_DATABASE_URL"].replace(container_data, str(data), 1)
    env["GATEWAY_UPSTREAM_URL"] = upstream
    env["GATEWAY_HOST"] = "127.0.0.1"
    del env["GATEWAY_PORT"]
    return env


def _healthcheck_exit(env: dict[str, str], port: str) -> int:
    """The image's HEALTHCHECK command, as Docker runs it in the container (with its environment)."""
    command = _healthcheck(stages()[1])
    env = {**env, "GATEWAY_PORT": port}
    result = subprocess.run(command, env=env, capture_output=True, timeout=15, check=False)
    return result.returncode


def _wait_refused(url: str, timeout: float = 5.0) -> None:
    """Until a new connection is refused: the listener closed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/healthz", timeout=1)
        except httpx.ConnectError:
            return
        except (httpx.RemoteProtocolError, httpx.ReadError):
            pass  # accepted just before the listener closed, then closed as idle
        time.sleep(0.05)
    raise AssertionError("the gateway still accepts connections after SIGTERM")


def _first_key(gateway: GatewayProcess, command: list[str], env: dict[str, str], cwd: Path) -> dict[str, str]:
    """A key made with the recipe's own bootstrap command, once the running gateway accepts it."""
    created = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=30, check=True)
    auth = {"Authorization": f"Bearer {created.stdout.strip()}"}
    deadline = time.monotonic() + 5
    # The server notices the new key within its refresh interval.
    while httpx.get(gateway.url + "/api/version", headers=auth, timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "the new key was never accepted"
        time.sleep(0.3)
    return auth


def _drains_a_stream_on_sigterm(gateway: GatewayProcess, fake: FakeOllama, auth: dict[str, str]) -> None:
    """SIGTERM after a stream's first line: new connections are refused while the stream goes on
    to its end, the process exits within the grace, and its JSON access log counts the stream whole."""
    gate = StepGate()
    fake.behaviour = Behaviour(tokens=4, gate=gate)
    body = {"model": "llama3.2", "prompt": "hi", "stream": True}
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", gateway.url + "/api/generate", json=body, headers=auth) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = (json.loads(line) for line in response.iter_lines() if line)
        received = [next(lines)]
        gateway.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        # New connections are refused while the stream goes on, one chunk per release.
        _wait_refused(gateway.url)
        for _ in range(4):
            gate.release()
            received.append(next(lines))
        assert list(lines) == []
    assert [item["response"] for item in received] == ["tok0 ", "tok1 ", "tok2 ", "tok3 ", ""]
    assert received[-1]["done"] is True
    # Drained and shut down, then uvicorn re-raises the signal. (As a container's PID 1 the kernel
    # ignores that re-raise and the exit status is 0; systemd counts a stop by SIGTERM as clean.)
    assert gateway.process.wait(timeout=SHUTDOWN_GRACE) == -signal.SIGTERM
    assert time.monotonic() - signalled < SHUTDOWN_GRACE
    gateway.stdout.join(timeout=5)
    gateway.stderr.join(timeout=5)
    log = "".join(gateway.stderr.lines)
    assert "Application shutdown complete." in log
    assert "timeout graceful shutdown exceeded" not in log
    records = [json.loads(line) for line in gateway.stdout.lines]
    (streamed,) = [record for record in records if record["path"] == "/api/generate"]
    assert (streamed["status"], streamed["outcome"], streamed["completion_tokens"]) == (200, "ok", 4)


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_container_command_serves_keeps_its_database_on_the_volume_and_drains_on_sigterm(
    shipped_venvs: dict[str, Venv], fake: FakeOllama, tmp_path: Path
) -> None:
    image = shipped_venvs["image"]
    command = _entrypoint(stages()[1])
    data, workdir = tmp_path / "data", tmp_path / "app"
    data.mkdir()
    workdir.mkdir()
    # The image's environment alone: its virtualenv first on PATH, nothing of this test's.
    env = {**image.environ(), **_container_env(data, fake.url)}
    assert shutil.which(command[0], path=env["PATH"]) == str(image.python)
    with gateway_process(env, args=tuple(command[3:]), cwd=workdir, program=command[:3], inherit=False) as gateway:
        port = str(urlsplit(gateway.url).port)
        assert httpx.get(gateway.url + "/healthz", timeout=5).json() == {"status": "ok"}
        assert _healthcheck_exit(env, port) == 0
        # The database is created on the volume at start-up.
        assert (data / "gateway.db").is_file()
        # The README's first-key bootstrap (`docker compose exec gateway ollama-gateway keys create alice`).
        auth = _first_key(gateway, ["ollama-gateway", "keys", "create", "alice"], env, workdir)
        _drains_a_stream_on_sigterm(gateway, fake, auth)
    assert _healthcheck_exit(env, port) == 1
    # Nothing is written outside the volume (the image's working directory is not writable).
    assert list(workdir.iterdir()) == []
    assert {path.name for path in data.iterdir()} <= {"gateway.db", "gateway.db-wal", "gateway.db-shm"}


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_systemd_unit_serves_from_a_pip_installed_checkout_and_drains_on_sigterm(
    shipped_venvs: dict[str, Venv], fake: FakeOllama, tmp_path: Path
) -> None:
    """The unit's ExecStart, Environment and WorkingDirectory, with /opt/ollama-gateway made as
    README "systemd" makes it (`pip install <checkout>`) and the state directory on tmp_path."""
    installed = shipped_venvs["pip"]
    unit = _unit()
    command = shlex.split(unit["ExecStart"][0])
    prefix = str(PurePosixPath(command[0]).parent.parent)
    state_dir = str(PurePosixPath("/var/lib") / unit["StateDirectory"][0])
    assert unit["WorkingDirectory"] == [state_dir]
    state = tmp_path / "state"
    state.mkdir()
    settings = dict(item.partition("=")[::2] for item in unit["Environment"])
    settings["GATEWAY_DATABASE_URL"] = settings["GATEWAY_DATABASE_URL"].replace(state_dir, str(state), 1)
    settings.update(GATEWAY_HOST="127.0.0.1", GATEWAY_UPSTREAM_URL=fake.url)
    del settings["GATEWAY_PORT"]
    program = [command[0].replace(prefix, str(installed.prefix), 1)]
    env = {**installed.environ(), **settings}
    with gateway_process(env, args=tuple(command[1:]), cwd=state, program=program, inherit=False) as gateway:
        # README: `sudo -u ollama-gateway env GATEWAY_DATABASE_URL=… /opt/ollama-gateway/bin/ollama-gateway
        # keys create alice`, without the unit's other settings.
        bootstrap = {**installed.environ(), "GATEWAY_DATABASE_URL": settings["GATEWAY_DATABASE_URL"]}
        auth = _first_key(gateway, [*program, "keys", "create", "alice"], bootstrap, tmp_path)
        _drains_a_stream_on_sigterm(gateway, fake, auth)
    assert {path.name for path in state.iterdir()} <= {"gateway.db", "gateway.db-wal", "gateway.db-shm"}


@pytest.mark.timeout(60)
def test_ctrl_c_shuts_down_cleanly_without_a_traceback(fake: FakeOllama, tmp_path: Path) -> None:
    env = {"GATEWAY_UPSTREAM_URL": fake.url, "GATEWAY_DATABASE_URL": f"sqlite:///{tmp_path / 'gateway.db'}"}
    with gateway_process(env) as gateway:
        assert httpx.get(gateway.url + "/healthz", timeout=5).status_code == 200
        gateway.process.send_signal(signal.SIGINT)
        assert gateway.process.wait(timeout=SHUTDOWN_GRACE) == 130
        gateway.stderr.join(timeout=5)
    log = "".join(gateway.stderr.lines)
    assert "Application shutdown complete." in log
    assert "Traceback" not in log


# --- nginx in front, for real -----------------------------------------------------------------------


def _nginx_binary() -> str | None:
    # Debian installs it in /usr/sbin, which is not on every user's PATH.
    # make unpacks Debian's nginx into the virtualenv; a system nginx works as well.
    local = ROOT / ".venv" / "nginx" / "usr" / "sbin"
    search = [str(local), os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"]
    return shutil.which("nginx", path=os.pathsep.join(search))


def _nginx_config(prefix: Path, listen: int, gateway_port: int) -> Path:
    """The shipped site config's upstream and location, on loopback, without TLS."""
    site = (DEPLOY / "nginx" / "ollama-gateway.conf").read_text()
    upstream = re.sub(
        r"\bserver\s+\S+;", f"server 127.0.0.1:{gateway_port};", _nginx_block(site, "upstream ollama_gateway")
    )
    location = re.sub(r"\binclude\s+\S+;", f"include {NGINX_SNIPPET};", _nginx_block(site, "location /"))
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # A root master would hand the workers to "nobody", who cannot enter pytest's private temp dir.
    user = "user root root;" if os.geteuid() == 0 else ""
    config = prefix / "nginx.conf"
    config.write_text(
        f"""
{user}
worker_processes 1;
daemon off;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
{temp}
    upstream ollama_gateway {{ {upstream} }}
    server {{
        listen 127.0.0.1:{listen};
        location / {{ {location} }}
    }}
}}
"""
    )
    return config


@contextmanager
def _nginx(binary: str, prefix: Path, gateway_port: int) -> Iterator[str]:
    """nginx in the foreground with the derived config; stopped by its PID."""
    listen = free_port()
    config = _nginx_config(prefix, listen, gateway_port)
    process = subprocess.Popen(
        [binary, "-p", str(prefix), "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, (prefix / "error.log").read_text() if (prefix / "error.log").exists() else ""
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", listen)) == 0:
                    break
            assert time.monotonic() < deadline, "nginx did not start listening"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{listen}"
    finally:
        stop_process(process, 10)


@pytest.mark.timeout(60)
def test_nginx_with_the_shipped_settings_relays_a_stream_chunk_by_chunk(
    gateway: RunningGateway, fake: FakeOllama, tmp_path: Path
) -> None:
    binary = _nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx)")
    gateway_port = urlsplit(gateway.url).port
    assert gateway_port is not None
    gate = StepGate()
    fake.behaviour = Behaviour(tokens=5, gate=gate)
    with (
        _nginx(binary, tmp_path, gateway_port) as front,
        httpx.Client(base_url=front, headers=gateway.auth, timeout=5) as client,
    ):
        seen: list[str] = []
        with client.stream("POST", "/api/generate", json={"model": "llama3.2", "prompt": "hi"}) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line:
                    seen.append(json.loads(line)["response"])
                    # A buffering proxy could not deliver this line before the next release.
                    gate.release()
        assert seen == ["tok0 ", "tok1 ", "tok2 ", "tok3 ", "tok4 ", ""]
        # Larger than nginx's default 1 MiB body limit: uploads pass through untouched.
        blob = os.urandom(2 * 1024 * 1024)
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        assert client.post(f"/api/blobs/{digest}", content=blob).status_code == 201
        assert digest in fake.blobs
