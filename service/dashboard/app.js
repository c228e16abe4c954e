// The Mantis ops dashboard: a tenant's runs, live, over one connection (the tenant feed,
// GET /v1/events), and the selected run's timeline over a second one.
//
// Plain JavaScript, no framework and no build step: the service serves this file as it is
// in the repository. The tenant token is kept in sessionStorage (this tab only) and sent
// only in the X-Mantis-Token header of fetch() calls that ask for stream tickets; the
// streams themselves (EventSource, which cannot send headers) carry short-lived tickets.
"use strict";

const TOKEN_KEY = "mantis.token";
const ACTIVE = new Set(["queued", "running", "recovering"]);
const TERMINAL_PHASES = new Set(["complete", "halted", "cancelled"]);
// DOM work per animation frame: a replay of thousands of runs is spread over frames
// instead of freezing the tab.
const FRAME_BUDGET = 400;
// EventSource hands an event only to listeners of its exact name. These are the names we
// listen to; an event of any other name leaves a hole in the ids (which have none), and
// the hole is filled from the JSON page of the same log, so nothing is ever missed.
const RUN_EVENT_NAMES = [
  "phase", "terminal", "gap", "step", "extract", "message", "error", "log", "thought",
  "action", "observation", "note", "result", "screenshot", "click", "scroll", "type",
];
const PAGE_FILL_MAX = 1000;

const $ = (id) => document.getElementById(id);

class AuthError extends Error {}
class NotFound extends Error {}

// ---- the API ------------------------------------------------------------------------

let token = null;

async function api(path, init = {}) {
  const resp = await fetch(path, {
    ...init,
    headers: {"X-Mantis-Token": token || "", ...(init.headers || {})},
    cache: "no-store",
    credentials: "omit",
    referrerPolicy: "no-referrer",
  });
  return readJson(resp, path);
}

async function readJson(resp, path) {
  if (resp.status === 401) throw new AuthError("the token was refused");
  if (resp.status === 404) throw new NotFound(path);
  if (!resp.ok) throw new Error(`${path}: HTTP ${resp.status}`);
  return resp.json();
}

function splitId(id) {
  const cut = id.lastIndexOf("-");
  return [id.slice(0, cut), Number(id.slice(cut + 1))];
}

// ---- one followed log (the feed, or a run) -------------------------------------------

// Streams one log with tickets: EventSource resumes by itself with Last-Event-ID; when it
// gives up (its ticket is past its life, an error status), a new ticket is fetched and a
// new EventSource resumes with since=<last id>. Events are deduplicated by id and handed
// on in log order with no hole.
class Follower {
  constructor({ticketPath, eventsPath, names, onEvent, onState, onEnd}) {
    this.ticketPath = ticketPath;
    this.eventsPath = eventsPath;
    this.names = names;
    this.onEvent = onEvent;
    this.onState = onState;
    this.onEnd = onEnd || (() => {});
    this.es = null;
    this.epoch = null;
    this.lastN = 0;
    this.lastId = "";
    this.stopped = false;
    this.attempt = 0;
    this.timer = 0;
    this.held = [];
    this.filling = false;
    this.ticket = "";
  }

  async newTicket() {
    const body = await api(this.ticketPath, {method: "POST"});
    this.ticket = body.ticket;
    return body.ticket;
  }

  async start() {
    if (this.stopped) return;
    this.onState("connecting");
    let ticket;
    try {
      ticket = await this.newTicket();
    } catch (err) {
      if (err instanceof AuthError) { this.stop("closed"); signOut("The token was refused."); return; }
      if (err instanceof NotFound) { this.stop("gone"); return; }
      this.retryLater();
      return;
    }
    if (this.stopped) return;
    let url = `${this.eventsPath}?sse=true&ticket=${encodeURIComponent(ticket)}`;
    if (this.lastId) url += `&since=${encodeURIComponent(this.lastId)}`;
    const es = new EventSource(url);
    this.es = es;
    es.onopen = () => { if (this.es === es) { this.attempt = 0; this.onState("live"); } };
    es.onerror = () => {
      if (this.es !== es || this.stopped) return;
      if (es.readyState === EventSource.CLOSED) {
        this.es = null;
        this.retryLater();
      } else {
        this.onState("reconnecting"); // the browser reconnects by itself, with Last-Event-ID
      }
    };
    const handler = (e) => { if (this.es === es) this.receive(e); };
    for (const name of this.names) es.addEventListener(name, handler);
  }

