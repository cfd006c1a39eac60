"""The layering, held as data: ``gateway/`` is a stack of layers, and a module imports only from
its own layer and the layers below it. Read from the source, so a new module that no layer holds,
or an import that runs back up, fails here.

Every import counts: at the top of a module, inside a function (a lazy import is still knowledge
of the module it names) and under ``TYPE_CHECKING`` (an annotation naming a higher layer's type is
knowledge of it as well, and one step from a cycle once the name is needed at run time). Within a
layer, modules import each other freely.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"

# Highest first: a layer may import the layers listed after it, never one listed before it. A
# folder ("routes/") holds every module under it; a module at the top of the package is placed
# by name.
LAYERS: list[list[str]] = [
    ["__main__.py", "cli/"],  # the command line: serve, keys, usage, upstreams
    ["runtime/"],  # the process: uvicorn, listeners, logging, tuning; it serves what app.py builds
    ["app.py", "settings.py"],  # composition; settings sit here so no request path can read them
    ["admin/"],  # the admin API and page
    ["routes/"],  # the ASGI entry, forwarded routes, the gateway's own endpoints
    ["usage/"],  # the ledger: it consumes the request record
    ["observe/"],  # the request record, access log, metrics, start-up report
    ["policies/"],  # auth, permissions, the body, limits, routing: each sees one Flow
    ["flow.py"],  # one exchange, as the policies and sinks share it
    ["fleet/"],  # the servers behind the gateway and the fair queue on each
    ["keys/"],  # key format, stores, keyring, principal, key management
    ["proxy/"],  # the core: relay, client side, headers, upstream clients
    ["ollama/"],  # Ollama's vocabulary: model names, bodies, the route table, stream usage
    # the foundation: version, the error tree, the databases (SQLite, PostgreSQL, the chooser)
    ["__init__.py", "errors.py", "database/"],
]

# The core relays bytes and knows nothing of keys, limits, logs or accounting: every layer that
# does must stay above it, whatever else the list above comes to say.
CORE = "proxy/"
ABOVE_THE_CORE = ["keys/", "fleet/", "flow.py", "policies/", "observe/", "usage/", "routes/", "app.py"]

# Backends behind the small protocols: no web framework in them.
BACKENDS = [
    "keys/store.py",
    "keys/sqlite.py",
    "keys/postgres.py",
    "keys/notices.py",
    "policies/limits/memory.py",
    "policies/limits/redis.py",
    "policies/limits/scripts.py",
    "fleet/queue.py",
    "usage/store.py",
    "usage/postgres.py",
    "database/sqlite.py",
    "database/postgres.py",
    "database/__init__.py",
]
FRAMEWORKS = {"fastapi", "starlette", "uvicorn"}


def _modules() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts)


def _relative(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def _holds(entry: str, relative: str) -> bool:
    return relative.startswith(entry) if entry.endswith("/") else relative == entry


def _rank(relative: str) -> int | None:
    ranks = [rank for rank, layer in enumerate(LAYERS) for entry in layer if _holds(entry, relative)]
    return ranks[0] if len(ranks) == 1 else None


def _dotted(relative: str) -> str:
    parts = ["gateway", *relative.removesuffix(".py").split("/")]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_dotted(_relative(path)): _relative(path) for path in _modules()}


def _imported(path: Path) -> list[tuple[int, str]]:
    """Every gateway module ``path`` imports, with its line: ``from a import b`` names ``a.b``
    when that is a module, else ``a``."""
    package = _dotted(_relative(path)).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *filter(None, [base])])
            for alias in node.names:
                name = f"{base}.{alias.name}"
                found.append((node.lineno, name if name in MODULES else base))
    return [(line, name) for line, name in found if name in MODULES]


@pytest.mark.parametrize("entry", [entry for layer in LAYERS for entry in layer])
def test_every_layer_entry_exists(entry: str) -> None:
    assert (PACKAGE / entry).exists()


def test_every_module_has_exactly_one_layer() -> None:
    unplaced = [_relative(path) for path in _modules() if _rank(_relative(path)) is None]
    assert unplaced == [], "place these modules in LAYERS (tests/test_layering.py)"


@pytest.mark.parametrize("path", _modules(), ids=_relative)
def test_imports_point_down(path: Path) -> None:
    rank = _rank(_relative(path))
    assert rank is not None
    upward: list[str] = []
    for line, name in _imported(path):
        target = _rank(MODULES[name])
        assert target is not None
        if target < rank:
            upward.append(f"line {line}: {name} ({LAYERS[target]} is above {LAYERS[rank]})")
    assert upward == []


def test_the_core_sits_below_every_policy() -> None:
    ranks = {entry: _rank(entry) for entry in [CORE, *ABOVE_THE_CORE]}
    placed = {entry: rank for entry, rank in ranks.items() if rank is not None}
    assert placed.keys() == ranks.keys()
    assert [entry for entry in ABOVE_THE_CORE if placed[entry] >= placed[CORE]] == []


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("name", BACKENDS)
def test_backends_import_no_web_framework(name: str) -> None:
    assert {imported.split(".")[0] for imported in _imports(PACKAGE / name)} & FRAMEWORKS == set()
