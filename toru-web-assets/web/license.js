// The details panel's License section: whether the plugin has a key and what it made of it, and a
// field to paste a new key (PUT /api/plugins/:id/license, the shorthand for its `license_key`
// setting). The field is built once per panel and
// never re-rendered, so what the admin types survives the live updates around it.

import { api } from "./api.js";
import { h, setAttr, setText } from "./dom.js";
import { pluginName } from "./format.js";
import { icon } from "./icons.js";
import { refresh, update } from "./store.js";
import { showToast } from "./toast.js";

/**
 * Whether the details panel shows a License section for `plugin`: it needs a license, takes a
 * `license_key` setting, or has a key stored. The key is one of its settings underneath; this
 * section is its form (the Settings section leaves it out).
 */
export function needsLicenseSection(plugin) {
  const takesKey = plugin?.settings?.some((s) => s.name === "license_key");
  return Boolean(plugin && !plugin.load_error && (plugin.metadata?.license_required || takesKey || plugin.license_key_set));
}

/**
 * What the plugin's license looks like now: `tone` (good, bad, warn, off), a short `label`, a
 * sentence of `detail`, and the `reason` a refused key gave, if any.
 */
export function licenseState(plugin) {
  const failure = plugin.state === "failed" ? plugin.reason ?? plugin.last_error ?? "" : "";
  // A failure that is not about the license is shown with the plugin's other errors.
  const reason = /licen[cs]e/i.test(failure) ? failure : null;
  const otherFailure = failure && !reason ? "The plugin failed for another reason (see Last error above)." : null;
  if (!plugin.license_key_set) {
    if (reason) return { key: "missing", tone: "bad", label: "No license key", detail: "The plugin will not start without one. Paste the key from its vendor below.", reason };
    return { key: "missing", tone: "off", label: "No license key", detail: otherFailure ?? "Paste the key from the plugin's vendor below." };
  }
  switch (plugin.state) {
    case "running":
    case "unhealthy":
      return { key: "licensed", tone: "good", label: "Licensed", detail: "A key is stored and the plugin accepted it." };
    case "failed":
      if (!reason) return { key: "stored", tone: "off", label: "Key stored", detail: otherFailure };
      return { key: "refused", tone: "bad", label: "Key refused", detail: "A key is stored, but the plugin refused it:", reason };
    case "disabled":
      return { key: "stored", tone: "off", label: "Key stored", detail: "The plugin is disabled; it checks the key when it starts." };
    default:
      return { key: "checking", tone: "warn", label: "Key stored", detail: "The plugin is starting and checking the key…" };
  }
}

/**
 * The License section for plugin `id`. Returns `{ node, render(plugin) }`: `render` updates the
 * state shown (and hides the section for plugins that need no license) without touching the
 * key being typed.
 */
export function licenseSection(id) {
  const status = h("div", { class: "license-status", "data-field": "license-state" });
  const fieldId = `license-key-${id.replace(/[^A-Za-z0-9_-]/g, "_")}`;
  const input = h("textarea", {
    id: fieldId,
    class: "license-input",
    "data-field": "license-key",
    rows: "4",
    spellcheck: "false",
    autocomplete: "off",
    autocapitalize: "off",
    placeholder: "toru1.ed25519.…",
  });
  const save = h("button", { class: "btn btn-sm btn-primary", type: "button", "data-action": "license-save", disabled: true }, icon("check", 15), "Save key");
  const remove = h("button", { class: "btn btn-sm", type: "button", "data-action": "license-remove" }, icon("close", 15), "Remove key");
  const instance = h("code", { "data-field": "instance-id" }, "…");
  const node = h(
    "section",
    { class: "license", "data-section": "license", "aria-label": "License", hidden: true },
    h("h3", { class: "section-title" }, "License"),
    status,
    h("label", { class: "field-label", for: fieldId }, "Paste a license key"),
    input,
    h("p", { class: "license-hint muted" }, "Keys are issued for this Toru instance: ", instance),
    h("div", { class: "license-actions" }, save, remove),
  );

  let plugin = null;
  let busy = false;
  let shownKey = null;

  const syncButtons = () => {
    save.disabled = busy || !input.value.trim();
    remove.disabled = busy;
    remove.hidden = !plugin?.license_key_set;
  };

  const submit = async (key) => {
    if (busy || !plugin) return;
    const name = pluginName(plugin);
    busy = true;
    syncButtons();
    try {
      const info = await api.setLicense(id, key);
      if (key) input.value = "";
      update(info);
      showToast(key ? `License key saved; ${name} is restarting to check it` : `License key removed from ${name}`, "success");
    } catch (err) {
      showToast(`Could not ${key ? "save" : "remove"} the license key of ${name}: ${err.message}`, "error");
    } finally {
      busy = false;
      syncButtons();
      refresh();
    }
  };

  input.addEventListener("input", syncButtons);
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      if (!save.disabled) submit(input.value.trim());
    }
  });
  save.addEventListener("click", () => submit(input.value.trim()));
  remove.addEventListener("click", () => submit(null));

  let instanceLoaded = false;
  const loadInstance = () => {
    if (instanceLoaded) return;
    instanceLoaded = true;
    api.instance().then(
      (info) => setText(instance, info?.instance_id ?? "unknown"),
      () => {
        instanceLoaded = false;
        setText(instance, "unknown (GET /api/instance failed)");
      },
    );
  };

  const render = (next) => {
    plugin = next;
    const show = needsLicenseSection(plugin);
    node.hidden = !show;
    if (!show) return;
    loadInstance();
    const state = licenseState(plugin);
    const key = JSON.stringify([state.key, state.detail, state.reason ?? ""]);
    if (key !== shownKey) {
      shownKey = key;
      status.dataset.tone = state.tone;
      const parts = [
        h("div", { class: "license-line" }, h("span", { class: "dot", dataset: { health: { good: "green", bad: "red", warn: "amber", off: "off" }[state.tone] } }), h("strong", { "data-field": "license-label" }, state.label)),
        h("p", { class: "license-detail" }, state.detail),
        state.reason ? h("div", { class: "callout callout-bad license-reason", "data-field": "license-reason", role: "status" }, h("pre", {}, state.reason)) : null,
      ];
      status.replaceChildren(...parts.filter(Boolean));
    }
    setAttr(node, "data-license", state.key);
    syncButtons();
  };

  return { node, render };
}
