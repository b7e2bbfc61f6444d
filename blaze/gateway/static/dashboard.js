// Blaze dashboard: follows /dashboard/events (one snapshot per second) and draws plain SVG.
// No library, nothing from a CDN; every value from the server is set as text, never as HTML.
"use strict";

const HISTORY = 300; // points kept per series: five minutes at one snapshot a second
const COLORS = ["#58a6ff", "#3fb950", "#d29922", "#bc8cff", "#f85149", "#39c5cf", "#ff7b29"];
const history = { t: [], in: [], out: [], p50: [], p90: [], p99: [], fill: [], lag: [], queues: {} };

function $(id) { return document.getElementById(id); }

function fmt(x, digits = 1) {
  if (x === null || x === undefined || Number.isNaN(x)) return "-";
  if (Math.abs(x) >= 10000) return Math.round(x).toLocaleString("en-US");
  return Number(x).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

function secs(x) {
  if (x === null || x === undefined) return "-";
  return x < 1 ? `${Math.round(x * 1000)} ms` : `${x.toFixed(2)} s`;
}

function ago(ts, now) {
  if (!ts) return "";
  const s = Math.max(0, now - ts);
  return s < 90 ? `${Math.round(s)}s ago` : `${Math.round(s / 60)}m ago`;
}

function push(arr, v) {
  arr.push(v);
  if (arr.length > HISTORY) arr.shift();
}

function svg(tag, attrs, parent) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (parent) parent.appendChild(el);
  return el;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

// A line chart of series [{name, values}] over history.t, y from 0.
function chart(el, series, unit = "") {
  const w = el.clientWidth || 600, h = el.clientHeight || 180;
  const left = 44, right = 8, top = 18, bottom = 18;
  el.setAttribute("viewBox", `0 0 ${w} ${h}`);
  while (el.firstChild) el.removeChild(el.firstChild);
  const n = history.t.length;
  let max = 0;
  for (const s of series) for (const v of s.values) if (v !== null && v > max) max = v;
  const step = niceMax((max || 1) / 4);
  const ticks = Math.max(1, Math.ceil((max || 1) / step - 1e-9));
  max = step * ticks;
  const x = (i) => left + ((HISTORY - n + i) / (HISTORY - 1)) * (w - left - right);
  const y = (v) => top + (1 - v / max) * (h - top - bottom);
  for (let k = 0; k <= ticks; k++) {
    const v = step * k, yy = y(v);
    svg("line", { x1: left, x2: w - right, y1: yy, y2: yy, class: "grid" }, el);
    const label = svg("text", { x: left - 6, y: yy + 3, "text-anchor": "end" }, el);
    label.textContent = fmt(v, step < 0.1 ? 3 : step < 1 ? 2 : 0) + unit;
  }
  const xl = svg("text", { x: left, y: h - 4 }, el);
  xl.textContent = "-5 min";
  const xr = svg("text", { x: w - right, y: h - 4, "text-anchor": "end" }, el);
  xr.textContent = "now";
  let lx = left + 8;
  series.forEach((s, si) => {
    let d = "";
    s.values.forEach((v, i) => {
      if (v === null || v === undefined) return;
      d += (d ? "L" : "M") + x(i).toFixed(1) + "," + y(v).toFixed(1);
    });
    if (d) svg("path", { d, class: "series", stroke: s.color || COLORS[si % COLORS.length] }, el);
    svg("rect", { x: lx, y: 4, width: 10, height: 3, fill: s.color || COLORS[si % COLORS.length] }, el);
    const t = svg("text", { x: lx + 14, y: 9 }, el);
    t.textContent = s.name;
    lx += 14 + (t.getComputedTextLength ? t.getComputedTextLength() : 6 * s.name.length) + 16;
  });
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  if (text instanceof Node) td.appendChild(text); else td.textContent = text;
  tr.appendChild(td);
  return td;
}

function fill(tableId, rows, empty) {
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren();
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = cell(tr, empty, "empty");
    td.colSpan = $(tableId).querySelectorAll("th").length;
    body.appendChild(tr);
    return;
  }
  for (const r of rows) body.appendChild(r);
}

function progress(done, total) {
  const wrap = document.createElement("div");
  const bar = document.createElement("div");
  bar.className = "bar";
  const inner = document.createElement("span");
  inner.style.width = `${total ? (100 * done) / total : 0}%`;
  bar.appendChild(inner);
  wrap.appendChild(bar);
  const label = document.createElement("span");
  label.className = "muted small";
  label.textContent = `${done} / ${total}`;
  wrap.appendChild(label);
  return wrap;
}

function badge(state) {
  const b = document.createElement("span");
  b.className = `badge ${state}`;
  b.textContent = state;
  return b;
}

