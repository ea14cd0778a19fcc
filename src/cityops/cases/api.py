"""REST routes of the case loop under ``/api/v1`` — nothing but HTTP translation.

Every route declares its permission (:mod:`cityops.cases.permissions`); which transition a
caller may take is the machine's decision, which cases they see the service's SQL.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, File, Header, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from sse_starlette.sse import EventSourceResponse

import cityops.cases.permissions  # noqa: F401  (registers the permissions)
from cityops.cases import intake, service
from cityops.cases.deadlines import parse_limit
from cityops.cases.schemas import (
    CaseCreate,
    CaseList,
    CaseOut,
    CategoryOut,
    OverrideIn,
    TransitionIn,
)
from cityops.cases.worker import Worker, run_worker_in_process
from cityops.core.auth import Principal, permission_checked, require
from cityops.core.db import Database
from cityops.core.deps import DbDep
from cityops.core.errors import CityopsError, FieldError, ValidationFailed
from cityops.settings import get_settings

_gc_tuned = False


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """On SQLite the outbox/overdue worker runs inside the server process (DESIGN §4).

    Also tunes the garbage collector of the server process, which belongs in the app factory
    (told to the lead): the imported geospatial stack leaves a large heap that every full
    collection walks while holding the GIL — 100–200 ms pauses measured at 40 requests/s,
    the whole p99. Freezing the start-up heap and collecting the young generation less often
    cut the p99 of case creation from ~1 s to ~150 ms (bench/bench_cases.py)."""
    global _gc_tuned
    if not _gc_tuned:  # once per process (tests build many apps)
        _gc_tuned = True
        gc.collect()
        gc.freeze()
        gc.set_threshold(10_000, 50, 50)
    db = app.state.db
    worker = Worker(db) if run_worker_in_process(db) else None
    if worker is not None:
        worker.start()
    app.state.case_writer = await intake.open_writer(db)
    try:
        yield
    finally:
        await app.state.case_writer.close()
        if worker is not None:
            await anyio.to_thread.run_sync(worker.stop)


router = APIRouter(prefix="/api/v1", lifespan=_lifespan)
#: request bodies validated by their route itself (named in its openapi_extra), whose schemas
#: the app adds to the OpenAPI components
OPENAPI_MODELS = (CaseCreate,)

Reader = Annotated[Principal, Depends(require("cases:read"))]
_may_create = permission_checked("cases:create")
PROBLEMS: dict[int | str, dict[str, Any]] = {
    403: {"description": "role or data scope does not allow it (problem+json)"},
    404: {"description": "no such case visible to you (problem+json)"},
    409: {"description": "not allowed in the current status, or someone was faster"},
    422: {"description": "a field is missing or wrong; `errors` names it (problem+json)"},
}


def _db(request: Request) -> Database:
    # the app's database straight from the request: a sync dependency (DbDep) would cost a
    # threadpool hop on the hottest routes
    db: Database = request.app.state.db
    return db


def _aware(value: dt.datetime | None, field: str) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValidationFailed(
            f"{field} needs a time zone: write e.g. 2025-10-01T00:00:00+08:00.",
            [FieldError(field, "naive datetime")],
        )
    return value


# ------------------------------------------------------------------------------ cases
@router.post(
    "/cases",
    status_code=201,
    response_model=CaseOut,
    tags=["cases"],
    summary="Report a case (信息收集); optionally register and dispatch it at once",
    responses=PROBLEMS,
    # the route reads its own request (no FastAPI dependencies or parameters to solve: ≈ 8 %
    # of a creation's server time): its body, header and security are described here
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/CaseCreate"}}
            },
        },
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": 128},
                "description": "repeat a create safely: the same key and body return the "
                "first answer",
            }
        ],
        "security": [{"OAuth2PasswordBearer": []}],
        "x-cityops-permission": "cases:create",
    },
)
async def post_case(request: Request) -> Response:
    principal = await _may_create(request)
    idempotency_key = request.headers.get("idempotency-key")
    # the body is validated here rather than by FastAPI's body parameter (which decodes the
    # JSON in Python, then validates): one pydantic-core pass over the raw bytes; its errors
    # take the same problem+json shape (app.install_error_handlers)
    try:
        body = CaseCreate.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None
    report, created = await intake.create(
        request.app.state.case_writer, _db(request), principal, body, idempotency_key
    )
    headers = {"Location": f"/api/v1/cases/{report.new.case.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
        return JSONResponse(report.replay, status_code=201, headers=headers)
    if report.out is not None:
        return JSONResponse(report.out, status_code=201, headers=headers)
    out = service.case_out(report.new.case, service.case_rules(), principal, at=report.at)
    return Response(
        out.model_dump_json(), status_code=201, headers=headers, media_type="application/json"
    )


@router.get(
    "/cases",
    response_model=CaseList,
    tags=["cases"],
    summary="List the cases you may see, newest first",
    responses=PROBLEMS,
)
def get_cases(
    request: Request,
    principal: Reader,
    status: Annotated[str | None, Query(description="comma-separated statuses")] = None,
    category: str | None = None,
    source: str | None = None,
    area: Annotated[str | None, Query(description="division-code prefix")] = None,
    grid: Annotated[str | None, Query(description="15-digit grid code")] = None,
    department: str | None = None,
    overdue: bool | None = None,
    duplicates: Annotated[bool | None, Query(description="flagged as likely duplicates")] = None,
    reported_from: Annotated[dt.datetime | None, Query(alias="from")] = None,
    reported_to: Annotated[dt.datetime | None, Query(alias="to")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: str | None = None,
) -> Any:
    return service.list_cases(
        _db(request),
        principal,
        service.CaseFilter(
            status=[s.strip() for s in status.split(",") if s.strip()] if status else None,
            category=category,
            source=source,
            area=area,
            grid=grid,
            department=department,
            overdue=overdue,
            duplicates=duplicates,
            reported_from=_aware(reported_from, "from"),
            reported_to=_aware(reported_to, "to"),
            limit=limit,
            cursor=cursor,
        ),
    )


@router.get(
    "/cases/{case_id}",
    response_model=CaseOut,
    tags=["cases"],
    summary="One case with its full history",
    responses=PROBLEMS,
)
def get_case(case_id: str, request: Request, principal: Reader) -> Any:
    return service.get_case(_db(request), principal, case_id)


@router.post(
    "/cases/{case_id}/transitions",
    response_model=CaseOut,
    tags=["cases"],
    summary="Take an action on a case (see docs/cases.md for who may take which)",
    responses=PROBLEMS,
)
def post_transition(
    case_id: str,
    body: TransitionIn,
    request: Request,
    principal: Annotated[Principal, Depends(require("cases:act"))],
) -> Any:
    return service.transition(_db(request), principal, case_id, body)


@router.get(
    "/cases/{case_id}/contacts",
    tags=["cases"],
    summary="Reporters' contact details, unmasked (audited; for 回访)",
    responses=PROBLEMS,
)
def get_contacts(
    case_id: str,
    db: DbDep,
    principal: Annotated[Principal, Depends(require("cases:contact"))],
) -> list[dict[str, Any]]:
    return service.contacts(db, principal, case_id)


@router.post(
    "/cases/{case_id}/attachments",
    status_code=201,
    tags=["cases"],
    summary="Attach a photo (JPEG, PNG or WebP; size limited)",
    responses={**PROBLEMS, 413: {"description": "too large"}, 415: {"description": "not a photo"}},
)
async def post_attachment(
    case_id: str,
    db: DbDep,
    principal: Annotated[Principal, Depends(require("cases:attach"))],
    file: Annotated[UploadFile, File(description="the photo")],
) -> dict[str, Any]:
    limit = get_settings().attachment_max_bytes
    # read one byte past the limit: enough to refuse without holding a huge upload
    data = await file.read(limit + 1)
    return await anyio.to_thread.run_sync(
        lambda: service.add_attachment(
            db, principal, case_id, file.filename or "", file.content_type, data
        )
    )


@router.get(
    "/cases/{case_id}/attachments/{attachment_id}",
    tags=["cases"],
    summary="Download an attachment",
    response_class=FileResponse,
    responses=PROBLEMS,
)
def get_attachment(case_id: str, attachment_id: int, db: DbDep, principal: Reader) -> Any:
    path, content_type, filename = service.attachment_file(db, principal, case_id, attachment_id)
    return FileResponse(path, media_type=content_type, filename=filename or None)


# ------------------------------------------------------------------------------ reference
@router.get(
    "/categories",
    response_model=list[CategoryOut],
    tags=["cases"],
    summary="Case categories (GB/T 30428.2-2013 部件/事件 + city-defined), default "
    "department and deadlines",
    dependencies=[Depends(require("public"))],
)
def get_categories() -> Any:
    return service.categories_out()


@router.get(
    "/departments",
    tags=["cases"],
    summary="Departments the dispatch rules know (a district's own unit is district:<code>)",
    dependencies=[Depends(require("cases:read"))],
)
def get_departments() -> list[dict[str, str]]:
    rules = service.case_rules().dispatch
    return [{"code": d.code, "name": d.name} for d in rules.departments]


# ------------------------------------------------------------------------------ metrics
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


@router.get(
    "/metrics/cases",
    tags=["metrics"],
    summary="CJ/T 292 evaluation figures and the 12345 三率 per department, street, grid or "
    "grid worker (format=xlsx for a workbook)",
    responses={200: {"content": {XLSX: {}}}, 422: PROBLEMS[422]},
)
def get_metrics(
    db: DbDep,
    principal: Annotated[Principal, Depends(require("cases:metrics"))],
    group_by: Annotated[str, Query(description="department, street, grid or worker")],
    start: Annotated[dt.datetime, Query(alias="from", description="period start (with zone)")],
    end: Annotated[dt.datetime, Query(alias="to", description="period end, exclusive")],
    format: Annotated[str, Query(pattern="^(json|xlsx)$")] = "json",
) -> Any:
    report = service.case_metrics(
        db, principal, group_by, _aware(start, "from") or start, _aware(end, "to") or end
    )
    if format == "xlsx":
        name = f"cases-{group_by}-{start.date()}-{end.date()}.xlsx"
        return Response(
            service.metrics_xlsx(report),
            media_type=XLSX,
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    return report


# ------------------------------------------------------------------------------ live feed
@router.get(
    "/stream",
    tags=["cases"],
    summary="Live feed of new and changed cases (server-sent events, `event: case`)",
    response_class=EventSourceResponse,
)
async def stream(
    request: Request,
    principal: Annotated[Principal, Depends(require("cases:stream"))],
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    since: Annotated[int | None, Query(ge=0, description="resume after this event id")] = None,
    timeout: Annotated[
        float | None, Query(gt=0, le=3600, description="close the stream after this many s")
    ] = None,
) -> EventSourceResponse:
    db = request.app.state.db
    after = since
    if after is None and last_event_id and last_event_id.isdigit():
        after = int(last_event_id)
    feed = await anyio.to_thread.run_sync(lambda: service.Feed(db, principal, after))
    poll = get_settings().stream_poll
    ends = time.monotonic() + timeout if timeout else None

    async def events() -> AsyncIterator[dict[str, str]]:
        while True:
            for item in await anyio.to_thread.run_sync(feed.poll):
                yield {"id": str(item["event_id"]), "event": "case", "data": json.dumps(item)}
            if ends is not None and time.monotonic() >= ends:
                return
            if await request.is_disconnected():
                return
            await anyio.sleep(poll)

    return EventSourceResponse(events(), ping=15)


# ------------------------------------------------------------------------------ calendar
class YearIn(BaseModel):
    note: str = Field(min_length=1, max_length=500, description="the notice the year follows")


@router.get(
    "/calendar/overrides",
    tags=["calendar"],
    summary="Admins' corrections of the official working calendar",
    dependencies=[Depends(require("calendar:read"))],
)
def get_overrides(db: DbDep, year: int | None = None) -> list[dict[str, Any]]:
    return service.list_overrides(db, year)


@router.put(
    "/calendar/overrides/{day}",
    tags=["calendar"],
    summary="Make a day a working day or a day off (wins over the official calendar)",
)
def put_override(
    day: dt.date,
    body: OverrideIn,
    db: DbDep,
    principal: Annotated[Principal, Depends(require("calendar:manage"))],
) -> dict[str, Any]:
    return service.set_override(db, principal, day, body.working, body.note)


@router.delete(
    "/calendar/overrides/{day}", tags=["calendar"], status_code=204, summary="Remove an override"
)
def delete_override(
    day: dt.date,
    db: DbDep,
    principal: Annotated[Principal, Depends(require("calendar:manage"))],
) -> Response:
    service.delete_override(db, principal, day)
    return Response(status_code=204)


@router.post(
    "/calendar/years/{year}",
    tags=["calendar"],
    summary="Confirm that a year's overrides are complete (its deadlines stop being "
    "provisional although chinesecalendar lacks it)",
)
def post_year(
    year: int,
    body: YearIn,
    db: DbDep,
    principal: Annotated[Principal, Depends(require("calendar:manage"))],
) -> dict[str, Any]:
    return service.confirm_year(db, principal, year, body.note)


@router.get(
    "/calendar/due",
    tags=["calendar"],
    summary="When a time limit started at `start` runs out on the working calendar",
    dependencies=[Depends(require("calendar:read"))],
)
def get_due(
    db: DbDep,
    start: Annotated[dt.datetime, Query(description="with zone, e.g. 2025-09-30T16:00+08:00")],
    limit: Annotated[str, Query(description="e.g. '4 working_hours', '3 working_days'")],
) -> dict[str, Any]:
    _aware(start, "start")
    try:
        parsed = parse_limit(limit)
    except ValueError as exc:
        raise ValidationFailed(str(exc), [FieldError("limit", str(exc))]) from exc
    try:
        due = service.calendar_for(db).add(start, parsed.amount, parsed.unit)
    except ValueError as exc:
        raise CityopsError(detail=str(exc), status=422, title="Invalid input") from exc
    return {
        "start": start.isoformat(),
        "limit": str(parsed),
        "due_at": service.local(due.at).isoformat(),  # type: ignore[union-attr]
        "provisional": due.provisional,
    }
