// The details panel's Settings section: a form built from the settings the plugin declares
// (`plugin.settings` in the API, each with the value in effect), saved with
// PUT /api/plugins/:id/settings. Text and numbers are fields, a boolean a checkbox, a choice a
// select; a secret is a password field that says only whether a value is set, with a way to
// replace or clear it. Its value is never shown, and the field is emptied once saved.
// Like the other sections, the form is built once per set of declarations; the live updates
// around it change only the fields that are not being edited.

import { api } from "./api.js";
import { h, setText } from "./dom.js";
import { pluginName } from "./format.js";
import { icon } from "./icons.js";
import { needsLicenseSection } from "./license.js";
import { refresh, update } from "./store.js";
import { showToast } from "./toast.js";

/** The settings the form shows: all but `license_key` when the License section has it. */
function shownSettings(plugin) {
  const all = plugin?.settings ?? [];
  return needsLicenseSection(plugin) ? all.filter((s) => s.name !== "license_key") : all;
}

/** A value as a text field shows it. */
function fieldText(value) {
  return value === null || value === undefined ? "" : String(value);
}

/** The Settings section for plugin `id`: `{ node, render(plugin) }`. */
export function settingsSection(id) {
  const slug = id.replace(/[^A-Za-z0-9_-]/g, "_");
  const grid = h("div", { class: "settings-grid" });
  const note = h("p", { class: "settings-note muted", "data-field": "settings-note" });
  const formError = h("p", { class: "form-error", "data-field": "settings-error", role: "alert", hidden: true });
  const save = h("button", { class: "btn btn-sm btn-primary", type: "submit", "data-action": "settings-save" }, icon("check", 15), "Save settings");
  const form = h("form", { class: "settings-form", novalidate: true }, grid, note, formError, h("div", { class: "license-actions" }, save));
  const node = h(
    "section",
    { class: "settings", "data-section": "settings", "aria-label": "Settings", hidden: true },
    h("h3", { class: "section-title" }, "Settings"),
    form,
  );

  let plugin = null;
  let busy = false;
  let shape = null; // the declarations the fields were built from
  let fields = new Map(); // name -> { spec, input, error, state, clear, read() }
  const dirty = new Set();

  const showErrors = (errors = {}, message = "") => {
    for (const [name, field] of fields) {
      const text = errors[name] ?? "";
      field.error.hidden = !text;
      setText(field.error, text);
      field.input.toggleAttribute("aria-invalid", Boolean(text));
    }
    const others = Object.keys(errors).filter((k) => !fields.has(k));
    const rest = message && !Object.keys(errors).length ? message : others.map((k) => `${k}: ${errors[k]}`).join("; ");
    formError.hidden = !rest;
    setText(formError, rest);
  };

  const submit = async (changes, what) => {
    if (busy || !plugin) return;
    busy = true;
    save.disabled = true;
    const name = pluginName(plugin);
    try {
      const info = await api.setSettings(id, changes);
      for (const key of Object.keys(changes)) dirty.delete(key);
      for (const field of fields.values()) if (field.spec.type === "secret") field.input.value = "";
      showErrors();
      update(info);
      const how = plugin.metadata?.live_settings && !("license_key" in changes) ? "it applies them as it runs" : "it restarts to apply them";
      showToast(`${what} of ${name} saved; ${info.enabled ? how : "they apply when it starts"}`, "success");
    } catch (err) {
      showErrors(err.fields ?? {}, err.message);
      showToast(`Could not save the settings of ${name}: ${err.message}`, "error");
    } finally {
      busy = false;
      save.disabled = false;
      refresh();
    }
  };

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const changes = {};
    for (const name of dirty) {
      const field = fields.get(name);
      if (!field) continue;
      const value = field.read();
      if (value !== undefined) changes[name] = value;
    }
    if (!Object.keys(changes).length) {
      showErrors();
      showToast("Nothing changed in the settings", "info");
      return;
    }
    submit(changes, "Settings");
  });

  const build = (settings) => {
    fields = new Map();
    dirty.clear();
    grid.replaceChildren(
      ...settings.map((spec) => {
        const field = makeField(slug, spec, () => dirty.add(spec.name));
        if (field.clear) {
          field.clear.addEventListener("click", () => submit({ [spec.name]: null }, spec.label || spec.name));
        }
        fields.set(spec.name, field);
        return field.row;
      }),
    );
  };

  const render = (next) => {
    plugin = next;
    const settings = shownSettings(plugin);
    node.hidden = !plugin || Boolean(plugin.load_error) || !settings.length;
    if (node.hidden) return;
    const nextShape = JSON.stringify(settings.map(({ value, set, ...spec }) => spec));
    if (nextShape !== shape) {
      shape = nextShape;
      build(settings);
    }
    for (const setting of settings) {
      const field = fields.get(setting.name);
      if (field && !dirty.has(setting.name)) field.show(setting);
    }
    setText(
      note,
      plugin.metadata?.live_settings
        ? "The plugin applies changed settings while it runs."
        : "The plugin restarts to apply changed settings.",
    );
  };

  return { node, render };
}

