"""MQTT ingest against real brokers (marker ``mqtt``; switched on by CITYOPS_TEST_MQTT_URL).

* the shared broker: a QoS 1 stream becomes samples, alarms and one incident; verified, it
  becomes a case when the case loop is installed;
* a private Mosquitto on a spare port, restarted in the middle of a stream: the consumer
  reconnects to its persistent session and no QoS 1 message is lost or counted twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cityops.lifeline import registry
from cityops.lifeline.ingest.mqtt import MqttConsumer
from cityops.lifeline.models import Alarm, Incident, Sample, SensorState
from cityops.lifeline.schemas import SensorIn
from cityops.settings import Settings, parse_mqtt_url
from tests.lifeline.places import seed_area

pytestmark = pytest.mark.mqtt
MQTT_URL = os.environ.get("CITYOPS_TEST_MQTT_URL")


@pytest.fixture(scope="module")
def mqtt_url() -> str:
    if not MQTT_URL:
        pytest.skip(
            "MQTT tests are off: set CITYOPS_TEST_MQTT_URL=mqtt://127.0.0.1:1883 (.ci/run does)"
        )
    host, port, _, _ = parse_mqtt_url(MQTT_URL)
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:  # set but unreachable: a failure, never a skip
        pytest.fail(f"CITYOPS_TEST_MQTT_URL={MQTT_URL} is set but the broker is unreachable: {exc}")
    return MQTT_URL


def add_gas_sensor(db, sid: str, lat_m: float) -> None:
    with db.write() as s:
        registry.register(
            s,
            SensorIn(
                id=sid,
                domain="gas",
                kind="gas_concentration",
                network_id="GAS-1",
                interval_s=60,
                lon=117.25,
                lat=31.80 + lat_m / 111_320,
                thresholds={"rate": None},
            ),
            "test",
        )


class Publisher:
    """A paho QoS 1 publisher that counts broker acknowledgements (it keeps unacknowledged
    messages across a broker restart and sends them again after reconnecting)."""

    def __init__(self, url: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        host, port, _, _ = parse_mqtt_url(url)
        self.acked: set[int] = set()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}"
        )
        self.client.on_publish = lambda _c, _u, mid, _rc, _p: self.acked.add(mid)
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(1, 2)
        self.client.connect_async(host, port, keepalive=10)
        self.client.loop_start()
        self.mids: list[int] = []

    def send(self, topic: str, payload: dict[str, object]) -> None:
        info = self.client.publish(topic, json.dumps(payload), qos=1)
        self.mids.append(info.mid)

    def wait_all_acked(self, timeout: float) -> bool:
        end = time.time() + timeout
        while time.time() < end:
            if set(self.mids) <= self.acked:
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def forget_session(url: str, client_id: str) -> None:
    """Delete a consumer's persistent session on a shared broker (clean start, expiry 0)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    host, port, _, _ = parse_mqtt_url(url)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    with contextlib.suppress(Exception):
        c.connect(host, port, clean_start=True)
        c.loop_start()
        time.sleep(0.3)
        c.disconnect()
        c.loop_stop()


def wait_for(cond, timeout: float, step: float = 0.1) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


def count(db, model, *where) -> int:
    with db.read() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


# --------------------------------------------------------------------------- shared broker


