"""One Ollama server of the fleet: its client, its fair queue, and what the gateway knows of it."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field

from gateway.fleet.config import MemberSpec
from gateway.fleet.queue import FairQueue
from gateway.ollama.listjson import entry_name, read
from gateway.ollama.models import listed_model, parse_model
from gateway.proxy.upstream import Upstream


class State(enum.Enum):
    UNKNOWN = "unknown"  # not asked yet
    UP = "up"
    DOWN = "down"


_REASON_LIMIT = 300


@dataclass(eq=False, slots=True)
class Member:
    spec: MemberSpec
    client: Upstream
    # The client for the watcher and the merged listings: a connection pool busy with generations
    # must neither make a healthy server look down nor keep it out of a listing.
    probe: Upstream
    # Inference requests in flight here at once, the rest waiting fairly; None: no cap.
    queue: FairQueue | None
    state: State = State.UNKNOWN
    reason: str = ""  # why it is down
    version: str | None = None
    # Normalised names (str(ModelName)) installed, and loaded into memory, as last seen.
    models: frozenset[str] = frozenset()
    loaded: set[str] = field(default_factory=set)
    # Requests routed here and not yet finished, queued ones included (the load routing weighs).
    routed: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def usable(self) -> bool:
        # A server not asked yet is tried: at start-up the fleet must not refuse everything.
        return self.state is not State.DOWN

    @property
    def queued(self) -> int:
        """Inference requests waiting here for a slot."""
        return self.queue.waiting if self.queue is not None else 0

    @property
    def in_flight(self) -> int:
        """Requests running here now (past the queue): what every surface calls "in flight"."""
        return self.routed - self.queued

    @property
    def free(self) -> bool:
        """It can start a request now: a free slot, or (with no cap) nothing in flight at all."""
        if self.queue is None:
            return self.routed == 0
        return self.queue.in_use < self.queue.capacity and not self.queue.waiting

    @property
    def load(self) -> float:
        return self.routed / self.spec.weight

    def mark_up(self, version: str | None, models: frozenset[str], loaded: set[str]) -> bool:
        """Record a complete answer; True when the server was down until now."""
        back = self.state is State.DOWN
        self.state, self.reason = State.UP, ""
        self.version, self.models, self.loaded = version, models, loaded
        return back

    def mark_down(self, reason: str) -> bool:
        """Record a failure; True when the server was up until now."""
        gone = self.state is State.UP
        # Kept short: it is quoted in other clients' errors and in logs.
        self.state, self.reason = State.DOWN, reason[:_REASON_LIMIT]
        return gone

    def snapshot(self) -> dict[str, object]:
        """What operators see (``/readyz``, ``ollama-gateway upstreams``, the admin API)."""
        queue = self.queue
        return {
            "name": self.name,
            "state": self.state.value,
            "reason": self.reason or None,
            "version": self.version,
            "models": sorted(_display(name) for name in self.models),
            "loaded": sorted(_display(name) for name in self.loaded),
            "in_flight": self.in_flight,
            "queued": self.queued,
            "oldest_wait_s": round(queue.oldest_wait(), 3) if queue is not None else 0.0,
            "capacity": queue.capacity if queue is not None else None,
            "weight": self.spec.weight,
        }


def model_keys(listing: bytes) -> frozenset[str]:
    """Normalised names in an ``/api/tags`` or ``/api/ps`` answer; anything unreadable is skipped."""
    try:
        answer = read(listing)
    except (ValueError, RecursionError):
        raise ValueError("not a model listing") from None
    if not isinstance(answer, dict):
        raise ValueError("not a model listing")
    entries = answer.get("models")
    keys: set[str] = set()
    for entry in entries if isinstance(entries, list) else ():
        name = entry_name(entry, "model")
        model = listed_model(name) if name is not None else None
        if model is not None:
            keys.add(str(model))
    return frozenset(keys)


def version_of(body: bytes) -> str | None:
    try:
        return version_text(json.loads(body))
    except (ValueError, RecursionError):
        return None


def version_text(answer: object) -> str | None:
    """The version in a parsed ``/api/version`` answer, if it is a sane one."""
    value = answer.get("version") if isinstance(answer, dict) else None
    return value if isinstance(value, str) and value.isprintable() and len(value) <= 64 else None


def _display(key: str) -> str:
    return parse_model(key).short
