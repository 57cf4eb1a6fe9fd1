// #/reports: how many readings were unhealthy (US AQI over 100) and where, drilling down from
// countries to states, cities and streams. The place visited is in the URL
// (`#/reports?period=7d&country=Poland&state=…`), so the back button and the breadcrumb work.

import { get, query } from "./api.js";
import { h, fill, showError, num, percent, pollutant, paramsShort, shortId, card } from "./ui.js";
import { aqiChart, aqiChip, legend } from "./aqi.js";

const LEVELS = ["country", "state", "city", "stream"];
const PLURAL = { country: "Countries", state: "States", city: "Cities", stream: "Streams" };
const PERIODS = {
  "24h": { label: "24 h", ms: 24 * 3600 * 1000 },
  "7d": { label: "7 days", ms: 7 * 24 * 3600 * 1000 },
};
const TOP = 5;

/** The hash of a report page. */
function href(period, path) {
  const q = new URLSearchParams({ period });
  path.forEach((value, i) => q.set(LEVELS[i], value));
  return `#/reports?${q}`;
}

/**
 * The sentence of a drill-down: "Over the last 24 h, 30% of readings were over 100; of those,
 * 80% in Poland; of those, 60% in Lesser Poland Voivodeship". `reports[i]` is the report at
 * level i, `path[i]` the group chosen there.
 */
export function sentence(periodLabel, reports, path) {
  const total = reports[0].total;
  if (!total.readings) return `Over the last ${periodLabel}, there were no readings.`;
  if (!total.unhealthy) {
    return `Over the last ${periodLabel}, none of the ${num(total.readings)} readings were over 100.`;
  }
  let text = `Over the last ${periodLabel}, ${percent(total.unhealthy_share)} of readings were over 100`;
  for (let i = 0; i < path.length; i++) {
    const whole = reports[i].total.unhealthy;
    const group = reports[i].groups.find((g) => g.key === path[i]);
    const part = group ? group.unhealthy : 0;
    if (!whole) break;
    text += `; of those, ${percent(part / whole)} in ${path[i]}`;
    if (!part) break;
  }
  return `${text}.`;
}