def test_stream_to_alarm_and_incident(db, mqtt_url: str) -> None:
    add_gas_sensor(db, "M1", 0)
    add_gas_sensor(db, "M2", 70)  # 70 m away: the same incident
    city = f"t{uuid.uuid4().hex[:8]}"
    settings = Settings(
        lifeline_city=city,
        mqtt_session_expiry_s=60,
        lifeline_anomaly=False,
        lifeline_batch_wait_ms=20,
    )
    cid = f"cityops-test-{city}"
    consumer = MqttConsumer(db, mqtt_url, settings=settings, client_id=cid, workers=0)
    consumer.start()
    pub = Publisher(mqtt_url)
    try:
        assert consumer.wait_subscribed(10), consumer.stats
        t0 = int(time.time() * 1000) - 3_600_000
        values = [1.0, 2.0, 12.0, 30.0, 35.0, 28.0]
        for k, v in enumerate(values):
            for sid in ("M1", "M2"):
                pub.send(f"cityops/{city}/lifeline/{sid}", {"ts": t0 + 60_000 * k, "value": v})
        pub.send(f"cityops/{city}/lifeline/M1", {"ts": t0, "value": float("nan")})  # dead letter
        assert pub.wait_all_acked(15)
        assert wait_for(lambda: count(db, Sample) == 12, 30), consumer.stats
        assert wait_for(lambda: consumer.stats.committed == 13, 10)
    finally:
        consumer.stop()
        pub.close()
        forget_session(mqtt_url, cid)
    with db.read() as s:
        alarms = s.scalars(select(Alarm).order_by(Alarm.sensor_id)).all()
        assert [(a.sensor_id, a.level, a.updates) for a in alarms] == [
            ("M1", "orange", 3),
            ("M2", "orange", 3),
        ]
        incident = s.scalars(select(Incident)).one()
        assert (incident.alarm_count, incident.level, incident.state) == (2, "orange", "raised")
        assert {a.incident_id for a in alarms} == {incident.id}
    assert consumer.stats.acked == 13 and consumer.stats.failed_batches == 0


def test_stream_to_a_case_and_back(db, mqtt_url: str) -> None:
    """The whole chain: MQTT → alarm → incident → verified (研判) → a case dispatched to the
    owning unit → the case is handled and closed → the incident closes (闭环)."""
    pytest.importorskip("cityops.cases.service", reason="the case loop is not installed")
    from cityops.cases import service as case_service
    from cityops.cases import worker  # noqa: F401 - registers the outbox consumers
    from cityops.cases.models import Case
    from cityops.cases.schemas import TransitionIn
    from cityops.core import events
    from cityops.core.auth import Principal
    from cityops.lifeline import service

    case_service.clear_caches()
    seed_area(db)
    add_gas_sensor(db, "M1", 0)
    city = f"t{uuid.uuid4().hex[:8]}"
    settings = Settings(lifeline_city=city, mqtt_session_expiry_s=60, lifeline_anomaly=False)
    cid = f"cityops-test-{city}"
    consumer = MqttConsumer(db, mqtt_url, settings=settings, client_id=cid, workers=1)
    consumer.start()
    pub = Publisher(mqtt_url)
    try:
        assert consumer.wait_subscribed(30)
        t0 = int(time.time() * 1000) - 600_000
        for k, v in enumerate([1.0, 60.0]):
            pub.send(f"cityops/{city}/lifeline/M1", {"ts": t0 + 60_000 * k, "value": v})
        assert wait_for(lambda: count(db, Incident) == 1, 30), consumer.stats
    finally:
        consumer.stop()
        pub.close()
        forget_session(mqtt_url, cid)
    monitor = Principal(username="mon", roles=frozenset({"monitor"}))
    with db.write() as s:
        iid = s.scalars(select(Incident.id)).one()
        service.transition_incident(s, iid, "verify", monitor, note="confirmed on site")
    events.drain(db, events.all_handlers(db))
    with db.read() as s:
        inc = s.get(Incident, iid)
        assert inc.state == "pushed" and inc.case_id, "the verified incident became a case"
        case = s.scalars(select(Case).where(Case.id == inc.case_id)).one()
        assert (case.source, case.status, case.department, case.urgency) == (
            "sensor_alarm",
            "dispatched",
            "gas",
            "urgent",
        )
        assert case.category == "city:gas_alarm"
    handler = Principal(username="gas1", roles=frozenset({"handler"}), department="gas")
    sup = Principal(username="sup1", roles=frozenset({"supervisor"}))
    for who, action in ((handler, "accept"), (handler, "resolve"), (sup, "close")):
        case_service.transition(
            db, who, inc.case_id, TransitionIn(action=action, note=f"{action} done")
        )
    events.drain(db, events.all_handlers(db))
    with db.read() as s:
        inc = s.get(Incident, iid)
        assert inc.state == "closed" and inc.closed_at is not None, "closing the case closed it"


