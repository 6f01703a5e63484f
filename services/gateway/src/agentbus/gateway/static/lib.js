// What every view shares: the API (fetch with the credential as a header), the streams
// (WebSocket, with the credential as ?token=, the only place a browser cannot set a header),
// building DOM nodes without innerHTML, and formatting.

const TOKEN_KEY = "agentbus.token";

export const auth = {
  get token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  set(token) {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  },
  onUnauthorized: () => {},
};

export class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
    this.detail = detail;
  }
}

function headers(json) {
  const out = {};
  if (auth.token) out.Authorization = `Bearer ${auth.token}`;
  if (json) out["Content-Type"] = "application/json";
  return out;
}

async function send(method, path, body) {
  const init = { method, headers: headers(body !== undefined), credentials: "omit", cache: "no-store" };
  if (body !== undefined) init.body = JSON.stringify(body);
  const r = await fetch(path, init);
  if (!r.ok) {
    let detail = r.statusText;
    try {
      detail = (await r.json()).detail || detail;
    } catch {
      // not JSON: keep the status text
    }
    if (r.status === 401) auth.onUnauthorized(detail);
    throw new ApiError(r.status, detail);
  }
  return r;
}

export async function api(method, path, body) {
  const r = await send(method, path, body);
  return r.status === 204 ? null : r.json();
}

export const get = (path) => api("GET", path);

/** Downloads a file of the API: fetched with the credential, then saved from a blob. */
export async function download(path, name) {
  const blob = await (await send("GET", path)).blob();
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/**
 * Follows a WebSocket stream: onEvent(event) for each event (heartbeats skipped). Reconnects after
 * a drop, from the last seq seen when `resume` (run streams take ?since=). Returns a function
 * that closes it for good.
 */
export function follow(path, onEvent, { resume = false, onState = () => {} } = {}) {
  let ws = null;
  let closed = false;
  let since = 0;
  let timer = null;
  const open = () => {
    const url = new URL(path, location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    if (resume) url.searchParams.set("since", String(since));
    if (auth.token) url.searchParams.set("token", auth.token);
    ws = new WebSocket(url);
    ws.onopen = () => onState("live");
    ws.onmessage = (msg) => {
      const event = JSON.parse(msg.data);
      if (event.event_type === "heartbeat") return;
      if (resume && typeof event.seq === "number") {
        if (event.seq <= since) return;
        since = event.seq;
      }
      onEvent(event);
    };
    ws.onclose = (e) => {
      if (closed) return;
      onState("offline");
      if (e.code === 4401) return auth.onUnauthorized(e.reason);
      if (e.code === 4403 || e.code === 4404 || e.code === 4400) return;
      timer = setTimeout(open, 1000);
    };
  };
  open();
  return () => {
    closed = true;
    clearTimeout(timer);
    if (ws) ws.close();
  };
}

/** A function that calls fn at most once per `ms`, and once more after the last call. */
export function debounce(fn, ms = 250) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
}

/** h("a", {href: "#/"}, "text", child): an element; children are text or nodes, never HTML. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export const runLink = (run) => h("a", { href: `#/runs/${encodeURIComponent(run.id)}` }, `run ${run.run_number ?? ""} · ${run.id.slice(0, 8)}`);
export const taskHref = (id) => `#/tasks/${encodeURIComponent(id)}`;
export const badge = (status) => h("span", { class: `badge ${status}` }, String(status).replace("_", " "));
export const TERMINAL = new Set(["completed", "failed", "rejected", "cancelled", "timeout"]);

export function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

export function seconds(s) {
  if (s === null || s === undefined) return "—";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 120) return `${s.toFixed(1)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

/** "4:59 left" until a deadline, "expired" after it. */
export function countdown(deadline, now = Date.now()) {
  const left = Math.round((new Date(deadline).getTime() - now) / 1000);
  if (left <= 0) return "expired";
  const h_ = Math.floor(left / 3600);
  const m = Math.floor((left % 3600) / 60);
  const s = String(left % 60).padStart(2, "0");
  return h_ ? `${h_}:${String(m).padStart(2, "0")}:${s} left` : `${m}:${s} left`;
}

export const json = (value) => h("pre", null, JSON.stringify(value, null, 2));

export function planSteps(plan) {
  const steps = plan && Array.isArray(plan.steps) ? plan.steps : null;
  if (!steps) return json(plan);
  return h(
    "ol",
    { class: "steps" },
    steps.map((step) =>
      typeof step === "string" ? h("li", null, step) : h("li", null, h("b", null, step.title ?? ""), step.description ? ` — ${step.description}` : "")
    )
  );
}
