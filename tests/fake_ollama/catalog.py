"""Installed models, the pullable registry, blobs and loaded runners: the fake's state."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from .names import ModelName, parse_name
from .wire import rfc3339_nano

DEFAULT_MODELS = ("llama3.2:latest", "qwen3:latest", "nomic-embed-text:latest")
EXTRA_REGISTRY = ("tinyllama:latest",)

# family, parameter size, quantization, capabilities
_PROFILES: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "llama3.2": ("llama", "3.2B", "Q4_K_M", ("completion", "tools")),
    "qwen3": ("qwen3", "8.2B", "Q4_K_M", ("completion", "tools", "thinking")),
    "nomic-embed-text": ("nomic-bert", "137M", "F16", ("embedding",)),
}
_DEFAULT_PROFILE = ("llama", "1.1B", "Q4_0", ("completion",))
_MODIFIED_NS = 1_785_000_000_123_456_789  # a fixed install time keeps answers reproducible


@dataclass(frozen=True)
class Model:
    name: ModelName
    family: str
    parameter_size: str
    quantization: str
    capabilities: tuple[str, ...]
    digest: str
    size: int
    modified_ns: int

    @property
    def display(self) -> str:
        return self.name.display

    @property
    def modified_at(self) -> str:
        return rfc3339_nano(self.modified_ns)

    def details(self) -> dict[str, object]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization,
        }


def make_model(name: ModelName, modified_ns: int | None = None) -> Model:
    family, params, quant, caps = _PROFILES.get(name.model.lower(), _DEFAULT_PROFILE)
    digest = hashlib.sha256(name.key.encode()).hexdigest()
    size = 100_000_000 + int(digest[:8], 16) % 4_000_000_000
    modified = time.time_ns() if modified_ns is None else modified_ns
    return Model(name, family, params, quant, caps, digest, size, modified)


def _parse_all(names: Iterable[str]) -> dict[str, Model]:
    """Fixed install times, one minute apart, newest first in the order given."""
    models: dict[str, Model] = {}
    for index, text in enumerate(names):
        name = parse_name(text)
        if name is None:
            raise ValueError(f"invalid model name {text!r}")
        models[name.key] = make_model(name, _MODIFIED_NS - index * 60_000_000_000)
    return models


class Catalog:
    """Thread-safe state shared by the handlers (server thread) and the test thread."""

    def __init__(self, models: Iterable[str], registry: Iterable[str], version: str) -> None:
        self.version = version  # what /api/version answers
        self._lock = threading.Lock()
        self._initial = _parse_all(models)
        self._registry = _parse_all(registry)
        self._installed = dict(self._initial)
        self._blobs: set[str] = set()
        self._loaded: dict[str, float] = {}  # key -> expiry, time.time()

    def reset(self) -> None:
        with self._lock:
            self._installed = dict(self._initial)
            self._blobs.clear()
            self._loaded.clear()

    def installed(self) -> list[Model]:
        with self._lock:
            # /api/tags lists the most recently modified first
            return sorted(self._installed.values(), key=lambda m: -m.modified_ns)

    def find(self, name: ModelName) -> Model | None:
        with self._lock:
            return self._installed.get(name.key)

    def set_installed(self, names: Iterable[str]) -> None:
        models = _parse_all(names)
        with self._lock:
            self._installed = models

    def install(self, name: ModelName) -> Model:
        model = make_model(name)
        with self._lock:
            self._installed[name.key] = model
        return model

    def remove(self, name: ModelName) -> bool:
        with self._lock:
            self._loaded.pop(name.key, None)
            return self._installed.pop(name.key, None) is not None

    def in_registry(self, name: ModelName) -> bool:
        with self._lock:
            return name.key in self._registry or name.key in self._initial

    def has_blob(self, digest: str) -> bool:
        with self._lock:
            return digest in self._blobs

    def add_blob(self, digest: str) -> None:
        with self._lock:
            self._blobs.add(digest)

    def blobs(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._blobs)

    def load(self, model: Model, keep_alive: float | None) -> None:
        seconds = 300.0 if keep_alive is None else keep_alive
        with self._lock:
            if seconds == 0:
                self._loaded.pop(model.name.key, None)
            else:
                self._loaded[model.name.key] = time.time() + min(seconds, 10 * 365 * 86400)

    def loaded(self) -> list[tuple[Model, float]]:
        with self._lock:
            return [(self._installed[k], exp) for k, exp in self._loaded.items() if k in self._installed]
