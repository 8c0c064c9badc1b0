// Devices: a sortable, filterable table (refreshed every few seconds) and one device's view with its history.

import { api } from "./api.js";
import { ago, h, mb, mib, patchCells, patchRows, statusBadge, when } from "./format.js";

const REFRESH_MS = 5000;

const COLUMNS = [
  { key: "id", label: "Device", get: (d) => d.id,
    cell: (d) => h("a", { href: `#/devices/${encodeURIComponent(d.id)}` }, d.id) },
  { key: "status", label: "Status", get: (d) => d.status, cell: (d) => statusBadge(d.status) },
  { key: "last_seen", label: "Last seen", get: (d) => d.last_seen, cell: (d) => ago(d.last_seen) },
  { key: "arch", label: "Arch", get: (d) => d.capabilities.arch ?? "" },
  { key: "cores", label: "Cores", num: true, get: (d) => d.capabilities.cores ?? null },
  { key: "memory", label: "Memory", num: true, get: (d) => d.capabilities.memory_mb ?? null,
    cell: (d) => mib(d.capabilities.memory_mb) },
  { key: "kernels", label: "Kernels", get: kernels },
  { key: "rounds", label: "Rounds done", num: true, get: (d) => d.rounds_done },
  { key: "up", label: "Upload", num: true, get: (d) => d.bytes_up, cell: (d) => mb(d.bytes_up) },
  { key: "down", label: "Download", num: true, get: (d) => d.bytes_down, cell: (d) => mb(d.bytes_down) },
  { key: "error", label: "Last error", get: (d) => (d.last_error ? `${d.last_error_code ?? ""} ${d.last_error}` : ""),
    cell: (d) => (d.last_error ? h("span", { class: "error" }, `${errorText(d)} (`, at(d.last_error_at), ")") : "–") },
];

// "5 s ago" as a <time> with the exact instant (ISO 8601, UTC) for machines and the local time on hover.
function at(unix) {
  return unix ? h("time", { datetime: new Date(unix * 1000).toISOString(), title: when(unix) }, ago(unix)) : "–";
}

// "bad_data, round 3: <text>": the reason code and the round of the task that failed, then the device's text.
function errorText(d) {
  const where = d.last_error_round != null ? `, round ${d.last_error_round}` : "";
  return `${d.last_error_code ?? "error"}${where}: ${d.last_error}`;
}

function kernels(d) {
  const v = d.capabilities.library_versions?.["native-kernels"];
  if (v === undefined) return "unknown";
  return /^(no|none|unavailable|false|off)/i.test(v) || v === "" ? `torch (${v || "none"})` : `native (${v})`;
}

export async function devicesView(root, ctx) {
  const state = { sort: "id", desc: false, text: "", status: "all", devices: await api("/api/devices") };
  const filter = h("input", { type: "search", id: "device-filter", placeholder: "id, arch, error…",
    "aria-label": "Filter devices", oninput: () => { state.text = filter.value.toLowerCase(); draw(); } });
  const status = h("select", { id: "device-status", "aria-label": "Status",
    onchange: () => { state.status = status.value; draw(); } },
  ["all", "online", "offline"].map((s) => h("option", { value: s }, s)));
  const caption = h("caption");
  const head = h("tr");
  const body = h("tbody");
  const table = h("table", { class: "data", id: "devices-table" }, caption, h("thead", {}, head), body);
  root.replaceChildren(h("div", { class: "toolbar" }, h("h2", {}, "Devices"), filter, status),
    h("div", { class: "scroll" }, table));

  function draw() {
    patchCells(head, h("tr", {}, COLUMNS.map((c) => h("th", {
      scope: "col", "aria-sort": state.sort === c.key ? (state.desc ? "descending" : "ascending") : "none" },
    h("button", { type: "button", class: "sort", "data-sort": c.key, onclick: () => {
      state.desc = state.sort === c.key ? !state.desc : false;
      state.sort = c.key;
      draw();
      head.querySelector(`[data-sort="${c.key}"]`).focus();
    } }, c.label, h("span", { "aria-hidden": "true" },
      state.sort === c.key ? (state.desc ? " ▼" : " ▲") : ""))))));
    const column = COLUMNS.find((c) => c.key === state.sort);
    const rows = state.devices.filter((d) => (state.status === "all" || d.status === state.status)
      && (!state.text || [d.id, d.capabilities.arch, d.last_error, d.last_error_code].join(" ").toLowerCase().includes(state.text)));
    rows.sort((a, b) => compare(column.get(a), column.get(b)) * (state.desc ? -1 : 1));
    const online = state.devices.filter((d) => d.status === "online").length;
    caption.textContent = `${rows.length} of ${state.devices.length} devices shown, ${online} online`;
    patchRows(body, rows.map((d) => h("tr", { "data-device": d.id, "data-status": d.status },
      COLUMNS.map((c) => h("td", { class: c.num ? "num" : null }, c.cell ? c.cell(d) : (c.get(d) ?? "–"))))), "device");
    root.querySelector("#devices-table").dataset.rendered = String(performance.timeOrigin + performance.now());
  }
  draw();
  const timer = setInterval(async () => {
    try { state.devices = await api("/api/devices"); draw(); } catch (err) { ctx.fail(err); }
  }, REFRESH_MS);
  return () => clearInterval(timer);
}

function compare(a, b) {
  if (a === b) return 0;
  if (a === null || a === undefined) return 1;
  if (b === null || b === undefined) return -1;
  return typeof a === "number" && typeof b === "number" ? a - b : String(a).localeCompare(String(b));
}

export async function deviceView(root, ctx, deviceId) {
  const d = await api(`/api/devices/${encodeURIComponent(deviceId)}`);
  const caps = d.capabilities;
  const libs = Object.entries(caps.library_versions || {}).map(([k, v]) => `${k} ${v}`).join(", ");
  root.replaceChildren(h("section", { id: "device-view" },
    h("p", {}, h("a", { href: "#/devices" }, "← all devices")),
    h("h2", {}, d.id, " ", statusBadge(d.status)),
    h("dl", { class: "facts" }, [
      ["Last seen", `${ago(d.last_seen)} (${when(d.last_seen)})`], ["Reported state", d.state],
      ["Arch", caps.arch ?? "–"], ["Cores", caps.cores ?? "–"], ["Memory", mib(caps.memory_mb)],
      ["Kernels", kernels(d)], ["Libraries", libs || "–"], ["Samples", d.sample_count],
      ["Rounds done", d.rounds_done], ["Upload", mb(d.bytes_up)], ["Download", mb(d.bytes_down)],
      ["Last error", d.last_error ? `${errorText(d)} (run ${d.last_error_run_id ?? "–"}, ${when(d.last_error_at)})` : "–"],
    ].map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v)))),
    h("h3", {}, "History (latest rounds it was selected for)"),
    h("div", { class: "scroll" }, h("table", { class: "data", id: "device-history" },
      h("thead", {}, h("tr", {}, ["Run", "Round", "Contributed", "Upload", "Closed"].map((c) =>
        h("th", { scope: "col" }, c)))),
      h("tbody", {}, d.history.length ? d.history.map((r) => h("tr", {},
        h("td", {}, h("a", { href: `#/runs/${encodeURIComponent(r.run_id)}` }, r.run_id)),
        h("td", { class: "num" }, r.round),
        h("td", {}, r.accepted ? "yes" : "late (no update accepted)"),
        h("td", { class: "num" }, mb(r.upload_bytes)),
        h("td", {}, when(r.closed_at)))) : h("tr", {}, h("td", { colspan: 5 }, "Not selected for any round yet.")))))));
  return () => {};
}
