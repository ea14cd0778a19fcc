/**
 * The minimal page of the base layers (DESIGN §8 "UI before the UI issue"): a MapLibre map on a
 * plain background, one checkbox per OGC API collection, features loaded for the current view.
 */

import "maplibre-gl/dist/maplibre-gl.css";
import "./style.css";
import {
  Map as MapLibreMap,
  NavigationControl,
  Popup,
  ScaleControl,
  setWorkerUrl,
  type GeoJSONSource,
  type MapMouseEvent,
} from "maplibre-gl";
// The worker is its own file in maplibre-gl 6: ship it beside the bundle and say where it is.
import workerUrl from "maplibre-gl/dist/maplibre-gl-worker.mjs?url";

import {
  ApiError,
  collectionBbox,
  getCollections,
  getHealth,
  getItems,
  getToken,
  isAbort,
  type Bbox,
  type CityFeature,
  type Collection,
  type Health,
} from "./api";
import { expireSession, initAuth, signInAction } from "./auth";
import { byId } from "./dom";
import { applyTranslations, getLang, onLangChange, setLang, t } from "./i18n";
import {
  addCollection,
  baseStyle,
  isFixedCollection,
  removeCollection,
  setBuildingColourMode,
  setGroupVisible,
  shownAtZoom,
  sortCollectionIds,
  type LayerGroup,
} from "./layers";
import { clearMessage, describeError, showMessage, track } from "./notify";
import {
  getBuildingMode,
  layerTitle,
  renderLayers,
  setPanelOpen,
  setZoomHint,
  updateLayer,
  type LayerState,
} from "./panel";
import { popupContent } from "./popup";

/** Pages of 1000 features followed per collection and view: a full screen of buildings at zoom 15. */
const MAX_PAGES = 6;
/** Layers ticked when the page opens; components are dense and custom layers unknown. */
const DEFAULT_ON = new Set(["areas", "grids", "buildings", "roads", "pois", "shelters"]);
/** Fetch a little beyond the view, so that a small pan needs no new request. */
const VIEW_PADDING = 0.1;

setWorkerUrl(workerUrl);

const states = new Map<string, LayerState>();
const groups = new Map<string, LayerGroup>();
/** Loads in flight, with the bbox each asks for. */
const inflight = new Map<string, { controller: AbortController; bbox: Bbox }>();
/** What each source holds: the bbox loaded, whether all of it came, and the view it was for. */
const loaded = new Map<string, { bbox: Bbox; complete: boolean; view: Bbox }>();
let fitted = false;
let health: Health | null = null;
let healthError: unknown;
let moveTimer: number | undefined;
/** The open popup and what it shows, so that a language switch can redraw it. */
let popup: { popup: Popup; collectionId: string; properties: Record<string, unknown> | null } | null = null;

function popupTitle(collectionId: string): string {
  const state = states.get(collectionId);
  return state ? layerTitle(state) : collectionId;
}

// ------------------------------------------------------------------------------------ chrome

function renderStatusLine(): void {
  const line = byId("status");
  const error = healthError;
  if (health) {
    const parts = [t("status.ok"), health.database, health.version ? `v${health.version}` : ""];
    line.textContent = parts.filter(Boolean).join(" · ");
    line.className = "status status-ok";
  } else if (error !== undefined) {
    line.textContent =
      error instanceof ApiError && error.kind === "network" ? t("status.down") : describeError(error);
    line.className = "status status-error";
  }
}

function wireChrome(): void {
  applyTranslations(document);
  byId("lang-switch").addEventListener("click", () => setLang(getLang() === "zh" ? "en" : "zh"));
  byId("panel-open").addEventListener("click", () => setPanelOpen(true));
  byId("panel-close").addEventListener("click", () => setPanelOpen(false));
  setPanelOpen(!window.matchMedia("(max-width: 640px)").matches);
}

// --------------------------------------------------------------------------------------- map

