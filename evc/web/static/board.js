// evc web board: renders /api/events (Server-Sent Events of the board's JSON).
// Every text from the network (ids, locations, details) goes in as textContent: never HTML.
"use strict";
(function () {
  const STATES = ["Activado", "Suministrando", "Parado", "Averiado", "Desconectado"];
  const CLASS = {Activado: "activado", Suministrando: "suministrando", Parado: "parado",
                 Averiado: "averiado", Desconectado: "desconectado"};
  let latest = null, drawn = false, pending = false;

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
    if (cp.state === "Suministrando" && cp.supply) {
      const s = cp.supply;
      let text = (s.driver_id ? s.driver_id + " · " : "") + s.consumo_kwh.toFixed(2) +
        " kWh · " + s.importe_eur.toFixed(2) + " €";
      if (cp.site && cp.kw <= 0) text += " · en espera";
      else if (cp.kw) text += " · " + cp.kw.toFixed(1) + " kW";
      return text;
    }
    return cp.detail || "";
  }
  function row(cp) {
    const tr = el("tr", CLASS[cp.state] || "");
    tr.dataset.cp = cp.cp_id;
    tr.dataset.state = cp.state;
    tr.appendChild(el("td", "id", cp.cp_id));
    tr.appendChild(el("td", "loc", cp.location));
    tr.appendChild(el("td", "price", cp.price_eur_kwh.toFixed(2) + " €/kWh"));
    const st = el("td", "state " + (CLASS[cp.state] || ""), cp.label || cp.state);
    if (cp.trust) st.appendChild(el("span", "trust " + cp.trust, cp.trust));
    tr.appendChild(st);
    tr.appendChild(el("td", "detail", detail(cp)));
    return tr;
  }
  function draw() {
    pending = false;
    const doc = latest;
    if (!doc) return;
    const c = doc.central || {};
    const central = document.getElementById("central");
    if (c.available) {
      central.className = "central ok";
      central.textContent = "central " + (c.central || "") + " · up since " + time(c.started_at);
    } else {
      central.className = "central down";
      central.textContent = "CENTRAL UNAVAILABLE" +
        (c.last_heartbeat ? " since " + time(c.last_heartbeat) : "");
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
    document.querySelector("#board tbody").replaceChildren(...cps.map(row));
    document.getElementById("empty").hidden = (doc.cps || []).length > 0;
    document.body.dataset.version = String(Date.now());
    drawn = true;
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
  function connect() {
    const source = new EventSource("/api/events");
    source.addEventListener("board", ev => { link(""); show(JSON.parse(ev.data)); });
    source.onopen = () => link("");
    source.onerror = () => link("web server unavailable: reconnecting…");
  }
  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("free-only").addEventListener("change", draw);
    fetch("/api/board").then(r => r.json()).then(doc => { if (!drawn) show(doc); })
      .catch(() => link("web server unavailable: reconnecting…"));
    connect();
  });
})();
