// Metrics: the overall summary, and charts over time of duration p95, success rate, tokens and
// cost, from /api/metrics/series (success rate: the summary of each of a few windows).

import { lineChart } from "./charts.js";
import { get, h, seconds } from "./lib.js";

const RANGES = {
  "1h": { ms: 3600e3, bucket: "1m", label: "last hour" },
  "24h": { ms: 24 * 3600e3, bucket: "1h", label: "last 24 hours" },
  "7d": { ms: 7 * 24 * 3600e3, bucket: "1d", label: "last 7 days" },
};
const WINDOWS = 12; // success rate: one summary per window

const stat = (label, value, id) => h("div", { class: "stat", id }, h("b", null, value), label);
const q = (params) => new URLSearchParams(params).toString();

async function series(name, since, until, bucket) {
  const page = await get(`/api/metrics/series?${q({ name, since, until, bucket })}`);
  return page.points;
}

async function successRate(sinceMs, untilMs) {
  const step = (untilMs - sinceMs) / WINDOWS;
  const windows = Array.from({ length: WINDOWS }, (_, i) => [sinceMs + i * step, sinceMs + (i + 1) * step]);
  const reports = await Promise.all(
    windows.map(([a, b]) => get(`/api/metrics/summary?${q({ since: new Date(a).toISOString(), until: new Date(b).toISOString() })}`))
  );
  return reports
    .map((r, i) => ({ t: new Date(windows[i][1]), total: r.runs.total, v: r.runs.success_rate * 100 }))
    .filter((p) => p.total > 0);
}

function chartCard(id, title, chart, legend) {
  return h("section", { class: "card", id }, h("h2", null, title), legend ? h("div", { class: "legend" }, legend) : null, chart);
}

export function metricsView(root, onError) {
  const select = h("select", { id: "range" }, Object.entries(RANGES).map(([key, r]) => h("option", { value: key }, r.label)));
  const summary = h("section", { class: "card", id: "summary" }, h("p", { class: "muted" }, "Loading…"));
  const charts = h("div", { class: "grid", id: "charts" });
  root.append(h("h1", null, "Metrics ", select), summary, charts);

  let retry = null;
  const draw = async () => {
    clearTimeout(retry);
    const range = RANGES[select.value];
    const untilMs = Date.now();
    const sinceMs = untilMs - range.ms;
    const since = new Date(sinceMs).toISOString();
    const until = new Date(untilMs).toISOString();
    try {
      const [report, duration, prompt, completion, cost, success] = await Promise.all([
        get(`/api/metrics/summary?${q({ since, until })}`),
        series("duration", since, until, range.bucket),
        series("tokens_prompt", since, until, range.bucket),
        series("tokens_completion", since, until, range.bucket),
        series("cost_usd", since, until, range.bucket),
        successRate(sinceMs, untilMs),
      ]);
      const m = report.metrics;
      const runs = report.runs;
      summary.replaceChildren(
        h("h2", null, `Summary, ${range.label}`),
        stat("runs finished", runs.total, "stat-runs"),
        stat("success rate", runs.total ? `${Math.round(runs.success_rate * 100)}%` : "—", "stat-success"),
        stat("completed / failed", `${runs.completed} / ${runs.failed}`),
        stat("rejected / cancelled / timeout", `${runs.rejected} / ${runs.cancelled} / ${runs.timeout}`),
        stat("duration p95", m.duration ? seconds(m.duration.p95) : "—", "stat-p95"),
        stat("tokens", m.tokens_prompt || m.tokens_completion ? String((m.tokens_prompt?.sum ?? 0) + (m.tokens_completion?.sum ?? 0)) : "—"),
        stat("cost", m.cost_usd ? `$${m.cost_usd.sum.toFixed(4)}` : "—")
      );
      const opts = { since, until };
      const pts = (points, pick) => points.map((p) => ({ t: p.t, v: pick(p) }));
      charts.replaceChildren(
        chartCard("chart-duration", "Duration p95", lineChart([{ label: "p95", points: pts(duration, (p) => p.p95) }], { ...opts, format: seconds })),
        chartCard("chart-success", "Success rate", lineChart([{ label: "success", points: success }], { ...opts, format: (v) => `${Math.round(v)}%` })),
        chartCard(
          "chart-tokens",
          "Tokens",
          lineChart([{ label: "prompt", points: pts(prompt, (p) => p.sum) }, { label: "completion", points: pts(completion, (p) => p.sum) }], { ...opts, format: (v) => String(Math.round(v)) }),
          [h("span", { class: "s0" }, "● prompt"), h("span", { class: "s1" }, "● completion")]
        ),
        chartCard("chart-cost", "Cost (USD)", lineChart([{ label: "cost", points: pts(cost, (p) => p.sum) }], { ...opts, format: (v) => `$${v.toFixed(4)}` }))
      );
      onError(null); // a load that failed before (the gateway restarting) is forgotten
    } catch (err) {
      onError(err);
      retry = setTimeout(draw, 2000); // tried again soon, not only at the next refresh
    }
  };
  select.addEventListener("change", draw);
  draw();
  const timer = setInterval(draw, 15000);
  return () => {
    clearInterval(timer);
    clearTimeout(retry);
  };
}
