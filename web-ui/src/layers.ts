/**
 * How each collection is drawn. The style has a plain background and nothing else from outside:
 * no tiles, no glyphs, no sprites, so the page works offline. Each collection gets one GeoJSON
 * source and the layers below; custom collections get a generic fill/line/circle set.
 */

import type {
  ExpressionSpecification,
  LayerSpecification,
  Map as MapLibreMap,
  StyleSpecification,
} from "maplibre-gl";
import { t, type MessageKey } from "./i18n";

/**
 * Below these zooms a layer is neither loaded nor drawn. A district has ~10,000 buildings and as
 * many components: from zoom 15 a full-screen view holds a few thousand; grids and facilities
 * are sparser. Areas and roads show at any zoom.
 */
const MIN_ZOOM: Record<string, number> = { areas: 0, roads: 0, buildings: 15, components: 15 };
const DETAIL_MINZOOM = 14;

const BACKGROUND = "#eef1f4";

export function baseStyle(): StyleSpecification {
  return {
    version: 8,
    sources: {},
    layers: [{ id: "background", type: "background", paint: { "background-color": BACKGROUND } }],
  };
}

// Fixed collections bottom to top; custom ones go above them in the server's order.
const ORDER = ["areas", "grids", "buildings", "roads", "components", "pois", "shelters"];

export function sortCollectionIds(ids: string[]): string[] {
  const rank = (id: string): number => {
    const i = ORDER.indexOf(id);
    return i === -1 ? ORDER.length : i;
  };
  return [...ids].sort((a, b) => rank(a) - rank(b));
}

/** One of the fixed base layers, as opposed to a collection an operator added. */
export function isFixedCollection(id: string): boolean {
  return ORDER.includes(id);
}

/**
 * Zooms computed by fitBounds or by +/− steps from one land a hair below a whole number
 * (13.999999…): counted as reached, both for drawing and for loading.
 */
const ZOOM_TOLERANCE = 0.001;

export function minZoomFor(id: string): number {
  return MIN_ZOOM[id] ?? DETAIL_MINZOOM;
}

export function shownAtZoom(id: string, zoom: number): boolean {
  return zoom + ZOOM_TOLERANCE >= minZoomFor(id);
}

export interface LegendItem {
  shape: "fill" | "line" | "dashed" | "circle";
  colour: string;
  label: string;
  width?: number;
}

export interface LayerGroup {
  collectionId: string;
  sourceId: string;
  layerIds: string[];
  minzoom: number;
}

// -------------------------------------------------------------------------- geometry filters

const isPolygon: ExpressionSpecification = [
  "match",
  ["geometry-type"],
  ["Polygon", "MultiPolygon"],
  true,
  false,
];
const isPoint: ExpressionSpecification = ["match", ["geometry-type"], ["Point", "MultiPoint"], true, false];
const notPoint: ExpressionSpecification = ["!", isPoint];

// ----------------------------------------------------------------------------------- areas

type AreaLevel = "district" | "street" | "community" | "other";

/**
 * The area's level from its `level` (or `admin_level`/`kind`) property, in English or Chinese;
 * failing that, from the length of its code: GB/T 2260 district codes have 6 digits, street
 * (乡镇/街道) codes 9 and community (村/社区) codes 12.
 */
const areaLevel: ExpressionSpecification = [
  "let",
  "lv",
  ["downcase", ["to-string", ["coalesce", ["get", "level"], ["get", "admin_level"], ["get", "kind"], ""]]],
  [
    "match",
    ["var", "lv"],
    ["district", "county", "区", "县", "区县"],
    "district",
    ["street", "subdistrict", "town", "township", "街道", "镇", "乡", "乡镇"],
    "street",
    ["community", "village", "neighbourhood", "neighborhood", "社区", "村", "居委会", "村委会"],
    "community",
    [
      "match",
      ["length", ["to-string", ["coalesce", ["get", "code"], ""]]],
      6,
      "district",
      9,
      "street",
      12,
      "community",
      "other",
    ],
  ],
];

const AREA_STYLES: Record<AreaLevel, { colour: string; width: number; dash?: number[] }> = {
  district: { colour: "#5f3dc4", width: 3 },
  street: { colour: "#7950f2", width: 1.8, dash: [4, 2] },
  community: { colour: "#9775fa", width: 1, dash: [2, 2] },
  other: { colour: "#868e96", width: 1 },
};

const AREA_LABELS: Record<AreaLevel, MessageKey> = {
  district: "area.district",
  street: "area.street",
  community: "area.community",
  other: "area.other",
};

