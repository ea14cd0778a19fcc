"""The MQTT ingest consumer (``cityops ingest``): QoS 1, persistent session, ack after commit.

DESIGN §8 "MQTT": the consumer subscribes to ``cityops/{city}/lifeline/#`` with QoS 1 in a
*persistent* session (MQTT 5: ``clean_start=False`` and a session expiry; MQTT 3.1.1:
``clean_session=False``), so the broker queues messages while the consumer is away. Messages
are acknowledged by hand (paho-mqtt 2 ``manual_ack=True``) and only *after* the batch holding
them has committed. Therefore:

* a crash or a broker restart before the commit redelivers the messages (nothing is lost);
* a crash after the commit but before the PUBACK redelivers them too, and the idempotent
  (sensor, ts) upsert plus the streaming state's "not newer than the last reading" rule make the
  second delivery change nothing (nothing is counted twice).

After a reconnect the broker numbers its deliveries afresh, so a message id of the old
connection may name a different message on the new one: messages received before a reconnect
are never acknowledged on the new connection (the broker redelivers them instead). Connection
generations and a lock around acknowledging guarantee that.

Throughput comes from batching: one transaction per ``CITYOPS_LIFELINE_BATCH_MAX`` messages or
``CITYOPS_LIFELINE_BATCH_WAIT_MS``, whichever comes first. With MQTT 5 the consumer announces a
large *receive maximum*, so the broker may have that many unacknowledged messages in flight to
it (the MQTT 3.1.1 limit is the broker's ``max_inflight_messages``, 20 by default on Mosquitto,
which caps a batch at 20 messages).

The receiving process does as little as it can per message (``bench/bench_mqtt.py``; at 20,000
msg/s it uses ~0.1 core): :class:`~cityops.lifeline.ingest.fastpaho.FastClient` hands it each
socket read, :meth:`MqttConsumer._on_block` walks the PUBLISH packets in it, routes each topic
to its worker and builds the PUBACKs, and keeps the packets as they came (one ``bytes`` per read
and worker, no object per message). A batch goes to its worker as one ``send_bytes`` of raw
packets (nothing pickled per message), and the worker decodes and parses them in one pass
(:meth:`Pipeline.process_packets`).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cityops.core.db import Database
from cityops.lifeline import timeseries
from cityops.lifeline.ingest.fastpaho import publish_end
from cityops.lifeline.ingest.pipeline import BatchResult, Pipeline
from cityops.settings import Settings, get_settings, parse_mqtt_url

log = logging.getLogger("cityops.lifeline.mqtt")

#: Seconds between offline checks (the clock's rule) while messages flow or not.
TICK_S = 30.0
#: Seconds between partition checks (months ahead on PostgreSQL).
PARTITIONS_S = 12 * 3600.0


_PUBACK_HEAD = b"\x40\x02"


@dataclass
class _Chunk:
    """Messages of one socket read for one worker, kept as the broker sent them: back-to-back
    MQTT PUBLISH packets (no per-message Python object is made in the receiver), and the
    PUBACKs that acknowledge them, written after their batch has committed."""

    generation: int
    #: time.monotonic() at arrival
    monotonic: float
    count: int
    data: bytes
    acks: bytes
    #: (mid, qos) of messages paho decoded itself (acknowledged through paho)
    paho_acks: tuple[tuple[int, int], ...] = ()


def _publish_packet(topic: str, payload: bytes, v5: bool) -> bytes:
    """A QoS 0 PUBLISH packet (the form batches travel in) for a message paho decoded."""
    t = topic.encode("utf-8")
    body = len(t).to_bytes(2, "big") + t + (b"\x00" if v5 else b"") + payload
    n, head = len(body), bytearray(b"\x30")
    while True:
        b, n = n & 127, n >> 7
        head.append(b | 128 if n else b)
        if not n:
            return bytes(head) + body


@dataclass
class ConsumerStats:
    received: int = 0
    committed: int = 0
    acked: int = 0
    not_acked_after_reconnect: int = 0
    batches: int = 0
    connects: int = 0
    disconnects: int = 0
    failed_batches: int = 0
    last_error: str | None = None
    connected: bool = False
    session_present: list[bool] = field(default_factory=list)


def subscription(settings: Settings) -> str:
    return f"cityops/{settings.lifeline_city}/lifeline/#"


class MqttConsumer:
    """Consume lifeline readings from an MQTT broker into the database."""

    def __init__(
        self,
        db: Database,
        url: str | None = None,
        *,
        settings: Settings | None = None,
        client_id: str | None = None,
        topic: str | None = None,
        protocol: int | None = None,
        pipeline: Pipeline | None = None,
        on_batch: Callable[[list[_Chunk], BatchResult], None] | None = None,
        tick_s: float = TICK_S,
        workers: int | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        url = url or self.settings.mqtt_url
        if not url:
            raise ValueError("no MQTT broker: pass --mqtt-url or set CITYOPS_MQTT_URL")
        self.host, self.port, self.user, self.password = parse_mqtt_url(url)
        self.db = db
        self.client_id = client_id or self.settings.mqtt_client_id
        self.topic = topic or subscription(self.settings)
        self.protocol = protocol or self.settings.mqtt_protocol
        if self.protocol not in (4, 5):
            raise ValueError("MQTT protocol must be 5 or 4 (3.1.1)")
        self.workers = self.settings.lifeline_workers if workers is None else workers
        # In-thread mode only: worker processes build their own pipelines.
        self.pipeline = pipeline
        self.on_batch = on_batch
        self.tick_s = tick_s
        self.stats = ConsumerStats()
        # paho's thread appends (worker index, chunk) once per socket read, the consumer's
        # thread pops: a deque needs no lock for that
        self._inbox: deque[tuple[int, _Chunk]] = deque()
        self._generation = 0
        self._ack_lock = threading.Lock()
        self._stop = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._workers: list[_Worker] = []
        self._local: Pipeline | None = None
        self._lanes = max(1, self.workers)
        #: topic → worker index (one sensor always goes to the same worker)
        self._routes: dict[bytes, int] = {}
        self._v5 = self.protocol == 5
        self._subscribed = threading.Event()
        self._client = self._make_client()

    # --------------------------------------------------------------------------- client

    def _make_client(self) -> Any:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from cityops.lifeline.ingest.fastpaho import FastClient

        if self.protocol == 5:
            client = FastClient(
                CallbackAPIVersion.VERSION2,
                client_id=self.client_id,
                protocol=mqtt.MQTTv5,
                manual_ack=True,
            )
        else:
            client = FastClient(
                CallbackAPIVersion.VERSION2,
                client_id=self.client_id,
                clean_session=False,
                protocol=mqtt.MQTTv311,
                manual_ack=True,
            )
        if self.user:
            client.username_pw_set(self.user, self.password)
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_fast_message = self._on_fast_message
        client.on_publish_block = self._on_block
        client.on_subscribe = self._on_subscribe
        return client

    def _connect_properties(self) -> Any:
        if self.protocol != 5:
            return None
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.settings.mqtt_session_expiry_s
        props.ReceiveMaximum = self.settings.mqtt_receive_maximum
        return props

    def _on_connect(
        self, client: Any, _userdata: Any, flags: Any, reason_code: Any, _props: Any
    ) -> None:
        if getattr(reason_code, "is_failure", False):
            self.stats.last_error = f"connect refused: {reason_code}"
            log.error("MQTT broker refused the connection: %s", reason_code)
            return
        with self._ack_lock:
            self._generation += 1
        self.stats.connects += 1
        self.stats.connected = True
        self.stats.session_present.append(bool(getattr(flags, "session_present", False)))
        log.info(
            "MQTT connected to %s:%d as %s (session present: %s)",
            self.host,
            self.port,
            self.client_id,
            self.stats.session_present[-1],
        )
        if self.protocol == 5:
            from paho.mqtt.subscribeoptions import SubscribeOptions

            client.subscribe(self.topic, options=SubscribeOptions(qos=1))
        else:
            client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, *_args: Any) -> None:
        self._subscribed.set()

    def _on_disconnect(self, *_args: Any) -> None:
        with self._ack_lock:
            self.stats.connected = False
        self.stats.disconnects += 1
        if not self._stopping:
            log.warning("MQTT connection to %s:%d lost; reconnecting", self.host, self.port)

    def _on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        # A message paho decoded itself (not the bulk path: e.g. QoS 2, which a QoS 1
        # subscription never gets): the same route, acknowledged through paho after the commit.
        self._enqueue_one(msg.topic, msg.mid, msg.qos, bytes(msg.payload), paho=True)

    def _on_fast_message(self, topic: str, mid: int, qos: int, payload: bytes) -> None:
        self._enqueue_one(topic, mid, qos, payload, paho=False)

    def _enqueue_one(self, topic: str, mid: int, qos: int, payload: bytes, *, paho: bool) -> None:
        self.stats.received += 1
        acks = b"" if paho or qos != 1 else _PUBACK_HEAD + mid.to_bytes(2, "big")
        chunk = _Chunk(
            self._generation,
            time.monotonic(),
            1,
            _publish_packet(topic, payload, self._v5),
            acks,
            ((mid, qos),) if paho and qos else (),
        )
        self._inbox.append((self._lane(topic.encode("utf-8")), chunk))

    def _lane(self, topic: bytes) -> int:
        lane = self._routes.get(topic)
        if lane is None:
            if len(self._routes) > 1_000_000:
                self._routes.clear()
            key = topic.rsplit(b"/", 1)[-1]
            lane = self._routes[topic] = zlib.crc32(key) % self._lanes
        return lane

    def _on_block(self, buf: bytearray, pos: int, end: int) -> int:
        """The receive hot path (paho's network thread): split the complete QoS 0/1 PUBLISH
        packets at the front of ``buf`` by worker, keep them as bytes with their PUBACKs, and
        return where the first other packet (or an incomplete one) starts."""
        lanes = self._lanes
        routes = self._routes
        start = pos
        count = 0
        if lanes == 1:
            acks = bytearray()
        else:
            datas = [bytearray() for _ in range(lanes)]
            lane_acks = [bytearray() for _ in range(lanes)]
            counts = [0] * lanes
        while pos + 1 < end:
            h = buf[pos]
            if h & 0xF4 != 0x30:
                break  # not a PUBLISH with QoS 0 or 1
            b = buf[pos + 1]
            if b < 128:
                t = pos + 2
                stop = t + b
                if stop > end:
                    break
            else:
                stop = publish_end(buf, pos, end)
                if stop < 0:
                    break
                t = pos + 2
                while buf[t - 1] >= 128:
                    t += 1
            q = t + 2 + ((buf[t] << 8) | buf[t + 1])
            if q + (2 if h & 2 else 0) > stop:
                break  # malformed: paho's reader reports it
            if lanes == 1:
                if h & 2:
                    acks += _PUBACK_HEAD
                    acks += buf[q : q + 2]
            else:
                topic = bytes(buf[t + 2 : q])
                lane = routes.get(topic)
                if lane is None:
                    lane = self._lane(topic)
                datas[lane] += buf[pos:stop]
                counts[lane] += 1
                if h & 2:
                    la = lane_acks[lane]
                    la += _PUBACK_HEAD
                    la += buf[q : q + 2]
            count += 1
            pos = stop
        if count:
            self.stats.received += count
            gen, now = self._generation, time.monotonic()
            if lanes == 1:
                self._inbox.append((0, _Chunk(gen, now, count, bytes(buf[start:pos]), bytes(acks))))
            else:
                for lane in range(lanes):
                    if counts[lane]:
                        chunk = _Chunk(
                            gen, now, counts[lane], bytes(datas[lane]), bytes(lane_acks[lane])
                        )
                        self._inbox.append((lane, chunk))
        return pos

    # ------------------------------------------------------------------------- running

    def start(self) -> None:
        """Start the worker processes, connect (retrying until the broker answers) and consume
        in the background."""
        with contextlib.suppress(Exception):
            timeseries.ensure_partitions(self.db)
        if self.workers:
            self._start_workers()
        else:
            self._workers = [_Worker(0, None, None)]
            self._local = self.pipeline or Pipeline(self.db, self.settings)
        self._client.connect_async(
            self.host,
            self.port,
            keepalive=30,
            clean_start=False if self.protocol == 5 else 3,  # 3 = MQTT_CLEAN_START_FIRST_ONLY
            properties=self._connect_properties(),
        )
        self._client.loop_start()
        self._thread = threading.Thread(target=self._dispatch, name="cityops-ingest", daemon=True)
        self._thread.start()

    def wait_subscribed(self, timeout: float = 10.0) -> bool:
        return self._subscribed.wait(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Commit and acknowledge what is in hand, then disconnect."""
        self._stopping = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._client.disconnect()
        self._client.loop_stop()
        for w in self._workers:
            if w.conn is not None:
                with contextlib.suppress(Exception):
                    w.conn.send_bytes(b"")
        for w in self._workers:
            if w.process is not None:
                w.process.join(5)
                if w.process.is_alive():
                    w.process.kill()

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set (the ``cityops ingest`` command)."""
        self.start()
        try:
            while not stop.wait(1.0):
                pass
        finally:
            self.stop()

    # ------------------------------------------------------------------ acknowledging

    def _acknowledge(self, batch: list[_Chunk], result: BatchResult) -> None:
        """After the commit: PUBACK every message of the batch that came on the current
        connection (the others the broker redelivers, and the upsert makes that harmless)."""
        self.stats.batches += 1
        self.stats.committed += sum(c.count for c in batch)
        with self._ack_lock:
            generation, connected = self._generation, self.stats.connected
            blobs = []
            for c in batch:
                if c.generation != generation or not connected:
                    self.stats.not_acked_after_reconnect += len(c.acks) // 4 + len(c.paho_acks)
                    continue
                blobs.append(c.acks)
                for mid, qos in c.paho_acks:
                    self._client.ack(mid, qos)
                    self.stats.acked += 1
            blob = b"".join(blobs)
            self._client.send_acks(blob)
            self.stats.acked += len(blob) // 4
        if self.on_batch is not None:
            self.on_batch(batch, result)

    # ----------------------------------------------------------------------- dispatch

    def _dispatch(self) -> None:
        """Receive → route by sensor → one batch in flight per worker → ack after its commit.

        A worker that is busy keeps collecting, so batches grow with the load and shrink when
        it is light (latency is then the batch wait plus one commit). With no worker process
        (``workers=0``) the batches run here, in this thread."""
        from multiprocessing.connection import wait as mp_wait

        batch_max = self.settings.lifeline_batch_max
        wait_s = self.settings.lifeline_batch_wait_ms / 1000.0
        local = not self.workers
        deadline: float | None = None
        inbox = self._inbox
        last_tick = last_parts = time.monotonic()
        while True:
            moved = 0
            while inbox:
                lane, chunk = inbox.popleft()
                w = self._workers[lane]
                w.buffer.append(chunk)
                w.pending += chunk.count
                moved += chunk.count
            if not local:
                by_conn = {
                    w.conn: w for w in self._workers if w.in_flight is not None and not w.failed
                }
                for conn in mp_wait(list(by_conn), timeout=0) if by_conn else []:
                    self._result(by_conn[conn])
            now = time.monotonic()
            stopping = self._stop.is_set()
            for w in self._workers:
                if w.in_flight is not None:
                    if w.failed and now >= w.retry_at:
                        if local:
                            self._run_local(w, w.in_flight, retry=not stopping)
                        else:
                            self._send(w, w.in_flight)
                    continue
                if w.buffer and (
                    stopping or w.pending >= batch_max or now - w.buffer[0].monotonic >= wait_s
                ):
                    batch = self._take_batch(w, batch_max)
                    if local:
                        self._run_local(w, batch, retry=not stopping)
                    else:
                        self._send(w, batch)
            if local:
                now = time.monotonic()
                if now - last_tick >= self.tick_s:
                    last_tick = now
                    try:
                        self._local.tick()
                    except Exception as exc:  # the stream goes on; the next tick tries again
                        log.exception("offline check failed: %s", exc)
                if now - last_parts >= PARTITIONS_S:
                    last_parts = now
                    with contextlib.suppress(Exception):
                        timeseries.ensure_partitions(self.db)
            if stopping:
                deadline = deadline or now + 30.0
                pending = any(w.buffer or w.in_flight for w in self._workers)
                if local and all(w.in_flight is None or w.failed for w in self._workers):
                    pending = any(w.buffer for w in self._workers)
                if (not pending and not inbox) or now > deadline:
                    return
            if moved < 500:
                # Little arrived: sleep a moment instead of spinning (the interpreter lock is
                # shared with paho's network thread, which must keep reading the socket).
                time.sleep(0.002)

    @staticmethod
    def _take_batch(w: _Worker, batch_max: int) -> list[_Chunk]:
        """Whole chunks (one socket read each) up to ``batch_max`` messages, at least one."""
        n, k = 0, 0
        for c in w.buffer:
            if k and n + c.count > batch_max:
                break
            n += c.count
            k += 1
        batch, w.buffer = w.buffer[:k], w.buffer[k:]
        w.pending -= n
        return batch

    def _run_local(self, w: _Worker, batch: list[_Chunk], *, retry: bool) -> None:
        """In-thread mode: run one batch here; a database error leaves it in flight (nothing
        committed, nothing acknowledged) to be tried again after a pause."""
        w.in_flight = batch
        try:
            result = self._local.process_packets(b"".join(c.data for c in batch), v5=self._v5)
        except Exception as exc:
            self.stats.failed_batches += 1
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("ingest batch of %d failed; retrying in %.1f s", len(batch), w.delay)
            if not retry:
                # stopping: the broker keeps the messages for next time
                w.in_flight = None
                return
            w.failed = True
            w.retry_at = time.monotonic() + w.delay
            w.delay = min(w.delay * 2, 30.0)
            return
        w.in_flight = None
        w.failed = False
        w.delay = 0.5
        self._acknowledge(batch, result)

    # ------------------------------------------------------- worker-process mode (≥ 1)

    def _spawn(self, index: int) -> tuple[Any, Any]:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=_worker_main,
            args=(child, self.db.url, self.settings.model_dump(), index == 0, self.tick_s),
            kwargs={"v5": self._v5},
            name=f"cityops-ingest-{index}",
            daemon=True,
        )
        proc.start()
        child.close()
        return proc, parent

    def _start_workers(self) -> None:
        for i in range(self.workers):
            proc, conn = self._spawn(i)
            self._workers.append(_Worker(i, proc, conn))
        # Subscribe only once every worker has loaded the registry and the sensors' states: a
        # cold worker would hold its first batch for seconds, and the broker's window of
        # unacknowledged messages (receive maximum) would fill meanwhile.
        for w in self._workers:
            if not w.conn.poll(120):
                raise RuntimeError(f"ingest worker {w.index} did not start within 120 s")
            kind, detail = w.conn.recv()
            if kind != "ready":
                raise RuntimeError(f"ingest worker {w.index} failed to start: {detail}")

    def _send(self, w: _Worker, batch: list[_Chunk]) -> None:
        w.in_flight = batch
        w.failed = False
        try:
            # raw packets, one write: nothing is pickled per message
            w.conn.send_bytes(b"".join(c.data for c in batch))
        except (OSError, EOFError, BrokenPipeError):
            self._restart(w)

    def _result(self, w: _Worker) -> None:
        try:
            kind, payload = w.conn.recv()
        except (EOFError, OSError):
            self._restart(w)
            return
        if kind == "ready":
            return  # a restarted worker is up; its batch was (or will be) sent again
        batch = w.in_flight or []
        if kind == "done":
            w.in_flight = None
            w.delay = 0.5
            self._acknowledge(batch, payload)
            return
        # A database error in the worker: nothing was committed; the batch is sent again.
        self.stats.failed_batches += 1
        self.stats.last_error = str(payload)
        log.error("ingest batch of %d failed in worker %d: %s", len(batch), w.index, payload)
        w.failed = True
        w.retry_at = time.monotonic() + w.delay
        w.delay = min(w.delay * 2, 30.0)

    def _restart(self, w: _Worker) -> None:
        """A worker died: start another and give it the batch the dead one held."""
        log.error("ingest worker %d died; restarting it", w.index)
        with contextlib.suppress(Exception):
            w.process.kill()
        w.process, w.conn = self._spawn(w.index)
        if w.in_flight is not None:
            w.failed = True
            w.retry_at = time.monotonic() + 1.0


@dataclass
class _Worker:
    index: int
    #: the worker process and its pipe (None in in-thread mode)
    process: Any
    conn: Any
    buffer: list[_Chunk] = field(default_factory=list)
    #: messages in ``buffer``
    pending: int = 0
    in_flight: list[_Chunk] | None = None
    failed: bool = False
    retry_at: float = 0.0
    delay: float = 0.5


#: SQLite: a worker's own connections checkpoint the WAL only past this many pages (SQLite's
#: default is 1,000; ~400 MB here: a safety net); a thread of the worker checkpoints every
#: :data:`CHECKPOINT_S` instead. Each batch rewrites the last page of every sensor it touches,
#: so a batch of 2,000 sensors passed the default on its own and every commit paid a checkpoint
#: (a second write of each page and an fsync) inside the write lock; checkpointing once a
#: second, beside the commits, writes such a page once for all the batches of that second.
WAL_AUTOCHECKPOINT_PAGES = 100_000
CHECKPOINT_S = 1.0


def _tune_sqlite(db: Database) -> threading.Event | None:
    """Move an ingest worker's SQLite checkpoints out of its commits (see above). Returns the
    event that stops the checkpointing thread (None on PostgreSQL or an in-memory file)."""
    if db.is_postgres:
        return None
    path = db.engine.url.database
    if not path or path == ":memory:":
        return None
    import sqlite3

    from sqlalchemy import event

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")

    event.listen(db.engine, "connect", on_connect)
    stop = threading.Event()

    def checkpoint() -> None:
        conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout=30000")
            while not stop.wait(CHECKPOINT_S):
                try:
                    # PASSIVE: copies what it can without waiting for (or blocking) anyone
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # the next round tries again
                    log.debug("WAL checkpoint failed: %s", exc)
        finally:
            conn.close()

    threading.Thread(target=checkpoint, name="cityops-wal-checkpoint", daemon=True).start()
    return stop


def _worker_main(
    conn: Any, url: str, config: dict[str, Any], ticks: bool, tick_s: float, *, v5: bool = True
) -> None:
    """A worker process: receive batches (raw PUBLISH packets), run them through the pipeline,
    answer done/failed."""
    import signal

    # The receiver decides when to stop (it finishes the batches in hand first).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    db = Database(url)
    checkpoints = _tune_sqlite(db)
    settings = Settings(**config)
    pipeline = Pipeline(db, settings)
    try:
        pipeline.warm_up()
    except Exception as exc:  # the receiver reports it and stops
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    # The registry, the states and the modules loaded so far live as long as the process: out
    # of the cyclic collector's way (its full passes over them cost more than the batches'
    # garbage does).
    gc.collect()
    gc.freeze()
    conn.send(("ready", None))
    last_tick = time.monotonic()
    last_parts = time.monotonic()
    try:
        while True:
            if conn.poll(1.0):
                try:
                    data = conn.recv_bytes()
                except EOFError:
                    return
                if not data:
                    return
                try:
                    result = pipeline.process_packets(data, v5=v5)
                except Exception as exc:  # reported; the receiver sends the batch again
                    log.exception("ingest batch failed")
                    conn.send(("failed", f"{type(exc).__name__}: {exc}"))
                else:
                    conn.send(("done", result))
            if not ticks:
                continue
            now = time.monotonic()
            if now - last_tick >= tick_s:
                last_tick = now
                try:
                    pipeline.tick()
                except Exception:  # the next tick tries again
                    log.exception("offline check failed")
            if now - last_parts >= PARTITIONS_S:
                last_parts = now
                with contextlib.suppress(Exception):
                    timeseries.ensure_partitions(db)
    finally:
        if checkpoints is not None:
            checkpoints.set()
        db.dispose()
