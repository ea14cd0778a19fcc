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

    def public_collection_set(self) -> set[str] | None:
        """``None`` means every collection is public."""
        text = self.public_collections.strip()
        if text == "*":
            return None
        return {c.strip() for c in text.split(",") if c.strip()}


@lru_cache
def get_settings() -> Settings:
    return Settings()