function areaLayers(sourceId: string): LayerSpecification[] {
  const layers: LayerSpecification[] = [
    {
      id: `${sourceId}:fill`,
      type: "fill",
      source: sourceId,
      filter: isPolygon,
      paint: { "fill-color": AREA_STYLES.district.colour, "fill-opacity": 0.02 },
    },
  ];
  // Biggest first so that community lines are drawn over the street and district ones.
  for (const level of ["other", "district", "street", "community"] as const) {
    const style = AREA_STYLES[level];
    layers.push({
      id: `${sourceId}:line:${level}`,
      type: "line",
      source: sourceId,
      filter: ["all", notPoint, ["==", areaLevel, level]],
      layout: { "line-join": "round" },
      paint: {
        "line-color": style.colour,
        "line-width": style.width,
        ...(style.dash ? { "line-dasharray": style.dash } : {}),
      },
    });
  }
  return layers;
}

function areaLegend(): LegendItem[] {
  return (["district", "street", "community"] as const).map((level) => ({
    shape: AREA_STYLES[level].dash ? "dashed" : "line",
    colour: AREA_STYLES[level].colour,
    width: AREA_STYLES[level].width,
    label: t(AREA_LABELS[level]),
  }));
}

// ----------------------------------------------------------------------------------- grids

const GRID_COLOUR = "#0b7285";

function gridLayers(sourceId: string): LayerSpecification[] {
  return [
    {
      id: `${sourceId}:fill`,
      type: "fill",
      source: sourceId,
      filter: isPolygon,
      // Nearly invisible, but it makes a grid clickable anywhere inside it.
      paint: { "fill-color": GRID_COLOUR, "fill-opacity": 0.01 },
    },
    {
      id: `${sourceId}:line`,
      type: "line",
      source: sourceId,
      filter: notPoint,
      paint: { "line-color": GRID_COLOUR, "line-width": 0.7, "line-opacity": 0.8 },
    },
  ];
}

// ------------------------------------------------------------------------------- buildings

export type BuildingColourMode = "year_built" | "floors";

const UNKNOWN = "#bfc5cc";

interface Bin {
  from: number;
  colour: string;
}

/** Older buildings in warmer colours: they are the ones a safety check looks at first. */
const YEAR_BINS: Bin[] = [
  { from: 1800, colour: "#b30000" },
  { from: 1980, colour: "#e34a33" },
  { from: 2000, colour: "#fc8d59" },
  { from: 2010, colour: "#fdcc8a" },
];

/** 低层 1–3, 多层 4–6, 中高层 7–9, 高层 ≥ 10 (the classic residential height classes). */
const FLOOR_BINS: Bin[] = [
  { from: 1, colour: "#c6dbef" },
  { from: 4, colour: "#6baed6" },
  { from: 7, colour: "#2171b5" },
  { from: 10, colour: "#08306b" },
];

function binnedColour(field: BuildingColourMode, bins: Bin[]): ExpressionSpecification {
  const [first, ...rest] = bins;
  if (!first) throw new Error("no bins");
  const steps: (number | string)[] = [];
  for (const bin of rest) steps.push(bin.from, bin.colour);
  // to-number turns null into 0 and junk into -1: both land below the first bin, as unknown.
  return [
    "let",
    "v",
    ["to-number", ["get", field], -1],
    [
      "case",
      ["<", ["var", "v"], first.from],
      UNKNOWN,
      ["step", ["var", "v"], first.colour, ...steps] as unknown as ExpressionSpecification,
    ],
  ];
}

function buildingColour(mode: BuildingColourMode): ExpressionSpecification {
  return mode === "year_built" ? binnedColour("year_built", YEAR_BINS) : binnedColour("floors", FLOOR_BINS);
}

function buildingLayers(sourceId: string, mode: BuildingColourMode): LayerSpecification[] {
  return [
    {
      id: `${sourceId}:fill`,
      type: "fill",
      source: sourceId,
      filter: isPolygon,
      paint: { "fill-color": buildingColour(mode), "fill-opacity": 0.85 },
    },
    {
      id: `${sourceId}:line`,
      type: "line",
      source: sourceId,
      filter: isPolygon,
      minzoom: 16,
      paint: { "line-color": "#495057", "line-width": 0.5, "line-opacity": 0.6 },
    },
    {
      id: `${sourceId}:circle`,
      type: "circle",
      source: sourceId,
      filter: isPoint,
      paint: { "circle-color": buildingColour(mode), "circle-radius": 4 },
    },
  ];
}

export function setBuildingColourMode(map: MapLibreMap, group: LayerGroup, mode: BuildingColourMode): void {
  map.setPaintProperty(`${group.sourceId}:fill`, "fill-color", buildingColour(mode));
  map.setPaintProperty(`${group.sourceId}:circle`, "circle-color", buildingColour(mode));
}

