"""The installed gateway, each way it ships (tests/shipped.py): the copy in the virtualenv holds
every file of the checkout's package, and every module of it imports there, with only what that
installation put beside it. Serving from them is in tests/test_deploy.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.servers import ROOT
from tests.shipped import BUILD_TIMEOUT, KINDS, Venv

# Run by the virtualenv's python in an empty directory, so nothing of the checkout is on sys.path.
WALK = """
import importlib, json, pkgutil, sys
from pathlib import Path

missing = {}

def unimportable(name):
    error = sys.exc_info()[1]
    if not isinstance(error, ModuleNotFoundError):
        raise error
    missing[name] = error.name

import gateway

modules = []
for info in pkgutil.walk_packages(gateway.__path__, "gateway.", onerror=unimportable):
    modules.append(info.name)
    # gateway.__main__ runs the command line when imported: `python -m gateway serve` runs it.
    if info.name != "gateway.__main__" and info.name not in missing:
        try:
            importlib.import_module(info.name)
        except ModuleNotFoundError as error:
            missing[info.name] = error.name
root = Path(gateway.__file__).parent
files = [str(path.relative_to(root)) for path in root.rglob("*") if path.is_file() and "__pycache__" not in path.parts]
print(json.dumps({"root": str(root), "modules": sorted(modules), "files": sorted(files), "missing": missing}))
"""

# The systemd recipe installs no extra, so the Redis limiter (imported only when GATEWAY_REDIS_URL
# is set) cannot be imported there; the image installs the redis extra from the lock file.
MISSING = {"image": {}, "pip": {"gateway.policies.limits.redis": "redis"}}


def _checkout() -> tuple[list[str], list[str]]:
    """The package's modules and files, as they are in the checkout."""
    package = ROOT / "gateway"
    files = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    )
    names = [".".join(Path("gateway", name).with_suffix("").parts) for name in files if name.endswith(".py")]
    modules = sorted(name.removesuffix(".__init__") for name in names if name != "gateway.__init__")
    return modules, files


@pytest.mark.timeout(BUILD_TIMEOUT)
@pytest.mark.parametrize("kind", KINDS)
def test_every_module_of_the_installed_package_imports(
    kind: str, shipped_venvs: dict[str, Venv], tmp_path: Path
) -> None:
    venv = shipped_venvs[kind]
    done = subprocess.run(
        [str(venv.python), "-c", WALK],
        cwd=tmp_path,
        env=venv.environ(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    walked = json.loads(done.stdout)
    assert Path(walked["root"]).is_relative_to(venv.prefix)
    modules, files = _checkout()
    assert walked["missing"] == MISSING[kind]
    assert walked["modules"] == modules
    # Every file ships, the admin page's too (package data).
    assert walked["files"] == files


@pytest.mark.timeout(BUILD_TIMEOUT)
@pytest.mark.parametrize("kind", KINDS)
def test_a_postgresql_url_needs_the_postgres_extra(kind: str, shipped_venvs: dict[str, Venv], tmp_path: Path) -> None:
    """The image holds the driver (the lock has the postgres extra): it tries the server (nothing
    listens on port 1). A plain ``pip install`` does not: one line names the extra to install."""
    venv = shipped_venvs[kind]
    done = subprocess.run(
        [str(venv.bin / "ollama-gateway"), "serve"],
        cwd=tmp_path,
        env={**venv.environ(), "GATEWAY_DATABASE_URL": "postgresql://gw:s3cret@127.0.0.1:1/gateway"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if kind == "image":
        assert done.returncode == 2
        assert done.stderr.startswith(
            "ollama-gateway: cannot use the database postgresql://gw:***@127.0.0.1:1/gateway: "
        )
        assert "Connection refused" in done.stderr
    else:
        assert (done.returncode, done.stderr) == (
            1,
            "ollama-gateway: error: GATEWAY_DATABASE_URL is a PostgreSQL URL, and the PostgreSQL driver is not "
            "installed: install the gateway with its postgres extra (pip install 'ollama-gateway[postgres]')\n",
        )
    assert done.stderr.count("\n") == 1
    assert "s3cret" not in done.stdout + done.stderr
