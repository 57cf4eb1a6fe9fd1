// The stream form, for a new stream (POST /streams) and for changing one (PATCH with only the
// fields that changed). The API validates; its 422 problems are shown next to their fields.

import { post, patch, ApiError } from "./api.js";
import { h, fill, errorText, toast } from "./ui.js";

const DEFAULT_ADAPTER = "IQAIR_DAILY";
const DEFAULT_ENDPOINT = "https://api.airvisual.com/v2/nearest_city";
const POINT = ["lat", "lon"];
const PLACE = ["city", "state", "country"];
const WINDOWS = ["per_minute", "per_day", "per_month"];
/** The fields whose problems are shown under their own input. */
const SIMPLE = ["adapter", "endpoint", "secret_key", "interval", "cron", "timeout", "bucket_name", "start"];

/**
 * Which error slot a problem sentence belongs to: `{field}` for a simple field, `{group, sub}`
 * for `params.*` and `rate_limit.*`, `{field: "form"}` for the rest. The API starts each
 * sentence with the field it is about; a few sentences name the schedule another way.
 */
export function slotOf(problem) {
  const text = String(problem);
  const dotted = /^(params|rate_limit)(?:\.([a-z_]+))?/.exec(text);
  if (dotted) {
    const known = dotted[1] === "params" ? [...POINT, ...PLACE] : WINDOWS;
    return { group: dotted[1], sub: known.includes(dotted[2]) ? dotted[2] : null };
  }
  if (/^give (either )?interval/.test(text)) return { field: "interval" };
  if (/cron expression/.test(text)) return { field: "cron" };
  const first = /^([a-z_]+)/.exec(text);
  if (first && SIMPLE.includes(first[1])) return { field: first[1] };
  return { field: "form" };
}

/** A text input that keeps what the user typed (the API, not the browser, judges it). */
function input(name, attrs = {}) {
  return h("input", { name, id: `f-${name}`, type: "text", autocomplete: "off", ...attrs });
}

/** A labelled input with its hint and its error slot (`grouped`: the group's slot shows it). */
function field(name, label, control, hint, { grouped = false } = {}) {
  return h("div", { class: `field field-${name}` },
    h("label", { for: `f-${name}` }, label),
    control,
    hint ? h("div", { class: "hint" }, hint) : null,
    grouped ? null : h("div", { class: "field-error", "data-test": `error-${name}`, role: "alert" }));
}

/** A number the user typed, or an error sentence. `seconds`: convert to ms. */
function number(raw, name, { seconds = false, integer = false } = {}) {
  const text = String(raw).trim();
  if (text === "") return { value: undefined };
  const n = Number(text);
  if (!Number.isFinite(n) || n < 0) {
    return { problem: `${name} must be a non-negative number${seconds ? " of seconds" : ""}` };
  }
  if (integer && !Number.isInteger(n)) return { problem: `${name} must be a whole number` };
  return { value: seconds ? Math.round(n * 1000) : n };
}

function sameParams(a, b) {
  const ka = Object.keys(a);
  const kb = Object.keys(b || {});
  if (ka.length !== kb.length) return false;
  return ka.every((k) => k in b && String(a[k]).trim() === String(b[k]).trim());
}

/**
 * Open the form in a modal dialog.
 * - `stream`: the stream to change (null for a new one);
 * - `adapters`: adapter names for the select;
 * - `streams`: existing streams (a new stream takes its endpoint and bucket from the newest);
 * - `onSaved(stream)`: called with the API's answer.
 */
