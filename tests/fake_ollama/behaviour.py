"""The knobs a test turns to make the fake slow, broken or strict."""

from __future__ import annotations

from dataclasses import dataclass

from .gate import StepGate

# Routes that load a model or stream progress; timing and failure knobs apply here by default.
INFERENCE_PATHS = frozenset(
    {
        "/api/generate",
        "/api/chat",
        "/api/embed",
        "/api/embeddings",
        "/api/pull",
        "/api/push",
        "/api/create",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
    }
)

QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"
RUNNER_FAILED = "an error was encountered while running the model: unexpected EOF"


@dataclass
class Behaviour:
    """How the fake answers. A request takes a snapshot of it when it arrives.

    Content: `tokens` pieces `tok0 `, `tok1 `, ... (or exactly `pieces`), preceded by
    `thinking_tokens` pieces `think0 `, ... on thinking-capable models unless `think`
    is false. Chunks: every body write (an NDJSON line, an SSE event group, a whole
    non-streamed body) counts as one chunk for `cut_after` and `gate`; a gated
    response writes its first chunk freely and each later one after a release.
    The timing and failure knobs apply to the routes in `paths` (default:
    INFERENCE_PATHS); `host_check` applies everywhere.
    """

    tokens: int = 3
    pieces: tuple[str, ...] | None = None
    thinking_tokens: int = 0
    done_reason: str = "stop"
    prompt_eval_count: int = 7
    eval_count: int | None = None  # None: the number of pieces generated

    token_delay: float = 0.0  # seconds before each chunk after the first
    first_byte_delay: float = 0.0  # model load: nothing, not even the status line, before it
    hang: bool = False  # read the request, then send nothing until the client leaves
    gate: StepGate | None = None

    fail_after: int | None = None  # after N pieces: an error line (200 already sent)
    cut_after: int | None = None  # after N chunks: close the TCP connection mid-body
    cut_reset: bool = False  # cut with a TCP reset (RST) instead of an orderly close (FIN)
    status: int | None = None  # answer with this error status before streaming
    error: str | None = None  # message for `status` / `fail_after`
    error_from_stream: bool = False  # pre-chunk error as the stream machinery sends it

    host_check: bool = False  # 403 with an empty body for a foreign Host or Origin
    paths: frozenset[str] | None = None  # where the timing/failure knobs apply

    def applies_to(self, path: str) -> bool:
        return path in (INFERENCE_PATHS if self.paths is None else self.paths)

    def forced_error(self) -> tuple[int, str] | None:
        """The error to answer with before streaming, if any."""
        if self.status is None and (self.error is None or self.fail_after is not None):
            return None
        status = 500 if self.status is None else self.status
        default = QUEUE_FULL if status == 503 else "fake ollama: forced error"
        return status, self.error or default

    @property
    def stream_error(self) -> str:
        return self.error or RUNNER_FAILED
