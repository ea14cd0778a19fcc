"""Notice senders against real servers in the test process (core/notify.py).

* e-mail: an ``aiosmtpd`` SMTP server on 127.0.0.1 — plain, STARTTLS with login, SMTPS — with
  a self-signed certificate the sender is told to trust;
* SMS: a plain ``http.server`` as the operator's gateway, checking the JSON and the HMAC;
* failures (no server, a 500, a refused recipient, a bad URL) raise clear errors that carry
  neither passwords nor recipients' addresses;
* end to end: a reporter's e-mail notice when the case closes, through the outbox — first
  failing (no server: recorded, retried), then delivered once.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import http.server
import ipaddress
import json
import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from cityops.core import notify
from cityops.core.notify import EmailSender, Message, NotifyError, SmsSender

pytest.importorskip("aiosmtpd", reason="aiosmtpd is in the dev extra: pip install -e .[dev]")

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

FROM = "城市运行中心 <ops@city.example.cn>"
SUBJECT = "案件 K7Q3M9XD2H 已结案 / case closed"
BODY = "您反映的问题（案件 K7Q3M9XD2H）已处理完毕并结案。\nYour report has been resolved."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def notice(to: str = "xiaoming@example.cn", event_id: str = "0f3c9a7be41d4d0e") -> Message:
    return Message(
        event_id=event_id,
        kind="case.closed",
        subject=SUBJECT,
        body=BODY,
        data={"case_id": "K7Q3M9XD2H"},
        to=to,
    )


@pytest.fixture(autouse=True)
def _settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from cityops.settings import get_settings

    for name in (
        "CITYOPS_SMTP_URL",
        "CITYOPS_MAIL_FROM",
        "CITYOPS_SMS_GATEWAY_URL",
        "CITYOPS_SMS_GATEWAY_SECRET",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CITYOPS_WORKER_IN_PROCESS", "off")
    monkeypatch.setattr(notify, "_announced", set())
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


# ------------------------------------------------------------------------------ SMTP server
class Inbox:
    """aiosmtpd handler: keeps every mail; refuses the recipients in ``refuse``."""

    def __init__(self) -> None:
        self.mails: list[tuple[str, list[str], bytes]] = []
        self.logins: list[tuple[str, str]] = []
        self.refuse: set[str] = set()

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address in self.refuse:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted for delivery"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        user, password = data.login.decode(), data.password.decode()
        self.logins.append((user, password))
        return AuthResult(success=(user, password) == ("ops@city", "p@ss wörd/1"), handled=False)

    def parsed(self, n: int = -1) -> email.message.EmailMessage:
        msg = email.message_from_bytes(self.mails[n][2], policy=email.policy.default)
        assert isinstance(msg, email.message.EmailMessage)
        return msg


class SmtpServer:
    def __init__(self, inbox: Inbox, port: int) -> None:
        self.inbox = inbox
        self.port = port


def _serve(inbox: Inbox, **kw: Any) -> Iterator[SmtpServer]:
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, **kw)
    controller.start()
    try:
        yield SmtpServer(inbox, port)
    finally:
        controller.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    """A plain SMTP server (a local relay: no TLS, no login)."""
    yield from _serve(Inbox())


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1: (server context, client context trusting it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cityops test SMTP")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


# ------------------------------------------------------------------------------ e-mail
def test_a_chinese_notice_arrives_with_from_to_subject_and_event_id(smtp: SmtpServer) -> None:
    sender = EmailSender(f"smtp://127.0.0.1:{smtp.port}", FROM)
    sender.send(notice())

    assert len(smtp.inbox.mails) == 1
    mail_from, rcpt, raw = smtp.inbox.mails[0]
    assert (mail_from, rcpt) == ("ops@city.example.cn", ["xiaoming@example.cn"])
    assert raw.isascii()  # 7-bit clean: no server needs 8BITMIME or SMTPUTF8
    msg = smtp.inbox.parsed()
    assert msg["Subject"] == SUBJECT
    assert msg["From"].addresses[0].display_name == "城市运行中心"
    assert msg["From"].addresses[0].addr_spec == "ops@city.example.cn"
    assert msg["To"].addresses[0].addr_spec == "xiaoming@example.cn"
    # receivers drop repeats (at-least-once delivery) by the outbox event's id
    assert msg["Message-ID"] == "<0f3c9a7be41d4d0e@city.example.cn>"
    assert msg["X-Cityops-Event-Id"] == "0f3c9a7be41d4d0e"
    assert msg["X-Cityops-Event-Kind"] == "case.closed"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Date"]
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content_charset() == "utf-8"
    assert msg.get_content().rstrip("\n") == BODY


def test_the_same_event_sent_twice_keeps_its_message_id(smtp: SmtpServer) -> None:
    sender = EmailSender(f"smtp://127.0.0.1:{smtp.port}", "cityops@city.example.cn")
    sender.send(notice())
    sender.send(notice())  # a retry after a crash between sending and acknowledging
    ids = {smtp.inbox.parsed(i)["Message-ID"] for i in range(2)}
    assert ids == {"<0f3c9a7be41d4d0e@city.example.cn>"}


def test_starttls_with_login(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls
    inbox = Inbox()
    for server in _serve(
        inbox,
        tls_context=server_ctx,
        require_starttls=True,
        auth_required=True,
        authenticator=inbox.authenticate,
    ):
        # user and password percent-encoded in the URL
        url = f"smtp+starttls://ops%40city:p%40ss%20w%C3%B6rd%2F1@127.0.0.1:{server.port}"
        EmailSender(url, FROM, ssl_context=client_ctx).send(notice())
        assert inbox.logins == [("ops@city", "p@ss wörd/1")]
        assert inbox.parsed()["Subject"] == SUBJECT

        bad = f"smtp+starttls://ops%40city:wrong-secret@127.0.0.1:{server.port}"
        with pytest.raises(NotifyError, match="login as 'ops@city' refused") as info:
            EmailSender(bad, FROM, ssl_context=client_ctx).send(notice())
        assert "wrong-secret" not in str(info.value)
        assert len(inbox.mails) == 1


def test_starttls_refuses_an_untrusted_certificate(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, _ = tls
    for server in _serve(Inbox(), tls_context=server_ctx, require_starttls=True):
        sender = EmailSender(f"smtp+starttls://127.0.0.1:{server.port}", FROM)  # system CAs
        with pytest.raises(NotifyError, match="cannot talk to the server: SSLCertVerification"):
            sender.send(notice())
        assert server.inbox.mails == []


def test_starttls_not_offered_is_an_error(smtp: SmtpServer) -> None:
    sender = EmailSender(f"smtp+starttls://127.0.0.1:{smtp.port}", FROM)
    with pytest.raises(NotifyError, match="STARTTLS"):
        sender.send(notice())
    assert smtp.inbox.mails == []


def test_smtps(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls
    for server in _serve(Inbox(), ssl_context=server_ctx):
        EmailSender(f"smtps://127.0.0.1:{server.port}", FROM, ssl_context=client_ctx).send(notice())
        assert server.inbox.parsed()["X-Cityops-Event-Id"] == "0f3c9a7be41d4d0e"


def test_connection_refused_raises_for_a_retry() -> None:
    port = free_port()  # nothing listens there
    sender = EmailSender(f"smtp://ops:secret-pw@127.0.0.1:{port}", FROM, timeout=5)
    with pytest.raises(NotifyError) as info:
        sender.send(notice())
    text = str(info.value)
    assert f"smtp://127.0.0.1:{port}" in text and "ConnectionRefusedError" in text
    assert "secret-pw" not in text


def test_a_refused_recipient_is_masked_in_the_error(smtp: SmtpServer) -> None:
    smtp.inbox.refuse.add("xiaoming@example.cn")
    sender = EmailSender(f"smtp://127.0.0.1:{smtp.port}", FROM)
    with pytest.raises(NotifyError, match=r"x\*\*\*@example\.cn refused") as info:
        sender.send(notice())
    assert "550" in str(info.value) and "xiaoming" not in str(info.value)
    assert smtp.inbox.mails == []


@pytest.mark.parametrize(
    "url",
    [
        "http://ops:secret@mail.example.cn",
        "mailto:ops@example.cn",
        "mail.example.cn:25",
        "smtp+ssl://ops:secret@h:465",
    ],
)
def test_a_bad_smtp_url_names_the_setting(url: str) -> None:
    with pytest.raises(ValueError, match="CITYOPS_SMTP_URL must start with smtp://") as info:
        EmailSender(url, FROM)
    assert "secret" not in str(info.value)


def test_other_bad_settings() -> None:
    with pytest.raises(ValueError, match="CITYOPS_SMTP_URL names no host"):
        EmailSender("smtp://", FROM)
    with pytest.raises(ValueError, match="CITYOPS_SMTP_URL has an invalid port"):
        EmailSender("smtp://host:99999", FROM)
    with pytest.raises(ValueError, match="CITYOPS_MAIL_FROM"):
        EmailSender("smtp://host", "not an address")
    with pytest.raises(NotifyError, match="without a recipient"):
        EmailSender("smtp://host", FROM).send(notice(to=""))
    with pytest.raises(NotifyError, match="not an e-mail address"):
        EmailSender("smtp://host", FROM).send(notice(to="no-at-sign"))


def test_default_ports() -> None:
    assert EmailSender("smtp://h", FROM).port == 25
    assert EmailSender("smtp+starttls://h", FROM).port == 587
    assert EmailSender("SMTPS://u:p@h", FROM).port == 465
    assert EmailSender("smtps://u:p@h:2465", FROM).where == "smtps://h:2465"


# ------------------------------------------------------------------------------ SMS gateway
class Gateway:
    """An operator's SMS gateway: records requests, answers ``status``."""

    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, str], bytes]] = []
        self.status = 200
        gateway = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                gateway.got.append((self.path, dict(self.headers.items()), body))
                answer = b'{"ok": true}' if gateway.status < 300 else b"bad number 13812345678"
                self.send_response(gateway.status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/sms/send"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    g = Gateway()
    yield g
    g.close()


def test_sms_gateway_gets_signed_json(gateway: Gateway) -> None:
    SmsSender(gateway.url, "gw-secret").send(notice(to="13812345678"))
    [(path, headers, body)] = gateway.got
    assert path == "/sms/send"
    assert json.loads(body) == {
        "event_id": "0f3c9a7be41d4d0e",
        "to": "13812345678",
        "text": BODY,
        "kind": "case.closed",
        "data": {"case_id": "K7Q3M9XD2H"},
    }
    assert "已处理完毕".encode() in body  # UTF-8, not \u escapes
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert headers["X-Cityops-Event-Id"] == "0f3c9a7be41d4d0e"
    assert headers["X-Cityops-Event-Kind"] == "case.closed"
    # the webhooks' scheme: HMAC-SHA256 of the exact body bytes with the shared secret
    import hashlib
    import hmac

    expected = "sha256=" + hmac.new(b"gw-secret", body, hashlib.sha256).hexdigest()
    assert headers["X-Cityops-Signature"] == expected == notify.signature("gw-secret", body)


def test_sms_without_a_secret_is_not_signed(gateway: Gateway) -> None:
    SmsSender(gateway.url).send(notice(to="13812345678"))
    assert "X-Cityops-Signature" not in gateway.got[0][1]


def test_sms_gateway_user_and_password_go_as_basic_auth(gateway: Gateway) -> None:
    import base64

    url = gateway.url.replace("http://", "http://cityops:p%40ss@")
    sender = SmsSender(url)
    assert "p%40ss" not in sender.where and "cityops" not in sender.where
    sender.send(notice(to="13812345678"))
    assert gateway.got[0][1]["Authorization"] == "Basic " + base64.b64encode(
        b"cityops:p@ss"
    ).decode("ascii")


def test_sms_gateway_500_raises_without_the_number(gateway: Gateway) -> None:
    gateway.status = 500
    with pytest.raises(NotifyError, match="answered 500") as info:
        SmsSender(gateway.url).send(notice(to="13812345678"))
    assert "13812345678" not in str(info.value) and "138****5678" in str(info.value)


def test_sms_gateway_unreachable_raises() -> None:
    url = f"http://127.0.0.1:{free_port()}/sms"
    with pytest.raises(NotifyError, match="no answer: ConnectError"):
        SmsSender(url, timeout=5).send(notice(to="13812345678"))


def test_sms_bad_settings() -> None:
    with pytest.raises(ValueError, match="CITYOPS_SMS_GATEWAY_URL"):
        SmsSender("ftp://gw.example.cn/sms")
    with pytest.raises(ValueError, match="CITYOPS_SMS_GATEWAY_URL"):
        SmsSender("gw.example.cn/sms")
    with pytest.raises(NotifyError, match="without a phone number"):
        SmsSender("http://gw.example.cn/sms").send(notice(to=""))


# ------------------------------------------------------------------------------ sender_for
def test_sender_for_follows_the_settings(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from cityops.settings import get_settings

    caplog.set_level(logging.INFO, logger="cityops.notify")
    assert isinstance(notify.sender_for("email"), notify.LogSender)
    assert isinstance(notify.sender_for("email"), notify.LogSender)
    assert isinstance(notify.sender_for("sms"), notify.LogSender)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "email notices go to the log only: CITYOPS_SMTP_URL is not set",
        "sms notices go to the log only: CITYOPS_SMS_GATEWAY_URL is not set",
    ]  # once each

    monkeypatch.setenv("CITYOPS_SMTP_URL", "smtp+starttls://u:pw@mail.example.cn")
    monkeypatch.setenv("CITYOPS_MAIL_FROM", "ops@city.example.cn")
    monkeypatch.setenv("CITYOPS_SMS_GATEWAY_URL", "https://sms-gw.example.cn/send")
    monkeypatch.setenv("CITYOPS_SMS_GATEWAY_SECRET", "s3")
    get_settings.cache_clear()
    mail = notify.sender_for("email")
    assert isinstance(mail, EmailSender)
    assert (mail.where, mail.from_address.addr_spec) == (
        "smtp+starttls://mail.example.cn:587",
        "ops@city.example.cn",
    )
    sms = notify.sender_for("sms")
    assert isinstance(sms, SmsSender) and sms.secret == "s3"
    assert "email notices go to smtp+starttls://mail.example.cn:587" in caplog.text
    assert "pw@" not in caplog.text

    # an installed sender (tests, the demo) wins over the settings
    memory = notify.MemorySender("email")
    notify.set_sender("email", memory)
    try:
        assert notify.sender_for("email") is memory
    finally:
        notify.set_sender("email", None)
    assert isinstance(notify.sender_for("email"), EmailSender)


def test_sender_for_a_bad_setting_raises_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from cityops.settings import get_settings

    monkeypatch.setenv("CITYOPS_SMTP_URL", "mail.example.cn:25")
    get_settings.cache_clear()
    with pytest.raises(ValueError, match="CITYOPS_SMTP_URL"):
        notify.sender_for("email")


def test_the_log_sender_masks_addresses(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cityops.notify")
    notify.LogSender("sms").send(notice(to="13812345678"))
    notify.LogSender("email").send(notice())
    assert "138****5678" in caplog.text and "x***@example.cn" in caplog.text
    assert "13812345678" not in caplog.text and "xiaoming" not in caplog.text


# ------------------------------------------------------------------------------ end to end
@pytest.fixture
def api(client: Any, db: Any) -> Iterator[Any]:
    from cityops.cases import service
    from tests.cases.conftest import Api, Clock, cst_dt, seed_city

    seed_city(db)
    service.clear_caches()
    service.set_clock(Clock(cst_dt(2025, 9, 29, 10, 0)))
    yield Api(client, db)
    service.set_clock(None)
    service.clear_caches()


def test_the_reporter_is_mailed_when_the_case_closes(
    api: Any, db: Any, smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy import select

    from cityops.core import events
    from cityops.core.events import OutboxEvent
    from cityops.settings import get_settings

    # first the mail server is down: the notice fails, is recorded and waits for a retry
    down = free_port()
    monkeypatch.setenv("CITYOPS_SMTP_URL", f"smtp://127.0.0.1:{down}")
    monkeypatch.setenv("CITYOPS_MAIL_FROM", FROM)
    get_settings.cache_clear()

    c = api.report(
        "cit",
        source="online",
        title="井盖破损",
        description="人行道上的井盖裂了",
        reporter={"name": "王小明", "email": "xiaoming@example.cn", "notify": True},
    )
    cid = c["id"]
    api.act("sup", cid, "register")
    api.act("disp", cid, "dispatch")
    api.act("san", cid, "accept")
    api.act("san", cid, "resolve", note="已更换井盖")
    api.act("sup", cid, "close")
    events.drain(db, events.all_handlers(db))
    assert smtp.inbox.mails == []
    with db.read() as s:
        [ev] = s.scalars(select(OutboxEvent).where(OutboxEvent.kind == "notify.reporter"))
        uid, attempts, done, error = ev.uid, ev.attempts, ev.done_at, ev.last_error
    assert (attempts, done) == (1, None)
    assert error.startswith("NotifyError: e-mail via smtp://127.0.0.1:")
    assert "ConnectionRefusedError" in error and "xiaoming" not in error

    # the server is back: the retry (after its back-off) delivers it, once
    monkeypatch.setenv("CITYOPS_SMTP_URL", f"smtp://127.0.0.1:{smtp.port}")
    get_settings.cache_clear()
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    events.drain(db, events.all_handlers(db), now=later)
    assert len(smtp.inbox.mails) == 1
    mail_from, rcpt, _ = smtp.inbox.mails[0]
    assert (mail_from, rcpt) == ("ops@city.example.cn", ["xiaoming@example.cn"])
    msg = smtp.inbox.parsed()
    assert msg["Subject"] == f"案件 {cid} 已结案 / case closed"
    assert msg["X-Cityops-Event-Id"] == uid
    assert msg["Message-ID"] == f"<{uid}@city.example.cn>"
    assert f"您反映的问题（案件 {cid}）已处理完毕并结案。" in msg.get_content()
    with db.read() as s:
        assert s.scalar(select(OutboxEvent.done_at).where(OutboxEvent.uid == uid)) is not None

    events.drain(db, events.all_handlers(db), now=later + dt.timedelta(hours=1))
    assert len(smtp.inbox.mails) == 1  # acknowledged: not sent again
