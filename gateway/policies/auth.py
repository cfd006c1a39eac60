"""Authentication: who is calling, from the credential they present.

Keys are accepted as ``Authorization: Bearer KEY`` (openai SDK, ``ollama.Client(headers=...)``,
``OLLAMA_API_KEY``), ``X-API-Key: KEY``, or HTTP Basic with the key as the password (tools that only
speak basic auth, LangChain's ``user:pass@host`` URLs). Never from the query string, where it
would end up in logs. The ``ollama`` command's own signed requests (``Authorization:
<public key>:<signature>``, see ``keys/signature.py``) act as the gateway key their Ollama public
key is attached to.

Every failure looks the same to the caller (401, no hint which check failed); the reason goes to
the operator's log. A signed request whose public key belongs to no key is also remembered as a
request for access, and its 401 carries a ``signin_url`` where an admin can grant it. A valid
credential is checked before the lockout is (see ``lockout.py``): it is never refused for other
requests' failures from its address.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from gateway.errors import Unauthorized
from gateway.flow import Flow
from gateway.keys import apikey
from gateway.keys.keyring import Keyring
from gateway.keys.ollamakey import OllamaKey
from gateway.keys.pending import PendingAccess
from gateway.keys.principal import Principal
from gateway.keys.signature import MalformedSignature, SignedHeader, Verifier, signed_bytes, signed_header, timestamp
from gateway.keys.store import KeyRecord
from gateway.ollama.models import parse_pattern
from gateway.policies.lockout import Lockout
from gateway.proxy.clientaddr import ClientAddress
from gateway.proxy.headers import Headers, header
from gateway.proxy.inbound import Inbound

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="ollama-gateway"'}
_MESSAGE = "invalid or missing API key"


@dataclass(frozen=True, slots=True)
class RequestHead:
    """What authentication reads of a request: a signed one signs its method, path and ``ts``."""

    method: str
    path: str
    query: bytes
    headers: Headers
    client: ClientAddress


@dataclass(frozen=True, slots=True)
class Authenticated:
    principal: Principal
    # The Ollama public key that signed the request, when it was signed.
    public_key: OllamaKey | None = None


@dataclass(frozen=True, slots=True)
class SignedRequests:
    """How signed requests are checked, and where an unknown public key is sent to ask for access."""

    max_skew: float = 300.0
    # Where the admin page is reached from outside (GATEWAY_PUBLIC_URL); None: from the request.
    public_url: str | None = None
    # False when the admin page is off: an unknown key's 401 then has no signin_url.
    signin: bool = True


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
    def __init__(
        self,
        keyring: Keyring,
        lockout: Lockout,
        clock: Callable[[], float] = time.time,
        *,
        signed: SignedRequests | None = None,
        pending: PendingAccess | None = None,
    ) -> None:
        self._keyring = keyring
        self._lockout = lockout
        self._clock = clock
        self._signed = signed or SignedRequests()
        self._pending = pending if pending is not None else PendingAccess()
        self._verifier = Verifier()
        self._principals: dict[str, tuple[KeyRecord, Principal]] = {}

    @property
    def pending(self) -> PendingAccess:
        return self._pending

    async def authenticate(self, head: RequestHead) -> Authenticated:
        authorization = header(head.headers, b"authorization")
        if authorization is not None:
            try:
                signed = signed_header(authorization)
            except MalformedSignature:
                raise self._failure(head, "malformed") from None
            if signed is not None:
                return await self._signed_by(head, signed)
        key = presented_key(head.headers)
        if key is None:
            # No credential is no guess: a plain 401 that the lockout does not count.
            raise Unauthorized(_MESSAGE, headers=CHALLENGE, auth="missing")
        key_id = apikey.key_id_of(key)
        record, reason = self._check(key, key_id)
        if record is None and key_id is not None and self._lockout.refusal(head.client.ip) is None:
            # A key created or rotated a moment ago may be newer than this server's last look at
            # the store: look again (shared and rate-limited by the keyring) before refusing.
            await self._keyring.catch_up()
            record, reason = self._check(key, key_id)
        if record is None:
            raise self._failure(head, reason, key_id=key_id)
        self._keyring.note_use(record.id)
        return Authenticated(self._principal(record))

    async def _signed_by(self, head: RequestHead, signed: SignedHeader) -> Authenticated:
        fingerprint = signed.key.fingerprint
        try:
            ts = timestamp(_query_values(head.query, b"ts"))
        except MalformedSignature:
            raise self._failure(head, "malformed", public_key=fingerprint) from None
        if not self._verifier.verify(signed, signed_bytes(head.method, head.path, ts)):
            raise self._failure(head, "bad_signature", public_key=fingerprint)
        if abs(self._clock() - ts) > self._signed.max_skew:
            raise self._failure(head, "stale_timestamp", public_key=fingerprint)
        record = self._keyring.owner_of(signed.key.blob)
        if record is None and self._lockout.refusal(head.client.ip) is None:
            await self._keyring.catch_up()  # attached a moment ago, perhaps
            record = self._keyring.owner_of(signed.key.blob)
        if record is None:
            self._pending.note(signed.key, _agent(head.headers), head.client.ip)
            raise self._failure(
                head, "unknown_public_key", public_key=fingerprint, signin_url=self._signin_url(head, signed.key)
            )
        if not record.usable(self._clock()):
            reason = "revoked" if record.revoked else "expired"
            raise self._failure(head, reason, key_id=record.id, public_key=fingerprint)
        self._keyring.note_use(record.id)
        self._pending.forget(signed.key)  # granted: no longer waiting
        return Authenticated(self._principal(record), signed.key)

    def _failure(
        self,
        head: RequestHead,
        reason: str,
        *,
        key_id: str | None = None,
        public_key: str | None = None,
        signin_url: str | None = None,
    ) -> Exception:
        """A wrong credential: 429 from a locked address (no more looks), else counted, then 401."""
        refusal = self._lockout.refusal(head.client.ip)
        if refusal is not None:
            return refusal
        self._lockout.failed(head.client.ip)
        return Unauthorized(
            _MESSAGE, headers=CHALLENGE, auth=reason, key_id=key_id, public_key=public_key, signin_url=signin_url
        )

    def _check(self, key: str, key_id: str | None) -> tuple[KeyRecord | None, str]:
        if key_id is None:
            return None, "malformed"
        record = self._keyring.get(key_id)
        if record is None:
            return None, "unknown"
        if not apikey.verify(key, record.digest):
            return None, "wrong_secret"
        if record.revoked:
            return None, "revoked"
        if record.expired(self._clock()):
            return None, "expired"
        return record, ""

    def _signin_url(self, head: RequestHead, key: OllamaKey) -> str | None:
        if not self._signed.signin:
            return None
        base = self._signed.public_url
        if base is None:
            host = header(head.headers, b"host")
            if host is None:
                return None
            base = f"{head.client.proto}://{host.decode('latin-1')}"
        return f"{base.rstrip('/')}/admin/#/connect?key={key.connect_token}"

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


def _query_values(query: bytes, name: bytes) -> list[str]:
    return [_decoded(value).decode("latin-1") for key, _, value in _pairs(query) if _decoded(key) == name]


def without_ts(query: bytes) -> bytes:
    """The query with its ``ts`` parameters removed (a signed request's, never meant for Ollama);
    every other pair kept as it was sent."""
    return b"&".join(pair for pair in query.split(b"&") if pair and _decoded(pair.partition(b"=")[0]) != b"ts")


def _pairs(query: bytes) -> list[tuple[bytes, bytes, bytes]]:
    return [pair.partition(b"=") for pair in query.split(b"&")]


def _decoded(part: bytes) -> bytes:
    """A query key or value as a form decodes it (``+`` is a space, then percent-escapes)."""
    return unquote_to_bytes(part.replace(b"+", b" "))


def _agent(headers: Headers) -> str:
    value = header(headers, b"user-agent")
    return "" if value is None else value.decode("latin-1")


class AuthPolicy:
    """Puts the caller's ``Principal`` on the flow, or refuses with 401 (429 for a wrong key from an
    address that is locked out)."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    async def admit(self, flow: Flow, inbound: Inbound) -> None:
        head = RequestHead(flow.method, flow.path, flow.query, flow.headers, flow.client)
        try:
            authenticated = await self._authenticator.authenticate(head)
        except Unauthorized as error:
            flow.auth, flow.claimed_key_id, flow.public_key = error.auth, error.key_id, error.public_key
            raise
        flow.principal = authenticated.principal
        if authenticated.public_key is not None:
            flow.public_key = authenticated.public_key.fingerprint
            # The signature's timestamp is the gateway's business, not Ollama's.
            flow.query = without_ts(flow.query)

    def finish(self, flow: Flow, admitted: None) -> None:
        pass
