// #/warehouse: what the bucket holds besides the raw objects. The Parquet files of the
// measurements table (GET /tables) with a button to write today's now (POST /tables/compact),
// the re-parse jobs (GET /jobs) with their progress, refreshed while one is queued or running,
// with a button to re-parse everything (POST /reparse), and the README's DuckDB queries.

import { get, post, query } from "./api.js";
import { h, fill, time, showError, errorText, card, num, bytes, shortId } from "./ui.js";

/** Jobs shown: the newest page of GET /jobs. */
const JOBS_PAGE = 20;
/** How often the jobs are read again while one is queued or running. */
const JOBS_REFRESH_MS = 2000;

// The README's "The warehouse" queries, as written there (a console test compares them).
const RAW_SQL = `-- Raw responses: one row per fetch; stream_id and dt come from the partitions.
select stream_id, dt,
       data.current.pollution.ts::timestamp as ts,
       data.current.pollution.aqius as aqius,
       data.city as city
from read_json('data/objects/results/IQAIR_DAILY/stream_id=*/dt=*/*.json', hive_partitioning = true)
order by ts;`;
const PARQUET_SQL = `-- Parsed readings: one row per stream and pollution hour, with the parser version.
select adapter, dt, stream_id, ts, aqius, mainus, city, parser_version
from read_parquet('data/objects/results/_tables/measurements/adapter=*/dt=*/*.parquet', hive_partitioning = true)
order by ts;`;

const ACTIVE = new Set(["queued", "running"]);

const plural = (n, word) => `${num(n)} ${word}${n === 1 ? "" : "s"}`;

/** The scope of a job in a few words: "everything", "stream …", "adapter IQAIR_DAILY", times. */
function scopeText(scope) {
  const parts = [];
  if (scope.stream_id) {
    parts.push(h("a", { href: `#/streams/${scope.stream_id}`, title: scope.stream_id }, `stream ${shortId(scope.stream_id)}`));
  }
  if (scope.adapter) parts.push(`adapter ${scope.adapter}`);
  if (!parts.length) parts.push("everything");
  if (scope.from) parts.push([" from ", time(scope.from, { seconds: false })]);
  if (scope.to) parts.push([" to ", time(scope.to, { seconds: false })]);
  return parts.map((p, i) => (i ? [", ", p] : p));
}

function jobStateBadge(state) {
  const look = { queued: "status-pending", running: "status-running", done: "status-stopped", failed: "status-failed" }[state];
  return h("span", { class: `badge ${look || ""}`, "data-test": "job-state", "data-state": state }, state);
}

