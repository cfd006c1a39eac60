"""The reproducible benchmark: the gateway against a direct connection to a fast fake upstream.

Run it with ``python -m bench`` (see bench/README.md).
"""
