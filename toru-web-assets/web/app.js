// The dashboard's entry point: checks the session, starts the live plugin list and routes
// between the Plugin Manager (#/plugins) and plugin views (#/plugin/<id>).

import { api, redirectToLogin } from "./api.js";
import { h } from "./dom.js";
import { hydrateIcons } from "./icons.js";
import { closeLogs } from "./logs-modal.js";
import { mountManager } from "./manager.js";
import { mountPluginView } from "./plugin-view.js";
import { initSidebar, setActive, setOpen } from "./sidebar.js";
import { connectEvents, refresh } from "./store.js";
import { showToast } from "./toast.js";

/** The route a hash names: { name: "plugins" } or { name: "plugin", id }, or null. */
export function parseRoute(hash) {
  const path = hash.replace(/^#/, "");
  if (path === "" || path === "/" || path === "/plugins" || path === "/plugins/") return { name: "plugins" };
  const match = /^\/plugin\/([^/?#]+)\/?$/.exec(path);
  if (match) {
    try {
      return { name: "plugin", id: decodeURIComponent(match[1]) };
    } catch {
      return null;
    }
  }
  return null;
}

let current = null;
let routing = Promise.resolve();

function route() {
  // One route change at a time: the previous view is fully unmounted before the next mounts.
  routing = routing.then(show, show);
  return routing;
}

async function show() {
  const main = document.getElementById("main");
  const target = parseRoute(location.hash);
  if (target?.name === "plugins" && location.hash !== "#/plugins") {
    history.replaceState(null, "", "#/plugins");
  }
  closeLogs();
  if (current) {
    const leaving = current;
    current = null;
    try {
      await leaving.destroy();
    } catch (err) {
      console.error("leaving the view failed", err);
    }
  }
  document.title = "Toru";
  if (!target) {
    main.replaceChildren(
      h(
        "section",
        { class: "page", id: "not-found" },
        h("div", { class: "empty-state" }, h("h2", {}, "Page not found"), h("p", {}, "There is nothing at this address. "), h("a", { class: "btn", href: "#/plugins" }, "Go to the Plugin Manager")),
      ),
    );
  } else if (target.name === "plugins") {
    current = mountManager(main);
  } else {
    current = mountPluginView(main, target.id);
  }
  setActive(target ?? { name: "none" });
  setOpen(false);
  main.focus({ preventScroll: true });
}

async function logout() {
  try {
    await api.logout();
  } catch {
    // the session is gone either way once the cookie is cleared
  }
  location.assign("/login");
}

async function start() {
  let session;
  try {
    session = await api.session();
  } catch (err) {
    document.getElementById("main").replaceChildren(
      h("div", { class: "empty-state" }, h("h2", {}, "The server cannot be reached"), h("p", {}, err.message)),
    );
    return;
  }
  if (!session?.authenticated) {
    redirectToLogin();
    return;
  }
  hydrateIcons();
  initSidebar();
  document.getElementById("logout").addEventListener("click", logout);
  window.addEventListener("hashchange", route);
  await refresh();
  connectEvents();
  await route();
  document.getElementById("app").dataset.ready = "true";
  api.instance().then(
    (info) => {
      const brand = document.querySelector(".sidebar .brand");
      if (info?.version) brand.title = `Toru ${info.version} · instance ${info.instance_id}`;
    },
    () => {},
  );
}

window.addEventListener("unhandledrejection", (event) => {
  console.error(event.reason);
});

start().catch((err) => {
  console.error(err);
  showToast(`The dashboard failed to start: ${err.message}`, "error");
});
