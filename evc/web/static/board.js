// evc web board: renders /api/events (Server-Sent Events of the board's JSON).
// Every text from the network (ids, locations, details) goes in as textContent: never HTML.
"use strict";
(function () {
  const STATES = ["Activado", "Suministrando", "Parado", "Averiado", "Desconectado"];
  const CLASS = {Activado: "activado", Suministrando: "suministrando", Parado: "parado",
                 Averiado: "averiado", Desconectado: "desconectado"};
  let latest = null, drawn = false, pending = false, source = null;
  let me = {operator: null, csrf: null}, selected = null, detailAt = 0;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function time(ts) {
    return ts ? new Date(ts * 1000).toLocaleTimeString() : "";
  }
  function detail(cp) {
    if (cp.via !== "ocpp") return plainDetail(cp);
    const mark = "[OCPP" + (cp.charger ? " " + cp.charger : "") + "]";
    return cp.state === "Activado" ? mark : mark + " " + plainDetail(cp);
  }
  function plainDetail(cp) {
    if (cp.state === "Suministrando" && cp.supply) {
      const s = cp.supply;
      let text = (s.driver_id ? s.driver_id + " · " : "") + s.consumo_kwh.toFixed(2) +
        " kWh · " + s.importe_eur.toFixed(2) + " €";
      if (cp.site && cp.kw <= 0) text += " · en espera";
      else if (cp.kw) text += " · " + cp.kw.toFixed(1) + " kW";
      return text;
    }
    if (cp.state === "Desconectado")
      return cp.last_seen ? "last seen " + time(cp.last_seen) : "never seen";
    return cp.detail || "";
  }
  // Rows are kept and updated in place (a cell's text only when it changed): a button
  // under the pointer is never replaced by a redraw, so no click is lost.
  const rows = new Map();
  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }
  function makeRow(cpId) {
    const tr = el("tr");
    tr.dataset.cp = cpId;
    for (const cls of ["id", "loc", "price", "state", "detail", "op"]) tr.appendChild(el("td", cls));
    const actions = tr.lastChild;
    actions.appendChild(button("Stop", () => {
      const id = tr.dataset.cp;
      post("/api/cps/" + encodeURIComponent(id) +
           (tr.dataset.state === "Parado" ? "/resume" : "/stop"));
    }));
    actions.appendChild(button("Price", () => {
      const id = tr.dataset.cp;
      const price = window.prompt("New price of " + id + " (€/kWh)", tr.dataset.price);
      if (price !== null) post("/api/cps/" + encodeURIComponent(id) + "/price", {price: price});
    }));
    return tr;
  }
  function row(cp) {
    let tr = rows.get(cp.cp_id);
    if (!tr) { tr = makeRow(cp.cp_id); rows.set(cp.cp_id, tr); }
    const cls = CLASS[cp.state] || "";
    if (tr.className !== cls) tr.className = cls;
    tr.dataset.state = cp.state;
    tr.dataset.price = cp.price_eur_kwh.toFixed(2);
    const [id, loc, price, st, det, actions] = tr.children;
    setText(id, cp.cp_id);
    setText(loc, cp.location);
    setText(price, cp.price_eur_kwh.toFixed(2) + " €/kWh");
    const label = cp.label || cp.state, trust = cp.trust || "";
    if (st.dataset.shown !== label + "|" + trust) {
      st.dataset.shown = label + "|" + trust;
      st.className = "state " + cls;
      st.replaceChildren(document.createTextNode(label));
      if (trust) st.appendChild(el("span", "trust " + trust, trust));
    }
    setText(det, detail(cp));
    setText(actions.firstChild, cp.state === "Parado" ? "Resume" : "Stop");
    return tr;
  }
  function button(text, action) {
    const b = el("button", "", text);
    b.type = "button";
    b.addEventListener("click", ev => { ev.stopPropagation(); action(); });
    return b;
  }
  function say(text, error) {
    const p = document.getElementById("said");
    p.textContent = text;
    p.className = "said" + (error ? " error" : "");
  }
  async function post(path, body) {
    try {
      const r = await fetch(path, {method: "POST", headers: {
        "Content-Type": "application/json", "X-CSRF-Token": me.csrf || ""},
        body: JSON.stringify(body || {})});
      const doc = await r.json();
      if (r.ok) { say(doc.text || "done"); setTimeout(loadAudit, 500); }
      else say(doc.error ? doc.error.message : "refused (" + r.status + ")", true);
      if (r.status === 401) whoami();
      return doc;
    } catch (e) {
      say("web server unavailable", true);
    }
  }
  function draw() {
    pending = false;
    const doc = latest;
    if (!doc) return;
    const c = doc.central || {};
    const central = document.getElementById("central");
    if (doc.kafka && !doc.kafka.available) {
      central.className = "central down";
      central.textContent = "KAFKA UNAVAILABLE" + (doc.kafka.since ? " since " +
        time(doc.kafka.since) : "") + " (this web server cannot reach the broker)";
    } else if (c.available) {
      central.className = "central ok";
      central.textContent = "central " + (c.central || "") + " · up since " + time(c.started_at) +
        ((c.standbys || []).length ? " · standby " + c.standbys.join(", ") : " · no standby");
    } else {
      central.className = "central down";
      central.textContent = "CENTRAL UNAVAILABLE" +
        (c.last_heartbeat ? " since " + time(c.last_heartbeat) : "") +
        ((c.standbys || []).length ? " · standby " + c.standbys.join(", ") +
         " taking over" : "");
    }
    const counts = document.getElementById("counts");
    counts.replaceChildren(...STATES.map(s =>
      el("span", "count " + CLASS[s], s + " " + ((doc.counts || {})[s] || 0))));
    const sites = document.getElementById("sites");
    sites.replaceChildren(...(doc.sites || []).map(s => {
      const over = s.limit_kw !== null && s.load_kw > s.limit_kw + 0.01;
      return el("span", "site" + (over ? " over" : ""), s.site + " " + s.load_kw.toFixed(1) +
        " kW of " + (s.limit_kw === null ? "no limit" : s.limit_kw + " kW") + ", " +
        s.supplies + " supplying" + (s.waiting ? ", " + s.waiting + " waiting" : ""));
    }));
    const freeOnly = document.getElementById("free-only").checked;
    const cps = (doc.cps || []).filter(cp => !freeOnly || cp.free);
    const body = document.querySelector("#board tbody");
    const wanted = cps.map(row);
    const shown = new Set(wanted);
    const all = new Set((doc.cps || []).map(c => c.cp_id));
    for (const [id, tr] of rows) {
      if (!shown.has(tr)) {
        tr.remove();  // filtered out, or gone from the network
        if (!all.has(id)) rows.delete(id);
      }
    }
    wanted.forEach((tr, i) => {
      if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null);
    });
    if (selected && Date.now() - detailAt > 1000) showDetail(selected, false);
    document.getElementById("empty").hidden = (doc.cps || []).length > 0;
    document.body.dataset.version = String(Date.now());
    drawn = true;
  }
  function merge(d) {
    // a delta: the rows that changed, the ids removed, the head whole
    if (!latest) return;
    const byId = new Map(latest.cps.map(c => [c.cp_id, c]));
    for (const id of d.removed || []) byId.delete(id);
    let added = false;
    for (const c of d.cps) {
      if (!byId.has(c.cp_id)) added = true;
      byId.set(c.cp_id, c);
    }
    const cps = [...byId.values()];
    if (added) cps.sort((a, b) => (a.cp_id < b.cp_id ? -1 : a.cp_id > b.cp_id ? 1 : 0));
    show(Object.assign(latest, {cps: cps, central: d.central, kafka: d.kafka,
                                counts: d.counts, sites: d.sites, at: d.at,
                                operator: d.operator}));
  }
  function show(doc) {
    latest = doc;
    if (!pending) { pending = true; requestAnimationFrame(draw); }
  }
  function link(text) {
    const l = document.getElementById("link");
    l.hidden = !text;
    l.textContent = text || "";
  }
  // ------------------------------------------------------------------ operators
  async function whoami() {
    try {
      me = await (await fetch("/api/me")).json();
    } catch (e) {
      me = {operator: null, csrf: null};
    }
    document.body.classList.toggle("operator", !!me.operator);
    document.getElementById("login").hidden = !!me.operator;
    document.getElementById("me").hidden = !me.operator;
    document.getElementById("me-name").textContent = me.operator ? "operator " + me.operator : "";
    document.getElementById("operator").hidden = !me.operator;
    if (me.operator) { loadSessions(); loadAudit(); }
    connect();
  }
  async function login(ev) {
    ev.preventDefault();
    const name = document.getElementById("login-name").value;
    const password = document.getElementById("login-password").value;
    const r = await fetch("/api/login", {method: "POST",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify({name, password})});
    const doc = await r.json();
    if (!r.ok) { say(doc.error ? doc.error.message : "login refused", true); return; }
    document.getElementById("login-password").value = "";
    say("logged in as " + doc.operator);
    whoami();
  }
  function fmt(ts) { return ts ? new Date(ts * 1000).toLocaleString() : ""; }
  function sessionRow(s, cols) {
    const tr = el("tr", s.status);
    for (const c of cols) {
      let v = s[c];
      if (c === "started_at" || c === "ended_at") v = fmt(v);
      if (c === "consumo_kwh" || c === "importe_eur") v = (v || 0).toFixed(2);
      tr.appendChild(el("td", "", v === null || v === undefined ? "" : v));
    }
    return tr;
  }
  function query() {
    const q = new URLSearchParams();
    const status = document.getElementById("f-status").value;
    const cp = document.getElementById("f-cp").value.trim();
    const driver = document.getElementById("f-driver").value.trim();
    const since = document.getElementById("f-since").value;
    if (status) q.set("status", status);
    if (cp) q.set("cp", cp);
    if (driver) q.set("driver", driver);
    if (since) q.set("since", since);
    return q;
  }
  async function loadSessions(ev) {
    if (ev) ev.preventDefault();
    const q = query();
    q.set("limit", "200");
    const csv = new URLSearchParams(q);
    csv.delete("status"); csv.delete("limit");
    document.getElementById("csv").href = "/api/tickets.csv?" + csv.toString();
    const r = await fetch("/api/sessions?" + q.toString());
    if (!r.ok) return;
    const doc = await r.json();
    document.querySelector("#sessions tbody").replaceChildren(...doc.sessions.map(s =>
      sessionRow(s, ["started_at", "ended_at", "cp_id", "driver_id", "consumo_kwh",
                     "importe_eur", "reason"])));
  }
  async function loadAudit() {
    const r = await fetch("/api/audit?limit=100");
    if (!r.ok) return;
    const doc = await r.json();
    document.querySelector("#audit tbody").replaceChildren(...doc.events.map(e => {
      const tr = el("tr", e.event === "rejected" || e.event === "refused" ? "bad" : "");
      tr.appendChild(el("td", "num", fmt(e.ts)));
      tr.appendChild(el("td", "", e.event));
      const what = Object.keys(e).filter(k => !["slot", "seq", "ts", "event"].includes(k))
        .map(k => k + "=" + e[k]).join("  ");
      tr.appendChild(el("td", "", what));
      return tr;
    }));
  }
  function curve(points) {
    const svg = document.getElementById("curve");
    const ns = "http://www.w3.org/2000/svg";
    svg.replaceChildren();
    if (points.length < 2) {
      const t = document.createElementNS(ns, "text");
      t.setAttribute("x", "10"); t.setAttribute("y", "60");
      t.textContent = points.length ? "starting…" : "no supply running";
      svg.appendChild(t);
      return;
    }
    const t0 = points[0][0], t1 = points[points.length - 1][0];
    const top = Math.max(...points.map(p => p[1]), 0.1);
    const xy = points.map(p => [10 + 380 * (p[0] - t0) / Math.max(t1 - t0, 1),
                                110 - 100 * p[1] / top]);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", xy.map(p => p[0].toFixed(1) + "," + p[1].toFixed(1)).join(" "));
    svg.appendChild(line);
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", "12"); label.setAttribute("y", "14");
    label.textContent = top.toFixed(2) + " kWh after " + Math.round(t1 - t0) + " s";
    svg.appendChild(label);
  }
  async function showDetail(cpId, open) {
    if (!me.operator) return;
    selected = cpId;
    detailAt = Date.now();
    const r = await fetch("/api/cps/" + encodeURIComponent(cpId));
    if (!r.ok) return;
    const cp = await r.json();
    document.getElementById("detail").hidden = false;
    document.getElementById("detail-title").textContent = cp.cp_id + " · " + cp.location +
      " · " + cp.label;
    curve(cp.curve || []);
    document.querySelector("#cp-sessions tbody").replaceChildren(...(cp.sessions || [])
      .slice(0, 10).map(s => sessionRow(s, ["started_at", "driver_id", "consumo_kwh",
                                             "importe_eur", "reason"])));
    if (open) document.getElementById("detail").scrollIntoView({block: "nearest"});
  }
  function connect() {
    if (source) source.close();
    source = new EventSource("/api/events");
    source.addEventListener("board", ev => { link(""); show(JSON.parse(ev.data)); });
    source.addEventListener("delta", ev => { link(""); merge(JSON.parse(ev.data)); });
    source.onopen = () => link("");
    source.onerror = () => link("web server unavailable: reconnecting…");
  }
  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("free-only").addEventListener("change", draw);
    document.getElementById("login").addEventListener("submit", login);
    document.getElementById("logout").addEventListener("click", async () => {
      await post("/api/logout");
      whoami();
    });
    document.getElementById("command").addEventListener("submit", async ev => {
      ev.preventDefault();
      const input = document.getElementById("command-line");
      const doc = await post("/api/command", {command: input.value});
      if (doc && doc.ok) input.value = "";
    });
    document.getElementById("filter").addEventListener("submit", loadSessions);
    document.getElementById("audit-load").addEventListener("click", loadAudit);
    document.querySelector("#board tbody").addEventListener("click", ev => {
      const tr = ev.target.closest("tr");
      if (tr && me.operator) showDetail(tr.dataset.cp, true);
    });
    fetch("/api/board").then(r => r.json()).then(doc => { if (!drawn) show(doc); })
      .catch(() => link("web server unavailable: reconnecting…"));
    whoami();
  });
})();
