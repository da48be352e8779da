// Sluice console: the few things the server-rendered pages need from script (no inline
// script: the Content-Security-Policy allows only files the console serves).
"use strict";

// Charts on the overview: the series the page embeds as a JSON block, drawn with uPlot.
function drawCharts() {
  const block = document.getElementById("series");
  if (!block || typeof uPlot === "undefined") return;
  const s = JSON.parse(block.textContent);
  if (!s || !s.t) return;
  const draw = (id, series, columns) => {
    const el = document.getElementById(id);
    if (!el) return;
    const width = Math.max(320, el.clientWidth || 600);
    const opts = {
      width: width,
      height: 220,
      series: [{}].concat(series),
      axes: [{}, { size: 60 }],
      legend: { live: true },
    };
    el.textContent = "";
    new uPlot(opts, [s.t].concat(columns), el);
  };
  draw("chart-traffic",
       [{ label: "flows", stroke: "#2563eb", width: 2 }, { label: "requests", stroke: "#059669", width: 2 }],
       [s.flows, s.requests]);
  draw("chart-risk",
       [{ label: "blocked", stroke: "#dc2626", width: 2 }, { label: "DLP findings", stroke: "#d97706", width: 2 }],
       [s.blocked, s.findings]);
  document.body.dataset.charts = "drawn";
}

document.addEventListener("DOMContentLoaded", drawCharts);
