/**
 * The page's only door to the server: OGC API – Features for the layers, the OAuth2 password
 * flow and `/api/v1/auth/me` for the user, `/api/v1/health` for the status line. Every failure
 * becomes an {@link ApiError} whose `kind` the page turns into a sentence.
 */

import type { Feature, FeatureCollection, Geometry, GeoJsonProperties } from "geojson";

export type Bbox = [minx: number, miny: number, maxx: number, maxy: number];

export type ApiErrorKind =
  "network" | "unauthorized" | "forbidden" | "not_found" | "bad_request" | "server" | "invalid_response";

export class ApiError extends Error {
  constructor(
    readonly kind: ApiErrorKind,
    readonly status: number | null,
    /** What the server said, in its own words (problem+json, OGC or RFC 6749 body). */
    readonly detail: string | null,
    /** RFC 6749 §5.2 error code from the token endpoint, e.g. `invalid_grant`. */
    readonly oauthError: string | null = null,
  ) {
    super(detail ?? kind);
    this.name = "ApiError";
  }
}

export interface Link {
  href: string;
  rel: string;
  type?: string;
  title?: string;
}

export interface Collection {
  id: string;
  title?: string;
  description?: string;
  extent?: { spatial?: { bbox?: number[][] } };
  links?: Link[];
}

export interface Health {
  status: string;
  database: string;
  version: string;
}

export interface User {
  username: string;
  display_name?: string | null;
  roles: string[];
  department?: string | null;
  scope?: unknown;
}

export type CityFeature = Feature<Geometry, GeoJsonProperties>;

export interface ItemsResult {
  features: CityFeature[];
  /** The server's count for the whole bbox, when it gives one. */
  numberMatched: number | null;
  /** True when a `next` link was left unfollowed because of the cap. */
  truncated: boolean;
}

// ---------------------------------------------------------------------------------- token

const TOKEN_KEY = "cityops.token";

function storedToken(): string | null {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

// sessionStorage: the token dies with the tab, and is not shared with other tabs.
let token: string | null = storedToken();

export function getToken(): string | null {
  return token;
}

export function setToken(value: string | null): void {
  token = value;
  try {
    if (value === null) sessionStorage.removeItem(TOKEN_KEY);
    else sessionStorage.setItem(TOKEN_KEY, value);
  } catch {
    // Without storage the token lives as long as the page: enough for this page.
  }
}

// ---------------------------------------------------------------------------------- http

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** The human part of an error body in any of the formats the server speaks. */
function errorDetail(body: unknown): { detail: string | null; oauthError: string | null } {
  if (!isRecord(body)) return { detail: null, oauthError: null };
  const oauthError = typeof body.error === "string" ? body.error : null;
  const candidates = [body.error_description, body.detail, body.description, body.title];
  for (const candidate of candidates) {
    if (typeof candidate === "string" && candidate.trim()) {
      return { detail: candidate, oauthError };
    }
    // FastAPI's own validation errors: {detail: [{msg}]}
    if (Array.isArray(candidate)) {
      const msgs = candidate
        .map((item) => (isRecord(item) && typeof item.msg === "string" ? item.msg : null))
        .filter((msg): msg is string => msg !== null);
      if (msgs.length) return { detail: msgs.join("; "), oauthError };
    }
  }
  return { detail: oauthError, oauthError };
}

function kindForStatus(status: number): ApiErrorKind {
  if (status === 401) return "unauthorized";
  if (status === 403) return "forbidden";
  if (status === 404) return "not_found";
  // A reverse proxy in front of a stopped app answers 502/503/504: to a person that is "down".
  if (status === 502 || status === 503 || status === 504) return "network";
  if (status >= 500) return "server";
  return "bad_request";
}

function sameOrigin(url: URL): boolean {
  return url.origin === window.location.origin;
}

async function request(url: URL, init: RequestInit = {}): Promise<unknown> {
  const headers = new Headers(init.headers);
  headers.set("Accept", "application/json, application/geo+json;q=0.9, */*;q=0.1");
  // The token never leaves this origin, whatever a `next` link says.
  if (token && sameOrigin(url)) headers.set("Authorization", `Bearer ${token}`);
  let response: Response;
  try {
    response = await fetch(url, { ...init, headers });
  } catch (error) {
    if (error instanceof DOMException && error.name === "AbortError") throw error;
    throw new ApiError("network", null, null);
  }
  let body: unknown = null;
  const text = await response.text();
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      if (response.ok) throw new ApiError("invalid_response", response.status, null);
    }
  }
  if (!response.ok) {
    const { detail, oauthError } = errorDetail(body);
    throw new ApiError(kindForStatus(response.status), response.status, detail, oauthError);
  }
  return body;
}

function apiUrl(path: string, params: Record<string, string> = {}): URL {
  // The APIs live at the origin's root even if this page is ever mounted below it.
  const url = new URL(path, window.location.origin);
  for (const [key, value] of Object.entries(params)) url.searchParams.set(key, value);
  return url;
}

// ---------------------------------------------------------------------------------- endpoints

