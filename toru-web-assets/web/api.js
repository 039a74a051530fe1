// The server's JSON API (see the HTTP API contract): one function per call, errors as ApiError.

/** A failed API call: the HTTP status (0 when the server could not be reached) and error code. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

let leaving = false;

/** Sends the browser to the login page, coming back to the current view afterwards. */
export function redirectToLogin() {
  if (leaving) return;
  leaving = true;
  const next = location.hash.startsWith("#/") ? `?next=${encodeURIComponent(location.hash)}` : "";
  location.assign(`/login${next}`);
}

/**
 * Calls the API. A 401 sends the browser to the login page unless `allowUnauthorized`.
 * Returns the parsed JSON body (null for an empty one).
 */
export async function request(path, { method = "GET", body, allowUnauthorized = false, signal } = {}) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" }, signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err?.name === "AbortError") throw err;
    throw new ApiError(0, "unreachable", "The server cannot be reached.");
  }
  let data = null;
  const text = await response.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (response.status === 401 && !allowUnauthorized) {
    redirectToLogin();
  }
  if (!response.ok) {
    const code = data?.error?.code ?? `http_${response.status}`;
    const message = data?.error?.message ?? `The server answered ${response.status} ${response.statusText}`.trim();
    const error = new ApiError(response.status, code, message);
    error.retryAfter = Number(response.headers.get("Retry-After")) || null;
    // A form's errors, one message per field (`PUT .../limits`, `PUT .../settings`).
    error.fields = data?.error?.fields ?? null;
    throw error;
  }
  return data;
}

const plugin = (id) => `/api/plugins/${encodeURIComponent(id)}`;

/** The calls the dashboard makes. */
export const api = {
  session: () => request("/api/session", { allowUnauthorized: true }),
  login: (secret) => request("/api/login", { method: "POST", body: { secret }, allowUnauthorized: true }),
  logout: () => request("/api/logout", { method: "POST", allowUnauthorized: true }),
  instance: () => request("/api/instance"),
  plugins: async () => (await request("/api/plugins")).plugins ?? [],
  /** Scans the plugins folder now; resolves to `{report, plugins}`. */
  rescan: () => request("/api/plugins/rescan", { method: "POST" }),
  plugin: (id) => request(plugin(id)),
  enable: (id) => request(`${plugin(id)}/enable`, { method: "POST" }),
  disable: (id) => request(`${plugin(id)}/disable`, { method: "POST" }),
  /** Stores license key `key` for plugin `id` (null removes it); the plugin restarts. */
  setLicense: (id, key) => request(`${plugin(id)}/license`, { method: "PUT", body: { license_key: key ?? null } }),
  /** Changes settings of plugin `id` (`{name: value}`; null removes a value); it applies them live or restarts. */
  setSettings: (id, changes) => request(`${plugin(id)}/settings`, { method: "PUT", body: changes }),
  /** Sets plugin `id`'s own limits (`{memory, processes, open_files, cpu}`; null: the default); it restarts. */
  setLimits: (id, limits) => request(`${plugin(id)}/limits`, { method: "PUT", body: limits }),
  logs: (id, { page = 0, pageSize = 50, level = "" } = {}) => {
    const query = new URLSearchParams({ page: String(page), page_size: String(pageSize) });
    if (level) query.set("level", level);
    return request(`${plugin(id)}/logs?${query}`);
  },
  events: async (id, { page = 0, pageSize = 20 } = {}) => {
    const query = new URLSearchParams({ page: String(page), page_size: String(pageSize) });
    return (await request(`${plugin(id)}/events?${query}`)).events ?? [];
  },
  bundleUrl: (id, version) => `${plugin(id)}/bundle.js?v=${encodeURIComponent(version ?? 0)}`,
};
