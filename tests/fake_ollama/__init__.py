"""A faithful fake Ollama (v0.33 wire behaviour) for tests: a real HTTP server on 127.0.0.1."""

from .behaviour import INFERENCE_PATHS, QUEUE_FULL, RUNNER_FAILED, Behaviour
from .catalog import DEFAULT_MODELS
from .gate import StepGate
from .manage import VERSION
from .records import RecordedRequest
from .server import FakeOllama

__all__ = [
    "DEFAULT_MODELS",
    "INFERENCE_PATHS",
    "QUEUE_FULL",
    "RUNNER_FAILED",
    "VERSION",
    "Behaviour",
    "FakeOllama",
    "RecordedRequest",
    "StepGate",
]
