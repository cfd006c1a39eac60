# syntax=docker/dockerfile:1
# The gateway image. Used by docker-compose.yml; see README "Deploy".

# One pinned base for both stages: the virtualenv built in the first is copied into the second.
ARG PYTHON_IMAGE=python:3.11.14-slim-trixie

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, from the lock file alone, so a code change reuses this layer: the runtime
# dependencies and the redis and postgres extras at the exact versions and hashes `make lock`
# recorded, so an image built twice holds the same packages. Wheels only: nothing is compiled, and no compiler
# is needed in either stage.
COPY requirements.lock ./
RUN pip install --require-hashes --only-binary=:all: --no-deps -r requirements.lock
COPY pyproject.toml README.md LICENSE ./
COPY gateway/ gateway/
RUN pip install --no-deps . \
    && pip check \
    && pip uninstall --yes pip

FROM ${PYTHON_IMAGE}
# A fixed numeric UID: Kubernetes' runAsNonRoot can verify it, and volumes can be chowned to it.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin gateway \
    && mkdir /data \
    && chown gateway:gateway /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    GATEWAY_UPSTREAM_URL=http://ollama:11434 \
    GATEWAY_DATABASE_URL=sqlite:////data/gateway.db \
    GATEWAY_LOG_FORMAT=json
# Keys and usage live here; a new named volume inherits the gateway user's ownership.
VOLUME ["/data"]
# Root-owned and empty: nothing is written here, and no .env is picked up by accident.
WORKDIR /app
USER 10001:10001
EXPOSE 8080
# The slim image has no curl; urlopen raises (exit 1) on anything but a 2xx.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('GATEWAY_PORT', '8080') + '/healthz', timeout=4)"]
# uvicorn is PID 1 and handles SIGTERM: it stops accepting, then lets in-flight requests and
# streams finish for GATEWAY_SHUTDOWN_GRACE seconds. The runtime's stop timeout must be longer.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "gateway"]
CMD ["serve"]
