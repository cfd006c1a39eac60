"""Ollama model names: normalised the way Ollama resolves them, and matched against key patterns.

Ollama fills a bare name with ``registry.ollama.ai`` / ``library`` / ``latest`` and compares case-
insensitively, so ``llama3.2``, ``LLAMA3.2:latest``, ``library/llama3.2`` and
``https://registry.ollama.ai/library/llama3.2:latest`` are one model. Patterns are normalised the
same way before matching, so no spelling of a name can slip past a pattern.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_PART = re.compile(r"[a-z0-9_][a-z0-9._-]*")
_HOST = re.compile(r"[a-z0-9_][a-z0-9._:-]*")
_GLOB_PART = re.compile(r"[a-z0-9_.*?\[\]!-]+")
_GLOB_HOST = re.compile(r"[a-z0-9_.:*?\[\]!-]+")
_MAX_LENGTH = 350


class InvalidModelName(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    def __str__(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def short(self) -> str:
        """The shortest spelling Ollama would display (e.g. ``llama3.2:latest``)."""
        # As Ollama's DisplayShortest: the default host goes unsaid, and then the library namespace
        # too (acme/custom-model:latest, never registry.ollama.ai/acme/custom-model:latest).
        if self.host != DEFAULT_HOST:
            prefix = f"{self.host}/{self.namespace}/"
        else:
            prefix = "" if self.namespace == DEFAULT_NAMESPACE else f"{self.namespace}/"
        return f"{prefix}{self.model}:{self.tag}"

    @property
    def is_cloud(self) -> bool:
        """Runs on the host owner's ollama.com account (``:cloud``, ``…-cloud``)."""
        return self.tag == "cloud" or self.tag.endswith("-cloud") or self.model.endswith("-cloud")


def _cut(text: str, separator: str) -> tuple[str, str]:
    # An explicitly empty part ("llama3.2:", "/model") is invalid, as in Ollama ("!" never matches).
    before, after = text.rsplit(separator, 1)
    return before or "!", after or "!"


def _split(name: str) -> tuple[str, str, str, str]:
    """Ollama's ParseNameBare: tag after the last ':' that follows the last '/', then '/'-parts."""
    host = namespace = tag = ""
    rest = name
    if rest.rfind(":") > rest.rfind("/"):
        rest, tag = _cut(rest, ":")
    if "/" not in rest:
        return host, namespace, rest, tag
    rest, model = _cut(rest, "/")
    if "/" not in rest:
        return host, rest, model, tag
    rest, namespace = _cut(rest, "/")
    host = rest.split("://", 1)[1] if "://" in rest else rest
    return host or "!", namespace, model, tag


def parse_model(name: str) -> ModelName:
    """The normalised name, or ``InvalidModelName`` if Ollama would not accept it either."""
    if not name or len(name) > _MAX_LENGTH:
        raise InvalidModelName(name)
    host, namespace, model, tag = _split(name.lower())
    host, namespace, tag = host or DEFAULT_HOST, namespace or DEFAULT_NAMESPACE, tag or DEFAULT_TAG
    if not (_HOST.fullmatch(host) and _PART.fullmatch(namespace) and _PART.fullmatch(model) and _PART.fullmatch(tag)):
        raise InvalidModelName(name)
    return ModelName(host, namespace, model, tag)


# A pure function's memo, as re and fnmatch keep their own: listings repeat the same names on
# every poll, and parsing 1,000 of them costs ~2.5 ms where looking them up costs ~0.1 ms. Bounded
# (a few MB at most), so a server listing ever-new names only turns it over.
@functools.lru_cache(maxsize=16384)
def listed_model(name: str) -> ModelName | None:
    """``parse_model`` for a name a listing shows; None when Ollama would not accept it."""
    try:
        return parse_model(name)
    except InvalidModelName:
        return None


@dataclass(frozen=True, slots=True)
class ModelPattern:
    """A glob over normalised names.

    ``llama3.2`` means exactly ``llama3.2:latest`` (as Ollama resolves it); ``llama3.2:*`` any tag;
    a glob in the name without a tag (``qwen*``) any tag too; ``*`` every model.
    """

    text: str
    normalised: str

    def matches(self, name: ModelName) -> bool:
        return fnmatch.fnmatchcase(str(name), self.normalised)


def parse_pattern(text: str) -> ModelPattern:
    raw = text.strip().lower()
    if raw == "*":
        return ModelPattern(text, "*")
    if not raw or len(raw) > _MAX_LENGTH:
        raise InvalidModelName(text)
    host, namespace, model, tag = _split(raw)
    has_glob = any(char in model for char in "*?[")
    tag = tag or ("*" if has_glob else DEFAULT_TAG)
    host, namespace = host or DEFAULT_HOST, namespace or DEFAULT_NAMESPACE
    parts_ok = _GLOB_HOST.fullmatch(host) and all(_GLOB_PART.fullmatch(part) for part in (namespace, model, tag))
    if not parts_ok:
        raise InvalidModelName(text)
    return ModelPattern(text, f"{host}/{namespace}/{model}:{tag}")


def allowed(name: ModelName, patterns: tuple[ModelPattern, ...]) -> bool:
    """No patterns means every model."""
    return not patterns or matcher(patterns)(str(name)) is not None


@functools.lru_cache(maxsize=1024)
def matcher(patterns: tuple[ModelPattern, ...]) -> Callable[[str], re.Match[str] | None]:
    """One regular expression for all of a key's patterns, matched against a normalised name: a
    listing checks every entry, and one match is ~5x cheaper than a glob at a time."""
    return re.compile("|".join(fnmatch.translate(pattern.normalised) for pattern in patterns)).match
