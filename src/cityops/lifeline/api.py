"""REST routes of lifeline monitoring under ``/api/v1/lifeline``: sensors, HTTP batch ingest,
series for charts, dead letters, alarms, incidents and the live map.

Nothing but HTTP translation: each handler opens a unit of work and calls :mod:`service`,
:mod:`registry` or the ingest :class:`~cityops.lifeline.ingest.pipeline.Pipeline`.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel

from cityops.core.auth import Principal, require
from cityops.core.db import Database, utcnow
from cityops.core.deps import DbDep, ReadSession
from cityops.core.errors import CityopsError, FieldError, ValidationFailed
from cityops.core.geometry import parse_bbox
from cityops.lifeline import permissions as _permissions  # noqa: F401 - registers permissions
from cityops.lifeline import registry, rules, service, timeseries
from cityops.lifeline.ingest.payload import Rejected, parse_http_items
from cityops.lifeline.ingest.pipeline import BatchResult, Pipeline
from cityops.lifeline.schemas import (
    AlarmOut,
    BucketOut,
    DeadLetterOut,
    IncidentOut,
    IngestOut,
    MaintenanceIn,
    RejectedOut,
    SampleBatchIn,
    SensorIn,
    SensorOut,
    SensorPatch,
    SeriesOut,
    TransitionIn,
)

router = APIRouter(prefix="/api/v1/lifeline", tags=["lifeline"])

Read = Annotated[Principal, Depends(require("lifeline:read"))]
Manage = Annotated[Principal, Depends(require("lifeline:manage"))]
Maintain = Annotated[Principal, Depends(require("lifeline:maintain"))]
Ingest = Annotated[Principal, Depends(require("lifeline:ingest"))]
Verify = Annotated[Principal, Depends(require("lifeline:verify"))]
DeadLetters = Annotated[Principal, Depends(require("lifeline:dead_letters"))]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0)]

_pipeline_lock = threading.Lock()


def pipeline_for(request: Request, db: Database) -> Pipeline:
    """The app's one ingest pipeline (its sensor cache and anomaly detectors are per process)."""
    with _pipeline_lock:
        pipe: Pipeline | None = getattr(request.app.state, "lifeline_pipeline", None)
        if pipe is None or pipe.db is not db:
            pipe = Pipeline(db)
            pipe.lock = threading.Lock()  # type: ignore[attr-defined]
            request.app.state.lifeline_pipeline = pipe
        return pipe


class Page(BaseModel):
    total: int
    limit: int
    offset: int


class SensorPage(Page):
    items: list[SensorOut]


class AlarmPage(Page):
    items: list[AlarmOut]


class IncidentPage(Page):
    items: list[IncidentOut]


class DeadLetterPage(Page):
    items: list[DeadLetterOut]


def _bbox(text: str | None) -> tuple[float, float, float, float] | None:
    if not text:
        return None
    try:
        return parse_bbox(text)
    except ValueError as exc:
        raise ValidationFailed(str(exc), [FieldError("bbox", str(exc))]) from exc


# ------------------------------------------------------------------------------ registry


@router.get("/domains", summary="The 8 lifeline domains, object kinds and threshold profiles")
def domains(_: Read) -> dict[str, Any]:
    dom = rules.domain_rules()
    thr = rules.threshold_rules()
    return {
        "domains": [d.model_dump() for d in dom.domains],
        "object_kinds": [o.model_dump() for o in dom.object_kinds],
        "profiles": [
            {
                "name": p.name,
                "match": p.match.model_dump(exclude_none=True),
                "unit": p.unit,
                "levels": {k: v.model_dump(exclude_none=True) for k, v in (p.levels or {}).items()},
                "source": p.source,
            }
            for p in thr.profiles
        ],
        "source": {"domains": dom.source, "thresholds": thr.source},
    }


