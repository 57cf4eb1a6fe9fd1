// #/streams: the streams a page at a time (the server filters and pages: a million streams
// never cross the wire at once), counts by status, search, the new-stream form, per-row
// actions, and start/stop of every stream the filter matches. Statuses, last results and
// errors of the rows shown follow the live channel without a reload.

import { get, post, del, query } from "./api.js";
import * as live from "./live.js";
import {
  h, fill, time, duration, paramsShort, shortId, statusBadge, showError, toast, utcMidnight, num,
} from "./ui.js";
import { openStreamForm } from "./stream-form.js";

const STATUSES = ["running", "pending", "stopped", "failed"];
const PAGE = 100;

/** Start, stop, edit and delete buttons for a stream; shared with the stream page. */
export function streamActions(stream, { onChanged, onDeleted, adapters, streams, current, compact = false }) {
  // The row may outlive this stream object (live updates patch cells in place): act on the
  // newest one.
  const now = () => (current && current()) || stream;
  const busy = async (button, work) => {
    button.disabled = true;
    try {
      await work();
    } catch (err) {
      showError(err, `Stream ${shortId(stream.id)}`);
    } finally {
      button.disabled = false;
    }
  };
  const start = h("button", {
    type: "button", class: "btn small", "data-test": "start",
    disabled: stream.status === "running" || stream.status === "pending",
    title: "Run the stream (clears a past error)",
  }, "Start");
  start.addEventListener("click", () => busy(start, async () => {
    const answer = await post(`/streams/${stream.id}/start`);
    toast(answer.message || "Started.");
    onChanged(answer.stream);
  }));
  const stop = h("button", {
    type: "button", class: "btn small", "data-test": "stop",
    disabled: stream.status === "stopped", title: "Stop fetching",
  }, "Stop");
  stop.addEventListener("click", () => busy(stop, async () => {
    const answer = await post(`/streams/${stream.id}/stop`);
    toast(answer.message || "Stopped.");
    onChanged(answer.stream);
  }));
  const edit = h("button", { type: "button", class: "btn small", "data-test": "edit" }, "Edit");
  edit.addEventListener("click", () => openStreamForm({
    stream: now(), adapters: adapters(), streams: streams(), onSaved: onChanged,
  }));
  const remove = h("button", { type: "button", class: "btn small danger", "data-test": "delete" }, "Delete");
  remove.addEventListener("click", () => {
    const s = now();
    const what = `${s.adapter} ${paramsShort(s.params)} (${s.id})`;
    if (!window.confirm(`Delete stream ${what}?\n\nIts readings and failed runs go with it; raw objects stay in the bucket.`)) return;
    busy(remove, async () => {
      await del(`/streams/${stream.id}`);
      toast("Stream deleted.");
      onDeleted(stream.id);
    });
  });
  return h("div", { class: `row-actions${compact ? " compact" : ""}` }, start, stop, edit, remove);
}

export function schedule(stream) {
  if (stream.adapter === "PUSH") return "pushed";
  if (stream.cron) return h("span", {}, "cron ", h("code", {}, stream.cron));
  if (stream.interval != null) return `every ${duration(stream.interval)}`;
  return "—";
}

/** A cell's content for comparison, without the text of relative times (it ages). */
function signature(td) {
  const copy = td.cloneNode(true);
  copy.classList.remove("flash");
  for (const el of copy.querySelectorAll("[data-rel]")) el.textContent = "";
  return copy.outerHTML;
}