export async function render(main, route, ctx) {
  const summary = h("span", { class: "muted count" });
  const tablesBody = h("tbody");
  const compactButton = h("button", { type: "button", class: "btn primary", "data-test": "compact-now" }, "Write today's tables now");
  const compactResult = h("div", { class: "muted small", "data-test": "compact-result", role: "status" });
  const jobsBody = h("tbody");
  const reparseButton = h("button", { type: "button", class: "btn", "data-test": "reparse-all" }, "Re-parse everything");
  const confirmBox = h("div", { class: "confirm", hidden: true, "data-test": "reparse-confirm-box" });
  const jobsNote = h("span", { class: "muted small" });

  fill(main,
    h("div", { class: "page-head" }, h("h1", {}, "Warehouse"), h("div", { class: "toolbar" }, summary)),
    h("section", { class: "card flush-table" },
      h("div", { class: "card-head" }, h("h2", {}, "Parquet tables"), compactButton),
      h("p", { class: "muted small" },
        "The parsed readings, one file per bucket, adapter and UTC day. Closed days are written by the supervisor every 10 minutes; today's only with the button."),
      h("div", { class: "card-note" }, compactResult),
      h("div", { class: "scroll" }, h("table", { class: "table", "data-test": "tables-table" },
        h("thead", {}, h("tr", {},
          h("th", {}, "Day"), h("th", {}, "Adapter"), h("th", {}, "Bucket"), h("th", { class: "num" }, "Rows"),
          h("th", { class: "num" }, "Size"), h("th", {}, "Parser versions"), h("th", {}, "Written"))),
        tablesBody))),
    h("section", { class: "card flush-table" },
      h("div", { class: "card-head" }, h("h2", {}, "Re-parse jobs"), reparseButton),
      h("p", { class: "muted small" },
        "A re-parse rebuilds readings from the raw objects with the current parser, in the background. ", jobsNote),
      h("div", { class: "card-note" }, confirmBox),
      h("div", { class: "scroll" }, h("table", { class: "table", "data-test": "jobs-table" },
        h("thead", {}, h("tr", {},
          h("th", {}, "Job"), h("th", {}, "Scope"), h("th", {}, "State"), h("th", {}, "Progress"),
          h("th", { class: "num" }, "Rows written"), h("th", { class: "num" }, "Rows skipped"),
          h("th", {}, "Errors"), h("th", {}, "Last error"), h("th", {}, "Created"), h("th", {}, "Finished"))),
        jobsBody))),
    card("Query it yourself", { class: "card", "data-test": "queries" },
      h("p", { class: "muted small" },
        "With DuckDB, from the project root, on the folder that scripts/run-dev.sh fills (for another store or bucket, change the path):"),
      h("pre", { class: "sql", "data-test": "sql-raw" }, h("code", {}, RAW_SQL)),
      h("pre", { class: "sql", "data-test": "sql-parquet" }, h("code", {}, PARQUET_SQL))));

  // ---- the Parquet files ----

  function fileRow(f) {
    return h("tr", { "data-test": "table-file", "data-key": f.key, "data-day": f.day, "data-bucket": f.bucket },
      h("td", { class: "nowrap" }, f.day),
      h("td", {}, f.adapter),
      h("td", {}, h("code", {}, f.bucket)),
      h("td", { class: "num", "data-test": "file-rows" }, num(f.rows)),
      h("td", { class: "num", title: `${f.bytes} bytes` }, bytes(f.bytes)),
      h("td", {}, (f.parser_versions || []).map((v) => h("span", { class: "tag" }, `v${v}`))),
      h("td", { class: "nowrap" }, time(f.compacted_at)));
  }

  async function loadTables() {
    const { files } = await get("/tables");
    if (!ctx.alive) return;
    const sorted = [...files].sort((a, b) => (a.day === b.day ? 0 : a.day < b.day ? 1 : -1));
    fill(tablesBody, sorted.length ? sorted.map(fileRow)
      : h("tr", { class: "empty" }, h("td", { colspan: 7 }, "No Parquet file yet: closed days are written every 10 minutes, today's with the button.")));
    const rows = files.reduce((n, f) => n + f.rows, 0);
    fill(summary, `${plural(files.length, "file")} · ${plural(rows, "row")}`);
  }

  compactButton.addEventListener("click", async () => {
    compactButton.disabled = true;
    fill(compactResult, "Writing…");
    try {
      const answer = await post("/tables/compact", {});
      if (!ctx.alive) return;
      const written = answer.written.map((f) => h("li", {}, h("code", {}, `${f.bucket}/${f.key}`), `: ${plural(f.rows, "row")}, ${bytes(f.bytes)}`));
      const removed = answer.removed.map((f) => h("li", {}, h("code", {}, `${f.bucket}/${f.key}`), ": removed (no readings left)"));
      fill(compactResult, written.length || removed.length
        ? [`${answer.day}: wrote ${plural(written.length, "file")}`,
          removed.length ? `, removed ${removed.length}` : "", h("ul", {}, written, removed)]
        : `${answer.day}: no readings to write.`);
      await loadTables();
    } catch (err) {
      if (!ctx.alive) return;
      fill(compactResult, h("span", { class: "error-text" }, errorText(err),
        err.problems && err.problems.length ? `: ${err.problems.join("; ")}` : ""));
    } finally {
      compactButton.disabled = false;
    }
  });

  // ---- the re-parse jobs ----

  function jobRow(job) {
    const p = job.progress;
    const share = p.objects_total > 0 ? Math.min(1, p.objects_read / p.objects_total) : (job.state === "done" ? 1 : 0);
    const errors = Object.entries(p.errors || {}).filter(([, n]) => n > 0);
    return h("tr", { "data-test": "job-row", "data-id": job.id, "data-state": job.state },
      h("td", {}, h("code", { title: job.id }, shortId(job.id)), h("div", { class: "muted small" }, `parser v${job.parser_version}`)),
      h("td", {}, scopeText(job.scope)),
      h("td", {}, jobStateBadge(job.state)),
      h("td", {}, h("div", { class: "load" },
        h("span", { class: "bar" }, h("span", { style: `width:${Math.round(share * 100)}%` })),
        h("span", { class: "nowrap", "data-test": "job-progress", "data-read": p.objects_read, "data-total": p.objects_total },
          `${num(p.objects_read)} / ${num(p.objects_total)}`))),
      h("td", { class: "num", "data-test": "job-written" }, num(p.rows_written)),
      h("td", { class: "num" }, num(p.rows_skipped)),
      h("td", {}, errors.length
        ? errors.map(([cls, n]) => h("span", { class: "tag failure-class" }, `${cls}: ${num(n)}`))
        : h("span", { class: "muted" }, "none")),
      h("td", { class: "last-error" }, job.last_error ? h("span", { class: "error-text", title: job.last_error }, job.last_error) : h("span", { class: "muted" }, "—")),
      h("td", { class: "nowrap" }, time(job.created_at)),
      h("td", { class: "nowrap" }, time(job.finished_at)));
  }

  let pollTimer = null;
  ctx.onCleanup(() => clearTimeout(pollTimer));

  async function loadJobs() {
    clearTimeout(pollTimer);
    const page = await get(`/jobs${query({ limit: JOBS_PAGE })}`);
    if (!ctx.alive) return;
    fill(jobsBody, page.items.length ? page.items.map(jobRow)
      : h("tr", { class: "empty" }, h("td", { colspan: 10 }, "No re-parse job yet.")));
    const active = page.items.filter((j) => ACTIVE.has(j.state)).length;
    fill(jobsNote, [
      active ? `${active} in progress; this list refreshes every ${JOBS_REFRESH_MS / 1000} s.` : "",
      page.next ? ` The newest ${JOBS_PAGE} are shown; GET /jobs pages through the rest.` : "",
    ]);
    if (active) pollTimer = setTimeout(pollJobs, JOBS_REFRESH_MS);
  }

  // A failed refresh is shown and tried again: the jobs in progress stay watched.
  function pollJobs() {
    loadJobs().catch((err) => {
      if (!ctx.alive) return;
      showError(err, "Jobs");
      pollTimer = setTimeout(pollJobs, JOBS_REFRESH_MS * 2);
    });
  }

  // An inline confirmation: a re-parse of everything rewrites every reading.
  reparseButton.addEventListener("click", () => {
    const go = h("button", { type: "button", class: "btn danger", "data-test": "reparse-confirm" }, "Yes, re-parse everything");
    const cancel = h("button", { type: "button", class: "btn", "data-test": "reparse-cancel" }, "Cancel");
    const error = h("span", { class: "field-error" });
    fill(confirmBox,
      h("span", {}, "Every reading of every stream is rebuilt from its raw object with the current parser. Go on?"),
      go, cancel, error);
    confirmBox.hidden = false;
    reparseButton.disabled = true;
    const close = () => {
      confirmBox.hidden = true;
      fill(confirmBox);
      reparseButton.disabled = false;
    };
    cancel.addEventListener("click", close);
    go.addEventListener("click", async () => {
      go.disabled = true;
      try {
        const job = await post("/reparse", {});
        if (!ctx.alive) return;
        close();
        const empty = jobsBody.querySelector("tr.empty");
        if (empty) empty.remove();
        const rowEl = jobRow(job);
        rowEl.classList.add("flash");
        jobsBody.prepend(rowEl);
        await loadJobs();
      } catch (err) {
        if (!ctx.alive) return;
        go.disabled = false;
        fill(error, errorText(err));
      }
    });
  });

  fill(tablesBody, h("tr", { class: "empty" }, h("td", { colspan: 7 }, "Loading…")));
  fill(jobsBody, h("tr", { class: "empty" }, h("td", { colspan: 10 }, "Loading…")));
  const [tables, jobs] = await Promise.allSettled([loadTables(), loadJobs()]);
  if (!ctx.alive) return;
  if (tables.status === "rejected") {
    showError(tables.reason, "Tables");
    fill(tablesBody, h("tr", { class: "empty" }, h("td", { colspan: 7 }, "The tables could not be loaded.")));
  }
  if (jobs.status === "rejected") {
    showError(jobs.reason, "Jobs");
    fill(jobsBody, h("tr", { class: "empty" }, h("td", { colspan: 10 }, "The jobs could not be loaded.")));
  }
}
