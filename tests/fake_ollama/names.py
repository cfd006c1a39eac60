"""Ollama model names: `[host/][namespace/]model[:tag]` with registry defaults."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_LIMITS = {"host": 350, "namespace": 80, "model": 80, "tag": 80}


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    @property
    def key(self) -> str:
        """Identity for lookups; Ollama compares names case-insensitively."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}".lower()

    @property
    def display(self) -> str:
        """The shortest form, as `ollama list` and /api/tags print it."""
        if self.host != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"


def parse_name(text: str) -> ModelName | None:
    """Parse and fill in defaults like model.ParseName; None when the name is invalid."""
    rest, tag = text, ""
    if rest.rfind(":") > rest.rfind("/"):
        rest, tag = rest.rsplit(":", 1)
    parts = rest.split("/")
    if len(parts) > 3 or not parts[-1]:
        return None
    parts = [*([""] * (3 - len(parts))), *parts]
    host = parts[0].split("://", 1)[-1]
    name = ModelName(host or DEFAULT_HOST, parts[1] or DEFAULT_NAMESPACE, parts[2], tag or DEFAULT_TAG)
    parts_by_kind = (("host", name.host), ("namespace", name.namespace), ("model", name.model), ("tag", name.tag))
    valid = all(_valid_part(kind, value) for kind, value in parts_by_kind)
    return name if valid else None


def _valid_part(kind: str, text: str) -> bool:
    if not 0 < len(text) <= _LIMITS[kind]:
        return False
    if not (text[0].isascii() and (text[0].isalnum() or text[0] == "_")):
        return False
    for char in text[1:]:
        if char in "_-":
            continue
        if char == ".":
            if kind == "namespace":
                return False
            continue
        if char == ":":
            if kind != "host":
                return False
            continue
        if not (char.isascii() and char.isalnum()):
            return False
    return True