export async function render(main, route, ctx) {
  const streams = new Map();
  let workers = [];
  const today = new Map();
  const filters = {
    status: route.query.get("status") || "",
    adapter: route.query.get("adapter") || "",
    q: route.query.get("q") || "",
  };
  // The cursors of the pages before this one (a stack), this page's, and the next page's.
  let cursors = [];
  let cursor = "";
  let next = null;
  let counts = null;
  const knownAdapters = new Set(["IQAIR_DAILY"]);

  const adapterNames = () => {
    const names = new Set(knownAdapters);
    for (const w of workers) for (const a of w.adapters || []) names.add(a);
    for (const s of streams.values()) names.add(s.adapter);
    return [...names].sort();
  };

  const statusFilter = h("select", { "data-test": "filter-status", name: "filter-status", "aria-label": "Status" },
    h("option", { value: "" }, "All statuses"),
    STATUSES.map((s) => h("option", { value: s, selected: s === filters.status }, s)));
  const adapterFilter = h("select", { "data-test": "filter-adapter", name: "filter-adapter", "aria-label": "Adapter" });
  const search = h("input", {
    type: "search", name: "q", "data-test": "filter-q", "aria-label": "Search",
    placeholder: "Search id, endpoint, params…", value: filters.q,
  });
  const count = h("span", { class: "muted count", "data-test": "streams-count" });
  const tabs = h("div", { class: "status-counts", "data-test": "status-counts" });
  const newButton = h("button", { type: "button", class: "btn primary", "data-test": "new-stream" }, "New stream");
  const startAll = h("button", { type: "button", class: "btn small", "data-test": "start-matching", title: "Start every stream the filters match" }, "Start matching");
  const stopAll = h("button", { type: "button", class: "btn small", "data-test": "stop-matching", title: "Stop every stream the filters match" }, "Stop matching");
  const prev = h("button", { type: "button", class: "btn small", "data-test": "page-prev" }, "‹ Previous");
  const more = h("button", { type: "button", class: "btn small", "data-test": "page-next" }, "Next ›");
  const pageInfo = h("span", { class: "muted", "data-test": "page-info" });
  const tbody = h("tbody");
  const table = h("table", { class: "table streams", "data-test": "streams-table" },
    h("thead", {}, h("tr", {},
      h("th", {}, "Status"), h("th", {}, "Stream"), h("th", {}, "Adapter"), h("th", {}, "Worker"),
      h("th", {}, "Schedule"), h("th", {}, "Last result"), h("th", {}, "Last error"),
      h("th", { class: "num", title: "Readings since UTC midnight" }, "Today"), h("th", {}, ""))),
    tbody);

  fill(main,
    h("div", { class: "page-head" },
      h("h1", {}, "Streams"),
      h("div", { class: "toolbar" },
        h("label", {}, "Status ", statusFilter),
        h("label", {}, "Adapter ", adapterFilter),
        search,
        count,
        newButton)),
    h("div", { class: "toolbar" }, tabs, h("span", { class: "spacer" }), startAll, stopAll),
    h("div", { class: "card flush" }, table),
    h("div", { class: "toolbar pager" }, prev, pageInfo, more));

  function renderAdapterFilter() {
    fill(adapterFilter, h("option", { value: "" }, "All adapters"),
      adapterNames().map((a) => h("option", { value: a, selected: a === filters.adapter }, a)));
  }

  const connected = (id) => workers.some((w) => w.id === id && w.connected);

  function row(stream) {
    const worker = stream.worker_id
      ? h("span", { class: "worker", title: connected(stream.worker_id) ? "connected" : "not connected" },
        h("i", { class: `dot ${connected(stream.worker_id) ? "on" : "off"}` }), stream.worker_id)
      : h("span", { class: "muted" }, "—");
    const error = stream.last_error
      ? h("div", { class: "error-text", title: `${stream.last_error}${stream.last_error_at ? `\n${stream.last_error_at}` : ""}` },
        stream.last_error_at ? time(stream.last_error_at, { relative: true }) : null,
        stream.last_error_at ? " · " : null, stream.last_error)
      : h("span", { class: "muted" }, "—");
    const tr = h("tr", { "data-test": "stream-row", "data-id": stream.id, "data-status": stream.status },
      h("td", {}, statusBadge(stream.status)),
      h("td", {}, h("a", { href: `#/streams/${stream.id}`, class: "stream-link", "data-test": "stream-link" },
        paramsShort(stream.params)), h("div", { class: "id", title: stream.id }, shortId(stream.id))),
      h("td", {}, stream.adapter),
      h("td", {}, worker),
      h("td", {}, schedule(stream)),
      h("td", {}, time(stream.last_result_at, { relative: true })),
      h("td", { class: "last-error" }, error),
      h("td", { class: "num", "data-test": "readings-today" }, num(today.get(stream.id) || 0)),
      h("td", {}, streamActions(stream, {
        onChanged: upsert, onDeleted: remove, adapters: adapterNames, streams: () => [...streams.values()],
        current: () => streams.get(stream.id), compact: true,
      })));
    return tr;
  }

  // The server filters; a row whose status changed away from the filter stays until the next
  // load (it would otherwise vanish under the pointer).
  const filtering = () => Boolean(filters.status || filters.adapter || filters.q);

  function renderCounts() {
    if (!counts) {
      fill(tabs);
      fill(count);
      return;
    }
    fill(tabs, STATUSES.map((s) => h("a", {
      href: "#", class: `status-count${filters.status === s ? " active" : ""}`, "data-test": `count-${s}`,
      on: { click: (e) => { e.preventDefault(); statusFilter.value = filters.status === s ? "" : s; applyFilters(); } },
    }, statusBadge(s), " ", num(counts[s]))));
    fill(count, filtering() ? `${num(counts.total)} matching streams` : `${num(counts.total)} streams`);
  }

  function renderRows() {
    const shown = [...streams.values()];
    fill(tbody, shown.length ? shown.map(row) : h("tr", { class: "empty" }, h("td", { colspan: 9 },
      filtering() || cursors.length ? "No stream matches these filters." : "No streams yet: create one with “New stream”.")));
    const first = cursors.length * PAGE + (shown.length ? 1 : 0);
    fill(pageInfo, shown.length ? `${num(first)}–${num(cursors.length * PAGE + shown.length)}` : "");
    prev.disabled = cursors.length === 0;
    more.disabled = !next;
    startAll.disabled = !filtering() || !counts || counts.total === 0;
    stopAll.disabled = !filtering() || !counts || counts.total === 0;
  }

  function upsert(stream) {
    if (!stream || !ctx.alive) return;
    const isNew = !streams.has(stream.id);
    if (isNew) {
      // A stream made here shows at once on the first page; others come with the next load.
      if (cursors.length === 0) {
        streams.set(stream.id, stream);
        renderRows();
      }
      reloadSoon();
      return;
    }
    streams.set(stream.id, stream);
    const old = tbody.querySelector(`tr[data-id="${CSS.escape(stream.id)}"]`);
    if (!old) {
      renderRows();
      return;
    }
    // Patch the cells that changed, so a button under the pointer is not replaced by a copy.
    const fresh = row(stream);
    old.dataset.status = stream.status;
    [...fresh.children].forEach((td, i) => {
      const cell = old.children[i];
      if (signature(cell) === signature(td)) return;
      cell.replaceWith(td);
      td.classList.add("flash");
    });
    reloadCountsSoon();
  }

  function remove(id) {
    streams.delete(id);
    renderRows();
    reloadCountsSoon();
  }

  const filterQuery = () => ({
    status: filters.status || undefined,
    adapter: filters.adapter || undefined,
    q: filters.q || undefined,
  });

  async function loadCounts() {
    try {
      counts = await get(`/streams/count${query(filterQuery())}`);
    } catch (err) {
      counts = null;
      showError(err, "Stream counts");
    }
    if (ctx.alive) {
      renderCounts();
      renderRows();
    }
  }

  async function load() {
    const [page, workerList, report] = await Promise.allSettled([
      get(`/streams${query({ limit: PAGE, after: cursor || undefined, ...filterQuery() })}`),
      get("/workers"),
      get(`/reports/aqi${query({ group_by: "stream", from: utcMidnight() })}`),
    ]);
    if (!ctx.alive) return;
    if (workerList.status === "fulfilled") workers = workerList.value;
    else showError(workerList.reason, "Workers");
    if (report.status === "fulfilled") {
      today.clear();
      for (const g of report.value.groups) if (g.key) today.set(g.key, g.readings);
    } else {
      showError(report.reason, "Readings today");
    }
    if (page.status === "fulfilled") {
      streams.clear();
      for (const s of page.value.items) {
        streams.set(s.id, s);
        knownAdapters.add(s.adapter);
      }
      next = page.value.next;
    } else {
      showError(page.reason, "Streams");
      fill(tbody, h("tr", { class: "empty" }, h("td", { colspan: 9 }, "The streams could not be loaded.")));
    }
    renderAdapterFilter();
    if (page.status === "fulfilled") renderRows();
    await loadCounts();
  }

  function applyFilters() {
    filters.status = statusFilter.value;
    filters.adapter = adapterFilter.value;
    filters.q = search.value.trim();
    cursors = [];
    cursor = "";
    load().catch((err) => showError(err));
  }

  statusFilter.addEventListener("change", applyFilters);
  adapterFilter.addEventListener("change", applyFilters);
  let searchTimer = null;
  search.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(applyFilters, 300);
  });
  ctx.onCleanup(() => clearTimeout(searchTimer));
  more.addEventListener("click", () => {
    if (!next) return;
    cursors.push(cursor);
    cursor = next;
    load().catch((err) => showError(err));
  });
  prev.addEventListener("click", () => {
    if (!cursors.length) return;
    cursor = cursors.pop();
    load().catch((err) => showError(err));
  });
  const bulk = (verb, button) => button.addEventListener("click", async () => {
    const n = counts ? counts.total : 0;
    if (!window.confirm(`${verb} every stream matching these filters (${num(n)} streams)?`)) return;
    button.disabled = true;
    try {
      const answer = await post(`/streams/${verb.toLowerCase()}`, { filter: filterQuery() });
      toast(answer.message);
      await load();
    } catch (err) {
      showError(err, `${verb} matching`);
    } finally {
      button.disabled = false;
    }
  });
  bulk("Start", startAll);
  bulk("Stop", stopAll);
  newButton.addEventListener("click", () => openStreamForm({
    adapters: adapterNames(), streams: [...streams.values()], onSaved: upsert,
  }));

  let reloadTimer = null;
  const reloadSoon = () => {
    clearTimeout(reloadTimer);
    reloadTimer = setTimeout(() => load().catch((err) => showError(err)), 400);
  };
  let countsTimer = null;
  const reloadCountsSoon = () => {
    if (countsTimer) return;
    countsTimer = setTimeout(() => {
      countsTimer = null;
      loadCounts();
    }, 1000);
  };
  ctx.onCleanup(() => {
    clearTimeout(reloadTimer);
    clearTimeout(countsTimer);
  });
  const midnight = Date.parse(utcMidnight());
  ctx.onCleanup(live.subscribe((m) => {
    if (!ctx.alive) return;
    if (m.type === "stream") {
      if (m.deleted || !m.stream) {
        if (streams.has(m.stream_id)) remove(m.stream_id);
        else reloadCountsSoon();
      } else if (streams.has(m.stream.id)) {
        upsert(m.stream);
      } else {
        reloadCountsSoon();
      }
    } else if (m.type === "result") {
      const s = streams.get(m.stream_id);
      if (m.measurement && Date.parse(m.measurement.ts) >= midnight) today.set(m.stream_id, (today.get(m.stream_id) || 0) + 1);
      if (s) upsert({ ...s, last_result_at: m.result.fetched_at });
    } else if (m.type === "failure") {
      const s = streams.get(m.stream_id);
      if (s) upsert({ ...s, last_error: m.failure.message, last_error_at: m.failure.at });
    } else if (m.type === "worker" || m.type === "resync") {
      reloadSoon();
    }
  }));

  fill(tbody, h("tr", { class: "empty" }, h("td", { colspan: 9 }, "Loading…")));
  renderAdapterFilter();
  await load();
}
