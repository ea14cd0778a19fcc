"""A paho-mqtt 2 client fast enough to consume 20,000 QoS 1 messages a second on a small machine.

paho-mqtt's receive path costs ~150 µs of Python per message: it reads each packet's fixed
header with one-byte ``recv()`` calls and runs one ``select()`` per packet, builds an MQTT 5
``Properties`` object for every PUBLISH (with dictionaries of all property names), and sends
each PUBACK with two system calls. A consumer that acknowledges after its commit then falls
behind, the broker's queue for it fills, and Mosquitto drops QoS 1 messages beyond
``max_queued_messages``. This subclass keeps paho for everything that matters (connection,
session, reconnects, keep-alive, subscriptions, QoS 2, every packet other than a plain PUBLISH)
and only short-cuts the hot path:

* the socket is wrapped in a read buffer filled with large non-blocking reads;
* **bulk mode** (:attr:`FastClient.on_publish_block` set): ``loop_read`` drains the socket and
  hands the buffer to that callback, which consumes every complete QoS 0/1 PUBLISH at the front
  in one pass (no per-packet paho machinery, no per-message Python objects: the consumer keeps
  the raw packets and hands them on in bulk) and returns where it stopped; whatever else is at
  the front (CONNACK, SUBACK, PINGRESP, a QoS 2 PUBLISH) goes through paho's own reader;
* otherwise a PUBLISH with QoS 0 or 1 is decoded in a few lines and handed to
  :attr:`FastClient.on_fast_message` as ``(topic, mid, qos, payload)``;
* :meth:`FastClient.ack_many` / :meth:`FastClient.send_acks` queue many PUBACKs as one write.

It overrides private methods of paho-mqtt 2.x (``_create_socket``, ``_handle_publish``,
``_packet_read``/``_in_packet``, ``_packet_queue``); ``pyproject`` pins ``paho-mqtt>=2,<3`` and
the MQTT tests exercise it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

_PUBACK = 0x40
_READ_CHUNK = 262_144
#: Packets handled per ``loop_read`` before paho's loop gets a turn to write (PUBACKs, pings)
#: when messages arrive one by one (``on_fast_message`` mode).
_DRAIN_PACKETS = 4096
#: Socket reads per ``loop_read`` in bulk mode before paho's loop gets a turn to write.
_DRAIN_READS = 8


def publish_end(buf: bytearray | bytes, pos: int, end: int) -> int:
    """If a complete PUBLISH with QoS 0 or 1 starts at ``pos``: the position after it; else
    -1 (another packet type, QoS 2, or not all of it received yet)."""
    if pos + 1 >= end or buf[pos] & 0xF4 != 0x30:
        return -1
    b = buf[pos + 1]
    if b < 128:
        stop = pos + 2 + b
    else:
        rl, mult, i = b & 127, 128, pos + 2
        while True:
            if i >= end or i - pos > 4:
                return -1
            b = buf[i]
            rl += (b & 127) * mult
            mult *= 128
            i += 1
            if b < 128:
                break
        stop = i + rl
    return stop if stop <= end else -1


class _BufferedSocket:
    """A non-blocking socket read in large chunks; small reads are served from memory."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        #: bulk mode: complete packets are left in the buffer (``loop_read`` stopped early)
        self.more = False

    def fill(self) -> int:
        """One non-blocking read into the buffer: bytes read (0: none waiting, -1: closed)."""
        if self._eof:
            return -1
        try:
            data: bytes = self._sock.recv(_READ_CHUNK)
        except BlockingIOError:
            return 0
        except OSError:  # reset by the broker: paho reads what is left, then sees the end
            self._eof = True
            return -1
        if not data:
            self._eof = True
            return -1
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data
        return len(data)

    def recv(self, n: int) -> bytes:
        avail = len(self._buf) - self._pos
        if avail < n and not self._eof:
            if self._pos:
                del self._buf[: self._pos]
                self._pos = 0
            try:
                data: bytes | None = self._sock.recv(_READ_CHUNK)
            except BlockingIOError:
                if avail == 0:
                    raise
                data = None
            if data is not None:
                if data:
                    self._buf += data
                else:
                    self._eof = True
            avail = len(self._buf) - self._pos
        if avail == 0:
            return b""  # end of stream: paho treats it as a lost connection
        k = min(n, avail)
        out = bytes(self._buf[self._pos : self._pos + k])
        self._pos += k
        return out

    def pending(self) -> int:
        # paho skips select() while this is non-zero. In bulk mode only complete packets left
        # behind count (an incomplete one needs the socket); otherwise every buffered byte.
        if self.more:
            return 1
        return 0 if _bulk_mode(self) else len(self._buf) - self._pos

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _bulk_mode(sock: _BufferedSocket) -> bool:
    return getattr(sock, "bulk", False)


