"""The gateway as it ships, installed each way in a virtualenv of its own under .venv/shipped/:

- ``image``: the Dockerfile's build stage run on this machine: its ENV, WORKDIR and COPY (what
  .dockerignore admits) into a scratch directory, its RUN commands as written with the image's
  virtualenv path made this one's (the lock file alone as hash-checked wheels, then the project
  with --no-deps, then pip check);
- ``pip``: the systemd recipe (README "systemd"): ``python3.11 -m venv``, then ``pip install
  <checkout>``, which resolves the dependencies from the package registry.

Each is kept under a digest of what it is built from and built again when that changes (older
ones are removed), so a run that changed nothing pays only for the digest. Building needs the
package registry; a build that fails raises, it is never skipped. Knows nothing of the tests.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from tests import dockerfile

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / ".venv" / "shipped"
# One pip run; a cold one downloads every wheel.
STEP_TIMEOUT = 240.0
# For a test whose fixture may have to build first (both kinds side by side: about 15 s cold).
BUILD_TIMEOUT = 300.0
_BUILT = ".built"
# Docker's context leaves these out (.dockerignore); the build would not see them.
_NOT_IN_CONTEXT = shutil.ignore_patterns("__pycache__", "*.py[cod]")
# The image's pip keeps no cache to keep the image small; the wheels are hash-checked, so the
# cache here cannot change what is installed, only spare downloads.
_CACHE_ONLY = {"PIP_NO_CACHE_DIR"}
# What would make a build read the checkout or the dev virtualenv instead of what it installed.
_LEAKS = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV", "PIP_USER"}


class BuildFailed(RuntimeError):
    """A step of a build failed (a missing wheel, a broken requirement, no registry)."""


@dataclass(frozen=True)
class Venv:
    """A built virtualenv."""

    kind: str
    prefix: Path

    @property
    def bin(self) -> Path:
        return self.prefix / "bin"

    @property
    def python(self) -> Path:
        return self.bin / "python"

    def environ(self) -> dict[str, str]:
        """A process environment as a container or a systemd unit starts with: this virtualenv
        first on PATH, nothing of the test's (no PYTHONPATH, no dev virtualenv)."""
        return {"PATH": os.pathsep.join([str(self.bin), os.defpath])}


