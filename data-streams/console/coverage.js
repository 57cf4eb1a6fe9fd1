// The coverage strip: a stream's window (GET /streams/{id}/coverage) as a horizontal bar
// coloured by what became of each slot — stored, failed, skipped, missing — with the counts and
// the list of gaps. Plain SVG; colours are SVG attributes (the CSP allows no inline style).

import { h, time, duration, num } from "./ui.js";

const SVG = "http://www.w3.org/2000/svg";

/** Colour and label of each outcome the strip can show. */
export const OUTCOMES = {
  stored: { colour: "#2da44e", label: "stored" },
  failed: { colour: "#cf222e", label: "failed" },
  skipped: { colour: "#d4a72c", label: "skipped" },
  missing: { colour: "#57606a", label: "missing" },
  not_expected: { colour: "#eaeef2", label: "not expected (stopped, or before the stream existed)" },
  open: { colour: "#ffffff", label: "open (not due yet)" },
};

function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) el.setAttribute(name, String(value));
  for (const child of children) if (child) el.append(child);
  return el;
}

/** The bar alone: one rectangle per span of the strip, `height` px tall, full width. */
export function coverageBar(ledger, { height = 18, test = "coverage-bar" } = {}) {
  const from = Date.parse(ledger.from);
  const span = Math.max(1, Date.parse(ledger.to) - from);
  const x = (iso) => ((Date.parse(iso) - from) / span) * 1000;
  const bar = svg("svg", {
    viewBox: `0 0 1000 ${height}`, preserveAspectRatio: "none", width: "100%", height,
    role: "img", "aria-label": `coverage: ${ledger.counts.stored} of ${ledger.counts.expected} slots stored`,
    "data-test": test,
  }, svg("rect", { x: 0, y: 0, width: 1000, height, fill: "#ffffff", stroke: "#d8dee4" }));
  for (const s of ledger.strip) {
    const left = x(s.start);
    const width = Math.max(x(s.end) - left, 0.5);
    const outcome = OUTCOMES[s.outcome] || OUTCOMES.open;
    const slots = s.slots ? ` · ${num(s.slots)} slot${s.slots === 1 ? "" : "s"}` : "";
    bar.append(svg("rect", {
      x: left, y: 0, width, height, fill: outcome.colour, "data-outcome": s.outcome,
    }, svg("title", {}, document.createTextNode(
      `${outcome.label}: ${new Date(s.start).toLocaleString()} – ${new Date(s.end).toLocaleString()}${slots}`))));
  }
  return bar;
}

function swatch(colour) {
  return svg("svg", { width: 10, height: 10, class: "swatch" },
    svg("rect", { width: 10, height: 10, rx: 2, fill: colour, stroke: "#d8dee4" }));
}

/** The strip with its counts (each `data-test=coverage-<outcome>`) and the gap list. */
export function coverageStrip(ledger) {
  const c = ledger.counts;
  const count = (key, value, detail) => h("span", { class: "coverage-count" },
    swatch(OUTCOMES[key].colour), " ", OUTCOMES[key].label, " ",
    h("strong", { "data-test": `coverage-${key}` }, num(value)),
    detail ? h("span", { class: "muted" }, ` (${detail})`) : null);
  const by = (map) => Object.entries(map || {}).map(([k, v]) => `${k} ${num(v)}`).join(", ");
  const share = c.expected ? ` · ${((100 * c.stored) / c.expected).toFixed(1)}% stored` : "";
  const gaps = ledger.gaps || [];
  return h("div", { class: "coverage" },
    coverageBar(ledger),
    h("div", { class: "muted small" },
      time(ledger.from), " → ", time(ledger.to),
      ledger.open_from !== ledger.to ? [" · judged up to ", time(ledger.open_from)] : null),
    h("p", {},
      h("span", { class: "coverage-count" }, "expected ",
        h("strong", { "data-test": "coverage-expected" }, num(c.expected)), share),
      " · ", count("stored", c.stored),
      " · ", count("failed", c.failed, by(c.failed_by_class)),
      " · ", count("skipped", c.skipped, by(c.skipped_by_reason)),
      " · ", count("missing", c.missing)),
    gaps.length
      ? h("table", { class: "table", "data-test": "coverage-gaps" },
        h("thead", {}, h("tr", {}, h("th", {}, "Gap from"), h("th", {}, "to"), h("th", {}, "Length"), h("th", { class: "num" }, "Missing slots"))),
        h("tbody", {}, gaps.map((g) => h("tr", { "data-test": "coverage-gap" },
          h("td", { class: "nowrap" }, time(g.start)),
          h("td", { class: "nowrap" }, time(g.end)),
          h("td", {}, duration(Date.parse(g.end) - Date.parse(g.start))),
          h("td", { class: "num" }, num(g.slots))))))
      : h("p", { class: "muted", "data-test": "coverage-no-gaps" }, "No gaps in this window."));
}