export async function getHealth(signal?: AbortSignal): Promise<Health> {
  const body = await request(apiUrl("/api/v1/health"), signal ? { signal } : {});
  if (!isRecord(body) || typeof body.status !== "string") {
    throw new ApiError("invalid_response", 200, null);
  }
  return {
    status: body.status,
    database: typeof body.database === "string" ? body.database : "",
    version: typeof body.version === "string" ? body.version : "",
  };
}

export async function getCollections(signal?: AbortSignal): Promise<Collection[]> {
  const body = await request(apiUrl("/ogcapi/collections", { f: "json" }), signal ? { signal } : {});
  if (!isRecord(body) || !Array.isArray(body.collections)) {
    throw new ApiError("invalid_response", 200, null);
  }
  return body.collections.filter(
    (c): c is Collection => isRecord(c) && typeof c.id === "string" && c.id !== "",
  );
}

/** The collection's extent as [minx, miny, maxx, maxy] in CRS84, if it declares a sane one. */
export function collectionBbox(collection: Collection): Bbox | null {
  const box = collection.extent?.spatial?.bbox?.[0];
  if (!box || box.length < 4 || !box.every(Number.isFinite)) return null;
  // A 6-number bbox is 3D: minx, miny, minz, maxx, maxy, maxz.
  const [minx, miny, maxx, maxy] =
    box.length >= 6 ? [box[0], box[1], box[3], box[4]] : [box[0], box[1], box[2], box[3]];
  if (minx === undefined || miny === undefined || maxx === undefined || maxy === undefined) {
    return null;
  }
  if (minx > maxx || miny > maxy || miny < -90 || maxy > 90) return null;
  return [minx, miny, maxx, maxy];
}

export interface ItemsOptions {
  /** Features per page: the OGC API `limit`, at most 1000 on this server. */
  limit?: number;
  /** Pages followed at most: past that the result is marked truncated. */
  maxPages?: number;
  signal?: AbortSignal;
  /** Called with all features so far after each page but the last. */
  onPage?: (features: CityFeature[]) => void;
}

/**
 * All features of `collectionId` in `bbox`, following `rel=next` links (OGC API – Features
 * Part 1, §7.15.2 paging) for at most `maxPages` pages.
 */
export async function getItems(
  collectionId: string,
  bbox: Bbox,
  { limit = 1000, maxPages = 5, signal, onPage }: ItemsOptions = {},
): Promise<ItemsResult> {
  let url: URL | null = apiUrl(`/ogcapi/collections/${encodeURIComponent(collectionId)}/items`, {
    bbox: bbox.map((n) => n.toFixed(6)).join(","),
    limit: String(limit),
    f: "json",
  });
  const features: CityFeature[] = [];
  let numberMatched: number | null = null;
  for (let page = 0; url !== null; page++) {
    if (page >= maxPages) return { features, numberMatched, truncated: true };
    const body = await request(url, signal ? { signal } : {});
    if (!isRecord(body) || body.type !== "FeatureCollection" || !Array.isArray(body.features)) {
      throw new ApiError("invalid_response", 200, null);
    }
    const collection = body as unknown as FeatureCollection & {
      numberMatched?: unknown;
      links?: unknown;
    };
    features.push(...collection.features);
    if (typeof collection.numberMatched === "number") numberMatched = collection.numberMatched;
    url = nextLink(collection.links, url);
    // A server that keeps answering `next` with empty pages must not keep us looping.
    if (collection.features.length === 0) url = null;
    if (url !== null && page + 1 < maxPages) onPage?.([...features]);
  }
  return { features, numberMatched, truncated: false };
}

function nextLink(links: unknown, base: URL): URL | null {
  if (!Array.isArray(links)) return null;
  for (const link of links) {
    if (isRecord(link) && link.rel === "next" && typeof link.href === "string") {
      const url = new URL(link.href, base);
      // A `next` link to another origin is not ours to follow (nor to send a token to).
      return sameOrigin(url) ? url : null;
    }
  }
  return null;
}

/** OAuth2 resource-owner password flow (RFC 6749 §4.3): returns the access token. */
export async function signIn(username: string, password: string): Promise<string> {
  const body = await request(apiUrl("/api/v1/auth/token"), {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ grant_type: "password", username, password }),
  });
  if (!isRecord(body) || typeof body.access_token !== "string") {
    throw new ApiError("invalid_response", 200, null);
  }
  return body.access_token;
}

export async function getMe(signal?: AbortSignal): Promise<User> {
  const body = await request(apiUrl("/api/v1/auth/me"), signal ? { signal } : {});
  if (!isRecord(body) || typeof body.username !== "string") {
    throw new ApiError("invalid_response", 200, null);
  }
  return {
    username: body.username,
    display_name: typeof body.display_name === "string" ? body.display_name : null,
    roles: Array.isArray(body.roles) ? body.roles.filter((r) => typeof r === "string") : [],
    department: typeof body.department === "string" ? body.department : null,
    scope: body.scope,
  };
}

export function isAbort(error: unknown): boolean {
  return error instanceof DOMException && error.name === "AbortError";
}
