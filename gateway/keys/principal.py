"""Who a request acts for, once its key has been checked."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.keys.store import Limits, Scope
from gateway.ollama.models import ModelPattern


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    name: str
    scopes: frozenset[Scope]
    patterns: tuple[ModelPattern, ...]
    limits: Limits
