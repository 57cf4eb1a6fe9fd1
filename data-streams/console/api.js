// The API as the console calls it: JSON in and out, the CSRF token on every change, the API's
// error text kept for the banner, and a 401 anywhere sends the page back to the login form.

export const CSRF_KEY = "ds-csrf";

/** A failed call: `message` is the API's `error`, `detail` its `detail` (with `problems`). */
export class ApiError extends Error {
  constructor(status, message, detail) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.detail = detail || null;
  }

  get problems() {
    return (this.detail && Array.isArray(this.detail.problems)) ? this.detail.problems : [];
  }
}

let onUnauthorized = () => {};

/** What to do when a call says 401 (the session ended): show the login form. */
export function setUnauthorizedHandler(handler) {
  onUnauthorized = handler;
}

/**
 * Call the API. `body` (an object) goes as JSON. Resolves to the parsed JSON (or null for an
 * empty answer); rejects with an ApiError.
 */
export async function api(method, path, body, { quiet401 = false } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && method !== "HEAD") {
    const csrf = sessionStorage.getItem(CSRF_KEY);
    if (csrf) headers["X-CSRF-Token"] = csrf;
  }
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
    });
  } catch (err) {
    throw new ApiError(0, `cannot reach data-streams (${err.message || err}); is it running?`);
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const message = (data && data.error) || text.trim().slice(0, 200) || response.statusText || "request failed";
    const err = new ApiError(response.status, message, data && data.detail);
    if (response.status === 401 && !quiet401) onUnauthorized(err);
    throw err;
  }
  return data;
}

export const get = (path, opts) => api("GET", path, undefined, opts);
export const post = (path, body, opts) => api("POST", path, body, opts);
export const patch = (path, body, opts) => api("PATCH", path, body, opts);
export const del = (path, opts) => api("DELETE", path, undefined, opts);

/** A query string from an object, leaving out empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v != null && v !== "") q.append(k, v);
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}
