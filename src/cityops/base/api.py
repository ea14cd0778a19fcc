"""REST routes of the digital base under ``/api/v1``: layers, features with history, geocoding.

Nothing but HTTP translation: each handler opens a unit of work and calls :mod:`service`.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

import shapely
from fastapi import APIRouter, Body, Depends, Header, Query, Request
from pydantic import BaseModel, Field

from cityops.base import service
from cityops.base.models import Feature, FeatureHistory, Layer
from cityops.base.schemas import (
    FeatureChange,
    GeocodeIn,
    GeocodeOut,
    HistoryEntry,
    LayerIn,
    LayerOut,
)
from cityops.core.auth import Principal, require
from cityops.core.deps import DbDep, ReadSession
from cityops.core.errors import ValidationFailed

router = APIRouter(prefix="/api/v1")


def _layer_out(layer: Layer, count: int | None = None) -> LayerOut:
    return LayerOut(
        name=layer.name,
        title=layer.title,
        title_zh=layer.title_zh,
        description=layer.description,
        fixed=layer.fixed,
        geometry_type=layer.geometry_type,
        public=service.is_public(layer),
        properties_schema=layer.json_schema or {},
        count=count,
    )


def _feature_out(f: Feature) -> dict[str, Any]:
    return {
        "type": "Feature",
        "id": f.id,
        "geometry": json.loads(shapely.to_geojson(f.geom)),
        "properties": service.feature_properties(f),
        "version": f.version,
        "updated_at": f.updated_at.isoformat(),
        "updated_by": f.updated_by,
    }


def _history_out(h: FeatureHistory) -> HistoryEntry:
    props = None if h.op == "delete" else service.feature_properties(h)
    return HistoryEntry(
        version=h.version,
        op=h.op,
        valid_from=h.valid_from,
        valid_to=h.valid_to,
        actor=h.actor,
        reason=h.reason,
        properties=props,
        geometry=json.loads(shapely.to_geojson(h.geom)) if h.geom is not None else None,
    )


@router.get("/layers", response_model=list[LayerOut], tags=["layers"], summary="All layers")
def list_layers(
    session: ReadSession, _: Annotated[Principal, Depends(require("base:read"))]
) -> list[LayerOut]:
    from sqlalchemy import select

    counts = service.layer_counts(session)
    layers = session.scalars(select(Layer).order_by(Layer.fixed.desc(), Layer.name))
    return [_layer_out(layer, counts.get(layer.name, 0)) for layer in layers]


@router.post(
    "/layers",
    status_code=201,
    response_model=LayerOut,
    tags=["layers"],
    summary="Create a custom layer (no DDL; attributes validated by its JSON Schema)",
)
def post_layer(
    body: LayerIn, db: DbDep, principal: Annotated[Principal, Depends(require("base:write"))]
) -> LayerOut:
    with db.write() as session:
        layer = service.create_layer(
            session,
            body.name,
            body.title,
            actor=principal.username,
            title_zh=body.title_zh,
            description=body.description,
            geometry_type=body.geometry_type,
            properties_schema=body.properties_schema,
            public=body.public,
        )
        return _layer_out(layer, 0)


class FeatureIn(BaseModel):
    type: str = Field("Feature", pattern="^Feature$")
    geometry: dict[str, Any]
    properties: dict[str, Any] = Field(default_factory=dict)
    reason: str = Field("created", min_length=1)


@router.get(
    "/layers/{layer}/features/{feature_id}",
    tags=["features"],
    summary="One feature with its version",
)
def get_feature(
    layer: str,
    feature_id: int,
    session: ReadSession,
    _: Annotated[Principal, Depends(require("base:read"))],
) -> dict[str, Any]:
    return _feature_out(service.get_feature(session, layer, feature_id))


@router.post(
    "/layers/{layer}/features", status_code=201, tags=["features"], summary="Add a feature"
)
def post_feature(
    layer: str,
    body: FeatureIn,
    db: DbDep,
    principal: Annotated[Principal, Depends(require("base:write"))],
) -> dict[str, Any]:
    with db.write() as session:
        f = service.create_feature(
            session,
            layer,
            body.geometry,
            body.properties,
            actor=principal.username,
            reason=body.reason,
        )
        return _feature_out(f)


@router.patch(
    "/layers/{layer}/features/{feature_id}",
    tags=["features"],
    summary="Change a feature (kept in its history, with the reason)",
)
def patch_feature(
    layer: str,
    feature_id: int,
    body: FeatureChange,
    db: DbDep,
    principal: Annotated[Principal, Depends(require("base:write"))],
    if_match: Annotated[
        str | None, Header(description="expected version (optimistic lock)")
    ] = None,
) -> dict[str, Any]:
    expected = None
    if if_match:
        try:
            expected = int(if_match.strip('"W/'))
        except ValueError as exc:
            raise ValidationFailed("If-Match must be the feature's version number.") from exc
    with db.write() as session:
        f = service.change_feature(
            session,
            layer,
            feature_id,
            body.model_dump(),
            actor=principal.username,
            reason=body.reason,
            expected_version=expected,
        )
        return _feature_out(f)


@router.delete(
    "/layers/{layer}/features/{feature_id}",
    status_code=204,
    tags=["features"],
    summary="Remove a feature (its history stays)",
)
def delete_feature(
    layer: str,
    feature_id: int,
    db: DbDep,
    principal: Annotated[Principal, Depends(require("base:write"))],
    reason: Annotated[str, Query(min_length=1, description="why it is removed")],
) -> None:
    with db.write() as session:
        service.delete_feature(session, layer, feature_id, actor=principal.username, reason=reason)


@router.get(
    "/layers/{layer}/features/{feature_id}/history",
    response_model=list[HistoryEntry],
    tags=["features"],
    summary="Every state of a feature: who, when, why (城建档案)",
)
def history(
    layer: str,
    feature_id: int,
    session: ReadSession,
    _: Annotated[Principal, Depends(require("base:read"))],
    as_of: Annotated[dt.datetime | None, Query(description="only the state at this time")] = None,
) -> list[HistoryEntry]:
    if as_of is not None:
        if as_of.tzinfo is None:
            raise ValidationFailed("as_of needs a time zone offset, e.g. 2026-01-01T00:00:00+08:00")
        return [_history_out(service.as_of(session, layer, feature_id, as_of))]
    return [_history_out(h) for h in service.feature_history(session, layer, feature_id)]


@router.get(
    "/geocode",
    response_model=GeocodeOut,
    tags=["geocode"],
    summary="Which district, street, community and grid a point lies in",
)
def geocode_one(
    request: Request,
    _: Annotated[Principal, Depends(require("geocode"))],
    lon: Annotated[float, Query(ge=-180, le=180)],
    lat: Annotated[float, Query(ge=-90, le=90)],
) -> GeocodeOut:
    from cityops.base import geo_service

    geocoder = geo_service.geocoder_for(request.app.state.db)
    return GeocodeOut(lon=lon, lat=lat, **geocoder.locate_one(lon, lat))


@router.post(
    "/geocode",
    response_model=list[GeocodeOut],
    tags=["geocode"],
    summary="Geocode up to 10,000 points at once",
)
def geocode_many(
    request: Request,
    _: Annotated[Principal, Depends(require("geocode"))],
    points: Annotated[list[GeocodeIn], Body(max_length=10_000)],
) -> list[GeocodeOut]:
    import numpy as np

    from cityops.base import geo_service

    geocoder = geo_service.geocoder_for(request.app.state.db)
    lon = np.array([p.lon for p in points])
    lat = np.array([p.lat for p in points])
    df = geocoder.locate(lon, lat)
    records = df.to_dict("records")
    return [
        GeocodeOut(
            lon=p.lon,
            lat=p.lat,
            **{k: (v or None) for k, v in r.items() if k in GeocodeOut.model_fields},
        )
        for p, r in zip(points, records, strict=True)
    ]
