"""Every ``CITYOPS_*`` setting, documented in one place (pydantic-settings).

Nothing reads ``os.environ`` elsewhere: a reader of this file knows every knob.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

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
    sms_gateway_url: str | None = Field(None, description="SMS gateway for reporter notices.")
    smtp_url: str | None = Field(None, description="smtp://user:pass@host:port for e-mail.")
    mail_from: str = Field("cityops@localhost", description="Sender address of e-mails.")
    worker_in_process: str = Field(
        "auto",
        description="Run the outbox/overdue worker inside `cityops serve`: on, off, or auto "
        "(on for SQLite, off for PostgreSQL where `cityops worker` processes run).",
    )
    worker_interval: float = Field(2.0, description="Seconds between worker rounds.")
    stream_poll: float = Field(1.0, description="Seconds between live-feed (SSE) polls.")

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
