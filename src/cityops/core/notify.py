"""Notice senders behind one interface: webhooks, e-mail, SMS (DESIGN §1.5, issue 3 §4).

Senders are called by outbox consumers (:mod:`cityops.core.events`), never inside a request:
a message goes out at least once, and each carries the outbox event's ``uid`` so that the
receiver can drop a repeat — webhook and SMS gateway header ``X-Cityops-Event-Id`` (and
``event_id`` in the SMS gateway's JSON), e-mail ``Message-ID: <uid@from-domain>`` and
``X-Cityops-Event-Id``. A sender raises on failure (:class:`NotifyError`, or ``ValueError``
for a setting that cannot work); the outbox then retries with back-off and records the error.

Webhook and SMS gateway bodies are signed: ``X-Cityops-Signature: sha256=<HMAC-SHA256 of the
body>`` with the shared secret, so a receiver can tell cityops from anyone else who knows its
URL. The SMS gateway contract (what a city's adapter to Aliyun, Tencent Cloud or a carrier
receives) is in docs/cases.md, "Notices".

:func:`sender_for` picks the sender of a person channel: one installed with
:func:`set_sender` (tests, the demo), else the real one when its setting is set
(``CITYOPS_SMTP_URL``, ``CITYOPS_SMS_GATEWAY_URL``), else :class:`LogSender`.

Error texts end up in the outbox's ``last_error`` and the log, so they never carry a password,
and recipients' addresses are masked in them (reporters' contacts are encrypted at rest).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import smtplib
import ssl
import threading
from dataclasses import dataclass, field
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from typing import Any, Protocol
from urllib.parse import SplitResult, unquote, urlsplit

import httpx

from cityops.settings import get_settings

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


class NotifyError(RuntimeError):
    """A notice could not be delivered; the outbox retries it with back-off."""


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def mask_address(to: str) -> str:
    """``z***@example.cn``, ``138****5678``: enough to tell notices apart in a log."""
    if "@" in to:
        local, _, domain = to.rpartition("@")
        return f"{local[:1]}***@{domain}"
    if len(to) >= 7:
        return f"{to[:3]}****{to[-4:]}"
    return "****"


def _scrub(text: str, to: str) -> str:
    """An error text without the recipient's address in it (servers often echo it)."""
    return text.replace(to, mask_address(to)) if to else text


def _redacted(url: str) -> str:
    """A URL as given, its password replaced by ``***``."""
    return re.sub(r"//([^/@:]*):[^/@]*@", r"//\1:***@", url)


def _where(parts: SplitResult) -> str:
    """A URL without its user, password, query and fragment: safe to log."""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def post_signed(
    url: str, body: bytes, message: Message, secret: str | None, timeout: float
) -> httpx.Response:
    """POST a JSON body with the event's id and kind as headers and, given a secret, its
    ``X-Cityops-Signature`` (webhooks and the SMS gateway share the scheme)."""
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "X-Cityops-Event-Id": message.event_id,
        "X-Cityops-Event-Kind": message.kind,
    }
    if secret:
        headers["X-Cityops-Signature"] = signature(secret, body)
    return httpx.post(url, content=body, headers=headers, timeout=timeout)


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
        response = post_signed(self.url, body, message, self.secret, self.timeout)
        if not 200 <= response.status_code < 300:
            raise RuntimeError(f"webhook {self.url} answered {response.status_code}")


# ------------------------------------------------------------------------------ e-mail
#: URL scheme → default port. ``smtp``: plain (a local relay); ``smtp+starttls``: upgraded to
#: TLS before anything else is said (submission, 587); ``smtps``: TLS from the start (465).
SMTP_SCHEMES = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}


