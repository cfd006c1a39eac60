"""The import direction the design rests on, read from the source: the relay and its helpers know
nothing of keys, limits or logs; stores and limiters know no web framework."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"

# The core: forwarding bytes, headers, streams, and the HTTP clients below it.
CORE = ["relay.py", "headers.py", "streams.py", "sse.py", "listing.py", "upstream"]
POLICY = {
    "gateway.flow",
    "gateway.principal",
    "gateway.requestbody",
    "gateway.usagerequest",
    "gateway.guard",
    "gateway.auth",
    "gateway.permissions",
    "gateway.limits",
    "gateway.keyring",
    "gateway.keystore",
    "gateway.lockout",
    "gateway.accounting",
    "gateway.accesslog",
    "gateway.metrics",
    "gateway.forwarding",
    "gateway.app",
}
# Backends behind the small protocols: no web framework in them.
BACKENDS = ["keystore", "limits/memory.py", "limits/redis.py", "limits/queue.py", "usagestore.py", "database.py"]
FRAMEWORKS = {"fastapi", "starlette", "uvicorn"}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def _files(names: list[str]) -> list[Path]:
    paths: list[Path] = []
    for name in names:
        target = PACKAGE / name
        paths.extend(sorted(target.rglob("*.py")) if target.is_dir() else [target])
    return paths


@pytest.mark.parametrize("path", _files(CORE), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_the_core_imports_no_policy(path: Path) -> None:
    imported = _imports(path)
    leaks = {name for name in imported for policy in POLICY if name == policy or name.startswith(policy + ".")}
    assert leaks == set()


@pytest.mark.parametrize("path", _files(BACKENDS), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_backends_import_no_web_framework(path: Path) -> None:
    assert {name.split(".")[0] for name in _imports(path)} & FRAMEWORKS == set()
