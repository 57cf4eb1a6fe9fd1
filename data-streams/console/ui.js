// DOM building, formatting and the error banner: the small toolkit every page uses.

/**
 * Build an element: `h("a", {href: "#/x", class: "btn", "data-test": "drill", on: {click: f}}, "text", child)`.
 * Attributes set to null, undefined or false are left out; `true` sets an empty attribute.
 * Children may be strings, numbers, nodes, arrays of them, or null (skipped).
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value == null || value === false) continue;
    if (name === "on") {
      for (const [event, handler] of Object.entries(value)) el.addEventListener(event, handler);
    } else if (name === "value" && "value" in el) {
      el.value = value;
    } else if (name === "checked" || name === "selected" || name === "disabled") {
      el[name] = Boolean(value);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child == null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/** Replace everything in `el` with `children`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// ---- times ----------------------------------------------------------------------------------

/**
 * A timestamp in local time, with its RFC 3339 form (as the API sent it) in `title`.
 * `seconds: false` leaves the seconds out (reading hours); `relative` shows "5 min ago".
 */
export function time(iso, { relative = false, seconds = true } = {}) {
  if (!iso) return h("span", { class: "muted" }, "—");
  const el = h("time", { datetime: iso, title: iso });
  if (relative) el.dataset.rel = iso;
  el.textContent = relative ? ago(iso) : localTime(iso, { seconds });
  return el;
}

export function localTime(iso, { seconds = true } = {}) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const sameYear = d.getFullYear() === new Date().getFullYear();
  return d.toLocaleString(undefined, {
    year: sameYear ? undefined : "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: seconds ? "2-digit" : undefined,
  });
}

/** "12 s ago", "5 min ago", "in 3 h". */
export function ago(iso) {
  const ms = Date.parse(iso);
  if (Number.isNaN(ms)) return String(iso);
  let s = Math.round((Date.now() - ms) / 1000);
  const future = s < 0;
  s = Math.abs(s);
  let text;
  if (s < 5) return "just now";
  if (s < 60) text = `${s} s`;
  else if (s < 3600) text = `${Math.floor(s / 60)} min`;
  else if (s < 86400) text = `${Math.floor(s / 3600)} h`;
  else text = `${Math.floor(s / 86400)} d`;
  return future ? `in ${text}` : `${text} ago`;
}

/** Refresh every relative time on the page (called on a timer). */
export function refreshRelativeTimes(root = document) {
  for (const el of root.querySelectorAll("[data-rel]")) el.textContent = ago(el.dataset.rel);
}

/** Milliseconds as "15 s", "1 h", "1 h 30 min", "250 ms". */
export function duration(ms) {
  if (ms == null) return "—";
  if (ms < 1000) return `${ms} ms`;
  const parts = [];
  let s = Math.round(ms / 1000);
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["min", 60], ["s", 1]]) {
    if (s >= size) {
      parts.push(`${Math.floor(s / size)} ${unit}`);
      s %= size;
    }
  }
  return parts.slice(0, 2).join(" ");
}

/** UTC midnight of today, RFC 3339. */
export function utcMidnight() {
  const d = new Date();
  return new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate())).toISOString();
}

// ---- numbers and names ----------------------------------------------------------------------

export function num(value, digits = 0) {
  if (value == null || Number.isNaN(value)) return "—";
  return Number(value).toLocaleString(undefined, {
    maximumFractionDigits: digits, minimumFractionDigits: 0,
  });
}

/** A share (0..1) as a percentage: "30%", "0.4%". */
export function percent(share) {
  if (share == null) return "—";
  const p = share * 100;
  if (p > 0 && p < 1) return `${p.toFixed(1)}%`;
  return `${Math.round(p)}%`;
}

export function bytes(n) {
  if (n == null) return "—";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

const POLLUTANTS = { p2: "PM2.5", p1: "PM10", o3: "O₃", n2: "NO₂", s2: "SO₂", co: "CO" };

/** IQAir's pollutant code as people write it (`p2` → PM2.5). */
export function pollutant(code) {
  if (!code) return "—";
  return POLLUTANTS[code] || code;
}

/** A stream's parameters in a few words: "52.52, 13.40" or "Krakow, Poland". */
export function paramsShort(params) {
  if (!params || typeof params !== "object") return "—";
  if ("lat" in params || "lon" in params) {
    const f = (v) => (typeof v === "number" ? v.toFixed(2) : String(v ?? "?"));
    return `${f(params.lat)}, ${f(params.lon)}`;
  }
  const place = [params.city, params.state, params.country].filter(Boolean);
  if (place.length) return place.length > 2 ? `${place[0]}, ${place[2]}` : place.join(", ");
  const keys = Object.keys(params);
  return keys.length ? keys.map((k) => `${k}=${params[k]}`).join(", ") : "—";
}

export function shortId(id) {
  return id ? String(id).slice(-8) : "—";
}

/** The status badge of a stream (`data-test="status"`). */
export function statusBadge(status, test = "status") {
  return h("span", { class: `badge status-${status}`, "data-test": test, "data-status": status }, status);
}

// ---- the error banner -----------------------------------------------------------------------

/** The text to show for a failed call: the API's own `error`, with what a 503 means. */
export function errorText(err) {
  if (!err) return "Something went wrong.";
  if (err.status === 503) {
    return `Service unavailable (HTTP 503): ${err.message}. The database or the object store is down.`;
  }
  if (err.status) return `${err.message} (HTTP ${err.status})`;
  return err.message || String(err);
}

/** Show `err` (an ApiError, an Error or a string) in the banner under the header. */
export function showError(err, context) {
  const banner = document.getElementById("banner");
  if (!banner) return;
  const text = typeof err === "string" ? err : errorText(err);
  const line = h("div", { class: "banner-error", role: "alert", "data-test": "error-banner" },
    h("span", {}, context ? `${context}: ${text}` : text),
    h("button", {
      type: "button", class: "banner-close", "aria-label": "Dismiss",
      on: { click: (e) => e.currentTarget.parentElement.remove() },
    }, "×"));
  // The newest first, and never the same line twice.
  for (const old of banner.querySelectorAll("[data-test=error-banner]")) {
    if (old.firstChild.textContent === line.firstChild.textContent) old.remove();
  }
  banner.prepend(line);
  while (banner.children.length > 3) banner.lastChild.remove();
}

export function clearErrors() {
  const banner = document.getElementById("banner");
  if (banner) banner.replaceChildren();
}

/** A short-lived note at the bottom right ("Stream started."). */
export function toast(text) {
  const el = h("div", { class: "toast", role: "status", "data-test": "toast" }, text);
  document.body.append(el);
  setTimeout(() => el.remove(), 3500);
}

/** A card: a titled section. */
export function card(title, attrs, ...children) {
  return h("section", { class: "card", ...attrs },
    title ? h("h2", {}, title) : null, ...children);
}
