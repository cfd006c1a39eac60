"""API keys: the key format, the store protocol and its SQLite store, the server's keyring,
the principal a key acts as, and key management shared by the CLI and the admin API.

Keys know nothing of the exchange (``Flow``), the servers, policies or routes.
"""