function update(s) {
  const now = s.at;
  $("namespace").textContent = s.namespace;
  $("updated").textContent = "updated " + new Date(now * 1000).toLocaleTimeString();
  const problem = $("problem");
  problem.hidden = !s.problem;
  problem.textContent = s.problem || "";
  $("k-in").textContent = fmt(s.rates.in_per_s);
  $("k-out").textContent = fmt(s.rates.out_per_s);
  $("k-tokens").textContent = fmt(s.rates.tokens_per_s, 0);
  $("k-lag").textContent = fmt(s.lag, 0);
  $("k-succeeded").textContent = fmt(s.totals.succeeded, 0);
  $("k-failed").textContent = fmt(s.totals.failed, 0);
  $("k-dead").textContent = fmt(s.totals.dead, 0);
  $("k-fill").textContent = s.batch_fill === null ? "-" : fmt(s.batch_fill * 100, 0);
  $("k-fill-unit").textContent = s.batch_size_mean ? `% of max (mean ${fmt(s.batch_size_mean)} jobs)` : "% of max";
  const alive = s.workers.filter((w) => w.state === "alive").length;
  $("k-workers").textContent = `${alive}/${s.workers.filter((w) => w.state !== "gone").length}`;

  push(history.t, now);
  push(history.in, s.rates.in_per_s);
  push(history.out, s.rates.out_per_s);
  const e2e = s.latency.e2e;
  push(history.p50, e2e.p50); push(history.p90, e2e.p90); push(history.p99, e2e.p99);
  push(history.fill, s.batch_fill === null ? null : s.batch_fill * 100);
  push(history.lag, s.lag);
  for (const q of Object.keys(s.queues)) if (!history.queues[q]) history.queues[q] = new Array(history.t.length - 1).fill(null);
  for (const [q, arr] of Object.entries(history.queues)) push(arr, q in s.queues ? s.queues[q] : null);

  chart($("c-throughput"), [{ name: "in", values: history.in }, { name: "out", values: history.out, color: "#3fb950" }]);
  chart($("c-latency"), [
    { name: "p50", values: history.p50 },
    { name: "p90", values: history.p90, color: "#d29922" },
    { name: "p99", values: history.p99, color: "#f85149" },
  ]);
  chart($("c-fill"), [{ name: "fill %", values: history.fill, color: "#bc8cff" }]);
  chart($("c-queues"), [
    { name: "lag", values: history.lag, color: "#ff7b29" },
    ...Object.entries(history.queues).map(([q, v], i) => ({ name: q, values: v, color: COLORS[i % COLORS.length] })),
  ]);
  $("latency-line").textContent =
    `queue wait p50 ${secs(s.latency.queue_wait.p50)}, p99 ${secs(s.latency.queue_wait.p99)}; ` +
    `compute p50 ${secs(s.latency.compute.p50)}, p99 ${secs(s.latency.compute.p99)}; ` +
    `open batches ${fmt(s.open_batches, 0)}, paused partitions ${fmt(s.paused_partitions, 0)}`;

  fill("workers", s.workers.filter((w) => w.state !== "gone").map((w) => {
    const tr = document.createElement("tr");
    cell(tr, w.id);
    cell(tr, badge(w.state));
    cell(tr, w.device || "");
    cell(tr, Object.entries(w.models).map(([m, b]) => `${m} (${fmt(b / 1048576)} MB)`).join(", ") || "none loaded");
    cell(tr, w.batch ? `batch of ${w.batch.jobs}, ${ago(w.batch.started_at, now)}` : "idle");
    const last = w.last_batch, o = (last && last.outcome) || {};
    cell(tr, !last ? "" : o.error ? `error: ${o.error}` : `${ago(last.finished_at, now)}: ${o.succeeded || 0} ok, ${o.failed || 0} failed`);
    cell(tr, w.age_s === null ? "" : `${fmt(w.age_s)}s ago`);
    return tr;
  }), "no workers");

  fill("batches", s.batches.map((b) => {
    const tr = document.createElement("tr");
    const c = b.request_counts, done = c.completed + c.failed;
    cell(tr, b.id);
    cell(tr, b.status);
    cell(tr, progress(done, c.total));
    cell(tr, String(c.failed), c.failed ? "bad" : "");
    return tr;
  }), "no OpenAI batches");

  fill("pipelines", (s.pipelines || []).map((r) => {
    const tr = document.createElement("tr");
    cell(tr, r.pipeline);
    cell(tr, r.run_id);
    cell(tr, r.state, r.state === "failed" ? "bad" : r.state === "success" ? "ok" : "");
    cell(tr, progress(r.steps_ended, r.steps));
    return tr;
  }), "no pipeline runs (or Airflow not reachable)");

  fill("queues", Object.entries(s.queues).sort().map(([q, d]) => {
    const tr = document.createElement("tr");
    cell(tr, q);
    cell(tr, fmt(d, 0));
    return tr;
  }), "no queues seen yet");

  const problems = [
    ...s.failures.map((f) => ({ at: f.at, job: f.job_id, what: `failed (${f.model})`, reason: f.reason, cls: "bad" })),
    ...s.dead_letters.map((d) => ({ at: d.at, job: d.job_id || "-", what: `dead-lettered (${d.stage})`, reason: d.reason, cls: "warn" })),
  ].sort((a, b) => (b.at || 0) - (a.at || 0)).slice(0, 10);
  fill("failures", problems.map((p) => {
    const tr = document.createElement("tr");
    cell(tr, ago(p.at, now));
    cell(tr, p.job);
    cell(tr, p.what, p.cls);
    cell(tr, p.reason, "reason");
    return tr;
  }), "no failures");
}

function connect() {
  const conn = $("conn");
  const source = new EventSource("/dashboard/events");
  source.addEventListener("snapshot", (ev) => {
    conn.className = "pill live";
    conn.textContent = "live";
    update(JSON.parse(ev.data));
  });
  source.addEventListener("signed-out", () => {
    source.close();
    window.location.reload();
  });
  source.onerror = () => {
    conn.className = "pill down";
    conn.textContent = "reconnecting";
  };
}

connect();
