// One run, live: its status and progress, its plan and every version of it, the decision
// (approve, reject, send back for a revision, with feedback), cancel, the event log and the
// artifacts. The run's stream is replayed from its first event, then followed.

import { TERMINAL, api, badge, countdown, debounce, download, follow, get, h, json, planSteps, seconds, taskHref, when } from "./lib.js";

function summary(event) {
  const d = event.data || {};
  switch (event.event_type) {
    case "progress":
      return d.partial ? `${d.current_phase ?? ""} (streaming)` : `step ${d.step}/${d.total_steps} ${d.title ?? ""} · ${d.progress_percent}%`;
    case "plan_ready":
    case "approval_required":
      return `plan version ${d.version ?? 1}${d.timeout_s ? `, decide within ${d.timeout_s} s` : ""}`;
    case "approved":
    case "rejected":
      return d.feedback ? `feedback: ${d.feedback}` : "";
    case "revision_requested":
      return `round ${d.round}: ${d.feedback ?? ""}`;
    case "artifact":
      return `${d.name} (${d.size} bytes, ${d.content_type})`;
    case "completion":
      return `done in ${seconds(d.duration)}`;
    case "failure":
      return d.error ?? "";
    case "cancelled":
      return d.reason ?? "";
    case "timeout":
      return `phase ${d.phase}`;
    default:
      return event.message ?? "";
  }
}

