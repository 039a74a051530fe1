// The Plugin Manager: a card per installed plugin, a search box, toggles, logs and details.

import { rescan, setEnabled } from "./actions.js";
import { openDetails } from "./details.js";
import { h, setAttr, setText, pluginIcon, iconText } from "./dom.js";
import { countdown, duration, exitText, health, pluginName, stateLabel } from "./format.js";
import { icon } from "./icons.js";
import { closeLogs, openLogs } from "./logs-modal.js";
import { getPlugin, getPlugins, status, subscribe } from "./store.js";

/** Shows the Plugin Manager in `main`; returns the view (`destroy()`). */
export function mountManager(main) {
  const search = h("input", {
    id: "plugin-search",
    type: "search",
    placeholder: "Search plugins",
    "aria-label": "Search plugins",
    autocomplete: "off",
  });
  const summary = h("p", { id: "plugin-summary", class: "page-sub" });
  const rescanButton = h(
    "button",
    { id: "rescan", class: "btn btn-sm", type: "button", title: "Look for new, replaced and removed plugin files now" },
    icon("refresh", 15),
    "Rescan",
  );
  rescanButton.addEventListener("click", async () => {
    rescanButton.disabled = true;
    rescanButton.dataset.busy = "true";
    try {
      await rescan();
    } finally {
      rescanButton.disabled = false;
      delete rescanButton.dataset.busy;
    }
  });
  const grid = h("div", { id: "plugin-grid", class: "card-grid" });
  const empty = h("div", { id: "plugin-empty", class: "empty-state", hidden: true });
  const layout = h("div", { class: "manager-layout" }, h("div", { class: "manager-main" }, grid, empty));
  const page = h(
    "section",
    { id: "manager", class: "page" },
    h(
      "header",
      { class: "page-header" },
      h("div", {}, h("h1", {}, "Plugins"), summary),
      h("div", { class: "page-tools" }, rescanButton, h("label", { class: "search" }, icon("search", 16), search)),
    ),
    layout,
  );
  main.replaceChildren(page);

  let details = null;
  const showDetails = (id) => {
    if (details?.id === id) return;
    details?.close();
    details = openDetails(layout, id, {
      onToggle: (plugin, enable, button) => toggle(plugin, enable, button),
      onClose: () => {
        details = null;
        layout.classList.remove("with-details");
        markSelected(grid, null);
      },
    });
    layout.classList.add("with-details");
    markSelected(grid, id);
  };

  const toggle = async (plugin, enable, control) => {
    if (control) {
      control.dataset.busy = "true";
      control.disabled = true;
    }
    try {
      await setEnabled(plugin, enable);
    } finally {
      if (control) {
        delete control.dataset.busy;
        control.disabled = Boolean(getPlugin(plugin.id)?.load_error);
      }
      render();
    }
  };

  const render = () => renderCards({ grid, empty, summary, query: search.value, showDetails, toggle });
  search.addEventListener("input", render);
  const unsubscribe = subscribe(render);
  render();
  const ticker = setInterval(render, 1000); // uptimes and restart countdowns

  return {
    destroy() {
      clearInterval(ticker);
      unsubscribe();
      details?.close();
      closeLogs();
    },
  };
}

function markSelected(grid, id) {
  for (const card of grid.children) card.classList.toggle("selected", card.dataset.pluginId === id);
}

function matches(plugin, query) {
  if (!query) return true;
  const m = plugin.metadata ?? {};
  const haystack = [plugin.id, m.name, m.description, m.author, m.route, plugin.load_error].join(" ").toLowerCase();
  return query
    .toLowerCase()
    .split(/\s+/)
    .filter(Boolean)
    .every((word) => haystack.includes(word));
}

function renderCards({ grid, empty, summary, query, showDetails, toggle }) {
  const { loaded, error } = status();
  const all = getPlugins();
  const shown = all.filter((p) => matches(p, query.trim()));
  const enabled = all.filter((p) => p.enabled && p.state !== "missing").length;
  const broken = all.filter((p) => p.load_error).length;
  const missing = all.filter((p) => p.state === "missing").length;
  setText(
    summary,
    loaded
      ? [
          `${all.length - missing} installed`,
          `${enabled} enabled`,
          broken ? `${broken} could not load` : null,
          missing ? `${missing} missing` : null,
        ]
          .filter(Boolean)
          .join(" · ")
      : "Loading…",
  );

  const existing = new Map([...grid.children].map((card) => [card.dataset.pluginId, card]));
  const cards = shown.map((plugin) => {
    const card = existing.get(plugin.id) ?? createCard(plugin, showDetails, toggle);
    existing.delete(plugin.id);
    updateCard(card, plugin);
    return card;
  });
  for (const stale of existing.values()) stale.remove();
  cards.forEach((card, i) => {
    if (grid.children[i] !== card) grid.insertBefore(card, grid.children[i] ?? null);
  });

  empty.hidden = cards.length > 0 || !loaded;
  if (error && all.length === 0) {
    empty.replaceChildren(h("h2", {}, "The plugin list could not be read"), h("p", {}, error.message));
    empty.hidden = false;
  } else if (all.length === 0) {
    empty.replaceChildren(
      h("div", { class: "empty-icon" }, icon("puzzle", 28)),
      h("h2", {}, "No plugins installed"),
      h("p", {}, "Copy plugin executables (", h("code", {}, "*.binary"), ") into the server's plugins folder; they appear here on their own."),
    );
  } else {
    empty.replaceChildren(h("h2", {}, "No plugins match"), h("p", {}, `Nothing matches “${query.trim()}”.`));
  }
}

