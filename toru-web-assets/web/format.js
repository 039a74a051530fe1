// How states, times and durations read in the UI.

const STATE_LABELS = {
  disabled: "Disabled",
  starting: "Starting",
  running: "Running",
  unhealthy: "Unhealthy",
  backing_off: "Crashed, restarting",
  failed: "Failed",
  stopping: "Stopping",
  upgrading: "Upgrading",
  out_of_resources: "Out of resources, retrying",
  missing: "Missing",
};

/** Every state the server names (`PluginState::NAMES`), for the test that keeps them in step. */
export const STATES = Object.keys(STATE_LABELS);

/** A plugin state's label. */
export function stateLabel(plugin) {
  if (plugin?.load_error) return "Could not load";
  if (plugin?.state === "upgrading" && plugin.to_version) return `Upgrading to v${plugin.to_version}`;
  return STATE_LABELS[plugin?.state] ?? String(plugin?.state ?? "unknown");
}

/**
 * The health dot's colour: green when it serves, amber while it changes or misses pings,
 * red when it is down, off when it is disabled.
 */
export function health(plugin) {
  if (!plugin || plugin.load_error) return "red";
  switch (plugin.state) {
    case "running":
    case "upgrading":
      return "green";
    case "starting":
    case "stopping":
    case "unhealthy":
    case "out_of_resources":
      return "amber";
    case "disabled":
    case "missing":
      return "off";
    default:
      return "red";
  }
}

/** A duration in milliseconds as "3 h 12 min", "4 min 05 s", "12 s". */
export function duration(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "–";
  const s = Math.max(0, Math.floor(ms / 1000));
  const d = Math.floor(s / 86400);
  const hrs = Math.floor((s % 86400) / 3600);
  const min = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  if (d > 0) return `${d} d ${hrs} h`;
  if (hrs > 0) return `${hrs} h ${min} min`;
  if (min > 0) return `${min} min ${String(sec).padStart(2, "0")} s`;
  return `${sec} s`;
}

/** Time left, rounded up to whole seconds ("in 1 s" until it is due). */
export function countdown(ms) {
  return duration(Math.ceil(Math.max(0, ms) / 1000) * 1000);
}

/** "12 s ago", "3 min ago", "2 h ago", or the date for older times. */
export function ago(timeMs, now = Date.now()) {
  const diff = now - timeMs;
  if (!Number.isFinite(diff)) return "";
  if (diff < 5000) return "just now";
  if (diff < 60_000) return `${Math.floor(diff / 1000)} s ago`;
  if (diff < 3_600_000) return `${Math.floor(diff / 60_000)} min ago`;
  if (diff < 86_400_000) return `${Math.floor(diff / 3_600_000)} h ago`;
  return new Date(timeMs).toLocaleDateString();
}

const pad = (n, w = 2) => String(n).padStart(w, "0");

/** A time as local "HH:MM:SS.mmm", with the date in front when it is not today. */
export function clock(time) {
  const date = new Date(time);
  if (Number.isNaN(date.getTime())) return String(time ?? "");
  const hms = `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
  const today = new Date();
  if (date.toDateString() === today.toDateString()) return hms;
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${hms}`;
}

/** A full local date and time, for tooltips. */
export function fullTime(time) {
  const date = new Date(time);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleString();
}

/** How a process ended: "exit code 1", "signal 9 (SIGKILL)". */
export function exitText(exit) {
  if (!exit) return null;
  if (exit.code !== undefined) return `exit code ${exit.code}`;
  if (exit.signal !== undefined) {
    const names = { 1: "SIGHUP", 2: "SIGINT", 6: "SIGABRT", 9: "SIGKILL", 11: "SIGSEGV", 15: "SIGTERM" };
    const name = names[exit.signal];
    return name ? `signal ${exit.signal} (${name})` : `signal ${exit.signal}`;
  }
  return JSON.stringify(exit);
}

/** A plugin's display name. */
export function pluginName(plugin) {
  return plugin?.metadata?.name || plugin?.id || "Unknown plugin";
}

const EVENT_LABELS = {
  discovered: "Discovered",
  removed: "Removed",
  load_failed: "Could not load",
  enabled: "Enabled",
  disabled: "Disabled",
  started: "Started",
  stopped: "Stopped",
  crashed: "Crashed",
  unhealthy: "Unhealthy",
  restarting: "Restarting",
  restarted: "Restarted",
  failed: "Failed",
  recovered: "Recovered",
  out_of_resources: "Out of resources",
  upgrading: "Upgrading",
  upgraded: "Upgraded",
  upgrade_failed: "Upgrade failed",
  settings_changed: "Settings changed",
};

/** Every event kind the server sends (`EventKind::ALL`), for the test that keeps them in step. */
export const EVENT_KINDS = Object.keys(EVENT_LABELS);

/** An event kind's label. */
export function eventLabel(kind) {
  return EVENT_LABELS[kind] ?? kind;
}

/** The tone of an event kind: good, bad, warn or neutral. */
export function eventTone(kind) {
  if (["started", "restarted", "enabled", "recovered", "upgraded"].includes(kind)) return "good";
  if (["crashed", "failed", "load_failed", "upgrade_failed"].includes(kind)) return "bad";
  if (["unhealthy", "restarting", "out_of_resources", "removed"].includes(kind)) return "warn";
  return "neutral";
}
