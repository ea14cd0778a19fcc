/** The sign-in box: OAuth2 password flow, the token in sessionStorage, who is signed in. */

import { ApiError, getMe, getToken, setToken, signIn, type User } from "./api";
import { byId, el } from "./dom";
import { onLangChange, roleName, t } from "./i18n";
import { clearMessage, describeError, showMessage, track } from "./notify";
import { setPanelOpen } from "./panel";

let user: User | null = null;
let onChange: (user: User | null) => void = () => {};

export function currentUser(): User | null {
  return user;
}

function render(): void {
  const form = byId<HTMLFormElement>("signin-form");
  const box = byId("signed-in");
  form.hidden = user !== null;
  box.hidden = user === null;
  byId("auth-heading").textContent = t(user ? "auth.account" : "auth.title");
  if (!user) return;
  const name = user.display_name ? `${user.display_name} (${user.username})` : user.username;
  byId("user-name").textContent = t("auth.signedInAs", { name });
  const roles = byId("user-roles");
  roles.replaceChildren(
    el("span", { className: "field-label", text: t("auth.roles") }),
    ...user.roles.map((role) =>
      el("span", { className: "chip", text: roleName(role), attrs: { title: role } }),
    ),
  );
  const department = byId("user-department");
  department.hidden = !user.department;
  department.textContent = user.department ? t("auth.department", { department: user.department }) : "";
}

function setUser(next: User | null): void {
  user = next;
  render();
  onChange(user);
}

function setFormError(text: string | null): void {
  const box = byId("signin-error");
  box.textContent = text ?? "";
  box.hidden = text === null;
}

async function submit(event: SubmitEvent): Promise<void> {
  event.preventDefault();
  const form = event.currentTarget as HTMLFormElement;
  const data = new FormData(form);
  const username = String(data.get("username") ?? "").trim();
  const password = String(data.get("password") ?? "");
  if (!username || !password) {
    setFormError(t("auth.missing"));
    return;
  }
  const button = byId<HTMLButtonElement>("signin-submit");
  button.disabled = true;
  button.textContent = t("auth.submitting");
  setFormError(null);
  try {
    setToken(await track(signIn(username, password)));
    const me = await track(getMe());
    form.reset();
    clearMessage("auth");
    setUser(me);
  } catch (error) {
    setToken(null);
    const wrongCredentials =
      error instanceof ApiError &&
      (error.oauthError === "invalid_grant" || (error.kind === "unauthorized" && !error.oauthError));
    setFormError(wrongCredentials ? t("auth.badCredentials") : describeError(error));
  } finally {
    button.disabled = false;
    button.textContent = t("auth.submit");
  }
}

/** The token was refused: forget it and say so. */
export function expireSession(): void {
  if (!getToken() && !user) return;
  setToken(null);
  showMessage("auth", { level: "warning", text: () => t("auth.expired"), action: signInAction() });
  setUser(null);
}

export function signInAction(): { label: () => string; run: () => void } {
  return { label: () => t("auth.signInNow"), run: focusSignIn };
}

/** Opens the panel (on a phone it may be collapsed) and puts the cursor in the username box. */
export function focusSignIn(): void {
  setPanelOpen(true);
  const input = byId("signin-form").querySelector<HTMLInputElement>("input[name=username]");
  input?.scrollIntoView({ block: "nearest" });
  input?.focus();
}

/** Wires the box and, if a token survives from earlier in this tab, finds out whose it is. */
export async function initAuth(changed: (user: User | null) => void): Promise<void> {
  onChange = changed;
  byId<HTMLFormElement>("signin-form").addEventListener("submit", (event) => void submit(event));
  byId("signout").addEventListener("click", () => {
    setToken(null);
    clearMessage("auth");
    setUser(null);
  });
  onLangChange(render);
  render();
  if (!getToken()) return;
  try {
    user = await track(getMe());
  } catch (error) {
    if (error instanceof ApiError && error.kind === "unauthorized") {
      setToken(null);
      showMessage("auth", { level: "warning", text: () => t("auth.expired"), action: signInAction() });
    } else {
      showMessage("auth", { level: "error", text: () => describeError(error) });
    }
  }
  render();
}
