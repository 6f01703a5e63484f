// Tasks and runs, live: the lists (with the form that creates a task), and one task's page
// (its settings, its runs, and the button that starts one).

import { api, badge, debounce, follow, get, h, json, runLink, seconds, taskHref, when } from "./lib.js";

const DEFAULT_CONFIG = '{"steps": 3, "step_delay_ms": 500, "artifact": true}';

function taskForm(onError) {
  const name = h("input", { id: "task-name", type: "text", required: true, maxlength: 200, placeholder: "e.g. nightly report" });
  const agent = h("input", { id: "task-agent", type: "text", placeholder: "scripted (the server's default)" });
  const config = h("textarea", { id: "task-config", spellcheck: "false" });
  config.value = DEFAULT_CONFIG;
  const approval = h("input", { id: "task-approval", type: "checkbox", checked: true });
  const timeout = h("input", { id: "task-approval-timeout", type: "number", min: 1, max: 86400, value: 300 });
  const submit = async (e) => {
    e.preventDefault();
    let agentConfig;
    try {
      agentConfig = config.value.trim() ? JSON.parse(config.value) : {};
    } catch (err) {
      onError(new Error(`agent config is not JSON: ${err.message}`));
      return;
    }
    const body = {
      name: name.value.trim(),
      agent_config: agentConfig,
      require_approval: approval.checked,
      approval_timeout_s: Number(timeout.value),
    };
    if (agent.value.trim()) body.agent = agent.value.trim();
    try {
      const task = await api("POST", "/api/tasks", body);
      location.hash = taskHref(task.id);
    } catch (err) {
      onError(err);
    }
  };
  return h(
    "form",
    { class: "stack", id: "create-task", onsubmit: submit },
    h("label", { for: "task-name" }, "Name"), name,
    h("label", { for: "task-agent" }, "Agent kind"), agent,
    h("label", { for: "task-config" }, "Agent config (JSON)"), config,
    h("label", { for: "task-approval" }, "Plan needs approval"), h("div", null, approval),
    h("label", { for: "task-approval-timeout" }, "Approval timeout (s)"), timeout,
    h("span"), h("div", null, h("button", { type: "submit" }, "Create task"))
  );
}

function runsTable(runs, { names = null } = {}) {
  const withTask = names !== null;
  return h(
    "table",
    null,
    h("thead", null, h("tr", null, h("th", null, "run"), withTask ? h("th", null, "task") : null, h("th", null, "status"),
      h("th", null, "progress"), h("th", null, "duration"), h("th", null, "created"))),
    h(
      "tbody",
      null,
      runs.map((run) =>
        h("tr", { "data-run": run.id },
          h("td", null, runLink(run)),
          withTask ? h("td", null, h("a", { href: taskHref(run.task_id) }, names.get(run.task_id) ?? run.task_id.slice(0, 8))) : null,
          h("td", { class: "status" }, badge(run.status)),
          h("td", null, `${Math.round(run.progress ?? 0)}%`),
          h("td", null, seconds(run.duration)),
          h("td", null, when(run.created_at)))
      )
    )
  );
}

export function homeView(root, onError) {
  const tasks = h("div", { id: "tasks" }, h("p", { class: "muted" }, "Loading…"));
  const runs = h("div", { id: "runs" }, h("p", { class: "muted" }, "Loading…"));
  const live = h("span", { class: "muted" }, "");
  root.append(
    h("h1", null, "Tasks & runs ", live),
    h("div", { class: "grid" },
      h("section", { class: "card" }, h("h2", null, "Tasks"), tasks),
      h("section", { class: "card" }, h("h2", null, "Latest runs"), runs)),
    h("section", { class: "card" }, h("h2", null, "New task"), taskForm(onError))
  );
  const refresh = async () => {
    try {
      const [taskPage, runPage] = await Promise.all([get("/api/tasks?limit=20"), get("/api/runs?limit=20")]);
      tasks.replaceChildren(
        taskPage.items.length === 0
          ? h("p", { class: "muted" }, "No task yet: create one below.")
          : h("table", null,
              h("thead", null, h("tr", null, h("th", null, "name"), h("th", null, "agent"), h("th", null, "status"),
                h("th", null, "runs"), h("th", null, "success"), h("th", null, "last run"))),
              h("tbody", null, taskPage.items.map((t) =>
                h("tr", { "data-task": t.id },
                  h("td", null, h("a", { href: taskHref(t.id) }, t.name)),
                  h("td", null, t.agent),
                  h("td", { class: "status" }, badge(t.status)),
                  h("td", null, t.total_runs),
                  h("td", null, t.total_runs ? `${Math.round(t.success_rate * 100)}%` : "—"),
                  h("td", null, when(t.last_run_at)))))),
        h("p", { class: "muted" }, `${taskPage.total} task(s)`)
      );
      const names = new Map(taskPage.items.map((t) => [t.id, t.name]));
      runs.replaceChildren(runPage.items.length ? runsTable(runPage.items, { names }) : h("p", { class: "muted" }, "No run yet."));
    } catch (err) {
      onError(err);
    }
  };
  refresh();
  return follow("/ws/stream", debounce(refresh, 300), { onState: (s) => (live.textContent = s === "live" ? "· live" : "· reconnecting") });
}

export function taskView(root, taskId, onError) {
  const head = h("div", null, h("p", { class: "muted" }, "Loading…"));
  const runs = h("div", { id: "task-runs" });
  const start = h("button", { id: "start-run", type: "button" }, "Start a run");
  start.addEventListener("click", async () => {
    start.disabled = true;
    try {
      const run = await api("POST", "/api/runs", { task_id: taskId });
      location.hash = `#/runs/${encodeURIComponent(run.id)}`;
    } catch (err) {
      onError(err);
      start.disabled = false;
    }
  });
  root.append(head, h("section", { class: "card" }, h("h2", null, "Runs"), h("div", { class: "actions" }, start), runs));
  const refresh = async () => {
    try {
      const [task, page] = await Promise.all([
        get(`/api/tasks/${encodeURIComponent(taskId)}`),
        get(`/api/runs?task_id=${encodeURIComponent(taskId)}&limit=50`),
      ]);
      head.replaceChildren(
        h("h1", null, task.name, " ", badge(task.status)),
        h("section", { class: "card" },
          h("dl", { class: "kv" },
            h("dt", null, "id"), h("dd", { class: "mono" }, task.id),
            h("dt", null, "agent"), h("dd", null, task.agent),
            h("dt", null, "agent config"), h("dd", null, json(task.agent_config)),
            h("dt", null, "approval"), h("dd", null, task.require_approval ? `required, within ${task.approval_timeout_s} s (then ${task.on_approval_timeout})` : "not required"),
            h("dt", null, "runs"), h("dd", null, `${task.total_runs} finished, ${task.successful_runs} completed, ${task.failed_runs} failed`),
            h("dt", null, "last error"), h("dd", null, task.last_error ?? "—"),
            h("dt", null, "created"), h("dd", null, when(task.created_at))))
      );
      runs.replaceChildren(page.items.length ? runsTable(page.items) : h("p", { class: "muted" }, "No run yet."));
    } catch (err) {
      onError(err);
    }
  };
  refresh();
  return follow(`/ws/tasks/${encodeURIComponent(taskId)}`, debounce(refresh, 300));
}