export async function render(main, route, ctx) {
  const period = PERIODS[route.query.get("period")] ? route.query.get("period") : "24h";
  const { label: periodLabel, ms } = PERIODS[period];
  const path = [];
  for (const level of LEVELS.slice(0, 3)) {
    const value = route.query.get(level);
    if (value == null) break;
    path.push(value);
  }
  const depth = path.length;
  const level = LEVELS[depth];

  const periods = h("div", { class: "segmented", "data-test": "period" },
    Object.entries(PERIODS).map(([key, p]) => h("a", {
      href: href(key, path), class: key === period ? "active" : null, "data-period": key,
      "data-test": `period-${key}`,
    }, p.label)));
  const crumbs = [h("a", { href: href(period, []) }, "All countries")];
  path.forEach((value, i) => {
    crumbs.push(h("span", { class: "sep" }, "›"));
    crumbs.push(i === depth - 1
      ? h("span", { class: "current", title: LEVELS[i] }, value)
      : h("a", { href: href(period, path.slice(0, i + 1)), title: LEVELS[i] }, value));
  });
  const sentenceBox = h("p", { class: "sentence", "data-test": "report-sentence" }, "Loading…");
  const chartBox = h("div", { class: "chart", "data-test": "report-chart" });
  const tableBox = h("div", {});

  fill(main,
    h("div", { class: "page-head" }, h("h1", {}, "Reports"), h("div", { class: "toolbar" }, "Period ", periods)),
    h("nav", { class: "breadcrumb", "data-test": "breadcrumb", "aria-label": "Drill-down" }, crumbs),
    sentenceBox,
    card(`US AQI by ${level}: hourly average of the top ${TOP}`, { class: "card" }, chartBox, legend()),
    h("div", { class: "card flush" }, tableBox));

  const to = new Date();
  const from = new Date(to.getTime() - ms);
  const filters = (i) => {
    const f = {};
    path.slice(0, i).forEach((v, j) => { f[LEVELS[j]] = v; });
    return f;
  };
  const calls = [];
  for (let i = 0; i <= depth; i++) {
    calls.push(get(`/reports/aqi${query({
      group_by: LEVELS[i], bucket: "hour", from: from.toISOString(), to: to.toISOString(), ...filters(i),
    })}`));
  }
  const streamNames = level === "stream" ? get("/streams").catch(() => []) : Promise.resolve([]);
  let reports;
  try {
    reports = await Promise.all(calls);
  } catch (err) {
    if (!ctx.alive) return;
    showError(err, "Report");
    fill(sentenceBox, "The report could not be loaded.");
    return;
  }
  const streams = await streamNames;
  if (!ctx.alive) return;
  const names = new Map(streams.map((s) => [s.id, `${paramsShort(s.params)} (${shortId(s.id)})`]));
  const report = reports[depth];
  const labelOf = (key) => (key == null ? "(unknown)" : level === "stream" ? names.get(key) || key : key);

  fill(sentenceBox, sentence(periodLabel, reports, path));

  // ---- chart: the top groups' hourly average ----
  const top = report.groups.slice(0, TOP);
  const times = [...new Set(top.flatMap((g) => g.series.map((b) => Date.parse(b.t) / 1000)))].sort((a, b) => a - b);
  if (times.length) {
    const series = top.map((g) => {
      const byT = new Map(g.series.map((b) => [Date.parse(b.t) / 1000, b.aqius_avg]));
      return { label: labelOf(g.key), values: times.map((t) => (byT.has(t) ? byT.get(t) : null)) };
    });
    const chart = aqiChart(chartBox, times, series, { height: 260, points: times.length < 60 });
    chart.setScale("x", { min: from.getTime() / 1000, max: to.getTime() / 1000 });
    ctx.onCleanup(() => chart.destroy());
  } else {
    fill(chartBox, h("div", { class: "empty-chart" }, `No readings over the last ${periodLabel}.`));
  }

  // ---- table ----
  const allUnhealthy = report.total.unhealthy;
  const rows = report.groups.map((g) => {
    let name;
    if (g.key == null) {
      name = h("span", { class: "muted", title: "readings without this field cannot be drilled into" }, "(unknown)");
    } else if (level === "stream") {
      name = h("a", { href: `#/streams/${g.key}`, "data-test": "drill", title: g.key }, labelOf(g.key));
    } else {
      name = h("a", { href: href(period, [...path, g.key]), "data-test": "drill" }, g.key);
    }
    const share = g.unhealthy_share;
    return h("tr", { "data-test": "report-row", "data-key": g.key ?? "" },
      h("td", {}, name),
      h("td", { class: "num" }, num(g.readings)),
      h("td", { class: "num" }, num(g.unhealthy)),
      h("td", {}, h("div", { class: "share" },
        h("span", { class: "bar danger" }, h("span", { style: `width:${Math.round((share || 0) * 100)}%` })),
        h("span", {}, percent(share)))),
      h("td", { class: "num" }, allUnhealthy ? percent(g.unhealthy / allUnhealthy) : "—"),
      h("td", {}, aqiChip(g.aqius_avg)),
      h("td", { class: "num" }, num(g.aqius_min)),
      h("td", { class: "num" }, num(g.aqius_max)),
      h("td", {}, pollutant(g.main_pollutant)));
  });
  fill(tableBox, h("table", { class: "table", "data-test": "report-table", "data-level": level },
    h("thead", {}, h("tr", {},
      h("th", {}, PLURAL[level]), h("th", { class: "num" }, "Readings"), h("th", { class: "num" }, "Over 100"),
      h("th", {}, "Unhealthy share"), h("th", { class: "num", title: "This group's part of all readings over 100 at this level" }, "Of all over 100"),
      h("th", {}, "Avg US AQI"), h("th", { class: "num" }, "Min"), h("th", { class: "num" }, "Max"),
      h("th", {}, "Main pollutant"))),
    h("tbody", {}, rows.length ? rows
      : h("tr", { class: "empty" }, h("td", { colspan: 9 }, `No readings over the last ${periodLabel}.`)))));
}
