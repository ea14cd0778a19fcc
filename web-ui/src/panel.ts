/** The side panel's layer list: a checkbox per collection, its status and its legend. */

import { byId, el } from "./dom";
import { collectionName, fieldLabel, getLang, t } from "./i18n";
import { legendFor, minZoomFor, type BuildingColourMode, type LegendItem } from "./layers";

export type LayerStatus = "idle" | "loading" | "ready" | "locked" | "forbidden" | "error";

export interface LayerState {
  id: string;
  serverTitle: string | undefined;
  description: string | undefined;
  customIndex: number;
  visible: boolean;
  status: LayerStatus;
  count: number;
  numberMatched: number | null;
  truncated: boolean;
}

export interface PanelCallbacks {
  onToggle: (id: string, visible: boolean) => void;
  onBuildingMode: (mode: BuildingColourMode) => void;
}

export function layerTitle(state: LayerState): string {
  return collectionName(state.id, state.serverTitle);
}

let buildingMode: BuildingColourMode = "year_built";
let callbacks: PanelCallbacks | null = null;
const rows = new Map<string, Row>();

function swatch(item: LegendItem): HTMLElement {
  const node = el("span", { className: `swatch swatch-${item.shape}` });
  node.style.setProperty("--swatch-colour", item.colour);
  if (item.width !== undefined) node.style.setProperty("--swatch-width", `${Math.max(1, item.width)}px`);
  return node;
}

function legendItems(state: LayerState): HTMLElement {
  const list = el("ul", { className: "legend-items" });
  for (const item of legendFor(state.id, buildingMode, state.customIndex)) {
    list.append(el("li", {}, swatch(item), item.label));
  }
  return list;
}

function legend(state: LayerState): HTMLElement | null {
  // Single-symbol layers show their swatch next to the name instead.
  if (legendFor(state.id, buildingMode, state.customIndex).length <= 1) return null;
  const box = el("div", { className: "legend" });
  let list = legendItems(state);
  if (state.id === "buildings") {
    const select = el("select", { attrs: { "aria-label": t("legend.colourBy") } });
    for (const mode of ["year_built", "floors"] as const) {
      const option = el("option", { text: fieldLabel(mode) ?? mode, attrs: { value: mode } });
      option.selected = mode === buildingMode;
      select.append(option);
    }
    select.addEventListener("change", () => {
      buildingMode = select.value === "floors" ? "floors" : "year_built";
      const fresh = legendItems(state);
      list.replaceWith(fresh);
      list = fresh;
      callbacks?.onBuildingMode(buildingMode);
    });
    box.append(el("label", { className: "legend-mode" }, `${t("legend.colourBy")} `, select));
  }
  box.append(list);
  return box;
}

function statusText(state: LayerState): string {
  switch (state.status) {
    case "locked":
      return t("panel.locked");
    case "forbidden":
      return t("panel.forbidden");
    case "error":
      return t("panel.layerError");
    case "loading":
      return state.count > 0 ? t("panel.countLoading", { n: state.count }) : "";
    case "ready":
      if (!state.truncated) return t("panel.count", { n: state.count });
      return state.numberMatched !== null
        ? t("panel.countTruncated", { n: state.count, total: state.numberMatched })
        : t("panel.countTruncatedUnknown", { n: state.count });
    default:
      return "";
  }
}

interface Row {
  checkbox: HTMLInputElement;
  status: HTMLElement;
  legendSlot: HTMLElement;
  item: HTMLLIElement;
}

function buildRow(state: LayerState): Row {
  const checkbox = el("input", { attrs: { type: "checkbox", id: `layer-${state.id}` } });
  checkbox.addEventListener("change", () => callbacks?.onToggle(state.id, checkbox.checked));
  const items = legendFor(state.id, buildingMode, state.customIndex);
  const label = el("label", { className: "layer-name", attrs: { for: checkbox.id } });
  if (items.length === 1 && items[0]) label.append(swatch(items[0]));
  label.append(layerTitle(state));
  if (state.description) label.title = state.description;
  const status = el("span", { attrs: { "aria-live": "polite" } });
  const legendSlot = el("div", { className: "legend-slot" });
  const item = el(
    "li",
    { className: "layer" },
    el("div", { className: "layer-head" }, checkbox, label, status),
    legendSlot,
  );
  const row = { checkbox, status, legendSlot, item };
  updateRow(row, state, true);
  return row;
}

/** Updates in place, so that a status change never closes an open menu or steals focus. */
function updateRow(row: Row, state: LayerState, legendChanged: boolean): void {
  row.status.className = `layer-status status-${state.status}`;
  row.status.textContent = statusText(state);
  if (state.status === "loading") row.status.append(el("span", { className: "spinner spinner-small" }));
  const wasVisible = !row.item.classList.contains("layer-off");
  row.checkbox.checked = state.visible;
  row.item.classList.toggle("layer-off", !state.visible);
  if (legendChanged || wasVisible !== state.visible) {
    const box = state.visible ? legend(state) : null;
    row.legendSlot.replaceChildren(...(box ? [box] : []));
  }
}

export function renderLayers(states: LayerState[], handlers: PanelCallbacks): void {
  callbacks = handlers;
  rows.clear();
  const list = byId("layer-list");
  list.replaceChildren();
  for (const state of states) {
    const row = buildRow(state);
    rows.set(state.id, row);
    list.append(row.item);
  }
  byId("no-layers").hidden = states.length > 0;
}

export function updateLayer(state: LayerState): void {
  const row = rows.get(state.id);
  if (row) updateRow(row, state, false);
}

export function getBuildingMode(): BuildingColourMode {
  return buildingMode;
}

/** Names the ticked layers that the map is too zoomed out to show, and the zoom they need. */
export function setZoomHint(zoom: number, hidden: LayerState[]): void {
  const hint = byId("zoom-hint");
  hint.hidden = hidden.length === 0;
  if (hidden.length === 0) return;
  // Rounded down: "13.9, needs ≥ 14" reads right where "14.0, needs ≥ 14" would not.
  const shown = Math.floor(zoom * 10) / 10;
  hint.textContent = t("panel.zoomHint", {
    layers: hidden.map(layerTitle).join(getLang() === "zh" ? "、" : ", "),
    zoom: shown.toFixed(1),
    min: Math.min(...hidden.map((s) => minZoomFor(s.id))),
  });
}

/** Open or collapse the panel (collapsed by default on a phone, where it covers the map). */
export function setPanelOpen(open: boolean): void {
  document.body.classList.toggle("panel-closed", !open);
  byId("panel-open").setAttribute("aria-expanded", String(open));
}
