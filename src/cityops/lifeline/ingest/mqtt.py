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
"""

from __future__ import annotations

import contextlib
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
from cityops.lifeline.config import LifelineSettings, get_lifeline_settings, parse_mqtt_url
from cityops.lifeline.ingest.pipeline import BatchResult, Pipeline

log = logging.getLogger("cityops.lifeline.mqtt")

#: Seconds between offline checks (the clock's rule) while messages flow or not.
TICK_S = 30.0
#: Seconds between partition checks (months ahead on PostgreSQL).
PARTITIONS_S = 12 * 3600.0


@dataclass
class _Msg:
    generation: int
    mid: int
    qos: int
    topic: str
    payload: bytes
    #: time.monotonic() at arrival
    monotonic: float


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


def subscription(settings: LifelineSettings) -> str:
    return f"cityops/{settings.lifeline_city}/lifeline/#"


class MqttConsumer:
    """Consume lifeline readings from an MQTT broker into the database."""

    def __init__(
        self,
        db: Database,
        url: str | None = None,
        *,
        settings: LifelineSettings | None = None,
        client_id: str | None = None,
        topic: str | None = None,
        protocol: int | None = None,
        pipeline: Pipeline | None = None,
        on_batch: Callable[[list[_Msg], BatchResult], None] | None = None,
        tick_s: float = TICK_S,
        workers: int | None = None,
    ) -> None:
        self.settings = settings or get_lifeline_settings()
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
        # paho's thread appends, the consumer's thread pops: a deque needs no lock for that,
        # and a queue.Queue's lock and condition per message cost a fifth of the receive path
        self._inbox: deque[_Msg] = deque()
        self._generation = 0
        self._ack_lock = threading.Lock()
        self._stop = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._workers: list[_Worker] = []
        self._routes: dict[str, _Worker] = {}
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
        self._on_fast_message(msg.topic, msg.mid, msg.qos, bytes(msg.payload))

    def _on_fast_message(self, topic: str, mid: int, qos: int, payload: bytes) -> None:
        self.stats.received += 1
        self._inbox.append(_Msg(self._generation, mid, qos, topic, payload, time.monotonic()))

    # ------------------------------------------------------------------------- running

    def start(self) -> None:
        """Start the worker processes, connect (retrying until the broker answers) and consume
        in the background."""
        with contextlib.suppress(Exception):
            timeseries.ensure_partitions(self.db)
        if self.workers:
            self._start_workers()
            target = self._dispatch
        else:
            target = self._work
        self._client.connect_async(
            self.host,
            self.port,
            keepalive=30,
            clean_start=False if self.protocol == 5 else 3,  # 3 = MQTT_CLEAN_START_FIRST_ONLY
            properties=self._connect_properties(),
        )
        self._client.loop_start()
        self._thread = threading.Thread(target=target, name="cityops-ingest", daemon=True)
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
            with contextlib.suppress(Exception):
                w.conn.send(None)
        for w in self._workers:
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

    def _acknowledge(self, batch: list[_Msg], result: BatchResult) -> None:
        """After the commit: PUBACK every message of the batch that came on the current
        connection (the others the broker redelivers, and the upsert makes that harmless)."""
        self.stats.batches += 1
        self.stats.committed += len(batch)
        with self._ack_lock:
            generation, connected = self._generation, self.stats.connected
            mids = []
            for m in batch:
                if m.qos == 0:
                    continue
                if m.generation != generation or not connected:
                    self.stats.not_acked_after_reconnect += 1
                    continue
                mids.append(m.mid)
            self._client.ack_many(mids)
            self.stats.acked += len(mids)
        if self.on_batch is not None:
            self.on_batch(batch, result)

    # ------------------------------------------------------------ in-thread mode (0)

    def _take(self) -> list[_Msg]:
        """Wait (polling, 2 ms) for a first message, then collect for the batch wait."""
        batch_max = self.settings.lifeline_batch_max
        wait = self.settings.lifeline_batch_wait_ms / 1000.0
        inbox = self._inbox
        give_up = time.monotonic() + 0.2
        while not inbox:
            if time.monotonic() >= give_up:
                return []
            time.sleep(0.002)
        deadline = time.monotonic() + wait
        batch: list[_Msg] = []
        while len(batch) < batch_max:
            while inbox and len(batch) < batch_max:
                batch.append(inbox.popleft())
            if len(batch) >= batch_max or time.monotonic() >= deadline:
                break
            time.sleep(0.002)
        return batch

    def _work(self) -> None:
        pipeline = self.pipeline or Pipeline(self.db, self.settings)
        last_tick = time.monotonic()
        last_parts = time.monotonic()
        while not self._stop.is_set():
            batch = self._take()
            if batch:
                self._commit_and_ack(pipeline, batch)
            now = time.monotonic()
            if now - last_tick >= self.tick_s:
                last_tick = now
                try:
                    pipeline.tick()
                except Exception as exc:  # the stream goes on; the next tick tries again
                    log.exception("offline check failed: %s", exc)
            if now - last_parts >= PARTITIONS_S:
                last_parts = now
                with contextlib.suppress(Exception):
                    timeseries.ensure_partitions(self.db)
        # Drain what is already here so that a clean stop leaves nothing unacknowledged.
        rest: list[_Msg] = []
        while self._inbox:
            rest.append(self._inbox.popleft())
        if rest:
            self._commit_and_ack(pipeline, rest, retry=False)

    def _commit_and_ack(self, pipeline: Pipeline, batch: list[_Msg], *, retry: bool = True) -> None:
        delay = 0.5
        while True:
            try:
                result = pipeline.process_messages([(m.topic, m.payload) for m in batch])
                break
            except Exception as exc:
                # A database error: nothing was committed and nothing is acknowledged. Retry the
                # same batch; if we are stopping, the broker keeps the messages for next time.
                self.stats.failed_batches += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("ingest batch of %d failed; retrying in %.1f s", len(batch), delay)
                if not retry or self._stop.wait(delay):
                    return
                delay = min(delay * 2, 30.0)
        self._acknowledge(batch, result)

    # ------------------------------------------------------- worker-process mode (≥ 1)

    def _start_workers(self) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        config = self.settings.model_dump()
        for i in range(self.workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker_main,
                args=(child, self.db.url, config, i == 0, self.tick_s),
                name=f"cityops-ingest-{i}",
                daemon=True,
            )
            proc.start()
            child.close()
            self._workers.append(_Worker(i, proc, parent))
        # Subscribe only once every worker has loaded the registry and the sensors' states: a
        # cold worker would hold its first batch for seconds, and the broker's window of
        # unacknowledged messages (receive maximum) would fill meanwhile.
        for w in self._workers:
            if not w.conn.poll(120):
                raise RuntimeError(f"ingest worker {w.index} did not start within 120 s")
            kind, detail = w.conn.recv()
            if kind != "ready":
                raise RuntimeError(f"ingest worker {w.index} failed to start: {detail}")

    def _route(self, m: _Msg) -> None:
        # One sensor (topic) always goes to the same worker, so its readings stay in order.
        w = self._routes.get(m.topic)
        if w is None:
            if len(self._routes) > 1_000_000:
                self._routes.clear()
            key = m.topic.rsplit("/", 1)[-1].encode()
            w = self._routes[m.topic] = self._workers[zlib.crc32(key) % len(self._workers)]
        w.buffer.append(m)

    def _dispatch(self) -> None:
        """Receive → route by sensor → one batch in flight per worker → ack after its commit.

        A worker that is busy keeps collecting, so batches grow with the load and shrink when
        it is light (latency is then the batch wait plus one commit)."""
        from multiprocessing.connection import wait as mp_wait

        batch_max = self.settings.lifeline_batch_max
        wait_s = self.settings.lifeline_batch_wait_ms / 1000.0
        deadline: float | None = None
        inbox = self._inbox
        while True:
            moved = 0
            while inbox and moved < 100_000:
                self._route(inbox.popleft())
                moved += 1
            by_conn = {w.conn: w for w in self._workers if w.in_flight is not None and not w.failed}
            for conn in mp_wait(list(by_conn), timeout=0) if by_conn else []:
                self._result(by_conn[conn])
            now = time.monotonic()
            stopping = self._stop.is_set()
            for w in self._workers:
                if w.in_flight is not None:
                    if w.failed and now >= w.retry_at:
                        self._send(w, w.in_flight)
                    continue
                if w.buffer and (
                    stopping or len(w.buffer) >= batch_max or now - w.buffer[0].monotonic >= wait_s
                ):
                    batch, w.buffer = w.buffer[:batch_max], w.buffer[batch_max:]
                    self._send(w, batch)
            if stopping:
                deadline = deadline or now + 30.0
                pending = any(w.buffer or w.in_flight for w in self._workers)
                if (not pending and not inbox) or now > deadline:
                    return
            if moved < 500:
                # Little arrived: sleep a moment instead of spinning (the interpreter lock is
                # shared with paho's network thread, which must keep reading the socket).
                time.sleep(0.002)

    def _send(self, w: _Worker, batch: list[_Msg]) -> None:
        w.in_flight = batch
        w.failed = False
        try:
            w.conn.send([(m.topic, m.payload) for m in batch])
        except (OSError, EOFError, BrokenPipeError):
            self._restart(w)

    def _result(self, w: _Worker) -> None:
        try:
            kind, payload = w.conn.recv()
        except (EOFError, OSError):
            self._restart(w)
            return
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
        import multiprocessing as mp

        log.error("ingest worker %d died; restarting it", w.index)
        with contextlib.suppress(Exception):
            w.process.kill()
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=_worker_main,
            args=(child, self.db.url, self.settings.model_dump(), w.index == 0, self.tick_s),
            name=f"cityops-ingest-{w.index}",
            daemon=True,
        )
        proc.start()
        child.close()
        w.process, w.conn = proc, parent
        if w.in_flight is not None:
            w.failed = True
            w.retry_at = time.monotonic() + 1.0


@dataclass
class _Worker:
    index: int
    process: Any
    conn: Any
    buffer: list[_Msg] = field(default_factory=list)
    in_flight: list[_Msg] | None = None
    failed: bool = False
    retry_at: float = 0.0
    delay: float = 0.5


def _worker_main(conn: Any, url: str, config: dict[str, Any], ticks: bool, tick_s: float) -> None:
    """A worker process: receive batches, run them through the pipeline, answer done/failed."""
    import signal

    # The receiver decides when to stop (it finishes the batches in hand first).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    db = Database(url)
    settings = LifelineSettings(**config)
    pipeline = Pipeline(db, settings)
    try:
        pipeline.warm_up()
    except Exception as exc:  # the receiver reports it and stops
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    last_tick = time.monotonic()
    last_parts = time.monotonic()
    try:
        while True:
            if conn.poll(1.0):
                try:
                    batch = conn.recv()
                except EOFError:
                    return
                if batch is None:
                    return
                try:
                    result = pipeline.process_messages(batch)
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
        db.dispose()
