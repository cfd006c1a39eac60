"""ollama-gateway: an authenticating, rate-limiting, streaming gateway in front of Ollama."""

__version__ = "0.1.0"
