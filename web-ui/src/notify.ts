/**
 * Messages a person must see (in the page, not only in the console) and the loading indicator.
 * A message has a key, so the same problem is shown once and can be withdrawn when it is over;
 * its text is a function, so it follows a language switch.
 */

import { ApiError } from "./api";
import { byId, el } from "./dom";
import { onLangChange, t } from "./i18n";

export type Level = "error" | "warning" | "info";

interface Message {
  level: Level;
  text: () => string;
  action?: { label: () => string; run: () => void };
}

const messages = new Map<string, Message>();

function render(): void {
  const box = byId("messages");
  box.replaceChildren();
  for (const [key, message] of messages) {
    const item = el("div", { className: `message message-${message.level}` });
    item.append(el("span", { className: "message-text", text: message.text() }));
    if (message.action) {
      const { run, label } = message.action;
      const button = el("button", { className: "message-action", text: label(), attrs: { type: "button" } });
      button.addEventListener("click", run);
      item.append(button);
    }
    const close = el("button", {
      className: "message-close",
      text: "×",
      attrs: { type: "button", "aria-label": t("status.dismiss"), title: t("status.dismiss") },
    });
    close.addEventListener("click", () => clearMessage(key));
    item.append(close);
    box.append(item);
  }
  box.hidden = messages.size === 0;
}

export function showMessage(key: string, message: Message): void {
  messages.set(key, message);
  render();
}

export function clearMessage(key: string): void {
  if (messages.delete(key)) render();
}

/** A sentence for a failed request: ours for the kind, then the server's own words if any. */
export function describeError(error: unknown): string {
  if (!(error instanceof ApiError)) {
    return error instanceof Error ? error.message : String(error);
  }
  const status = error.status ?? 0;
  const ours = {
    network: () => t("error.network"),
    unauthorized: () => t("error.unauthorized"),
    forbidden: () => t("error.forbidden"),
    not_found: () => t("error.notFound"),
    bad_request: () => t("error.badRequest", { status }),
    server: () => t("error.server", { status }),
    invalid_response: () => t("error.invalidResponse"),
  }[error.kind]();
  return error.detail && error.kind !== "network" ? `${ours} (${error.detail})` : ours;
}

// ----------------------------------------------------------------------------------- loading

let pending = 0;

function renderLoading(): void {
  const box = byId("loading");
  box.hidden = pending === 0;
  byId("map").setAttribute("aria-busy", String(pending > 0));
}

/** Counts one request in flight until the promise settles; returns the promise. */
export function track<T>(promise: Promise<T>): Promise<T> {
  pending++;
  renderLoading();
  return promise.finally(() => {
    pending--;
    renderLoading();
  });
}

onLangChange(render);