@router.get("/sensors", summary="List sensors")
def list_sensors(
    session: ReadSession,
    _: Read,
    domain: str | None = None,
    kind: str | None = None,
    network_id: str | None = None,
    bbox: Annotated[str | None, Query(description="minLon,minLat,maxLon,maxLat")] = None,
    maintenance: bool | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> SensorPage:
    rows, total = registry.list_sensors(
        session,
        domain=domain,
        kind=kind,
        network_id=network_id,
        bbox=_bbox(bbox),
        maintenance=maintenance,
        limit=limit,
        offset=offset,
    )
    return SensorPage(
        items=[service.sensor_out(session, s) for s in rows],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.post("/sensors", status_code=201, summary="Register (or replace) a sensor")
def create_sensor(body: SensorIn, db: DbDep, principal: Manage, response: Response) -> SensorOut:
    with db.write() as session:
        sensor, created = registry.register(session, body, principal.username)
        out = service.sensor_out(session, sensor, with_rule=True)
    if not created:
        response.status_code = 200
    return out


@router.get("/sensors/{sensor_id}", summary="One sensor with its effective rule")
def get_sensor(sensor_id: str, session: ReadSession, _: Read) -> SensorOut:
    return service.sensor_out(session, registry.get(session, sensor_id), with_rule=True)


@router.patch("/sensors/{sensor_id}", summary="Change a sensor (thresholds, owner, interval …)")
def patch_sensor(sensor_id: str, body: SensorPatch, db: DbDep, principal: Manage) -> SensorOut:
    with db.write() as session:
        sensor = registry.update(session, sensor_id, body, principal.username)
        return service.sensor_out(session, sensor, with_rule=True)


@router.post("/sensors/{sensor_id}/maintenance", summary="Switch maintenance on or off")
def maintenance(sensor_id: str, body: MaintenanceIn, db: DbDep, principal: Maintain) -> SensorOut:
    with db.write() as session:
        sensor = registry.set_maintenance(
            session, sensor_id, body.on, body.until, body.reason, principal.username
        )
        return service.sensor_out(session, sensor)


_BUCKET = re.compile(r"^(\d+)\s*([smhd]?)$")


def _bucket_seconds(text: str) -> int:
    m = _BUCKET.match(text.strip().lower())
    if not m or int(m.group(1)) <= 0:
        raise ValidationFailed(
            f"bucket {text!r}: give seconds or a number with s, m, h or d (e.g. 300, 5m, 1h)",
            [FieldError("bucket", "e.g. 300, 5m, 1h, 1d")],
        )
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


@router.get("/sensors/{sensor_id}/series", summary="Downsampled readings for a chart")
def sensor_series(
    sensor_id: str,
    session: ReadSession,
    _: Read,
    start: Annotated[
        dt.datetime | None, Query(alias="from", description="ISO 8601 (default: 24 h before to)")
    ] = None,
    end: Annotated[
        dt.datetime | None, Query(alias="to", description="ISO 8601 (default: now)")
    ] = None,
    bucket: Annotated[
        str | None, Query(description="bucket width: 300, 5m, 1h … (default: ≤ 1000 points)")
    ] = None,
) -> SeriesOut:
    sensor = registry.get(session, sensor_id)
    for name, value in (("from", start), ("to", end)):
        if value is not None and value.tzinfo is None:
            raise ValidationFailed(
                f"{name} has no UTC offset: add Z or +08:00", [FieldError(name, "naive time")]
            )
    end = end or utcnow()
    start = start or end - dt.timedelta(hours=24)
    if start >= end:
        raise ValidationFailed("from must be before to", [FieldError("from", "after to")])
    bucket_s = _bucket_seconds(bucket) if bucket else timeseries.pick_bucket(start, end, 1000)
    if (end - start).total_seconds() / bucket_s > timeseries.MAX_POINTS:
        raise ValidationFailed(
            f"that is more than {timeseries.MAX_POINTS} buckets: widen the bucket or narrow "
            "the range",
            [FieldError("bucket", "too many points")],
        )
    points = timeseries.series(session, sensor_id, start, end, bucket_s)
    return SeriesOut(
        sensor_id=sensor_id,
        unit=sensor.unit,
        start=start,
        end=end,
        bucket_s=bucket_s,
        points=[BucketOut(t=p.t, mean=p.mean, min=p.min, max=p.max, count=p.count) for p in points],
    )


# -------------------------------------------------------------------------------- ingest


def _ingest_out(result: BatchResult) -> IngestOut:
    return IngestOut(
        received=result.received,
        stored=result.stored,
        in_order=result.in_order,
        late_or_duplicate=result.late,
        dead_letters=result.dead_letters,
        rejected=[
            RejectedOut(index=i, reason=r.reason, detail=r.detail, sensor_ref=r.sensor_ref)
            for i, r in result.rejected[:1000]
        ],
        alarms_raised=result.raised,
        alarms_cleared=result.cleared,
    )


@router.post(
    "/samples",
    summary="Ingest a batch of readings over HTTP",
    description='Body: a JSON list of readings, or {"samples": [...]}; each reading is '
    '{"sensor_id", "ts" (ISO 8601 with offset, or epoch ms), "value"} or {"device_id" | '
    '"sensor_id", "ts", "values": {...}}. Idempotent on (sensor, ts); late and out-of-order '
    "readings are stored. Bad readings go to the dead letters with their reason and are listed "
    "in `rejected`; the others are kept. A body that is not JSON at all is a dead letter and a "
    "400.",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": SampleBatchIn.model_json_schema()}},
        }
    },
)
async def ingest_samples(request: Request, db: DbDep, _: Ingest) -> IngestOut:
    from starlette.concurrency import run_in_threadpool

    body = await request.body()
    pipe = pipeline_for(request, db)
    now = pipe.clock()
    problem: Rejected | None = None
    try:
        items = json.loads(body)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        problem = Rejected("malformed_json", f"not valid UTF-8 JSON ({exc})", "")
    else:
        try:
            readings, rejected = parse_http_items(items, now, pipe.settings.lifeline_max_future_s)
        except ValueError as exc:
            problem = Rejected("bad_structure", str(exc), "")
    if problem is not None:
        dead = Rejected(problem.reason, problem.detail, body[:4096].decode("utf-8", "replace"))

        def _dead() -> BatchResult:
            with pipe.lock:  # type: ignore[attr-defined]
                return pipe.process_readings([], [(None, dead)], source="http")

        await run_in_threadpool(_dead)
        raise CityopsError(
            detail=f"The body is not a batch of readings: {problem.detail}. It was kept as a "
            'dead letter. Send a JSON list of {"sensor_id", "ts", "value"} objects.',
            status=400,
            title="Bad batch",
            type="https://cityops.org/problems/lifeline-batch",
        )

    def _run() -> BatchResult:
        with pipe.lock:  # type: ignore[attr-defined]
            return pipe.process_readings(readings, rejected, source="http")

    return _ingest_out(await run_in_threadpool(_run))