class EmailSender:
    """Send through an SMTP server (``CITYOPS_SMTP_URL``) with the standard library.

    ``smtp://[user:password@]host[:port]`` (plain), ``smtp+starttls://…`` (port 587 unless
    given; refuses to go on when the server does not offer STARTTLS) or ``smtps://…`` (465);
    user and password are percent-encoded in the URL, and log in only when given. TLS checks
    the server's certificate against the system's CAs (``SSL_CERT_FILE`` names another bundle)
    unless an ``ssl_context`` is passed. One connection per message, ``timeout`` seconds for
    each network step.

    The mail is UTF-8 (subject as RFC 2047 encoded words, body base64 when not ASCII), with
    ``Message-ID: <event id@domain of the From address>`` and ``X-Cityops-Event-Id`` so that a
    mailbox or filter can drop a repeat, and ``Auto-Submitted: auto-generated`` (RFC 3834) so
    that auto-responders stay quiet.
    """

    channel = "email"

    def __init__(
        self,
        url: str,
        sender: str,
        *,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        if scheme not in SMTP_SCHEMES:
            raise ValueError(
                f"CITYOPS_SMTP_URL must start with smtp://, smtp+starttls:// or smtps:// "
                f"(e.g. smtp+starttls://user:password@mail.example.gov.cn:587), "
                f"not {_redacted(url.strip())!r}"
            )
        if not parts.hostname:
            raise ValueError(f"CITYOPS_SMTP_URL names no host: {_redacted(url.strip())!r}")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"CITYOPS_SMTP_URL has an invalid port: {exc}") from None
        self.scheme = scheme
        self.host = parts.hostname
        self.port = port or SMTP_SCHEMES[scheme]
        self.where = f"{scheme}://{self.host}:{self.port}"
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password or "")
        self.timeout = timeout
        self._ssl_context = ssl_context
        name, addr = parseaddr(sender)
        try:
            self.from_address = Address(display_name=name, addr_spec=addr)
        except (ValueError, IndexError, HeaderParseError) as exc:
            raise ValueError(f"CITYOPS_MAIL_FROM is not an e-mail address: {sender!r}") from exc
        if not addr or not self.from_address.domain:
            raise ValueError(f"CITYOPS_MAIL_FROM is not an e-mail address: {sender!r}")

    def compose(self, message: Message) -> EmailMessage:
        """The mail for one notice (what :meth:`send` sends)."""
        to = message.to.strip()
        if not to:
            raise NotifyError("e-mail notice without a recipient address")
        try:
            recipient = Address(addr_spec=to)
        except (ValueError, IndexError, HeaderParseError):
            raise NotifyError(f"not an e-mail address: {mask_address(to)}") from None
        if not recipient.domain:
            raise NotifyError(f"not an e-mail address: {mask_address(to)}")
        mail = EmailMessage()
        mail["From"] = self.from_address
        mail["To"] = recipient
        mail["Subject"] = message.subject
        mail["Date"] = formatdate(usegmt=True)
        mail["Message-ID"] = f"<{message.event_id}@{self.from_address.domain}>"
        mail["X-Cityops-Event-Id"] = message.event_id
        mail["X-Cityops-Event-Kind"] = message.kind
        mail["Auto-Submitted"] = "auto-generated"
        # 8-bit bodies need the server's 8BITMIME: base64 is understood everywhere
        mail.set_content(
            message.body, charset="utf-8", cte=None if message.body.isascii() else "base64"
        )
        return mail

    def _context(self) -> ssl.SSLContext:
        return self._ssl_context or ssl.create_default_context()

    def _connect(self) -> smtplib.SMTP:
        if self.scheme == "smtps":
            return smtplib.SMTP_SSL(
                self.host, self.port, timeout=self.timeout, context=self._context()
            )
        smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        if self.scheme == "smtp+starttls":
            try:
                smtp.ehlo()
                smtp.starttls(context=self._context())
                smtp.ehlo()
            except BaseException:
                smtp.close()
                raise
        return smtp

    def _login(self, smtp: smtplib.SMTP) -> None:
        user, password = self.username or "", self.password
        if (user + password).isascii():
            smtp.login(user, password)
            return
        # smtplib encodes credentials as ASCII; AUTH PLAIN is UTF-8 (RFC 4616): say it directly
        smtp.ehlo_or_helo_if_needed()
        offered = smtp.esmtp_features.get("auth", "").upper().split()
        if "PLAIN" not in offered:
            raise smtplib.SMTPException(
                "a non-ASCII user or password needs AUTH PLAIN, which the server does not offer"
            )
        token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
        code, answer = smtp.docmd("AUTH", "PLAIN " + token.decode("ascii"))
        if code != 235:
            raise smtplib.SMTPAuthenticationError(code, answer)

    def send(self, message: Message) -> None:
        mail = self.compose(message)
        to = message.to.strip()
        try:
            with self._connect() as smtp:
                if self.username is not None:
                    self._login(smtp)
                smtp.send_message(mail, from_addr=self.from_address.addr_spec, to_addrs=[to])
        except smtplib.SMTPAuthenticationError as exc:
            raise NotifyError(
                f"e-mail via {self.where}: login as {self.username!r} refused "
                f"({exc.smtp_code} {_text(exc.smtp_error)})"
            ) from None
        except smtplib.SMTPRecipientsRefused as exc:
            answers = "; ".join(f"{code} {_text(text)}" for code, text in exc.recipients.values())
            raise NotifyError(
                f"e-mail via {self.where}: recipient {mask_address(to)} refused "
                f"({_scrub(answers, to)})"
            ) from None
        except smtplib.SMTPResponseException as exc:
            raise NotifyError(
                f"e-mail via {self.where} failed: "
                f"{exc.smtp_code} {_scrub(_text(exc.smtp_error), to)}"
            ) from None
        except smtplib.SMTPException as exc:  # not supported, disconnected, …
            raise NotifyError(
                f"e-mail via {self.where} failed: {type(exc).__name__}: {_scrub(str(exc), to)}"
            ) from None
        except OSError as exc:  # refused, unreachable, timed out, TLS failures
            raise NotifyError(
                f"e-mail via {self.where}: cannot talk to the server: {type(exc).__name__}: {exc}"
            ) from exc


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# ------------------------------------------------------------------------------ SMS
class SmsSender:
    """POST one SMS as JSON to an operator's gateway (``CITYOPS_SMS_GATEWAY_URL``).

    Providers' own APIs (Aliyun, Tencent Cloud: signed requests, signatures and templates
    approved in advance) sit behind such a gateway — a small adapter the city runs. The body::

        {"event_id": "…", "to": "13812345678", "text": "…", "kind": "case.closed",
         "data": {"case_id": "K7Q3M9XD2H"}}

    with headers ``X-Cityops-Event-Id``, ``X-Cityops-Event-Kind`` and, with a ``secret``
    (``CITYOPS_SMS_GATEWAY_SECRET``), ``X-Cityops-Signature: sha256=<HMAC-SHA256 of the
    body>`` as on webhooks. Any 2xx answer means accepted; anything else, a time-out or no
    connection raises :class:`NotifyError` (retried). User and password in the URL are sent
    as HTTP basic authentication.
    """

    channel = "sms"

    def __init__(self, gateway_url: str, secret: str | None = None, timeout: float = 10.0) -> None:
        parts = urlsplit(gateway_url.strip())
        self.where = _where(parts)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "CITYOPS_SMS_GATEWAY_URL must be an http:// or https:// URL of the SMS "
                f"gateway, not {_redacted(gateway_url.strip())!r}"
            )
        self.gateway_url = gateway_url.strip()
        self.secret = secret
        self.timeout = timeout

    def body(self, message: Message) -> bytes:
        return json.dumps(
            {
                "event_id": message.event_id,
                "to": message.to.strip(),
                "text": message.body,
                "kind": message.kind,
                "data": message.data,
            },
            ensure_ascii=False,
            default=str,
        ).encode()

    def send(self, message: Message) -> None:
        to = message.to.strip()
        if not to:
            raise NotifyError("SMS notice without a phone number")
        try:
            response = post_signed(
                self.gateway_url, self.body(message), message, self.secret, self.timeout
            )
        except httpx.HTTPError as exc:
            raise NotifyError(
                f"SMS gateway {self.where}: no answer: {type(exc).__name__}: {exc}"
            ) from exc
        if not 200 <= response.status_code < 300:
            detail = _scrub(response.text[:200], to).strip()
            raise NotifyError(
                f"SMS gateway {self.where} answered {response.status_code}"
                + (f": {detail}" if detail else "")
            )


