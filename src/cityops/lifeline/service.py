"""Use cases of lifeline monitoring: acknowledging alarms, the incident chain (报警 → 研判 → 处置 →
闭环, REFERENCE Part C §1.4), the hand-over of verified incidents to the case loop, and the reads
the API and the live map need.

Each function takes the caller's session (one transaction, opened by the caller), the acting
principal and ``now``; it calls the pure modules (:mod:`.incidents`, :mod:`.alarms`) and writes
history, audit and outbox rows in that same transaction (DESIGN §1.5). A verified incident
becomes a case *through the outbox*: :func:`transition_incident` publishes
``lifeline.incident.verified`` and the worker runs :func:`handle_incident_verified`, which calls
:func:`open_case_for_incident` — the one edge to the case loop. The way back is the case loop's
events: ``case.closed`` closes the incident, ``case.cancelled`` closes it with the case's reason,
``case.merged`` moves it to the surviving case (:func:`handle_case_closed` and its siblings).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cityops.core import audit
from cityops.core.auth import Principal
from cityops.core.db import utcnow
from cityops.core.errors import Conflict, ValidationFailed
from cityops.core.events import Claimed, Handler, publish
from cityops.lifeline import incidents as machine
from cityops.lifeline.alarms import LEVELS
from cityops.lifeline.models import (
    Alarm,
    AlarmEvent,
    DeadLetter,
    Incident,
    IncidentTransition,
    Sensor,
    SensorState,
)
from cityops.lifeline.registry import fetch, rule_of
from cityops.lifeline.rules import incident_rules
from cityops.lifeline.schemas import (
    AlarmOut,
    DeadLetterOut,
    IncidentOut,
    IncidentTransitionOut,
    RuleOut,
    SensorOut,
)

log = logging.getLogger("cityops.lifeline")

EVENT_INCIDENT_VERIFIED = "lifeline.incident.verified"
#: The case loop's event when a case is closed (payload ``{"case_id": …}``); see
#: :func:`handle_case_closed`.
EVENT_CASE_CLOSED = "case.closed"
#: … when a case is cancelled (撤销; payload ``{"case_id": …, "note": reason}``).
EVENT_CASE_CANCELLED = "case.cancelled"
#: … when a case is merged into another (并单; payload ``{"case_id": …, "into": survivor}``).
EVENT_CASE_MERGED = "case.merged"


# ------------------------------------------------------------------------------- outputs


def alarm_out(a: Alarm) -> AlarmOut:
    return AlarmOut(
        id=a.id,
        sensor_id=a.sensor_id,
        kind=a.kind,
        level=a.level,
        status=a.status,
        message=a.message,
        threshold=a.threshold,
        raised_at=a.raised_at,
        raised_value=a.raised_value,
        last_at=a.last_at,
        last_value=a.last_value,
        updates=a.updates,
        acknowledged_at=a.acknowledged_at,
        acknowledged_by=a.acknowledged_by,
        cleared_at=a.cleared_at,
        cleared_value=a.cleared_value,
        incident_id=a.incident_id,
    )


def incident_out(
    session: Session, inc: Incident, principal: Principal | None = None, *, full: bool = False
) -> IncidentOut:
    roles = principal.roles if principal else frozenset()
    out = IncidentOut(
        id=inc.id,
        state=inc.state,
        level=inc.level,
        domain=inc.domain,
        network_id=inc.network_id,
        owner_unit=inc.owner_unit,
        lon=inc.lon,
        lat=inc.lat,
        opened_at=inc.opened_at,
        last_alarm_at=inc.last_alarm_at,
        alarm_count=inc.alarm_count,
        verdict=inc.verdict,
        note=inc.note,
        acknowledged_at=inc.acknowledged_at,
        acknowledged_by=inc.acknowledged_by,
        verified_at=inc.verified_at,
        verified_by=inc.verified_by,
        case_id=inc.case_id,
        closed_at=inc.closed_at,
        version=inc.version,
        allowed_actions=[
            a
            for a in machine.allowed_actions(inc.state, frozenset(roles))
            if a not in machine.SYSTEM_ACTIONS
        ],
    )
    if full:
        alarms = session.scalars(
            select(Alarm).where(Alarm.incident_id == inc.id).order_by(Alarm.raised_at, Alarm.id)
        )
        out.alarms = [alarm_out(a) for a in alarms]
        trs = session.scalars(
            select(IncidentTransition)
            .where(IncidentTransition.incident_id == inc.id)
            .order_by(IncidentTransition.id)
        )
        out.transitions = [
            IncidentTransitionOut(
                action=t.action,
                from_state=t.from_state,
                to_state=t.to_state,
                verdict=t.verdict,
                note=t.note,
                actor=t.actor,
                at=t.at,
            )
            for t in trs
        ]
    return out


def sensor_out(session: Session, s: Sensor, *, with_rule: bool = False) -> SensorOut:
    state = session.get(SensorState, s.id)
    open_alarms = {
        a.kind: a.level
        for a in session.scalars(
            select(Alarm).where(Alarm.sensor_id == s.id, Alarm.cleared_at.is_(None))
        )
    }
    rule = None
    if with_rule:
        r = rule_of(s)
        rule = RuleOut(
            profile=r.profile,
            levels={b.level: {"above": b.above, "below": b.below} for b in r.bands},
            hysteresis=r.hysteresis,
            min_duration_s=r.min_duration_s,
            clear_duration_s=r.clear_duration_s,
            physical={"min": r.physical_min, "max": r.physical_max},
            rate=None
            if r.rate is None
            else {
                "level": r.rate.level,
                "rise_per_min": r.rate.rise_per_min,
                "drop_per_min": r.rate.drop_per_min,
                "clear_after_s": r.rate.clear_after_s,
            },
            stuck=None
            if r.stuck is None
            else {"samples": r.stuck.samples, "ignore": sorted(r.stuck.ignore)},
            offline_intervals=r.offline_intervals,
        )
    return SensorOut(
        id=s.id,
        device_id=s.device_id,
        channel=s.channel,
        name=s.name,
        domain=s.domain,
        kind=s.kind,
        object_kind=s.object_kind,
        object_id=s.object_id,
        network_id=s.network_id,
        feature_id=s.feature_id,
        unit=s.unit,
        interval_s=s.interval_s,
        lon=s.lon,
        lat=s.lat,
        owner_unit=s.owner_unit,
        profile=s.profile,
        thresholds=s.thresholds or {},
        maintenance=s.maintenance,
        maintenance_until=s.maintenance_until,
        maintenance_reason=s.maintenance_reason,
        active=s.active,
        last_ts=state.last_ts if state else None,
        last_value=state.last_value if state else None,
        open_alarms=open_alarms,
        rule=rule,
    )


def dead_letter_out(d: DeadLetter) -> DeadLetterOut:
    return DeadLetterOut(
        id=d.id,
        received_at=d.received_at,
        source=d.source,
        topic=d.topic,
        sensor_id=d.sensor_id,
        reason=d.reason,
        detail=d.detail,
        payload=d.payload,
    )


# ------------------------------------------------------------------------------- alarms


def get_alarm(session: Session, alarm_id: int, *, lock: bool = False) -> Alarm:
    return fetch(
        session,
        Alarm,
        alarm_id,
        lock=lock,
        missing=f"No alarm {alarm_id}: GET /api/v1/lifeline/alarms lists them.",
    )


def acknowledge_alarm(
    session: Session, alarm_id: int, principal: Principal, now: dt.datetime | None = None
) -> Alarm:
    """The monitoring centre has seen the alarm (确认). A fact independent of clearing: an alarm
    may be cleared before anyone looked and still wait here (EXAMPLES §5)."""
    now = now or utcnow()
    alarm = get_alarm(session, alarm_id, lock=True)
    if alarm.acknowledged_at is not None:
        raise Conflict(
            f"Alarm {alarm_id} was acknowledged by {alarm.acknowledged_by} at "
            f"{alarm.acknowledged_at.isoformat()}; nothing to do."
        )
    _ack(session, alarm, principal.username, now)
    audit.record(
        session, principal.username, "lifeline.alarm.acknowledge", "lifeline_alarm", alarm_id
    )
    return alarm


def _ack(session: Session, alarm: Alarm, actor: str, now: dt.datetime) -> None:
    alarm.acknowledged_at = now
    alarm.acknowledged_by = actor
    alarm.updated_at = now
    session.add(
        AlarmEvent(
            alarm_id=alarm.id,
            action="acknowledge",
            level=alarm.level,
            at=now,
            value=None,
            actor=actor,
            recorded_at=now,
        )
    )


def list_alarms(
    session: Session,
    *,
    status: str | None = None,
    sensor_id: str | None = None,
    kind: str | None = None,
    level: str | None = None,
    incident_id: int | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[Sequence[Alarm], int]:
    """``status``: active, cleared, unacknowledged, or one of ThingsBoard's four."""
    where: list[Any] = []
    s = (status or "").upper()
    if s in ("ACTIVE", "ACTIVE_UNACK", "ACTIVE_ACK"):
        where.append(Alarm.cleared_at.is_(None))
    if s in ("CLEARED", "CLEARED_UNACK", "CLEARED_ACK"):
        where.append(Alarm.cleared_at.is_not(None))
    if s in ("UNACKNOWLEDGED", "ACTIVE_UNACK", "CLEARED_UNACK"):
        where.append(Alarm.acknowledged_at.is_(None))
    if s in ("ACTIVE_ACK", "CLEARED_ACK"):
        where.append(Alarm.acknowledged_at.is_not(None))
    if status and s not in (
        "ACTIVE",
        "CLEARED",
        "UNACKNOWLEDGED",
        "ACTIVE_UNACK",
        "ACTIVE_ACK",
        "CLEARED_UNACK",
        "CLEARED_ACK",
    ):
        raise ValidationFailed(
            f"Unknown alarm status {status!r}: use active, cleared, unacknowledged, "
            "ACTIVE_UNACK, ACTIVE_ACK, CLEARED_UNACK or CLEARED_ACK."
        )
    if sensor_id:
        where.append(Alarm.sensor_id == sensor_id)
    if kind:
        where.append(Alarm.kind == kind)
    if level:
        if level not in LEVELS:
            raise ValidationFailed(f"Unknown level {level!r}: use {', '.join(LEVELS)}.")
        where.append(Alarm.level == level)
    if incident_id is not None:
        where.append(Alarm.incident_id == incident_id)
    total = session.scalar(select(func.count()).select_from(Alarm).where(*where)) or 0
    rows = session.scalars(
        select(Alarm)
        .where(*where)
        .order_by(Alarm.raised_at.desc(), Alarm.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return rows, int(total)


# ---------------------------------------------------------------------------- incidents


def get_incident(session: Session, incident_id: int, *, lock: bool = False) -> Incident:
    return fetch(
        session,
        Incident,
        incident_id,
        lock=lock,
        missing=f"No incident {incident_id}: GET /api/v1/lifeline/incidents lists them.",
    )


def _record(
    session: Session,
    inc: Incident,
    action: str,
    before: str,
    actor: str,
    now: dt.datetime,
    verdict: str | None = None,
    note: str = "",
) -> None:
    session.add(
        IncidentTransition(
            incident_id=inc.id,
            action=action,
            from_state=before,
            to_state=inc.state,
            verdict=verdict,
            note=note,
            actor=actor,
            at=now,
        )
    )
    inc.version += 1
    inc.updated_at = now
    audit.record(
        session,
        actor,
        f"lifeline.incident.{action}",
        "lifeline_incident",
        inc.id,
        {"from": before, "to": inc.state, "verdict": verdict, "note": note},
    )


def _ack_members(session: Session, inc: Incident, actor: str, now: dt.datetime) -> None:
    for a in session.scalars(
        select(Alarm).where(Alarm.incident_id == inc.id, Alarm.acknowledged_at.is_(None))
    ):
        _ack(session, a, actor, now)


def transition_incident(
    session: Session,
    incident_id: int,
    action: str,
    principal: Principal,
    *,
    verdict: str | None = None,
    note: str = "",
    version: int | None = None,
    now: dt.datetime | None = None,
) -> Incident:
    """One step of 研判 by the monitoring centre: acknowledge, verify (→ case) or dismiss."""
    now = now or utcnow()
    inc = get_incident(session, incident_id, lock=True)
    if version is not None and version != inc.version:
        raise Conflict(
            f"Incident {incident_id} changed meanwhile (version {inc.version}, you read "
            f"{version}): reload it and decide again."
        )
    if action in machine.SYSTEM_ACTIONS:
        raise ValidationFailed(
            "An incident closes when its case closes (or is cancelled) and follows a merged "
            "case; use dismiss otherwise."
        )
    try:
        outcome = machine.apply(inc.state, action, principal.roles, verdict=verdict, note=note)
    except machine.TransitionError as exc:
        raise Conflict(str(exc)) from exc
    before = inc.state
    inc.state = outcome.target
    actor = principal.username
    if inc.acknowledged_at is None:
        inc.acknowledged_at, inc.acknowledged_by = now, actor
        _ack_members(session, inc, actor, now)
    if action == "verify":
        inc.verdict = outcome.verdict
        inc.verified_at, inc.verified_by = now, actor
        if note:
            inc.note = note
        # The case is opened by the worker, in its own transaction, from this event: if this
        # transaction rolls back there is no event, and the event cannot be lost once we commit.
        publish(session, EVENT_INCIDENT_VERIFIED, {"incident_id": inc.id, "actor": actor})
    elif action == "dismiss":
        inc.verdict = outcome.verdict
        inc.verified_at, inc.verified_by = now, actor
        inc.note = note
        inc.closed_at = now
    _record(session, inc, action, before, actor, now, outcome.verdict, note)
    return inc


def list_incidents(
    session: Session,
    *,
    state: str | None = None,
    domain: str | None = None,
    open_only: bool = False,
    limit: int = 100,
    offset: int = 0,
) -> tuple[Sequence[Incident], int]:
    where: list[Any] = []
    if state:
        if state not in machine.STATES:
            raise ValidationFailed(f"Unknown state {state!r}: use {', '.join(machine.STATES)}.")
        where.append(Incident.state == state)
    if open_only:
        where.append(Incident.state != "closed")
    if domain:
        where.append(Incident.domain == domain)
    total = session.scalar(select(func.count()).select_from(Incident).where(*where)) or 0
    rows = session.scalars(
        select(Incident)
        .where(*where)
        .order_by(Incident.opened_at.desc(), Incident.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return rows, int(total)


# ------------------------------------------------------------------------ to the case loop


def _case_text(session: Session, inc: Incident) -> tuple[str, str]:
    alarms = list(
        session.scalars(select(Alarm).where(Alarm.incident_id == inc.id).order_by(Alarm.raised_at))
    )
    title = f"城市生命线报警 · {inc.domain} · 事件 #{inc.id} ({inc.level})"
    lines = [
        f"Lifeline incident #{inc.id} on network {inc.network_id or '-'}, verified as real by "
        f"{inc.verified_by} at {inc.verified_at.isoformat() if inc.verified_at else '-'}.",
        *(
            f"- sensor {a.sensor_id}: {a.kind} {a.level} since {a.raised_at.isoformat()} "
            f"({a.message})"
            for a in alarms[:50]
        ),
    ]
    if inc.note:
        lines.append(f"Analyst note: {inc.note}")
    return title[:200], "\n".join(lines)[:5000]


def open_case_for_incident(session: Session, inc: Incident, actor: str, now: dt.datetime) -> str:
    """Create the case of a verified incident (``source=sensor_alarm``), registered and
    dispatched to the incident's owning unit (权属单位); returns the case's public id.

    This is the one edge between lifeline and the case loop (tests fake exactly this function).
    It runs inside the outbox consumer's claiming transaction, so the case exists exactly when
    the event is acknowledged (:func:`cityops.cases.service.create_case_in_session`).
    """
    from cityops.cases import schemas as case_schemas
    from cityops.cases import service as case_service

    rules = incident_rules().case
    title, description = _case_text(session, inc)
    data = case_schemas.CaseCreate(
        source=case_schemas.Source(rules.source),
        category=rules.category_by_domain.get(inc.domain, rules.default_category),
        urgency="urgent" if inc.level in ("red", "orange") else "normal",
        title=title,
        description=description,
        location=case_schemas.Location(lon=inc.lon, lat=inc.lat, address=""),
        do_register=True,
        do_dispatch=True,
        department=inc.owner_unit,
        note=f"lifeline incident #{inc.id}: dispatched to its owning unit (权属单位)",
    )
    case = case_service.create_case_in_session(session, data, _system_principal(), now=now)
    return str(case.id)


def _system_principal() -> Principal:
    # The platform acting for the monitoring centre: it reports (monitor), registers
    # (supervisor: 立案) and dispatches (dispatcher: 派遣) in one step, city-wide.
    return Principal(
        username="lifeline",
        roles=frozenset({"monitor", "supervisor", "dispatcher"}),
        display_name="城市生命线监测中心",
    )


def handle_incident_verified(session: Session, event: Claimed) -> None:
    """Outbox handler: a verified incident becomes a case (推送), exactly once."""
    now = utcnow()
    inc = get_incident(session, int(event.payload["incident_id"]), lock=True)
    if inc.case_id is not None or inc.state != "pushed":
        return
    inc.case_id = open_case_for_incident(session, inc, str(event.payload.get("actor", "")), now)
    inc.updated_at = now
    audit.record(
        session,
        "system",
        "lifeline.incident.case",
        "lifeline_incident",
        inc.id,
        {"case_id": inc.case_id},
    )


def _open_incidents_of_case(session: Session, case_id: str) -> list[Incident]:
    """The incidents that wait on ``case_id`` (several once cases were merged), locked."""
    return list(
        session.scalars(
            select(Incident)
            .where(Incident.case_id == case_id, Incident.state != "closed")
            .order_by(Incident.id)
            .with_for_update()
        )
    )


def _system_step(
    session: Session, inc: Incident, action: str, actor: str, now: dt.datetime, note: str
) -> None:
    outcome = machine.apply(inc.state, action, frozenset({machine.SYSTEM}), note=note)
    before = inc.state
    inc.state = outcome.target
    if inc.state == "closed":
        inc.closed_at = now
    _record(session, inc, action, before, actor, now, None, note)


def close_incident_for_case(
    session: Session, case_id: str, *, actor: str = "system", note: str = ""
) -> list[Incident]:
    """The case of incidents was closed (闭环): close them. Empty when the case is not a
    lifeline case; idempotent (closed incidents are left alone)."""
    now = utcnow()
    found = _open_incidents_of_case(session, case_id)
    for inc in found:
        _system_step(session, inc, "close", actor, now, note or f"case {case_id} closed")
    return found


def cancel_incident_for_case(
    session: Session, case_id: str, reason: str, *, actor: str = "system"
) -> list[Incident]:
    """The case of incidents was cancelled (撤销): close them with the case's reason (kept as
    the transition's note and added to the incident's note). Idempotent."""
    now = utcnow()
    note = f"case {case_id} cancelled: {reason.strip() or 'no reason given'}"
    found = _open_incidents_of_case(session, case_id)
    for inc in found:
        _system_step(session, inc, "cancel", actor, now, note)
        inc.note = f"{inc.note}\n{note}" if inc.note else note
    return found


def follow_merged_case(
    session: Session, case_id: str, into: str, *, actor: str = "system", hops: int = 20
) -> list[Incident]:
    """The case of incidents was merged into ``into`` (并单): they now belong to the surviving
    case and end when it ends. Should the survivor have ended already (events retried out of
    order), they end with it now (following at most ``hops`` further merges). Idempotent."""
    now = utcnow()
    found = _open_incidents_of_case(session, case_id)
    for inc in found:
        _system_step(session, inc, "follow", actor, now, f"case {case_id} merged into {into}")
        inc.case_id = into
    if found and hops > 0:
        _settle_with_case(session, into, actor, hops - 1)
    return found


def _settle_with_case(session: Session, case_id: str, actor: str, hops: int) -> None:
    """Bring the incidents of ``case_id`` in line with where the case is now: closed,
    cancelled, or merged again. Nothing to do while it is open (or not a case of this
    database's case loop)."""
    from cityops.cases.models import Case, CaseEvent

    row = session.execute(
        select(Case.pk, Case.status, Case.merged_into).where(Case.id == case_id)
    ).one_or_none()
    if row is None:
        return
    pk, status, merged_into = row
    if status == "closed":
        close_incident_for_case(session, case_id, actor=actor)
    elif status in ("cancelled", "declined"):
        reason = session.scalar(
            select(CaseEvent.note)
            .where(CaseEvent.case_pk == pk, CaseEvent.action.in_(("cancel", "decline")))
            .order_by(CaseEvent.seq.desc())
            .limit(1)
        )
        cancel_incident_for_case(session, case_id, reason or "", actor=actor)
    elif status == "merged" and merged_into:
        follow_merged_case(session, case_id, merged_into, actor=actor, hops=hops)


def handle_case_closed(session: Session, event: Claimed) -> None:
    """Outbox handler for the case loop's closure event (payload ``{"case_id": …}``)."""
    case_id = event.payload.get("case_id")
    if case_id:
        close_incident_for_case(session, str(case_id))


def handle_case_cancelled(session: Session, event: Claimed) -> None:
    """Outbox handler: the case was cancelled (payload ``{"case_id": …, "note": reason}``)."""
    case_id = event.payload.get("case_id")
    if case_id:
        cancel_incident_for_case(session, str(case_id), str(event.payload.get("note") or ""))


def handle_case_merged(session: Session, event: Claimed) -> None:
    """Outbox handler: the case was merged (payload ``{"case_id": …, "into": survivor}``)."""
    case_id, into = event.payload.get("case_id"), event.payload.get("into")
    if case_id and into:
        follow_merged_case(session, str(case_id), str(into))


#: Outbox handlers of this domain, for the worker (cosmicpython's EVENT_HANDLERS).
EVENT_HANDLERS: dict[str, Handler] = {
    EVENT_INCIDENT_VERIFIED: Handler(run=handle_incident_verified),
    EVENT_CASE_CLOSED: Handler(run=handle_case_closed),
    EVENT_CASE_CANCELLED: Handler(run=handle_case_cancelled),
    EVENT_CASE_MERGED: Handler(run=handle_case_merged),
}


# ------------------------------------------------------------------------------- reads


def list_dead_letters(
    session: Session,
    *,
    reason: str | None = None,
    sensor_id: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[Sequence[DeadLetter], int]:
    where: list[Any] = []
    if reason:
        where.append(DeadLetter.reason == reason)
    if sensor_id:
        where.append(DeadLetter.sensor_id == sensor_id)
    total = session.scalar(select(func.count()).select_from(DeadLetter).where(*where)) or 0
    rows = session.scalars(
        select(DeadLetter).where(*where).order_by(DeadLetter.id.desc()).limit(limit).offset(offset)
    ).all()
    return rows, int(total)


def live_map(
    session: Session,
    *,
    bbox: tuple[float, float, float, float] | None = None,
    domain: str | None = None,
) -> dict[str, Any]:
    """Sensors as a GeoJSON FeatureCollection with their last reading and the most severe open
    alarm (the live map of the monitoring centre)."""
    q = (
        select(
            Sensor.id,
            Sensor.name,
            Sensor.domain,
            Sensor.kind,
            Sensor.object_kind,
            Sensor.unit,
            Sensor.lon,
            Sensor.lat,
            Sensor.maintenance,
            Sensor.network_id,
            SensorState.last_ts,
            SensorState.last_value,
        )
        .outerjoin(SensorState, SensorState.sensor_id == Sensor.id)
        .where(Sensor.active.is_(True))
    )
    if domain:
        q = q.where(Sensor.domain == domain)
    if bbox:
        minx, miny, maxx, maxy = bbox
        q = q.where(Sensor.lon >= minx, Sensor.lon <= maxx, Sensor.lat >= miny, Sensor.lat <= maxy)
    alarms: dict[str, list[tuple[str, str]]] = {}
    for sid, kind, level in session.execute(
        select(Alarm.sensor_id, Alarm.kind, Alarm.level).where(Alarm.cleared_at.is_(None))
    ):
        alarms.setdefault(sid, []).append((kind, level))
    from cityops.lifeline.alarms import max_level

    features = []
    for r in session.execute(q):
        open_ = alarms.get(r.id, [])
        features.append(
            {
                "type": "Feature",
                "id": r.id,
                "geometry": {"type": "Point", "coordinates": [r.lon, r.lat]},
                "properties": {
                    "name": r.name,
                    "domain": r.domain,
                    "kind": r.kind,
                    "object_kind": r.object_kind,
                    "unit": r.unit,
                    "network_id": r.network_id,
                    "maintenance": r.maintenance,
                    "last_ts": r.last_ts.isoformat() if r.last_ts else None,
                    "last_value": r.last_value,
                    "level": max_level(level for _, level in open_),
                    "alarms": sorted(kind for kind, _ in open_),
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}
