// #/streams/{id}: one stream's configuration and status, its US AQI over the last 7 days with
// the category bands, its coverage over the last 24 hours (coverage.js), its latest readings,
// results (each raw object one click away) and its runs (every run: when, how it ended, pages,
// records, its window and async job; filterable by status, a failed run's reason shown). New
// results, readings and runs arrive over the live channel. "Re-parse this stream" queues a job
// shown on #/warehouse.

import { get, post, query } from "./api.js";
import * as live from "./live.js";
import {
  h, fill, time, duration, paramsShort, statusBadge, showError, card, num, bytes, pollutant, errorText,
} from "./ui.js";
import { aqiChart, aqiChip, legend, needsRescale } from "./aqi.js";
import { streamActions, schedule } from "./page-streams.js";
import { coverageStrip } from "./coverage.js";

const WEEK_MS = 7 * 24 * 3600 * 1000;
const RESULTS_PAGE = 20;
/** Live rows kept in the results table; older ones stay a page away. */
const KEEP_ROWS = 200;
/** How often the coverage strip is read again while the page is open. */
const COVERAGE_REFRESH_MS = 30_000;

export async function render(main, route, ctx) {
  const id = route.params[0];
  let stream = null;
  let measurements = [];
  let chart = null;
  let nextResults = null;
  let adapters = ["IQAIR_DAILY"];

  const title = h("h1", {}, "Stream");
  const statusSlot = h("span", { class: "status-slot" });
  const actionsSlot = h("div", {});
  const configBody = h("div", { "data-test": "config" });
  const chartBox = h("div", { class: "chart", "data-test": "aqi-chart" });
  const chartNote = h("div", { class: "muted small" });
  const readingsBody = h("tbody");
  const readingsCount = h("span", { class: "muted small" });
  const resultsBody = h("tbody");
  const moreResults = h("button", { type: "button", class: "btn small", hidden: true, "data-test": "more-results" }, "Older results");
  const runsBody = h("tbody");
  const runsFilter = h("select", { class: "small", "data-test": "runs-filter", title: "Show runs with this status" },
    ["", "stored", "failed", "truncated", "running"].map((v) => h("option", { value: v }, v || "all runs")));
  const moreRuns = h("button", { type: "button", class: "btn small", hidden: true, "data-test": "more-runs" }, "Older runs");
  let nextRuns = null;
  const coverageBox = h("div", { "data-test": "coverage" }, h("p", { class: "muted" }, "Loading…"));
  const reparseNote = h("span", { "data-test": "reparse-note" });
  const reparseButton = h("button", {
    type: "button", class: "btn small", "data-test": "reparse-stream",
    title: "Rebuild this stream's readings from its raw objects with the current parser",
  }, "Re-parse this stream");
  reparseButton.addEventListener("click", async () => {
    reparseButton.disabled = true;
    try {
      const job = await post("/reparse", { stream_id: id });
      if (ctx.alive) fill(reparseNote, "Job ", h("a", { href: "#/warehouse", title: job.id }, `${job.state} on the warehouse page`));
    } catch (err) {
      if (ctx.alive) fill(reparseNote, h("span", { class: "error-text" }, errorText(err)));
    } finally {
      reparseButton.disabled = false;
    }
  });

  fill(main,
    h("div", { class: "page-head" },
      h("div", { class: "title-line" }, h("a", { href: "#/streams", class: "back" }, "← Streams"), title, statusSlot),
      h("div", { class: "toolbar" }, h("span", { class: "stream-reparse" }, reparseButton, reparseNote), actionsSlot)),
    h("div", { class: "grid two" },
      card("US AQI, last 7 days", { class: "card chart-card" }, chartBox, legend(), chartNote),
      card("Configuration", { class: "card" }, configBody)),
    card("Coverage, last 24 hours", { class: "card" }, coverageBox),
    card("Latest readings", { class: "card flush-table" }, readingsCount,
      h("div", { class: "scroll" }, h("table", { class: "table", "data-test": "readings" },
        h("thead", {}, h("tr", {},
          h("th", {}, "Reading hour"), h("th", {}, "Place"), h("th", {}, "US AQI"), h("th", {}, "Main (US)"),
          h("th", { class: "num" }, "CN AQI"), h("th", { class: "num" }, "Temp °C"), h("th", { class: "num" }, "Humidity %"),
          h("th", { class: "num" }, "Wind m/s"), h("th", { class: "num" }, "Pressure hPa"), h("th", {}, "Result"))),
        readingsBody))),
    h("div", { class: "grid two wide-left" },
      card("Results", { class: "card flush-table" },
        h("div", { class: "scroll" }, h("table", { class: "table", "data-test": "results" },
          h("thead", {}, h("tr", {},
            h("th", {}, "Fetched"), h("th", {}, "Schedule lag"), h("th", { class: "num" }, "Size"),
            h("th", {}, "SHA-256"), h("th", {}, "Status"), h("th", {}, "Raw"))),
          resultsBody)),
        h("div", { class: "more" }, moreResults)),
      card("Runs", { class: "card flush-table" },
        h("div", { class: "card-tools" }, runsFilter),
        h("div", { class: "scroll" }, h("table", { class: "table", "data-test": "runs" },
          h("thead", {}, h("tr", {},
            h("th", {}, "Slot"), h("th", {}, "Status"), h("th", { class: "num" }, "Pages"),
            h("th", { class: "num" }, "Records"), h("th", { class: "num" }, "Size"), h("th", {}, "Took"),
            h("th", {}, "Detail"))),
          runsBody)),
        h("div", { class: "more" }, moreRuns))));

  // ---- configuration and status ----

  function showStream(s) {
    stream = s;
    fill(title, `${paramsShort(s.params)}`, h("span", { class: "muted adapter" }, ` · ${s.adapter}`));
    fill(statusSlot, statusBadge(s.status, "stream-status"));
    fill(actionsSlot, streamActions(s, {
      onChanged: (changed) => changed && showStream(changed),
      current: () => stream,
      onDeleted: () => { location.hash = "#/streams"; },
      adapters: () => adapters,
      streams: () => [s],
    }));
    const rl = s.rate_limit || {};
    const limit = (v, unit) => (v ? `${num(v)}/${unit}` : `no limit/${unit}`);
    const rows = [
      ["ID", h("code", {}, s.id)],
      ["Status", statusBadge(s.status, "config-status")],
      ["Adapter", s.adapter],
      ["Endpoint", h("code", { class: "wrap" }, s.endpoint)],
      ["API key", h("code", {}, s.secret_key)],
      ["Schedule", schedule(s)],
      ["Timeout", duration(s.timeout)],
      ["Bucket", h("code", {}, s.bucket_name)],
      ["Params", Object.keys(s.params || {}).length
        ? h("div", {}, Object.entries(s.params).map(([k, v]) => h("div", {}, h("span", { class: "muted" }, `${k} `), h("code", {}, String(v)))))
        : h("span", { class: "muted" }, "none")],
      ["Rate limit", `${limit(rl.per_minute, "min")} · ${limit(rl.per_day, "day")} · ${limit(rl.per_month, "month")}`],
      ...["request", "pagination", "records", "max_pages", "page_concurrency", "job"]
        .filter((k) => s[k] !== undefined && s[k] !== null)
        .map((k) => [k.replace("_", " "), h("code", { class: "wrap", "data-test": `source-${k}` }, typeof s[k] === "object" ? JSON.stringify(s[k]) : String(s[k]))]),
      ...(s.start_at ? [["Windows from", time(s.start_at)]] : []),
      ...(s.window_end ? [["Next window from", time(s.window_end)]] : []),
      ["Worker", s.worker_id ? `${s.worker_id} (generation ${s.generation})` : h("span", { class: "muted" }, "none")],
      ["Last result", time(s.last_result_at, { relative: true })],
      ["Last error", s.last_error
        ? h("span", { class: "error-text" }, s.last_error, s.last_error_at ? [" · ", time(s.last_error_at)] : null)
        : h("span", { class: "muted" }, "—")],
      ["Created", time(s.created_at)],
      ["Updated", time(s.updated_at)],
    ];
    fill(configBody, h("dl", { class: "config" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
  }

  // ---- the chart ----

  function drawChart() {
    if (!ctx.alive) return;
    const xs = measurements.map((m) => Date.parse(m.ts) / 1000);
    const ys = measurements.map((m) => m.aqius);
    if (!measurements.length) {
      if (chart) chart.destroy();
      chart = null;
      fill(chartBox, h("div", { class: "empty-chart" }, "No readings in the last 7 days yet; they appear here as they arrive."));
      return;
    }
    if (chart && !needsRescale(chart, ys)) {
      chart.setData([xs, ys]);
    } else {
      if (chart) chart.destroy();
      fill(chartBox);
      chart = aqiChart(chartBox, xs, [{ label: "US AQI", values: ys }], { height: 300 });
    }
    // The whole week, whatever part of it has readings.
    const now = Date.now() / 1000;
    chart.setScale("x", { min: now - WEEK_MS / 1000, max: Math.max(now, xs[xs.length - 1]) });
    fill(chartNote, `${measurements.length} readings since ${new Date(Date.now() - WEEK_MS).toLocaleDateString()}; hover for values, drag to zoom.`);
  }
  ctx.onCleanup(() => chart && chart.destroy());

  // ---- readings, results, failures ----

  function readingRow(m) {
    const placeName = [m.city, m.country].filter(Boolean).join(", ") || "—";
    return h("tr", { "data-test": "reading", "data-ts": m.ts },
      h("td", { class: "nowrap" }, time(m.ts, { seconds: false })),
      h("td", { title: [m.city, m.state, m.country].filter(Boolean).join(", ") }, placeName),
      h("td", {}, aqiChip(m.aqius)),
      h("td", {}, pollutant(m.mainus)),
      h("td", { class: "num" }, num(m.aqicn)),
      h("td", { class: "num" }, num(m.tp, 1)),
      h("td", { class: "num" }, num(m.hu)),
      h("td", { class: "num" }, num(m.ws, 1)),
      h("td", { class: "num" }, num(m.pr)),
      h("td", {}, h("a", {
        href: `/results/${m.result_id}/raw`, target: "_blank", rel: "noopener", class: "raw", title: m.result_id,
      }, "raw")));
  }

  function renderReadings() {
    const newest = [...measurements].reverse();
    fill(readingsBody, newest.length ? newest.map(readingRow)
      : h("tr", { class: "empty" }, h("td", { colspan: 10 }, "No readings in the last 7 days.")));
    updateReadingsCount();
  }

  function updateReadingsCount() {
    const n = readingsBody.querySelectorAll("[data-test=reading]").length;
    fill(readingsCount, `${n} readings (one per reading hour; new ones appear at the top)`);
  }

  function resultRow(r) {
    let lag = "—";
    if (r.scheduled_at && r.started_at) lag = duration(Math.max(0, Date.parse(r.started_at) - Date.parse(r.scheduled_at)));
    return h("tr", { "data-test": "result", "data-id": r.id },
      h("td", { class: "nowrap" }, time(r.fetched_at)),
      h("td", {}, lag),
      h("td", { class: "num" }, bytes(r.size)),
      h("td", {}, h("code", { title: r.sha256 }, `${r.sha256.slice(0, 12)}…`)),
      h("td", {}, h("span", { class: `tag ${r.status}` }, r.status)),
      h("td", {}, h("a", {
        href: `/results/${r.id}/raw`, target: "_blank", rel: "noopener", "data-test": "raw-link", title: r.key,
      }, "raw JSON ↗")));
  }

  function runRow(r) {
    const tagClass = r.status === "failed" ? "failure-class" : r.status === "stored" ? "ok" : "reconciled";
    const detail = [];
    if (r.class) detail.push(h("span", { class: "tag failure-class" }, r.class), " ");
    if (r.message) detail.push(h("span", { class: r.status === "failed" ? "error-text" : "muted" }, r.message));
    if (r.window_start && r.window_end) {
      detail.push(h("div", { class: "muted small" }, "window ", time(r.window_start), " → ", time(r.window_end)));
    }
    if (r.job && r.job.length) {
      detail.push(h("div", { class: "muted small", "data-test": "run-job" }, "job: ", r.job.map((s) => s.state).join(" → ")));
    }
    if (r.stream_stopped) detail.push(h("div", { class: "tag stopped-tag" }, "stream stopped"));
    return h("tr", { "data-test": "run", "data-id": r.id, "data-status": r.status },
      h("td", { class: "nowrap" }, h("a", { href: `/runs/${r.id}`, target: "_blank", rel: "noopener", title: `run ${r.id}: its pages' references` }, time(r.scheduled_at))),
      h("td", {}, h("span", { class: `tag ${tagClass}` }, r.status)),
      h("td", { class: "num" }, num(r.pages)),
      h("td", { class: "num" }, r.records == null ? "—" : num(r.records)),
      h("td", { class: "num" }, bytes(r.bytes)),
      h("td", { class: "nowrap" }, r.duration_ms == null ? "…" : duration(r.duration_ms), r.attempts > 1 ? h("div", { class: "muted small" }, `${r.attempts} calls`) : null),
      h("td", { class: "message" }, detail.length ? detail : h("span", { class: "muted" }, "—")));
  }

  async function loadRuns(after) {
    const page = await get(`/streams/${encodeURIComponent(id)}/runs${query({ limit: RESULTS_PAGE, after, status: runsFilter.value || undefined })}`);
    if (!ctx.alive) return;
    if (!after) fill(runsBody);
    for (const r of page.items) runsBody.append(runRow(r));
    if (!runsBody.children.length) {
      runsBody.append(h("tr", { class: "empty" }, h("td", { colspan: 7 }, runsFilter.value ? `No ${runsFilter.value} runs.` : "No runs yet.")));
    }
    nextRuns = page.next;
    moreRuns.hidden = !nextRuns;
  }
  moreRuns.addEventListener("click", () => {
    if (nextRuns) loadRuns(nextRuns).catch((err) => showError(err, "Runs"));
  });
  runsFilter.addEventListener("change", () => loadRuns().catch((err) => showError(err, "Runs")));
  // Runs change as results and failures arrive: read the first page again, at most once a second.
  let runsTimer = null;
  const refreshRuns = () => {
    if (runsTimer || nextRuns && runsBody.children.length > RESULTS_PAGE) return;
    runsTimer = setTimeout(() => {
      runsTimer = null;
      loadRuns().catch((err) => showError(err, "Runs"));
    }, 1000);
  };
  ctx.onCleanup(() => clearTimeout(runsTimer));

  const prepend = (body, rowEl) => {
    const empty = body.querySelector("tr.empty");
    if (empty) empty.remove();
    rowEl.classList.add("flash");
    body.prepend(rowEl);
    if (body === resultsBody && body.children.length > KEEP_ROWS) {
      while (body.children.length > KEEP_ROWS) body.lastElementChild.remove();
      // The API pages by "older than this id".
      nextResults = body.lastElementChild.dataset.id;
      moreResults.hidden = false;
    }
  };

  async function loadResults(after) {
    const page = await get(`/streams/${encodeURIComponent(id)}/results${query({ limit: RESULTS_PAGE, after })}`);
    if (!ctx.alive) return;
    if (!after) fill(resultsBody);
    for (const r of page.items) resultsBody.append(resultRow(r));
    if (!resultsBody.children.length) {
      resultsBody.append(h("tr", { class: "empty" }, h("td", { colspan: 6 }, "No results yet.")));
    }
    nextResults = page.next;
    moreResults.hidden = !nextResults;
  }
  moreResults.addEventListener("click", () => {
    if (nextResults) loadResults(nextResults).catch((err) => showError(err, "Results"));
  });

  // A push stream has no schedule, so no slots to cover (the API answers 409).
  let pushed = false;
  const noSchedule = () => fill(coverageBox, h("p", { class: "muted", "data-test": "no-coverage" },
    "A push stream has no schedule: its coverage is what was pushed (Results below)."));
  async function loadCoverage() {
    if (pushed) return noSchedule();
    const ledger = await get(`/streams/${encodeURIComponent(id)}/coverage`);
    if (ctx.alive) fill(coverageBox, coverageStrip(ledger));
  }
  const coverageTimer = setInterval(() => loadCoverage().catch((err) => showError(err, "Coverage")), COVERAGE_REFRESH_MS);
  ctx.onCleanup(() => clearInterval(coverageTimer));

  async function load() {
    const since = new Date(Date.now() - WEEK_MS).toISOString();
    const base = `/streams/${encodeURIComponent(id)}`;
    const [s, m, , f, w, c] = await Promise.allSettled([
      get(base),
      get(`${base}/measurements${query({ from: since, limit: 10000 })}`),
      loadResults(),
      loadRuns(),
      get("/workers"),
      loadCoverage(),
    ]);
    if (!ctx.alive) return;
    if (s.status === "rejected") {
      showError(s.reason, "Stream");
      fill(main, card(null, { class: "card" },
        h("h1", {}, s.reason.status === 404 ? "No such stream" : "The stream could not be loaded"),
        h("p", {}, h("a", { href: "#/streams" }, "← Back to the streams"))));
      return false;
    }
    showStream(s.value);
    pushed = s.value.adapter === "PUSH";
    if (w.status === "fulfilled") {
      adapters = [...new Set(["IQAIR_DAILY", ...w.value.flatMap((x) => x.adapters || [])])];
    }
    if (m.status === "fulfilled") {
      measurements = m.value.items;
      renderReadings();
      drawChart();
    } else {
      showError(m.reason, "Readings");
      fill(chartBox, h("div", { class: "empty-chart" }, "The readings could not be loaded."));
    }
    if (pushed) {
      noSchedule();
    } else if (c.status === "rejected") {
      showError(c.reason, "Coverage");
      fill(coverageBox, h("p", { class: "muted" }, "The coverage could not be loaded."));
    }
    if (f.status === "rejected") showError(f.reason, "Runs");
    return true;
  }

  function addMeasurement(m) {
    if (measurements.some((x) => x.ts === m.ts && x.city === m.city && x.state === m.state)) return;
    measurements.push(m);
    measurements.sort((a, b) => Date.parse(a.ts) - Date.parse(b.ts));
    const cutoff = Date.now() - WEEK_MS;
    measurements = measurements.filter((x) => Date.parse(x.ts) >= cutoff);
    prepend(readingsBody, readingRow(m));
    updateReadingsCount();
    drawChart();
  }

  // Listen from the start; what arrives while the page loads is applied once it has loaded
  // (rows the first fetch already had are not added twice).
  let loaded = false;
  const early = [];
  let resyncTimer = null;
  ctx.onCleanup(() => clearTimeout(resyncTimer));
  ctx.onCleanup(live.subscribe((msg) => {
    if (!ctx.alive) return;
    if (loaded) apply(msg);
    else early.push(msg);
  }));

  const has = (body, rowId) => Boolean(body.querySelector(`tr[data-id="${CSS.escape(String(rowId))}"]`));

  function apply(msg) {
    if (msg.type === "resync") {
      clearTimeout(resyncTimer);
      resyncTimer = setTimeout(() => load().catch((err) => showError(err)), 400);
      return;
    }
    if (msg.stream_id !== id) return;
    if (msg.type === "stream") {
      if (msg.deleted || !msg.stream) {
        showError("This stream was deleted.");
        fill(statusSlot, h("span", { class: "badge status-deleted", "data-test": "stream-status" }, "deleted"));
        fill(actionsSlot);
      } else {
        showStream(msg.stream);
      }
    } else if (msg.type === "result") {
      if (!has(resultsBody, msg.result.id)) prepend(resultsBody, resultRow(msg.result));
      if (stream) showStream({ ...stream, last_result_at: msg.result.fetched_at });
      if (msg.measurement) addMeasurement(msg.measurement);
      refreshRuns();
    } else if (msg.type === "failure") {
      refreshRuns();
      if (stream) showStream({ ...stream, last_error: msg.failure.message, last_error_at: msg.failure.at });
    }
  }

  fill(configBody, h("p", { class: "muted" }, "Loading…"));
  const found = await load();
  if (!found || !ctx.alive) return;
  loaded = true;
  for (const msg of early.splice(0)) apply(msg);
}
