// The live channel (`GET /live`): one WebSocket for the whole console, reopened with backoff
// when it closes. Pages subscribe while they are shown; after a reconnect or a `lagged` message
// they get `{type: "resync"}` and refetch what they show, since messages may have been missed.

const listeners = new Set();
const stateListeners = new Set();
let socket = null;
let wanted = false;
let retryMs = 1000;
let retryTimer = null;
let everOpened = false;
let state = "off";

function setState(next) {
  state = next;
  for (const fn of stateListeners) fn(state);
}

function dispatch(message) {
  for (const fn of [...listeners]) {
    try {
      fn(message);
    } catch (err) {
      console.error("live handler failed", err);
    }
  }
}

function open() {
  if (!wanted || socket) return;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}/live`);
  socket = ws;
  setState("connecting");
  ws.addEventListener("open", () => {
    retryMs = 1000;
    setState("open");
    // Anything may have happened while we were away.
    if (everOpened) dispatch({ type: "resync", reason: "reconnected" });
    everOpened = true;
  });
  ws.addEventListener("message", (event) => {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (message.type === "lagged") {
      dispatch(message);
      dispatch({ type: "resync", reason: "lagged" });
    } else {
      dispatch(message);
    }
  });
  ws.addEventListener("close", () => {
    if (socket === ws) socket = null;
    if (!wanted) {
      setState("off");
      return;
    }
    setState("reconnecting");
    clearTimeout(retryTimer);
    retryTimer = setTimeout(open, retryMs);
    retryMs = Math.min(retryMs * 2, 30000);
  });
}

/** Open the channel (after login). */
export function connect() {
  wanted = true;
  open();
}

/** Close it (on logout). */
export function disconnect() {
  wanted = false;
  everOpened = false;
  clearTimeout(retryTimer);
  if (socket) socket.close();
  socket = null;
  setState("off");
}

/** Call `fn` with every message until the returned function is called. */
export function subscribe(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

/** Call `fn` with the channel's state (`open`, `connecting`, `reconnecting`, `off`). */
export function onState(fn) {
  stateListeners.add(fn);
  fn(state);
  return () => stateListeners.delete(fn);
}
