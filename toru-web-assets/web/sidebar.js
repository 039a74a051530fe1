// The sidebar: system entries, one entry per enabled plugin with a health dot, and on a narrow
// screen the drawer that holds them.

import { h, setAttr, setText, pluginIcon, iconText } from "./dom.js";
import { health, stateLabel, pluginName } from "./format.js";
import { getPlugins, subscribe, onConnection } from "./store.js";

const CONNECTION_LABELS = { connecting: "Connecting…", live: "Live", offline: "Offline" };
const NARROW = "(max-width: 860px)";

/** Wires the sidebar to the plugin list and the menu button. */
export function initSidebar() {
  const section = document.getElementById("sidebar-plugins");
  const list = document.getElementById("sidebar-plugin-list");
  const render = () => renderPlugins(section, list);
  subscribe(render);
  render();

  const connection = document.getElementById("connection");
  onConnection((state) => {
    connection.dataset.state = state;
    setAttr(connection.querySelector(".dot"), "data-health", state === "live" ? "green" : state === "offline" ? "red" : "amber");
    setText(connection.querySelector(".connection-label"), CONNECTION_LABELS[state] ?? state);
  });

  const toggle = document.getElementById("sidebar-toggle");
  const backdrop = document.getElementById("backdrop");
  toggle.addEventListener("click", () => setOpen(!document.body.classList.contains("sidebar-open")));
  backdrop.addEventListener("click", () => setOpen(false));
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && document.body.classList.contains("sidebar-open")) setOpen(false);
  });
}

/** Opens or closes the drawer (narrow screens only; wide screens always show the sidebar). */
export function setOpen(open) {
  const isOpen = open && matchMedia(NARROW).matches;
  document.body.classList.toggle("sidebar-open", isOpen);
  document.getElementById("backdrop").hidden = !isOpen;
  document.getElementById("sidebar-toggle").setAttribute("aria-expanded", String(isOpen));
}

/** Marks the entry for the current route as the active one. */
export function setActive(route) {
  for (const link of document.querySelectorAll("#sidebar .nav-item")) {
    const active =
      (route.name === "plugins" && link.dataset.nav === "plugins") ||
      (route.name === "plugin" && link.dataset.pluginId === route.id);
    link.classList.toggle("active", active);
    setAttr(link, "aria-current", active ? "page" : null);
  }
}

function renderPlugins(section, list) {
  const enabled = getPlugins().filter((p) => p.enabled && !p.load_error && p.state !== "missing");
  section.hidden = enabled.length === 0;
  const existing = new Map([...list.children].map((node) => [node.dataset.pluginId, node]));
  const ordered = enabled.map((plugin) => {
    const node = existing.get(plugin.id) ?? createEntry(plugin);
    existing.delete(plugin.id);
    updateEntry(node, plugin);
    return node;
  });
  for (const stale of existing.values()) stale.remove();
  ordered.forEach((node, i) => {
    if (list.children[i] !== node) list.insertBefore(node, list.children[i] ?? null);
  });
  const hash = location.hash;
  for (const node of ordered) {
    node.classList.toggle("active", hash === `#/plugin/${encodeURIComponent(node.dataset.pluginId)}`);
  }
}

function createEntry(plugin) {
  return h(
    "a",
    { class: "nav-item plugin-link", href: `#/plugin/${encodeURIComponent(plugin.id)}`, dataset: { pluginId: plugin.id } },
    pluginIcon(plugin, "nav-icon"),
    h("span", { class: "nav-label" }),
    h("span", { class: "dot", role: "img" }),
  );
}

function updateEntry(node, plugin) {
  const tone = health(plugin);
  const label = stateLabel(plugin);
  setText(node.querySelector(".nav-icon"), iconText(plugin));
  setText(node.querySelector(".nav-label"), pluginName(plugin));
  const dot = node.querySelector(".dot");
  setAttr(dot, "data-health", tone);
  setAttr(dot, "aria-label", label);
  setAttr(node, "data-health", tone);
  setAttr(node, "title", `${pluginName(plugin)}: ${label}`);
}
