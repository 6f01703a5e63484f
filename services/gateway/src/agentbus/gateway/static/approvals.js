// The approvals inbox: every plan waiting for a decision, oldest first, each with its deadline
// counting down; kept current from the stream of all events.

import { badge, countdown, debounce, follow, get, h, planSteps, taskHref, when } from "./lib.js";

export function approvalsView(root, onError) {
  const list = h("div", { id: "approvals" }, h("p", { class: "muted" }, "Loading…"));
  root.append(h("h1", null, "Approvals inbox"), h("section", { class: "card" }, list));
  const tick = () => {
    const now = Date.now();
    for (const el of list.querySelectorAll(".countdown")) {
      const text = countdown(el.dataset.deadline, now);
      el.textContent = text;
      el.classList.toggle("late", text === "expired" || new Date(el.dataset.deadline).getTime() - now < 60000);
    }
  };
  const refresh = async () => {
    try {
      const page = await get("/api/approvals?status=pending&limit=100");
      list.replaceChildren(
        page.items.length === 0
          ? h("p", { class: "muted", id: "inbox-empty" }, "Nothing is waiting for a decision.")
          : h("table", null,
              h("thead", null, h("tr", null, h("th", null, "run"), h("th", null, "task"), h("th", null, "plan"),
                h("th", null, "requested"), h("th", null, "deadline"), h("th", null, "time left"))),
              h("tbody", null, page.items.map((a) =>
                h("tr", { "data-run": a.run_id },
                  h("td", null, h("a", { href: `#/runs/${encodeURIComponent(a.run_id)}` }, `decide on ${a.run_id.slice(0, 8)}`)),
                  h("td", null, h("a", { href: taskHref(a.task_id) }, a.task_id.slice(0, 8))),
                  h("td", null, h("details", null, h("summary", null, `version ${a.plan_version} `, badge(a.status)), planSteps(a.plan))),
                  h("td", null, when(a.requested_at)),
                  h("td", null, when(a.deadline)),
                  h("td", null, h("span", { class: "countdown", "data-deadline": a.deadline }, countdown(a.deadline))))))),
        h("p", { class: "muted" }, `${page.total} waiting`)
      );
      tick();
    } catch (err) {
      onError(err);
    }
  };
  refresh();
  const timer = setInterval(tick, 1000);
  const unfollow = follow("/ws/stream", debounce(refresh, 300));
  return () => {
    clearInterval(timer);
    unfollow();
  };
}
