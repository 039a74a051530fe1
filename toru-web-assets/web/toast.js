// Toasts: short confirmations and errors in the corner, gone after a few seconds.

import { h } from "./dom.js";
import { icon } from "./icons.js";

const KINDS = { info: "info", success: "check", error: "alert", warning: "alert" };
const MAX_VISIBLE = 4;

/**
 * Shows `message`. `kind`: info (default), success, warning or error. Errors stay longer.
 * Returns a function that dismisses the toast.
 */
export function showToast(message, kind = "info") {
  const region = document.getElementById("toast");
  if (!region) return () => {};
  const tone = KINDS[kind] ? kind : "info";
  const close = h("button", { class: "toast-close", type: "button", "aria-label": "Dismiss" }, icon("close", 14));
  const toast = h(
    "div",
    { class: "toast", dataset: { kind: tone }, role: tone === "error" ? "alert" : null },
    h("span", { class: "toast-icon" }, icon(KINDS[tone], 16)),
    h("span", { class: "toast-message" }, String(message)),
    close,
  );
  let timer = null;
  const dismiss = () => {
    clearTimeout(timer);
    toast.classList.add("leaving");
    setTimeout(() => toast.remove(), 200); // the fade-out's length
  };
  close.addEventListener("click", dismiss);
  region.append(toast);
  while (region.children.length > MAX_VISIBLE) region.firstElementChild.remove();
  timer = setTimeout(dismiss, tone === "error" ? 8000 : 4000);
  return dismiss;
}
