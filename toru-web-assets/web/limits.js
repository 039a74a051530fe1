// The details panel's Limits section: how the plugin is contained, the limits it runs under and
// what enforces each, and a form to give it limits of its own (PUT /api/plugins/:id/limits).
// Like the License section, it is built once per panel; `render` never touches a field being
// edited, so the live updates around it do not wipe what the admin types.

import { api } from "./api.js";
import { h, setText } from "./dom.js";
import { pluginName } from "./format.js";
import { icon } from "./icons.js";
import { refresh, update } from "./store.js";
import { showToast } from "./toast.js";

/** The limits, in the order shown, with their labels and an example for the field. */
const FIELDS = [
  { key: "memory", label: "Memory", example: "128MiB, 1G" },
  { key: "processes", label: "Processes", example: "64" },
  { key: "open_files", label: "Open files", example: "256" },
  { key: "cpu", label: "CPU", example: "0.5, 50%" },
];

const CONTAINMENT = {
  "cgroup-v2": "a cgroup (v2)",
  "cgroup-v1": "a cgroup (v1)",
  "pid-namespace": "a PID namespace",
  subreaper: "the host as subreaper",
};

const ENFORCER = {
  cgroup: "by its cgroup",
  rlimit: "by an rlimit",
  nice: "as a lower priority",
  none: "not enforced",
};

/** A limit's value as the API gives it, in words: bytes with a unit, cores, counts. */
export function limitText(key, value) {
  if (value === undefined || value === null) return "";
  if (value === "unlimited") return "unlimited";
  if (key === "memory") return bytesText(value);
  if (key === "cpu") return `${value} core${value === 1 ? "" : "s"}`;
  return String(value);
}

/** A limit's value as a form field holds it (what the API reads back the same). */
function fieldText(key, value) {
  if (value === undefined || value === null) return "";
  if (value === "unlimited") return "unlimited";
  if (key === "memory") return bytesText(value).replace(" ", "");
  return String(value);
}

function bytesText(bytes) {
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let unit = null;
  let scale = 1;
  units.forEach((u, i) => {
    const next = 1024 ** (i + 1);
    if (bytes >= next) {
      unit = u;
      scale = next;
    }
  });
  if (!unit) return `${bytes} bytes`;
  const n = bytes / scale;
  return `${Number.isInteger(n) ? n : n.toFixed(1)} ${unit}`;
}

/** The Limits section for plugin `id`: `{ node, render(plugin) }`. */
export function limitsSection(id) {
  const slug = id.replace(/[^A-Za-z0-9_-]/g, "_");
  const containment = h("p", { class: "limits-containment muted", "data-field": "containment" });
  const inputs = {};
  const hints = {};
  const errors = {};
  const rows = FIELDS.map(({ key, label, example }) => {
    const fieldId = `limit-${key.replace("_", "-")}-${slug}`;
    inputs[key] = h("input", {
      id: fieldId,
      class: "limits-input",
      "data-limit": key,
      type: "text",
      spellcheck: "false",
      autocomplete: "off",
      title: `For example ${example}, or unlimited`,
      "aria-describedby": `${fieldId}-hint`,
    });
    hints[key] = h("span", { id: `${fieldId}-hint`, class: "limits-hint muted", "data-hint": key });
    errors[key] = h("span", { class: "limits-error", "data-error": key, role: "alert", hidden: true });
    return h(
      "div",
      { class: "limits-row", dataset: { row: key } },
      h("label", { class: "limits-label", for: fieldId }, label),
      h("div", { class: "limits-field" }, inputs[key], hints[key], errors[key]),
    );
  });
  const save = h("button", { class: "btn btn-sm btn-primary", type: "button", "data-action": "limits-save" }, icon("check", 15), "Save limits");
  const reset = h("button", { class: "btn btn-sm", type: "button", "data-action": "limits-reset" }, "Use the defaults");
  const formError = h("p", { class: "form-error", "data-field": "limits-error", hidden: true });
  const node = h(
    "section",
    { class: "limits", "data-section": "limits", "aria-label": "Limits", hidden: true },
    h("h3", { class: "section-title" }, "Limits"),
    containment,
    h("div", { class: "limits-grid" }, rows),
    h("p", { class: "limits-note muted" }, "Leave a field empty for the server's default; write “unlimited” for none. The plugin restarts to apply them."),
    formError,
    h("div", { class: "license-actions" }, save, reset),
  );

  let plugin = null;
  let busy = false;
  let shownOverrides = null;
  const dirty = new Set();

  const showErrors = (fields = {}, message = "") => {
    for (const { key } of FIELDS) {
      const text = fields[key] ?? "";
      errors[key].hidden = !text;
      setText(errors[key], text);
      inputs[key].toggleAttribute("aria-invalid", Boolean(text));
    }
    const others = Object.keys(fields).filter((k) => !(k in inputs));
    const rest = message && !Object.keys(fields).length ? message : others.map((k) => `${k}: ${fields[k]}`).join("; ");
    formError.hidden = !rest;
    setText(formError, rest);
  };

  const submit = async (body) => {
    if (busy || !plugin) return;
    busy = true;
    save.disabled = reset.disabled = true;
    const name = pluginName(plugin);
    try {
      const info = await api.setLimits(id, body);
      dirty.clear();
      shownOverrides = null;
      showErrors();
      update(info);
      showToast(`Limits saved; ${name} restarts under them`, "success");
    } catch (err) {
      showErrors(err.fields ?? {}, err.message);
      showToast(`Could not save the limits of ${name}: ${err.message}`, "error");
    } finally {
      busy = false;
      save.disabled = reset.disabled = false;
      refresh();
    }
  };

  for (const { key } of FIELDS) {
    inputs[key].addEventListener("input", () => dirty.add(key));
    inputs[key].addEventListener("keydown", (e) => {
      if (e.key === "Enter") {
        e.preventDefault();
        save.click();
      }
    });
  }
  save.addEventListener("click", () => {
    const body = {};
    for (const { key } of FIELDS) {
      const value = inputs[key].value.trim();
      body[key] = value === "" ? null : value;
    }
    submit(body);
  });
  reset.addEventListener("click", () => {
    for (const { key } of FIELDS) inputs[key].value = "";
    submit({});
  });

  const render = (next) => {
    plugin = next;
    node.hidden = !plugin || Boolean(plugin.load_error);
    if (node.hidden) return;
    const how = CONTAINMENT[plugin.containment] ?? plugin.containment ?? "unknown";
    setText(containment, `Its processes are kept together by ${how}: everything it starts stops with it.`);
    const overrides = plugin.limit_overrides ?? {};
    const key = JSON.stringify(overrides);
    for (const { key: limit } of FIELDS) {
      const own = overrides[limit];
      const value = limitText(limit, plugin.limits?.[limit]);
      const by = ENFORCER[plugin.limits_enforced_by?.[limit]] ?? "";
      setText(hints[limit], `${own === undefined ? "default" : "its own"}: ${value}${by && value !== "unlimited" ? `, ${by}` : ""}`);
      inputs[limit].placeholder = own === undefined ? limitText(limit, plugin.limits?.[limit]) : "";
      if (!dirty.has(limit) && key !== shownOverrides) inputs[limit].value = fieldText(limit, own);
    }
    shownOverrides = key;
  };

  return { node, render };
}