def shipped(kind: str) -> Venv:
    """The virtualenv of ``kind``, built first if what it is built from has changed."""
    SHIPPED.mkdir(parents=True, exist_ok=True)
    prefix = SHIPPED / f"{kind}-{digest()}"
    # Two test runs in one checkout build one at a time; the second finds it built.
    with (SHIPPED / f".{kind}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (prefix / _BUILT).is_file():
            for old in SHIPPED.glob(f"{kind}-*"):
                shutil.rmtree(old)
            with tempfile.TemporaryDirectory(prefix=f"shipped-{kind}-") as scratch:
                _BUILDERS[kind](prefix, Path(scratch))
            (prefix / _BUILT).write_text(prefix.name + "\n")
    return Venv(kind, prefix)


def digest() -> str:
    """What both builds read: the Dockerfile and what it copies (the lock file, pyproject.toml and
    the package), the names at the top of the checkout (a new top-level package changes what
    `pip install <checkout>` finds), this builder, and the interpreter."""
    hashed = hashlib.sha256(sys.version.encode())
    sources = [ROOT / word for value in _build_stage().all("COPY") for word in shlex.split(value)[:-1]]
    own = [dockerfile.DOCKERFILE, Path(__file__).resolve(), Path(dockerfile.__file__).resolve()]
    for path in [*own, *_files(sources)]:
        hashed.update(b"\0" + str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    hashed.update("\0".join(sorted(_checked_out_names())).encode())
    return hashed.hexdigest()[:16]


def _files(sources: Iterable[Path]) -> list[Path]:
    found: list[Path] = []
    for source in sources:
        inside = sorted(source.rglob("*")) if source.is_dir() else [source]
        found += [path for path in inside if path.is_file() and _in_context(path)]
    return found


def _in_context(path: Path) -> bool:
    return not _NOT_IN_CONTEXT(str(ROOT), list(path.relative_to(ROOT).parts))


def _build_stage() -> dockerfile.Stage:
    return dockerfile.stages()[0]


def _image_venv_path() -> str:
    """Where the Dockerfile builds the virtualenv: what the final stage copies from the build."""
    (copied,) = [value for value in dockerfile.stages()[-1].all("COPY") if value.startswith("--from=")]
    return shlex.split(copied)[1]


def _build_image(prefix: Path, scratch: Path) -> None:
    """The build stage's instructions in order, the container's filesystem root being ``scratch``
    and its virtualenv ``prefix``."""
    base = dockerfile.stages()[-1].base
    tag = re.fullmatch(r"python:(\d+)\.(\d+)\.\d+-.*", base)
    assert tag, base
    # The wheels in the lock are chosen for the image's interpreter.
    if (int(tag.group(1)), int(tag.group(2))) != sys.version_info[:2]:
        raise BuildFailed(f"the image runs {base}; these tests run Python {sys.version.split()[0]}")
    venv = _image_venv_path()
    env = _build_env()
    workdir = scratch
    for item in _build_stage().body:
        value = item.value.replace(venv, str(prefix))
        if item.keyword == "ENV":
            for name, assigned in dockerfile.env_pairs(value):
                if name not in _CACHE_ONLY:
                    env[name] = re.sub(r"\$\{?(\w+)\}?", lambda match: env.get(match.group(1), ""), assigned)
        elif item.keyword == "WORKDIR":
            workdir = scratch / value.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif item.keyword == "COPY" and not value.startswith("--"):
            *sources, target = shlex.split(value)
            _copy(sources, workdir / target, into=target.endswith("/") or len(sources) > 1)
        elif item.keyword == "RUN":
            _run(["/bin/sh", "-c", value], workdir, env)
        else:
            raise BuildFailed(f"tests/shipped.py cannot follow the Dockerfile's {item.keyword} {item.value}")


def _copy(sources: list[str], target: Path, *, into: bool) -> None:
    """Docker's COPY from the checkout: a directory's contents, or a file (into a directory when
    the target ends with / or several are copied)."""
    for source in sources:
        path = ROOT / source
        if path.is_dir():
            shutil.copytree(path, target, ignore=_NOT_IN_CONTEXT, dirs_exist_ok=True)
            continue
        destination = target / path.name if into else target
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, destination)


def _build_pip(prefix: Path, scratch: Path) -> None:
    """README "systemd": ``python3.11 -m venv /opt/ollama-gateway && /opt/ollama-gateway/bin/pip
    install /path/to/this/checkout`` (a copy of this checkout, as a clone holds it), then pip check."""
    checkout = scratch / "checkout"
    shutil.copytree(ROOT, checkout, ignore=_not_checked_out)
    env = _build_env()
    _run([sys.executable, "-m", "venv", str(prefix)], scratch, env)
    _run([str(prefix / "bin" / "pip"), "install", str(checkout)], scratch, env)
    _run([str(prefix / "bin" / "pip"), "check"], scratch, env)


def _ignored() -> list[str]:
    """The names .gitignore keeps out of a clone (the last part of each pattern), and .git."""
    lines = (line.strip() for line in (ROOT / ".gitignore").read_text().splitlines())
    return [".git", *(line.rstrip("/").rpartition("/")[2] for line in lines if line and not line.startswith("#"))]


def _not_checked_out(directory: str, names: list[str]) -> set[str]:
    ignore: Callable[[str, list[str]], set[str]] = shutil.ignore_patterns(*_ignored())
    return ignore(directory, names)


def _checked_out_names() -> list[str]:
    names = [path.name for path in ROOT.iterdir()]
    return sorted(set(names) - _not_checked_out(str(ROOT), names))


def _build_env() -> dict[str, str]:
    # The machine's own ways of reaching the registry (proxies, certificates, pip's configuration)
    # are kept. `python` is this interpreter (the image's minor version), as in the image.
    env = {name: value for name, value in os.environ.items() if name not in _LEAKS}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
    return env


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> None:
    try:
        done = subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise BuildFailed(f"{shlex.join(command)} took over {STEP_TIMEOUT:.0f} s") from error
    if done.returncode != 0:
        output = (done.stdout + done.stderr)[-4000:]
        raise BuildFailed(f"{shlex.join(command)} exited {done.returncode}:\n{output}")


_BUILDERS: dict[str, Callable[[Path, Path], None]] = {"image": _build_image, "pip": _build_pip}
KINDS = tuple(_BUILDERS)


if __name__ == "__main__":
    # `make test` builds both before pytest runs (cached: nothing to do when nothing changed), so
    # the suite's own time is the tests'; a plain `pytest` builds them in its session fixture.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(KINDS)) as pool:
        for built in pool.map(shipped, KINDS):
            print(f"shipped runtime ready: {built}")
