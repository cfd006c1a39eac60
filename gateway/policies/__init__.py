"""The policies around the relay: who calls (auth, lockout), what it may reach
(permissions, the listing filter), the body, per-key limits (limits/), the usage request, and
routing to a server.

A policy sees one ``Flow``; it knows nothing of routes, logs, metrics or accounting.
"""
