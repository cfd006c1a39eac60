"""``/admin/api/keys``: the CLI's key operations over HTTP (``gateway.keyadmin`` does the work).

Keys are addressed by id in URLs: ids are short, fixed and URL-safe, names are free text. A secret
is in exactly two answers, create and rotate, and never in a log line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from gateway.keyadmin import (
    KEEP,
    LIMIT_NAMES,
    KeyAdmin,
    KeyChange,
    describe,
    parse_expiry,
    parse_limit_named,
    parse_scope,
)
from gateway.keystore import Scope
from gateway.keystore.sqlite import SqliteKeyStore
from gateway.principal import Principal

T = TypeVar("T")
KeyId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="the key's id (never its secret)")]


class KeyPolicy(BaseModel):
    """Scopes, models, limits and expiry; on update, what is left out stays as it is."""

    model_config = ConfigDict(extra="forbid")

    scopes: list[str] | None = Field(
        default=None,
        max_length=10,
        examples=[["inference", "read"]],
        json_schema_extra={"items": {"type": "string", "enum": [scope.value for scope in Scope]}},
    )
    admin: bool = Field(default=False, description="add the admin scope")
    models: list[Annotated[str, Field(max_length=200)]] | None = Field(
        default=None, max_length=100, description="model names or globs; [] = every model", examples=[["llama3*"]]
    )
    limits: dict[str, StrictInt | str] = Field(
        default_factory=dict,
        max_length=5,
        description="rpm, tpm, tpd, concurrency: a number, 'unlimited' or 'default'; weight: 1-100 or 'default'",
        examples=[{"rpm": 60, "tpd": "unlimited"}],
        # Documented here, checked by gateway.keyadmin (with the CLI's messages).
        json_schema_extra={
            "propertyNames": {"enum": list(LIMIT_NAMES)},
            "additionalProperties": {
                "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "enum": ["unlimited", "default"]}]
            },
        },
    )
    expires: str | None = Field(
        default=None,
        max_length=40,
        description="30d, 12h, 2027-01-31, an ISO time, or 'never'",
        examples=["30d"],
        json_schema_extra={"pattern": r"^(never|\d+[smhdw]|\d{4}-\d{2}-\d{2}([T ][0-9:.]+(Z|[+-]\d{2}:?\d{2})?)?)$"},
    )

    def change(self) -> KeyChange:
        return KeyChange(
            scopes=frozenset(parse_scope(text) for text in self.scopes) if self.scopes else None,
            admin=self.admin,
            models=None if self.models is None else tuple(self.models),
            limits={name: parse_limit_named(name, str(value)) for name, value in self.limits.items()},
            expires_at=parse_expiry(self.expires or "never") if "expires" in self.model_fields_set else KEEP,
        )


class NewKey(KeyPolicy):
    name: str = Field(
        max_length=200,
        examples=["alice"],
        json_schema_extra={"pattern": r"^[^\s\x00-\x1f\x7f]([^\x00-\x1f\x7f]{0,62}[^\s\x00-\x1f\x7f])?$"},
    )


def keys_router(
    open_store: Callable[[], SqliteKeyStore],
    admin: Callable[..., Awaitable[Principal]],
    changed: Callable[[], Awaitable[None]],
) -> APIRouter:
    """``changed`` is awaited after every write, so this server acts on it before answering."""
    router = APIRouter(prefix="/keys", tags=["keys"], dependencies=[Depends(admin)])

    async def run(operation: Callable[[KeyAdmin], T]) -> T:
        def with_store() -> T:
            store = open_store()
            try:
                return operation(KeyAdmin(store))
            finally:
                store.close()

        return await asyncio.to_thread(with_store)

    def audit(request: Request, action: str, target: str) -> None:
        request.state.audit = (action, target)

    @router.get("", summary="List keys (never their secrets)")
    async def list_keys(request: Request) -> list[dict[str, Any]]:
        audit(request, "keys.list", "*")
        return await run(lambda keys: [keys.describe(record) for record in keys.list()])

    @router.post("", status_code=201, summary="Create a key; the answer holds its secret, shown once")
    async def create_key(body: NewKey, request: Request) -> dict[str, Any]:
        audit(request, "keys.create", body.name)
        change = body.change()
        record, secret = await run(lambda keys: keys.create(body.name, change))
        audit(request, "keys.create", record.id)
        await changed()
        return {**describe(record), "key": secret}

    @router.get("/{key_id}", summary="Show one key")
    async def show_key(key_id: KeyId, request: Request) -> dict[str, Any]:
        audit(request, "keys.show", key_id)
        return await run(lambda keys: keys.describe(keys.by_id(key_id)))

    @router.patch("/{key_id}", summary="Change a key's scopes, models, limits or expiry")
    async def update_key(key_id: KeyId, body: KeyPolicy, request: Request) -> dict[str, Any]:
        audit(request, "keys.update", key_id)
        change = body.change()
        described = await run(lambda keys: keys.describe(keys.update(keys.by_id(key_id).name, change)))
        await changed()
        return described

    @router.post("/{key_id}/rotate", summary="A new secret for the key (shown once); the old one stops working")
    async def rotate_key(key_id: KeyId, request: Request) -> dict[str, Any]:
        audit(request, "keys.rotate", key_id)
        record, secret = await run(lambda keys: keys.rotate(keys.by_id(key_id).name))
        await changed()
        return {**describe(record), "key": secret}

    @router.post("/{key_id}/revoke", summary="Revoke a key; it stops working at once")
    async def revoke_key(key_id: KeyId, request: Request) -> dict[str, Any]:
        audit(request, "keys.revoke", key_id)
        described = await run(lambda keys: keys.describe(keys.revoke(keys.by_id(key_id).name)))
        await changed()
        return described

    return router
