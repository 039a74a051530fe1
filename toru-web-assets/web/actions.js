// Enabling and disabling a plugin, and rescanning the plugins folder, with the toast that
// confirms it.

import { api } from "./api.js";
import { pluginName } from "./format.js";
import { refresh, replaceAll, update } from "./store.js";
import { showToast } from "./toast.js";

/** Enables or disables `plugin`; resolves to the new PluginInfo, or null when it failed. */
export async function setEnabled(plugin, enable) {
  const name = pluginName(plugin);
  try {
    const info = await (enable ? api.enable(plugin.id) : api.disable(plugin.id));
    update(info);
    showToast(enable ? `${name} enabled` : `${name} disabled`, "success");
    refresh();
    return info;
  } catch (err) {
    showToast(`Could not ${enable ? "enable" : "disable"} ${name}: ${err.message}`, "error");
    refresh();
    return null;
  }
}

/** What a rescan report says, in a sentence. */
export function rescanSummary(report) {
  const count = (list, one, many = one) => (list?.length ? `${list.length} ${list.length === 1 ? one : many}` : null);
  const parts = [
    count(report?.discovered, "new plugin", "new plugins"),
    count(report?.upgraded, "upgraded"),
    count(report?.upgrade_failed, "upgrade failed", "upgrades failed"),
    count(report?.removed, "removed"),
    count(report?.load_failed, "could not load"),
    count(report?.pending, "still being written or retried"),
  ].filter(Boolean);
  return parts.length ? `Rescanned: ${parts.join(", ")}` : "Rescanned: nothing changed";
}

/** Scans the plugins folder now; resolves to the report, or null when it failed. */
export async function rescan() {
  try {
    const { report, plugins } = await api.rescan();
    replaceAll(plugins);
    const bad = report?.upgrade_failed?.length || report?.load_failed?.length;
    showToast(rescanSummary(report), bad ? "warning" : "success");
    refresh();
    return report;
  } catch (err) {
    showToast(`Could not rescan the plugins folder: ${err.message}`, "error");
    return null;
  }
}
