/** The content of a feature's popup: its properties as a table, known fields labelled first. */

import { fieldLabel, getLang, knownFieldOrder, t, valueLabel } from "./i18n";
import { el } from "./dom";

type Properties = Record<string, unknown>;

function formatValue(field: string, value: unknown): string {
  if (value === null || value === undefined || value === "") return "—";
  if (typeof value === "number") {
    // No grouping: years and codes are numbers too, and "1,975" is not a year.
    const text = new Intl.NumberFormat(getLang() === "zh" ? "zh-CN" : "en", {
      maximumFractionDigits: 2,
      useGrouping: false,
    }).format(value);
    return field === "height" ? `${text} ${t("unit.metre")}` : text;
  }
  // MapLibre hands nested objects back as JSON strings: they are shown as they come.
  if (typeof value === "string") return valueLabel(field, value);
  if (typeof value === "boolean") return value ? "✓" : "✗";
  return JSON.stringify(value);
}

/** Known fields in the dictionary's order, then the rest alphabetically. */
function orderedFields(properties: Properties): string[] {
  const known = knownFieldOrder().filter((f) => f in properties);
  const rest = Object.keys(properties)
    .filter((f) => !known.includes(f))
    .sort();
  return [...known, ...rest];
}

export function popupContent(collectionTitle: string, properties: Properties | null): HTMLElement {
  const props = properties ?? {};
  // Buildings often have no name: their address says which one it is.
  const title = props.name ?? props.address ?? props.code ?? props.id;
  const root = el("div", { className: "popup" });
  root.append(el("div", { className: "popup-layer", text: t("popup.layer", { layer: collectionTitle }) }));
  if (title !== undefined && title !== null && title !== "") {
    root.append(el("h3", { className: "popup-title", text: String(title) }));
  }
  const fields = orderedFields(props);
  if (fields.length === 0) {
    root.append(el("p", { className: "popup-empty", text: t("popup.empty") }));
    return root;
  }
  const table = el("table", { className: "popup-table" });
  for (const field of fields) {
    const label = fieldLabel(field);
    const row = el("tr");
    const th = el("th", { text: label ?? field });
    if (label) th.title = field;
    row.append(th, el("td", { text: formatValue(field, props[field]) }));
    table.append(row);
  }
  root.append(table);
  return root;
}
