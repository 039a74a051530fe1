// The plugin view at #/plugin/<id>: imports the plugin's bundle, calls mount(container, api),
// calls unmount(container) on the way out, and shows an error card saying what went wrong
// (with the plugin's recent logs) instead of a blank page.

import { setEnabled } from "./actions.js";
import { api as server } from "./api.js";
import { h, setAttr, setText, pluginIcon, iconText } from "./dom.js";
import { countdown, exitText, health, pluginName, stateLabel } from "./format.js";
import { icon } from "./icons.js";
import { logRows, openLogs } from "./logs-modal.js";
import { getPlugin, onPluginEvent, refresh, status, subscribe } from "./store.js";
import { showToast } from "./toast.js";

const serves = (p) => p && p.enabled && !p.load_error && (p.state === "running" || p.state === "unhealthy");

/** The route prefix a plugin's `api.fetch` calls go to: `/plugins/<route>/`. */
export function routeBase(plugin) {
  const route = String(plugin?.metadata?.route ?? `/${plugin?.id ?? ""}`).replace(/^\/*/, "/").replace(/\/+$/, "");
  return `/plugins${route}/`;
}

/** The object a bundle's `mount` receives. */
export function pluginApi(plugin) {
  const base = routeBase(plugin);
  return Object.freeze({
    pluginId: plugin.id,
    route: base,
    fetch(subpath = "", init = {}) {
      const rest = String(subpath ?? "").replace(/^\/+/, "");
      return window.fetch(base + rest, { credentials: "same-origin", ...init });
    },
    navigate(hashPath) {
      const path = String(hashPath ?? "").replace(/^#?\/?/, "");
      location.hash = `#/${path}`;
    },
    showToast(message, kind = "info") {
      showToast(message, kind);
    },
  });
}

/** Shows plugin `id`'s view in `main`; returns the view (`destroy()` unmounts the bundle). */
export function mountPluginView(main, id) {
  const stateDot = h("span", { class: "dot" });
  const stateText = h("span", { class: "state-label" });
  const title = h("h1", {}, id);
  const meta = h("div", { class: "card-meta" });
  const icn = h("span", { class: "plugin-icon plugin-icon-lg", "aria-hidden": "true" }, "·");
  const logsBtn = h("button", { class: "btn btn-sm", type: "button", "data-action": "view-logs" }, icon("logs", 15), "Logs");
  const reloadBtn = h("button", { class: "btn btn-sm", type: "button", "data-action": "reload", title: "Load the page again" }, icon("refresh", 15), "Reload");
  const header = h(
    "header",
    { class: "page-header plugin-header" },
    h("div", { class: "plugin-heading" }, icn, h("div", {}, title, meta)),
    h("div", { class: "header-side" }, h("span", { class: "status-line", id: "plugin-status" }, stateDot, stateText), logsBtn, reloadBtn),
  );
  const notice = h("div", { id: "plugin-notice", class: "page-loading", hidden: true });
  const errorSlot = h("div", { id: "plugin-error" });
  const container = h("div", { id: "plugin-container", class: "plugin-container", dataset: { pluginId: id }, hidden: true });
  const page = h("section", { id: "plugin-view", class: "page plugin-page", dataset: { pluginId: id, status: "waiting" } }, header, notice, errorSlot, container);
  main.replaceChildren(page);

  let phase = "idle"; // idle | loading | mounted | error | destroyed
  let mod = null; // the mounted bundle
  let sticky = false; // an error that stays until Retry, even when the plugin recovers
  let reason = null; // the error card's reason
  let attempt = 0; // bumps the bundle URL on Retry: browsers remember failed imports
  let token = 0;

  const setPhase = (next, shown) => {
    phase = next;
    page.dataset.status = shown ?? next;
  };

  function updateHeader(plugin) {
    if (!plugin) return;
    const m = plugin.metadata ?? {};
    setText(title, pluginName(plugin));
    setText(icn, iconText(plugin));
    setText(meta, [m.version ? `v${m.version}` : null, routeBase(plugin), m.author].filter(Boolean).join(" · "));
    setAttr(stateDot, "data-health", health(plugin));
    setText(stateText, stateLabel(plugin));
    reloadBtn.hidden = !serves(plugin);
    document.title = `${pluginName(plugin)} · Toru`;
  }

  function showNotice(text) {
    notice.replaceChildren(h("span", { class: "spinner" }), text);
    notice.hidden = false;
    errorSlot.replaceChildren();
    reason = null;
  }

  async function decide() {
    if (phase === "destroyed") return;
    const plugin = getPlugin(id);
    updateHeader(plugin);
    if (!status().loaded || phase === "loading") return;
    if (phase === "mounted") {
      if (!serves(plugin)) {
        await unmountBundle();
        sticky = Boolean(plugin?.enabled); // a crash stays on screen; a disable follows the state
        showError(stateReason(plugin), plugin);
      }
      return;
    }
    if (sticky && reason) {
      updateErrorNote(plugin);
      return;
    }
    if (!plugin) return showError("unknown", null);
    if (serves(plugin) && plugin.metadata?.frontend === false) return showError("no-frontend", plugin);
    if (serves(plugin)) return load(plugin);
    if (plugin.enabled && plugin.state === "starting") {
      setPhase("idle", "starting");
      return showNotice(`Starting ${pluginName(plugin)}…`);
    }
    showError(stateReason(plugin), plugin);
  }

  function stateReason(plugin) {
    if (!plugin) return "unknown";
    if (plugin.load_error) return "load-failed";
    if (!plugin.enabled) return "disabled";
    if (plugin.state === "backing_off") return "crashed";
    if (plugin.state === "failed") return "failed";
    return "down";
  }

  async function load(plugin) {
    const my = ++token;
    setPhase("loading");
    showNotice(`Loading ${pluginName(plugin)}…`);
    let url = server.bundleUrl(id, plugin.started_at_ms ?? 0);
    if (attempt) url += `&attempt=${attempt}`;
    let module;
    try {
      module = await import(url);
    } catch (err) {
      if (my !== token) return;
      const detail = await diagnose(url, err);
      sticky = true;
      return showError("bundle-load", getPlugin(id) ?? plugin, detail);
    }
    if (my !== token) return;
    if (typeof module.mount !== "function") {
      const exports = Object.keys(module);
      sticky = true;
      return showError("no-mount", plugin, exports.length ? `It exports: ${exports.join(", ")}.` : "It exports nothing.");
    }
    notice.hidden = true;
    errorSlot.replaceChildren();
    reason = null;
    container.replaceChildren();
    container.hidden = false;
    mod = module;
    setPhase("loading");
    try {
      await module.mount(container, pluginApi(plugin));
    } catch (err) {
      if (my !== token) return;
      mod = null;
      try {
        await module.unmount?.(container);
      } catch {
        // already failing: the card reports mount's error
      }
      container.replaceChildren();
      container.hidden = true;
      sticky = true;
      return showError("mount-threw", plugin, errorText(err));
    }
    if (my !== token) return;
    setPhase("mounted");
    decide(); // the plugin may have gone down while mounting
  }

  async function unmountBundle() {
    const module = mod;
    mod = null;
    token++;
    if (module && typeof module.unmount === "function") {
      try {
        await module.unmount(container);
      } catch (err) {
        console.error(`${id}: unmount failed`, err);
        showToast(`${id}'s page failed while closing: ${err?.message ?? err}`, "warning");
      }
    }
    container.replaceChildren();
    container.hidden = true;
    if (phase !== "destroyed") setPhase("idle");
  }

  function showError(why, plugin, detail = null) {
    setPhase("error", "error");
    notice.hidden = true;
    container.hidden = true;
    if (reason === why && errorSlot.firstElementChild) {
      updateErrorNote(plugin);
      return;
    }
    reason = why;
    const card = errorCard(why, id, plugin, detail, {
      retry: () => retry(),
      enable: async (button) => {
        button.disabled = true;
        const current = getPlugin(id) ?? plugin;
        sticky = false;
        reason = null;
        await setEnabled(current, true);
        if (button.isConnected) button.disabled = false;
        decide();
      },
    });
    errorSlot.replaceChildren(card);
    updateErrorNote(plugin);
    loadLogs(card);
  }

  function updateErrorNote(plugin) {
    const note = errorSlot.querySelector(".error-note");
    if (!note) return;
    let text = "";
    if (sticky && serves(plugin) && reason !== "no-frontend") text = `${pluginName(plugin)} is running again: Retry loads its page.`;
    else if (plugin?.state === "backing_off" && plugin.next_attempt_ms) {
      const wait = plugin.next_attempt_ms - Date.now();
      text = wait > 0 ? `Toru starts it again in ${countdown(wait)}.` : "Toru is starting it again.";
    } else if (plugin?.state === "starting") text = "Toru is starting it again.";
    setText(note, text);
    note.hidden = !text;
    setAttr(errorSlot.querySelector(".error-card"), "data-state", plugin?.state ?? null);
  }

  let logsSeq = 0;
  async function loadLogs(card) {
    const list = card.querySelector(".error-logs");
    if (!list) return;
    const seq = ++logsSeq;
    list.dataset.loading = "true";
    try {
      const pageData = await server.logs(id, { pageSize: 20 });
      if (seq !== logsSeq) return;
      const rows = logRows(pageData.entries ?? []);
      list.replaceChildren(...(rows.length ? rows : [h("p", { class: "empty" }, "No log entries.")]));
    } catch (err) {
      if (seq !== logsSeq) return;
      list.replaceChildren(h("p", { class: "form-error" }, `Could not read the logs: ${err.message}`));
    } finally {
      if (seq === logsSeq) list.dataset.loading = "false";
    }
  }

  async function retry() {
    sticky = false;
    reason = null;
    attempt += 1;
    errorSlot.replaceChildren();
    setPhase("idle");
    await refresh();
    decide();
  }

  logsBtn.addEventListener("click", () => {
    const plugin = getPlugin(id);
    if (plugin) openLogs(plugin);
  });
  reloadBtn.addEventListener("click", async () => {
    await unmountBundle();
    retry();
  });

  const unsubscribe = subscribe(() => decide());
  const unlisten = onPluginEvent((event) => {
    if (event.plugin_id !== id) return;
    const card = errorSlot.querySelector(".error-card");
    if (card) loadLogs(card); // a crash's last lines land in the log
  });
  const ticker = setInterval(() => {
    if (reason) updateErrorNote(getPlugin(id));
  }, 1000);
  decide();

  return {
    async destroy() {
      unsubscribe();
      unlisten();
      clearInterval(ticker);
      await unmountBundle();
      setPhase("destroyed");
      document.title = "Toru";
    },
  };
}

/** What went wrong with a failed import, from the bundle's HTTP answer or the parse error. */
async function diagnose(url, err) {
  try {
    const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) {
      let message = "";
      try {
        message = (await response.json())?.error?.message ?? "";
      } catch {
        // not JSON
      }
      return `The server answered ${response.status}${message ? `: ${message}` : "."}`;
    }
  } catch {
    return "The server cannot be reached.";
  }
  return errorText(err);
}

function errorText(err) {
  if (err instanceof Error) {
    const stack = String(err.stack ?? "");
    return stack.includes(err.message) ? stack.split("\n").slice(0, 6).join("\n") : `${err.name}: ${err.message}`;
  }
  return String(err);
}

function errorCard(reason, id, plugin, detail, { retry, enable }) {
  const name = plugin ? pluginName(plugin) : id;
  const exit = exitText(plugin?.last_exit);
  const copy = {
    unknown: [`There is no plugin “${id}”`, "It is not installed, or it was removed from the plugins folder."],
    "load-failed": [`${name} could not be loaded`, "Toru could not read this plugin's metadata, so it cannot start it."],
    disabled: [`${name} is disabled`, "Its process is stopped and its routes answer 404. Enable it to use its page."],
    crashed: [
      `${name} crashed`,
      /^plugin exceeded its .* limit/.test(plugin?.last_error ?? "")
        ? "It went over one of its limits and was stopped. Raise the limit in its details, or find out why it needs more."
        : `Its process ended unexpectedly${exit ? `: ${exit}` : ""}.`,
    ],
    failed: [`${name} failed`, "Toru stopped restarting it. Read its logs, fix the cause, then start it again."],
    down: [`${name} is not running`, `Its state is “${stateLabel(plugin)}”, so its page cannot be shown.`],
    "no-frontend": [`${name} has no page`, `It serves HTTP routes under ${plugin ? routeBase(plugin) : "its route"} only.`],
    "bundle-load": [`${name}'s page could not be loaded`, "Importing its bundle failed."],
    "no-mount": [`${name}'s bundle has no mount function`, "The module loaded, but a bundle must export mount(container, api)."],
    "mount-threw": [`${name}'s page failed to start`, "Its bundle's mount(container, api) threw an error."],
  }[reason] ?? [`${name} cannot be shown`, ""];

  const problem = detail ?? (reason === "load-failed" ? plugin?.load_error : reason === "failed" ? (plugin?.reason ?? plugin?.last_error) : reason === "crashed" || reason === "down" ? plugin?.last_error : null);
  const actions = [];
  if (reason === "disabled" || reason === "failed") {
    const button = h("button", { class: "btn btn-primary", type: "button", "data-action": "enable" }, icon("power", 15), reason === "disabled" ? "Enable" : "Start again");
    button.addEventListener("click", () => enable(button));
    actions.push(button);
  } else if (!["unknown", "load-failed", "no-frontend"].includes(reason)) {
    const button = h("button", { class: "btn btn-primary", type: "button", "data-action": "retry" }, icon("refresh", 15), "Retry");
    button.addEventListener("click", retry);
    actions.push(button);
  }
  if (plugin && !plugin.load_error) {
    const logs = h("button", { class: "btn", type: "button", "data-action": "all-logs" }, icon("logs", 15), "All logs");
    logs.addEventListener("click", () => openLogs(getPlugin(id) ?? plugin));
    actions.push(logs);
  }
  actions.push(h("a", { class: "btn btn-ghost", href: "#/plugins" }, "Plugin Manager"));
  const info = reason === "no-frontend";
  return h(
    "div",
    { class: `error-card${info ? " info" : ""}`, dataset: { reason }, role: info ? null : "alert" },
    h("div", { class: "error-icon" }, icon(info ? "info" : reason === "disabled" ? "power" : "alert", 22)),
    h(
      "div",
      { class: "error-main" },
      h("h2", {}, copy[0]),
      h("p", { class: "error-text" }, copy[1]),
      problem ? h("pre", { class: "error-detail" }, problem) : null,
      h("p", { class: "error-note", hidden: true }),
      h("div", { class: "error-actions" }, actions),
      plugin && !plugin.load_error && !info
        ? [h("h3", { class: "section-title" }, "Recent logs"), h("div", { class: "log-list error-logs", dataset: { loading: "true" } }, h("p", { class: "muted" }, "Loading…"))]
        : null,
    ),
  );
}