  retryLater() {
    if (this.stopped) return;
    this.onState("reconnecting");
    const wait = Math.min(30000, 1000 * 2 ** this.attempt) * (0.5 + Math.random() / 2);
    this.attempt = Math.min(this.attempt + 1, 5);
    this.timer = setTimeout(() => this.start(), wait);
  }

  stop(state) {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.es) this.es.close();
    this.es = null;
    this.onState(state);
  }

  receive(e) {
    let data;
    try { data = JSON.parse(e.data); } catch { data = e.data; }
    if (e.type === "gap") {
      // Not part of the log (no id): the log could not vouch for our cursor.
      this.offer({name: "gap", id: "", epoch: null, n: 0, data});
      return;
    }
    const id = e.lastEventId;
    if (!id) return;
    const [epoch, n] = splitId(id);
    this.offer({name: e.type, id, epoch, n, data});
  }

  offer(ev) {
    if (this.filling) { this.held.push(ev); return; }
    if (ev.epoch !== null && ev.epoch === this.epoch && ev.n > this.lastN + 1) {
      // An event of a name we do not listen to went by: fetch it before going on.
      this.held.push(ev);
      this.fill();
      return;
    }
    this.accept(ev);
  }

  accept(ev) {
    if (ev.epoch !== null) {
      if (ev.epoch === this.epoch && ev.n <= this.lastN) return; // already shown
      this.epoch = ev.epoch;
      this.lastN = ev.n;
      this.lastId = ev.id;
    }
    this.onEvent(ev.name, ev.id, ev.data);
    if (ev.name === "terminal") {
      // The run is over: close before the browser reconnects only to hear 204.
      this.stop("ended");
      this.onEnd();
    }
  }

  async fill() {
    this.filling = true;
    try {
      for (let round = 0; round < 100 && this.held.length && !this.stopped; round++) {
        const next = this.held[0];
        if (next.epoch !== this.epoch || next.n <= this.lastN + 1) {
          this.held.shift();
          this.accept(next);
          continue;
        }
        const limit = Math.min(next.n - this.lastN - 1, PAGE_FILL_MAX);
        const ticket = await this.newTicket();
        const url = `${this.eventsPath}?ticket=${encodeURIComponent(ticket)}` +
          `&since=${encodeURIComponent(this.lastId)}&limit=${limit}`;
        const page = await readJson(
          await fetch(url, {cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer"}),
          this.eventsPath,
        );
        if (!page.events.length) break;
        for (const e of page.events) {
          if (!e.id) { this.onEvent(e.event, "", e.data); continue; }
          const [epoch, n] = splitId(e.id);
          this.accept({name: e.event, id: e.id, epoch, n, data: e.data});
        }
      }
    } catch (err) {
      if (err instanceof AuthError) { this.stop("closed"); signOut("The token was refused."); }
    } finally {
      this.filling = false;
    }
    // Whatever could not be fetched is shown as it is, in order.
    const rest = this.held;
    this.held = [];
    for (const ev of rest) if (!this.stopped) this.accept(ev);
  }
}

// ---- formatting ------------------------------------------------------------------------

function fmtSpan(ms) {
  if (!Number.isFinite(ms)) return "";
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${s % 60}s`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h}h ${m % 60}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

function fmtValue(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function fmtTime(ts) {
  if (typeof ts !== "string") return "";
  const t = Date.parse(/[zZ]|[+-]\d\d:?\d\d$/.test(ts) ? ts : ts + "Z");
  if (!Number.isFinite(t)) return ts;
  return new Date(t).toISOString().slice(11, 23);
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function setConn(node, state) {
  node.dataset.state = state;
  const words = {
    idle: "", connecting: "connecting…", live: "live", reconnecting: "reconnecting…",
    ended: "ended", closed: "closed", gone: "not found",
  };
  node.textContent = words[state] ?? state;
}

// ---- the runs table ------------------------------------------------------------------

const runs = new Map(); // run_id -> {data, tr, cells}
const pendingRuns = new Map(); // run_id -> newest run object not yet drawn
let frameQueued = false;
let feed = null;
let filterPhase = "";
let search = "";

function queueFrame() {
  if (!frameQueued) {
    frameQueued = true;
    requestAnimationFrame(drawFrame);
  }
}

function drawFrame() {
  frameQueued = false;
  const budget = drawRuns(FRAME_BUDGET);
  drawTimeline(budget);
  if (pendingRuns.size || (detail && detail.pending.length)) queueFrame();
}

function matches(data) {
  if (filterPhase === "active" ? !ACTIVE.has(data.phase)
    : filterPhase && data.phase !== filterPhase) return false;
  return !search || data.run_id.toLowerCase().includes(search);
}

function makeRow(runId) {
  const tr = el("tr");
  tr.dataset.runId = runId;
  tr.tabIndex = 0;
  tr.setAttribute("role", "row");
  const cells = {
    id: el("td", "c-id"),
    phase: el("span", "phase"),
    age: el("td", "c-age"),
    steps: el("td", "num"),
    rows: el("td", "num c-rows"),
    last: el("td", "c-last"),
  };
  cells.id.textContent = runId;
  cells.id.title = runId;
  const phaseCell = el("td", "c-phase");
  phaseCell.append(cells.phase);
  tr.append(cells.id, phaseCell, cells.age, cells.steps, cells.rows, cells.last);
  for (const td of tr.children) td.setAttribute("role", "cell");
  return {data: null, tr, cells, liveSteps: 0, liveRows: 0};
}

function drawRow(entry, now) {
  const data = entry.data;
  const tr = entry.tr;
  if (tr.dataset.phase !== data.phase) {
    tr.dataset.phase = data.phase;
    entry.cells.phase.className = `phase p-${data.phase}`;
  }
  const cancel = data.cancel_requested && !TERMINAL_PHASES.has(data.phase);
  setText(entry.cells.phase, cancel ? `${data.phase} · cancelling` : data.phase);
  setText(entry.cells.steps, String(Math.max(data.steps || 0, entry.liveSteps)));
  setText(entry.cells.rows, String(Math.max(data.rows || 0, entry.liveRows)));
  drawAges(entry, now);
  tr.hidden = !matches(data);
}

function drawAges(entry, now) {
  const data = entry.data;
  const created = Date.parse(data.created_at);
  const updated = Date.parse(data.updated_at);
  setText(entry.cells.age, fmtSpan(now - created));
  setText(entry.cells.last, Number.isFinite(updated) ? `${fmtSpan(now - updated)} ago` : "");
}

function drawRuns(budget) {
  if (!pendingRuns.size) return budget;
  const now = Date.now();
  const fresh = [];
  for (const [runId, data] of pendingRuns) {
    if (budget <= 0) break;
    budget -= 1;
    pendingRuns.delete(runId);
    let entry = runs.get(runId);
    if (entry === undefined) {
      entry = makeRow(runId);
      runs.set(runId, entry);
      fresh.push(entry);
    }
    entry.data = data;
    drawRow(entry, now);
    if (detail && detail.runId === runId) drawDetailPhase(data);
  }
  if (fresh.length) {
    // Newest first: the feed lists runs in creation order.
    const fragment = document.createDocumentFragment();
    for (let i = fresh.length - 1; i >= 0; i--) fragment.append(fresh[i].tr);
    $("runs-body").prepend(fragment);
  }
  drawCounts();
  return budget;
}

function drawCounts() {
  let shown = 0;
  for (const entry of runs.values()) if (!entry.tr.hidden) shown += 1;
  const total = runs.size;
  const noun = total === 1 ? "run" : "runs";
  setText($("counts"), shown === total ? `${total} ${noun}` : `${shown} of ${total} ${noun}`);
  $("empty").hidden = total > 0;
}

function applyFilter() {
  filterPhase = $("phase-filter").value;
  search = $("search").value.trim().toLowerCase();
  for (const entry of runs.values()) if (entry.data) entry.tr.hidden = !matches(entry.data);
  drawCounts();
}

function tickAges() {
  const now = Date.now();
  for (const entry of runs.values()) if (entry.data && !entry.tr.hidden) drawAges(entry, now);
}

function startFeed() {
  feed = new Follower({
    ticketPath: "/v1/events/tickets",
    eventsPath: "/v1/events",
    names: ["run", "gap"],
    onEvent: (name, id, data) => {
      if (name === "run" && data && typeof data.run_id === "string") {
        pendingRuns.set(data.run_id, data);
        queueFrame();
      } else if (name === "gap") {
        const notice = $("feed-notice");
        notice.textContent = "Part of the feed's history was trimmed: older runs may be missing.";
        notice.hidden = false;
      }
    },
    onState: (state) => setConn($("feed-status"), state),
  });
  feed.start();
}

// ---- the selected run ------------------------------------------------------------------

let detail = null;

function openRun(runId) {
  if (detail && detail.runId === runId) {
    $("board").classList.add("with-detail");
    return;
  }
  closeRun(false);
  const entry = runs.get(runId);
  if (entry) {
    entry.tr.classList.add("selected");
    entry.tr.setAttribute("aria-selected", "true");
  }
  $("detail-title").textContent = runId;
  $("timeline").replaceChildren();
  $("rows-table").tHead.rows[0].replaceChildren();
  $("rows-table").tBodies[0].replaceChildren();
  $("rows-empty").hidden = false;
  for (const id of ["sum-steps", "sum-rows", "sum-events"]) $(id).textContent = "0";
  $("sum-result").textContent = "—";
  detail = {
    runId, pending: [], columns: [], steps: 0, rows: 0, events: 0, follower: null,
  };
  if (entry && entry.data) drawDetailPhase(entry.data);
  const path = `/v1/runs/${encodeURIComponent(runId)}`;
  const current = detail;
  detail.follower = new Follower({
    ticketPath: `${path}/tickets`,
    eventsPath: `${path}/events`,
    names: RUN_EVENT_NAMES,
    onEvent: (name, id, data) => {
      current.pending.push({name, id, data});
      queueFrame();
    },
    onState: (state) => { if (detail === current) setConn($("run-status"), state); },
  });
  $("detail").hidden = false;
  $("board").classList.add("with-detail");
  detail.follower.start();
}

function closeRun(focusRow = true) {
  if (!detail) return;
  const {runId, follower} = detail;
  follower.stop("closed");
  detail = null;
  $("detail").hidden = true;
  $("board").classList.remove("with-detail");
  setConn($("run-status"), "idle");
  const entry = runs.get(runId);
  if (entry) {
    entry.tr.classList.remove("selected");
    entry.tr.removeAttribute("aria-selected");
    if (focusRow) entry.tr.focus();
  }
}

function drawDetailPhase(data) {
  const node = $("detail-phase");
  node.className = `phase p-${data.phase}`;
  node.textContent = data.phase;
}

function drawTimeline(budget) {
  if (!detail || !detail.pending.length) return budget;
  const list = $("timeline");
  const stick = list.scrollTop + list.clientHeight >= list.scrollHeight - 8;
  const batch = detail.pending.splice(0, Math.max(budget, 200));
  const fragment = document.createDocumentFragment();
  const rowsFragment = document.createDocumentFragment();
  for (const {name, id, data} of batch) {
    fragment.append(timelineItem(name, id, data));
    if (id) detail.events += 1;
    if (name === "step") detail.steps += 1;
    if (name === "extract") {
      detail.rows += 1;
      rowsFragment.append(extractRow(id, data));
    }
    if (name === "phase" && data && data.phase) drawDetailPhase(data);
    if (name === "terminal" && data) {
      const halt = data.halt_class ? ` (${data.halt_class})` : "";
      $("sum-result").textContent = `${data.phase}${halt}`;
    }
  }
  list.append(fragment);
  if (rowsFragment.childNodes.length) {
    $("rows-table").tBodies[0].append(rowsFragment);
    $("rows-empty").hidden = true;
  }
  setText($("sum-steps"), String(detail.steps));
  setText($("sum-rows"), String(detail.rows));
  setText($("sum-events"), String(detail.events));
  // The table row of the selected run counts live, not only at its lifecycle changes.
  const entry = runs.get(detail.runId);
  if (entry && entry.data) {
    entry.liveSteps = detail.steps;
    entry.liveRows = detail.rows;
    drawRow(entry, Date.now());
  }
  if (stick) list.scrollTop = list.scrollHeight;
  return budget - batch.length;
}

function timelineItem(name, id, data) {
  const li = el("li", `ev ev-${/^[a-z_-]+$/i.test(name) ? name : "other"}`);
  if (id) li.dataset.eventId = id;
  const head = el("div", "ev-head");
  head.append(el("span", "ev-time", fmtTime(data && data.ts)));
  const body = [];
  if (name === "phase") {
    head.append(el("span", "ev-kind", "phase"), el("span", `phase p-${data.phase}`, data.phase));
    if (data.halt_class) body.push(el("p", "ev-text", `halt class: ${data.halt_class}`));
  } else if (name === "terminal") {
    head.append(el("span", "ev-kind", "result"), el("span", `phase p-${data.phase}`, data.phase));
    if (data.halt_class) body.push(el("p", "ev-text", `halt class: ${data.halt_class}`));
  } else if (name === "step") {
    const index = data.step_index !== undefined ? `#${data.step_index}` : "";
    head.append(el("span", "ev-kind", `step ${index}`), el("strong", "ev-type", fmtValue(data.type)));
    if (data.target) head.append(el("code", "ev-target", fmtValue(data.target)));
    if (data.text) body.push(el("p", "ev-text", `text: ${fmtValue(data.text)}`));
    if (data.reasoning) body.push(el("p", "ev-reason", fmtValue(data.reasoning)));
  } else if (name === "extract") {
    const index = data.step_index !== undefined ? `#${data.step_index}` : "";
    head.append(el("span", "ev-kind", `row ${index}`));
    const fields = rowFields(data);
    const summary = Object.entries(fields).slice(0, 4)
      .map(([k, v]) => `${k}: ${fmtValue(v)}`).join(" · ");
    body.push(el("p", "ev-text", summary));
  } else if (name === "gap") {
    li.classList.add("ev-gap");
    head.append(el("span", "ev-kind", "gap"));
    body.push(el("p", "ev-text", "Earlier events were trimmed from the log; resumed at the oldest kept."));
  } else {
    head.append(el("span", "ev-kind", name));
    const rest = {...(typeof data === "object" && data ? data : {value: data})};
    delete rest.ts;
    body.push(el("p", "ev-text", JSON.stringify(rest)));
  }
  li.append(head, ...body);
  return li;
}

