// The plugin list, kept current from GET /api/plugins and the server's event stream.

import { api } from "./api.js";

let plugins = [];
let loaded = false;
let loadError = null;
const listeners = new Set();
const eventListeners = new Set();

/** The plugins as last fetched, sorted by name. */
export function getPlugins() {
  return plugins;
}

/** One plugin by id, or undefined. */
export function getPlugin(id) {
  return plugins.find((p) => p.id === id);
}

/** Whether the list has been fetched at least once, and the last fetch's error. */
export function status() {
  return { loaded, error: loadError };
}

/** Calls `fn()` after every change to the list; returns a function that stops it. */
export function subscribe(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

/** Calls `fn(event)` for every lifecycle event from the server; returns a function that stops it. */
export function onPluginEvent(fn) {
  eventListeners.add(fn);
  return () => eventListeners.delete(fn);
}

const byName = (a, b) =>
  (a.metadata?.name ?? a.id).localeCompare(b.metadata?.name ?? b.id, undefined, { sensitivity: "base" });

function set(list) {
  plugins = [...list].sort(byName);
  loaded = true;
  notify();
}

function notify() {
  for (const fn of [...listeners]) {
    try {
      fn();
    } catch (err) {
      console.error("a plugin list listener failed", err);
    }
  }
}

/** Replaces the whole list (e.g. with the answer to a rescan). */
export function replaceAll(list) {
  if (Array.isArray(list)) set(list);
}

/** Replaces one plugin's entry (e.g. with the answer to enable or disable). */
export function update(info) {
  if (!info?.id) return;
  const others = plugins.filter((p) => p.id !== info.id);
  set([...others, info]);
}

let inflight = null;
let again = false;

/** Fetches the list again. Calls made while a fetch runs are folded into one more fetch. */
export function refresh() {
  if (inflight) {
    again = true;
    return inflight;
  }
  inflight = (async () => {
    try {
      do {
        again = false;
        try {
          const list = await api.plugins();
          loadError = null;
          set(list);
        } catch (err) {
          loadError = err;
          loaded = true;
          notify();
        }
      } while (again);
    } finally {
      inflight = null;
    }
  })();
  return inflight;
}

// What an event says about the state until the list is fetched again.
const HINTS = {
  crashed: { state: "backing_off", pid: null },
  restarting: { state: "backing_off", pid: null },
  failed: { state: "failed", pid: null },
  disabled: { state: "disabled", enabled: false, pid: null },
  enabled: { state: "starting", enabled: true },
  // Running again: an earlier error is history (the server clears it too).
  started: { state: "running", last_error: null },
  restarted: { state: "running", last_error: null },
  unhealthy: { state: "unhealthy" },
  recovered: { state: "running" },
  out_of_resources: { state: "out_of_resources", pid: null },
  upgrading: { state: "upgrading" },
  upgraded: { state: "running" },
  removed: { state: "missing", pid: null },
};

function applyHint(event) {
  const hint = HINTS[event.kind];
  const current = getPlugin(event.plugin_id);
  if (!hint || !current) return;
  const next = { ...current, ...hint };
  if (event.kind === "crashed" || event.kind === "failed") {
    if (event.exit) next.last_exit = event.exit;
    if (event.reason) next.last_error = event.reason;
  }
  if (event.kind === "upgrade_failed" && event.reason) next.upgrade_error = event.reason;
  update(next);
}

let source = null;
let connectionListener = () => {};

/** Calls `fn(state)` with "connecting", "live" or "offline" as the event stream changes. */
export function onConnection(fn) {
  connectionListener = fn;
}

/** Opens the event stream; each event updates the list at once and then fetches it again. */
export function connectEvents() {
  if (source) return;
  connectionListener("connecting");
  source = new EventSource("/api/events");
  source.addEventListener("open", () => {
    connectionListener("live");
    refresh(); // events may have been missed while the stream was down
  });
  source.addEventListener("plugin", (message) => {
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      return;
    }
    applyHint(event);
    for (const fn of [...eventListeners]) {
      try {
        fn(event);
      } catch (err) {
        console.error("a plugin event listener failed", err);
      }
    }
    refresh();
  });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      // The browser gave up (e.g. a 401 or a 404): find out why, then try again later.
      source = null;
      connectionListener("offline");
      api.session().then(
        (s) => {
          if (s && s.authenticated === false) location.assign("/login");
        },
        () => {},
      );
      setTimeout(connectEvents, 5000);
    } else {
      connectionListener("connecting"); // the browser reconnects on its own
    }
  });
}
