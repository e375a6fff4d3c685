// muster portal: progressive enhancement only (every form works without this script).
// Copy buttons, confirmations, JSON checks, form sections that follow a choice, and the live
// telemetry table and chart fed by server-sent events. Values are inserted as text, never HTML.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  for (const b of document.querySelectorAll("button[data-copy]")) {
    b.addEventListener("click", async () => {
      const el = document.getElementById(b.dataset.copy);
      const text = el ? (el.value !== undefined ? el.value : el.textContent) : "";
      try { await navigator.clipboard.writeText(text); }
      catch (_) { if (el && el.select) { el.select(); document.execCommand("copy"); } }
      b.textContent = "Copied";
      setTimeout(() => { b.textContent = "Copy"; }, 1500);
    });
  }

  for (const f of document.querySelectorAll("form[data-confirm]")) {
    f.addEventListener("submit", (e) => { if (!window.confirm(f.dataset.confirm)) e.preventDefault(); });
  }

  for (const t of document.querySelectorAll("textarea[data-json]")) {
    const msg = document.getElementById(t.getAttribute("aria-describedby") || "");
    const check = () => {
      if (t.value.trim() === "") { t.removeAttribute("aria-invalid"); return; }
      try { JSON.parse(t.value); t.removeAttribute("aria-invalid"); if (msg) msg.textContent = "Valid JSON."; }
      catch (err) { t.setAttribute("aria-invalid", "true"); if (msg) msg.textContent = "Not valid JSON: " + err.message; }
    };
    t.addEventListener("input", check);
  }

  // Sections shown only for one choice: data-when="name=value".
  const dependents = document.querySelectorAll("[data-when]");
  const update = () => {
    for (const d of dependents) {
      const [name, value] = d.dataset.when.split("=");
      const form = d.closest("form");
      const field = form && form.elements[name];
      if (!field) continue;
      d.hidden = field.value !== value;
    }
  };
  if (dependents.length) { document.addEventListener("change", update); update(); }

  for (const panel of document.querySelectorAll("[data-live]")) live(panel);
});

const COLORS = ["#0b63c5", "#d2452b", "#17753a", "#8e44ad", "#c98a00", "#00838f", "#6d4c41", "#5c6bc0"];

function live(panel) {
  const tbody = panel.querySelector("table.events tbody");
  const canvas = panel.querySelector("canvas.live-chart");
  const legend = panel.querySelector(".legend");
  const state = panel.querySelector(".live-state");
  const series = new Map(); // field -> [{t, v}]
  let points = 0;
  const source = new EventSource(panel.dataset.live);
  source.onopen = () => { state.textContent = "Live."; };
  source.onerror = () => { state.textContent = "Reconnecting…"; };
  source.addEventListener("telemetry", (msg) => {
    let e;
    try { e = JSON.parse(msg.data); } catch (_) { return; }
    const row = document.createElement("tr");
    const body = typeof e.body === "string" ? e.body : JSON.stringify(e.body);
    const props = Object.entries(e.properties || {}).map(([k, v]) => k + "=" + v).join(", ");
    for (const text of [e.enqueuedTimeUtc || "", e.deviceId || "", body, props]) {
      const td = document.createElement("td");
      td.textContent = text;
      row.appendChild(td);
    }
    tbody.insertBefore(row, tbody.firstChild);
    while (tbody.rows.length > 50) tbody.deleteRow(tbody.rows.length - 1);
    if (e.body && typeof e.body === "object" && !Array.isArray(e.body)) {
      const t = Date.parse(e.enqueuedTimeUtc) || Date.now();
      for (const [k, v] of Object.entries(e.body)) {
        if (typeof v !== "number" || !isFinite(v)) continue;
        if (!series.has(k)) series.set(k, []);
        const s = series.get(k);
        s.push({ t, v });
        if (s.length > 120) s.shift();
        points++;
      }
      canvas.dataset.points = String(points);
      draw(canvas, legend, series);
    }
  });
}

// Each field on its own scale (temperature and pressure differ by orders of magnitude); the
// legend gives each field's latest value and range.
function draw(canvas, legend, series) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 8;
  ctx.clearRect(0, 0, w, h);
  let t0 = Infinity, t1 = -Infinity;
  for (const s of series.values()) for (const p of s) { t0 = Math.min(t0, p.t); t1 = Math.max(t1, p.t); }
  if (!isFinite(t0)) return;
  const span = Math.max(t1 - t0, 1);
  ctx.strokeStyle = "#e1e5ea";
  for (let i = 0; i <= 4; i++) { const y = pad + (h - 2 * pad) * i / 4; ctx.beginPath(); ctx.moveTo(0, y); ctx.lineTo(w, y); ctx.stroke(); }
  legend.textContent = "";
  let i = 0;
  for (const [name, s] of series) {
    const color = COLORS[i++ % COLORS.length];
    let lo = Infinity, hi = -Infinity;
    for (const p of s) { lo = Math.min(lo, p.v); hi = Math.max(hi, p.v); }
    const range = hi - lo || 1;
    ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
    s.forEach((p, j) => {
      const x = pad + (w - 2 * pad) * (p.t - t0) / span;
      const y = h - pad - (h - 2 * pad) * (hi === lo ? 0.5 : (p.v - lo) / range);
      if (j === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
    const item = document.createElement("span");
    item.style.setProperty("--c", color);
    item.textContent = name + " " + s[s.length - 1].v + " (" + lo + "–" + hi + ")";
    legend.appendChild(item);
  }
}
