"""The sensor registry (监测点台账): devices and sensors, their rules and maintenance state.

A sensor is one measured quantity at one place, on a monitored object of one of the lifeline
domains (REFERENCE Part C §1.2). Its alarm rule is its threshold profile plus its own overrides
(:func:`cityops.lifeline.rules.sensor_rule`). :class:`SensorCache` gives the ingest pipeline a
current view of the registry without a query per reading: it reloads what changed since its last
look (``updated_at``), so maintenance switched on in the UI reaches the stream within a batch.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import shapely
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cityops.core import audit
from cityops.core.db import Database, utcnow
from cityops.core.errors import FieldError, NotFound, ValidationFailed
from cityops.lifeline import rules
from cityops.lifeline.alarms import SensorRule
from cityops.lifeline.ingest.payload import Reading
from cityops.lifeline.models import Device, Sensor
from cityops.lifeline.schemas import SensorIn, SensorPatch

T = TypeVar("T")

#: Sensors changed within this many seconds before the cache's last look are read again, so a
#: writer whose clock lags a little behind ours is not missed.
_CLOCK_SLACK_S = 5.0
#: The whole registry is read again this often (seconds), whatever changed.
FULL_RELOAD_S = 300.0


@dataclass(frozen=True)
class SensorInfo:
    """What the stream needs to know about one sensor."""

    id: str
    domain: str
    kind: str
    object_kind: str
    network_id: str | None
    device_id: str | None
    channel: str | None
    unit: str
    interval_s: int
    lon: float
    lat: float
    owner_unit: str | None
    rule: SensorRule
    maintenance: bool
    maintenance_until: float | None
    active: bool
    created_at: float

    def suppressed(self, ts: float) -> bool:
        """In maintenance at ``ts`` (epoch seconds)."""
        if not self.maintenance:
            return False
        return self.maintenance_until is None or ts < self.maintenance_until

    @property
    def network(self) -> str:
        """The network key for incident merging: its network, else its domain."""
        return self.network_id or f"domain:{self.domain}"


def rule_of(sensor: Sensor) -> SensorRule:
    return rules.sensor_rule(
        sensor.domain, sensor.kind, sensor.object_kind, sensor.thresholds or None, sensor.profile
    )


def info_of(sensor: Sensor) -> SensorInfo:
    return SensorInfo(
        id=sensor.id,
        domain=sensor.domain,
        kind=sensor.kind,
        object_kind=sensor.object_kind,
        network_id=sensor.network_id,
        device_id=sensor.device_id,
        channel=sensor.channel,
        unit=sensor.unit,
        interval_s=sensor.interval_s,
        lon=sensor.lon,
        lat=sensor.lat,
        owner_unit=sensor.owner_unit,
        rule=rule_of(sensor),
        maintenance=sensor.maintenance,
        maintenance_until=sensor.maintenance_until.timestamp()
        if sensor.maintenance_until
        else None,
        active=sensor.active,
        created_at=sensor.created_at.timestamp(),
    )


class SensorCache:
    """The registry as the stream sees it; :meth:`refresh` once per batch."""

    def __init__(self) -> None:
        self._by_id: dict[str, SensorInfo] = {}
        self._by_channel: dict[tuple[str, str], str] = {}
        self._seen_until: dt.datetime | None = None
        self._signature: tuple[Any, Any] | None = None
        self._loaded_at = 0.0

    def refresh(self, session: Session, *, now: float | None = None) -> int:
        """Load the sensors changed since the last look (all of them the first time, and again
        every :data:`FULL_RELOAD_S` as a safety net). Returns how many were (re)loaded."""
        import time

        clock = time.monotonic() if now is None else now
        newest, count = session.execute(
            select(func.max(Sensor.updated_at), func.count()).select_from(Sensor)
        ).one()
        full = self._seen_until is None or clock - self._loaded_at >= FULL_RELOAD_S
        if not full and (newest, count) == self._signature:
            return 0
        q = select(Sensor)
        if not full and self._seen_until is not None:
            q = q.where(
                Sensor.updated_at >= self._seen_until - dt.timedelta(seconds=_CLOCK_SLACK_S)
            )
        n = 0
        for s in session.scalars(q):
            self.put(info_of(s))
            n += 1
        self._signature = (newest, count)
        if newest is not None:
            self._seen_until = newest
        if full:
            self._loaded_at = clock
        return n

    def put(self, info: SensorInfo) -> None:
        self._by_id[info.id] = info
        if info.device_id and info.channel:
            self._by_channel[(info.device_id, info.channel)] = info.id

    def get(self, sensor_id: str) -> SensorInfo | None:
        return self._by_id.get(sensor_id)

    def resolve(self, reading: Reading) -> SensorInfo | None:
        """The sensor of a reading: its id, else a channel of the device it came from."""
        found = self._by_id.get(reading.ref)
        if found is None and reading.device is not None:
            sid = self._by_channel.get((reading.device, reading.ref))
            found = self._by_id.get(sid) if sid else None
        return found

    def __len__(self) -> int:
        return len(self._by_id)

    def all(self) -> list[SensorInfo]:
        return list(self._by_id.values())


# ------------------------------------------------------------------------------ writes


def _check(data: SensorIn | Sensor) -> tuple[str, str]:
    """Validate domain, object kind, profile and overrides; returns (object_kind, unit)."""
    dom = rules.domain_rules()
    errors: list[FieldError] = []
    if dom.domain(data.domain) is None:
        errors.append(
            FieldError(
                "domain",
                f"unknown domain {data.domain!r}: use one of "
                + ", ".join(d.name for d in dom.domains),
            )
        )
        raise ValidationFailed("Unknown lifeline domain.", errors)
    try:
        object_kind = dom.object_kind(data.domain, data.kind, data.object_kind)
    except ValueError as exc:
        raise ValidationFailed(str(exc), [FieldError("object_kind", str(exc))]) from exc
    thr = rules.threshold_rules()
    if data.profile is not None and thr.profile(data.profile) is None:
        msg = f"unknown threshold profile {data.profile!r}: use one of " + ", ".join(
            p.name for p in thr.profiles
        )
        raise ValidationFailed(msg, [FieldError("profile", msg)])
    try:
        rules.validate_overrides(data.thresholds)
        rules.sensor_rule(
            data.domain, data.kind, object_kind, data.thresholds or None, data.profile
        )
    except ValueError as exc:
        raise ValidationFailed(
            f"Invalid threshold overrides: {exc}", [FieldError("thresholds", str(exc))]
        ) from exc
    profile = thr.profile(data.profile) if data.profile else None
    profile = profile or thr.profile_for(data.domain, data.kind, object_kind)
    unit = data.unit or profile.unit or ""
    return object_kind, unit


def _ensure_device(session: Session, device_id: str | None, owner_unit: str | None) -> None:
    if device_id and session.get(Device, device_id) is None:
        session.add(Device(id=device_id, owner_unit=owner_unit, props={}))
        session.flush()


def register(session: Session, data: SensorIn, actor: str) -> tuple[Sensor, bool]:
    """Create or replace one sensor; returns (sensor, created)."""
    created = session.get(Sensor, data.id) is None
    register_one_fast(session, data)
    session.flush()
    audit.record(
        session,
        actor,
        "lifeline.sensor.create" if created else "lifeline.sensor.replace",
        "lifeline_sensor",
        data.id,
        {"domain": data.domain, "kind": data.kind},
    )
    return get(session, data.id), created


def _default_owner(domain: str) -> str | None:
    d = rules.domain_rules().domain(domain)
    return d.owner_unit if d else None


def fetch(session: Session, model: type[T], key: Any, *, lock: bool, missing: str) -> T:
    """The row of ``model`` with primary key ``key`` (``FOR UPDATE`` with ``lock``), else
    404 with ``missing`` as the message."""
    q = select(model).where(model.id == key)  # type: ignore[attr-defined]
    if lock:
        q = q.with_for_update()
    row = session.scalar(q)
    if row is None:
        raise NotFound(missing)
    return row


def get(session: Session, sensor_id: str, *, lock: bool = False) -> Sensor:
    return fetch(
        session,
        Sensor,
        sensor_id,
        lock=lock,
        missing=f"No sensor {sensor_id!r}: GET /api/v1/lifeline/sensors lists them.",
    )


def update(session: Session, sensor_id: str, patch: SensorPatch, actor: str) -> Sensor:
    sensor = get(session, sensor_id, lock=True)
    changes = patch.model_dump(exclude_unset=True)
    for key, value in changes.items():
        setattr(sensor, key, value)
    if "thresholds" in changes:
        sensor.thresholds = changes["thresholds"] or {}
    _check(sensor)
    sensor.thresholds = rules.validate_overrides(sensor.thresholds)
    if "lon" in changes or "lat" in changes:
        sensor.geom = shapely.Point(sensor.lon, sensor.lat)
    sensor.updated_at = utcnow()
    audit.record(session, actor, "lifeline.sensor.update", "lifeline_sensor", sensor_id, changes)
    return sensor


def set_maintenance(
    session: Session,
    sensor_id: str,
    on: bool,
    until: dt.datetime | None,
    reason: str,
    actor: str,
) -> Sensor:
    """维护: while on, no alarm is raised on the sensor (clearing still happens)."""
    sensor = get(session, sensor_id, lock=True)
    sensor.maintenance = on
    sensor.maintenance_until = until if on else None
    sensor.maintenance_reason = reason if on else ""
    sensor.updated_at = utcnow()
    audit.record(
        session,
        actor,
        "lifeline.sensor.maintenance",
        "lifeline_sensor",
        sensor_id,
        {"on": on, "until": until, "reason": reason},
    )
    return sensor


# ------------------------------------------------------------------------------- bulk


def _clean(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def register_rows(
    db: Database, rows: Iterable[dict[str, Any]], actor: str, *, chunk: int = 2000
) -> int:
    """Register many sensors (dicts with the fields of :class:`SensorIn`) in one transaction.

    Used to load a city's sensor list or the synthetic city's; a bad row fails the whole load
    with the row named, and nothing is written.
    """
    inputs: list[SensorIn] = []
    for i, row in enumerate(rows):
        try:
            inputs.append(SensorIn.model_validate({k: _clean(v) for k, v in row.items()}))
        except ValueError as exc:
            raise ValidationFailed(f"sensor row {i + 1}: {exc}") from exc
    with db.write() as session:
        for i, data in enumerate(inputs):
            try:
                register_one_fast(session, data)
            except ValidationFailed as exc:
                raise ValidationFailed(f"sensor row {i + 1} ({data.id}): {exc.detail}") from exc
            if i % chunk == chunk - 1:
                session.flush()
        audit.record(
            session, actor, "lifeline.sensor.load", "lifeline_sensor", "", {"n": len(inputs)}
        )
    return len(inputs)


def register_one_fast(session: Session, data: SensorIn) -> None:
    """:func:`register` without the per-sensor audit entry (bulk loads audit once)."""
    object_kind, unit = _check(data)
    _ensure_device(session, data.device_id, data.owner_unit or _default_owner(data.domain))
    sensor = session.get(Sensor, data.id) or Sensor(id=data.id, created_at=utcnow())
    sensor.device_id = data.device_id
    sensor.channel = data.channel
    sensor.name = data.name
    sensor.domain = data.domain
    sensor.kind = data.kind
    sensor.object_kind = object_kind
    sensor.object_id = data.object_id
    sensor.network_id = data.network_id
    sensor.feature_id = data.feature_id
    sensor.unit = unit
    sensor.interval_s = data.interval_s
    sensor.lon, sensor.lat = data.lon, data.lat
    sensor.geom = shapely.Point(data.lon, data.lat)
    sensor.owner_unit = data.owner_unit or _default_owner(data.domain)
    sensor.profile = data.profile
    sensor.thresholds = rules.validate_overrides(data.thresholds)
    sensor.active = data.active
    if sensor.maintenance is None:
        sensor.maintenance = False
        sensor.maintenance_reason = ""
    sensor.updated_at = utcnow()
    session.add(sensor)


def register_from_layer(
    db: Database,
    layer: str = "sensors",
    networks_layer: str | None = "lifeline_networks",
    actor: str = "system",
    *,
    inside_areas: bool = False,
) -> int:
    """Register the sensors of a digital-base layer (e.g. the synthetic city's ``sensors``):
    each feature's ``sensor_id`` (else its key) becomes the sensor id and its feature id is kept
    (``feature_id``); ``object_id`` is looked up in ``networks_layer`` for the object kind.

    ``inside_areas``: only the features inside a coded area of the city (``areas``). The case
    loop places every case in an area, so an incident outside all of them cannot become a case;
    the demo registers only what its district covers (its generated mains may run past it)."""
    from cityops.base import service as base_service

    with db.read() as session:
        frame = base_service.layer_frame(session, layer)
        kinds: dict[str, str] = {}
        if networks_layer:
            try:
                nets = base_service.layer_frame(session, networks_layer)
            except Exception:
                nets = None
            if nets is not None and "object_id" in nets and "kind" in nets:
                kinds = dict(zip(nets["object_id"], nets["kind"], strict=False))
    inside = None
    if inside_areas and len(frame):
        from cityops.base import geo_service

        coded = geo_service.geocoder_for(db).locate(frame.geometry.x, frame.geometry.y)
        inside = (coded["district"].astype(str) != "").to_numpy()
    rows = []
    for i, (rec, geom) in enumerate(zip(frame.to_dict("records"), frame.geometry, strict=True)):
        if inside is not None and not inside[i]:
            continue
        sid = rec.get("sensor_id") or rec.get("key") or f"{layer}-{rec['id']}"
        obj = _clean(rec.get("object_id"))
        rows.append(
            {
                "id": str(sid),
                "name": _clean(rec.get("name")) or "",
                "domain": rec.get("domain"),
                "kind": rec.get("kind"),
                "object_kind": kinds.get(obj) if obj else None,
                "object_id": obj,
                "network_id": _clean(rec.get("network_id")),
                "feature_id": int(rec["id"]),
                "unit": _clean(rec.get("unit")),
                "interval_s": int(rec.get("interval_s") or 300),
                "lon": float(geom.x),
                "lat": float(geom.y),
                "owner_unit": _clean(rec.get("owner_unit")),
            }
        )
    return register_rows(db, rows, actor)


def list_sensors(
    session: Session,
    *,
    domain: str | None = None,
    kind: str | None = None,
    network_id: str | None = None,
    bbox: tuple[float, float, float, float] | None = None,
    maintenance: bool | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[Sequence[Sensor], int]:
    where = []
    if domain:
        where.append(Sensor.domain == domain)
    if kind:
        where.append(Sensor.kind == kind)
    if network_id:
        where.append(Sensor.network_id == network_id)
    if maintenance is not None:
        where.append(Sensor.maintenance == maintenance)
    if bbox:
        minx, miny, maxx, maxy = bbox
        where += [Sensor.lon >= minx, Sensor.lon <= maxx, Sensor.lat >= miny, Sensor.lat <= maxy]
    total = session.scalar(select(func.count()).select_from(Sensor).where(*where)) or 0
    rows = session.scalars(
        select(Sensor).where(*where).order_by(Sensor.id).limit(limit).offset(offset)
    ).all()
    return rows, int(total)