export function openStreamForm({ stream = null, adapters = [], streams = [], onSaved }) {
  const editing = Boolean(stream);
  const names = [...new Set([DEFAULT_ADAPTER, ...adapters, ...(stream ? [stream.adapter] : [])])];
  const newest = [...streams].sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)))[0];
  const params = (stream && stream.params) || (editing ? {} : { lat: "", lon: "" });

  const adapter = h("select", { name: "adapter", id: "f-adapter" },
    names.map((n) => h("option", { value: n, selected: n === (stream ? stream.adapter : names[0]) }, n)));
  const endpoint = input("endpoint", {
    value: stream ? stream.endpoint : (newest && newest.endpoint) || DEFAULT_ENDPOINT,
    placeholder: DEFAULT_ENDPOINT, spellcheck: "false",
  });
  const secret = input("secret_key", {
    type: "password", autocomplete: "new-password",
    placeholder: editing ? "*** (leave blank to keep the key)" : "the API key",
  });
  const interval = input("interval", {
    inputmode: "decimal",
    value: stream ? (stream.interval != null ? stream.interval / 1000 : "") : "3600",
    placeholder: "e.g. 3600",
  });
  const cron = input("cron", { value: stream ? stream.cron || "" : "", placeholder: "0 0 * * * *", spellcheck: "false" });
  const timeout = input("timeout", {
    inputmode: "numeric", value: stream ? stream.timeout : "",
    placeholder: "default: the interval, or 60000 for cron",
  });
  const bucket = input("bucket_name", {
    value: stream ? stream.bucket_name : (newest && newest.bucket_name) || "results", spellcheck: "false",
  });
  const place = {};
  for (const key of [...POINT, ...PLACE]) {
    place[key] = input(key, {
      inputmode: POINT.includes(key) ? "decimal" : null,
      value: params[key] != null ? params[key] : "",
      placeholder: { lat: "52.52", lon: "13.40", city: "Krakow", state: "Lesser Poland Voivodeship", country: "Poland" }[key],
    });
  }
  const limits = {};
  for (const key of WINDOWS) {
    limits[key] = input(key, {
      inputmode: "numeric",
      value: stream ? stream.rate_limit[key] : "",
      placeholder: { per_minute: "5", per_day: "500", per_month: "10000" }[key],
    });
  }
  const start = h("input", { type: "checkbox", name: "start", id: "f-start", checked: true });

  // Interval and cron exclude each other, and so do the two ways of naming a place: typing in
  // one clears the other.
  const exclusive = (mine, theirs) => {
    for (const el of mine) {
      el.addEventListener("input", () => {
        if (el.value.trim() !== "") for (const other of theirs) other.value = "";
        retarget();
      });
    }
  };
  exclusive([interval], [cron]);
  exclusive([cron], [interval]);
  exclusive(POINT.map((k) => place[k]), PLACE.map((k) => place[k]));
  exclusive(PLACE.map((k) => place[k]), POINT.map((k) => place[k]));

  // IQAir answers a point on /v2/nearest_city and a place on /v2/city: follow the user's choice.
  function retarget() {
    const url = endpoint.value.trim();
    const byPlace = PLACE.some((k) => place[k].value.trim() !== "");
    const byPoint = POINT.some((k) => place[k].value.trim() !== "");
    if (byPlace && /\/v2\/nearest_city$/.test(url)) endpoint.value = url.replace(/nearest_city$/, "city");
    else if (byPoint && /\/v2\/city$/.test(url)) endpoint.value = url.replace(/city$/, "nearest_city");
  }

  const formError = h("div", { class: "form-error", "data-test": "form-error", role: "alert" });
  const submit = h("button", { type: "submit", class: "btn primary", "data-test": "create-submit" },
    editing ? "Save changes" : "Create stream");
  const cancel = h("button", { type: "button", class: "btn", "data-test": "cancel" }, "Cancel");

  const form = h("form", { class: "stream-form", novalidate: true, "data-test": "stream-form" },
    h("input", { type: "text", name: "username", autocomplete: "username", value: "", hidden: true }),
    h("h2", {}, editing ? `Change stream ${stream.id}` : "New stream"),
    h("fieldset", {}, h("legend", {}, "Source"),
      h("div", { class: "row" },
        field("adapter", "Adapter", adapter),
        field("endpoint", "Endpoint", endpoint, "The API URL, without the key."),
        field("secret_key", "API key", secret, editing ? "Type a new one to replace it." : "Never shown again (***)."))),
    h("fieldset", {}, h("legend", {}, "Schedule"),
      h("div", { class: "row" },
        field("interval", "Every (seconds)", interval, "1 s to 31 days."),
        h("div", { class: "or" }, "or"),
        field("cron", "Cron (UTC, with seconds)", cron, "e.g. 0 */15 * * * *"),
        field("timeout", "Timeout (ms)", timeout, editing ? "Per run." : "Per run; blank for the default."))),
    h("fieldset", {}, h("legend", {}, "Location (params)"),
      h("div", { class: "row" },
        field("lat", "Latitude", place.lat, null, { grouped: true }),
        field("lon", "Longitude", place.lon, null, { grouped: true }),
        h("div", { class: "or" }, "or"),
        field("city", "City", place.city, null, { grouped: true }),
        field("state", "State", place.state, null, { grouped: true }),
        field("country", "Country", place.country, null, { grouped: true })),
      h("div", { class: "field-error group-error", "data-test": "error-params", role: "alert" })),
    h("fieldset", {}, h("legend", {}, "Storage and rate limit"),
      h("div", { class: "row" },
        field("bucket_name", "Bucket", bucket),
        field("per_minute", "Calls / minute", limits.per_minute, null, { grouped: true }),
        field("per_day", "Calls / day", limits.per_day, null, { grouped: true }),
        field("per_month", "Calls / month", limits.per_month, null, { grouped: true })),
      h("div", { class: "hint" }, editing
        ? "0 means no limit on that window."
        : "Blank: IQAir Community's 5 / 500 / 10 000. 0 means no limit on that window."),
      h("div", { class: "field-error group-error", "data-test": "error-rate_limit", role: "alert" })),
    editing ? null : h("div", { class: "field field-start" },
      h("label", { class: "check" }, start, " Start right away"),
      h("div", { class: "field-error", "data-test": "error-start", role: "alert" })),
    formError,
    h("div", { class: "actions" }, cancel, submit));

  const dialog = h("dialog", { class: "modal", "data-test": "stream-dialog" }, form);
  document.body.append(dialog);
  dialog.addEventListener("close", () => dialog.remove());
  cancel.addEventListener("click", () => dialog.close());
  dialog.showModal();
  (editing ? endpoint : secret).focus();

  function clearProblems() {
    for (const el of form.querySelectorAll(".field-error, .form-error")) fill(el);
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  }

  function show(problems) {
    for (const problem of problems) {
      const slot = slotOf(problem);
      if (slot.group) {
        const box = form.querySelector(`[data-test=error-${slot.group}]`);
        box.append(h("div", { "data-test": slot.sub ? `error-${slot.sub}` : null }, problem));
        const inputs = slot.sub ? [form.elements[slot.sub]]
          : (slot.group === "params" ? [...POINT, ...PLACE] : WINDOWS).map((k) => form.elements[k]);
        for (const el of inputs) if (el) el.setAttribute("aria-invalid", "true");
      } else if (slot.field !== "form" && form.querySelector(`[data-test=error-${slot.field}]`)) {
        form.querySelector(`[data-test=error-${slot.field}]`).append(h("div", {}, problem));
        const el = form.elements[slot.field];
        if (el) el.setAttribute("aria-invalid", "true");
      } else {
        formError.append(h("div", {}, problem));
      }
    }
    const first = form.querySelector("[aria-invalid]");
    if (first) first.focus();
  }

  /** The body to send, or `{problems}` found before asking the API. */
  function collect() {
    const problems = [];
    const body = {};
    const n = (el, name, opts) => {
      const r = number(el.value, name, opts);
      if (r.problem) problems.push(r.problem);
      return r.value;
    };
    const intervalMs = n(interval, "interval", { seconds: true });
    const cronText = cron.value.trim();
    const timeoutMs = n(timeout, "timeout", { integer: true });
    const rate = {};
    for (const key of WINDOWS) {
      const v = n(limits[key], `rate_limit.${key}`, { integer: true });
      if (v !== undefined) rate[key] = v;
    }
    const p = {};
    for (const key of [...POINT, ...PLACE]) {
      const v = place[key].value.trim();
      if (v === "") continue;
      p[key] = POINT.includes(key) && Number.isFinite(Number(v)) ? Number(v) : v;
    }
    if (problems.length) return { problems };

    if (!editing) {
      body.adapter = adapter.value;
      body.endpoint = endpoint.value.trim();
      body.secret_key = secret.value;
      if (intervalMs !== undefined) body.interval = intervalMs;
      if (cronText) body.cron = cronText;
      if (timeoutMs !== undefined) body.timeout = timeoutMs;
      body.bucket_name = bucket.value.trim();
      body.params = p;
      if (Object.keys(rate).length) body.rate_limit = rate;
      body.start = start.checked;
      return { body };
    }

    if (adapter.value !== stream.adapter) body.adapter = adapter.value;
    if (endpoint.value.trim() !== stream.endpoint) body.endpoint = endpoint.value.trim();
    if (secret.value !== "") body.secret_key = secret.value;
    if (intervalMs === undefined && !cronText) {
      return { problems: ["give interval (seconds) or cron"] };
    }
    if (intervalMs !== undefined && intervalMs !== stream.interval) body.interval = intervalMs;
    if (cronText && cronText !== stream.cron) body.cron = cronText;
    if (intervalMs !== undefined && cronText) {
      // Both given: let the API say which one to drop.
      body.interval = intervalMs;
      body.cron = cronText;
    }
    if (timeoutMs !== undefined && timeoutMs !== stream.timeout) body.timeout = timeoutMs;
    if (bucket.value.trim() !== stream.bucket_name) body.bucket_name = bucket.value.trim();
    if (!sameParams(p, stream.params)) body.params = p;
    const changedRate = {};
    for (const key of WINDOWS) {
      if (rate[key] !== undefined && rate[key] !== stream.rate_limit[key]) changedRate[key] = rate[key];
    }
    if (Object.keys(changedRate).length) body.rate_limit = changedRate;
    return { body };
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearProblems();
    const { body, problems } = collect();
    if (problems) {
      show(problems);
      return;
    }
    if (editing && Object.keys(body).length === 0) {
      dialog.close();
      toast("Nothing changed.");
      return;
    }
    submit.disabled = true;
    submit.textContent = editing ? "Saving…" : "Creating…";
    try {
      const saved = editing
        ? await patch(`/streams/${encodeURIComponent(stream.id)}`, body)
        : await post("/streams", body);
      dialog.close();
      toast(editing ? "Stream changed." : "Stream created.");
      if (onSaved) onSaved(saved);
    } catch (err) {
      if (err instanceof ApiError && err.problems.length) {
        show(err.problems);
      } else {
        const info = err.detail && err.detail.info;
        formError.append(h("div", {}, errorText(err)));
        if (typeof info === "string" && info) formError.append(h("div", { class: "muted" }, info));
      }
    } finally {
      submit.disabled = false;
      submit.textContent = editing ? "Save changes" : "Create stream";
    }
  });
  return dialog;
}
