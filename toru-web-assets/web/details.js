// The details panel: everything known about one plugin, and its recent lifecycle events.

import { api } from "./api.js";
import { h, setText, pluginIcon } from "./dom.js";
import { ago, countdown, duration, eventLabel, eventTone, exitText, fullTime, health, pluginName, stateLabel } from "./format.js";
import { icon } from "./icons.js";
import { licenseSection, licenseState, needsLicenseSection } from "./license.js";
import { limitsSection } from "./limits.js";
import { settingsSection } from "./settings.js";
import { openLogs } from "./logs-modal.js";
import { getPlugin, onPluginEvent, subscribe } from "./store.js";

/**
 * Opens a details panel for plugin `id` inside `host`. `onToggle(plugin, enable)` switches it.
 * Returns `{ id, close() }`; `onClose` runs when the panel closes itself.
 */
export function openDetails(host, id, { onToggle, onClose }) {
  const body = h("div", { class: "details-body" });
  const facts = h("div", { class: "details-facts" });
  // Between `body` and `facts`, which are rebuilt on every change: these are not, so that what
  // is being typed survives those.
  const license = licenseSection(id);
  const settings = settingsSection(id);
  const limits = limitsSection(id);
  const events = h("ol", { id: "details-events", class: "event-list", dataset: { loading: "true" } });
  const closeBtn = h("button", { id: "details-close", class: "icon-btn", type: "button", "aria-label": "Close details" }, icon("close"));
  const panel = h(
    "aside",
    { id: "details-panel", class: "details-panel", dataset: { pluginId: id }, "aria-label": "Plugin details", tabindex: "-1" },
    h("div", { class: "details-scroll" }, body, license.node, settings.node, facts, limits.node, h("h3", { class: "section-title" }, "Recent events"), events),
  );
  let closed = false;

  const render = () => {
    const plugin = getPlugin(id);
    license.render(plugin);
    settings.render(plugin);
    limits.render(plugin);
    if (!plugin) {
      body.replaceChildren(h("div", { class: "details-head" }, h("h2", {}, id), closeBtn), h("p", { class: "muted" }, "This plugin is no longer installed."));
      facts.replaceChildren();
      return;
    }
    const content = detailsContent(plugin, closeBtn, onToggle);
    body.replaceChildren(...content.head.filter(Boolean));
    facts.replaceChildren(content.facts);
  };

  let eventsSeq = 0;
  const loadEvents = async () => {
    const seq = ++eventsSeq;
    try {
      const list = await api.events(id, { pageSize: 20 });
      if (closed || seq !== eventsSeq) return;
      events.replaceChildren(...(list.length ? list.map(eventItem) : [h("li", { class: "empty" }, "No events yet.")]));
    } catch (err) {
      if (closed || seq !== eventsSeq) return;
      events.replaceChildren(h("li", { class: "form-error" }, `Could not read the events: ${err.message}`));
    } finally {
      if (seq === eventsSeq) events.dataset.loading = "false";
    }
  };

  const unsubscribe = subscribe(render);
  const unlisten = onPluginEvent((event) => {
    if (event.plugin_id === id) loadEvents();
  });
  // Uptime and "x s ago" move on their own.
  const ticker = setInterval(() => {
    const plugin = getPlugin(id);
    const cell = panel.querySelector("[data-field=uptime]");
    if (plugin && cell) setText(cell, uptimeText(plugin));
    const next = panel.querySelector("[data-field=next-attempt]");
    if (plugin?.next_attempt_ms && next) {
      const wait = plugin.next_attempt_ms - Date.now();
      setText(next, wait > 0 ? `in ${countdown(wait)}` : "now");
    }
  }, 1000);

  const close = () => {
    if (closed) return;
    closed = true;
    unsubscribe();
    unlisten();
    clearInterval(ticker);
    panel.remove();
    onClose?.();
  };
  closeBtn.addEventListener("click", close);
  panel.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && !document.getElementById("logs-modal")) close();
  });

  render();
  loadEvents();
  host.append(panel);
  panel.focus({ preventScroll: true });
  return { id, close };
}

function uptimeText(plugin) {
  if (!["running", "unhealthy", "upgrading"].includes(plugin.state)) return "–";
  if (plugin.started_at_ms) return duration(Date.now() - plugin.started_at_ms);
  return duration(plugin.uptime_ms);
}

