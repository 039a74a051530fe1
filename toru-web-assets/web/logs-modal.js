// The logs modal: a plugin's log, newest first, a page at a time, with a level filter.

import { api } from "./api.js";
import { h, setText } from "./dom.js";
import { clock, pluginName } from "./format.js";
import { icon } from "./icons.js";

const LEVELS = ["trace", "debug", "info", "warn", "error"];
const PAGE_SIZES = [10, 25, 50, 100];

/** Log entries as rows (newest first, as the server sends them). */
export function logRows(entries) {
  return entries.map((entry) =>
    h(
      "div",
      { class: "log-row", dataset: { level: entry.level } },
      h("time", { class: "log-time", datetime: entry.timestamp, title: entry.timestamp }, clock(entry.timestamp)),
      h("span", { class: "level-badge", dataset: { level: entry.level } }, String(entry.level).toUpperCase()),
      h("span", { class: "log-source", title: `source: ${entry.source}` }, entry.source),
      h(
        "div",
        { class: "log-text" },
        h("span", { class: "log-message" }, entry.message),
        entry.error ? h("span", { class: "log-error" }, entry.error) : null,
      ),
    ),
  );
}

let open = null;

/** Closes the logs modal, if it is open. */
export function closeLogs() {
  if (!open) return;
  const { modal, returnFocus, onKey } = open;
  open = null;
  document.removeEventListener("keydown", onKey);
  modal.remove();
  document.body.classList.remove("modal-open");
  if (returnFocus?.isConnected) returnFocus.focus();
}

/** Opens the logs modal for `plugin` (a PluginInfo). */
export function openLogs(plugin) {
  closeLogs();
  const state = { page: 0, pageSize: 50, level: "", seq: 0 };
  const title = h("h2", { id: "logs-title" }, "Logs ", h("span", { class: "muted" }, `· ${pluginName(plugin)}`));
  const level = h(
    "select",
    { id: "logs-level", "aria-label": "Lowest level shown" },
    h("option", { value: "" }, "All levels"),
    LEVELS.map((l) => h("option", { value: l }, `${l[0].toUpperCase()}${l.slice(1)} and above`)),
  );
  const size = h(
    "select",
    { id: "logs-page-size", "aria-label": "Entries per page" },
    PAGE_SIZES.map((n) => h("option", { value: String(n), selected: n === state.pageSize }, `${n} per page`)),
  );
  const refreshBtn = h("button", { id: "logs-refresh", class: "btn btn-sm", type: "button" }, icon("refresh", 15), "Refresh");
  const entries = h("div", { id: "logs-entries", class: "log-list", tabindex: "0", "aria-label": "Log entries" });
  const pageLabel = h("span", { id: "logs-page-label", class: "muted" });
  const prev = h("button", { id: "logs-prev", class: "btn btn-sm", type: "button" }, icon("left", 15), "Newer");
  const next = h("button", { id: "logs-next", class: "btn btn-sm", type: "button" }, "Older", icon("right", 15));
  const closeBtn = h("button", { id: "logs-close", class: "icon-btn", type: "button", "aria-label": "Close" }, icon("close"));

  const modal = h(
    "div",
    {
      id: "logs-modal",
      class: "modal",
      role: "dialog",
      "aria-modal": "true",
      "aria-labelledby": "logs-title",
      dataset: { pluginId: plugin.id, page: "0", loading: "true" },
    },
    h(
      "div",
      { class: "modal-card modal-wide" },
      h("header", { class: "modal-head" }, title, closeBtn),
      h("div", { class: "modal-toolbar" }, level, size, h("span", { class: "spacer" }), refreshBtn),
      entries,
      h("footer", { class: "modal-foot" }, pageLabel, h("div", { class: "pager" }, prev, next)),
    ),
  );

  async function load() {
    const seq = ++state.seq;
    modal.dataset.loading = "true";
    prev.disabled = true;
    next.disabled = true;
    try {
      const page = await api.logs(plugin.id, { page: state.page, pageSize: state.pageSize, level: state.level });
      if (seq !== state.seq) return;
      const rows = logRows(page.entries ?? []);
      entries.replaceChildren(
        ...(rows.length ? rows : [h("p", { class: "empty" }, state.page === 0 ? "No log entries yet." : "No older entries.")]),
      );
      entries.scrollTop = 0;
      prev.disabled = state.page === 0;
      next.disabled = !page.has_more;
      const first = state.page * state.pageSize + 1;
      const shown = (page.entries ?? []).length;
      setText(
        pageLabel,
        shown ? `Page ${state.page + 1} · entries ${first}–${first + shown - 1}, newest first` : `Page ${state.page + 1}`,
      );
    } catch (err) {
      if (seq !== state.seq) return;
      entries.replaceChildren(h("p", { class: "form-error" }, `Could not read the logs: ${err.message}`));
      prev.disabled = state.page === 0;
      setText(pageLabel, `Page ${state.page + 1}`);
    } finally {
      if (seq === state.seq) {
        modal.dataset.page = String(state.page);
        modal.dataset.loading = "false";
      }
    }
  }

  level.addEventListener("change", () => {
    state.level = level.value;
    state.page = 0;
    load();
  });
  size.addEventListener("change", () => {
    state.pageSize = Number(size.value);
    state.page = 0;
    load();
  });
  refreshBtn.addEventListener("click", load);
  prev.addEventListener("click", () => {
    if (state.page > 0) {
      state.page -= 1;
      load();
    }
  });
  next.addEventListener("click", () => {
    state.page += 1;
    load();
  });
  closeBtn.addEventListener("click", closeLogs);
  modal.addEventListener("mousedown", (e) => {
    if (e.target === modal) closeLogs();
  });
  const onKey = (e) => {
    if (e.key === "Escape") closeLogs();
  };
  document.addEventListener("keydown", onKey);

  open = { modal, returnFocus: document.activeElement, onKey };
  document.getElementById("modal-root").append(modal);
  document.body.classList.add("modal-open");
  closeBtn.focus();
  load();
}