function buildingLegend(mode: BuildingColourMode): LegendItem[] {
  const items: LegendItem[] =
    mode === "year_built"
      ? [
          { shape: "fill", colour: YEAR_BINS[0]!.colour, label: t("legend.before", { y: 1980 }) },
          { shape: "fill", colour: YEAR_BINS[1]!.colour, label: t("legend.range", { a: 1980, b: 1999 }) },
          { shape: "fill", colour: YEAR_BINS[2]!.colour, label: t("legend.range", { a: 2000, b: 2009 }) },
          { shape: "fill", colour: YEAR_BINS[3]!.colour, label: t("legend.since", { y: 2010 }) },
        ]
      : [
          {
            shape: "fill",
            colour: FLOOR_BINS[0]!.colour,
            label: `${t("legend.floorsLow")} ${t("legend.floorsRange", { a: 1, b: 3 })}`,
          },
          {
            shape: "fill",
            colour: FLOOR_BINS[1]!.colour,
            label: `${t("legend.floorsMid")} ${t("legend.floorsRange", { a: 4, b: 6 })}`,
          },
          {
            shape: "fill",
            colour: FLOOR_BINS[2]!.colour,
            label: `${t("legend.floorsMidHigh")} ${t("legend.floorsRange", { a: 7, b: 9 })}`,
          },
          {
            shape: "fill",
            colour: FLOOR_BINS[3]!.colour,
            label: `${t("legend.floorsHigh")} ${t("legend.floorsFrom", { a: 10 })}`,
          },
        ];
  items.push({ shape: "fill", colour: UNKNOWN, label: t("legend.unknown") });
  return items;
}

// ----------------------------------------------------------------------------------- roads

type RoadClass = "expressway" | "arterial" | "secondary" | "branch" | "river" | "other";

/** OSM `highway` values and the Chinese urban road classes (CJJ 37: 快速路/主干路/次干路/支路). */
const roadClass: ExpressionSpecification = [
  "match",
  ["downcase", ["to-string", ["coalesce", ["get", "kind"], ["get", "highway"], ""]]],
  ["motorway", "motorway_link", "trunk", "trunk_link", "expressway", "快速路", "高速公路", "高速"],
  "expressway",
  ["primary", "primary_link", "arterial", "主干路", "主干道"],
  "arterial",
  ["secondary", "secondary_link", "次干路", "次干道"],
  "secondary",
  ["tertiary", "tertiary_link", "residential", "unclassified", "living_street", "branch", "支路"],
  "branch",
  // The generated district puts its rivers in the roads layer (they cut the street network).
  ["river", "canal", "stream", "河流", "河道"],
  "river",
  "other",
];

const ROAD_STYLES: Record<RoadClass, { colour: string; width: number; label: MessageKey }> = {
  expressway: { colour: "#d9480f", width: 3, label: "road.expressway" },
  arterial: { colour: "#f08c00", width: 2.4, label: "road.arterial" },
  secondary: { colour: "#fab005", width: 1.8, label: "road.secondary" },
  branch: { colour: "#868e96", width: 1.2, label: "road.branch" },
  river: { colour: "#74c0fc", width: 3, label: "road.river" },
  other: { colour: "#adb5bd", width: 0.8, label: "road.other" },
};

function roadMatch(prop: "colour" | "width", scale = 1): ExpressionSpecification {
  const classes = Object.keys(ROAD_STYLES) as RoadClass[];
  const arms: (string | number)[] = [];
  for (const cls of classes.slice(0, -1)) {
    const value = ROAD_STYLES[cls][prop];
    arms.push(cls, typeof value === "number" ? value * scale : value);
  }
  const fallback = ROAD_STYLES.other[prop];
  return [
    "match",
    roadClass,
    ...arms,
    typeof fallback === "number" ? fallback * scale : fallback,
  ] as unknown as ExpressionSpecification;
}

function roadLayers(sourceId: string): LayerSpecification[] {
  return [
    {
      id: `${sourceId}:line`,
      type: "line",
      source: sourceId,
      filter: notPoint,
      layout: { "line-join": "round", "line-cap": "round" },
      paint: {
        "line-color": roadMatch("colour"),
        "line-width": [
          "interpolate",
          ["linear"],
          ["zoom"],
          10,
          roadMatch("width", 0.5),
          16,
          roadMatch("width", 2),
        ],
      },
    },
  ];
}

function roadLegend(): LegendItem[] {
  return (Object.keys(ROAD_STYLES) as RoadClass[]).map((cls) => ({
    shape: "line",
    colour: ROAD_STYLES[cls].colour,
    width: ROAD_STYLES[cls].width,
    label: t(ROAD_STYLES[cls].label),
  }));
}

// ---------------------------------------------------------------------------------- points

const POINT_STYLES: Record<string, { colour: string; radius: number }> = {
  components: { colour: "#495057", radius: 3 },
  pois: { colour: "#1c7ed6", radius: 4 },
  shelters: { colour: "#2b8a3e", radius: 6 },
};

