"""A lifeline simulator: realistic readings for every registered sensor, with incidents injected.

Normal behaviour follows the quantities of REFERENCE Part C §1.2 with daily cycles (Asia/Shanghai
demand peaks in the morning and evening, a temperature cycle for bridges) and sensor noise.
Incidents, each on sensors picked at random (seeded) and repeated every cycle:

* ``gas_leak`` — methane rises in one adjacent underground space (相邻地下空间) to the red level,
  neighbouring manholes on the same gas network rise less the farther they are;
* ``main_burst`` — a water main's pressure drops fast (爆管), nearby pressure sensors on the
  same network follow, DMA inflow jumps;
* ``waterlogging`` — heavy rain at pump stations, water rises in underpasses (下立交积水) and
  storm manholes;
* ``bridge_drift`` — the strain gauges of one bridge drift slowly upward (结构异常).

Readings carry the wall-clock time: a simulator must never write the future. ``speed`` makes
sensors report ``speed`` times more often than their interval and makes each incident's ramp
``speed`` times shorter, so that the demo's map comes alive in minutes; the plateau of every
incident lasts long enough for the alarm rules' minimum durations.

Two outlets: in-process (the demo: :func:`start_in_process`, straight into the ingest pipeline)
or MQTT (``cityops lifeline simulate --mqtt-url``: one JSON message per reading on
``cityops/{city}/lifeline/{sensor_id}``).

Simulated data must never reach a real city's database: :func:`start_in_process`, what a server
runs, refuses any database that ``cityops demo`` did not create (:class:`NotADemoDatabase`; the
demo marks its database in ``app_state``). The ``cityops lifeline simulate`` command is an
operator's explicit choice of target and is not limited this way.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cityops.core.db import Database
from cityops.core.errors import Conflict
from cityops.lifeline.ingest.payload import Reading

log = logging.getLogger("cityops.lifeline.simulate")

INCIDENTS: tuple[str, ...] = ("gas_leak", "main_burst", "waterlogging", "bridge_drift")
_SHANGHAI = 8 * 3600.0
_DAY = 86400.0


@dataclass(frozen=True)
class SimSensor:
    id: str
    domain: str
    kind: str
    object_kind: str
    network: str
    x: float
    y: float
    interval_s: float
    lon: float
    lat: float


@dataclass
class Episode:
    """One injected incident: which sensors, how much each is affected, when."""

    kind: str
    start: float
    ramp_s: float
    hold_s: float
    recover_s: float
    #: sensor id → weight (1 at the epicentre, less around it)
    weights: dict[str, float] = field(default_factory=dict)

    @property
    def end(self) -> float:
        return self.start + self.ramp_s + self.hold_s + self.recover_s

    def envelope(self, t: float) -> float:
        """0 before, rising to 1, holding, falling back to 0."""
        u = t - self.start
        if u <= 0 or u >= self.ramp_s + self.hold_s + self.recover_s:
            return 0.0
        if u < self.ramp_s:
            return u / self.ramp_s
        if u < self.ramp_s + self.hold_s:
            return 1.0
        return 1.0 - (u - self.ramp_s - self.hold_s) / self.recover_s


def _daily(t: float) -> float:
    """Hour of day in Asia/Shanghai as a fraction of the day."""
    return ((t + _SHANGHAI) % _DAY) / _DAY


def _demand(t: float) -> float:
    """Water/gas demand 0..1: low at night, peaks around 07:30 and 19:30 (Asia/Shanghai)."""
    h = _daily(t) * 24.0
    return (
        0.25
        + 0.45 * math.exp(-(((h - 7.5) / 1.5) ** 2))
        + 0.55 * math.exp(-(((h - 19.5) / 2.0) ** 2))
    )


def _temperature(t: float) -> float:
    """Air temperature cycle, °C: coolest before dawn, warmest mid-afternoon."""
    return 17.0 + 6.0 * math.sin(2 * math.pi * (_daily(t) - 0.375))


def _traffic(t: float) -> float:
    h = _daily(t) * 24.0
    return 0.2 + 0.8 * (math.exp(-(((h - 8.0) / 1.5) ** 2)) + math.exp(-(((h - 18.0) / 2.0) ** 2)))


class CitySimulator:
    """Readings for a set of sensors at any time, with incidents scheduled from ``start``."""

    def __init__(
        self,
        sensors: Sequence[SimSensor],
        *,
        start: float,
        seed: int = 1,
        speed: float = 1.0,
        incidents: Iterable[str] = INCIDENTS,
        first_incident_s: float = 60.0,
        cycle_s: float = 3600.0,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        unknown = set(incidents) - set(INCIDENTS)
        if unknown:
            raise ValueError(
                f"unknown incident kinds {sorted(unknown)}: use {', '.join(INCIDENTS)}"
            )
        self.sensors = list(sensors)
        self.by_id = {s.id: s for s in self.sensors}
        self.start = start
        self.speed = speed
        self.kinds = [k for k in INCIDENTS if k in set(incidents)]
        #: simulated seconds, like the incidents' ramps: wall-clock seconds / ``speed``
        self.first_incident_s = first_incident_s / speed
        self.cycle_s = cycle_s
        self.rng = random.Random(seed)
        self.seed = seed
        #: sensor id → (knot index, noise at that knot, noise at the next one)
        self._knots: dict[str, tuple[int, float, float]] = {}
        self._bias = {s.id: self.rng.uniform(-1.0, 1.0) for s in self.sensors}
        self.episodes: list[Episode] = []
        self._planned_until = start
        self._next_due: dict[str, float] = {}
        for s in self.sensors:
            # spread first reports over one interval, so the stream is smooth
            self._next_due[s.id] = start + self.rng.random() * self._period(s)

    # ---------------------------------------------------------------------------- schedule

    def _period(self, s: SimSensor) -> float:
        return max(s.interval_s / self.speed, 0.5)

    def _plan(self, until: float) -> None:
        """Schedule incidents cycle by cycle up to ``until``."""
        while self._planned_until <= until:
            cycle_start = self._planned_until
            for i, kind in enumerate(self.kinds):
                # the first a (simulated) minute in, the others two minutes apart
                offset = self.first_incident_s + i * 120.0 / self.speed
                ep = self._episode(kind, cycle_start + offset)
                if ep is not None:
                    self.episodes.append(ep)
            self._planned_until = cycle_start + self.cycle_s
        horizon = until - 4 * self.cycle_s
        self.episodes = [e for e in self.episodes if e.end >= horizon]

    def _near(self, centre: SimSensor, pool: list[SimSensor], radius: float) -> dict[str, float]:
        weights = {centre.id: 1.0}
        for s in pool:
            if s.id == centre.id or s.network != centre.network:
                continue
            d = math.hypot(s.x - centre.x, s.y - centre.y)
            if d <= radius:
                weights[s.id] = max(0.15, 1.0 - d / (radius * 1.2))
        return weights

    def _episode(self, kind: str, at: float) -> Episode | None:
        sp = self.speed
        if kind == "gas_leak":
            pool = [s for s in self.sensors if s.kind == "gas_concentration"]
            if not pool:
                return None
            centre = self.rng.choice(pool)
            w = self._near(centre, pool, 150.0)
            return Episode(kind, at, 600.0 / sp, 1200.0, 600.0 / sp, w)
        if kind == "main_burst":
            pool = [
                s for s in self.sensors if s.kind == "pipe_pressure" and s.domain == "water_supply"
            ]
            if not pool:
                return None
            centre = self.rng.choice(pool)
            w = self._near(centre, pool, 600.0)
            flows = [s for s in self.sensors if s.kind == "flow" and s.network == centre.network]
            for s in flows:
                w[s.id] = 0.8
            return Episode(kind, at, 120.0 / sp, 1200.0, 900.0 / sp, w)
        if kind == "waterlogging":
            under = [s for s in self.sensors if s.object_kind == "underpass"]
            pool = under or [
                s for s in self.sensors if s.kind == "water_level" and s.domain == "drainage"
            ]
            if not pool:
                return None
            centre = self.rng.choice(pool)
            w = {s.id: 1.0 for s in pool if s.network == centre.network} or {centre.id: 1.0}
            for s in self.sensors:
                if s.domain == "drainage" and s.kind in ("rainfall", "water_level", "flow"):
                    w.setdefault(s.id, 0.6)
            return Episode(kind, at, 1800.0 / sp, 1800.0, 1800.0 / sp, w)
        if kind == "bridge_drift":
            pool = [s for s in self.sensors if s.domain == "bridge" and s.kind == "strain"]
            if not pool:
                return None
            centre = self.rng.choice(pool)
            w = {s.id: 1.0 for s in pool if s.network == centre.network}
            w.update(
                {
                    s.id: 0.7
                    for s in self.sensors
                    if s.domain == "bridge"
                    and s.kind == "deflection"
                    and s.network == centre.network
                }
            )
            return Episode(kind, at, 2400.0 / sp, 1800.0, 1200.0 / sp, w)
        return None  # pragma: no cover - kinds are checked in __init__

    # ------------------------------------------------------------------------------ values

    def _effect(self, s: SimSensor, t: float) -> dict[str, float]:
        out: dict[str, float] = {}
        for ep in self.episodes:
            w = ep.weights.get(s.id)
            if w is None:
                continue
            e = ep.envelope(t)
            if e > 0:
                out[ep.kind] = max(out.get(ep.kind, 0.0), e * w)
        return out

    def _knot(self, s: SimSensor, k: int) -> float:
        key = zlib.crc32(s.id.encode())
        return float(np.random.default_rng((self.seed, key, k)).standard_normal())

    def noise(self, s: SimSensor, t: float) -> float:
        """Sensor noise at ``t``, about standard normal: an independent draw per nominal
        sampling interval (the knots), linearly interpolated in between.

        A sensor that reports ``speed`` times more often than its interval therefore sees the
        same noise *per minute* as at its nominal rate, not ``speed`` times more: the rate-of-
        change rules (a drop of 0.03 MPa/min on a water main) stay quiet in the normal pattern
        and fire on the injected incidents only. Deterministic for a seed, whatever the order
        of the calls."""
        u = t / s.interval_s
        k = math.floor(u)
        hit = self._knots.get(s.id)
        if hit is None or hit[0] != k:
            first = hit[2] if hit is not None and hit[0] == k - 1 else self._knot(s, k)
            hit = (k, first, self._knot(s, k + 1))
            self._knots[s.id] = hit
        f = u - k
        return (1.0 - f) * hit[1] + f * hit[2]

    def value(self, s: SimSensor, t: float) -> float:
        """The reading of ``s`` at ``t`` (epoch seconds)."""
        n = self.noise(s, t)
        b = self._bias[s.id]
        fx = self._effect(s, t)
        k = s.kind
        if k == "gas_concentration":
            base = max(0.0, 0.4 + 0.2 * b + 0.15 * n)
            return round(base + 62.0 * fx.get("gas_leak", 0.0), 2)
        if k == "pipe_pressure":
            if s.domain == "gas":
                return round(250.0 - 12.0 * _demand(t) + 5.0 * b + 0.8 * n, 1)
            burst = fx.get("main_burst", 0.0)
            base = 0.34 - 0.06 * _demand(t) + 0.02 * b + 0.002 * n
            return round(base - 0.26 * burst, 4)
        if k == "flow":
            return round(
                max(
                    0.0,
                    (80.0 + 20.0 * b) * _demand(t) * (1 + 0.6 * fx.get("main_burst", 0.0))
                    + 1.5 * n,
                ),
                2,
            )
        if k == "leak_noise":
            return round(32.0 + 2.0 * b + 0.8 * n + 25.0 * fx.get("main_burst", 0.0), 1)
        if k == "water_level":
            rain = fx.get("waterlogging", 0.0)
            if s.object_kind == "underpass":
                return round(max(0.0, 0.45 * rain + 0.003 * abs(n)), 3)
            return round(max(0.0, 0.35 + 0.05 * b + 0.01 * n + 1.9 * rain), 3)
        if k == "rainfall":
            return round(
                max(0.0, 14.0 * fx.get("waterlogging", 0.0) + (0.2 * abs(n) if b > 0.8 else 0.0)), 2
            )
        if k == "strain":
            return round(
                80.0
                + 20.0 * b
                + 3.0 * (_temperature(t) - 17.0)
                + 4.0 * n
                + 330.0 * fx.get("bridge_drift", 0.0),
                1,
            )
        if k == "tilt":
            return round(0.02 + 0.02 * b + 0.003 * n, 4)
        if k == "deflection":
            return round(
                5.0 + 2.0 * b + 3.0 * _traffic(t) + 0.4 * n + 30.0 * fx.get("bridge_drift", 0.0), 2
            )
        if k == "vibration":
            return round(max(0.0, 0.05 + 0.08 * _traffic(t) + 0.01 * n), 4)
        if k == "temperature":
            return round(_temperature(t) + 1.5 * b + 0.2 * n, 2)
        return round(10.0 + b + 0.1 * n, 3)

    # -------------------------------------------------------------------------- stepping

    def due(self, now: float) -> list[Reading]:
        """The readings every sensor owes between the last call and ``now``."""
        self._plan(now)
        out: list[Reading] = []
        for s in self.sensors:
            t = self._next_due[s.id]
            period = self._period(s)
            while t <= now:
                out.append(Reading(s.id, round(t, 3), self.value(s, t)))
                t += period
            self._next_due[s.id] = t
        return out

    def active(self, now: float) -> list[Episode]:
        return [e for e in self.episodes if e.start <= now < e.end]


# ------------------------------------------------------------------------------ sensors


def load_sensors(db: Database) -> list[SimSensor]:
    """Every active registered sensor, with metric coordinates for the incident geometry."""
    from sqlalchemy import select

    from cityops.core.crs import utm_crs_for
    from cityops.lifeline.models import Sensor

    with db.read() as session:
        rows = session.execute(
            select(
                Sensor.id,
                Sensor.domain,
                Sensor.kind,
                Sensor.object_kind,
                Sensor.network_id,
                Sensor.lon,
                Sensor.lat,
                Sensor.interval_s,
            )
            .where(Sensor.active.is_(True))
            .order_by(Sensor.id)
        ).all()
    if not rows:
        return []
    import pyproj

    lon0 = float(np.mean([r.lon for r in rows]))
    lat0 = float(np.mean([r.lat for r in rows]))
    tf = pyproj.Transformer.from_crs("EPSG:4326", utm_crs_for(lon0, lat0), always_xy=True)
    xs, ys = tf.transform([r.lon for r in rows], [r.lat for r in rows])
    return [
        SimSensor(
            id=r.id,
            domain=r.domain,
            kind=r.kind,
            object_kind=r.object_kind,
            network=r.network_id or f"domain:{r.domain}",
            x=float(x),
            y=float(y),
            interval_s=float(r.interval_s),
            lon=r.lon,
            lat=r.lat,
        )
        for r, x, y in zip(rows, xs, ys, strict=True)
    ]


# ------------------------------------------------------------------------------ outlets


def backfill(
    db: Database, sim: CitySimulator, *, hours: float, now: float | None = None, chunk: int = 20000
) -> int:
    """Write the last ``hours`` of readings (no incidents: history is the normal pattern) so
    charts have a past. Returns the number of readings written."""
    from cityops.lifeline.ingest.pipeline import Pipeline

    now = time.time() if now is None else now
    start = now - hours * 3600.0
    pipe = Pipeline(db, anomaly=False)
    saved_episodes, sim.episodes = sim.episodes, []
    n = 0
    buf: list[Reading] = []
    for s in sim.sensors:
        t = start + sim.rng.random() * s.interval_s
        while t < sim.start:
            buf.append(Reading(s.id, round(t, 3), sim.value(s, t)))
            t += s.interval_s
        if len(buf) >= chunk:
            n += len(buf)
            pipe.process_readings(sorted(buf, key=lambda r: r.ts), source="sim")
            buf = []
    if buf:
        n += len(buf)
        pipe.process_readings(sorted(buf, key=lambda r: r.ts), source="sim")
    sim.episodes = saved_episodes
    return n


def run_in_process(
    db: Database,
    stop: threading.Event,
    *,
    speed: float = 10.0,
    seed: int = 1,
    incidents: Iterable[str] = INCIDENTS,
    step_s: float = 1.0,
    backfill_hours: float = 0.0,
    on_batch: Callable[[int], None] | None = None,
) -> None:
    """Stream readings into the ingest pipeline of this process until ``stop`` is set."""
    from cityops.lifeline.ingest.pipeline import Pipeline

    sensors = load_sensors(db)
    if not sensors:
        log.warning("lifeline simulator: no registered sensors; nothing to simulate")
        return
    sim = CitySimulator(sensors, start=time.time(), seed=seed, speed=speed, incidents=incidents)
    if backfill_hours > 0:
        n = backfill(db, sim, hours=backfill_hours)
        log.info("lifeline simulator: back-filled %d readings", n)
    pipe = Pipeline(db)
    last_tick = time.monotonic()
    while not stop.wait(step_s):
        readings = sim.due(time.time())
        if readings:
            try:
                pipe.process_readings(readings, source="sim")
            except Exception:  # the demo goes on; the next step tries again
                log.exception("lifeline simulator: batch failed")
                continue
            if on_batch is not None:
                on_batch(len(readings))
        if time.monotonic() - last_tick > 30:
            last_tick = time.monotonic()
            try:
                pipe.tick()
            except Exception:
                log.exception("lifeline simulator: offline check failed")


class NotADemoDatabase(Conflict):
    """The in-process simulator was asked to write into a database ``cityops demo`` did not
    create."""


def is_demo_database(db: Database) -> bool:
    """Whether ``cityops demo`` created ``db`` (its marker is in ``app_state``)."""
    from cityops.demo import demo_marker

    return demo_marker(db) is not None


def start_in_process(
    db: Database,
    stop_event: threading.Event,
    *,
    speed: float = 10.0,
    seed: int = 1,
    backfill_hours: float = 0.0,
) -> threading.Thread:
    """Run the simulator in a daemon thread of this process (``cityops demo``): the live map
    shows readings within seconds and the first incidents within minutes. Set ``stop_event``
    to end it.

    Only on a demo database: anything else raises :class:`NotADemoDatabase` and nothing is
    written."""
    if not is_demo_database(db):
        raise NotADemoDatabase(
            f"{db.url} was not created by `cityops demo`: the lifeline simulator writes made-up "
            "readings and alarms, so it runs only on a demo database."
        )
    thread = threading.Thread(
        target=run_in_process,
        args=(db, stop_event),
        kwargs={"speed": speed, "seed": seed, "backfill_hours": backfill_hours},
        name="cityops-lifeline-sim",
        daemon=True,
    )
    thread.start()
    return thread


def run_mqtt(
    db: Database,
    url: str,
    stop: threading.Event,
    *,
    city: str = "demo",
    speed: float = 10.0,
    seed: int = 1,
    incidents: Iterable[str] = INCIDENTS,
    step_s: float = 1.0,
    duration_s: float | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Publish readings over MQTT (QoS 1) until ``stop`` is set or ``duration_s`` passes.
    Returns the number of messages published."""
    import json

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from cityops.lifeline.ingest.payload import topic_for
    from cityops.settings import parse_mqtt_url

    sensors = load_sensors(db)
    if not sensors:
        raise ValueError("no registered sensors to simulate: register sensors first")
    host, port, user, password = parse_mqtt_url(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cityops-sim-{seed}")
    if user:
        client.username_pw_set(user, password)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(host, port, keepalive=30)
    client.loop_start()
    sim = CitySimulator(sensors, start=time.time(), seed=seed, speed=speed, incidents=incidents)
    sent = 0
    t_end = None if duration_s is None else time.time() + duration_s
    try:
        while not stop.wait(step_s):
            now = time.time()
            readings = sim.due(now)
            infos = [
                client.publish(
                    topic_for(city, r.ref),
                    json.dumps({"ts": round(r.ts * 1000), "value": r.value}),
                    qos=1,
                )
                for r in readings
            ]
            for info in infos:
                info.wait_for_publish(30)
            sent += len(readings)
            if on_batch is not None and readings:
                on_batch(len(readings))
            if t_end is not None and now >= t_end:
                break
    finally:
        client.disconnect()
        client.loop_stop()
    return sent
