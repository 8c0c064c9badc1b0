// Line charts over uPlot (vendored, global `uPlot`). Each chart keeps its element's width on resize.

const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563",
  "#65a30d", "#9333ea"];

export const color = (i) => COLORS[i % COLORS.length];

const charts = new Set();
let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    for (const chart of charts) {
      if (!chart.root.isConnected) { charts.delete(chart); continue; }
      chart.setSize({ width: widthOf(chart.root.parentElement), height: chart.height });
    }
  }, 100);
});

function widthOf(el) {
  return Math.max(240, Math.floor(el.clientWidth || 400));
}

// spec: {title, x: label, y: label, unit (appended to values), series: [{label, color}]}
// data: [xs, ys1, ys2, ...] (uPlot's aligned format; null = no point).
export function lineChart(container, spec, data) {
  const height = window.matchMedia("(max-width: 700px)").matches ? 200 : 230;
  const unit = spec.unit || "";
  const fmt = (v) => (v == null ? "–" : `${Number(v).toFixed(spec.digits ?? 1)}${unit}`);
  const opts = {
    title: spec.title,
    width: widthOf(container),
    height,
    scales: { x: { time: false } },
    legend: { live: true },
    cursor: { focus: { prox: 16 } },
    series: [
      { label: spec.x, value: (u, v) => (v == null ? "–" : Number(v).toFixed(spec.xDigits ?? 0)) },
      ...spec.series.map((s, i) => ({
        label: s.label, stroke: s.color || color(i), width: 2, spanGaps: true, value: (u, v) => fmt(v),
        points: { show: true, size: 4 },
      })),
    ],
    axes: [
      { label: spec.x, stroke: "#374151", grid: { stroke: "#e5e7eb" } },
      { label: spec.y, stroke: "#374151", grid: { stroke: "#e5e7eb" }, size: 56 },
    ],
  };
  const chart = new uPlot(opts, data, container);
  chart.height = height;
  charts.add(chart);
  return chart;
}

// Joins series with different x arrays onto the union of their xs (for overlays of several runs).
export function joinSeries(tables) {
  if (tables.length === 0) return [[]];
  return uPlot.join(tables.map((t) => [t[0], t[1]]));
}
