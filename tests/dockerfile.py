"""The Dockerfile read as data: its stages and their instructions as Docker sees them (comments
dropped, continuations joined, the ARGs before the first FROM put into it). It knows nothing of
what the instructions ought to say; the tests and the image build in tests/shipped.py decide."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parent.parent / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str


@dataclass(frozen=True)
class Stage:
    base: str
    body: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[str]:
        return [item.value for item in self.body if item.keyword == keyword]

    def last(self, keyword: str) -> str:
        values = self.all(keyword)
        assert values, f"no {keyword} in the stage FROM {self.base}"
        return values[-1]

    def env(self) -> dict[str, str]:
        return {name: value for value in self.all("ENV") for name, value in env_pairs(value)}


def env_pairs(value: str) -> list[tuple[str, str]]:
    """The ``NAME=value`` pairs of one ENV instruction, unquoted (``$VAR`` left as written)."""
    return [(name, assigned) for name, _, assigned in (word.partition("=") for word in shlex.split(value))]


def instructions(text: str) -> list[Instruction]:
    """Logical lines: comments dropped (also inside continuations), continuations joined."""
    logical: list[str] = []
    parts: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            parts.append(line[:-1].strip())
            continue
        logical.append(" ".join([*parts, line]))
        parts = []
    assert not parts, "the Dockerfile ends inside a continuation"
    return [Instruction(keyword.upper(), value.strip()) for keyword, _, value in (x.partition(" ") for x in logical)]


def stages(path: Path = DOCKERFILE) -> list[Stage]:
    args: dict[str, str] = {}
    found: list[Stage] = []
    body: list[Instruction] = []
    base = ""
    for item in instructions(path.read_text()):
        if item.keyword == "ARG" and not base:
            name, _, value = item.value.partition("=")
            args[name] = value
        elif item.keyword == "FROM":
            if base:
                found.append(Stage(base, tuple(body)))
            image = item.value.split()[0]
            base = re.sub(r"\$\{(\w+)\}", lambda match: args[match.group(1)], image)
            body = []
        else:
            body.append(item)
    found.append(Stage(base, tuple(body)))
    return found