function rowFields(data) {
  if (data && typeof data.row === "object" && data.row !== null) return data.row;
  const rest = {...data};
  for (const key of ["kind", "type", "ts", "step_index"]) delete rest[key];
  return rest;
}

function extractRow(id, data) {
  const fields = rowFields(data);
  const table = $("rows-table");
  const headRow = table.tHead.rows[0];
  for (const key of Object.keys(fields)) {
    if (!detail.columns.includes(key)) {
      // A field no earlier row had: a new column, empty for the rows before.
      detail.columns.push(key);
      headRow.append(el("th", "", key));
      for (const tr of table.tBodies[0].rows) tr.append(el("td"));
    }
  }
  const tr = el("tr");
  if (id) tr.dataset.rowEventId = id;
  for (const key of detail.columns) {
    const text = key in fields ? fmtValue(fields[key]) : "";
    const td = el("td", typeof fields[key] === "number" ? "num" : "", text);
    td.title = text;
    tr.append(td);
  }
  return tr;
}

// ---- keyboard ------------------------------------------------------------------------

function visibleSibling(tr, forward) {
  let node = forward ? tr.nextElementSibling : tr.previousElementSibling;
  while (node && node.hidden) node = forward ? node.nextElementSibling : node.previousElementSibling;
  return node;
}

