# Two commands for a fresh clone: `make run` starts the gateway, `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two stamps in one virtualenv: `make run` installs what the gateway needs (and the redis and
# postgres extras);
# `make test` and the other checks add the dev tools (pytest, Playwright, ruff, mypy …) on top.
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed

NGINX := $(VENV)/nginx/usr/sbin/nginx

.PHONY: run test lint typecheck unit chromium bench lock clean

$(RUN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[redis,postgres]'
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,redis,postgres]'
	touch $(STAMP)

# Ctrl-C stops the gateway cleanly and it exits 130, as a shell reports a command ended by SIGINT:
# that is the normal way to stop it here, not an error for make to report. The trap keeps the
# shell alive through the SIGINT (a handler, unlike an ignore, is not inherited by the gateway).
run: $(RUN_STAMP)
	@trap : INT; $(BIN)/ollama-gateway serve || [ $$? -eq 130 ]

test: lint typecheck unit

# deptry: every import in the package is a runtime dependency (or an extra), so the image and
# `pip install` hold what it imports (settings in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/deptry gateway

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) $(NGINX) chromium
	@# The gateway installed as the image and the systemd recipe install it (tests/shipped.py;
	@# cached by what they install, so usually instant), built before the suite rather than in it.
	$(BIN)/python -m tests.shipped
	@# Two workers: most tests wait on sockets and processes. A group (xdist_group) runs on one
	@# worker, one test after another: the benchmark's smoke runs, which load a core each.
	$(BIN)/pytest -n 2 --dist loadgroup

# nginx for the test that streams through the shipped nginx config: Debian's binary unpacked
# into the virtualenv (no daemon, nothing installed system-wide). Best effort: without it that
# one test is skipped and says why.
$(NGINX):
	@mkdir -p $(VENV)/nginx
	@cd $(VENV)/nginx && { apt-get download nginx >/dev/null 2>&1 || \
		{ apt-get update -qq >/dev/null 2>&1 && apt-get download nginx >/dev/null 2>&1; }; } && \
		dpkg -x nginx_*.deb . && rm -f nginx_*.deb || echo "nginx could not be fetched; its live test will be skipped"

# Chromium for the admin page's browser tests: Debian's package, installed system-wide with apt
# (as root), driven by Playwright (which must not download a browser of its own). Best effort, as
# nginx: where it cannot be installed (no root, no apt, no network), those tests are skipped and
# say why, and a stamp in the virtualenv stops every later run from trying apt again (`make clean`
# removes it, or delete $(NO_CHROMIUM) to retry).
NO_CHROMIUM := $(VENV)/.chromium-unavailable

chromium:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ -f $(NO_CHROMIUM) ]; then \
		echo "Chromium is not installed (an earlier attempt failed; rm $(NO_CHROMIUM) to retry): browser tests will be skipped"; \
	else \
		echo "installing Chromium (Debian's chromium package, system-wide) for the browser tests…"; \
		export DEBIAN_FRONTEND=noninteractive; \
		{ apt-get install -y -qq chromium >/dev/null 2>&1 || \
		  { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; }; } || \
		{ mkdir -p $(VENV) && touch $(NO_CHROMIUM); echo "Chromium could not be installed; the browser tests will be skipped"; }; \
	fi

# The reproducible benchmark (see bench/README.md): minutes, pinned to CPUs; not part of test.
bench: $(STAMP)
	$(BIN)/python -m bench

# The image installs exactly these versions (hash-checked): run after changing a dependency.
lock: $(STAMP)
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra redis --extra postgres --universal --python-version 3.11 \
		--generate-hashes --quiet -o requirements.lock

clean:
	rm -rf $(VENV) build *.egg-info
