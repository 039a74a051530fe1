// hello-rust's page in the Toru UI: an ES module with mount(container, api) and unmount(container).
const PLUGIN_ID = "hello-rust";

// What unmount must undo for each container mount rendered into (the live ticks' EventSource).
const cleanups = new WeakMap();

// api.fetch returns a Response like window.fetch.
async function readJson(response) {
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return response.json();
}

function el(tag, props = {}, text = "") {
  const node = document.createElement(tag);
  Object.assign(node, props);
  if (text) node.textContent = text;
  return node;
}

export function mount(container, api) {
  container.replaceChildren();
  const root = el("section", { className: "hello-plugin hello-rust" });
  const heading = el("h1", {}, "Hello (Rust) \u{1F980}");
  const greeting = el("p", { id: "hello-rust-greeting", className: "hello-greeting" }, "Loading\u2026");
  const button = el("button", { type: "button", id: "hello-rust-increment", className: "hello-button" }, "Count");
  const count = el("span", { id: "hello-rust-count", className: "hello-count count" }, "\u2013");
  const row = el("p", { className: "hello-row" });
  row.append(button, " ", count);
  const ticks = el("span", { id: "hello-rust-ticks", className: "count" }, "\u2013");
  const live = el("p", { className: "hello-row hello-rust-live" });
  live.append("Live ticks from the plugin: ", ticks);
  root.append(heading, greeting, row, live);
  container.append(root);

  // GET /hello-rust/ticks is a server-sent event stream: one event a second, counting from 1.
  // EventSource reconnects by itself when the plugin restarts (the count starts again at 1).
  const events = new EventSource(`${api.route}ticks`);
  events.onmessage = (event) => {
    ticks.textContent = event.data;
    ticks.title = "";
  };
  events.onerror = () => {
    if (events.readyState === EventSource.CLOSED) {
      // Not a dropped connection but a refusal (an older Toru answers 501): no retrying.
      ticks.textContent = "unavailable";
      ticks.title = "live ticks need a Toru host that speaks protocol 2";
    } else {
      ticks.title = "reconnecting\u2026";
    }
  };
  cleanups.set(container, () => events.close());

  api.fetch("")
    .then(readJson)
    .then((data) => {
      greeting.textContent = `${data.message} (instance ${data.instance_id})`;
    })
    .catch((err) => {
      greeting.textContent = `Could not load the greeting: ${err.message}`;
    });

  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const data = await readJson(await api.fetch("count", { method: "POST" }));
      count.textContent = String(data.count);
      api.showToast(`Count is now ${data.count}`);
    } catch (err) {
      count.textContent = "error";
      api.showToast(`Counting failed: ${err.message}`);
    } finally {
      button.disabled = false;
    }
  });
}

export function unmount(container) {
  cleanups.get(container)?.();
  cleanups.delete(container);
  container.replaceChildren();
  window.__toruUnmounted = PLUGIN_ID;
}