function createCard(plugin, showDetails, toggle) {
  const id = plugin.id;
  const switchInput = h("input", { type: "checkbox", role: "switch", "data-action": "toggle", "aria-label": `Enable ${pluginName(plugin)}` });
  switchInput.addEventListener("change", () => {
    const current = getPlugin(id);
    if (current) toggle(current, switchInput.checked, switchInput);
  });
  const logs = h("button", { class: "btn btn-sm", type: "button", "data-action": "logs" }, icon("logs", 15), "View logs");
  logs.addEventListener("click", () => {
    const current = getPlugin(id);
    if (current) openLogs(current);
  });
  const titleButton = h("button", { class: "card-title-button", type: "button", "data-action": "details" });
  const card = h(
    "article",
    { class: "plugin-card", dataset: { pluginId: id } },
    h(
      "div",
      { class: "card-head" },
      pluginIcon(plugin),
      h("div", { class: "card-title" }, h("h2", {}, titleButton), h("div", { class: "card-meta" })),
      h("label", { class: "switch", title: "Enabled" }, switchInput, h("span", { class: "switch-track", "aria-hidden": "true" })),
    ),
    h("p", { class: "card-desc" }),
    h("div", { class: "card-problem", hidden: true }),
    h(
      "div",
      { class: "card-foot" },
      h("span", { class: "status-line" }, h("span", { class: "dot" }), h("span", { class: "state-label" }), h("span", { class: "status-extra muted" })),
      h("span", { class: "card-actions" }, logs, h("a", { class: "btn btn-sm", "data-action": "open", href: `#/plugin/${encodeURIComponent(id)}` }, icon("open", 15), "Open")),
    ),
  );
  // A click anywhere on the card but its controls opens the details panel.
  card.addEventListener("click", (e) => {
    if (e.target.closest("input, label.switch, a, button:not([data-action=details])")) return;
    showDetails(id);
  });
  return card;
}

function crashText(plugin) {
  const exit = exitText(plugin.last_exit);
  const wait = plugin.next_attempt_ms ? plugin.next_attempt_ms - Date.now() : 0;
  return `Crashed${exit ? ` with ${exit}` : ""}. ${wait > 0 ? `Restarting in ${countdown(wait)}.` : "Restarting now."}`;
}

function resourcesText(plugin) {
  const wait = plugin.next_attempt_ms ? plugin.next_attempt_ms - Date.now() : 0;
  return `Could not start for lack of resources (${plugin.reason ?? "unknown"}). ${wait > 0 ? `Trying again in ${countdown(wait)}.` : "Trying again now."}`;
}

/** What is wrong with a plugin, in a sentence, or null. */
function problemText(plugin) {
  if (plugin.load_error) return `Could not load: ${plugin.load_error}`;
  switch (plugin.state) {
    case "failed":
      return `Failed: ${plugin.reason ?? plugin.last_error ?? "unknown reason"}`;
    case "backing_off":
      return crashText(plugin);
    case "out_of_resources":
      return resourcesText(plugin);
    case "missing":
      return "Its file was removed from the plugins folder. Its settings and data are kept; put the file back to bring it back.";
  }
  if (plugin.upgrade_error) return `Upgrade failed, the running version serves on: ${plugin.upgrade_error}`;
  return null;
}

function updateCard(card, plugin) {
  const m = plugin.metadata ?? {};
  const failedToLoad = Boolean(plugin.load_error);
  const tone = health(plugin);
  setAttr(card, "data-state", failedToLoad ? "load_failed" : plugin.state);
  setAttr(card, "data-enabled", String(Boolean(plugin.enabled)));
  setAttr(card, "data-health", tone);
  card.classList.toggle("load-failed", failedToLoad);
  setText(card.querySelector(".plugin-icon"), failedToLoad ? "!" : iconText(plugin));
  setText(card.querySelector(".card-title-button"), pluginName(plugin));
  setText(
    card.querySelector(".card-meta"),
    failedToLoad ? String(plugin.file ?? "") : [m.version ? `v${m.version}` : null, m.route, m.author].filter(Boolean).join(" · "),
  );
  const desc = card.querySelector(".card-desc");
  setText(desc, m.description ?? "");
  desc.hidden = !m.description;

  const problem = card.querySelector(".card-problem");
  const text = problemText(plugin);
  setText(problem, text ?? "");
  problem.hidden = !text;
  setAttr(problem, "data-tone", plugin.state === "missing" || (plugin.upgrade_error && plugin.state === "running") ? "warn" : "bad");

  const dot = card.querySelector(".dot");
  setAttr(dot, "data-health", tone);
  setText(card.querySelector(".state-label"), stateLabel(plugin));
  const extra =
    plugin.state === "running" && plugin.started_at_ms
      ? `· up ${duration(Date.now() - plugin.started_at_ms)}`
      : plugin.restarts
        ? `· ${plugin.restarts} restart${plugin.restarts === 1 ? "" : "s"}`
        : "";
  setText(card.querySelector(".status-extra"), extra);

  const input = card.querySelector("input[data-action=toggle]");
  const busy = input.dataset.busy === "true";
  if (!busy) input.checked = Boolean(plugin.enabled);
  input.disabled = failedToLoad || busy;
  setAttr(input, "aria-label", `${plugin.enabled ? "Disable" : "Enable"} ${pluginName(plugin)}`);
  card.querySelector("[data-action=logs]").hidden = failedToLoad;
  card.querySelector("[data-action=open]").hidden = !plugin.enabled || failedToLoad || plugin.state === "missing";
}