class FastClient(mqtt.Client):
    """:class:`paho.mqtt.client.Client` with a fast receive and acknowledge path."""

    #: ``callback(topic, mid, qos, payload)`` for plain QoS 0/1 PUBLISH packets; when unset,
    #: every message goes through paho's ``on_message``.
    on_fast_message: Callable[[str, int, int, bytes], None] | None = None
    #: Bulk mode: ``callback(buffer, start, end) -> stop``, called in the network thread with
    #: received bytes; it consumes the complete QoS 0/1 PUBLISH packets from ``start`` on (see
    #: :func:`publish_end`) and returns the position of the first byte it did not consume. It
    #: must not keep a reference to ``buffer`` (the client reuses it).
    on_publish_block: Callable[[bytearray, int, int], int] | None = None

    def _create_socket(self) -> Any:
        sock = _BufferedSocket(super()._create_socket())
        sock.bulk = self.on_publish_block is not None  # type: ignore[attr-defined]
        return sock

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        sock: Any = self._sock
        take = self.on_publish_block
        if take is None or not isinstance(sock, _BufferedSocket):
            rc = super().loop_read(max_packets)
            for _ in range(_DRAIN_PACKETS):
                sock = self._sock
                if rc or sock is None or not sock.pending():
                    break
                rc = super().loop_read(max_packets)
            return rc
        return self._bulk_read(sock, take)

    def _bulk_read(
        self, sock: _BufferedSocket, take: Callable[[bytearray, int, int], int]
    ) -> MQTTErrorCode:
        sock.more = False
        reads = 0
        while True:
            if self._in_packet["command"]:
                # paho is in the middle of a packet of its own: let it finish it
                rc = self._packet_read()
                if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                    return MQTTErrorCode.MQTT_ERR_SUCCESS
                if rc > 0:
                    return self._loop_rc_handle(rc)
                if self._sock is not sock:
                    return MQTTErrorCode.MQTT_ERR_SUCCESS
                continue
            buf, pos = sock._buf, sock._pos
            end = len(buf)
            if pos < end:
                stop = take(buf, pos, end)
                if stop != pos:
                    sock._pos = pos = stop
                    with self._msgtime_mutex:
                        self._last_bytes_received = mqtt.time_func()
                if pos < end and publish_end(buf, pos, end) < 0 and _complete(buf, pos, end):
                    # a packet paho handles itself (CONNACK, SUBACK, PINGRESP, QoS 2 …)
                    rc = self._packet_read()
                    if rc > 0:
                        return self._loop_rc_handle(rc)
                    if self._sock is not sock:
                        return MQTTErrorCode.MQTT_ERR_SUCCESS
                    continue
            if reads >= _DRAIN_READS:
                sock.more = _complete(sock._buf, sock._pos, len(sock._buf))
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            got = sock.fill()
            reads += 1
            if got == 0:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            if got < 0:
                # closed: paho reads what is left and reports the lost connection
                rc = self._packet_read()
                return self._loop_rc_handle(rc) if rc > 0 else rc

    def _handle_publish(self) -> MQTTErrorCode:
        callback = self.on_fast_message
        header = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        if callback is None or qos == 2:
            return super()._handle_publish()
        packet = self._in_packet["packet"]
        (tlen,) = struct.unpack_from("!H", packet, 0)
        pos = 2 + tlen
        topic = bytes(packet[2:pos])
        mid = 0
        if qos:
            (mid,) = struct.unpack_from("!H", packet, pos)
            pos += 2
        if self._protocol == mqtt.MQTTv5:
            if pos >= len(packet) or packet[pos] != 0:
                return super()._handle_publish()  # properties present: paho decodes them
            pos += 1
        try:
            text = topic.decode("utf-8")
        except UnicodeDecodeError:
            return super()._handle_publish()
        callback(text, mid, qos, bytes(packet[pos:]))
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack_many(self, mids: Iterable[int]) -> MQTTErrorCode:
        """Acknowledge many QoS 1 messages with one write (manual-ack mode)."""
        blob = b"".join(struct.pack("!BBH", _PUBACK, 2, mid) for mid in mids)
        return self.send_acks(blob)

    def send_acks(self, blob: bytes | bytearray) -> MQTTErrorCode:
        """Queue PUBACK packets already built (``0x40 0x02 <mid>`` each) as one write."""
        if not blob:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return self._packet_queue(_PUBACK, bytes(blob), 0, 0)


def _complete(buf: bytearray, pos: int, end: int) -> bool:
    """A whole MQTT packet (any type) is buffered at ``pos``."""
    i, rl, mult = pos + 1, 0, 1
    while True:
        if i >= end or i - pos > 4:
            return False
        b = buf[i]
        rl += (b & 127) * mult
        mult *= 128
        i += 1
        if b < 128:
            return i + rl <= end
