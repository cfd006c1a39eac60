"""The core: one exchange relayed between client and upstream, byte for byte: the relay,
the client side, headers, the client's address, the SSE usage filter and the upstream clients
(upstream/).

It knows nothing of keys, limits, logs or accounting: every layer that does sits above it.
"""
