// hacs dashboard: reads the agent's JSON API and renders it. Live updates
// come from GET /v1/events/stream (Server-Sent Events, read with fetch so
// that the API token can be sent); the page also polls every 2 s for what
// changes without an event (resync progress, storage).
"use strict";

const TOKEN_KEY = "hacs.token";
const POLL_MS = 2000;
const MAX_EVENTS = 200;

const state = {
  status: null, nodes: null, volumes: [], details: {}, resources: null,
  events: [], eventKeys: new Set(), live: false, authError: null, error: null,
  lastPrimary: {},
};

const $ = (id) => document.getElementById(id);

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function headers(json) {
  const h = { "Accept": "application/json", "X-Hacs-Actor": "dashboard" };
  const t = token();
  if (t) h["Authorization"] = "Bearer " + t;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

class APIError extends Error {
  constructor(status, msg) { super(msg); this.status = status; }
}

async function api(method, path, body) {
  let r;
  try {
    r = await fetch(path, {
      method, headers: headers(body !== undefined), cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new APIError(0, "cannot reach the agent: " + e.message);
  }
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { error: text.trim() }; }
  if (!r.ok) {
    const msg = (data && data.error) || r.statusText || ("HTTP " + r.status);
    throw new APIError(r.status, msg);
  }
  return data;
}

function isAuth(e) { return e instanceof APIError && (e.status === 401 || e.status === 403); }

function authMessage(e) {
  if (e.status === 401) {
    return "Not authenticated (401): " + (token() ? "the API token was refused" : "this cluster needs an API token") +
      " — enter a valid token above. (" + e.message + ")";
  }
  return "Forbidden (403): your token may not do this — " + e.message;
}

// ---------- formatting ----------

function esc(s) {
  return String(s == null ? "" : s).replace(/[&<>"']/g, (c) =>
    ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function human(n) {
  if (n == null || isNaN(n)) return "–";
  const u = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0, v = Number(n);
  while (Math.abs(v) >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + u[i];
}

function fmtTime(t) {
  const d = new Date(t);
  if (isNaN(d)) return "";
  const pad = (x) => String(x).padStart(2, "0");
  return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
    pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
}

function fmtDuration(ns) {
  const s = Math.round(ns / 1e9);
  if (!isFinite(s) || s <= 0) return "";
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h" + String(Math.floor(s / 60) % 60).padStart(2, "0") + "m";
}

function badge(text, cls) { return '<span class="badge ' + esc(cls || text) + '">' + esc(text) + "</span>"; }

function bar(pct, cls) {
  pct = Math.max(0, Math.min(100, pct));
  return '<span class="bar ' + (cls || "") + '"><span data-pct="' + pct.toFixed(1) + '"></span></span>';
}

// setHTML replaces an element's content only when it changed, so that
// what the operator points at or selects stays in place between updates.
function setHTML(el, html) {
  if (el.dataset.html === html) return false;
  el.innerHTML = html;
  el.dataset.html = html;
  return true;
}

// Inline style attributes are refused by the page's content security policy:
// bar widths are set through the DOM after rendering.
function applyBars(root) {
  root.querySelectorAll("[data-pct]").forEach((el) => { el.style.width = el.dataset.pct + "%"; });
}

// ---------- loading ----------

let loading = false, again = false;

async function refresh() {
  if (loading) { again = true; return; }
  loading = true;
  try {
    do {
      again = false;
      await load();
      render();
    } while (again);
  } finally {
    loading = false;
  }
}

async function load() {
  let authErr = null, err = null;
  const note = (e) => {
    if (isAuth(e)) authErr = authErr || e;
    else err = err || e;
  };
  const [st, nodes, vols] = await Promise.allSettled([
    api("GET", "/v1/status"), api("GET", "/v1/nodes"), api("GET", "/v1/volumes"),
  ]);
  if (st.status === "fulfilled") state.status = st.value; else note(st.reason);
  if (nodes.status === "fulfilled") state.nodes = nodes.value; else note(nodes.reason);
  if (vols.status === "fulfilled") {
    state.volumes = vols.value || [];
    // The details hold the primary's view (replica states, resync
    // progress): asked for the volumes that are not all in sync only, so
    // that a large cluster costs few requests.
    const want = state.volumes.filter((v) => v.health !== "ok" && v.health !== "stopped").slice(0, 50);
    const infos = await Promise.allSettled(want.map((v) =>
      api("GET", "/v1/volumes/" + encodeURIComponent(v.spec.name))));
    const details = {};
    infos.forEach((r, i) => {
      if (r.status === "fulfilled") details[want[i].spec.name] = r.value;
      else if (r.reason.status !== 404) note(r.reason);
    });
    state.details = details;
  } else {
    note(vols.reason);
  }
  await loadResources(note);
  // fencing records (GET /v1/fence), shown with their nodes
  try {
    const f = await api("GET", "/v1/fence");
    state.fence = {};
    for (const r of (f && f.records) || []) state.fence[r.node] = r;
  } catch (e) {
    state.fence = {};
    if (e.status !== 404) note(e);
  }
  if (!state.live) await loadEvents(note);
  if (authErr && authErr.status === 401) {
    // no valid token: show nothing read with an earlier one
    state.status = null; state.nodes = null; state.volumes = []; state.details = {};
    state.resources = null; state.fence = {}; state.events = []; state.eventKeys = new Set();
  }
  state.authError = authErr;
  state.error = err;
  state.updated = new Date();
}

let resourcesChecked = 0;

// The resources section shows when the agent has GET /v1/resources.
async function loadResources(note) {
  if (state.resources === null && Date.now() - resourcesChecked < 30000 && resourcesChecked > 0) return;
  resourcesChecked = Date.now();
  try {
    const r = await api("GET", "/v1/resources");
    state.resources = Array.isArray(r) ? r : (r && (r.resources || r.items)) || [];
  } catch (e) {
    if (e.status === 404 || e.status === 405) state.resources = null;
    else if (state.resources !== null) note(e);
  }
}

async function loadEvents(note) {
  try {
    const r = await api("GET", "/v1/events?limit=" + MAX_EVENTS);
    state.events = [];
    state.eventKeys = new Set();
    (r.events || []).forEach(addEvent);
  } catch (e) {
    note(e);
  }
}

function addEvent(ev) {
  const key = ev.key || (ev.time + ev.node + ev.kind + ev.message);
  if (state.eventKeys.has(key)) return false;
  state.eventKeys.add(key);
  state.events.push(ev);
  state.events.sort((a, b) => (a.time < b.time ? -1 : a.time > b.time ? 1 : 0));
  while (state.events.length > MAX_EVENTS) {
    const old = state.events.shift();
    state.eventKeys.delete(old.key || (old.time + old.node + old.kind + old.message));
  }
  return true;
}

// ---------- live updates ----------

let streamAbort = null;
let refreshTimer = null;

function soon() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(() => { refreshTimer = null; refresh(); }, 150);
}

async function stream() {
  for (;;) {
    const ctl = new AbortController();
    streamAbort = ctl;
    let ended = false; // the agent asked to reconnect (it does every 5 min)
    try {
      const r = await fetch("/v1/events/stream?limit=" + MAX_EVENTS, { headers: headers(false), signal: ctl.signal, cache: "no-store" });
      if (!r.ok || !r.body) {
        let msg = r.statusText;
        try { msg = (await r.json()).error || msg; } catch (e) { /* not JSON */ }
        throw new APIError(r.status, msg);
      }
      state.events = [];
      state.eventKeys = new Set();
      setLive(true);
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const chunk = buf.slice(0, i);
          buf = buf.slice(i + 2);
          if (onMessage(chunk) === "reconnect") ended = true;
        }
      }
    } catch (e) {
      if (isAuth(e)) { state.authError = e; render(); }
    }
    if (ended) continue; // reconnect at once, authenticated again
    setLive(false);
    if (!ctl.signal.aborted) await new Promise((res) => setTimeout(res, 2000));
  }
}

function onMessage(chunk) {
  let type = "message", data = "";
  for (const line of chunk.split("\n")) {
    if (line.startsWith("event:")) type = line.slice(6).trim();
    else if (line.startsWith("data:")) data += line.slice(5).trim();
  }
  if (!data || type !== "hacs") return type;
  try {
    if (addEvent(JSON.parse(data))) { renderEvents(); soon(); }
  } catch (e) { /* ignore a bad event */ }
  return type;
}

function setLive(on) {
  state.live = on;
  const el = $("live");
  el.className = "dot " + (on ? "" : "poll");
  el.textContent = on ? "live" : "polling";
  el.title = on ? "live updates from the event stream, and polling every 2 s" : "event stream not connected: polling every 2 s";
  $("events-note").textContent = on ? "(live)" : "";
}

// ---------- rendering ----------

function render() {
  renderHeader();
  renderBanner();
  renderNodes();
  renderVolumes();
  renderResources();
  renderEvents();
}

function renderHeader() {
  const st = state.status;
  $("cluster").textContent = st ? "cluster " + st.cluster + " · agent " + st.name : "cluster …";
  const nodes = (state.nodes && state.nodes.nodes) || [];
  const online = nodes.filter((n) => n.online).length;
  const vols = state.volumes || [];
  const ok = vols.filter((v) => v.health === "ok").length;
  const dc = st && st.leadership ? st.leadership.dc : "";
  setHTML($("summary"),
    "<span>nodes <b>" + online + "/" + nodes.length + "</b> online</span>" +
    "<span>volumes <b>" + ok + "/" + vols.length + "</b> ok</span>" +
    "<span>DC <b id=\"dc-name\">" + esc(dc || "none") + "</b></span>");
  if (state.updated) $("updated").textContent = "updated " + state.updated.toLocaleTimeString();
}

function renderBanner() {
  const b = $("banner");
  const form = $("tokenform");
  if (state.authError) {
    b.hidden = false;
    b.className = "banner auth";
    b.dataset.status = state.authError.status;
    b.textContent = authMessage(state.authError);
    form.classList.add("needed");
  } else if (state.error) {
    b.hidden = false;
    b.className = "banner";
    b.dataset.status = state.error.status;
    b.textContent = "Error" + (state.error.status ? " (" + state.error.status + ")" : "") + ": " + state.error.message;
    form.classList.remove("needed");
  } else {
    b.hidden = true;
    b.textContent = "";
    form.classList.remove("needed");
  }
}

function primariesByNode() {
  const out = {};
  for (const v of state.volumes || []) {
    if (v.export) out[v.export.node] = (out[v.export.node] || 0) + 1;
  }
  return out;
}

// fenceBadge shows a fencing of the node under way, failed, or confirmed
// while it is still offline.
function fenceBadge(n) {
  const r = (state.fence || {})[n.name];
  if (!r) return "";
  const shown = { pending: "fence pending", fencing: "fencing", failed: "fence failed", fenced: "fenced" }[r.state];
  if (!shown || (r.state === "fenced" && n.online)) return "";
  const cls = r.state === "failed" ? "failed" : r.state === "fenced" ? "stopped" : "degraded";
  return ' <span class="badge ' + cls + '" data-fence="' + esc(r.state) + '" title="' + esc(r.reason || "") + '">' + esc(shown) + "</span>";
}

function renderNodes() {
  const tb = $("nodes").tBodies[0];
  const nodes = (state.nodes && state.nodes.nodes) || [];
  const dc = state.status && state.status.leadership ? state.status.leadership.dc : "";
  const prims = primariesByNode();
  if (!nodes.length) {
    setHTML(tb, '<tr><td colspan="8" class="empty">' + (state.nodes ? "no nodes" : state.authError ? "not authorized" : "loading…") + "</td></tr>");
    return;
  }
  setHTML(tb, nodes.map((n) => {
    const st = n.state || (n.online ? (n.standby ? "standby" : "online") : "offline");
    let storage = '<span class="muted">–</span>';
    const cap = n.alive && n.alive.capacity;
    if ((n.roles || []).includes("storage") && cap && cap.total_bytes > 0) {
      const used = cap.total_bytes - cap.free_bytes;
      const pct = 100 * used / cap.total_bytes;
      storage = bar(pct, "storage" + (pct > 90 ? " full" : "")) + ' <span class="pct" title="sizes of the replicas placed on the node, of what it may hold">' + esc(human(used)) + " of " + esc(human(cap.total_bytes)) + " placed</span>";
    } else if ((n.roles || []).includes("storage")) {
      storage = '<span class="muted">storage (no report)</span>';
    }
    const action = n.standby
      ? '<button data-act="node-active" data-name="' + esc(n.name) + '">Active</button>'
      : '<button class="secondary" data-act="node-standby" data-name="' + esc(n.name) + '">Standby</button>';
    return '<tr data-node="' + esc(n.name) + '" data-state="' + esc(st) + '">' +
      '<td class="name">' + esc(n.name) + (n.name === dc ? badge("DC", "dc") : "") + "</td>" +
      "<td>" + badge(st) + fenceBadge(n) + (n.online ? "" : (n.since ? ' <span class="muted small">since ' + esc(fmtTime(n.since)) + "</span>" : "")) + "</td>" +
      "<td>" + (n.roles || []).map((r) => '<span class="tag">' + esc(r) + "</span>").join("") +
      Object.entries(n.labels || {}).map(([k, v]) => '<span class="tag">' + esc(k + "=" + v) + "</span>").join("") + "</td>" +
      "<td>" + storage + "</td>" +
      "<td>" + (prims[n.name] || 0) + "</td>" +
      '<td class="mono">' + esc(n.api_addr || "") + "</td>" +
      '<td class="muted">' + esc(n.version || "") + "</td>" +
      "<td>" + action + "</td></tr>";
  }).join(""));
  applyBars(tb);
}

function replicaRows(v, d) {
  const names = v.placement || [];
  const m = d && d.mirror;
  const byID = {};
  if (m) for (const r of m.replicas || []) byID[r.id] = r;
  const inSync = new Set((v.state && v.state.in_sync) || []);
  const primary = v.state ? v.state.primary : "";
  const ids = names.slice();
  for (const id of Object.keys(byID)) if (!ids.includes(id)) ids.push(id);
  if (!ids.length) return '<span class="muted">not placed</span>';
  return '<div class="replicas">' + ids.map((id) => {
    const r = byID[id];
    let st = r ? r.state : (inSync.has(id) ? "in-sync" : "outdated");
    let extra = "";
    if (r && r.state === "resyncing") {
      const pct = r.resync_total_bytes > 0 ? 100 * r.resync_done_bytes / r.resync_total_bytes : 0;
      extra = bar(pct) + ' <span class="pct" data-resync="' + esc(id) + '">' + pct.toFixed(0) + "% · " +
        esc(human(r.resync_done_bytes)) + " / " + esc(human(r.resync_total_bytes)) +
        (r.resync_rate_bytes_per_second > 0 ? " · " + esc(human(r.resync_rate_bytes_per_second)) + "/s" : "") +
        (r.resync_eta_ns > 0 ? " · ETA " + esc(fmtDuration(r.resync_eta_ns)) : "") + "</span>";
    } else if (r && r.state === "outdated" && r.out_of_sync_bytes > 0) {
      extra = '<span class="pct">' + esc(human(r.out_of_sync_bytes)) + " to resync</span>";
    }
    if (r && !r.connected && !r.local) extra += ' <span class="pct">not connected</span>';
    if (r && r.last_error && st !== "in-sync") extra += ' <span class="pct" title="' + esc(r.last_error) + '">last error: ' + esc(r.last_error.length > 60 ? r.last_error.slice(0, 57) + "…" : r.last_error) + "</span>";
    return '<div class="replica" data-replica="' + esc(id) + '" data-replica-state="' + esc(st) + '">' +
      '<span class="rname">' + esc(id) + "</span>" + badge(st) +
      (id === primary ? '<span class="primary-mark">primary</span>' : "") + extra + "</div>";
  }).join("") + "</div>";
}

function renderVolumes() {
  const tb = $("volumes").tBodies[0];
  const vols = state.volumes || [];
  if (!vols.length) {
    setHTML(tb, '<tr><td colspan="7" class="empty">' + (state.authError ? "not authorized" : "no volumes") + "</td></tr>");
    return;
  }
  const flash = {};
  setHTML(tb, vols.map((v) => {
    const name = v.spec.name;
    const d = state.details[name] || v;
    const primary = d.export ? d.export.node : "";
    if (state.lastPrimary[name] !== undefined && state.lastPrimary[name] !== primary) flash[name] = true;
    state.lastPrimary[name] = primary;
    const epoch = d.state ? d.state.epoch : "";
    const stopped = v.spec.stopped;
    const why = d.degraded ? ' <span class="muted small">' + esc(d.degraded.reason) + "</span>" : "";
    const actions = (stopped
      ? '<button data-act="vol-active" data-name="' + esc(name) + '">Active</button>'
      : '<button class="secondary" data-act="vol-standby" data-name="' + esc(name) + '">Standby</button>') +
      '<button class="secondary" data-act="vol-snapshot" data-name="' + esc(name) + '">Snapshot…</button>';
    return '<tr data-volume="' + esc(name) + '" data-health="' + esc(d.health) + '" data-primary="' + esc(primary) + '" data-epoch="' + esc(epoch) + '"' +
      (flash[name] ? ' class="flash"' : "") + ">" +
      '<td class="name">' + esc(name) + "</td>" +
      "<td>" + badge(d.health) + why + "</td>" +
      "<td>" + esc(human(v.spec.size)) + ' <span class="muted small">×' + esc(v.spec.replicas) + "</span></td>" +
      '<td class="primary">' + (primary ? esc(primary) : '<span class="muted">none</span>') + "</td>" +
      "<td>" + esc(epoch) + "</td>" +
      "<td>" + replicaRows(v, state.details[name]) + "</td>" +
      "<td>" + actions + "</td></tr>";
  }).join(""));
  applyBars(tb);
}

function renderResources() {
  const sec = $("resources-section");
  if (state.resources === null) { sec.hidden = true; return; }
  sec.hidden = false;
  const tb = $("resources").tBodies[0];
  const rs = state.resources;
  if (!rs.length) {
    setHTML(tb, '<tr><td colspan="5" class="empty">no resources</td></tr>');
    return;
  }
  // ResourceInfo of GET /v1/resources: spec, health, running, assigned,
  // blocked, status per node, failures per node, group
  setHTML(tb, rs.map((r) => {
    const spec = r.spec || {};
    const name = spec.name || r.name || "";
    let kind = spec.type || "";
    if (r.group) kind += " (in " + r.group + ")";
    if ((spec.members || []).length) kind += ": " + spec.members.join(", ");
    const health = r.health || "";
    const where = (r.running || []).join(", ") || (r.assigned ? r.assigned.node + " (assigned)" : "");
    const notes = [];
    if (r.blocked) notes.push(r.blocked.reason);
    for (const [node, f] of Object.entries(r.failures || {})) if (f && f.count) notes.push("fail count " + f.count + " on " + node);
    for (const [node, st] of Object.entries(r.status || {})) if (st && st.message && st.state !== "running") notes.push(node + ": " + st.message);
    if (!notes.length && r.assigned && r.assigned.reason) notes.push(r.assigned.reason);
    return '<tr data-resource="' + esc(name) + '" data-health="' + esc(health) + '"><td class="name">' + esc(name) + "</td><td>" + esc(kind) +
      "</td><td>" + (health ? badge(health) : "") + "</td><td>" + esc(where) + '</td><td class="muted">' + esc(notes.join("; ")) + "</td></tr>";
  }).join(""));
}

function renderEvents() {
  const tb = $("events").tBodies[0];
  const evs = state.events.slice().reverse();
  if (!evs.length) {
    setHTML(tb, '<tr><td colspan="5" class="empty">' + (state.authError ? "not authorized" : "no events") + "</td></tr>");
    return;
  }
  setHTML(tb, evs.map((e) =>
    '<tr data-kind="' + esc(e.kind) + '"><td class="mono">' + esc(fmtTime(e.time)) + "</td><td>" + esc(e.node) +
    "</td><td>" + esc(e.kind) + "</td><td>" + esc(e.resource || (e.fields && e.fields.subject) || "") +
    "</td><td>" + esc(e.message) + "</td></tr>").join(""));
}

// ---------- actions ----------

function toast(msg, error) {
  const t = $("toast");
  t.textContent = msg;
  t.className = "toast" + (error ? " error" : "");
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, error ? 8000 : 4000);
}

function ask(text, withInput, initial) {
  const dlg = $("confirm");
  $("confirm-text").textContent = text;
  $("confirm-input-label").hidden = !withInput;
  const input = $("confirm-input");
  input.value = initial || "";
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => {
      resolve(dlg.returnValue === "ok" ? (withInput ? input.value.trim() : true) : null);
    }, { once: true });
    dlg.returnValue = "";
    dlg.showModal();
    if (withInput) { input.focus(); input.select(); }
  });
}

