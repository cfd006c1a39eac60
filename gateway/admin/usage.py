"""``/admin/api/usage``: the ``ollama-gateway usage`` report (same filters, same rows), as JSON or
CSV, and tokens per day for the page's chart."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from gateway.principal import Principal
from gateway.usagereport import Stacking, UsageQuery, daily, day, report
from gateway.usagestore import Grouping, SqliteUsageStore

T = TypeVar("T")
Day = Annotated[
    str | None,
    # The pattern documents the rule gateway.usagereport checks (with the CLI's message).
    Query(
        max_length=10, description="YYYY-MM-DD (UTC), inclusive", json_schema_extra={"pattern": r"^\d{4}-\d{2}-\d{2}$"}
    ),
]
KeyName = Annotated[str | None, Query(max_length=200, description="only this key (by name)")]


def _query(by: Grouping, since: str | None, until: str | None, key: str | None) -> UsageQuery:
    return UsageQuery(
        by=by, since=None if since is None else day(since), until=None if until is None else day(until), key=key
    )


def usage_router(open_store: Callable[[], SqliteUsageStore], admin: Callable[..., Awaitable[Principal]]) -> APIRouter:
    router = APIRouter(prefix="/usage", tags=["usage"], dependencies=[Depends(admin)])

    async def run(operation: Callable[[SqliteUsageStore], T]) -> T:
        def with_store() -> T:
            store = open_store()
            try:
                return operation(store)
            finally:
                store.close()

        return await asyncio.to_thread(with_store)

    @router.get("", summary="Requests, tokens and errors per key, model or day (as `ollama-gateway usage`)")
    async def usage_report(
        request: Request,
        since: Day = None,
        until: Day = None,
        key: KeyName = None,
        by: Grouping = "key",
        format: Literal["json", "csv"] = "json",
    ) -> Response:
        request.state.audit = ("usage.report", key or "*")
        query = _query(by, since, until, key)
        result = await run(lambda store: report(store, query))
        if format == "csv":
            return Response(
                result.as_csv(),
                media_type="text/csv; charset=utf-8",
                headers={"content-disposition": f'attachment; filename="usage-by-{by}.csv"'},
            )
        return JSONResponse(result.as_json())

    @router.get("/daily", summary="Tokens per UTC day, one series per key or per model")
    async def usage_daily(
        request: Request,
        since: Day = None,
        until: Day = None,
        key: KeyName = None,
        stack: Stacking = "key",
    ) -> dict[str, Any]:
        request.state.audit = ("usage.daily", key or "*")
        query = _query("day", since, until, key)
        return await run(lambda store: daily(store, query, stack))

    return router
