// The data-streams console: one page with hash routes (#/streams, #/streams/{id}, #/workers,
// #/reports, #/warehouse), talking to the API like any other client. Logging in trades the API token for a
// session cookie (POST /session); the CSRF token of the session is kept in sessionStorage under
// `ds-csrf`, where the API viewer (/docs) finds it too.

import { get, post, del, setUnauthorizedHandler, CSRF_KEY } from "./api.js";
import * as live from "./live.js";
import { h, fill, showError, clearErrors, refreshRelativeTimes, errorText } from "./ui.js";
import * as streamsPage from "./page-streams.js";
import * as streamPage from "./page-stream.js";
import * as workersPage from "./page-workers.js";
import * as reportsPage from "./page-reports.js";
import * as warehousePage from "./page-warehouse.js";

const ROUTES = [
  { pattern: /^\/streams\/?$/, page: streamsPage, nav: "streams", title: "Streams" },
  { pattern: /^\/streams\/([^/?]+)$/, page: streamPage, nav: "streams", title: "Stream" },
  { pattern: /^\/workers\/?$/, page: workersPage, nav: "workers", title: "Workers" },
  { pattern: /^\/reports\/?$/, page: reportsPage, nav: "reports", title: "Reports" },
  { pattern: /^\/warehouse\/?$/, page: warehousePage, nav: "warehouse", title: "Warehouse" },
];

const main = document.getElementById("main");
let session = null;
let current = null;

// ---- the header ----

const navLinks = {
  streams: h("a", { href: "#/streams", "data-test": "nav-streams" }, "Streams"),
  workers: h("a", { href: "#/workers", "data-test": "nav-workers" }, "Workers"),
  reports: h("a", { href: "#/reports", "data-test": "nav-reports" }, "Reports"),
  warehouse: h("a", { href: "#/warehouse", "data-test": "nav-warehouse" }, "Warehouse"),
};
const liveBadge = h("span", { class: "live", "data-test": "live-state" });
const logout = h("a", { href: "#", "data-test": "logout", class: "logout" }, "Log out");

function renderHeader() {
  const header = document.querySelector("header");
  const loggedIn = Boolean(session);
  fill(header,
    h("a", { href: "#/streams", class: "brand" }, "data-streams"),
    loggedIn ? h("nav", { class: "nav" },
      navLinks.streams, navLinks.workers, navLinks.reports, navLinks.warehouse,
      h("a", { href: "/docs", "data-test": "nav-api" }, "API")) : null,
    h("span", { class: "spacer" }),
    loggedIn ? liveBadge : null,
    loggedIn && !session.open ? logout : null);
}

live.onState((state) => {
  const text = { open: "live", connecting: "connecting…", reconnecting: "reconnecting…", off: "offline" }[state];
  liveBadge.className = `live live-${state}`;
  liveBadge.title = state === "open" ? "Updates arrive as they happen" : "The live channel is not connected; retrying";
  fill(liveBadge, h("i", { class: "dot" }), text);
});

logout.addEventListener("click", async (event) => {
  event.preventDefault();
  try {
    await del("/session", { quiet401: true });
  } catch (err) {
    showError(err, "Log out");
  }
  showLogin();
});

// ---- routing ----

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/streams";
  const at = raw.indexOf("?");
  const path = at < 0 ? raw : raw.slice(0, at);
  const queryString = at < 0 ? "" : raw.slice(at + 1);
  return { path, query: new URLSearchParams(queryString) };
}

function makeContext() {
  const cleanups = [];
  return {
    alive: true,
    onCleanup(fn) {
      cleanups.push(fn);
    },
    dispose() {
      this.alive = false;
      for (const fn of cleanups.splice(0)) {
        try {
          fn();
        } catch (err) {
          console.error(err);
        }
      }
    },
  };
}

async function route() {
  if (!session) return;
  if (current) current.dispose();
  clearErrors();
  const { path, query } = parseHash();
  let match = null;
  let found = null;
  for (const r of ROUTES) {
    match = r.pattern.exec(path);
    if (match) {
      found = r;
      break;
    }
  }
  for (const [name, link] of Object.entries(navLinks)) {
    link.classList.toggle("active", Boolean(found) && found.nav === name);
  }
  const ctx = makeContext();
  current = ctx;
  if (!found) {
    document.title = "data-streams";
    fill(main, h("section", { class: "card" }, h("h1", {}, "No such page"),
      h("p", {}, h("a", { href: "#/streams" }, "Go to the streams"))));
    return;
  }
  document.title = `${found.title} · data-streams`;
  const routeInfo = { path, query, params: match.slice(1).map(decodeURIComponent) };
  try {
    await found.page.render(main, routeInfo, ctx);
  } catch (err) {
    if (!ctx.alive) return;
    console.error(err);
    if (err && err.status === 401) return;
    showError(err);
    if (!main.children.length || main.textContent.trim() === "") {
      fill(main, h("section", { class: "card" }, h("p", {}, "This page could not be shown: ", errorText(err))));
    }
  }
}

window.addEventListener("hashchange", route);

// ---- session ----

function startApp(view) {
  session = view;
  if (view.csrf) sessionStorage.setItem(CSRF_KEY, view.csrf);
  else sessionStorage.removeItem(CSRF_KEY);
  renderHeader();
  live.connect();
  route();
}

function showLogin(message) {
  session = null;
  if (current) current.dispose();
  current = null;
  sessionStorage.removeItem(CSRF_KEY);
  live.disconnect();
  for (const dialog of document.querySelectorAll("dialog")) dialog.close();
  renderHeader();
  clearErrors();
  document.title = "Log in · data-streams";
  const token = h("input", {
    type: "password", name: "token", id: "login-token", "data-test": "login-token",
    autocomplete: "current-password", required: true, placeholder: "DATA_STREAMS_API_TOKEN",
  });
  const error = h("div", { class: "field-error", "data-test": "login-error", role: "alert" }, message || "");
  const submit = h("button", { type: "submit", class: "btn primary", "data-test": "login-submit" }, "Log in");
  const form = h("form", { class: "login card", "data-test": "login-form" },
    // For password managers: the token is the only secret, under one fixed name.
    h("input", { type: "text", name: "username", autocomplete: "username", value: "data-streams", hidden: true }),
    h("h1", {}, "Log in"),
    h("p", { class: "muted" }, "This data-streams API needs its token. The console trades it for a session cookie that lasts 12 hours."),
    h("label", { for: "login-token" }, "API token"),
    token, error,
    h("div", { class: "actions" }, submit));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    fill(error);
    submit.disabled = true;
    try {
      const view = await post("/session", { token: token.value }, { quiet401: true });
      startApp(view);
    } catch (err) {
      fill(error, err.status === 401 ? err.message : errorText(err));
      token.select();
    } finally {
      submit.disabled = false;
    }
  });
  fill(main, form);
  token.focus();
}

setUnauthorizedHandler((err) => {
  if (session) showLogin(`Your session has ended (${err.message}); log in again.`);
});

async function boot() {
  renderHeader();
  try {
    startApp(await get("/session", { quiet401: true }));
  } catch (err) {
    if (err.status === 401) {
      showLogin();
      return;
    }
    showError(err, "Session");
    const retry = h("button", { type: "button", class: "btn", on: { click: boot } }, "Try again");
    fill(main, h("section", { class: "card" },
      h("h1", {}, "The API does not answer"), h("p", {}, errorText(err)), retry));
  }
}

setInterval(() => refreshRelativeTimes(), 10000);
boot();