// Custom collections take colours in turn from a palette that avoids the fixed layers' hues.
const PALETTE = ["#c2255c", "#0c8599", "#5c940d", "#e8590c", "#364fc7", "#862e9c"];

function genericLayers(sourceId: string, colour: string, radius: number): LayerSpecification[] {
  return [
    {
      id: `${sourceId}:fill`,
      type: "fill",
      source: sourceId,
      filter: isPolygon,
      paint: { "fill-color": colour, "fill-opacity": 0.2 },
    },
    {
      id: `${sourceId}:line`,
      type: "line",
      source: sourceId,
      filter: notPoint,
      paint: { "line-color": colour, "line-width": 1.5 },
    },
    {
      id: `${sourceId}:circle`,
      type: "circle",
      source: sourceId,
      filter: isPoint,
      paint: {
        "circle-color": colour,
        "circle-radius": ["interpolate", ["linear"], ["zoom"], 12, radius * 0.6, 18, radius * 1.5],
        "circle-stroke-color": "#ffffff",
        "circle-stroke-width": 1,
      },
    },
  ];
}

// ------------------------------------------------------------------------------- assembling

/**
 * Drawing order across collections, bottom to top: all fills, then all lines, then area
 * boundaries (they often run along roads and would vanish under them), then all circles. Within
 * a band, collections keep their rank: buildings over grids, shelters over pois.
 */
function zOrder(layer: LayerSpecification, collectionId: string, rank: number): number {
  if (collectionId === "areas" && layer.type === "line") return 200;
  const band = { fill: 0, line: 100, circle: 300 }[layer.type as "fill" | "line" | "circle"] ?? 0;
  return band + rank;
}

/** Layers of ours on the map with their z, in map order. */
const placed: { id: string; z: number }[] = [];

function addOrdered(map: MapLibreMap, layer: LayerSpecification, z: number): void {
  const above = placed.findIndex((p) => p.z > z);
  map.addLayer(layer, above === -1 ? undefined : placed[above]?.id);
  placed.splice(above === -1 ? placed.length : above, 0, { id: layer.id, z });
}

/** Adds the collection's empty source and its layers, each in its place in the drawing order. */
export function addCollection(
  map: MapLibreMap,
  collectionId: string,
  customIndex: number,
  buildingMode: BuildingColourMode,
): LayerGroup {
  const sourceId = `c:${collectionId}`;
  map.addSource(sourceId, { type: "geojson", data: { type: "FeatureCollection", features: [] } });
  let layers: LayerSpecification[];
  switch (collectionId) {
    case "areas":
      layers = areaLayers(sourceId);
      break;
    case "grids":
      layers = gridLayers(sourceId);
      break;
    case "buildings":
      layers = buildingLayers(sourceId, buildingMode);
      break;
    case "roads":
      layers = roadLayers(sourceId);
      break;
    default: {
      const point = POINT_STYLES[collectionId];
      const colour = point?.colour ?? PALETTE[customIndex % PALETTE.length] ?? "#c2255c";
      layers = genericLayers(sourceId, colour, point?.radius ?? 4);
    }
  }
  const minzoom = minZoomFor(collectionId);
  const rank = isFixedCollection(collectionId) ? ORDER.indexOf(collectionId) : ORDER.length + customIndex;
  for (const layer of layers) {
    if (layer.type !== "background" && minzoom > 0 && (layer.minzoom ?? 0) < minzoom) {
      layer.minzoom = minzoom - ZOOM_TOLERANCE;
    }
    addOrdered(map, layer, zOrder(layer, collectionId, rank));
  }
  return { collectionId, sourceId, layerIds: layers.map((l) => l.id), minzoom };
}

export function removeCollection(map: MapLibreMap, group: LayerGroup): void {
  for (const id of group.layerIds) {
    map.removeLayer(id);
    const i = placed.findIndex((p) => p.id === id);
    if (i !== -1) placed.splice(i, 1);
  }
  map.removeSource(group.sourceId);
}

export function setGroupVisible(map: MapLibreMap, group: LayerGroup, visible: boolean): void {
  for (const id of group.layerIds) {
    map.setLayoutProperty(id, "visibility", visible ? "visible" : "none");
  }
}

export function legendFor(
  collectionId: string,
  buildingMode: BuildingColourMode,
  customIndex: number,
): LegendItem[] {
  switch (collectionId) {
    case "areas":
      return areaLegend();
    case "buildings":
      return buildingLegend(buildingMode);
    case "roads":
      return roadLegend();
    case "grids":
      return [{ shape: "line", colour: GRID_COLOUR, label: "" }];
    default: {
      const point = POINT_STYLES[collectionId];
      const colour = point?.colour ?? PALETTE[customIndex % PALETTE.length] ?? "#c2255c";
      return [{ shape: point ? "circle" : "fill", colour, label: "" }];
    }
  }
}