function createMap(): MapLibreMap | null {
  try {
    return new MapLibreMap({
      container: "map",
      style: baseStyle(),
      // China until the data's extent is known.
      bounds: [73, 18, 135, 54],
      maxZoom: 20,
      attributionControl: false,
      dragRotate: false,
      pitchWithRotate: false,
    });
  } catch (error) {
    // MapLibre throws when WebGL cannot be had: say so on the page.
    console.error(error);
    showMessage("webgl", { level: "error", text: () => t("error.webgl") });
    return null;
  }
}

function viewBbox(map: MapLibreMap, pad: number): Bbox {
  const b = map.getBounds();
  const dx = (b.getEast() - b.getWest()) * pad;
  const dy = (b.getNorth() - b.getSouth()) * pad;
  return [
    Math.max(-180, b.getWest() - dx),
    Math.max(-90, b.getSouth() - dy),
    Math.min(180, b.getEast() + dx),
    Math.min(90, b.getNorth() + dy),
  ];
}

function contains(outer: Bbox, inner: Bbox): boolean {
  return outer[0] <= inner[0] && outer[1] <= inner[1] && outer[2] >= inner[2] && outer[3] >= inner[3];
}

function sameBbox(a: Bbox, b: Bbox): boolean {
  return a.every((value, i) => Math.abs(value - (b[i] ?? NaN)) < 1e-9);
}

function fitToData(map: MapLibreMap, collections: Collection[]): void {
  const preferred = ["areas", "buildings", "grids", "roads"];
  const candidates = [...preferred.map((id) => collections.find((c) => c.id === id)), ...collections];
  for (const collection of candidates) {
    const bbox = collection && collectionBbox(collection);
    if (!bbox) continue;
    map.fitBounds(
      [
        [bbox[0], bbox[1]],
        [bbox[2], bbox[3]],
      ],
      { padding: 24, maxZoom: 16, duration: 0 },
    );
    fitted = true;
    return;
  }
}

// ------------------------------------------------------------------------------------- data

function setState(state: LayerState, patch: Partial<LayerState>): void {
  Object.assign(state, patch);
  updateLayer(state);
}

function layerList(status: LayerState["status"]): string | null {
  const titles = [...states.values()].filter((s) => s.status === status && s.visible).map(layerTitle);
  return titles.length ? titles.join(getLang() === "zh" ? "、" : ", ") : null;
}

/** One message for the layers that need a sign-in, one for those this account may not see. */
function showAccessPrompts(): void {
  if (layerList("locked") === null) clearMessage("locked");
  else {
    showMessage("locked", {
      level: "warning",
      text: () => t("auth.required", { layers: layerList("locked") ?? "" }),
      action: signInAction(),
    });
  }
  if (layerList("forbidden") === null) clearMessage("forbidden");
  else {
    showMessage("forbidden", {
      level: "warning",
      text: () => t("auth.forbidden", { layers: layerList("forbidden") ?? "" }),
    });
  }
}