function snapName() {
  const d = new Date();
  const pad = (x) => String(x).padStart(2, "0");
  return "snap-" + d.getFullYear() + pad(d.getMonth() + 1) + pad(d.getDate()) + "-" + pad(d.getHours()) + pad(d.getMinutes()) + pad(d.getSeconds());
}

async function act(kind, name) {
  const enc = encodeURIComponent(name);
  let call, what;
  switch (kind) {
    case "node-standby":
      if (!await ask("Put node " + name + " in standby? Its volumes move to other nodes.")) return;
      call = () => api("POST", "/v1/nodes/" + enc + "/standby", { standby: true }); what = "node " + name + ": standby";
      break;
    case "node-active":
      if (!await ask("Make node " + name + " active again?")) return;
      call = () => api("POST", "/v1/nodes/" + enc + "/standby", { standby: false }); what = "node " + name + ": active";
      break;
    case "vol-standby":
      if (!await ask("Stop serving volume " + name + "? Its primary stops; the replicas stay.")) return;
      call = () => api("POST", "/v1/volumes/" + enc + "/standby"); what = "volume " + name + ": standby";
      break;
    case "vol-active":
      if (!await ask("Serve volume " + name + " again?")) return;
      call = () => api("POST", "/v1/volumes/" + enc + "/active"); what = "volume " + name + ": active";
      break;
    case "vol-snapshot": {
      const snap = await ask("Create a snapshot of volume " + name + ".", true, snapName());
      if (!snap) return;
      call = () => api("POST", "/v1/volumes/" + enc + "/snapshots", { name: snap }); what = "volume " + name + ": snapshot " + snap + " created";
      break;
    }
    default:
      return;
  }
  try {
    await call();
    toast(what);
  } catch (e) {
    // an action refused shows in the message; the banner is for the
    // page's reads (a 401 there too, a 403 may be this action's only)
    if (isAuth(e)) toast(what.split(":")[0] + ": " + authMessage(e), true);
    else if (kind === "vol-snapshot" && (e.status === 404 || e.status === 405)) toast("This agent has no snapshot API (" + e.status + "): " + e.message, true);
    else toast(what.split(":")[0] + ": " + (e.status ? e.status + " " : "") + e.message, true);
  }
  refresh();
}

// ---------- start ----------

function init() {
  $("token").value = token();
  $("tokenform").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("token").value.trim();
    if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY);
    state.authError = null;
    if (streamAbort) streamAbort.abort();
    refresh();
  });
  $("tokenclear").addEventListener("click", () => {
    $("token").value = "";
    sessionStorage.removeItem(TOKEN_KEY);
    if (streamAbort) streamAbort.abort();
    refresh();
  });
  document.body.addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-act]");
    if (b) act(b.dataset.act, b.dataset.name);
  });
  setLive(false);
  refresh();
  setInterval(refresh, POLL_MS);
  stream();
}

init();
