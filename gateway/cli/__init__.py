"""The command line: ``ollama-gateway serve | keys … | usage | upstreams`` (arguments in,
text out).

The top of the stack: it may import every layer, and only ``gateway.__main__`` imports it.
"""
