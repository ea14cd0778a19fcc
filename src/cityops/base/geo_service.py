"""Glue between the database and the pure grid/geocoding logic (:mod:`grids`, :mod:`geocode`).

The geocoder is built once per database from the ``grids`` and ``areas`` layers and rebuilt
when either changes (a cheap fingerprint: row count and newest change).
"""

from __future__ import annotations

import threading
from typing import Any

import geopandas as gpd
from sqlalchemy import func, select

from cityops.base import service
from cityops.base.geocode import Geocoder
from cityops.base.models import Feature
from cityops.core import audit
from cityops.core.db import Database, utcnow
from cityops.core.errors import ValidationFailed

_lock = threading.Lock()
_cache: dict[str, tuple[Any, Geocoder]] = {}


def _fingerprint(db: Database) -> Any:
    with db.read() as session:
        return tuple(
            session.execute(
                select(
                    Feature.layer, func.count(), func.max(Feature.updated_at), func.max(Feature.id)
                )
                .where(Feature.layer.in_(("grids", "areas")))
                .group_by(Feature.layer)
                .order_by(Feature.layer)
            ).all()
        )


def load_geocoder(db: Database) -> Geocoder:
    with db.read() as session:
        grids = service.layer_frame(session, "grids", columns=["code", "name"])
        areas = service.layer_frame(session, "areas", columns=["code", "name", "kind"])
    return Geocoder(grids=grids, areas=areas)


def geocoder_for(db: Database) -> Geocoder:
    """The cached geocoder of ``db`` (rebuilt when grids or areas changed)."""
    fp = _fingerprint(db)
    with _lock:
        hit = _cache.get(db.url)
        if hit is not None and hit[0] == fp:
            return hit[1]
    geocoder = load_geocoder(db)
    with _lock:
        _cache[db.url] = (fp, geocoder)
    return geocoder


def build_and_store_grids(
    db: Database,
    *,
    target_area_m2: float = 10_000,
    actor: str = "system",
    reason: str = "grid build",
) -> int:
    """Build unit grids for every community from the areas and roads layers and replace the
    ``grids`` layer (old grids stay in history: re-gridding keeps old ids answerable)."""
    from cityops.base.grids import build_grids, load_grid_rules
    from cityops.settings import get_settings

    target = target_area_m2 or load_grid_rules().target_area_m2

    with db.read() as session:
        areas = service.layer_frame(session, "areas")
        roads = service.layer_frame(session, "roads")
    if "kind" not in areas.columns or not (areas["kind"] == "community").any():
        raise ValidationFailed(
            "No communities (areas with kind=community) to grid: import areas with 12-digit "
            "community codes first (cityops import … --layer areas)."
        )
    communities = areas[areas["kind"] == "community"][["code", "name", "geometry"]]
    grids: gpd.GeoDataFrame = build_grids(
        communities,
        roads if len(roads) else None,
        target_area_m2=target,
        crs_metric=get_settings().city_crs,
    )
    grids = grids.rename(columns={"community_code": "parent_code"})
    grids["kind"] = "unit_grid"
    service.import_frame(
        db,
        grids,
        layer="grids",
        file="(grid build)",
        fmt="generated",
        source_crs="EPSG:4326",
        key="code",
        actor=actor,
        reason=reason,
    )
    # grids whose code the new build no longer has are retired (their history stays)
    codes = set(grids["code"])
    with db.write() as session:
        stale = [
            fid
            for fid, code in session.execute(
                select(Feature.id, Feature.code).where(Feature.layer == "grids")
            )
            if code not in codes
        ]
        for fid in stale:
            service.delete_feature(session, "grids", fid, actor=actor, reason=reason)
        audit.record(
            session,
            actor,
            "grids.build",
            "layer",
            "grids",
            {"grids": len(grids), "retired": len(stale), "at": utcnow().isoformat()},
        )
    return len(grids)
