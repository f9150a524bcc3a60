// valqd's dashboard: polls the JSON API once a second and draws what it returns.
// Every name, body and reason is put on the page as text (textContent), never as HTML.
"use strict";

const POLL_MS = 1000;
const HISTORY = 40; // samples kept per queue for the rate charts
const TIME_FIELD = {ready: "enqueued_at", inflight: "lease_deadline", delayed: "due_at", dlq: "dead_at"};
const TIME_HEADING = {ready: "enqueued", inflight: "lease ends", delayed: "due", dlq: "dead since"};
const PURGE_PART = {ready: "main", inflight: "main", delayed: "delayed", dlq: "dlq"};
const RATES = [["pushed", "pushed"], ["delivered", "delivered"], ["acked", "acked"], ["dead_lettered", "to DLQ"]];

const view = {queue: null, peek: "ready", cursor: "0", pages: [], filter: ""};
const history = new Map(); // queue path -> [{t, counters...}]
let timer = null;

function $(id) { return document.getElementById(id); }

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

async function api(method, path, body) {
  const init = {method, headers: {}, cache: "no-store"};
  if (method !== "GET") {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body || {});
  }
  // location.origin, not a relative URL: a page opened as http://user:pass@host/ has
  // credentials in its own URL, which fetch() refuses; the browser sends them anyway
  const response = await fetch(location.origin + path, init);
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) {
    const error = new Error(data ? data.error + " " + data.message : "HTTP " + response.status);
    error.code = data ? data.error : "";
    throw error;
  }
  return data;
}

function setStatus(text, bad) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("bad", Boolean(bad));
}

function age(ms) {
  if (!ms) return "–";
  const s = ms / 1000;
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
  if (s < 3600) return (s / 60).toFixed(0) + " min";
  if (s < 86400) return (s / 3600).toFixed(1) + " h";
  return (s / 86400).toFixed(1) + " d";
}

function clock(ms) {
  if (!ms) return "–";
  const d = new Date(ms);
  return d.toLocaleDateString() === new Date().toLocaleDateString() ? d.toLocaleTimeString() : d.toLocaleString();
}

function remember(queue) {
  const samples = history.get(queue.path) || [];
  const sample = {t: Date.now()};
  for (const [key] of RATES) sample[key] = queue[key];
  samples.push(sample);
  if (samples.length > HISTORY + 1) samples.shift();
  history.set(queue.path, samples);
}

function rates(path, key) {
  const samples = history.get(path) || [];
  const out = [];
  for (let i = 1; i < samples.length; i++) {
    const seconds = (samples[i].t - samples[i - 1].t) / 1000;
    const delta = samples[i][key] - samples[i - 1][key];
    out.push(seconds > 0 && delta >= 0 ? delta / seconds : 0);
  }
  return out;
}

function sparkline(values, width, height, className) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("class", "spark " + (className || ""));
  const top = Math.max(1, ...values);
  const step = width / (Math.min(HISTORY, Math.max(12, values.length)) - 1);
  const start = width - step * (values.length - 1);
  const points = values.map((v, i) => `${(start + i * step).toFixed(1)},${(height - 1 - (v / top) * (height - 3)).toFixed(1)}`);
  if (points.length > 1) {
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.join(" "));
    svg.appendChild(line);
  }
  return svg;
}

function rate(values) {
  const last = values.length ? values[values.length - 1] : 0;
  return last >= 100 ? last.toFixed(0) : last.toFixed(1);
}

// -- the list of queues ---------------------------------------------------------------------

async function drawOverview() {
  const params = new URLSearchParams({count: "100", cursor: view.cursor});
  if (view.filter) params.set("match", view.filter.includes("*") || view.filter.includes("?") ? view.filter : `*${view.filter}*`);
  const page = await api("GET", "/api/queues?" + params);
  const body = $("queues").tBodies[0];
  const rows = [];
  for (const q of page.queues) {
    remember(q);
    const row = el("tr");
    row.dataset.queue = q.name;
    const name = el("td", null, "name");
    const link = el("a", q.name);
    link.href = "#/q/" + q.path;
    name.appendChild(link);
    row.appendChild(name);
    for (const key of ["ready", "inflight", "delayed", "dlq"]) {
      row.appendChild(el("td", q[key], "num " + key + (key === "dlq" && q.dlq ? " warn" : "")));
    }
    row.appendChild(el("td", age(q.oldest_ready_age_ms), "num oldest"));
    const chart = el("td", null, "chart");
    const pushed = rates(q.path, "pushed"), acked = rates(q.path, "acked");
    chart.appendChild(sparkline(pushed, 90, 22, "pushed"));
    chart.appendChild(sparkline(acked, 90, 22, "acked"));
    chart.appendChild(el("span", `${rate(pushed)} / ${rate(acked)}`, "rate"));
    row.appendChild(chart);
    row.appendChild(el("td", q.paused ? "paused" : "active", q.paused ? "state paused" : "state"));
    rows.push(row);
  }
  body.replaceChildren(...rows);
  $("empty").hidden = rows.length > 0 || view.cursor !== "0";
  $("more").hidden = page.cursor === "0";
  $("more").dataset.cursor = page.cursor;
  $("total").textContent = rows.length ? `${rows.length} queue${rows.length === 1 ? "" : "s"} on this page` : "";
}

