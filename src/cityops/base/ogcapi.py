"""OGC API – Features – Part 1: Core (OGC 17-069r4) over the digital base, under ``/ogcapi``.

Conformance classes: Core, GeoJSON, OpenAPI 3.0. Collections are the layers; items pages are
offset-based with ``next``/``prev`` links; ``bbox`` (CRS84, lon/lat) selects features whose
geometry intersects the box; any other query parameter that names a property filters on it
(equality). Errors use the OGC exception body ``{code, description}``. Read access per
collection: public, or bearer-token holders of ``base:read`` (setting
``CITYOPS_PUBLIC_COLLECTIONS`` or the layer's own ``public`` flag).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any
from urllib.parse import urlencode

import numpy as np
import shapely
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.orm import Session

from cityops.base import service
from cityops.base.models import Feature, Layer
from cityops.core.auth import ANONYMOUS, Principal, current_principal
from cityops.core.deps import ReadSession
from cityops.core.errors import CityopsError, Forbidden, Unauthorized
from cityops.core.geometry import parse_bbox

router = APIRouter(prefix="/ogcapi", tags=["ogcapi"])

CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
GEOJSON = "application/geo+json"
CONFORMANCE = [
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
]
RESERVED = {"f", "bbox", "bbox-crs", "limit", "offset", "datetime", "crs"}
MAX_LIMIT = 10_000


class OgcError(CityopsError):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail=detail, status=status)


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/ogcapi"


def _check_format(f: str | None) -> None:
    if f not in (None, "json", "geojson", "application/json", "application/geo+json"):
        raise OgcError(400, f"Unsupported format f={f}: this server speaks f=json (GeoJSON).")


def _can_read(layer: Layer, principal: Principal) -> None:
    if service.is_public(layer):
        return
    if principal is ANONYMOUS:
        raise Unauthorized(
            f"Collection {layer.name} is not public: sign in (POST /api/v1/auth/token) and "
            "send the bearer token."
        )
    if not principal.has("base:read"):
        raise Forbidden(f"{principal.username} may not read collection {layer.name}.")


def _collection(request: Request, session: Session, layer: Layer) -> dict[str, Any]:
    base = _base(request)
    extent = service.layer_extent(session, layer.name)
    out: dict[str, Any] = {
        "id": layer.name,
        "title": layer.title + (f" ({layer.title_zh})" if layer.title_zh else ""),
        "description": layer.description,
        "itemType": "feature",
        "crs": [CRS84],
        "links": [
            {
                "href": f"{base}/collections/{layer.name}",
                "rel": "self",
                "type": "application/json",
                "title": layer.title,
            },
            {
                "href": f"{base}/collections/{layer.name}/items",
                "rel": "items",
                "type": GEOJSON,
                "title": f"{layer.title} items",
            },
        ],
    }
    if extent:
        out["extent"] = {"spatial": {"bbox": [extent], "crs": CRS84}}
    return out


@router.get("", summary="OGC API landing page")
@router.get("/", summary="OGC API landing page", include_in_schema=False)
def landing(request: Request, f: str | None = None) -> dict[str, Any]:
    _check_format(f)
    base = _base(request)
    root = str(request.base_url).rstrip("/")
    return {
        "title": "cityops — the city's digital base (城市数字底座)",
        "description": "OGC API – Features over the layers of the digital base.",
        "links": [
            {"href": base, "rel": "self", "type": "application/json", "title": "this document"},
            {
                "href": f"{root}/openapi.json",
                "rel": "service-desc",
                "type": "application/vnd.oai.openapi+json;version=3.0",
                "title": "OpenAPI",
            },
            {
                "href": f"{root}/docs",
                "rel": "service-doc",
                "type": "text/html",
                "title": "API documentation",
            },
            {
                "href": f"{base}/conformance",
                "rel": "conformance",
                "type": "application/json",
                "title": "conformance classes",
            },
            {
                "href": f"{base}/collections",
                "rel": "data",
                "type": "application/json",
                "title": "collections",
            },
        ],
    }


@router.get("/conformance", summary="Conformance classes")
def conformance(f: str | None = None) -> dict[str, Any]:
    _check_format(f)
    return {"conformsTo": CONFORMANCE}


@router.get("/collections", summary="The collections (layers)")
def collections(request: Request, session: ReadSession, f: str | None = None) -> dict[str, Any]:
    _check_format(f)
    from sqlalchemy import select

    layers = session.scalars(select(Layer).order_by(Layer.fixed.desc(), Layer.name))
    base = _base(request)
    return {
        "links": [{"href": f"{base}/collections", "rel": "self", "type": "application/json"}],
        "collections": [_collection(request, session, layer) for layer in layers],
    }


@router.get("/collections/{collection_id}", summary="One collection")
def collection(
    request: Request, session: ReadSession, collection_id: str, f: str | None = None
) -> dict[str, Any]:
    _check_format(f)
    return _collection(request, session, service.get_layer(session, collection_id))


def _features_json(features: list[Feature], base: str, layer: str) -> list[str]:
    if not features:
        return []
    geoms = np.array([f.geom for f in features], dtype=object)
    geo = shapely.to_geojson(geoms)
    out = []
    for f, g in zip(features, geo, strict=True):
        props = service.feature_properties(f)
        props.pop("layer", None)
        out.append(
            '{"type":"Feature","id":'
            + str(f.id)
            + ',"geometry":'
            + g
            + ',"properties":'
            + json.dumps(props, ensure_ascii=False, default=str)
            + ',"links":[{"href":"'
            + f"{base}/collections/{layer}/items/{f.id}"
            + '","rel":"self","type":"'
            + GEOJSON
            + '"}]}'
        )
    return out


@router.get(
    "/collections/{collection_id}/items",
    summary="Features of a collection (GeoJSON), paged",
    response_class=Response,
    responses={200: {"content": {GEOJSON: {}}}},
)
def items(
    request: Request,
    session: ReadSession,
    principal: Annotated[Principal, Depends(current_principal)],
    collection_id: str,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 10,
    offset: Annotated[int, Query(ge=0)] = 0,
    bbox: Annotated[str | None, Query(description="minLon,minLat,maxLon,maxLat (CRS84)")] = None,
    bbox_crs: Annotated[str | None, Query(alias="bbox-crs")] = None,
    datetime: str | None = None,
    f: str | None = None,
) -> Response:
    _check_format(f)
    layer = service.get_layer(session, collection_id)
    _can_read(layer, principal)
    if bbox_crs not in (None, CRS84):
        raise OgcError(400, f"bbox-crs {bbox_crs} is not supported: use {CRS84}.")
    box = None
    if bbox is not None:
        try:
            box = parse_bbox(bbox)
        except ValueError as exc:
            raise OgcError(400, f"bbox: {exc}") from exc
    filters = {k: v for k, v in request.query_params.items() if k not in RESERVED}
    page = service.query_items(
        session, layer.name, bbox=box, filters=filters, limit=limit, offset=offset
    )
    base = _base(request)
    items_url = f"{base}/collections/{layer.name}/items"
    params: dict[str, Any] = {
        k: v for k, v in request.query_params.items() if k not in ("offset", "limit")
    }
    links = [
        {
            "href": f"{items_url}?{urlencode({**params, 'limit': limit, 'offset': offset})}",
            "rel": "self",
            "type": GEOJSON,
        }
    ]
    if offset + len(page.features) < page.number_matched:
        links.append(
            {
                "href": f"{items_url}?"
                + urlencode({**params, "limit": limit, "offset": offset + limit}),
                "rel": "next",
                "type": GEOJSON,
                "title": "next page",
            }
        )
    if offset > 0:
        prev = max(0, offset - limit)
        links.append(
            {
                "href": f"{items_url}?{urlencode({**params, 'limit': limit, 'offset': prev})}",
                "rel": "prev",
                "type": GEOJSON,
                "title": "previous page",
            }
        )
    links.append(
        {
            "href": f"{base}/collections/{layer.name}",
            "rel": "collection",
            "type": "application/json",
        }
    )
    feats = _features_json(page.features, base, layer.name)
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    body = (
        '{"type":"FeatureCollection","features":['
        + ",".join(feats)
        + '],"numberMatched":'
        + str(page.number_matched)
        + ',"numberReturned":'
        + str(len(feats))
        + ',"timeStamp":"'
        + stamp
        + '","links":'
        + json.dumps(links)
        + "}"
    )
    return Response(body, media_type=GEOJSON)


@router.get(
    "/collections/{collection_id}/items/{feature_id}",
    summary="One feature (GeoJSON)",
    response_class=Response,
    responses={200: {"content": {GEOJSON: {}}}},
)
def item(
    request: Request,
    session: ReadSession,
    principal: Annotated[Principal, Depends(current_principal)],
    collection_id: str,
    feature_id: str,
    f: str | None = None,
) -> Response:
    _check_format(f)
    layer = service.get_layer(session, collection_id)
    _can_read(layer, principal)
    if not feature_id.isdigit():
        raise OgcError(404, f"No feature {feature_id} in collection {collection_id}.")
    feat = service.get_feature(session, layer.name, int(feature_id))
    base = _base(request)
    doc = json.loads(_features_json([feat], base, layer.name)[0])
    doc["links"].append(
        {
            "href": f"{base}/collections/{layer.name}",
            "rel": "collection",
            "type": "application/json",
        }
    )
    return JSONResponse(doc, media_type=GEOJSON)