export function runView(root, runId, onError) {
  const enc = encodeURIComponent(runId);
  const title = h("h1", null, "Run");
  const status = h("span", { id: "run-status" });
  const fill = h("div");
  const progressText = h("span", { id: "progress-text" }, "0%");
  const details = h("dl", { class: "kv" });
  const plan = h("div", { id: "plan" }, h("p", { class: "muted" }, "No plan yet."));
  const versions = h("div", { id: "plan-versions" });
  const deadlineText = h("p", { id: "decision-deadline", class: "muted" });
  const feedback = h("textarea", { id: "feedback", placeholder: "feedback for the agent (optional)", maxlength: 10000 });
  const decide = (approved, revise) => async () => {
    const body = { approved, revise };
    if (feedback.value.trim()) body.feedback = feedback.value.trim();
    try {
      await api("POST", `/api/runs/${enc}/approve`, body);
      feedback.value = "";
      refresh();
    } catch (err) {
      onError(err);
    }
  };
  const decision = h(
    "section",
    { class: "card", id: "decision", hidden: true },
    h("h2", null, "Decision"),
    deadlineText,
    feedback,
    h("div", { class: "actions" },
      h("button", { id: "approve", type: "button", onclick: decide(true, false) }, "Approve"),
      h("button", { id: "revise", type: "button", class: "secondary", onclick: decide(false, true) }, "Request a revision"),
      h("button", { id: "reject", type: "button", class: "danger", onclick: decide(false, false) }, "Reject"))
  );
  const cancel = h("button", { id: "cancel", type: "button", class: "secondary", hidden: true }, "Cancel run");
  cancel.addEventListener("click", async () => {
    try {
      await api("POST", `/api/runs/${enc}/cancel`, { reason: "cancelled from the dashboard" });
      refresh();
    } catch (err) {
      onError(err);
    }
  });
  const artifacts = h("div", { id: "artifacts" }, h("p", { class: "muted" }, "None."));
  const results = h("div", { id: "results" });
  const log = h("tbody");
  root.append(
    title,
    h("section", { class: "card" },
      h("div", { class: "progress" }, status, h("div", { class: "bar", id: "progress" }, fill), progressText, cancel),
      details),
    decision,
    h("div", { class: "grid" },
      h("section", { class: "card" }, h("h2", null, "Plan"), plan, versions),
      h("section", { class: "card" }, h("h2", null, "Artifacts"), artifacts, results)),
    h("section", { class: "card" }, h("h2", null, "Events"),
      h("div", { class: "log" }, h("table", { id: "events" },
        h("thead", null, h("tr", null, h("th", null, "seq"), h("th", null, "time"), h("th", null, "event"), h("th", null, "detail"))),
        log)))
  );

  let deadline = null;
  let taskName = null;
  const setProgress = (percent) => {
    const p = Math.max(0, Math.min(100, Number(percent) || 0));
    fill.style.width = `${p}%`;
    progressText.textContent = `${Math.round(p)}%`;
  };

  const refreshRun = async () => {
    try {
      const run = await get(`/api/runs/${enc}`);
      if (taskName === null) {
        taskName = await get(`/api/tasks/${encodeURIComponent(run.task_id)}`).then((t) => t.name, () => "its task");
      }
      title.replaceChildren(`Run ${run.run_number} of `, h("a", { href: taskHref(run.task_id) }, taskName), " ", h("span", { class: "muted mono" }, run.id));
      status.replaceChildren(badge(run.status));
      setProgress(run.progress);
      decision.hidden = run.status !== "awaiting_approval";
      cancel.hidden = TERMINAL.has(run.status);
      const a = run.approval;
      details.replaceChildren(
        h("dt", null, "agent"), h("dd", null, run.agent ?? "—"),
        h("dt", null, "started"), h("dd", null, when(run.started_at)),
        h("dt", null, "completed"), h("dd", null, when(run.completed_at)),
        h("dt", null, "duration"), h("dd", null, seconds(run.duration)),
        h("dt", null, "decision"), h("dd", { id: "run-decision" }, a ? `${a.approved ? "approved" : a.revise ? "revision requested" : "rejected"}${a.decided_by ? ` by ${a.decided_by.name}` : ""}${a.feedback ? `: “${a.feedback}”` : ""}` : "—"),
        ...(run.error_message ? [h("dt", null, "error"), h("dd", { class: "error-text" }, run.error_message)] : [])
      );
      results.replaceChildren(...(run.results ? [h("h2", null, "Results"), json(run.results)] : []));
      if (run.status === "awaiting_approval") refreshDeadline(run.task_id);
      else deadline = null;
    } catch (err) {
      onError(err);
    }
  };
  const refreshDeadline = async (taskId) => {
    try {
      const page = await get(`/api/approvals?status=pending&task_id=${encodeURIComponent(taskId)}&limit=100`);
      const mine = page.items.find((item) => item.run_id === runId);
      deadline = mine ? mine.deadline : null;
    } catch {
      deadline = null;
    }
  };
  const refreshPlans = async () => {
    try {
      const list = await get(`/api/runs/${enc}/plans`);
      if (!list.length) return;
      const latest = list[list.length - 1];
      plan.replaceChildren(h("p", null, `Version ${latest.version} `, badge(latest.status)), planSteps(latest.plan));
      versions.replaceChildren(
        ...list.slice(0, -1).reverse().map((v) =>
              h("details", { class: "plan-version" },
                h("summary", null, `Version ${v.version} · ${v.status}${v.decision && v.decision.feedback ? ` · “${v.decision.feedback}”` : ""}`),
                planSteps(v.plan)))
      );
    } catch (err) {
      onError(err);
    }
  };
  const refreshArtifacts = async () => {
    try {
      const list = await get(`/api/runs/${enc}/artifacts`);
      artifacts.replaceChildren(
        list.length
          ? h("ul", null, list.map((a) =>
              h("li", null,
                h("button", { type: "button", class: "secondary download", "data-name": a.name,
                  onclick: () => download(`/api/runs/${enc}/artifacts/${encodeURIComponent(a.name)}`, a.name).catch(onError) }, a.name),
                h("span", { class: "muted" }, ` ${a.size} bytes · ${a.content_type}`))))
          : h("p", { class: "muted" }, "None.")
      );
    } catch (err) {
      onError(err);
    }
  };
  const refresh = debounce(refreshRun, 150);
  const plansLater = debounce(refreshPlans, 150);
  const artifactsLater = debounce(refreshArtifacts, 150);

  const onEvent = (event) => {
    log.append(h("tr", { "data-seq": event.seq, "data-type": event.event_type },
      h("td", null, event.seq), h("td", null, when(event.timestamp)), h("td", null, event.event_type), h("td", null, summary(event))));
    const d = event.data || {};
    if (event.event_type === "progress" && typeof d.progress_percent === "number") setProgress(d.progress_percent);
    if (["plan_ready", "approval_required", "approved", "rejected", "revision_requested"].includes(event.event_type)) plansLater();
    if (event.event_type === "artifact" || TERMINAL.has(event.event_type) || event.event_type === "completion") artifactsLater();
    refresh();
  };
  const ticker = setInterval(() => {
    if (!deadline) {
      deadlineText.textContent = "";
      return;
    }
    const left = countdown(deadline);
    deadlineText.textContent = left === "expired" ? "The deadline has passed." : `Decide by ${when(deadline)}: ${left}.`;
  }, 1000);

  refreshRun();
  refreshPlans();
  refreshArtifacts();
  const unfollow = follow(`/ws/runs/${enc}`, onEvent, { resume: true });
  return () => {
    clearInterval(ticker);
    unfollow();
  };
}
