// The dashboard: a hash router over a few views, and the sign-in form when the gateway asks for
// credentials. Each view renders into <main> and returns a function that stops its streams
// and timers when another view replaces it.

import { ApiError, auth, follow, get } from "./lib.js";
import { approvalsView } from "./approvals.js";
import { metricsView } from "./metrics.js";
import { runView } from "./run.js";
import { homeView, taskView } from "./tasks.js";

const main = document.getElementById("main");
const errorBox = document.getElementById("error");
let stop = () => {};
let stopBadge = () => {};

const routes = [
  [/^#?\/?$/, () => ["tasks", homeView]],
  [/^#\/tasks\/([^/]+)$/, (m) => ["tasks", (root, onError) => taskView(root, decodeURIComponent(m[1]), onError)]],
  [/^#\/runs\/([^/]+)$/, (m) => ["tasks", (root, onError) => runView(root, decodeURIComponent(m[1]), onError)]],
  [/^#\/approvals$/, () => ["approvals", approvalsView]],
  [/^#\/metrics$/, () => ["metrics", metricsView]],
];

export function showError(err) {
  if (!err) {
    errorBox.hidden = true;
    return;
  }
  errorBox.textContent = err instanceof ApiError ? `${err.status}: ${err.detail}` : String(err.message || err);
  errorBox.hidden = false;
}

function render() {
  stop();
  showError(null);
  main.replaceChildren();
  const hash = location.hash || "#/";
  for (const [pattern, pick] of routes) {
    const m = hash.match(pattern);
    if (!m) continue;
    const [nav, view] = pick(m);
    for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === nav);
    const cleanup = view(main, showError);
    stop = typeof cleanup === "function" ? cleanup : () => {};
    return;
  }
  main.append("No such page.");
}

function signIn(reason) {
  // Several requests refused at once: the form (and the first reason) is already shown.
  if (document.getElementById("signin") && !auth.token) return;
  stop();
  stopBadge();
  stop = () => {};
  const form = document.getElementById("token-form").content.cloneNode(true);
  main.replaceChildren(form);
  showError(null);
  document.getElementById("sign-out").hidden = true;
  document.getElementById("who").textContent = "";
  // A credential the gateway refused (wrong, revoked, expired) is forgotten, and the reason shown.
  if (reason && auth.token) document.getElementById("signin-error").textContent = reason;
  auth.set(null);
  document.getElementById("signin").addEventListener("submit", (e) => {
    e.preventDefault();
    auth.set(document.getElementById("token").value.trim());
    start();
  });
  document.getElementById("token").focus();
}

async function start() {
  let me;
  try {
    me = await get("/api/me");
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) showError(err);
    return;
  }
  document.getElementById("who").textContent = `${me.name} (${me.role ?? "local"})`;
  document.getElementById("sign-out").hidden = !auth.token;
  pendingBadge();
  render();
}

/** The number of plans waiting for a decision, in the header, kept current. */
function pendingBadge() {
  stopBadge();
  const count = document.getElementById("pending-count");
  const refresh = async () => {
    try {
      const page = await get("/api/approvals?status=pending&limit=1");
      count.textContent = page.total ? String(page.total) : "";
    } catch {
      count.textContent = "";
    }
  };
  let timer = null;
  const unfollow = follow("/ws/stream", (event) => {
    if (["approval_required", "approved", "rejected", "revision_requested", "timeout", "cancelled"].includes(event.event_type)) {
      clearTimeout(timer);
      timer = setTimeout(refresh, 200);
    }
  });
  refresh();
  stopBadge = () => {
    clearTimeout(timer);
    unfollow();
  };
}

auth.onUnauthorized = (reason) => signIn(reason);
document.getElementById("sign-out").addEventListener("click", () => {
  auth.set(null);
  signIn();
});
window.addEventListener("hashchange", () => {
  if (document.getElementById("signin")) return;
  render();
});
start();