function onTableKey(event) {
  const tr = event.target.closest("tr[data-run-id]");
  if (!tr) return;
  let target = null;
  if (event.key === "ArrowDown") target = visibleSibling(tr, true);
  else if (event.key === "ArrowUp") target = visibleSibling(tr, false);
  else if (event.key === "Home") target = [...$("runs-body").rows].find((r) => !r.hidden);
  else if (event.key === "End") target = [...$("runs-body").rows].reverse().find((r) => !r.hidden);
  else if (event.key === "Enter" || event.key === " ") {
    event.preventDefault();
    openRun(tr.dataset.runId);
    return;
  } else return;
  event.preventDefault();
  if (target) target.focus();
}

// ---- signing in and out --------------------------------------------------------------

function takeTokenFromFragment() {
  const hash = location.hash.startsWith("#") ? location.hash.slice(1) : "";
  if (!hash) return null;
  const params = new URLSearchParams(hash);
  const found = params.get("token");
  if (found === null) return null;
  // Out of the address bar and the history at once (a fragment is never sent anyway).
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
  return found;
}

async function signIn(candidate) {
  token = candidate;
  let tenant = "";
  try {
    tenant = (await api("/v1/events?limit=1")).tenant || "";
  } catch (err) {
    if (err instanceof AuthError) {
      signOut("That token was refused.");
      return;
    }
    // The service may be restarting: go on, the streams retry by themselves.
  }
  sessionStorage.setItem(TOKEN_KEY, candidate);
  $("tenant").textContent = tenant ? `tenant ${tenant}` : "";
  $("sign-in").hidden = true;
  $("board").hidden = false;
  $("sign-out").hidden = false;
  startFeed();
}

function signOut(message) {
  if (feed) feed.stop("closed");
  feed = null;
  closeRun(false);
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  runs.clear();
  pendingRuns.clear();
  $("runs-body").replaceChildren();
  $("tenant").textContent = "";
  $("board").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message || "";
  setConn($("feed-status"), "idle");
  $("feed-status").textContent = "signed out";
  $("token-input").focus();
}

function main() {
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("token-input");
    const value = input.value.trim();
    input.value = "";
    if (value) signIn(value);
  });
  $("sign-out").addEventListener("click", () => signOut(""));
  $("phase-filter").addEventListener("change", applyFilter);
  $("search").addEventListener("input", applyFilter);
  $("runs-body").addEventListener("click", (event) => {
    const tr = event.target.closest("tr[data-run-id]");
    if (tr) openRun(tr.dataset.runId);
  });
  $("runs-body").addEventListener("keydown", onTableKey);
  $("close-detail").addEventListener("click", () => closeRun());
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && detail) closeRun();
  });
  setInterval(() => requestAnimationFrame(tickAges), 1000);
  const fromFragment = takeTokenFromFragment();
  const saved = fromFragment || sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved);
  else signOut("");
}

main();
