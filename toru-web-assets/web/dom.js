// Building DOM nodes without innerHTML: every text goes in as text, never as markup.

/**
 * Creates an element. `props`: `class`, `dataset` (object), `on` (object of listeners),
 * `hidden`, `text`, anything else as an attribute (`true` sets it empty, `false`/null skips it).
 * Children: nodes, strings (as text), arrays, or null/false (skipped).
 */
export function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "on") for (const [type, fn] of Object.entries(value)) node.addEventListener(type, fn);
    else if (key === "text") node.textContent = value;
    else if (key === "hidden") node.hidden = Boolean(value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : String(child));
  }
}

/** Sets an element's text only when it changed (keeps selections and avoids layout work). */
export function setText(node, text) {
  const value = text ?? "";
  if (node.textContent !== value) node.textContent = value;
}

/** Sets or removes an attribute only when it changed. */
export function setAttr(node, name, value) {
  if (value === null || value === undefined || value === false) {
    if (node.hasAttribute(name)) node.removeAttribute(name);
  } else {
    const text = value === true ? "" : String(value);
    if (node.getAttribute(name) !== text) node.setAttribute(name, text);
  }
}

/** The plugin's icon as text: its emoji, or its name's first letter when the icon is unusable. */
export function iconText(plugin) {
  const icon = plugin?.metadata?.icon?.trim() ?? "";
  if (icon && [...icon].length <= 4 && !/[/:.]/.test(icon)) return icon;
  const name = plugin?.metadata?.name ?? plugin?.id ?? "?";
  return ([...name.trim()][0] ?? "?").toUpperCase();
}

/** A plugin's icon in a rounded tile. */
export function pluginIcon(plugin, extraClass = "") {
  return h("span", { class: `plugin-icon ${extraClass}`.trim(), "aria-hidden": "true" }, iconText(plugin));
}
