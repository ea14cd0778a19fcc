"""Settings of lifeline ingest (``CITYOPS_*``), kept beside the domain until the lead folds them
into :mod:`cityops.settings` (one pydantic-settings class, read once through
:func:`get_lifeline_settings`)."""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import unquote, urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class LifelineSettings(BaseSettings):
    """Lifeline ingest settings; each field is read from ``CITYOPS_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="CITYOPS_", extra="ignore")

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


@lru_cache
def get_lifeline_settings() -> LifelineSettings:
    return LifelineSettings()


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