# ------------------------------------------------------------------ private broker restart


def _spare_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateBroker:
    """A Mosquitto of the test's own, with persistence, on a spare port (never the shared one)."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
        )
        if exe is None:
            pytest.fail(
                "the broker-restart test needs the `mosquitto` binary (Debian package mosquitto)"
            )
        self.exe = exe
        self.port = _spare_port()
        self.dir = workdir
        self.conf = workdir / "mosquitto.conf"
        import getpass

        self.conf.write_text(
            # run as ourselves (started as root, mosquitto would switch to the `mosquitto` user
            # and could not write its persistence file into our temporary directory)
            f"user {getpass.getuser()}\n"
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {workdir}/\n"
            # keep every queued QoS 1 message while the consumer is away (the default, 1000,
            # drops the rest: a production broker must raise it too — docs/lifeline.md)
            "max_queued_messages 0\n"
            f"log_dest file {workdir}/mosquitto.log\n",
            encoding="utf-8",
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], cwd=self.dir)
        if not wait_for(self._up, 10, 0.05):
            raise RuntimeError(f"private mosquitto did not start: {self.log()}")

    def _up(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # a clean stop writes the persistence file
            self.proc.wait(10)
        self.proc = None

    def log(self) -> str:
        p = self.dir / "mosquitto.log"
        return p.read_text(errors="replace")[-2000:] if p.exists() else ""


@pytest.fixture
def private_broker(mqtt_url: str, tmp_path: Path) -> Iterator[PrivateBroker]:
    broker = PrivateBroker(tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.mark.slow
def test_broker_restart_loses_and_doubles_nothing(db, private_broker: PrivateBroker) -> None:
    add_gas_sensor(db, "R1", 0)
    settings = Settings(
        lifeline_city="restart",
        mqtt_session_expiry_s=600,
        lifeline_anomaly=False,
        lifeline_batch_wait_ms=20,
    )
    consumer = MqttConsumer(
        db, private_broker.url, settings=settings, client_id="cityops-restart-test", workers=1
    )
    consumer.start()
    pub = Publisher(private_broker.url)
    n = 600
    t0 = int(time.time() * 1000) - n * 60_000 - 60_000
    # the level is above 10 %LEL for 20 readings of every 100: six alarms, raised and cleared
    # (values vary a little, as real readings do: a constant value would be a stuck sensor)
    values = [(30.0 if 40 <= k % 100 < 60 else 1.0) + (k % 7) / 10 for k in range(n)]
    try:
        assert consumer.wait_subscribed(30), consumer.stats
        for k in range(n):
            pub.send("cityops/restart/lifeline/R1", {"ts": t0 + 60_000 * k, "value": values[k]})
            if k == n // 2:
                # mid-stream: the broker goes down and comes back on the same port
                private_broker.stop()
                time.sleep(1.0)
                private_broker.start()
            time.sleep(0.004)
        assert pub.wait_all_acked(60), f"publisher not acknowledged: {private_broker.log()}"

        def all_in() -> bool:
            with db.read() as s:
                st = s.get(SensorState, "R1")
                return st is not None and st.readings + st.late >= n and count(db, Sample) == n

        assert wait_for(all_in, 90), (consumer.stats, private_broker.log())
    finally:
        consumer.stop()
        pub.close()
    assert consumer.stats.connects >= 2, "the consumer reconnected"
    assert consumer.stats.session_present[-1] is True, "it found its persistent session again"
    with db.read() as s:
        st = s.get(SensorState, "R1")
        # every reading evaluated exactly once, none twice: redeliveries only count as late
        assert st.readings == n
        stored = dict(s.execute(select(Sample.ts, Sample.value)).all())
        alarms = s.scalars(select(Alarm).order_by(Alarm.raised_at)).all()
    assert {a.kind for a in alarms} == {"threshold"}
    assert len(stored) == n
    assert sorted(v for v in stored.values()) == sorted(values)
    raised = [round(a.raised_at.timestamp() * 1000) for a in alarms]
    assert raised == [t0 + 60_000 * (100 * i + 40) for i in range(6)]
    assert all(a.cleared_at is not None and a.updates == 19 for a in alarms)


@pytest.mark.slow
def test_consumer_down_while_messages_arrive(db, private_broker: PrivateBroker) -> None:
    """The persistent session keeps what arrives while the consumer is away."""
    add_gas_sensor(db, "Q1", 0)
    settings = Settings(lifeline_city="away", mqtt_session_expiry_s=600, lifeline_anomaly=False)
    first = MqttConsumer(
        db, private_broker.url, settings=settings, client_id="cityops-away", workers=0
    )
    first.start()
    assert first.wait_subscribed(10)
    first.stop()
    pub = Publisher(private_broker.url)
    t0 = int(time.time() * 1000) - 300 * 60_000
    for k in range(300):
        pub.send("cityops/away/lifeline/Q1", {"ts": t0 + 60_000 * k, "value": 1.0 + (k % 3)})
    assert pub.wait_all_acked(30)
    pub.close()
    second = MqttConsumer(
        db, private_broker.url, settings=settings, client_id="cityops-away", workers=0
    )
    second.start()
    try:
        assert wait_for(lambda: count(db, Sample) == 300, 30), (second.stats, private_broker.log())
    finally:
        second.stop()
    assert second.stats.session_present == [True]


def test_consumer_requires_a_broker_url(db) -> None:
    with pytest.raises(ValueError, match="no MQTT broker"):
        MqttConsumer(db, None, settings=Settings(mqtt_url=None))


def test_threaded_stop_is_clean(db, mqtt_url: str) -> None:
    """Stopping finishes the batch in hand; nothing is left unacknowledged."""
    city = f"t{uuid.uuid4().hex[:8]}"
    consumer = MqttConsumer(
        db,
        mqtt_url,
        settings=Settings(lifeline_city=city, mqtt_session_expiry_s=30),
        client_id=f"cityops-test-{city}",
        workers=0,
    )
    consumer.start()
    assert consumer.wait_subscribed(10)
    threading.Event().wait(0.2)
    consumer.stop()
    forget_session(mqtt_url, f"cityops-test-{city}")
    assert consumer.stats.failed_batches == 0


# ------------------------------------------------------------- the receive path, no broker


def _publish(topic: str, payload: bytes, *, qos: int = 1, mid: int = 1, v5: bool = True) -> bytes:
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t + (mid.to_bytes(2, "big") if qos else b"")
    body += (b"\x00" if v5 else b"") + payload
    head, n = bytearray([0x30 | (qos << 1)]), len(body)
    while True:
        b, n = n & 127, n >> 7
        head.append(b | 128 if n else b)
        if not n:
            return bytes(head) + body


@pytest.mark.parametrize("workers", [0, 2])
def test_receiver_splits_packets_by_sensor_with_their_acks(db, workers: int) -> None:
    """The hot path keeps raw packets, routes each sensor to one worker in arrival order,
    builds the PUBACKs of the QoS 1 ones, and stops at any other packet or an incomplete one."""
    consumer = MqttConsumer(db, "mqtt://127.0.0.1:1", settings=Settings(), workers=workers)
    pkts = [
        _publish(
            f"cityops/c/lifeline/S{k % 5}",
            b'{"ts":%d,"value":%d}' % (1_790_000_000_000 + k, k) + (b" " * 200 if k == 7 else b""),
            qos=0 if k % 4 == 3 else 1,
            mid=k * 1000 + 1,
        )
        for k in range(40)
    ]
    head = b"".join(pkts[:30])
    buf = bytearray(head + b"\xd0\x00" + b"".join(pkts[30:]))  # a PINGRESP in between
    assert consumer._on_block(buf, 0, len(buf)) == len(head)
    assert consumer._on_block(buf, len(head), len(buf)) == len(head)  # paho's packet
    lanes: dict[int, list] = {}
    for lane, chunk in consumer._inbox:
        lanes.setdefault(lane, []).append(chunk)
    assert sum(c.count for cs in lanes.values() for c in cs) == 30 == consumer.stats.received
    seen: dict[int, int] = {}
    for lane, chunks in lanes.items():
        (chunk,) = chunks
        mine = [p for p in pkts[:30] if p in chunk.data]
        assert chunk.data == b"".join(mine)  # this lane's packets, in arrival order
        assert chunk.acks == b"".join(
            b"\x40\x02" + (pkts.index(p) * 1000 + 1).to_bytes(2, "big") for p in mine if p[0] & 6
        )
        for p in mine:
            sensor = pkts.index(p) % 5
            assert seen.setdefault(sensor, lane) == lane  # one sensor, one lane
    assert len(lanes) == max(1, workers)
    # an incomplete packet at the end stays for the next read
    start = len(head) + 2
    cut = len(buf) - 3
    assert consumer._on_block(buf, start, cut) == len(buf) - len(pkts[-1])


def test_bulk_read_hands_publishes_on_and_other_packets_to_paho() -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from cityops.lifeline.ingest.fastpaho import FastClient, _BufferedSocket, publish_end

    got: list[bytes] = []

    def take(buf: bytearray, pos: int, end: int) -> int:
        while (stop := publish_end(buf, pos, end)) > 0:
            got.append(bytes(buf[pos:stop]))
            pos = stop
        return pos

    client = FastClient(
        CallbackAPIVersion.VERSION2, client_id="t", protocol=mqtt.MQTTv5, manual_ack=True
    )
    client.on_publish_block = take
    a, b = socket.socketpair()
    b.setblocking(False)
    try:
        sock = _BufferedSocket(b)
        sock.bulk = True  # type: ignore[attr-defined]
        client._sock = sock
        client._ping_t = 123.0
        p = [
            _publish("cityops/c/lifeline/S1", b'{"ts":1,"value":%d}' % k, mid=k + 1)
            for k in range(4)
        ]
        a.sendall(p[0] + p[1] + b"\xd0\x00" + p[2] + p[3][:5])
        assert client.loop_read() == 0
        assert got == p[:3] and client._ping_t == 0  # paho handled the PINGRESP
        assert sock.pending() == 0  # only an incomplete packet is left: wait in select()
        a.sendall(p[3][5:])
        assert client.loop_read() == 0
        assert got == p
        assert client.send_acks(b"\x40\x02\x00\x01") == 0
    finally:
        client._sock = None
        a.close()
        b.close()


@pytest.mark.slow
def test_a_worker_killed_mid_stream_is_replaced_and_nothing_is_lost(db, mqtt_url: str) -> None:
    add_gas_sensor(db, "K1", 0)
    city = f"t{uuid.uuid4().hex[:8]}"
    cid = f"cityops-test-{city}"
    settings = Settings(lifeline_city=city, mqtt_session_expiry_s=60, lifeline_anomaly=False)
    consumer = MqttConsumer(db, mqtt_url, settings=settings, client_id=cid, workers=1)
    consumer.start()
    pub = Publisher(mqtt_url)
    t0 = int(time.time() * 1000) - 400 * 60_000
    try:
        assert consumer.wait_subscribed(30), consumer.stats
        for k in range(200):
            pub.send(f"cityops/{city}/lifeline/K1", {"ts": t0 + 60_000 * k, "value": 1.0 + k % 3})
        assert wait_for(lambda: consumer.stats.committed >= 200, 30), consumer.stats
        consumer._workers[0].process.kill()  # the next batch finds it dead
        for k in range(200, 400):
            pub.send(f"cityops/{city}/lifeline/K1", {"ts": t0 + 60_000 * k, "value": 1.0 + k % 3})
        assert wait_for(lambda: count(db, Sample) == 400, 60), consumer.stats
        assert wait_for(lambda: consumer.stats.acked == 400, 30), consumer.stats
    finally:
        consumer.stop()
        pub.close()
        forget_session(mqtt_url, cid)
    with db.read() as s:
        assert s.get(SensorState, "K1").readings == 400
