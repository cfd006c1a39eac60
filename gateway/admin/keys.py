"""``/admin/api/keys``: the CLI's key operations over HTTP (``gateway.keys.management`` does the work).

Keys are addressed by id in URLs: ids are short, fixed and URL-safe, names are free text. A secret
is in exactly two answers, create and rotate, and never in a log line.

Bodies are strictly typed, as the OpenAPI document says: ``"admin": "yes"`` or ``1`` is refused as
``"name": 1`` is (pydantic's strict mode), and a limit is a JSON number or one of its two words.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from gateway.admin.audit import AuditNote
from gateway.database.sqlite import Runner
from gateway.errors import shown
from gateway.keys.management import (
    KEEP,
    MODELS_LIMIT,
    NAME_LIMIT,
    OLLAMA_KEYS_LIMIT,
    InvalidKeyRequest,
    KeyAdmin,
    KeyChange,
    Outcome,
    as_text,
    describe,
    parse_expiry,
    parse_limit_named,
    parse_scopes,
    search_words,
)
from gateway.keys.principal import Principal
from gateway.keys.store import (
    LIMIT_KINDS,
    LIMIT_NAMES,
    KeySearch,
    KeyStatus,
    KeyStoreError,
    LimitKind,
    Scope,
    UnknownKey,
)

T = TypeVar("T")
# What each kind of limit accepts, as the schema describes it.
_LIMIT_VALUES = {LimitKind.QUOTA: "a number, 'unlimited' or 'default'", LimitKind.WEIGHT: "1-100 or 'default'"}
# "rpm, tpm, tpd, concurrency: a number, 'unlimited' or 'default'; weight: 1-100 or 'default'"
_LIMITS_DESCRIPTION = "; ".join(
    f"{', '.join(name for name, its in LIMIT_KINDS.items() if its is kind)}: {values}"
    for kind, values in _LIMIT_VALUES.items()
)

if TYPE_CHECKING:
    from gateway.keys.store import ManagedKeyStore
KeyId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="the key's id (never its secret)")]


class KeyPolicy(BaseModel):
    """Scopes, models, limits and expiry; on update, what is left out stays as it is.

    Values are only typed here, strictly (a boolean is ``true`` or ``false``, never ``"yes"`` or
    ``1``); what a valid one is (and the message when it is not) is ``gateway.keys.management``'s,
    as for the CLI. The schema documents those rules, it does not check them.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    scopes: list[str] | None = Field(
        default=None,
        description="exactly these scopes (at least one)",
        examples=[["inference", "read"]],
        json_schema_extra={"minItems": 1, "items": {"type": "string", "enum": [scope.value for scope in Scope]}},
    )
    admin: bool = Field(default=False, description="add the admin scope")
    models: list[str] | None = Field(
        default=None,
        description="model names or globs; [] = every model",
        examples=[["llama3*"]],
        json_schema_extra={"maxItems": MODELS_LIMIT},
    )
    limits: dict[str, JsonValue] = Field(
        default_factory=dict,
        description=_LIMITS_DESCRIPTION,
        examples=[{"rpm": 60, "tpd": "unlimited"}],
        json_schema_extra={
            "propertyNames": {"enum": list(LIMIT_NAMES)},
            "additionalProperties": {
                "anyOf": [
                    {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                    {"type": "string", "enum": ["unlimited", "default"]},
                ]
            },
        },
    )
    expires: str | None = Field(
        default=None,
        description="a duration from now (30d, 12h, 90m, 3600s, 2w), a date (2027-01-31, 00:00 UTC) or an ISO "
        "time, in the future and no later than 9999-12-31; or 'never' (null means 'never' too)",
        examples=["30d"],
    )
    add_ollama_keys: list[str] = Field(
        default_factory=list,
        description="Ollama public keys to attach, as the lines of id_ed25519.pub: the ollama command's requests "
        "signed with them act as this key",
        examples=[["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI… alice@laptop"]],
        json_schema_extra={"maxItems": OLLAMA_KEYS_LIMIT},
    )
    remove_ollama_keys: list[str] = Field(
        default_factory=list,
        description="Ollama public keys to detach: their SHA256 fingerprints (as listed) or lines",
        examples=[["SHA256:Jk2D5b3nUq0vGq8m6z7Yt3hQ1w4r5t6y7u8i9o0p1a2"]],
        json_schema_extra={"maxItems": OLLAMA_KEYS_LIMIT},
    )

    def change(self) -> KeyChange:
        return KeyChange(
            scopes=None if self.scopes is None else parse_scopes(self.scopes),
            admin=self.admin,
            models=None if self.models is None else tuple(self.models),
            limits={name: parse_limit_named(name, _limit_text(name, value)) for name, value in self.limits.items()},
            expires_at=KEEP
            if "expires" not in self.model_fields_set
            else parse_expiry("never" if self.expires is None else self.expires),
            add_ollama_keys=tuple(self.add_ollama_keys),
            remove_ollama_keys=tuple(self.remove_ollama_keys),
        )


def _limit_text(name: str, value: JsonValue) -> str:
    """A limit as the CLI's text. A number written as a string is refused, as a name written as a
    number is; any other string is a word, and the CLI's rules judge it ('unlimited', 'default')."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        raise InvalidKeyRequest(f"limits.{name}: {shown(value)} is a string: give the number itself")
    return as_text(value)


class NewKey(KeyPolicy):
    name: str = Field(
        examples=["alice"],
        description=f"1 to {NAME_LIMIT} printable characters without surrounding spaces",
        json_schema_extra={"minLength": 1, "maxLength": NAME_LIMIT},
    )


class KeyListing(BaseModel):
    """What ``GET /admin/api/keys`` lists: a search, and a page of what it finds. Other parameters
    are let be, as on every route (a signed request carries its ``ts``)."""

    q: str = Field(
        "",
        max_length=200,
        description="words, each found in a key's name, id, status, scopes, models or an Ollama key's "
        "comment or fingerprint (letters in either case)",
    )
    status: KeyStatus | None = Field(None, description="only keys in this state")
    offset: int = Field(0, ge=0, le=1_000_000_000, description="keys found to skip, by name")
    limit: int | None = Field(None, ge=1, le=1000, description="keys at most (none: every key found)")

    @field_validator("q")
    @classmethod
    def _few_words(cls, q: str) -> str:
        try:
            search_words(q)
        except InvalidKeyRequest as error:
            raise ValueError(str(error)) from None
        return q

    def search(self) -> KeySearch:
        return KeySearch(search_words(self.q), self.status, self.offset, self.limit)


def _name_of(keys: KeyAdmin, key_id: str) -> str | None:
    try:
        return keys.by_id(key_id).name
    except UnknownKey:
        return None


def keys_router(
    store: ManagedKeyStore,
    run_blocking: Runner,
    admin: Callable[..., Awaitable[Principal]],
    changed: Callable[[], Awaitable[None]],
) -> APIRouter:
    """``changed`` is awaited after every write, so this server acts on it before answering."""
    router = APIRouter(prefix="/keys", tags=["keys"], dependencies=[Depends(admin)])

    async def run(operation: Callable[[KeyAdmin], T]) -> T:
        return await run_blocking(lambda: operation(KeyAdmin(store)))

    def audit(request: Request, action: str, target: str | None, name: str | None = None) -> None:
        request.state.audit = AuditNote(action, target, name)

    def named(request: Request, name: str) -> None:
        request.state.audit = replace(request.state.audit, target_name=name)

    @asynccontextmanager
    async def on_key(request: Request, key_id: str) -> AsyncIterator[None]:
        """A refusal about an existing key (a bad value, a revoked key) names it in the audit line."""
        try:
            yield
        except KeyStoreError as error:
            if not isinstance(error, UnknownKey):
                name = await run(lambda keys: _name_of(keys, key_id))
                if name is not None:
                    named(request, name)
            raise

    async def written(request: Request, outcome: Outcome) -> dict[str, Any]:
        request.state.audit = replace(
            request.state.audit, target=outcome.record.id, target_name=outcome.record.name, changed=outcome.changed
        )
        await changed()
        described = describe(outcome.record)
        return described if outcome.secret is None else {**described, "key": outcome.secret}

    @router.get(
        "",
        summary="List keys by name (never their secrets): all, or a page of those a search finds",
        response_model=list[dict[str, Any]],
        responses={200: {"headers": {"X-Total-Count": {"description": "keys the search finds, pages aside"}}}},
    )
    async def list_keys(request: Request, search: Annotated[KeyListing, Query()]) -> Response:
        audit(request, "keys.list", None)
        wanted = search.search()

        def listing(admin: KeyAdmin) -> tuple[bytes, int]:
            keys = admin.frozen()
            # Written out here, beside the database: a long listing costs this thread, not the
            # event loop every other request waits on.
            described = [keys.describe(record) for record in keys.list(wanted)]
            short = wanted.limit is None or len(described) < wanted.limit
            # A page that came back short (and not empty past the end) says how many there are.
            known = short and (bool(described) or not wanted.offset)
            return orjson.dumps(described), wanted.offset + len(described) if known else keys.count(wanted)

        body, total = await run(listing)
        return Response(body, media_type="application/json", headers={"x-total-count": str(total)})

    @router.post("", status_code=201, summary="Create a key; the answer holds its secret, shown once")
    async def create_key(body: NewKey, request: Request) -> dict[str, Any]:
        audit(request, "keys.create", None, body.name)
        change = body.change()
        return await written(request, await run(lambda keys: keys.create(body.name, change)))

    @router.get("/{key_id}", summary="Show one key")
    async def show_key(key_id: KeyId, request: Request) -> dict[str, Any]:
        audit(request, "keys.show", key_id)
        record = await run(lambda keys: keys.by_id(key_id))
        named(request, record.name)
        return describe(record)

    @router.patch("/{key_id}", summary="Change a key's scopes, models, limits, expiry or Ollama keys")
    async def update_key(key_id: KeyId, body: KeyPolicy, request: Request) -> dict[str, Any]:
        audit(request, "keys.update", key_id)
        async with on_key(request, key_id):
            change = body.change()
            outcome = await run(lambda keys: keys.update(key_id, change))
        return await written(request, outcome)

    @router.post("/{key_id}/rotate", summary="A new secret for the key (shown once); the old one stops working")
    async def rotate_key(key_id: KeyId, request: Request) -> dict[str, Any]:
        audit(request, "keys.rotate", key_id)
        async with on_key(request, key_id):
            outcome = await run(lambda keys: keys.rotate(key_id))
        return await written(request, outcome)

    @router.post("/{key_id}/revoke", summary="Revoke a key; it stops working at once")
    async def revoke_key(key_id: KeyId, request: Request) -> dict[str, Any]:
        audit(request, "keys.revoke", key_id)
        async with on_key(request, key_id):
            outcome = await run(lambda keys: keys.revoke(key_id))
        return await written(request, outcome)

    return router
