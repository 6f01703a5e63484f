// Line charts as inline SVG, drawn from points: no library.

const NS = "http://www.w3.org/2000/svg";
const W = 560;
const H = 200;
const PAD = { left: 56, right: 12, top: 12, bottom: 28 };

function el(tag, attrs, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

const clock = (t) => new Date(t).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });

/**
 * series: [{label, points: [{t: Date|string, v: number}]}] (at most two);
 * format: a value's label. Returns an <svg>.
 */
export function lineChart(series, { format = (v) => String(v), since, until } = {}) {
  const svg = el("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img" });
  const all = series.flatMap((s) => s.points);
  const x0 = since ? new Date(since).getTime() : Math.min(...all.map((p) => new Date(p.t).getTime()));
  const x1 = until ? new Date(until).getTime() : Math.max(...all.map((p) => new Date(p.t).getTime()));
  const yMax = Math.max(0, ...all.map((p) => p.v)) || 1;
  const sx = (t) => PAD.left + ((new Date(t).getTime() - x0) / Math.max(1, x1 - x0)) * (W - PAD.left - PAD.right);
  const sy = (v) => H - PAD.bottom - (v / yMax) * (H - PAD.top - PAD.bottom);
  svg.append(
    el("line", { class: "axis", x1: PAD.left, y1: H - PAD.bottom, x2: W - PAD.right, y2: H - PAD.bottom }),
    el("line", { class: "axis", x1: PAD.left, y1: PAD.top, x2: PAD.left, y2: H - PAD.bottom }),
    el("text", { x: PAD.left - 6, y: PAD.top + 8, "text-anchor": "end" }, format(yMax)),
    el("text", { x: PAD.left - 6, y: H - PAD.bottom, "text-anchor": "end" }, format(0)),
    el("text", { x: PAD.left, y: H - 8 }, clock(x0)),
    el("text", { x: W - PAD.right, y: H - 8, "text-anchor": "end" }, clock(x1))
  );
  if (all.length === 0) {
    svg.append(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no data in this range"));
    return svg;
  }
  series.forEach((s, i) => {
    const pts = s.points.map((p) => `${sx(p.t).toFixed(1)},${sy(p.v).toFixed(1)}`).join(" ");
    svg.append(el("polyline", { class: `line s${i}`, points: pts, fill: "none" }));
    for (const p of s.points) {
      const dot = el("circle", { class: `s${i}`, cx: sx(p.t).toFixed(1), cy: sy(p.v).toFixed(1), r: 3 });
      dot.append(el("title", {}, `${s.label}: ${format(p.v)} at ${new Date(p.t).toLocaleString()}`));
      svg.append(dot);
    }
  });
  return svg;
}