/** The panel's head (title, actions, errors) and its facts (the grid), built afresh. */
function detailsContent(plugin, closeBtn, onToggle) {
  const m = plugin.metadata ?? {};
  const route = m.route ? `/plugins${m.route.startsWith("/") ? "" : "/"}${m.route.replace(/\/+$/, "")}/` : null;
  const toggle = h(
    "button",
    { class: `btn btn-sm ${plugin.enabled ? "" : "btn-primary"}`, type: "button", "data-action": "details-toggle", disabled: Boolean(plugin.load_error) },
    icon("power", 15),
    plugin.enabled ? "Disable" : "Enable",
  );
  toggle.addEventListener("click", () => onToggle(plugin, !plugin.enabled, toggle));
  const logs = h("button", { class: "btn btn-sm", type: "button", "data-action": "details-logs", disabled: Boolean(plugin.load_error) }, icon("logs", 15), "View logs");
  logs.addEventListener("click", () => openLogs(plugin));
  const openPage =
    plugin.enabled && !plugin.load_error && plugin.state !== "missing"
      ? h("a", { class: "btn btn-sm", href: `#/plugin/${encodeURIComponent(plugin.id)}` }, icon("open", 15), "Open page")
      : null;

  const rows = [
    ["ID", plugin.id, "id"],
    ["Author", m.author || "–", "author"],
    ["Version", m.version || "–", "version"],
    ["Route", route ?? "–", "route", true],
    ["File", plugin.file, "file", true],
    ["File SHA-256", plugin.file_sha256 ? `${plugin.file_sha256.slice(0, 16)}…` : "–", "file-sha256", true],
    ["State", stateLabel(plugin), "state"],
    ["Process", plugin.pid ? `pid ${plugin.pid}` : "–", "pid"],
    ["Uptime", uptimeText(plugin), "uptime"],
    ["Restarts", String(plugin.restarts ?? 0), "restarts"],
    ["Crashes in a row", String(plugin.consecutive_crashes ?? 0), "consecutive-crashes"],
    ["Last exit", exitText(plugin.last_exit) ?? "–", "last-exit"],
    ["Protocol", plugin.protocol_version ? `v${plugin.protocol_version}` : "–", "protocol"],
    // What the plugin's own pages may do beyond the default sandbox (docs/frontend.md).
    ["Page sandbox", m.sandbox?.length ? `also ${m.sandbox.join(" ")}` : "default", "sandbox"],
  ];
  if (plugin.draining) rows.push(["Old versions draining", String(plugin.draining), "draining"]);
  if ((plugin.state === "backing_off" || plugin.state === "out_of_resources") && plugin.next_attempt_ms) {
    const wait = plugin.next_attempt_ms - Date.now();
    rows.splice(6, 0, ["Next start", wait > 0 ? `in ${countdown(wait)}` : "now", "next-attempt"]);
  }
  // A refused license key is shown, prominently, in the License section instead; once a key is
  // accepted, an earlier refusal is history (the events list keeps it).
  const license = needsLicenseSection(plugin) ? licenseState(plugin) : null;
  const pastRefusal = license?.key === "licensed" && /licen[cs]e/i.test(plugin.last_error ?? "");
  const problem = license?.reason || pastRefusal ? null : (plugin.load_error ?? plugin.reason ?? plugin.last_error);
  const head = [
    h(
      "div",
      { class: "details-head" },
      pluginIcon(plugin, "plugin-icon-lg"),
      h(
        "div",
        { class: "details-title" },
        h("h2", {}, pluginName(plugin)),
        h(
          "div",
          { class: "status-line" },
          h("span", { class: "dot", dataset: { health: health(plugin) } }),
          h("span", { "data-field": "state-label" }, stateLabel(plugin)),
          m.version ? h("span", { class: "badge" }, `v${m.version}`) : null,
        ),
      ),
      closeBtn,
    ),
    m.description ? h("p", { class: "details-desc" }, m.description) : null,
    h("div", { class: "details-actions" }, toggle, logs, openPage),
    plugin.state === "missing"
      ? h(
          "div",
          { class: "callout callout-warn", "data-field": "missing" },
          h("strong", {}, "File missing"),
          h("p", {}, "Its file was removed from the plugins folder. Its settings and data are kept; put the file back to bring it back."),
        )
      : null,
    plugin.upgrade_error
      ? h(
          "div",
          { class: "callout callout-bad", "data-field": "upgrade-error" },
          h("strong", {}, "Upgrade failed; the running version serves on"),
          h("pre", {}, plugin.upgrade_error),
        )
      : null,
    problem
      ? h(
          "div",
          { class: "callout callout-bad", "data-field": plugin.load_error ? "load-error" : "last-error" },
          h("strong", {}, plugin.load_error ? "Could not load" : "Last error"),
          h("pre", {}, problem),
        )
      : null,
  ];
  const facts = h(
    "dl",
    { class: "details-grid" },
    rows.map(([label, value, field, mono]) => [
      h("dt", {}, label),
      h("dd", { "data-field": field, class: mono ? "mono" : null }, value),
    ]),
  );
  return { head, facts };
}

function eventItem(event) {
  const extra = [event.reason, exitText(event.exit), event.delay_ms != null ? `next start in ${duration(event.delay_ms)}` : null].filter(Boolean);
  const item = h(
    "li",
    { class: "event-item", dataset: { kind: event.kind, tone: eventTone(event.kind) } },
    h("span", { class: "event-dot" }),
    h(
      "div",
      { class: "event-body" },
      h(
        "div",
        { class: "event-line" },
        h("strong", {}, eventLabel(event.kind)),
        h("time", { class: "muted", datetime: new Date(event.time_ms).toISOString(), title: fullTime(event.time_ms) }, ago(event.time_ms)),
      ),
      extra.length ? h("div", { class: "event-extra" }, extra.join(" · ")) : null,
      event.stderr_tail?.length
        ? h("details", { class: "event-tail" }, h("summary", {}, `Last ${event.stderr_tail.length} stderr lines`), h("pre", {}, event.stderr_tail.join("\n")))
        : null,
    ),
  );
  return item;
}