@router.get("/dead-letters", summary="Rejected payloads with their reasons")
def dead_letters(
    session: ReadSession,
    _: DeadLetters,
    reason: str | None = None,
    sensor_id: str | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> DeadLetterPage:
    rows, total = service.list_dead_letters(
        session, reason=reason, sensor_id=sensor_id, limit=limit, offset=offset
    )
    return DeadLetterPage(
        items=[service.dead_letter_out(d) for d in rows], total=total, limit=limit, offset=offset
    )


# -------------------------------------------------------------------------------- alarms


@router.get("/alarms", summary="List alarms")
def list_alarms(
    session: ReadSession,
    _: Read,
    status: Annotated[
        str | None,
        Query(description="active, cleared, unacknowledged, ACTIVE_UNACK, CLEARED_UNACK …"),
    ] = None,
    sensor_id: str | None = None,
    kind: str | None = None,
    level: str | None = None,
    incident_id: int | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> AlarmPage:
    rows, total = service.list_alarms(
        session,
        status=status,
        sensor_id=sensor_id,
        kind=kind,
        level=level,
        incident_id=incident_id,
        limit=limit,
        offset=offset,
    )
    return AlarmPage(
        items=[service.alarm_out(a) for a in rows], total=total, limit=limit, offset=offset
    )


@router.get("/alarms/{alarm_id}", summary="One alarm")
def get_alarm(alarm_id: int, session: ReadSession, _: Read) -> AlarmOut:
    return service.alarm_out(service.get_alarm(session, alarm_id))


@router.post("/alarms/{alarm_id}/acknowledge", summary="Acknowledge an alarm (monitoring centre)")
def acknowledge_alarm(alarm_id: int, db: DbDep, principal: Verify) -> AlarmOut:
    with db.write() as session:
        return service.alarm_out(service.acknowledge_alarm(session, alarm_id, principal))


# ----------------------------------------------------------------------------- incidents


@router.get("/incidents", summary="List incidents")
def list_incidents(
    session: ReadSession,
    principal: Read,
    state: str | None = None,
    domain: str | None = None,
    open: Annotated[bool, Query(description="only incidents that are not closed")] = False,
    limit: Limit = 100,
    offset: Offset = 0,
) -> IncidentPage:
    rows, total = service.list_incidents(
        session, state=state, domain=domain, open_only=open, limit=limit, offset=offset
    )
    return IncidentPage(
        items=[service.incident_out(session, i, principal) for i in rows],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.get("/incidents/{incident_id}", summary="One incident with its alarms and history")
def get_incident(incident_id: int, session: ReadSession, principal: Read) -> IncidentOut:
    inc = service.get_incident(session, incident_id)
    return service.incident_out(session, inc, principal, full=True)


@router.post(
    "/incidents/{incident_id}/transitions",
    summary="研判: acknowledge, verify (→ case) or dismiss an incident",
)
def transition_incident(
    incident_id: int,
    body: TransitionIn,
    db: DbDep,
    principal: Verify,
    if_match: Annotated[
        int | None, Query(alias="version", description="the version you read (409 if stale)")
    ] = None,
) -> IncidentOut:
    with db.write() as session:
        inc = service.transition_incident(
            session,
            incident_id,
            body.action,
            principal,
            verdict=body.verdict,
            note=body.note,
            version=if_match,
        )
        return service.incident_out(session, inc, principal, full=True)


# ------------------------------------------------------------------------------------ map


@router.get(
    "/map",
    summary="Sensors with their last reading and open alarm level (GeoJSON)",
    response_class=Response,
    responses={200: {"content": {"application/geo+json": {}}}},
)
def live_map(
    session: ReadSession,
    _: Read,
    bbox: Annotated[str | None, Query(description="minLon,minLat,maxLon,maxLat")] = None,
    domain: str | None = None,
) -> Response:
    fc = service.live_map(session, bbox=_bbox(bbox), domain=domain)
    return Response(json.dumps(fc, ensure_ascii=False), media_type="application/geo+json")
