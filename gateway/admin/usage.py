"""``/admin/api/usage``: the ``ollama-gateway usage`` report (same filters, same rows), as JSON or
CSV, and tokens per day for the page's chart.

Parameters are plain text here: what a valid day, grouping, stacking or format is, and the
message when it is not, is ``gateway.usage.report``'s, as for the CLI.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from gateway.admin.audit import AuditNote
from gateway.database.sqlite import Runner
from gateway.keys.principal import Principal
from gateway.usage.report import (
    FORMATS,
    GROUPINGS,
    STACKINGS,
    UsageQuery,
    daily,
    day,
    grouping,
    report,
    report_format,
    stacking,
)

if TYPE_CHECKING:
    from gateway.usage.store import ReportStore

T = TypeVar("T")
Day = Annotated[str | None, Query(description="YYYY-MM-DD (UTC), inclusive", json_schema_extra={"format": "date"})]
KeyName = Annotated[str | None, Query(description="only this key (by name)")]
By = Annotated[str, Query(json_schema_extra={"enum": list(GROUPINGS)})]
Stack = Annotated[str, Query(json_schema_extra={"enum": list(STACKINGS)})]
Format = Annotated[str, Query(json_schema_extra={"enum": list(FORMATS)})]


def _query(by: str, since: str | None, until: str | None, key: str | None) -> UsageQuery:
    return UsageQuery(
        by=grouping(by),
        since=None if since is None else day(since),
        until=None if until is None else day(until),
        key=key,
    )


def usage_router(store: ReportStore, run_blocking: Runner, admin: Callable[..., Awaitable[Principal]]) -> APIRouter:
    router = APIRouter(prefix="/usage", tags=["usage"], dependencies=[Depends(admin)])

    async def run(operation: Callable[[ReportStore], T]) -> T:
        return await run_blocking(lambda: operation(store))

    @router.get("", summary="Requests, tokens and errors per key, model or day (as `ollama-gateway usage`)")
    async def usage_report(
        request: Request,
        since: Day = None,
        until: Day = None,
        key: KeyName = None,
        by: By = "key",
        format: Format = "json",
    ) -> Response:
        request.state.audit = AuditNote("usage.report", target_name=key)
        query = _query(by, since, until, key)
        as_csv = report_format(format) == "csv"
        result = await run(lambda store: report(store, query))
        if as_csv:
            return Response(
                result.as_csv(),
                media_type="text/csv; charset=utf-8",
                headers={"content-disposition": f'attachment; filename="usage-by-{query.by}.csv"'},
            )
        return JSONResponse(result.as_json())

    @router.get("/daily", summary="Tokens per UTC day, one series per key or per model (at most a year, 20 series)")
    async def usage_daily(
        request: Request,
        since: Day = None,
        until: Day = None,
        key: KeyName = None,
        stack: Stack = "key",
    ) -> dict[str, Any]:
        request.state.audit = AuditNote("usage.daily", target_name=key)
        query = _query("day", since, until, key)
        chosen = stacking(stack)
        return await run(lambda store: daily(store, query, chosen))

    return router
