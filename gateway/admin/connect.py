"""``/admin/api/connect``: Ollama public keys asking for access, for the page's connect view.

``ollama signin`` against the gateway sends its user to ``/admin/#/connect?key=<token>`` (the
public key line, base64url-encoded as Ollama encodes it for its own connect page). The page asks
here what is known of that key: its fingerprint, the key it already belongs to, and what its
signed requests said about their client (user agent, address, when, how often: the client sends
no host name). Attaching it is an ordinary key create or update (``add_ollama_keys``), behind the
page's confirmation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Query

from gateway.database.sqlite import Runner
from gateway.keys.management import InvalidKeyRequest, KeyAdmin, when
from gateway.keys.ollamakey import InvalidOllamaKey, OllamaKey
from gateway.keys.pending import AccessRequest, PendingAccess
from gateway.keys.principal import Principal

if TYPE_CHECKING:
    from gateway.keys.store import ManagedKeyStore


def connect_router(
    pending: PendingAccess,
    store: ManagedKeyStore,
    run_blocking: Runner,
    admin: Callable[..., Awaitable[Principal]],
) -> APIRouter:
    router = APIRouter(prefix="/connect", tags=["connect"], dependencies=[Depends(admin)])

    @router.get("", summary="What is known of an Ollama public key asking for access")
    async def connect(key: str = Query(max_length=2048, description="the token of the sign-in link")) -> dict[str, Any]:
        try:
            public = OllamaKey.from_connect_token(key)
        except InvalidOllamaKey as error:
            raise InvalidKeyRequest(f"not a sign-in link's key: {error}") from None
        owner = await run_blocking(lambda: _owner(store, public))
        return _described(public, pending.get(public), owner)

    @router.get("/pending", summary="Ollama public keys that asked for access, newest first")
    async def waiting() -> list[dict[str, Any]]:
        return [_described(request.key, request, None) for request in pending.list()]

    return router


def _owner(store: ManagedKeyStore, public: OllamaKey) -> dict[str, str] | None:
    record = KeyAdmin(store).owner_of(public)
    return None if record is None else {"id": record.id, "name": record.name}


def _described(public: OllamaKey, request: AccessRequest | None, owner: dict[str, str] | None) -> dict[str, Any]:
    return {
        "fingerprint": public.fingerprint,
        "line": public.line,
        "token": public.connect_token,
        "owner": owner,
        "request": None
        if request is None
        else {
            "user_agent": request.user_agent,
            "address": request.address,
            "first_seen": when(request.first_seen),
            "last_seen": when(request.last_seen),
            "count": request.count,
        },
    }