async function loadCollection(map: MapLibreMap, state: LayerState, bbox: Bbox, view: Bbox): Promise<void> {
  const group = groups.get(state.id);
  if (!group) return;
  inflight.get(state.id)?.controller.abort();
  const controller = new AbortController();
  inflight.set(state.id, { controller, bbox });
  setState(state, { status: "loading", count: 0 });
  // The source is gone if the layers were rebuilt (sign-in, sign-out) while this was loading.
  const show = async (features: CityFeature[]): Promise<boolean> => {
    const source = map.getSource<GeoJSONSource>(group.sourceId);
    if (!source || controller.signal.aborted) return false;
    await source.setData({ type: "FeatureCollection", features });
    return true;
  };
  try {
    const result = await track(
      getItems(state.id, bbox, {
        maxPages: MAX_PAGES,
        signal: controller.signal,
        // Draw as the pages come: the first thousand buildings need not wait for the sixth.
        onPage: (features) => {
          if (controller.signal.aborted) return;
          void show(features);
          setState(state, { count: features.length });
        },
      }),
    );
    if (!(await show(result.features))) return;
    loaded.set(state.id, { bbox, complete: !result.truncated, view });
    setState(state, {
      status: "ready",
      count: result.features.length,
      numberMatched: result.numberMatched,
      truncated: result.truncated,
    });
    clearMessage(`layer:${state.id}`);
  } catch (error) {
    if (isAbort(error)) return;
    if (error instanceof ApiError && error.kind === "unauthorized") {
      // With a token, a 401 means the token is no longer good; without, the layer is not public.
      if (getToken()) expireSession();
      else {
        setState(state, { status: "locked" });
        showAccessPrompts();
      }
      return;
    }
    if (error instanceof ApiError && error.kind === "forbidden") {
      setState(state, { status: "forbidden" });
      showAccessPrompts();
      return;
    }
    setState(state, { status: "error" });
    // The server went away: one message for all layers, and its retry starts over.
    if (error instanceof ApiError && error.kind === "network") {
      showServerDown(map, error);
      return;
    }
    showMessage(`layer:${state.id}`, {
      level: "error",
      text: () => t("error.layer", { layer: layerTitle(state), message: describeError(error) }),
      action: {
        label: () => t("status.retry"),
        run: () => {
          clearMessage(`layer:${state.id}`);
          loaded.delete(state.id);
          setState(state, { status: "idle" });
          loadView(map);
        },
      },
    });
  } finally {
    if (inflight.get(state.id)?.controller === controller) inflight.delete(state.id);
  }
}

/** Loads what the current view needs and is not already on the map. */
function loadView(map: MapLibreMap): void {
  const zoom = map.getZoom();
  const view = viewBbox(map, 0);
  const fetchBbox = viewBbox(map, VIEW_PADDING);
  const hidden: LayerState[] = [];
  for (const state of states.values()) {
    if (!state.visible) continue;
    if (!shownAtZoom(state.id, zoom)) {
      hidden.push(state);
      if (inflight.has(state.id)) {
        inflight.get(state.id)?.controller.abort();
        inflight.delete(state.id);
        setState(state, { status: "idle" });
      }
      continue;
    }
    // Waiting for a sign-in or a role: asking again would get the same answer.
    if (state.status === "locked" || state.status === "forbidden" || state.status === "error") continue;
    const have = loaded.get(state.id);
    // A capped load is redone when the view changes (a smaller view may then fit), not before.
    if (have && (have.complete ? contains(have.bbox, view) : sameBbox(have.view, view))) continue;
    const pending = inflight.get(state.id);
    if (pending && contains(pending.bbox, view)) continue;
    void loadCollection(map, state, fetchBbox, view);
  }
  setZoomHint(zoom, hidden);
}

function onToggle(map: MapLibreMap, id: string, visible: boolean): void {
  const state = states.get(id);
  const group = groups.get(id);
  if (!state || !group) return;
  setState(state, { visible });
  setGroupVisible(map, group, visible);
  if (!visible && inflight.has(id)) {
    inflight.get(id)?.controller.abort();
    inflight.delete(id);
    setState(state, { status: "idle" });
  }
  showAccessPrompts();
  loadView(map);
}

function clearLayers(map: MapLibreMap): void {
  for (const { controller } of inflight.values()) controller.abort();
  inflight.clear();
  for (const group of groups.values()) removeCollection(map, group);
  groups.clear();
  loaded.clear();
}

function renderPanel(map: MapLibreMap): void {
  renderLayers([...states.values()], {
    onToggle: (id, visible) => onToggle(map, id, visible),
    onBuildingMode: (mode) => {
      const group = groups.get("buildings");
      if (group) setBuildingColourMode(map, group, mode);
    },
  });
  showAccessPrompts();
}

