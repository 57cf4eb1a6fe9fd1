// #/streams: every stream with its status, filters, the new-stream form, and per-row actions.
// Statuses, last results and errors follow the live channel without a reload.

import { get, post, del, query } from "./api.js";
import * as live from "./live.js";
import {
  h, fill, time, duration, paramsShort, shortId, statusBadge, showError, toast, utcMidnight, num,
} from "./ui.js";
import { openStreamForm } from "./stream-form.js";

const STATUSES = ["running", "pending", "stopped", "failed"];

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
  const filters = { status: route.query.get("status") || "", adapter: route.query.get("adapter") || "" };

  const adapterNames = () => {
    const names = new Set(["IQAIR_DAILY"]);
    for (const w of workers) for (const a of w.adapters || []) names.add(a);
    for (const s of streams.values()) names.add(s.adapter);
    return [...names].sort();
  };

  const statusFilter = h("select", { "data-test": "filter-status", name: "filter-status", "aria-label": "Status" },
    h("option", { value: "" }, "All statuses"),
    STATUSES.map((s) => h("option", { value: s, selected: s === filters.status }, s)));
  const adapterFilter = h("select", { "data-test": "filter-adapter", name: "filter-adapter", "aria-label": "Adapter" });
  const count = h("span", { class: "muted count" });
  const newButton = h("button", { type: "button", class: "btn primary", "data-test": "new-stream" }, "New stream");
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
        count,
        newButton)),
    h("div", { class: "card flush" }, table));

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

  function visible(stream) {
    return (!filters.status || stream.status === filters.status)
      && (!filters.adapter || stream.adapter === filters.adapter);
  }

  function renderRows() {
    const all = [...streams.values()];
    const shown = all.filter(visible);
    fill(tbody, shown.length ? shown.map(row) : h("tr", { class: "empty" }, h("td", { colspan: 9 },
      all.length ? "No stream matches these filters." : "No streams yet: create one with “New stream”.")));
    fill(count, all.length === shown.length ? `${all.length} streams` : `${shown.length} of ${all.length} streams`);
  }

  function upsert(stream) {
    if (!stream || !ctx.alive) return;
    const isNew = !streams.has(stream.id);
    streams.set(stream.id, stream);
    const old = tbody.querySelector(`tr[data-id="${CSS.escape(stream.id)}"]`);
    if (isNew || !old || !visible(stream)) {
      if (isNew) renderAdapterFilter();
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
  }

  function remove(id) {
    streams.delete(id);
    renderRows();
  }

  async function load() {
    const [list, workerList, report] = await Promise.allSettled([
      get("/streams"),
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
    if (list.status === "fulfilled") {
      streams.clear();
      for (const s of list.value) streams.set(s.id, s);
    } else {
      showError(list.reason, "Streams");
      fill(tbody, h("tr", { class: "empty" }, h("td", { colspan: 9 }, "The streams could not be loaded.")));
    }
    renderAdapterFilter();
    if (list.status === "fulfilled") renderRows();
  }

  statusFilter.addEventListener("change", () => {
    filters.status = statusFilter.value;
    renderRows();
  });
  adapterFilter.addEventListener("change", () => {
    filters.adapter = adapterFilter.value;
    renderRows();
  });
  newButton.addEventListener("click", () => openStreamForm({
    adapters: adapterNames(), streams: [...streams.values()], onSaved: upsert,
  }));

  let reloadTimer = null;
  const reloadSoon = () => {
    clearTimeout(reloadTimer);
    reloadTimer = setTimeout(() => load().catch((err) => showError(err)), 400);
  };
  ctx.onCleanup(() => clearTimeout(reloadTimer));
  const midnight = Date.parse(utcMidnight());
  ctx.onCleanup(live.subscribe((m) => {
    if (!ctx.alive) return;
    if (m.type === "stream") {
      if (m.deleted || !m.stream) remove(m.stream_id);
      else upsert(m.stream);
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
