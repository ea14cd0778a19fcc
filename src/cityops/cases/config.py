"""Settings of the case loop (``CITYOPS_*``).

They belong in :mod:`cityops.settings` with the others (DESIGN §2: "every CITYOPS_* variable,
documented in one place"); they live here until the lead moves them, and read the same
environment prefix, so moving them changes nothing for an operator.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from cityops.core.db import Database


class CaseSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CITYOPS_", extra="ignore")

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

    def webhooks(self) -> list[str]:
        return [u.strip() for u in self.webhook_urls.split(",") if u.strip()]

    def attachment_root(self, db: Database) -> Path:
        if self.attachments_dir is not None:
            return self.attachments_dir
        if db.is_sqlite:
            path = db.url.split("///", 1)[-1]
            if path and path != ":memory:":
                return Path(path + ".files")
        return Path("cityops-attachments")

    def run_worker_in_process(self, db: Database) -> bool:
        mode = self.worker_in_process.lower()
        if mode == "auto":
            return db.is_sqlite
        return mode in ("on", "1", "true", "yes")


@lru_cache
def case_settings() -> CaseSettings:
    return CaseSettings()
