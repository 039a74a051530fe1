// Enabling and disabling a plugin, with the toast that confirms it.

import { api } from "./api.js";
import { pluginName } from "./format.js";
import { refresh, update } from "./store.js";
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
