"""Every ``CITYOPS_*`` setting, documented in one place (pydantic-settings).

Nothing reads ``os.environ`` elsewhere: a reader of this file knows every knob.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DB_URL = "sqlite:///./cityops.db"
DEMO_DB_URL = "sqlite:///./cityops-demo.db"


class Settings(BaseSettings):
    """Platform settings; each field is read from ``CITYOPS_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="CITYOPS_", extra="ignore")

    database_url: str = Field(
        DEFAULT_DB_URL,
        description="SQLAlchemy URL: sqlite:///path.db (embedded) or postgresql://… (PostGIS).",
    )
    secret_key: str | None = Field(
        None,
        description="Signing key for bearer tokens. Unset: a random key is generated once and "
        "kept in the database, so every process that shares the database shares the key.",
    )
    token_minutes: int = Field(480, description="Lifetime of a bearer token, minutes.")
    rules_dir: Path | None = Field(
        None, description="A city's own rule files; each file here overrides the default one."
    )
    city_crs: str | None = Field(
        None,
        description="Metric CRS for areas and distances (e.g. EPSG:4547, CGCS2000 / 3-degree "
        "Gauss-Kruger CM 114E). Unset: the UTM zone of the data's centre.",
    )
    public_collections: str = Field(
        "areas,grids,buildings,roads,components,pois,shelters",
        description="OGC API collections readable without signing in (comma-separated; "
        "'*' for all, '' for none). Others need a bearer token.",
    )
    no_browser: bool = Field(False, description="`cityops demo` does not open a browser.")
    page_max: int = Field(1000, description="Largest page a client may ask for (limit).")

    # ------------------------------------------------------------------ the demo's simulator
    simulate: bool = Field(
        True,
        description="`cityops demo` runs the lifeline simulator inside its server so the map is "
        "alive (readings, injected incidents, alarms). Only ever on a database that `cityops "
        "demo` created (marked in app_state): any other database never gets simulated data, "
        "whatever this says. false: the demo serves its city without the simulator.",
    )
    simulate_speed: float = Field(
        10.0,
        gt=0,
        description="How much faster than real time the demo's sensors report and its injected "
        "incidents unfold (the first incidents raise alarms within a few minutes at 10).",
    )

    # ---------------------------------------------------------------------- the case loop
    attachments_dir: Path | None = Field(
        None,
        description="Directory for case photos (stored outside the database rows, by SHA-256). "
        "Unset: '<database file>.files/' beside an SQLite database, ./cityops-attachments "
        "otherwise.",
    )
    attachment_max_bytes: int = Field(10 * 1024 * 1024, description="Largest photo accepted.")
    contact_key: str | None = Field(
        None,
        description="Fernet key (cryptography) that encrypts reporters' contact details. "
        "Unset: a key generated once and kept in the database's app_state — then a copy of the "
        "database alone decrypts them, so set it in production.",
    )
    webhook_urls: str = Field(
        "", description="Comma-separated URLs that receive every case event (escalations too)."
    )
    webhook_secret: str | None = Field(
        None, description="Shared secret of the X-Cityops-Signature HMAC on webhook bodies."
    )
    sms_gateway_url: str | None = Field(
        None,
        description="SMS notices: an operator's gateway/adapter URL that receives a JSON POST "
        '{"to", "text", "event_id", ...} (docs/cases.md "Notices by e-mail and SMS"). Unset: SMS '
        "notices go to the log.",
    )
    sms_gateway_secret: str | None = Field(
        None,
        description="Shared secret of the X-Cityops-Signature HMAC on SMS gateway requests "
        "(its own secret, not the webhooks'). Unset: requests are not signed.",
    )
    smtp_url: str | None = Field(
        None,
        description="E-mail notices: smtp://user:pass@host:25, smtp+starttls://…:587 or "
        "smtps://…:465 (user and password percent-encoded). Unset: e-mail to the log.",
    )
    mail_from: str = Field(
        "cityops@localhost",
        description="Sender (From) of e-mails, with a display name if wanted: "
        "'城市运行中心 <ops@example.gov.cn>'. Its domain ends the Message-ID.",
    )
    worker_in_process: str = Field(
        "auto",
        description="Run the outbox/overdue worker inside `cityops serve`: on, off, or auto "
        "(on for SQLite, off for PostgreSQL where `cityops worker` processes run).",
    )
    worker_interval: float = Field(2.0, description="Seconds between worker rounds.")
    stream_poll: float = Field(1.0, description="Seconds between live-feed (SSE) polls.")

    # ------------------------------------------------------------------ lifeline ingest (MQTT)
    mqtt_url: str | None = Field(
        None,
        description="MQTT broker for sensor ingest, mqtt://[user:password@]host[:port]. "
        "Unset: no broker; samples arrive over HTTP or in-process (demo).",
    )
    mqtt_client_id: str = Field(
        "cityops-ingest",
        description="Client id of the ingest consumer: the broker keeps its persistent session "
        "(queued QoS 1 messages) under this id, so every restart must use the same one.",
    )
    mqtt_protocol: int = Field(
        5,
        description="MQTT protocol version of the consumer: 5 (session expiry, receive maximum) "
        "or 4 (3.1.1, clean_session=false).",
    )
    mqtt_session_expiry_s: int = Field(
        7 * 24 * 3600,
        description="MQTT 5 session expiry: how long the broker keeps queued messages for a "
        "consumer that is down.",
    )
    mqtt_receive_maximum: int = Field(
        65535,
        ge=1,
        le=65535,
        description="MQTT 5 receive maximum: unacknowledged QoS 1 messages the broker may have "
        "in flight to the consumer (acknowledged only after the commit, so this bounds a batch).",
    )
    lifeline_city: str = Field(
        "+",
        description="City segment of the ingest topic cityops/{city}/lifeline/{sensor_id}; '+' "
        "subscribes to every city.",
    )
    lifeline_batch_max: int = Field(
        5000, ge=1, description="Most messages committed in one ingest transaction."
    )
    lifeline_batch_wait_ms: int = Field(
        50,
        ge=0,
        description="Longest wait for more messages before committing a batch (adds to the "
        "sample-to-alarm latency; larger batches cost less per message).",
    )
    lifeline_workers: int = Field(
        2,
        ge=0,
        le=64,
        description="Ingest worker processes behind the MQTT receiver (sensors are split between "
        "them by id, so each sensor's readings stay in order); 0 runs the pipeline in a thread "
        "of the receiver (about a quarter of the throughput).",
    )
    lifeline_max_future_s: float = Field(
        300.0,
        description="Readings stamped more than this far ahead of the server clock are refused "
        "(dead letter 'future_timestamp'): device clocks drift, but not by hours.",
    )
    lifeline_anomaly: bool = Field(
        True,
        description="Feed readings to the learned anomaly detector (alarm kind 'anomaly', blue) "
        "when cityops.lifeline.detect provides one.",
    )
    lifeline_anomaly_learning: int = Field(
        2016,
        ge=10,
        description="Learning period of the anomaly detector, in samples of the sensor "
        "(2016 = one week at 5 minutes).",
    )

    def public_collection_set(self) -> set[str] | None:
        """``None`` means every collection is public."""
        text = self.public_collections.strip()
        if text == "*":
            return None
        return {c.strip() for c in text.split(",") if c.strip()}

    def webhooks(self) -> list[str]:
        """The receivers of ``webhook_urls``."""
        return [u.strip() for u in self.webhook_urls.split(",") if u.strip()]


@lru_cache
def get_settings() -> Settings:
    return Settings()


def parse_mqtt_url(url: str) -> tuple[str, int, str | None, str | None]:
    """``mqtt://user:pw@host:port`` → (host, port, user, password); port 1883 by default."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "tcp"):
        raise ValueError(f"MQTT URL {url!r}: use mqtt://host:port (TLS is not supported yet)")
    if not parts.hostname:
        raise ValueError(f"MQTT URL {url!r} has no host: use mqtt://host:port")
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return parts.hostname, parts.port or 1883, user, password
