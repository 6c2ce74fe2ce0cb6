// edged web UI: live fields over Server-Sent Events, ages, the tag filter and two small SVG charts.
// No framework and no build step; the server renders every page, this only keeps it current.
"use strict";
(function () {
  const body = document.body;
  const page = body.dataset.page;
  const tag = body.dataset.tag || "";
  let offset = body.dataset.now ? Number(body.dataset.now) - Date.now() : 0; // server clock - ours

  function fmtAge(s) {
    if (s < 0) s = 0;
    if (s < 60) return s.toFixed(0) + " s";
    if (s < 3600) return (s / 60).toFixed(0) + " min";
    if (s < 86400) return (s / 3600).toFixed(1) + " h";
    return (s / 86400).toFixed(1) + " d";
  }

  function ages() {
    const now = Date.now() + offset;
    for (const el of document.querySelectorAll("[data-ts]")) {
      const ts = el.dataset.ts;
      el.textContent = ts ? fmtAge((now - Number(ts)) / 1000) : "-";
    }
  }

  function live() {
    const status = document.getElementById("live");
    const src = new EventSource("/events?page=" + encodeURIComponent(page) + (tag ? "&tag=" + encodeURIComponent(tag) : ""));
    src.onmessage = function (ev) {
      const msg = JSON.parse(ev.data);
      offset = msg.now - Date.now();
      for (const [id, text] of Object.entries(msg.text)) {
        const el = document.getElementById(id);
        if (el) el.textContent = text;
      }
      for (const [id, cls] of Object.entries(msg.cls)) {
        const el = document.getElementById(id);
        if (el) el.className = cls;
      }
      for (const [id, ts] of Object.entries(msg.ts)) {
        const el = document.getElementById(id);
        if (el) el.dataset.ts = ts;
      }
      ages();
      if (status) {
        status.textContent = "live · " + new Date(msg.now).toLocaleTimeString();
        status.className = "live";
      }
      if (page === "tags") filter();
      if (page === "alarms") alarmButtons();
    };
    // a page left behind (navigation, back/forward cache) lets its stream go at once: the browser
    // allows only six connections per server, and a stream still held would block the next page
    window.addEventListener("pagehide", () => src.close());
    src.onerror = function () {
      if (status) { status.textContent = "reconnecting…"; status.className = "nodata"; }
    };
  }

  // ------------------------------------------------------------------ tags page filter
  let rows = [];
  function filter() {
    const box = document.getElementById("filter");
    const onlyBad = document.getElementById("only-bad");
    if (!box) return;
    const words = box.value.toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    for (const r of rows) {
      const status = r.status.textContent.toLowerCase();
      const text = r.text + " " + status;
      let ok = words.every(w => text.includes(w));
      if (ok && onlyBad.checked) ok = /uncertain|bad/.test(r.status.className);
      if (r.tr.hidden === ok) r.tr.hidden = !ok;
      if (ok) shown++;
    }
    document.getElementById("shown").textContent = shown + " shown";
  }
  function setupFilter() {
    const table = document.getElementById("tag-table");
    if (!table) return;
    for (const tr of table.tBodies[0].rows) {
      rows.push({ tr: tr, text: (tr.cells[0].textContent + " " + tr.cells[2].textContent).toLowerCase(),
                  status: tr.cells[3].firstElementChild });
    }
    const box = document.getElementById("filter");
    const q = new URLSearchParams(location.search).get("filter");
    if (q) box.value = q;
    let timer = 0;
    box.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(filter, 120); });
    document.getElementById("only-bad").addEventListener("change", filter);
    filter();
  }

  // ------------------------------------------------------------------ alarms page
  // Only the buttons that apply: Acknowledge while unacknowledged, Shelve or Unshelve by the shelve.
  function alarmButtons() {
    for (const tr of document.querySelectorAll("tr[data-alarm]")) {
      const path = tr.dataset.alarm;
      const state = document.getElementById("al-state:" + path);
      const sup = document.getElementById("al-sup:" + path);
      if (!state || !sup) continue;
      const unacked = /alarm-(unack|rtn_unack)\b/.test(state.className);
      const shelved = sup.className === "alarm-shelved";
      const show = { ack: unacked, shelve: !shelved, unshelve: shelved };
      for (const [cls, on] of Object.entries(show)) {
        const b = tr.querySelector("button." + cls);
        if (b && b.form.hidden === on) b.form.hidden = !on;
      }
    }
  }
  // Submitted in the background: the page stays, the event stream shows the new state.
  function setupAlarmForms() {
    for (const form of document.querySelectorAll("form.alarm-action")) {
      form.addEventListener("submit", async function (ev) {
        ev.preventDefault();
        const out = document.getElementById("alarm-result");
        for (const b of form.querySelectorAll("button")) b.disabled = true;
        try {
          const r = await fetch(form.getAttribute("action"), { method: "POST", body: new URLSearchParams(new FormData(form)),
                                               headers: { Accept: "application/json" }, credentials: "same-origin" });
          let text;
          if ((r.headers.get("Content-Type") || "").startsWith("application/json")) {
            const d = await r.json();
            text = d.result === "accepted" ? `${d.tag}: ${d.reason}` : `${d.tag}: ${d.result}: ${d.reason}`;
          } else {
            text = (await r.text()).trim();
          }
          out.textContent = text;
          out.className = r.ok ? "result" : "result refused";
        } catch (e) {
          out.textContent = "not sent: " + e;
          out.className = "result refused";
        } finally {
          out.hidden = false;
          for (const b of form.querySelectorAll("button")) b.disabled = false;
        }
      });
    }
    alarmButtons();
  }

  // ------------------------------------------------------------------ charts (SVG)
  const NS = "http://www.w3.org/2000/svg";
  function svgEl(name, attrs) {
    const el = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    return el;
  }
  function chart(fig, lo, hi, series) {
    // series: [{ cls, points: [[t, y], ...], band: [[t, ymin, ymax], ...] }]; each scaled to its own range
    const W = 1000, H = 260, L = 60, R = 10, T = 10, B = 25;
    const old = fig.querySelector("svg");
    if (old) old.remove();
    const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
    const x = t => L + (W - L - R) * (t - lo) / Math.max(1, hi - lo);
    svg.appendChild(svgEl("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
    svg.appendChild(svgEl("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
    for (let i = 0; i <= 4; i++) {
      const t = lo + (hi - lo) * i / 4;
      const label = svgEl("text", { x: x(t), y: H - 8, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" });
      label.textContent = new Date(t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      svg.appendChild(label);
    }
    series.forEach((s, k) => {
      const ys = s.band ? s.band.flatMap(p => [p[1], p[2]]) : s.points.map(p => p[1]);
      if (!ys.length) return;
      let ymin = Math.min(...ys), ymax = Math.max(...ys);
      if (s.zero) ymin = Math.min(0, ymin);
      if (ymax === ymin) { ymax += 1; ymin -= s.zero ? 0 : 1; }
      const y = v => T + (H - T - B) * (1 - (v - ymin) / (ymax - ymin));
      if (k === 0) {
        for (const v of [ymin, ymax]) {
          const label = svgEl("text", { x: L - 4, y: y(v) + 4, "text-anchor": "end" });
          label.textContent = Number(v.toPrecision(4));
          svg.appendChild(label);
        }
      }
      if (s.band) {
        const up = s.band.map(p => `${x(p[0]).toFixed(1)},${y(p[2]).toFixed(1)}`);
        const down = s.band.slice().reverse().map(p => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`);
        svg.appendChild(svgEl("polygon", { class: "band", points: up.concat(down).join(" ") }));
      }
      const pts = s.points.map(p => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
      svg.appendChild(svgEl("polyline", { class: s.cls, points: pts }));
      for (const m of s.marks || []) {
        svg.appendChild(svgEl("rect", { class: m[1] >= 2 ? "mark-bad" : "mark-uncertain", x: x(m[0]) - 1, y: H - B - 4, width: 3, height: 4 }));
      }
    });
    fig.insertBefore(svg, fig.firstChild);
    return svg;
  }

  async function trend() {
    const fig = document.getElementById("trend");
    if (!fig) return;
    const r = await fetch("/api/trend?tag=" + encodeURIComponent(tag) + "&range=" + encodeURIComponent(body.dataset.range));
    const d = await r.json();
    const info = document.getElementById("trend-info");
    const svg = chart(fig, d.lo_ms, d.hi_ms, [{
      cls: "line", points: d.points.map(p => [p[0], p[3]]), band: d.points.map(p => [p[0], p[1], p[2]]),
      marks: d.points.filter(p => p[4] >= 1).map(p => [p[0], p[4]]),
    }]);
    svg.dataset.points = d.points.length;
    svg.dataset.samples = d.samples;
    info.textContent = `${d.samples} samples from the buffer, ${d.points.length} points (min and max of each kept)` +
      (d.truncated ? ", newest part only" : "") + "; marks: Uncertain (amber) and Bad (red) samples";
  }

  async function uplinkCharts() {
    const figs = document.querySelectorAll(".uplink-chart");
    if (!figs.length) return;
    const r = await fetch("/api/uplinks");
    const d = await r.json();
    const now = Date.now() + offset;
    for (const fig of figs) {
      const pts = (d[fig.dataset.uplink] || []).map(p => [p[0] * 1000, p[1], p[2], p[3]]);
      chart(fig, now - 3600e3, now, [
        { cls: "line", zero: true, points: pts.map(p => [p[0], p[1]]) },
        { cls: "line3", zero: true, points: pts.map(p => [p[0], p[2]]) },
        { cls: "line2", zero: true, points: pts.map(p => [p[0], p[3]]) },
      ]);
      const last = pts.length ? pts[pts.length - 1] : [0, 0, 0, 0];
      fig.querySelector("figcaption").textContent =
        `last hour: backlog (blue) ${last[1]} samples; live (green) ${last[2].toFixed(1)}/s, historical (amber) ${last[3].toFixed(1)}/s; each line on its own scale`;
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    setupFilter();
    setupAlarmForms();
    ages();
    setInterval(ages, 1000);
    if (page !== "audit" && page !== "login" && page !== "error") live();
    trend().catch(e => { const i = document.getElementById("trend-info"); if (i) i.textContent = "trend unavailable: " + e; });
    uplinkCharts();
    if (document.querySelector(".uplink-chart")) setInterval(uplinkCharts, 5000);
  });
})();
