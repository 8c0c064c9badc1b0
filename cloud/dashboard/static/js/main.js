// The page: sign-in, hash routes (#/runs, #/runs/ID, #/compare/ID,ID, #/devices, #/devices/ID).

import { AuthError, setToken, token } from "./api.js";
import { color, joinSeries, lineChart } from "./charts.js";
import { deviceView, devicesView } from "./devices.js";
import { h } from "./format.js";
import { runView, series } from "./run.js";
import { runsView } from "./runs.js";
import { api } from "./api.js";

const content = document.getElementById("content");
const login = document.getElementById("login");
const statusLine = document.getElementById("status-line");
let cleanup = () => {};

const ctx = {
  say: (text) => { statusLine.textContent = text; statusLine.classList.remove("error"); },
  fail: (err) => {
    if (err instanceof AuthError) { signOut(err.message); return; }
    statusLine.textContent = `Error: ${err.message}`;
    statusLine.classList.add("error");
  },
  refresh: () => route(),
};

function signOut(message = "") {
  setToken(null);
  cleanup();
  cleanup = () => {};
  content.replaceChildren();
  document.getElementById("sign-out").hidden = true;
  login.hidden = false;
  document.getElementById("login-error").textContent = message;
  document.getElementById("token").focus();
}

async function compareView(root, ids) {
  const runs = await Promise.all(ids.map((id) => api(`/api/runs/${encodeURIComponent(id)}`)));
  const boxes = [h("figure", { class: "chart" }), h("figure", { class: "chart" }), h("figure", { class: "chart" })];
  root.replaceChildren(h("section", { id: "compare-view" }, h("h2", {}, `Overlay of ${runs.length} runs`),
    h("ul", {}, runs.map((r) => h("li", {}, h("a", { href: `#/runs/${encodeURIComponent(r.id)}` },
      r.name || r.id), ` (${r.config.algorithm}, ${r.status})`))), h("div", { class: "charts" }, boxes)));
  const all = runs.map((r) => series(r, r.rounds.slice().sort((a, b) => a.round - b.round)));
  const labels = runs.map((r, i) => ({ label: r.name || r.id, color: color(i) }));
  const pick = (xKey) => joinSeries(all.map((s) => {
    const keep = s.acc.map((v, i) => i).filter((i) => s.acc[i] != null);
    return [keep.map((i) => s[xKey][i]), keep.map((i) => s.acc[i])];
  }));
  lineChart(boxes[0], { title: "Accuracy vs round", x: "round", y: "%", unit: " %", series: labels }, pick("x"));
  lineChart(boxes[1], { title: "Accuracy vs cumulative upload", x: "upload (MB)", y: "%", unit: " %",
    xDigits: 2, series: labels }, pick("up"));
  lineChart(boxes[2], { title: "Accuracy vs wall-clock", x: "time since start (s)", y: "%", unit: " %",
    xDigits: 1, series: labels }, pick("wall"));
  return () => {};
}

async function route() {
  cleanup();
  cleanup = () => {};
  if (!token()) { signOut(); return; }
  login.hidden = true;
  document.getElementById("sign-out").hidden = false;
  const parts = (location.hash.replace(/^#\/?/, "") || "runs").split("/").map(decodeURIComponent);
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === parts[0] || (parts[0] === "compare" && link.dataset.nav === "runs")) {
      link.setAttribute("aria-current", "page");
    } else link.removeAttribute("aria-current");
  }
  try {
    if (parts[0] === "runs" && parts[1]) cleanup = await runView(content, ctx, parts[1]);
    else if (parts[0] === "compare") cleanup = await compareView(content, parts[1].split(","));
    else if (parts[0] === "devices" && parts[1]) cleanup = await deviceView(content, ctx, parts[1]);
    else if (parts[0] === "devices") cleanup = await devicesView(content, ctx);
    else cleanup = await runsView(content, ctx);
    document.body.dataset.view = parts[0];
  } catch (err) {
    ctx.fail(err);
  }
}

document.getElementById("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  setToken(document.getElementById("token").value.trim());
  document.getElementById("token").value = "";
  route();
});
document.getElementById("sign-out").addEventListener("click", () => signOut("Signed out."));
window.addEventListener("hashchange", route);
route();
