// US AQI categories and the uPlot charts that draw them behind the data.

import { h } from "./ui.js";

/** The standard US AQI categories (EPA), with their official colours. */
export const CATEGORIES = [
  { lo: 0, hi: 50, name: "Good", color: "#00e400" },
  { lo: 51, hi: 100, name: "Moderate", color: "#ffff00" },
  { lo: 101, hi: 150, name: "Unhealthy for Sensitive Groups", color: "#ff7e00" },
  { lo: 151, hi: 200, name: "Unhealthy", color: "#ff0000" },
  { lo: 201, hi: 300, name: "Very Unhealthy", color: "#8f3f97" },
  { lo: 301, hi: 500, name: "Hazardous", color: "#7e0023" },
];

export function category(aqi) {
  if (aqi == null) return null;
  return CATEGORIES.find((c) => aqi <= c.hi) || CATEGORIES[CATEGORIES.length - 1];
}

/** A US AQI value as a coloured chip, with its category in `title`. */
export function aqiChip(aqi) {
  const c = category(aqi);
  if (!c) return h("span", { class: "muted" }, "—");
  const dark = ["#8f3f97", "#7e0023", "#ff0000"].includes(c.color);
  return h("span", {
    class: `aqi-chip${dark ? " aqi-dark" : ""}`, style: `background:${c.color}`, title: c.name,
  }, Math.round(aqi));
}

/** A legend of the categories, for under a chart. */
export function legend() {
  return h("div", { class: "aqi-legend" }, CATEGORIES.map((c) =>
    h("span", {}, h("i", { style: `background:${c.color}` }), `${c.lo}–${c.hi} ${c.name}`)));
}

/** The top of the y axis: the first category boundary above the data (at least 100). */
function yTop(max) {
  for (const top of [100, 150, 200, 300, 500]) if ((max ?? 0) <= top * 0.95) return top;
  return Math.ceil((max * 1.05) / 50) * 50;
}

/** The uPlot hook that paints the category bands behind the series. */
function drawBands(u) {
  const { ctx } = u;
  const { left, top, width, height } = u.bbox;
  ctx.save();
  ctx.beginPath();
  ctx.rect(left, top, width, height);
  ctx.clip();
  ctx.globalAlpha = 0.28;
  for (const c of CATEGORIES) {
    // Each band runs from the top of the one below (so there are no gaps between 50 and 51).
    const y0 = u.valToPos(c.lo === 0 ? 0 : c.lo - 1, "y", true);
    const y1 = u.valToPos(c.hi, "y", true);
    ctx.fillStyle = c.color;
    ctx.fillRect(left, y1, width, y0 - y1);
  }
  ctx.restore();
}

const PALETTE = ["#1d3557", "#e63946", "#2a9d8f", "#f4a261", "#6a4c93", "#457b9d", "#8d6e63"];

/**
 * A time chart of US AQI with the category bands behind. `series` is a list of
 * `{label, values}` aligned with `xs` (epoch seconds). Returns the uPlot, sized to `target`
 * and resized with it.
 */
export function aqiChart(target, xs, series, { height = 280, points = true } = {}) {
  const max = Math.max(0, ...series.flatMap((s) => s.values.filter((v) => v != null)));
  const opts = {
    width: Math.max(320, target.clientWidth || 800),
    height,
    scales: {
      x: { time: true },
      y: { auto: false, range: () => [0, yTop(max)] },
    },
    axes: [
      { stroke: "#555", grid: { stroke: "rgba(0,0,0,0.06)" } },
      { stroke: "#555", label: "US AQI", grid: { stroke: "rgba(0,0,0,0.08)" }, size: 50 },
    ],
    series: [
      { label: "Time" },
      ...series.map((s, i) => ({
        label: s.label,
        stroke: PALETTE[i % PALETTE.length],
        width: 2,
        spanGaps: false,
        points: { show: points, size: 5, fill: PALETTE[i % PALETTE.length] },
        value: (u, v) => (v == null ? "—" : Math.round(v)),
      })),
    ],
    hooks: { drawClear: [drawBands] },
    legend: { show: true },
    cursor: { drag: { x: true, y: false } },
  };
  const chart = new uPlot(opts, [xs, ...series.map((s) => s.values)], target);
  chart.aqiMax = max;
  const observer = new ResizeObserver(() => {
    const width = target.clientWidth;
    if (width > 0 && Math.abs(width - chart.width) > 4) chart.setSize({ width, height });
  });
  observer.observe(target);
  const destroy = chart.destroy.bind(chart);
  chart.destroy = () => {
    observer.disconnect();
    destroy();
  };
  return chart;
}

/** Whether new data needs a taller y axis than the chart has. */
export function needsRescale(chart, values) {
  const max = Math.max(0, ...values.filter((v) => v != null));
  return yTop(max) !== yTop(chart.aqiMax);
}