/**
 * One setting's row: its label, its field, its help and its error. Returns `{ spec, row, input,
 * error, clear, show(setting), read() }`: `show` puts the value in effect in the field, `read`
 * gives the value to send (`null` to remove it; `undefined` to send nothing).
 */
function makeField(slug, spec, onEdit) {
  const fieldId = `setting-${spec.name}-${slug}`;
  const common = { id: fieldId, "data-setting": spec.name, "aria-describedby": `${fieldId}-help` };
  const error = h("span", { class: "limits-error", "data-error": spec.name, role: "alert", hidden: true });
  const help = h("span", { id: `${fieldId}-help`, class: "limits-hint muted", "data-help": spec.name }, spec.help || "");
  const label = h("label", { class: "limits-label", for: fieldId }, spec.label || spec.name, spec.required ? h("span", { class: "required", title: "required" }, " *") : null);
  let input;
  let state = null;
  let clear = null;
  let show;
  let read;
  switch (spec.type) {
    case "boolean":
      input = h("input", { ...common, type: "checkbox", class: "settings-check" });
      show = (s) => {
        input.checked = s.value === true;
      };
      read = () => input.checked;
      break;
    case "choice": {
      input = h("select", { ...common, class: "limits-input settings-select" });
      show = (s) => {
        const value = s.value ?? "";
        const options = [...(value === "" ? [""] : []), ...spec.choices];
        input.replaceChildren(...options.map((c) => h("option", { value: c }, c === "" ? "Choose…" : c)));
        input.value = value;
      };
      read = () => (input.value === "" ? null : input.value);
      break;
    }
    case "secret":
      input = h("input", { ...common, type: "password", class: "limits-input", autocomplete: "new-password", spellcheck: "false" });
      state = h("span", { class: "badge secret-state", "data-secret-state": spec.name });
      clear = h("button", { class: "btn btn-sm", type: "button", "data-action": "secret-clear", "data-setting-clear": spec.name }, "Clear");
      show = (s) => {
        setText(state, s.set ? "set" : "not set");
        state.dataset.set = String(Boolean(s.set));
        clear.hidden = !s.set;
        input.placeholder = s.set ? "Type a new value to replace it" : "Type a value";
      };
      // A blank field sends nothing: the stored secret stays (Clear removes it).
      read = () => (input.value === "" ? undefined : input.value);
      break;
    case "number":
      input = h("input", { ...common, type: "text", inputmode: "decimal", class: "limits-input", autocomplete: "off", spellcheck: "false" });
      show = (s) => {
        input.value = fieldText(s.set ? s.value : null);
        input.placeholder = spec.default !== undefined ? `default: ${spec.default}` : "";
      };
      read = () => {
        const text = input.value.trim();
        if (text === "") return null;
        const n = Number(text);
        // Not a number: sent as typed, so that the server names what is wrong.
        return Number.isFinite(n) ? n : text;
      };
      break;
    default:
      input = h("input", { ...common, type: "text", class: "limits-input", autocomplete: "off" });
      show = (s) => {
        input.value = fieldText(s.set ? s.value : null);
        input.placeholder = spec.default !== undefined ? `default: ${spec.default}` : "";
      };
      read = () => (input.value === "" ? null : input.value);
  }
  input.addEventListener(spec.type === "boolean" || spec.type === "choice" ? "change" : "input", onEdit);
  const control = state ? h("div", { class: "secret-row" }, input, state, clear) : input;
  const row = h(
    "div",
    { class: "limits-row", dataset: { row: spec.name, type: spec.type } },
    label,
    h("div", { class: "limits-field" }, control, help, error),
  );
  return { spec, row, input, error, state, clear, show, read };
}
