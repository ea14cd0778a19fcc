"""Use cases of the case loop: report, transition, read, list, attach, evaluate.

Each use case is one function taking the database, the caller and its input (cosmicpython's
handler shape, EXAMPLES §3): it opens one write transaction, asks the pure machine
(:func:`cityops.cases.machine.decide`) whether the action may be taken, applies the outcome to
the case row, appends the history event and publishes the outbox event — all in that one
transaction (DESIGN §1.5). Nothing here commits half-way.

Concurrency: every UPDATE of a case says ``WHERE version = <the version read>`` (SQLAlchemy's
``version_id_col``); a writer that lost the race gets :class:`~cityops.core.errors.Conflict`
(409) and nothing of its request is written.

Data scope (数据权限) is enforced in the SQL of every query (:func:`visible_clause`), never by
filtering rows afterwards.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, cast

from cryptography.fernet import Fernet, InvalidToken
from pydantic import BaseModel
from sqlalchemy import (
    ColumnElement,
    Table,
    and_,
    bindparam,
    case,
    exists,
    false,
    func,
    insert,
    or_,
    select,
    text,
    true,
)
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from cityops.cases import dispatch as dispatch_rules
from cityops.cases import duplicates as dup
from cityops.cases import machine
from cityops.cases.deadlines import (
    DeadlineRules,
    EscalationRules,
    Limit,
    extend,
    next_escalation,
    stage_due,
)
from cityops.cases.machine import (
    OPEN,
    STAGE_OF,
    STATUS_ZH,
    SYSTEM,
    Caller,
    CaseState,
    Clock,
    Policy,
    Stage,
    Status,
    Transition,
)
from cityops.cases.metrics import (
    AREA_COUNTS,
    GROUPS,
    SCORE_COLUMNS,
    EvaluationRules,
    area_figures,
    columns_for,
    grade,
    score,
    worker_figures,
)
from cityops.cases.models import (
    OPEN_SQL,
    Case,
    CaseAttachment,
    CaseEvent,
    CaseReporter,
    IdempotencyKey,
)
from cityops.cases.schemas import PUBLIC_SOURCES, CaseCreate, TransitionIn
from cityops.core import audit, events
from cityops.core.auth import Principal
from cityops.core.calendar import (
    SHANGHAI,
    CalendarOverride,
    CalendarYear,
    Unit,
    WorkingCalendar,
    WorkingHours,
    load_working_hours,
)
from cityops.core.db import Database, UTCDateTime, utcnow
from cityops.core.errors import (
    CityopsError,
    Conflict,
    FieldError,
    Forbidden,
    NotFound,
    ValidationFailed,
)
from cityops.core.events import serial_write
from cityops.core.models import AppState, kept_value
from cityops.core.rules import RuleFileError, load_rules
from cityops.settings import get_settings

#: roles that see every case inside their division-code scope
AREA_ROLES = frozenset({"grid_worker", "dispatcher", "supervisor", "analyst", "admin", "monitor"})
SYSTEM_PRINCIPAL = Principal(username="system", roles=frozenset({"system"}))

# The clock is an edge (cosmicpython: fake only the edges): tests set it to walk through
# holidays; everything else calls now().
_clock: Callable[[], dt.datetime] = utcnow


def now() -> dt.datetime:
    return _clock()


def set_clock(clock: Callable[[], dt.datetime] | None) -> None:
    """Replace the clock (tests); ``None`` restores the real one."""
    global _clock
    _clock = clock or utcnow


# ------------------------------------------------------------------------------ rules
class CategoryDef(BaseModel):
    id: str
    code: str
    kind: str
    major: str
    name: str
    standard_ref: str
    code_47678: str | None = None

    @property
    def kind_zh(self) -> str:
        return {"component": "部件", "event": "事件"}.get(self.kind, "城市自定义")


class CategoryFile(BaseModel):
    version: int
    source: str
    categories: list[CategoryDef]


@dataclass(frozen=True)
class CaseRules:
    """Every rule file of the case loop, validated and cross-checked."""

    categories: dict[str, CategoryDef]
    dispatch: dispatch_rules.DispatchRules
    deadlines: DeadlineRules
    escalation: EscalationRules
    duplicates: dup.DuplicateRules
    evaluation: EvaluationRules
    hours: WorkingHours

    @property
    def policy(self) -> Policy:
        return Policy(
            max_extensions=self.deadlines.extension.max_per_case,
            max_escalation=self.escalation.max_level,
        )


@lru_cache(maxsize=1)
def case_rules() -> CaseRules:
    """Load the rule files of ``rules/cases/`` (or the city's overrides) once."""
    cat_file = load_rules("cases/categories.yaml", CategoryFile)
    categories: dict[str, CategoryDef] = {}
    for c in cat_file.categories:
        if c.id in categories:
            raise RuleFileError(f"cases/categories.yaml: category {c.id} is listed twice")
        categories[c.id] = c
    disp = load_rules("cases/dispatch.yaml", dispatch_rules.DispatchRules)
    deadlines = load_rules("cases/deadlines.yaml", DeadlineRules)
    for i, rule in enumerate(disp.rules):
        unknown = [c for c in rule.categories if c not in categories]
        if unknown:
            raise RuleFileError(f"cases/dispatch.yaml: rules[{i}] names unknown {unknown}")
    unknown = [c for c in deadlines.categories if c not in categories]
    if unknown:
        raise RuleFileError(f"cases/deadlines.yaml: unknown categories {unknown}")
    return CaseRules(
        categories=categories,
        dispatch=disp,
        deadlines=deadlines,
        escalation=load_rules("cases/escalation.yaml", EscalationRules),
        duplicates=load_rules("cases/duplicates.yaml", dup.DuplicateRules),
        evaluation=load_rules("cases/evaluation.yaml", EvaluationRules),
        hours=load_working_hours(),
    )


# ------------------------------------------------------------------------------ caches
_lock = threading.Lock()
_calendars: dict[str, tuple[float, WorkingCalendar]] = {}
_geocoders: dict[str, tuple[float, Any]] = {}
_ciphers: dict[str, Fernet] = {}
CALENDAR_TTL = 30.0
GEOCODER_TTL = 10.0
_build_lock = threading.Lock()


def _key(db: Database) -> str:
    return db.engine.url.render_as_string(hide_password=False)


def calendar_for(db: Database) -> WorkingCalendar:
    """The working calendar with this database's overrides (re-read every 30 s, and at once
    after an edit in this process)."""
    with _lock:
        hit = _calendars.get(_key(db))
        if hit is not None and time.monotonic() - hit[0] < CALENDAR_TTL:
            return hit[1]
    with db.read() as session:
        return _calendar_from_session(session, _key(db))


def _calendar_from_session(session: Session, key: str) -> WorkingCalendar:
    with _lock:
        hit = _calendars.get(key)
        if hit is not None and time.monotonic() - hit[0] < CALENDAR_TTL:
            return hit[1]
    overrides = {r.day: r.working for r in session.scalars(select(CalendarOverride))}
    years = frozenset(session.scalars(select(CalendarYear.year)))
    cal = WorkingCalendar(hours=case_rules().hours, overrides=overrides, confirmed_years=years)
    with _lock:
        _calendars[key] = (time.monotonic(), cal)
    return cal


def _forget_calendar(db: Database) -> None:
    with _lock:
        _calendars.pop(_key(db), None)


_NO_PLACES = (
    "The city has no usable areas or grids to place cases in yet: import areas "
    "(cityops import … --layer areas) and build grids first."
)


def _geocoder(db: Database) -> Any:
    """The point locator of ``db``: rebuilt when the base's geocoder changes (grids or areas
    were edited), checked at most every :data:`GEOCODER_TTL` seconds."""
    key = _key(db)
    with _lock:
        hit = _geocoders.get(key)
    if hit is not None and time.monotonic() - hit[0] < GEOCODER_TTL:
        return hit[1][1]
    with _build_lock:  # one build at a time: the first burst of requests must not build 8
        with _lock:
            hit = _geocoders.get(key)
        if hit is not None and time.monotonic() - hit[0] < GEOCODER_TTL:
            return hit[1][1]
        return _refresh_geocoder(db, key, hit)


def _refresh_geocoder(db: Database, key: str, hit: Any) -> Any:
    from cityops.base import geo_service

    try:
        reference = geo_service.geocoder_for(db)  # validates the layers, tracks changes
    except ValidationFailed as exc:
        raise ValidationFailed(f"{_NO_PLACES} ({exc.detail})") from exc
    if hit is not None and hit[1][0] is reference:
        locator = hit[1][1]
    else:
        with db.read() as session:
            locator = _locator_from(session)
    with _lock:
        _geocoders[key] = (time.monotonic(), (reference, locator))
    return locator


def _locator_from(session: Session) -> Any:
    from cityops.base import service as base
    from cityops.cases.locate import PointLocator

    grids = base.layer_frame(session, "grids", columns=["code"])
    areas = base.layer_frame(session, "areas", columns=["code", "kind"])
    if not len(grids) and not len(areas):
        raise ValidationFailed(_NO_PLACES)
    return PointLocator(grids, areas)


def _geocoder_from_session(session: Session, key: str) -> Any:
    """The locator for a caller that holds a session but no :class:`Database` (another
    domain's outbox consumer); same cache as :func:`_geocoder`."""
    with _lock:
        hit = _geocoders.get(key)
    if hit is not None and time.monotonic() - hit[0] < GEOCODER_TTL:
        return hit[1][1]
    locator = _locator_from(session)
    with _lock:
        _geocoders[key] = (time.monotonic(), (None, locator))
    return locator


def clear_caches() -> None:
    """Forget cached rules, calendars, geocoders and keys (tests, rule reloads)."""
    case_rules.cache_clear()
    with _lock:
        _calendars.clear()
        _geocoders.clear()
        _ciphers.clear()


# ------------------------------------------------------------------------------ contacts
def cipher_for(db: Database) -> Fernet:
    """Fernet for reporter contacts: ``CITYOPS_CONTACT_KEY``, else a key kept in app_state
    (like the token signing key)."""
    with _lock:
        hit = _ciphers.get(_key(db))
    if hit is not None:
        return hit
    if not get_settings().contact_key:
        with db.read() as session:  # the key is there but for a new database's first report
            if session.get(AppState, "contact_key") is not None:
                return _cipher_from_session(session, _key(db))
    with serial_write(db) as session:
        return _cipher_from_session(session, _key(db))


def prepared_from_memory(db: Database, *, cipher: bool) -> bool:
    """Whether :func:`prepare_new` would find everything it reads — the locator, the working
    calendar, the contact cipher — in this process's caches, with no database access (an async
    caller prepares on the event loop then, else in a thread)."""
    key, at = _key(db), time.monotonic()
    with _lock:
        geo, cal = _geocoders.get(key), _calendars.get(key)
        return (
            geo is not None
            and at - geo[0] < GEOCODER_TTL
            and cal is not None
            and at - cal[0] < CALENDAR_TTL
            and (not cipher or key in _ciphers)
        )


def _cipher_from_session(session: Session, key: str) -> Fernet:
    with _lock:
        hit = _ciphers.get(key)
    if hit is not None:
        return hit
    secret = get_settings().contact_key
    if not secret:
        secret = kept_value(session, "contact_key", lambda: Fernet.generate_key().decode())
    cipher = Fernet(secret.encode())
    with _lock:
        _ciphers[key] = cipher
    return cipher


def _enc(cipher: Fernet, value: str | None) -> str | None:
    return cipher.encrypt(value.encode()).decode() if value else None


def _dec(cipher: Fernet, token: str | None) -> str | None:
    if not token:
        return None
    try:
        return cipher.decrypt(token.encode()).decode()
    except InvalidToken:
        return "(unreadable: the contact key changed)"


def mask_name(name: str | None) -> str | None:
    if not name:
        return None
    return name[0] + "*" * max(1, len(name) - 1)


def mask_phone(phone: str | None) -> str | None:
    if not phone:
        return None
    digits = phone.replace(" ", "").replace("-", "")
    if len(digits) <= 4:
        return "*" * len(digits)
    return digits[:3] + "*" * max(0, len(digits) - 7) + digits[-4:]


def mask_email(email: str | None) -> str | None:
    if not email or "@" not in email:
        return None
    local, domain = email.split("@", 1)
    return f"{local[:1]}***@{domain}"


# ------------------------------------------------------------------------------ ids
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def local(t: dt.datetime | None) -> dt.datetime | None:
    """Times leave the API in Asia/Shanghai with their offset (DESIGN §3 "Time": stored in
    UTC, shown in Asia/Shanghai)."""
    return t.astimezone(SHANGHAI) if t is not None else None


def new_case_id() -> str:
    """10 Crockford base-32 characters (50 random bits): short to read out on the phone,
    without I/L/O/U, unguessable. Never reused: cases are never deleted and the column is
    unique (a collision is retried)."""
    n = secrets.randbits(50)
    return "".join(_CROCKFORD[(n >> (5 * i)) & 31] for i in range(10))


# ------------------------------------------------------------------------------ scope
def scope_clause(scope: str) -> ColumnElement[bool]:
    """Division-code prefix → an indexable condition on (district, street, community, grid):
    a prefix of exactly 6/9/12/15 digits is an equality on that level and its parents."""
    if not scope:
        return true()
    n = len(scope)
    if n == 15:
        return and_(
            Case.district == scope[:6],
            Case.street == scope[:9],
            Case.community == scope[:12],
            Case.grid_code == scope,
        )
    if n == 12:
        return and_(Case.district == scope[:6], Case.street == scope[:9], Case.community == scope)
    if n == 9:
        return and_(Case.district == scope[:6], Case.street == scope)
    if n == 6:
        return Case.district == scope
    if n < 6:
        return Case.district.startswith(scope, autoescape=True)
    return Case.grid_code.startswith(scope, autoescape=True)


def visible_clause(principal: Principal) -> ColumnElement[bool]:
    """Which cases ``principal`` sees: staff of the centres inside their scope, handlers
    their department's cases (inside their scope), citizens the cases they reported."""
    clauses: list[ColumnElement[bool]] = []
    roles = principal.roles
    area = scope_clause(principal.scope)
    if roles & AREA_ROLES or "system" in roles:
        clauses.append(area)
    if "handler" in roles and principal.department:
        clauses.append(and_(Case.department == principal.department, area))
    if "citizen" in roles and principal.user_id is not None:
        clauses.append(
            exists(
                select(CaseReporter.pk).where(
                    CaseReporter.case_pk == Case.pk, CaseReporter.user_id == principal.user_id
                )
            )
        )
    if not clauses:
        return false()
    return or_(*clauses) if len(clauses) > 1 else clauses[0]


def _area_code(c: Case) -> str:
    return dispatch_rules.area_code(c.district, c.street, c.community, c.grid_code)


def _is_reporter(session: Session, principal: Principal, c: Case) -> bool:
    if principal.user_id is None or "citizen" not in principal.roles:
        return False
    return (
        session.scalar(
            select(CaseReporter.pk).where(
                CaseReporter.case_pk == c.pk, CaseReporter.user_id == principal.user_id
            )
        )
        is not None
    )


def caller_for(session: Session, principal: Principal, c: Case) -> Caller:
    if "system" in principal.roles:
        return SYSTEM
    return Caller(
        roles=principal.roles,
        in_area=principal.in_scope(_area_code(c)),
        same_department=bool(principal.department) and principal.department == c.department,
        is_reporter=_is_reporter(session, principal, c),
    )


def state_of(c: Case) -> CaseState:
    return CaseState(
        status=Status(c.status),
        department=c.department,
        suggested_department=c.suggested_department,
        extension_pending=c.extension_request is not None,
        extensions_granted=c.extensions_granted,
        escalation_level=c.escalation_level,
        rework_count=c.rework_count,
    )


def _load(session: Session, principal: Principal, case_id: str, *, lock: bool = False) -> Case:
    query = select(Case).where(Case.id == case_id.upper(), visible_clause(principal))
    if lock:
        query = query.with_for_update()
    found = session.scalar(query)
    if found is None:
        raise NotFound(
            f"No case {case_id} that you may see: check the id (10 characters, as given when "
            "it was reported) or ask the supervision centre."
        )
    return found


# ------------------------------------------------------------------------------ applying
def _limit_of(value: Any) -> Limit | None:
    if value is None:
        return None
    if isinstance(value, dict):
        return Limit(float(value["amount"]), Unit(value["unit"]))
    return Limit(float(value.amount), Unit(value.unit))


def _start_clock(
    c: Case, status: Status, start: dt.datetime, rules: CaseRules, cal: WorkingCalendar
) -> None:
    stage = STAGE_OF[status]
    if stage is None:
        c.stage = c.stage_started_at = c.due_at = c.next_escalation_at = None
        return
    due = stage_due(cal, rules.deadlines, c.category, c.urgency, stage, start)
    c.stage, c.stage_started_at = stage.value, start
    c.due_at, c.due_provisional = due.at, due.provisional
    if stage is Stage.HANDLING:
        c.handling_due_at = due.at
    c.next_escalation_at = next_escalation(cal, rules.escalation, due.at, 0)


def _apply(
    c: Case,
    tr: Transition,
    *,
    actor: str,
    note: str,
    params: dict[str, Any],
    at: dt.datetime,
    rules: CaseRules,
    cal: WorkingCalendar,
    data: dict[str, Any] | None = None,
    event: Callable[..., CaseEvent] = CaseEvent,
) -> CaseEvent:
    """Write the machine's outcome onto the row; return the (unsaved) history event, built by
    ``event`` (the ORM class; the create path passes a plain draft it inserts with Core)."""
    st = tr.state
    due_before = c.due_at
    data = dict(data or {})
    c.status = st.status.value
    c.department = st.department
    c.extensions_granted = st.extensions_granted
    c.escalation_level = st.escalation_level
    c.rework_count = st.rework_count
    pending = c.extension_request
    if not st.extension_pending:
        c.extension_request = None
    name = tr.action
    if name == "register":
        c.registered_at = at
    elif name == "dispatch":
        c.dispatched_at = at
        c.dispatch_count += 1
        if c.department == c.suggested_department:
            lead = dispatch_rules.assign(rules.dispatch, c.category, c.district, _area_code(c))
            c.assisting = list(lead.assisting)
        else:
            c.assisting = []
            data["overrides_rule"] = c.suggested_department
    elif name == "accept":
        c.accepted_at = at
    elif name == "request_extension":
        limit = _limit_of(params.get("extension")) or rules.deadlines.extension_limit()
        c.extension_request = {
            "amount": limit.amount,
            "unit": str(limit.unit),
            "by": actor,
            "at": at.isoformat(),
            "note": note,
        }
        data["extension"] = str(limit)
    elif name == "resolve":
        c.resolved_at = at
        started = c.stage_started_at or c.dispatched_at or at
        worked = cal.working_time_between(started, at)
        c.handling_minutes = (c.handling_minutes or 0) + int(worked.total_seconds() // 60)
        c.on_time = c.handling_due_at is not None and at <= c.handling_due_at
    elif name == "send_back":
        c.send_back_count += 1
        c.assisting = []
        c.handling_due_at = None
    elif name in ("close", "feedback"):
        if name == "close":
            c.closed_at = c.ended_at = at
        fb = params.get("feedback")
        if fb is not None:
            fb = fb if isinstance(fb, dict) else fb.model_dump()
            c.feedback_contacted = bool(fb["contacted"])
            c.feedback_solved = bool(fb["solved"])
            c.satisfaction = str(fb["satisfaction"])
            data["feedback"] = fb
    elif name in ("decline", "cancel", "merge"):
        c.ended_at = at
    elif name in ("verify", "check"):
        for key in ("found", "passed"):
            if key in params:
                data[key] = params[key]
    if tr.clock is Clock.START:
        _start_clock(c, st.status, at, rules, cal)
        data["due_at"] = c.due_at.isoformat() if c.due_at else None
    elif tr.clock is Clock.EXTEND:
        limit = (
            _limit_of(params.get("extension"))
            or _limit_of(pending)
            or rules.deadlines.extension_limit()
        )
        assert c.due_at is not None
        due = extend(cal, c.due_at, limit)
        c.due_at = c.handling_due_at = due.at
        c.due_provisional = c.due_provisional or due.provisional
        c.next_escalation_at = next_escalation(cal, rules.escalation, due.at, c.escalation_level)
        data.update({"extension": str(limit), "due_at": due.at.isoformat()})
    elif tr.clock is Clock.STOP:
        c.stage = c.stage_started_at = c.due_at = c.next_escalation_at = None
    elif name == "escalate":
        level = rules.escalation.level(st.escalation_level)
        data["level"] = st.escalation_level
        data["level_name"] = level.name if level else ""
        c.next_escalation_at = next_escalation(cal, rules.escalation, c.due_at, st.escalation_level)
    c.version += 1
    c.updated_at = at
    return event(
        seq=c.version,
        action=name,
        from_status=tr.from_status.value,
        to_status=st.status.value,
        actor=actor,
        role=tr.role,
        at=at,
        note=note,
        department=c.department,
        stage_due_at=due_before,
        data=data,
    )


def _payload(c: Case, ev: CaseEvent) -> dict[str, Any]:
    return {
        "case_id": c.id,
        "seq": ev.seq,
        "action": ev.action,
        "from_status": ev.from_status,
        "to_status": ev.to_status,
        "actor": ev.actor,
        "at": ev.at.isoformat(),
        "department": c.department,
        "grid_code": c.grid_code,
        "due_at": c.due_at.isoformat() if c.due_at else None,
        "escalation_level": c.escalation_level,
        "note": ev.note,
    }


def _publish(session: Session, c: Case, ev: CaseEvent) -> None:
    events.publish(session, "case.changed", _payload(c, ev))


def _note_of(params: dict[str, Any]) -> str:
    note = params.get("note")
    return note.strip() if isinstance(note, str) else ""


# ------------------------------------------------------------------------------ create
def _check_category(rules: CaseRules, category: str, field: str = "category") -> CategoryDef:
    found = rules.categories.get(category)
    if found is None:
        raise ValidationFailed(
            f"Unknown category {category!r}: use an id from GET /api/v1/categories "
            "(e.g. event:0102 暴露垃圾, component:0101 上水井盖).",
            [FieldError(field, f"{category!r} is not a category")],
        )
    return found


def _check_urgency(rules: CaseRules, urgency: str, field: str = "urgency") -> None:
    if urgency not in rules.deadlines.urgencies:
        raise ValidationFailed(
            f"Unknown urgency {urgency!r}: use one of {', '.join(rules.deadlines.urgencies)}.",
            [FieldError(field, f"{urgency!r} is not an urgency")],
        )


def _check_department(rules: CaseRules, department: str) -> None:
    if not rules.dispatch.is_known(department):
        codes = ", ".join(d.code for d in rules.dispatch.departments)
        raise ValidationFailed(
            f"Unknown department {department!r}: use one of {codes}, or district:<6-digit "
            "code> for a district's own unit (GET /api/v1/departments).",
            [FieldError("department", f"{department!r} is not a department")],
        )


def _locate(geocoder: Any, lon: float, lat: float) -> dict[str, str | None]:
    where = geocoder.locate_one(lon, lat)
    if not where.get("district"):
        raise ValidationFailed(
            f"The point lon={lon}, lat={lat} lies outside every area of this city: check "
            "that longitude comes first and that the coordinates are WGS84 (a point copied "
            "from a Chinese map app is GCJ-02 or BD-09: convert it first).",
            [FieldError("location", "outside every district of the city")],
        )
    return dict(where)


def _request_hash(body: CaseCreate) -> str:
    canonical = json.dumps(
        body.model_dump(mode="json", by_alias=True), sort_keys=True, ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


# built once with bound parameters: a hot statement is neither rebuilt nor re-keyed per call
_DUPLICATE_QUERY = (
    select(Case.id, Case.lon, Case.lat, Case.reported_at, Case.title, Case.description)
    .where(
        Case.category == bindparam("category"),
        text(OPEN_SQL),
        Case.lat.between(bindparam("miny"), bindparam("maxy")),
        Case.lon.between(bindparam("minx"), bindparam("maxx")),
        Case.reported_at >= bindparam("since", type_=UTCDateTime()),
        Case.reported_at <= bindparam("until", type_=UTCDateTime()),
    )
    .limit(200)
)


def duplicate_params(new: _NewCase) -> dict[str, Any]:
    """The parameters of the likely-duplicate search for a new case (``_DUPLICATE_QUERY``)."""
    rules = case_rules()
    c = new.case
    minx, miny, maxx, maxy = dup.search_box(rules.duplicates, c.lon, c.lat)
    window = dt.timedelta(hours=rules.duplicates.window_hours)
    return {
        "category": c.category,
        "minx": minx,
        "miny": miny,
        "maxx": maxx,
        "maxy": maxy,
        "since": c.reported_at - window,
        "until": c.reported_at + window,
    }


def candidate(row: Sequence[Any]) -> dup.Candidate:
    """A row of ``_DUPLICATE_QUERY`` as a candidate."""
    return dup.Candidate(row[0], row[1], row[2], row[3], f"{row[4]} {row[5]}")


def settle_duplicates(new: _NewCase, candidates: list[dup.Candidate]) -> None:
    """Mark the new case's likely duplicates among the open cases found near it."""
    c = new.case
    matches = dup.find(
        case_rules().duplicates,
        c.lon,
        c.lat,
        c.reported_at,
        f"{c.title} {c.description}",
        candidates,
    )
    c.likely_duplicates = [m.as_dict() for m in matches]
    c.has_duplicates = bool(matches)
    new.history[0].data = {**new.history[0].data, "likely_duplicates": [m.id for m in matches]}


@dataclass
class _NewCase:
    """A report decided in memory, ready to be inserted in one transaction."""

    case: Case
    history: list[CaseEvent]
    reporter: dict[str, Any]
    body: CaseCreate

    @cached_property
    def request_hash(self) -> str:
        """The report's fingerprint for its Idempotency-Key (computed only when one is used)."""
        return _request_hash(self.body)


def _prepare(
    principal: Principal,
    body: CaseCreate,
    *,
    at: dt.datetime,
    locate: Callable[[float, float], dict[str, str | None]],
    cal: WorkingCalendar,
    cipher: Callable[[], Fernet],
) -> _NewCase:
    """Validate a report and decide everything about it that needs no write: its place, the
    rules' department, likely duplicates, deadlines, and the register/dispatch steps the
    machine allows — so that SQLite's single writer lock is held only for the inserts."""
    rules = case_rules()
    category = _check_category(rules, body.category)
    _check_urgency(rules, body.urgency)
    staff = bool(principal.roles - {"citizen"})
    if not staff and body.source not in PUBLIC_SOURCES:
        raise ValidationFailed(
            f"A citizen's report comes from online or hotline, not {body.source.value}.",
            [FieldError("source", "use online")],
        )
    if body.department is not None:
        _check_department(rules, body.department)
    lon, lat = body.location.lon, body.location.lat
    where = locate(lon, lat)
    district = where["district"] or ""
    street, community = where.get("street") or "", where.get("community") or ""
    grid = where.get("grid_code") or ""
    code = dispatch_rules.area_code(district, street, community, grid)
    if staff and not principal.in_scope(code) and "citizen" not in principal.roles:
        raise Forbidden(
            f"The location is in area {code}, outside your data scope {principal.scope}: "
            "report it to the supervision centre of that area."
        )
    assignment = dispatch_rules.assign(rules.dispatch, body.category, district, code)
    fernet = cipher() if body.reporter else None
    steps = ["register"] if body.do_register else []
    if body.do_dispatch:
        steps = ["register", "dispatch"]
    c = _draft(
        id=new_case_id(),
        version=1,
        status=Status.REPORTED.value,
        source=body.source.value,
        category=body.category,
        urgency=body.urgency,
        title=body.title,
        description=body.description,
        lon=lon,
        lat=lat,
        address=body.location.address,
        district=district,
        street=street,
        community=community,
        grid_code=grid,
        component_id=body.component_id,
        suggested_department=assignment.lead,
        dispatch_rule=assignment.reason,
        department=None,
        assisting=[],
        reported_by=principal.username,
        reported_at=at,
        due_provisional=False,
        extensions_granted=0,
        escalation_level=0,
        dispatch_count=0,
        send_back_count=0,
        rework_count=0,
        likely_duplicates=[],
        has_duplicates=False,
        updated_at=at,
    )
    _start_clock(c, Status.REPORTED, at, rules, cal)
    history = [
        _event_draft(
            seq=1,
            action=machine.REPORT,
            from_status=None,
            to_status=Status.REPORTED.value,
            actor=principal.username,
            role=_reporting_role(principal),
            at=at,
            note="",
            department=None,
            stage_due_at=None,
            data={
                "source": body.source.value,
                "category": body.category,
                "category_name": category.name,
                "suggested_department": assignment.lead,
                "dispatch_rule": assignment.reason,
                "due_at": c.due_at.isoformat() if c.due_at else None,
                "likely_duplicates": [],
            },
        )
    ]
    caller = Caller(roles=principal.roles, in_area=principal.in_scope(code))
    for step in steps:
        params: dict[str, Any] = {}
        if step == "dispatch":
            params = {"department": body.department, "note": body.note}
            params = {k: v for k, v in params.items() if v}
        tr = machine.decide(state_of(c), step, caller, params, rules.policy)
        history.append(
            _apply(
                c,
                tr,
                actor=principal.username,
                note=_note_of(params),
                params=params,
                at=at,
                rules=rules,
                cal=cal,
                event=_event_draft,
            )
        )
    contact = body.reporter
    reporter = {
        "user_id": principal.user_id,
        "username": principal.username,
        "channel": body.source.value,
        "name_enc": _enc(fernet, contact.name) if fernet and contact else None,
        "phone_enc": _enc(fernet, contact.phone) if fernet and contact else None,
        "email_enc": _enc(fernet, contact.email) if fernet and contact else None,
        "notify": bool(contact and contact.notify),
        "merged_from": None,
        "created_at": at,
    }
    return _NewCase(c, history, reporter, body)


def _insert(session: Session, new: _NewCase, principal: Principal, at: dt.datetime) -> Any:
    """Insert a prepared case, its history, reporter and outbox events (Core statements: one
    per table, no unit-of-work bookkeeping); returns the case as the API shows it.

    The same rows as :mod:`cityops.cases.intake` writes for ``POST /api/v1/cases``."""
    # likely duplicates are searched in the writing transaction: one indexed query (tens of
    # microseconds) instead of a read transaction of its own, and it sees every case committed
    # before this one
    conn = session.connection()
    rows = conn.execute(_DUPLICATE_QUERY, duplicate_params(new)).all()
    settle_duplicates(new, [candidate(r) for r in rows])
    new.case.pk = pk = conn.execute(_INSERT_CASE, case_row(new)).scalar_one()
    conn.execute(_INSERT_EVENTS, history_rows(new, pk))
    conn.execute(_INSERT_REPORTER, [reporter_row(new, pk)])
    conn.execute(events.INSERT_OUTBOX, events.outbox_rows(outbox_items(new), at))
    return case_out(new.case, case_rules(), principal, at=at)


def case_row(new: _NewCase) -> dict[str, Any]:
    return _row(new.case, "pk")


def history_rows(new: _NewCase, pk: int | None) -> list[dict[str, Any]]:
    """The history rows of a new case (``pk`` None: the statement supplies the case's key)."""
    return [{**_row(ev, "id"), "case_pk": pk} for ev in new.history]


def reporter_row(new: _NewCase, pk: int | None) -> dict[str, Any]:
    return {**new.reporter, "case_pk": pk}


def outbox_items(new: _NewCase) -> list[tuple[str, dict[str, Any]]]:
    return [("case.changed", _payload(new.case, ev)) for ev in new.history]


def idempotency_row(
    new: _NewCase, principal: Principal, key: str, out: dict[str, Any], at: dt.datetime
) -> dict[str, Any]:
    return {
        "username": principal.username,
        "key": key,
        "request_hash": new.request_hash,
        "case_pk": new.case.pk,
        "response": out,
        "created_at": at,
    }


def check_idempotency_key(key: str | None) -> None:
    if key is not None and not 1 <= len(key) <= 128:
        raise ValidationFailed(
            "Idempotency-Key must be 1–128 characters (a UUID is a good choice).",
            [FieldError("Idempotency-Key", "1–128 characters")],
        )


def prepare_new(db: Database, principal: Principal, body: CaseCreate, at: dt.datetime) -> _NewCase:
    """Everything about a new report decided before the write (see :func:`_prepare`)."""
    geocoder = _geocoder(db)
    return _prepare(
        principal,
        body,
        at=at,
        locate=lambda lon, lat: _locate(geocoder, lon, lat),
        cal=calendar_for(db),
        cipher=lambda: cipher_for(db),
    )


def create_case(
    db: Database,
    principal: Principal,
    body: CaseCreate,
    idempotency_key: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """信息收集: record a report; with ``register``/``dispatch`` also 立案/派遣 it.

    Returns ``(case, created)``; ``created`` is False when ``idempotency_key`` was used before
    with the same request (the first answer is returned again).
    """
    check_idempotency_key(idempotency_key)
    at = now()
    new = prepare_new(db, principal, body, at)
    for attempt in range(4):
        try:
            # a repeated Idempotency-Key is found by the key's primary key at insert time (the
            # except branch below answers it): no look-up before every insert
            with serial_write(db) as session:
                out = _insert(session, new, principal, at).model_dump(mode="json")
                if idempotency_key is not None:
                    session.connection().execute(
                        _INSERT_IDEMPOTENCY,
                        [idempotency_row(new, principal, idempotency_key, out, at)],
                    )
            return out, True
        except IntegrityError as exc:
            if violates(exc, "cases") and attempt < 3:
                # 50 random bits: a collision is rare but possible, and ids are never reused
                new.case.id = new_case_id()
                continue
            if idempotency_key is None or not violates(exc, "case_idempotency"):
                raise
            # the same key raced in from two requests at once: the other one committed first
            with serial_write(db) as session:
                replay = _replay(session, principal, idempotency_key, new.request_hash)
            if replay is None:
                raise
            return replay, False
    raise RuntimeError("could not draw an unused case id")


def create_case_in_session(
    session: Session,
    body: CaseCreate,
    principal: Principal,
    *,
    now: dt.datetime | None = None,
) -> Any:
    """Create a case inside the caller's transaction (another domain's outbox consumer, e.g.
    a verified lifeline incident → a case, exactly once with the consumer's acknowledgement).
    Returns the case as the API shows it (``.id`` is the public id)."""
    at = now or _clock()
    url = session.get_bind().engine.url.render_as_string(hide_password=False)
    geocoder = _geocoder_from_session(session, url)
    new = _prepare(
        principal,
        body,
        at=at,
        locate=lambda lon, lat: _locate(geocoder, lon, lat),
        cal=_calendar_from_session(session, url),
        cipher=lambda: _cipher_from_session(session, url),
    )
    return _insert(session, new, principal, at)


CASES = cast(Table, Case.__table__)
CASE_EVENTS = cast(Table, CaseEvent.__table__)
CASE_REPORTERS = cast(Table, CaseReporter.__table__)
IDEMPOTENCY = cast(Table, IdempotencyKey.__table__)
# built once: a statement object reused is compiled once (SQLAlchemy caches by statement)
_INSERT_CASE = insert(CASES).returning(CASES.c.pk)
_INSERT_EVENTS = insert(CASE_EVENTS)
_INSERT_REPORTER = insert(CASE_REPORTERS)
_INSERT_IDEMPOTENCY = insert(IDEMPOTENCY)
_SELECT_IDEMPOTENCY = select(IDEMPOTENCY.c.request_hash, IDEMPOTENCY.c.response).where(
    IDEMPOTENCY.c.username == bindparam("username"), IDEMPOTENCY.c.key == bindparam("key")
)


def _row(obj: Any, skip: str) -> dict[str, Any]:
    """The column values of a case draft or a transient ORM object, for a Core insert."""
    if isinstance(obj, _Draft):
        table = CASES
    elif isinstance(obj, _EventDraft):
        table = CASE_EVENTS
    else:
        table = obj.__table__
    return {col.key: getattr(obj, col.key, None) for col in table.columns if col.key != skip}


class _Draft:
    """A case being created, as plain attributes named like :class:`Case`'s columns. The
    create path never needs the ORM (it inserts with Core), and plain attributes cost a
    tenth of instrumented ones; the machine and the clocks read and write it like a row."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update({col.key: None for col in CASES.columns})
        self.__dict__.update(values)


def _draft(**values: Any) -> Case:
    return cast(Case, _Draft(values))


class _EventDraft:
    """A history event of a case being created (plain attributes, inserted with Core)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def _event_draft(**values: Any) -> CaseEvent:
    return cast(CaseEvent, _EventDraft(values))


def violates(exc: Exception, table: str) -> bool:
    """Whether ``exc`` (SQLAlchemy's or the driver's) broke a unique key of ``table``."""
    text = str(getattr(exc, "orig", exc))
    return f"{table}." in text or f"pk_{table}" in text or f"uq_{table}_id" in text


def _reporting_role(principal: Principal) -> str:
    for role in ("grid_worker", "supervisor", "dispatcher", "monitor", "handler", "citizen"):
        if role in principal.roles:
            return role
    return sorted(principal.roles)[0] if principal.roles else "system"


def _replay(
    session: Session, principal: Principal, key: str, request_hash: str
) -> dict[str, Any] | None:
    row = session.execute(_SELECT_IDEMPOTENCY, {"username": principal.username, "key": key}).first()
    return replayed(row, request_hash)


def replayed(row: Sequence[Any] | None, request_hash: str) -> dict[str, Any] | None:
    """The first answer to a repeated Idempotency-Key (``request_hash``, ``response`` of its
    row), or a 422 when the key came with a different report."""
    if row is None:
        return None
    if row[0] != request_hash:
        raise ValidationFailed(
            "This Idempotency-Key was already used for a different report: use a new key for "
            "a new report, or resend exactly the same body to get the first answer again.",
            [FieldError("Idempotency-Key", "reused with a different body")],
        )
    return dict(row[1])


# ------------------------------------------------------------------------------ transition
def transition(
    db: Database, principal: Principal, case_id: str, body: TransitionIn
) -> dict[str, Any]:
    """Take one action on a case (the machine decides; 409 when someone was faster)."""
    rules = case_rules()
    cal = calendar_for(db)
    params = body.params()
    action = machine.ACTIONS.get(body.action)
    if action is not None:
        allowed = set(action.needs) | set(action.optional) | {"note"}
        extra = sorted(set(params) - allowed)
        if extra:
            raise ValidationFailed(
                f"{body.action} does not take {', '.join(extra)}: remove "
                f"{'it' if len(extra) == 1 else 'them'}.",
                [FieldError(f, f"not used by {body.action}") for f in extra],
            )
    if "category" in params:
        _check_category(rules, params["category"])
    if "urgency" in params:
        _check_urgency(rules, params["urgency"])
    if "department" in params:
        _check_department(rules, params["department"])
    at = now()
    try:
        with serial_write(db) as session:
            try:
                c = _load(session, principal, case_id)
            except NotFound:
                if body.version is not None:
                    _raise_if_lost_sight(session, principal, case_id, body.version)
                raise
            if body.version is not None and body.version != c.version:
                raise Conflict(
                    f"Case {c.id} changed since you read it (your version {body.version}, now "
                    f"{c.version}, status {c.status}): reload it and decide again."
                )
            if body.action == "register" and ("category" in params or "urgency" in params):
                _reclassify(c, rules, params)
            caller = caller_for(session, principal, c)
            tr = machine.decide(state_of(c), body.action, caller, params, rules.policy)
            target = None
            if tr.action == "merge":
                target = _merge_target(session, principal, c, params["into"])
            ev = _apply(
                c,
                tr,
                actor=principal.username,
                note=_note_of(params),
                params=params,
                at=at,
                rules=rules,
                cal=cal,
            )
            if tr.action == "merge" and target is not None:
                c.merged_into = target.id
                ev.data["into"] = target.id
            ev.case_pk = c.pk
            session.add(ev)
            _publish(session, c, ev)
            if target is not None:
                _absorb(session, principal, c, target, at, rules, cal)
            session.flush()
            out = case_out(c, rules, principal, at=at, caller=caller_for(session, principal, c))
            result: dict[str, Any] = out.model_dump(mode="json")
    except StaleDataError as exc:
        raise Conflict(
            f"Someone else acted on case {case_id} at the same moment and was first: nothing "
            "was changed by your request. Reload the case and decide again."
        ) from exc
    except OperationalError as exc:
        # two merges crossing each other (A into B, B into A) lock the same two rows in
        # opposite orders; PostgreSQL aborts one of them — a lost race like any other
        if "deadlock" not in str(exc).lower():
            raise
        raise Conflict(
            f"Case {case_id} was changed by a crossing action at the same moment: nothing was "
            "changed by your request. Reload the case and decide again."
        ) from exc
    return result


def _raise_if_lost_sight(
    session: Session, principal: Principal, case_id: str, version: int
) -> None:
    """The caller saw the case at ``version`` and someone's action since then took it out of
    their sight (a handler whose department no longer holds it): that is a lost race (409),
    not an unknown case."""
    row = session.execute(
        select(Case.pk, Case.version, Case.status).where(Case.id == case_id.upper())
    ).one_or_none()
    if row is None or row[1] <= version:
        return
    held = principal.department is not None and (
        session.scalar(
            select(CaseEvent.id)
            .where(
                CaseEvent.case_pk == row[0],
                CaseEvent.seq <= version,
                CaseEvent.department == principal.department,
            )
            .limit(1)
        )
        is not None
    )
    if held:
        raise Conflict(
            f"Case {case_id} changed since you read it (your version {version}, now {row[1]}, "
            f"status {row[2]}) and is no longer with your department: nothing was changed "
            "by your request. Reload your list."
        )


def _reclassify(c: Case, rules: CaseRules, params: dict[str, Any]) -> None:
    """立案 may correct the category / urgency; the dispatch rules are asked again."""
    c.category = params.get("category", c.category)
    c.urgency = params.get("urgency", c.urgency)
    lead = dispatch_rules.assign(rules.dispatch, c.category, c.district, _area_code(c))
    c.suggested_department, c.dispatch_rule = lead.lead, lead.reason


def _merge_target(session: Session, principal: Principal, c: Case, into: str) -> Case:
    if into.upper() == c.id:
        raise ValidationFailed(
            "A case cannot be merged into itself: give the id of the surviving case in `into`.",
            [FieldError("into", "same as this case")],
        )
    try:
        target = _load(session, principal, into)
    except NotFound as exc:
        raise ValidationFailed(
            f"No case {into} that you may see to merge into: check `into`.",
            [FieldError("into", "unknown case")],
        ) from exc
    if Status(target.status) not in OPEN:
        raise Conflict(
            f"Case {target.id} is {target.status}: merge into an open case instead (or reopen "
            "this one's problem as a new report)."
        )
    return target


def _absorb(
    session: Session,
    principal: Principal,
    source: Case,
    target: Case,
    at: dt.datetime,
    rules: CaseRules,
    cal: WorkingCalendar,
) -> None:
    """The surviving case records the merge and takes over every reporter (so all of them
    are notified when it closes)."""
    note = f"case {source.id} merged into this case"
    tr = machine.decide(state_of(target), "absorb", SYSTEM, {"note": note}, rules.policy)
    ev = _apply(
        target,
        tr,
        actor=principal.username,
        note=note,
        params={},
        at=at,
        rules=rules,
        cal=cal,
        data={"merged": source.id},
    )
    ev.case_pk = target.pk
    session.add(ev)
    _publish(session, target, ev)
    have = {
        (r.user_id, r.phone_enc, r.email_enc)
        for r in session.scalars(select(CaseReporter).where(CaseReporter.case_pk == target.pk))
    }
    for r in session.scalars(select(CaseReporter).where(CaseReporter.case_pk == source.pk)):
        if (r.user_id, r.phone_enc, r.email_enc) in have:
            continue
        session.add(
            CaseReporter(
                case_pk=target.pk,
                user_id=r.user_id,
                username=r.username,
                channel=r.channel,
                name_enc=r.name_enc,
                phone_enc=r.phone_enc,
                email_enc=r.email_enc,
                notify=r.notify,
                merged_from=r.merged_from or source.id,
                created_at=at,
            )
        )


# ------------------------------------------------------------------------------ reading
def case_out(
    c: Case,
    rules: CaseRules,
    principal: Principal,
    *,
    at: dt.datetime | None = None,
    caller: Caller | None = None,
) -> Any:
    from cityops.cases.schemas import CaseOut

    cat = rules.categories.get(c.category)
    at = at or now()
    status = Status(c.status)
    if caller is None:
        caller = Caller(
            roles=principal.roles,
            in_area=principal.in_scope(_area_code(c)),
            same_department=bool(principal.department) and principal.department == c.department,
            is_reporter="citizen" in principal.roles,
        )
    return CaseOut(
        id=c.id,
        version=c.version,
        status=c.status,
        status_zh=STATUS_ZH[status],
        source=c.source,
        category=c.category,
        category_name=cat.name if cat else None,
        kind=cat.kind if cat else None,
        urgency=c.urgency,
        title=c.title,
        description=c.description,
        location={
            "type": "Point",
            "coordinates": [c.lon, c.lat],
            "address": c.address,
        },
        district=c.district,
        street=c.street,
        community=c.community,
        grid_code=c.grid_code,
        component_id=c.component_id,
        department=c.department,
        department_name=rules.dispatch.name_of(c.department),
        assisting=list(c.assisting or []),
        suggested_department=c.suggested_department,
        dispatch_rule=c.dispatch_rule,
        stage=c.stage,
        due_at=local(c.due_at),
        due_provisional=c.due_provisional,
        handling_due_at=local(c.handling_due_at),
        overdue=bool(c.due_at and status in OPEN and c.due_at < at),
        escalation_level=c.escalation_level,
        extension_request=c.extension_request,
        reported_by=c.reported_by if principal.roles - {"citizen"} else "",
        reported_at=local(c.reported_at),
        registered_at=local(c.registered_at),
        dispatched_at=local(c.dispatched_at),
        resolved_at=local(c.resolved_at),
        closed_at=local(c.closed_at),
        rework_count=c.rework_count,
        merged_into=c.merged_into,
        likely_duplicates=list(c.likely_duplicates or []),
        satisfaction=c.satisfaction,
        actions=machine.available(state_of(c), caller),
    )


def get_case(db: Database, principal: Principal, case_id: str) -> dict[str, Any]:
    """One case with its full history, masked reporters, attachments and merged cases."""
    from cityops.cases.schemas import EventOut

    rules = case_rules()
    staff = bool(principal.roles - {"citizen"})
    with db.read() as session:
        c = _load(session, principal, case_id)
        out = case_out(c, rules, principal, caller=caller_for(session, principal, c))
        history = session.scalars(
            select(CaseEvent).where(CaseEvent.case_pk == c.pk).order_by(CaseEvent.seq)
        ).all()
        out.history = [
            EventOut(
                seq=e.seq,
                action=e.action,
                from_status=e.from_status,
                to_status=e.to_status,
                # citizens see which centre acted, not the staff member's account
                actor=e.actor if staff else e.role,
                role=e.role,
                at=local(e.at),
                note=e.note,
                department=e.department,
                data=e.data or {},
            )
            for e in history
        ]
        if staff:
            cipher = cipher_for(db)
            out.reporters = [
                {
                    "channel": r.channel,
                    "username": r.username,
                    "name": mask_name(_dec(cipher, r.name_enc)),
                    "phone": mask_phone(_dec(cipher, r.phone_enc)),
                    "email": mask_email(_dec(cipher, r.email_enc)),
                    "notify": r.notify,
                    "merged_from": r.merged_from,
                }
                for r in session.scalars(
                    select(CaseReporter)
                    .where(CaseReporter.case_pk == c.pk)
                    .order_by(CaseReporter.pk)
                )
            ]
        out.attachments = [
            {
                "id": a.pk,
                "content_type": a.content_type,
                "size": a.size,
                "filename": a.filename,
                "uploaded_by": a.uploaded_by if staff else "",
                "status": a.status,
                "at": a.at.isoformat(),
                "href": f"/api/v1/cases/{c.id}/attachments/{a.pk}",
            }
            for a in session.scalars(
                select(CaseAttachment)
                .where(CaseAttachment.case_pk == c.pk)
                .order_by(CaseAttachment.pk)
            )
        ]
        out.merged_cases = list(
            session.scalars(select(Case.id).where(Case.merged_into == c.id).order_by(Case.pk))
        )
    result: dict[str, Any] = out.model_dump(mode="json")
    return result


def history_of(db: Database, case_id: str) -> list[tuple[str, str | None, str]]:
    """``(action, from, to)`` of a case's history (for replay checks)."""
    with db.read() as session:
        pk = session.scalar(select(Case.pk).where(Case.id == case_id))
        return [
            (r[0], r[1], r[2])
            for r in session.execute(
                select(CaseEvent.action, CaseEvent.from_status, CaseEvent.to_status)
                .where(CaseEvent.case_pk == pk)
                .order_by(CaseEvent.seq)
            )
        ]


@dataclass
class CaseFilter:
    status: list[str] | None = None
    category: str | None = None
    source: str | None = None
    area: str | None = None
    grid: str | None = None
    department: str | None = None
    overdue: bool | None = None
    duplicates: bool | None = None
    reported_from: dt.datetime | None = None
    reported_to: dt.datetime | None = None
    limit: int = 50
    cursor: str | None = None


def _encode_cursor(pk: int) -> str:
    return base64.urlsafe_b64encode(f"c{pk}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("c"):
            raise ValueError
        return int(raw[1:])
    except ValueError as exc:
        raise ValidationFailed(
            "cursor is not valid: pass the next_cursor of the previous page unchanged.",
            [FieldError("cursor", "malformed")],
        ) from exc


def list_cases(db: Database, principal: Principal, f: CaseFilter) -> dict[str, Any]:
    """Cases the caller may see, newest first, keyset-paginated."""
    rules = case_rules()
    at = now()
    where: list[ColumnElement[bool]] = [visible_clause(principal)]
    if f.status:
        unknown = [s for s in f.status if s not in {x.value for x in Status}]
        if unknown:
            raise ValidationFailed(
                f"Unknown status {', '.join(unknown)}: use {', '.join(s.value for s in Status)}.",
                [FieldError("status", "unknown status")],
            )
        where.append(Case.status.in_(f.status))
    if f.category:
        _check_category(rules, f.category)
        where.append(Case.category == f.category)
    if f.source:
        where.append(Case.source == f.source)
    if f.area:
        if not f.area.isdigit() or len(f.area) > 15:
            raise ValidationFailed(
                "area is a division-code prefix of up to 15 digits (district 6, street 9, "
                "community 12).",
                [FieldError("area", "digits only")],
            )
        where.append(scope_clause(f.area))
    if f.grid:
        where.append(scope_clause(f.grid) if len(f.grid) == 15 else Case.grid_code == f.grid)
    if f.department:
        where.append(Case.department == f.department)
    if f.overdue is not None:
        late = and_(Case.status.in_([s.value for s in OPEN]), Case.due_at < at)
        where.append(late if f.overdue else ~late)
    if f.duplicates is not None:
        where.append(Case.has_duplicates.is_(f.duplicates))
    if f.reported_from:
        where.append(Case.reported_at >= f.reported_from)
    if f.reported_to:
        where.append(Case.reported_at < f.reported_to)
    if f.cursor:
        where.append(Case.pk < _decode_cursor(f.cursor))
    with db.read() as session:
        rows = list(
            session.scalars(select(Case).where(*where).order_by(Case.pk.desc()).limit(f.limit + 1))
        )
    more = len(rows) > f.limit
    rows = rows[: f.limit]
    return {
        "items": [case_out(c, rules, principal, at=at).model_dump(mode="json") for c in rows],
        "next_cursor": _encode_cursor(rows[-1].pk) if more and rows else None,
        "limit": f.limit,
    }


def contacts(db: Database, principal: Principal, case_id: str) -> list[dict[str, Any]]:
    """Unmasked reporter contacts (supervision centre, for 回访); every reading is audited."""
    with serial_write(db) as session:
        c = _load(session, principal, case_id)
        cipher = cipher_for(db)
        rows = session.scalars(
            select(CaseReporter).where(CaseReporter.case_pk == c.pk).order_by(CaseReporter.pk)
        ).all()
        audit.record(session, principal.username, "case.contacts.read", "case", c.id, {})
        return [
            {
                "channel": r.channel,
                "username": r.username,
                "name": _dec(cipher, r.name_enc),
                "phone": _dec(cipher, r.phone_enc),
                "email": _dec(cipher, r.email_enc),
                "notify": r.notify,
                "merged_from": r.merged_from,
            }
            for r in rows
        ]


# ------------------------------------------------------------------------------ attachments
#: accepted photo formats, recognised by their first bytes (the declared type must agree)
PHOTO_MAGIC: dict[str, Callable[[bytes], bool]] = {
    "image/jpeg": lambda b: b[:3] == b"\xff\xd8\xff",
    "image/png": lambda b: b[:8] == b"\x89PNG\r\n\x1a\n",
    "image/webp": lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP",
}


def sniff(data: bytes) -> str | None:
    for content_type, test in PHOTO_MAGIC.items():
        if test(data):
            return content_type
    return None


def attachment_root(db: Database) -> Path:
    """Where photos are stored: ``CITYOPS_ATTACHMENTS_DIR``, else ``<database file>.files/``
    beside an SQLite database, else ``./cityops-attachments``."""
    configured = get_settings().attachments_dir
    if configured is not None:
        return configured
    if db.is_sqlite:
        path = db.url.split("///", 1)[-1]
        if path and path != ":memory:":
            return Path(path + ".files")
    return Path("cityops-attachments")


def add_attachment(
    db: Database,
    principal: Principal,
    case_id: str,
    filename: str,
    declared_type: str | None,
    data: bytes,
) -> dict[str, Any]:
    """Store a photo outside the database (content-addressed) and record it on the case."""
    settings = get_settings()
    if len(data) > settings.attachment_max_bytes:
        raise CityopsError(
            detail=f"The file is {len(data):,} bytes; photos may be at most "
            f"{settings.attachment_max_bytes:,} bytes: send a smaller or compressed photo.",
            status=413,
            title="Too large",
            type="https://cityops.org/problems/too-large",
        )
    if not data:
        raise ValidationFailed("The file is empty: attach a photo.", [FieldError("file", "empty")])
    found = sniff(data)
    declared = (declared_type or "").split(";")[0].strip().lower()
    if found is None or (declared and declared not in ("application/octet-stream", found)):
        raise CityopsError(
            detail=f"Only photos are accepted (JPEG, PNG or WebP); this file is "
            f"{'declared ' + declared + ' and ' if declared else ''}"
            f"{'looks like ' + found if found else 'not a recognised photo'}. Send a JPEG, PNG "
            "or WebP image with the matching Content-Type.",
            status=415,
            title="Unsupported media type",
            type="https://cityops.org/problems/unsupported-media-type",
        )
    sha = hashlib.sha256(data).hexdigest()
    root = attachment_root(db)
    path = root / sha[:2] / sha
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # atomic: a reader never sees half a photo
    with serial_write(db) as session:
        c = _load(session, principal, case_id)
        if Status(c.status) not in OPEN:
            raise Conflict(f"Case {c.id} is {c.status}: photos can only be added to open cases.")
        row = CaseAttachment(
            case_pk=c.pk,
            sha256=sha,
            content_type=found,
            size=len(data),
            filename=Path(filename or "photo").name[:256],
            uploaded_by=principal.username,
            status=c.status,
            at=now(),
        )
        session.add(row)
        session.flush()
        return {
            "id": row.pk,
            "content_type": found,
            "size": len(data),
            "sha256": sha,
            "href": f"/api/v1/cases/{c.id}/attachments/{row.pk}",
        }


def attachment_file(
    db: Database, principal: Principal, case_id: str, attachment_id: int
) -> tuple[Path, str, str]:
    with db.read() as session:
        c = _load(session, principal, case_id)
        row = session.scalar(
            select(CaseAttachment).where(
                CaseAttachment.pk == attachment_id, CaseAttachment.case_pk == c.pk
            )
        )
        if row is None:
            raise NotFound(f"Case {c.id} has no attachment {attachment_id}.")
    path = attachment_root(db) / row.sha256[:2] / row.sha256
    if not path.exists():
        raise NotFound(f"The file of attachment {attachment_id} is missing from the store.")
    return path, row.content_type, row.filename


# ------------------------------------------------------------------------------ metrics
def _area_aggregates(to: dt.datetime) -> list[Any]:
    def n(cond: ColumnElement[bool]) -> Any:
        return func.sum(case((cond, 1), else_=0))

    public = [s.value for s in PUBLIC_SOURCES]
    gone = ["cancelled", "merged", "declined"]
    registered = and_(Case.registered_at.is_not(None), Case.registered_at < to)
    closed = and_(Case.closed_at.is_not(None), Case.closed_at < to)
    resolved = and_(Case.resolved_at.is_not(None), Case.resolved_at < to)
    handling_due = and_(Case.handling_due_at.is_not(None), Case.handling_due_at < to)
    cols = {
        "reported": func.count(),
        "registered": n(registered),
        "declined": n(and_(Case.status == "declined", Case.ended_at < to)),
        "public_registered": n(and_(registered, Case.source.in_(public))),
        "due_to_handle": n(
            and_(
                Case.dispatched_at.is_not(None),
                Case.dispatched_at < to,
                Case.status.not_in(gone),
                or_(resolved, handling_due),
            )
        ),
        "handled": n(resolved),
        "handled_on_time": n(and_(resolved, Case.on_time.is_(True))),
        "due_to_close": n(and_(registered, Case.status.not_in(gone), or_(closed, handling_due))),
        "closed": n(closed),
        "closed_on_time": n(and_(closed, Case.on_time.is_(True))),
        "reworked": n(and_(registered, Case.rework_count > 0)),
        "overdue_open": n(and_(Case.status.in_([s.value for s in OPEN]), Case.due_at < to)),
        "handling_minutes_sum": func.sum(case((resolved, Case.handling_minutes), else_=0)),
        "handling_minutes_n": n(and_(resolved, Case.handling_minutes.is_not(None))),
        "feedback_valid": n(Case.satisfaction.is_not(None)),
        "feedback_contacted": n(Case.feedback_contacted.is_(True)),
        "feedback_solved": n(Case.feedback_solved.is_(True)),
        "feedback_satisfied": n(Case.satisfaction == "satisfied"),
        "feedback_basic": n(Case.satisfaction == "basically_satisfied"),
    }
    assert tuple(cols) == AREA_COUNTS
    return [v.label(k) for k, v in cols.items()]


def _assigned_tasks(
    session: Session,
    counts: dict[str, dict[str, float]],
    period: ColumnElement[bool],
    scope: ColumnElement[bool],
    end: dt.datetime,
) -> None:
    """The grid worker's tasks (应核实, 应核查) and misses (漏报) in the grids assigned to them
    (``grid_assignments``), for the cohort's cases: every public report in their grids is one
    核实 task, every resolution one 核查 task; a public report that was registered is a problem
    they did not report themselves (漏报). Their on-time 核实/核查 of those tasks are the
    numerators of the standard's rates (REFERENCE Part A §5, 监督员)."""
    from cityops.base.models import GridAssignment
    from cityops.core.models import User

    public = [s.value for s in PUBLIC_SOURCES]
    is_public = Case.source.in_(public)
    registered = and_(Case.registered_at.is_not(None), Case.registered_at < end)

    def n(cond: ColumnElement[bool]) -> Any:
        return func.sum(case((cond, 1), else_=0))

    mine = (
        select(User.username)
        .select_from(Case)
        .join(GridAssignment, GridAssignment.grid_code == Case.grid_code)
        .join(User, User.id == GridAssignment.user_id)
        .where(period, scope)
    )
    for who, due_verify, missed, registered_n in session.execute(
        mine.add_columns(n(is_public), n(and_(is_public, registered)), n(registered)).group_by(
            User.username
        )
    ):
        counts.setdefault(who, {}).update(
            due_verifications=due_verify or 0, missed=missed or 0, grid_registered=registered_n or 0
        )
    on_time = and_(CaseEvent.actor == User.username, CaseEvent.at <= CaseEvent.stage_due_at)
    for who, action, total, done_on_time in session.execute(
        mine.join(CaseEvent, CaseEvent.case_pk == Case.pk)
        .add_columns(CaseEvent.action, func.count(), n(on_time))
        .where(CaseEvent.action.in_(("resolve", "verify", "check")), CaseEvent.at < end)
        .group_by(User.username, CaseEvent.action)
    ):
        row = counts.setdefault(who, {})
        if action == "resolve":
            row["due_checks"] = total
        elif action == "verify":
            row["verified_on_time"] = done_on_time or 0
        else:
            row["checked_on_time"] = done_on_time or 0


def case_metrics(
    db: Database,
    principal: Principal,
    group_by: str,
    start: dt.datetime,
    end: dt.datetime,
) -> dict[str, Any]:
    """CJ/T 292 figures per department/street/grid/grid worker for cases reported in
    ``[start, end)``, counting what happened to them before ``end``."""
    if group_by not in GROUPS:
        raise ValidationFailed(
            f"group_by must be one of {', '.join(GROUPS)}.",
            [FieldError("group_by", f"{group_by!r} is not a grouping")],
        )
    if not start < end:
        raise ValidationFailed("from must be before to.", [FieldError("from", "not before to")])
    rules = case_rules()
    scope = visible_clause(principal)
    period = and_(Case.reported_at >= start, Case.reported_at < end)
    rows: list[dict[str, Any]] = []
    with db.read() as session:
        if group_by == "worker":
            counts: dict[str, dict[str, float]] = {}
            for who, reports, registered in session.execute(
                select(
                    Case.reported_by,
                    func.count(),
                    func.sum(case((Case.registered_at < end, 1), else_=0)),
                )
                .where(period, scope, Case.source == "grid_patrol")
                .group_by(Case.reported_by)
            ):
                counts.setdefault(who, {}).update(
                    reports=reports, reports_registered=registered or 0
                )
            for who, act, done in session.execute(
                select(CaseEvent.actor, CaseEvent.action, func.count())
                .join(Case, Case.pk == CaseEvent.case_pk)
                .where(
                    text("action IN ('verify', 'check')"),  # the partial index's own words
                    CaseEvent.at >= start,
                    CaseEvent.at < end,
                    scope,
                )
                .group_by(CaseEvent.actor, CaseEvent.action)
            ):
                key = "verifications" if act == "verify" else "checks"
                counts.setdefault(who, {})[key] = done
            _assigned_tasks(session, counts, period, scope, end)
            for who in sorted(counts):
                rows.append({"group": who, "name": who, **worker_figures(counts[who])})
        else:
            column = {"department": Case.department, "street": Case.street, "grid": Case.grid_code}[
                group_by
            ]
            result = session.execute(
                select(column.label("grp"), *_area_aggregates(end))
                .where(period, scope)
                .group_by(column)
                .order_by(column)
            ).mappings()
            for r in result:
                group = r["grp"] or ""
                name = rules.dispatch.name_of(group) if group_by == "department" else group
                rows.append(
                    {
                        "group": group or "(unassigned)",
                        "name": name or "(unassigned)",
                        **area_figures(dict(r), rules.evaluation.basically_satisfied_weight),
                    }
                )
    scored = rules.evaluation.scores.get(group_by)
    columns = list(columns_for(group_by))
    if scored is not None:
        columns += SCORE_COLUMNS
        for row in rows:
            row["score"] = score(row, scored)
            row["grade"] = grade(row["score"], rules.evaluation.grades)
    return {
        "group_by": group_by,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "columns": [
            {"key": "group", "zh": "分组", "en": group_by},
            {"key": "name", "zh": "名称", "en": "name"},
            *[{"key": c.key, "zh": c.zh, "en": c.en} for c in columns],
        ],
        "rows": rows,
    }


def metrics_xlsx(report: dict[str, Any]) -> bytes:
    """The metrics table as an xlsx workbook (Chinese and English headers)."""
    import io

    import xlsxwriter

    buf = io.BytesIO()
    book = xlsxwriter.Workbook(buf, {"in_memory": True})
    sheet = book.add_worksheet(f"by {report['group_by']}")
    bold = book.add_format({"bold": True, "text_wrap": True})
    cols = report["columns"]
    sheet.write(0, 0, f"cityops 综合评价 {report['from']} — {report['to']}", bold)
    for j, c in enumerate(cols):
        sheet.write(1, j, c["zh"], bold)
        sheet.write(2, j, c["en"], bold)
    for i, row in enumerate(report["rows"], start=3):
        for j, c in enumerate(cols):
            value = row.get(c["key"])
            if value is not None:
                sheet.write(i, j, value)
    sheet.freeze_panes(3, 2)
    book.close()
    return buf.getvalue()


# ------------------------------------------------------------------------------ calendar
def set_override(
    db: Database, principal: Principal, day: dt.date, working: bool, note: str
) -> dict[str, Any]:
    with serial_write(db) as session:
        row = session.get(CalendarOverride, day) or CalendarOverride(day=day)
        row.working, row.note = working, note
        row.updated_by, row.updated_at = principal.username, utcnow()
        session.add(row)
        audit.record(
            session,
            principal.username,
            "calendar.override",
            "calendar",
            day.isoformat(),
            {"working": working, "note": note},
        )
    _forget_calendar(db)
    return {"day": day.isoformat(), "working": working, "note": note}


def delete_override(db: Database, principal: Principal, day: dt.date) -> None:
    with serial_write(db) as session:
        row = session.get(CalendarOverride, day)
        if row is None:
            raise NotFound(f"No override for {day}.")
        session.delete(row)
        audit.record(
            session, principal.username, "calendar.override.delete", "calendar", day.isoformat()
        )
    _forget_calendar(db)


def confirm_year(db: Database, principal: Principal, year: int, note: str) -> dict[str, Any]:
    with serial_write(db) as session:
        row = session.get(CalendarYear, year) or CalendarYear(year=year)
        row.note, row.confirmed_by, row.confirmed_at = note, principal.username, utcnow()
        session.add(row)
        audit.record(
            session,
            principal.username,
            "calendar.confirm_year",
            "calendar",
            str(year),
            {"note": note},
        )
    _forget_calendar(db)
    return {"year": year, "note": note}


def list_overrides(db: Database, year: int | None = None) -> list[dict[str, Any]]:
    with db.read() as session:
        query = select(CalendarOverride).order_by(CalendarOverride.day)
        if year is not None:
            query = query.where(
                CalendarOverride.day >= dt.date(year, 1, 1),
                CalendarOverride.day <= dt.date(year, 12, 31),
            )
        return [
            {
                "day": r.day.isoformat(),
                "working": r.working,
                "note": r.note,
                "updated_by": r.updated_by,
            }
            for r in session.scalars(query)
        ]


def categories_out(rules: CaseRules | None = None) -> list[dict[str, Any]]:
    """Categories with their default department (the first area-free rule, else 兜底) and
    deadlines per urgency and stage."""
    rules = rules or case_rules()
    out = []
    for c in rules.categories.values():
        lead = next(
            (
                r.departments[0]
                for r in rules.dispatch.rules
                if c.id in r.categories and not r.areas
            ),
            rules.dispatch.fallback,
        )
        out.append(
            {
                "id": c.id,
                "code": c.code,
                "name": c.name,
                "kind": c.kind,
                "kind_zh": c.kind_zh,
                "major": c.major,
                "standard_ref": c.standard_ref,
                "code_47678": c.code_47678,
                "default_department": lead,
                "default_department_name": rules.dispatch.name_of(lead)
                if rules.dispatch.is_known(lead)
                else "district fallback unit (兜底)",
                "deadlines": {
                    u: {s.value: str(rules.deadlines.limit(c.id, u, s)) for s in Stage}
                    for u in rules.deadlines.urgencies
                },
            }
        )
    return out


class Feed:
    """New history events visible to one caller, for the live feed (SSE).

    Event ids come from a sequence; on PostgreSQL a transaction may commit after one that
    took a higher id, so the feed re-checks ids above its *floor* for :data:`LOOKBACK` and
    remembers which it has sent (no event is missed, none is sent twice). On SQLite writers
    commit in id order, so the floor is simply the highest id seen.
    """

    LOOKBACK = dt.timedelta(seconds=5)

    def __init__(self, db: Database, principal: Principal, after: int | None = None) -> None:
        self.db = db
        self.principal = principal
        if after is None:
            with db.read() as session:
                after = int(session.scalar(select(func.coalesce(func.max(CaseEvent.id), 0))) or 0)
        self.floor = self.high = after
        self.seen: dict[int, dt.datetime] = {}

    def poll(self, limit: int = 1000) -> list[dict[str, Any]]:
        cutoff = utcnow() - self.LOOKBACK
        with self.db.read() as session:
            ids = list(
                session.execute(
                    select(CaseEvent.id, CaseEvent.at)
                    .where(CaseEvent.id > self.high)
                    .order_by(CaseEvent.id)
                    .limit(limit)
                )
            )
            if self.db.is_postgres and self.high > self.floor:
                ids += list(
                    session.execute(
                        select(CaseEvent.id, CaseEvent.at).where(
                            CaseEvent.id > self.floor, CaseEvent.id < self.high
                        )
                    )
                )
            fresh = [(i, at) for i, at in ids if i not in self.seen]
            for i, at in fresh:
                self.seen[i] = at
                self.high = max(self.high, i)
            rows: list[Any] = []
            if fresh:
                rows = session.execute(
                    select(
                        CaseEvent.id,
                        CaseEvent.seq,
                        CaseEvent.action,
                        CaseEvent.from_status,
                        CaseEvent.to_status,
                        CaseEvent.at,
                        Case.id,
                        Case.status,
                        Case.department,
                        Case.grid_code,
                        Case.category,
                        Case.title,
                        Case.due_at,
                    )
                    .join(Case, Case.pk == CaseEvent.case_pk)
                    .where(CaseEvent.id.in_([i for i, _ in fresh]), visible_clause(self.principal))
                    .order_by(CaseEvent.id)
                ).all()  # type: ignore[assignment]
        if self.db.is_sqlite:
            self.floor = self.high
        else:
            old = [i for i, at in self.seen.items() if at < cutoff]
            if old:
                self.floor = max(self.floor, max(old))
        self.seen = {i: at for i, at in self.seen.items() if i > self.floor}
        return [
            {
                "event_id": r[0],
                "seq": r[1],
                "action": r[2],
                "from_status": r[3],
                "to_status": r[4],
                "at": r[5].astimezone(SHANGHAI).isoformat(),
                "case_id": r[6],
                "status": r[7],
                "department": r[8],
                "grid_code": r[9],
                "category": r[10],
                "title": r[11],
                "due_at": r[12].astimezone(SHANGHAI).isoformat() if r[12] else None,
            }
            for r in rows
        ]
