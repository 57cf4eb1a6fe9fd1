// #/workers: every worker ever seen (connected or not, load, adapters, last seen) and what the
// reconciler found on its last pass. Refreshed when a worker comes or goes, and every 15 s.

import { get } from "./api.js";
import * as live from "./live.js";
import { h, fill, time, showError, card, num } from "./ui.js";

const FINDINGS = [
  ["streams", "Streams listed", "streams whose partitions were listed"],
  ["suspects", "Of a lost worker", "streams listed because the worker that held them restarted or went away"],
  ["objects", "Objects seen", "objects seen in the listed partitions"],
  ["inserted", "References inserted", "objects that had no reference and now have one"],
  ["foreign", "Foreign objects", "objects whose name is not a result id (left alone)"],
  ["unlisted", "Unlisted streams", "streams whose bucket could not be listed (missing bucket, store down)"],
  ["dangling", "Dangling references", "references whose object is missing from the store"],
];

const SCOPES = {
  "watermark/all": "every stream, after its watermark",
  "watermark/due": "the streams of lost workers and this pass's share of the rotation",
  "audit/all": "audit: every stream's whole window",
};

export async function render(main, route, ctx) {
  const tbody = h("tbody");
  const summary = h("span", { class: "muted count" });
  const reconciler = h("div", { "data-test": "reconciler" });

  fill(main,
    h("div", { class: "page-head" }, h("h1", {}, "Workers"), h("div", { class: "toolbar" }, summary)),
    h("div", { class: "card flush" },
      h("table", { class: "table", "data-test": "workers-table" },
        h("thead", {}, h("tr", {},
          h("th", {}, "Worker"), h("th", {}, "Connection"), h("th", {}, "Streams / capacity"),
          h("th", {}, "Adapters"), h("th", {}, "Last seen"), h("th", {}, "Connected at"))),
        tbody)),
    card("Reconciler", { class: "card" },
      h("p", { class: "muted small" }, "Compares each stream's objects in the store with the references in the database, and inserts what is missing."),
      reconciler));

  function row(w) {
    const load = w.capacity > 0 ? Math.min(1, w.streams / w.capacity) : 0;
    return h("tr", { "data-test": "worker-row", "data-id": w.id },
      h("td", {}, h("code", {}, w.id)),
      h("td", {}, h("span", {
        class: `badge ${w.connected ? "status-running" : "status-stopped"}`, "data-test": "connected",
      }, w.connected ? "connected" : "disconnected")),
      h("td", {}, h("div", { class: "load" },
        h("span", {}, `${num(w.streams)} / ${num(w.capacity)}`),
        h("span", { class: "bar" }, h("span", { style: `width:${Math.round(load * 100)}%` })))),
      h("td", {}, (w.adapters || []).length ? w.adapters.map((a) => h("span", { class: "tag" }, a)) : "—"),
      h("td", {}, time(w.last_seen, { relative: true })),
      h("td", {}, time(w.connected_at)));
  }

  async function load() {
    const [workers, pass] = await Promise.allSettled([get("/workers"), get("/reconciler")]);
    if (!ctx.alive) return;
    if (workers.status === "fulfilled") {
      const list = workers.value;
      fill(tbody, list.length ? list.map(row)
        : h("tr", { class: "empty" }, h("td", { colspan: 6 }, "No worker has connected yet.")));
      const on = list.filter((w) => w.connected).length;
      fill(summary, `${on} of ${list.length} connected`);
    } else {
      showError(workers.reason, "Workers");
      fill(tbody, h("tr", { class: "empty" }, h("td", { colspan: 6 }, "The workers could not be loaded.")));
    }
    if (pass.status === "fulfilled") {
      const { last_run_at: at, findings } = pass.value;
      fill(reconciler,
        h("p", {}, "Last pass: ", at ? [time(at), " (", time(at, { relative: true }), ")"] : h("span", { class: "muted" }, "not yet run"),
          findings ? h("span", { class: "muted", "data-test": "reconciler-scope" }, " — ", SCOPES[`${findings.mode}/${findings.scope}`] || findings.mode) : null),
        findings ? h("dl", { class: "findings" }, FINDINGS.map(([key, label, help]) => h("div", {
          class: `finding${findings[key] > 0 && ["unlisted", "dangling", "foreign"].includes(key) ? " warn" : ""}`,
          title: help, "data-key": key,
        }, h("dt", {}, label), h("dd", {}, num(findings[key]))))) : null);
    } else {
      showError(pass.reason, "Reconciler");
    }
  }

  fill(tbody, h("tr", { class: "empty" }, h("td", { colspan: 6 }, "Loading…")));
  await load();
  const timer = setInterval(() => load().catch((err) => showError(err)), 15000);
  ctx.onCleanup(() => clearInterval(timer));
  ctx.onCleanup(live.subscribe((m) => {
    if (m.type === "worker" || m.type === "resync") load().catch((err) => showError(err));
  }));
}
