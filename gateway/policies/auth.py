"""Authentication: who is calling, from the key they present.

Keys are accepted as ``Authorization: Bearer KEY`` (openai SDK, ``ollama.Client(headers=...)``,
``OLLAMA_API_KEY``), ``X-API-Key: KEY``, or HTTP Basic with the key as the password (tools that only
speak basic auth, LangChain's ``user:pass@host`` URLs). Never from the query string, where it
would end up in logs. Every failure looks the same to the caller (401, no hint which check failed).
A valid key is checked before the lockout is (see ``lockout.py``): it is never refused for other
requests' failures from its address.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable

from gateway.errors import Unauthorized
from gateway.flow import Flow
from gateway.keys import apikey
from gateway.keys.keyring import Keyring
from gateway.keys.principal import Principal
from gateway.keys.store import KeyRecord
from gateway.ollama.models import parse_pattern
from gateway.policies.lockout import Lockout
from gateway.proxy.headers import Headers, header
from gateway.proxy.inbound import Inbound

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="ollama-gateway"'}
_MESSAGE = "invalid or missing API key"


def presented_key(headers: Headers) -> str | None:
    authorization = header(headers, b"authorization")
    if authorization is not None:
        scheme, _, value = authorization.decode("latin-1").strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            return value or None
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None
            return decoded.partition(":")[2] or None
        return None
    api_key = header(headers, b"x-api-key")
    return api_key.decode("latin-1").strip() or None if api_key is not None else None


class Authenticator:
    def __init__(self, keyring: Keyring, lockout: Lockout, clock: Callable[[], float] = time.time) -> None:
        self._keyring = keyring
        self._lockout = lockout
        self._clock = clock
        self._principals: dict[str, tuple[KeyRecord, Principal]] = {}

    async def authenticate(self, headers: Headers, address: str) -> Principal:
        key = presented_key(headers)
        if key is None:
            # No credential is no guess: a plain 401 that the lockout does not count.
            raise Unauthorized(_MESSAGE, headers=CHALLENGE)
        key_id = apikey.key_id_of(key)
        record = self._valid(key, key_id)
        if record is None:
            refusal = self._lockout.refusal(address)
            if refusal is not None:
                raise refusal  # a wrong key from a locked address: no look at the store
            if key_id is not None:
                # A key created or rotated a moment ago may be newer than this server's last look
                # at the store: look again (shared and rate-limited by the keyring) before refusing.
                await self._keyring.catch_up()
                record = self._valid(key, key_id)
        if record is None:
            self._lockout.failed(address)
            raise Unauthorized(_MESSAGE, headers=CHALLENGE)
        self._keyring.note_use(record.id)
        return self._principal(record)

    def _valid(self, key: str, key_id: str | None) -> KeyRecord | None:
        record = self._keyring.get(key_id) if key_id else None
        if record is None or not apikey.verify(key, record.digest) or not record.usable(self._clock()):
            return None
        return record

    def _principal(self, record: KeyRecord) -> Principal:
        cached = self._principals.get(record.id)
        if cached is not None and cached[0] is record:
            return cached[1]
        principal = Principal(
            key_id=record.id,
            name=record.name,
            scopes=record.scopes,
            patterns=tuple(parse_pattern(text) for text in record.models),
            limits=record.limits,
        )
        self._principals[record.id] = (record, principal)
        return principal


class AuthPolicy:
    """Puts the caller's ``Principal`` on the flow, or refuses with 401 (429 for a wrong key from an
    address that is locked out)."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    async def admit(self, flow: Flow, inbound: Inbound) -> None:
        flow.principal = await self._authenticator.authenticate(flow.headers, flow.client.ip)

    def finish(self, flow: Flow, admitted: None) -> None:
        pass