# ------------------------------------------------------------------------------ others
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
        log.info(
            "[%s] to %s: %s",
            self.channel,
            mask_address(message.to) if message.to else "-",
            message.subject,
        )


_lock = threading.Lock()
_senders: dict[str, Sender] = {}
_announced: set[str] = set()

#: the setting that turns a person channel's real sender on
SETTING_OF = {"email": "CITYOPS_SMTP_URL", "sms": "CITYOPS_SMS_GATEWAY_URL"}


def set_sender(channel: str, sender: Sender | None) -> None:
    """Install (or with ``None`` remove) the sender of a person channel (``email``, ``sms``);
    an installed sender wins over the settings."""
    with _lock:
        if sender is None:
            _senders.pop(channel, None)
        else:
            _senders[channel] = sender


def _announce(key: str, level: int, text: str, *args: object) -> None:
    """Log a line once per process (per sender configuration)."""
    with _lock:
        if key in _announced:
            return
        _announced.add(key)
    log.log(level, text, *args)


def configured_sender(channel: str) -> EmailSender | SmsSender | None:
    """The real sender of ``channel`` from the settings, ``None`` when its setting is unset;
    ``ValueError`` (naming the setting) when the setting cannot work."""
    settings = get_settings()
    if channel == "email" and settings.smtp_url:
        return EmailSender(settings.smtp_url, settings.mail_from)
    if channel == "sms" and settings.sms_gateway_url:
        return SmsSender(settings.sms_gateway_url, settings.sms_gateway_secret)
    return None


def sender_for(channel: str) -> Sender:
    """The sender of a person channel: installed (:func:`set_sender`), else configured, else
    the log. Read from the settings at each call, so a changed setting takes effect."""
    with _lock:
        found = _senders.get(channel)
    if found is not None:
        return found
    real = configured_sender(channel)
    if real is not None:
        _announce(
            f"{channel} {real.where}", logging.INFO, "%s notices go to %s", channel, real.where
        )
        return real
    if channel in SETTING_OF:
        _announce(
            f"{channel} log",
            logging.WARNING,
            "%s notices go to the log only: %s is not set",
            channel,
            SETTING_OF[channel],
        )
    else:
        _announce(
            f"{channel} log",
            logging.WARNING,
            "no sender for channel %r: its notices go to the log only",
            channel,
        )
    return LogSender(channel)