// -- one queue --------------------------------------------------------------------------------

async function drawQueue() {
  const path = view.queue;
  const q = await api("GET", "/api/queues/" + path);
  remember(q);
  $("queue-name").textContent = q.name;
  $("crumb").textContent = "› " + q.name;
  $("queue-state").textContent = q.paused ? "paused" : "active";
  $("queue-state").classList.toggle("paused", Boolean(q.paused));
  $("pause").hidden = Boolean(q.paused);
  $("resume").hidden = !q.paused;
  $("redrive").disabled = !q.dlq;
  for (const key of ["ready", "inflight", "delayed", "dlq", "blocked"]) $("count-" + key).textContent = q[key];
  $("count-oldest").textContent = age(q.oldest_ready_age_ms);
  $("count-dlq").classList.toggle("warn", q.dlq > 0);
  const charts = [];
  for (const [key, label] of RATES) {
    const values = rates(path, key);
    const box = el("div", null, "chartbox");
    box.appendChild(el("span", label + " per s", "label"));
    box.appendChild(el("span", rate(values), "value"));
    box.appendChild(sparkline(values, 220, 44, key));
    charts.push(box);
  }
  $("charts").replaceChildren(...charts);
  $("purge").textContent = `Purge ${PURGE_PART[view.peek]}…`;
  const settings = [];
  const shown = ["visibility_timeout", "max_delivery_attempts", "retention_period", "backoff", "dedup_window", "maxlen",
                 "pushed", "delivered", "acked", "nacked", "expired", "dead_lettered", "dropped", "deduplicated", "redriven", "cancelled"];
  for (const key of shown) {
    settings.push(el("dt", key.replace(/_/g, " ")));
    settings.push(el("dd", q[key]));
  }
  $("settings").replaceChildren(...settings);

  const peek = await api("GET", `/api/queues/${path}/peek?state=${view.peek}&count=50`);
  $("time-heading").textContent = TIME_HEADING[view.peek];
  const rows = peek.messages.map((m) => {
    const row = el("tr", null, "message");
    row.dataset.id = m.id;
    row.appendChild(el("td", m.id, "num"));
    const body = el("td", null, "body");
    if (m.encoding === "base64") body.appendChild(el("span", "base64", "tag"));
    body.appendChild(el("span", m.body.length > 300 ? m.body.slice(0, 300) + "…" : m.body, "text"));
    row.appendChild(body);
    row.appendChild(el("td", m.attempts, "num"));
    row.appendChild(el("td", m.priority, "num"));
    row.appendChild(el("td", clock(m[TIME_FIELD[view.peek]])));
    row.appendChild(el("td", m.last_reason === null ? "" : m.last_reason, "reason"));
    return row;
  });
  $("messages").tBodies[0].replaceChildren(...rows);
  $("no-messages").hidden = rows.length > 0;
}

async function act(button, method, suffix, body) {
  button.disabled = true;
  try {
    await api(method, `/api/queues/${view.queue}${suffix}`, body);
  } catch (error) {
    setStatus(error.message, true);
  } finally {
    button.disabled = false;
  }
  refresh();
}

// -- the loop ---------------------------------------------------------------------------------

function route() {
  const match = location.hash.match(/^#\/q\/(.+)$/);
  view.queue = match ? match[1] : null;
  $("overview").hidden = Boolean(view.queue);
  $("queue").hidden = !view.queue;
  if (!view.queue) {
    $("crumb").textContent = "";
    document.title = "valqd";
  } else {
    document.title = "valqd › " + decodeURIComponent(view.queue);
  }
  refresh();
}

async function refresh() {
  clearTimeout(timer);
  try {
    if (view.queue) await drawQueue(); else await drawOverview();
    setStatus("live · " + new Date().toLocaleTimeString(), false);
  } catch (error) {
    setStatus(error.message, true);
    if (error.code === "NOQUEUE" && view.queue) $("queue-name").textContent = decodeURIComponent(view.queue) + " (deleted)";
  }
  timer = setTimeout(refresh, POLL_MS);
}

function start() {
  $("filter").addEventListener("input", () => {
    view.filter = $("filter").value.trim();
    view.cursor = "0";
    refresh();
  });
  $("more").addEventListener("click", () => {
    view.cursor = $("more").dataset.cursor || "0";
    refresh();
  });
  for (const tab of $("tabs").querySelectorAll("button")) {
    tab.addEventListener("click", () => {
      view.peek = tab.dataset.state;
      for (const other of $("tabs").querySelectorAll("button")) other.classList.toggle("active", other === tab);
      refresh();
    });
  }
  $("pause").addEventListener("click", () => act($("pause"), "POST", "/pause"));
  $("resume").addEventListener("click", () => act($("resume"), "POST", "/resume"));
  $("redrive").addEventListener("click", () => act($("redrive"), "POST", "/redrive"));
  $("purge").addEventListener("click", () => {
    const part = PURGE_PART[view.peek];
    const name = decodeURIComponent(view.queue);
    if (window.confirm(`Remove every ${part === "main" ? "ready and in-flight" : part} message of queue "${name}"? This cannot be undone.`)) {
      act($("purge"), "POST", "/purge", {part});
    }
  });
  window.addEventListener("hashchange", route);
  route();
}

document.addEventListener("DOMContentLoaded", start);
