"""Notice senders behind one interface: webhooks, e-mail, SMS (DESIGN §1.5, issue 3 §4).

Senders are called by outbox consumers (:mod:`cityops.core.events`), never inside a request:
a message goes out at least once, and each carries the outbox event's ``uid`` (webhook header
``X-Cityops-Event-Id``, e-mail ``Message-ID``, SMS gateway ``id``) so that the receiver can
drop a repeat. A sender raises on failure; the outbox then retries with back-off.

Webhook bodies are signed: ``X-Cityops-Signature: sha256=<HMAC-SHA256 of the body>`` with the
shared secret, so a receiver can tell cityops from anyone else who knows its URL.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import smtplib
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

import httpx

log = logging.getLogger("cityops.notify")


@dataclass(frozen=True)
class Message:
    """One notice. ``to`` is the address for person channels (phone, e-mail)."""

    event_id: str
    kind: str
    subject: str
    body: str
    data: dict[str, Any] = field(default_factory=dict)
    to: str = ""


class Sender(Protocol):
    channel: str

    def send(self, message: Message) -> None: ...


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookSender:
    """POST the message as JSON to one URL; any non-2xx answer is a failure (retried)."""

    channel = "webhook"

    def __init__(self, url: str, secret: str | None = None, timeout: float = 10.0) -> None:
        self.url = url
        self.secret = secret
        self.timeout = timeout

    def send(self, message: Message) -> None:
        body = json.dumps(
            {
                "id": message.event_id,
                "kind": message.kind,
                "subject": message.subject,
                "text": message.body,
                "data": message.data,
            },
            ensure_ascii=False,
            default=str,
        ).encode()
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "X-Cityops-Event-Id": message.event_id,
            "X-Cityops-Event-Kind": message.kind,
        }
        if self.secret:
            headers["X-Cityops-Signature"] = signature(self.secret, body)
        response = httpx.post(self.url, content=body, headers=headers, timeout=self.timeout)
        if not 200 <= response.status_code < 300:
            raise RuntimeError(f"webhook {self.url} answered {response.status_code}")


class EmailSender:
    """Send through an SMTP server given as ``smtp://user:password@host:port`` (``smtps://``
    for TLS)."""

    channel = "email"

    def __init__(self, url: str, sender: str) -> None:
        self.url = urlparse(url)
        self.sender = sender

    def send(self, message: Message) -> None:
        mail = EmailMessage()
        mail["From"] = self.sender
        mail["To"] = message.to
        mail["Subject"] = message.subject
        mail["Message-ID"] = f"<{message.event_id}@cityops>"
        mail.set_content(message.body)
        host, port = self.url.hostname or "localhost", self.url.port
        smtp_cls = smtplib.SMTP_SSL if self.url.scheme == "smtps" else smtplib.SMTP
        with smtp_cls(host, port or (465 if self.url.scheme == "smtps" else 25)) as smtp:
            if self.url.username:
                smtp.login(unquote(self.url.username), unquote(self.url.password or ""))
            smtp.send_message(mail)


class SmsSender:
    """Post ``{"id", "to", "text"}`` to an SMS gateway. Carriers' own APIs (signed requests,
    templates approved in advance) sit behind such a gateway or a subclass of this one."""

    channel = "sms"

    def __init__(self, gateway_url: str, timeout: float = 10.0) -> None:
        self.gateway_url = gateway_url
        self.timeout = timeout

    def send(self, message: Message) -> None:
        response = httpx.post(
            self.gateway_url,
            json={"id": message.event_id, "to": message.to, "text": message.body},
            timeout=self.timeout,
        )
        if not 200 <= response.status_code < 300:
            raise RuntimeError(f"SMS gateway answered {response.status_code}")


class MemorySender:
    """Keeps messages in a list (tests, the demo)."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.sent: list[Message] = []
        self._lock = threading.Lock()

    def send(self, message: Message) -> None:
        with self._lock:
            self.sent.append(message)


class LogSender:
    """Writes the message to the log: the default where no real channel is configured."""

    def __init__(self, channel: str) -> None:
        self.channel = channel

    def send(self, message: Message) -> None:
        log.info("[%s] to %s: %s", self.channel, message.to or "-", message.subject)


_lock = threading.Lock()
_senders: dict[str, Sender] = {}


def set_sender(channel: str, sender: Sender | None) -> None:
    """Install (or with ``None`` remove) the sender of a person channel (``email``, ``sms``)."""
    with _lock:
        if sender is None:
            _senders.pop(channel, None)
        else:
            _senders[channel] = sender


def sender_for(channel: str) -> Sender:
    with _lock:
        found = _senders.get(channel)
    return found if found is not None else LogSender(channel)