/** (Re)builds the layer list from the server's collections; keeps the person's ticks. */
async function loadCollections(map: MapLibreMap): Promise<void> {
  let collections: Collection[];
  try {
    collections = await track(getCollections());
    clearMessage("collections");
  } catch (error) {
    showMessage("collections", {
      level: "error",
      text: () => t("error.collections", { message: describeError(error) }),
      action: { label: () => t("status.retry"), run: () => void start(map) },
    });
    return;
  }
  clearLayers(map);
  const previous = new Map(states);
  states.clear();
  const byId = new Map(collections.map((c) => [c.id, c]));
  let customIndex = 0;
  for (const id of sortCollectionIds([...byId.keys()])) {
    const collection = byId.get(id);
    if (!collection) continue;
    const state: LayerState = {
      id,
      serverTitle: collection.title,
      description: collection.description,
      customIndex: isFixedCollection(id) ? 0 : customIndex++,
      visible: previous.get(id)?.visible ?? DEFAULT_ON.has(id),
      status: "idle",
      count: 0,
      numberMatched: null,
      truncated: false,
    };
    states.set(id, state);
    const group = addCollection(map, id, state.customIndex, getBuildingMode());
    groups.set(id, group);
    setGroupVisible(map, group, state.visible);
  }
  renderPanel(map);
  if (!fitted) fitToData(map, collections);
  loadView(map);
}

function showServerDown(map: MapLibreMap, error: ApiError): void {
  showMessage("server", {
    level: "error",
    text: () => describeError(error),
    action: { label: () => t("status.retry"), run: () => void start(map) },
  });
}

/** Checks the server, then (re)loads the layer list and the view: also the retry after an outage. */
async function start(map: MapLibreMap): Promise<void> {
  clearMessage("server");
  try {
    health = await track(getHealth());
    healthError = undefined;
    renderStatusLine();
  } catch (error) {
    health = null;
    healthError = error;
    renderStatusLine();
    // Only "the server is not there" stops the page; anything else, the layers may still load.
    if (error instanceof ApiError && error.kind === "network") {
      showServerDown(map, error);
      return;
    }
  }
  await loadCollections(map);
}

// ------------------------------------------------------------------------------ interaction

function interactiveLayers(): string[] {
  return [...groups.values()].filter((g) => states.get(g.collectionId)?.visible).flatMap((g) => g.layerIds);
}

function featuresAt(map: MapLibreMap, event: MapMouseEvent) {
  const { x, y } = event.point;
  // A few pixels of slack: a finger is not a mouse pointer.
  const slack =
    event.originalEvent instanceof PointerEvent && event.originalEvent.pointerType === "touch" ? 10 : 4;
  return map.queryRenderedFeatures(
    [
      [x - slack, y - slack],
      [x + slack, y + slack],
    ],
    { layers: interactiveLayers() },
  );
}

function wireMap(map: MapLibreMap): void {
  map.addControl(new NavigationControl({ showCompass: false }), "top-right");
  map.addControl(new ScaleControl({ unit: "metric" }), "bottom-right");
  map.on("moveend", () => {
    window.clearTimeout(moveTimer);
    moveTimer = window.setTimeout(() => loadView(map), 200);
  });
  map.on("click", (event) => {
    const feature = featuresAt(map, event)[0];
    if (!feature) return;
    const collectionId = feature.source.replace(/^c:/, "");
    popup?.popup.remove();
    const opened = new Popup({ maxWidth: "340px" })
      .setLngLat(event.lngLat)
      .setDOMContent(popupContent(popupTitle(collectionId), feature.properties))
      .addTo(map);
    popup = { popup: opened, collectionId, properties: feature.properties };
    opened.on("close", () => {
      if (popup?.popup === opened) popup = null;
    });
  });
  map.on("mousemove", (event) => {
    map.getCanvas().style.cursor = featuresAt(map, event).length ? "pointer" : "";
  });
  map.on("error", (event) => console.error(event.error));
}

async function main(): Promise<void> {
  wireChrome();
  const map = createMap();
  let started = false;
  const auth = initAuth(() => {
    // Who may see what has changed: rebuild the layers from what the server now offers.
    if (map && started) void loadCollections(map);
  });
  onLangChange(() => {
    renderStatusLine();
    if (map) {
      renderPanel(map);
      loadView(map);
    }
    if (popup) popup.popup.setDOMContent(popupContent(popupTitle(popup.collectionId), popup.properties));
  });
  if (!map) return;
  wireMap(map);
  await Promise.all([map.once("load"), auth]);
  started = true;
  await start(map);
}

void main();
