// Run view: live charts (server-sent events), the round timeline and the contributing devices.

import { api, followEvents } from "./api.js";
import { lineChart } from "./charts.js";
import { h, mb, pct, phaseText, secs, statusBadge, when } from "./format.js";
import { runActions } from "./runs.js";

const TIMELINE_ROWS = 50;

// Chart data from round records (sorted by round). Accuracy in %, bytes in MB, time in s since the start.
export function series(run, rounds) {
  const x = rounds.map((r) => r.round);
  const acc = rounds.map((r) => (r.accuracy == null ? null : r.accuracy * 100));
  const glob = rounds.map((r) => (r.global_accuracy == null ? null : r.global_accuracy * 100));
  const up = rounds.map((r) => r.upload_bytes / 1e6);
  let elapsed = 0;
  const start = run.started_at ?? rounds[0]?.started_at ?? 0;
  const wall = rounds.map((r) => {
    elapsed = r.closed_at != null ? r.closed_at - start : elapsed + (r.seconds || 0);
    return elapsed;
  });
  const perRound = (key) => rounds.map((r, i) => (r[key] - (i ? rounds[i - 1][key] : 0)) / 1e6);
  const layers = [...new Set(rounds.flatMap((r) => Object.keys(r.layer_density || {})))];
  return { x, acc, glob, up, wall, upRound: perRound("upload_bytes"), downRound: perRound("download_bytes"),
    layers, density: [rounds.map((r) => r.density * 100),
      ...layers.map((l) => rounds.map((r) => (r.layer_density?.[l] == null ? null : r.layer_density[l] * 100)))] };
}

export async function runView(root, ctx, runId) {
  const run = await api(`/api/runs/${encodeURIComponent(runId)}`);
  const rounds = run.rounds.slice().sort((a, b) => a.round - b.round);
  delete run.rounds;
  const header = h("div", { class: "run-head" });
  const chartsEl = h("div", { class: "charts" });
  const timeline = h("div", { class: "scroll" });
  const errors = h("ul", { class: "device-errors" });
  const view = h("section", { id: "run-view", "data-run": runId, "data-last-round": rounds.at(-1)?.round ?? 0 },
    header, chartsEl, h("h3", {}, "Round timeline"), timeline, h("h3", {}, "Device errors"), errors);
  root.replaceChildren(view);
  let showAll = false;
  const boxes = ["acc-round", "acc-upload", "acc-wall", "bytes", "density"].map((id) =>
    h("figure", { class: "chart", id: `chart-${id}` }));
  chartsEl.replaceChildren(...boxes);
  let charts = null;

  const drawHeader = () => {
    header.replaceChildren(...[
      h("h2", {}, run.name || run.id, " ", statusBadge(run.status)),
      h("dl", { class: "facts" },
        fact("Run id", run.id), fact("Algorithm", run.config.algorithm), fact("Phase", phaseText(run.phase)),
        fact("Rounds", `${rounds.at(-1)?.round ?? 0} / ${run.config.rounds}`),
        fact("Latest accuracy", pct(rounds.findLast((r) => r.accuracy != null)?.accuracy)),
        fact("Upload", mb(rounds.at(-1)?.upload_bytes ?? 0)), fact("Download", mb(rounds.at(-1)?.download_bytes ?? 0)),
        fact("Started", when(run.started_at)), fact("Finished", when(run.finished_at))),
      run.error ? h("p", { class: "error" }, run.error) : null,
      runActions(run, { ...ctx, refresh: () => {} })].filter(Boolean));
  };

  const drawCharts = () => {
    const s = series(run, rounds);
    const data = {
      "acc-round": [s.x, s.acc, s.glob], "acc-upload": [s.up, s.acc, s.glob], "acc-wall": [s.wall, s.acc, s.glob],
      bytes: [s.x, s.upRound, s.downRound], density: [s.x, ...s.density],
    };
    if (!charts || charts.layers !== s.layers.join()) {
      for (const box of boxes) box.replaceChildren();
      const acc = [{ label: "accuracy" }, { label: "global accuracy" }];
      charts = {
        layers: s.layers.join(),
        "acc-round": lineChart(boxes[0], { title: "Accuracy vs round", x: "round", y: "%", unit: " %",
          series: acc }, data["acc-round"]),
        "acc-upload": lineChart(boxes[1], { title: "Accuracy vs cumulative upload", x: "upload (MB)", y: "%",
          unit: " %", xDigits: 2, series: acc }, data["acc-upload"]),
        "acc-wall": lineChart(boxes[2], { title: "Accuracy vs wall-clock", x: "time since start (s)", y: "%",
          unit: " %", xDigits: 1, series: acc }, data["acc-wall"]),
        bytes: lineChart(boxes[3], { title: "Bytes per round", x: "round", y: "MB", unit: " MB", digits: 3,
          series: [{ label: "upload" }, { label: "download" }] }, data.bytes),
        density: lineChart(boxes[4], { title: "Density (kept weights)", x: "round", y: "%", unit: " %",
          series: [{ label: "model" }, ...s.layers.map((l) => ({ label: l }))] }, data.density),
      };
    } else {
      for (const [key, d] of Object.entries(data)) charts[key].setData(d);
    }
  };

  const drawTimeline = () => {
    const shown = rounds.slice().reverse().slice(0, showAll ? undefined : TIMELINE_ROWS);
    const more = rounds.length > TIMELINE_ROWS
      ? h("button", { type: "button", onclick: () => { showAll = !showAll; drawTimeline(); } },
        showAll ? `Show the last ${TIMELINE_ROWS} rounds` : `Show all ${rounds.length} rounds`) : null;
    timeline.replaceChildren(h("table", { class: "data", id: "timeline" },
      h("thead", {}, h("tr", {}, ["Round", "Selected", "Accepted", "Late", "Rejected", "Retried", "Round time",
        "Accuracy", "Upload", "Contributing devices"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, shown.map(timelineRow))), ...(more ? [more] : []));
  };

  const draw = (publishedAt) => {
    drawHeader();
    drawCharts();
    drawTimeline();
    view.dataset.lastRound = String(rounds.at(-1)?.round ?? 0);
    view.dataset.drawnAt = String(performance.timeOrigin + performance.now());
    if (publishedAt) view.dataset.publishedAt = String(publishedAt * 1000);
  };
  draw();

  const addRound = (record) => {
    if (rounds.length && record.round <= rounds.at(-1).round) {
      const i = rounds.findIndex((r) => r.round === record.round);
      if (i >= 0) rounds[i] = record;
      return;
    }
    rounds.push(record);
  };
  const controller = new AbortController();
  let pending = null;
  followEvents(runId, {
    signal: controller.signal,
    onEvent: (kind, data) => {
      if (kind === "round") addRound(data);
      else if (kind === "status") {
        run.status = data.status;
        run.error = data.error;
        if (data.status === "running" && !run.started_at) run.started_at = data.published_at;
        if (!["created", "running"].includes(data.status)) run.finished_at = data.published_at;
      } else if (kind === "device_error") {
        errors.append(h("li", {}, `${when(data.published_at)}: device `,
          h("a", { href: `#/devices/${encodeURIComponent(data.device_id)}` }, data.device_id),
          ` round ${data.round ?? "?"}: ${data.code ?? ""} ${data.message ?? ""}`));
      } else if (kind === "phase") run.phase = data.phase;
      // Draw once per animation frame however many events arrived together.
      if (!pending) pending = requestAnimationFrame(() => { pending = null; draw(data.published_at); });
    },
    onGap: async () => {
      const since = rounds.at(-1)?.round ?? 0;
      for (const r of await api(`/api/runs/${encodeURIComponent(runId)}/rounds?since=${since}`)) addRound(r);
      draw();
    },
  }).catch((err) => ctx.fail(err));
  return () => controller.abort();
}

function fact(name, value) {
  return h("div", {}, h("dt", {}, name), h("dd", {}, value));
}

function timelineRow(r) {
  const rejected = Object.entries(r.ignored || {}).filter(([, n]) => n > 0).map(([k, n]) => `${k} ${n}`);
  const devices = Object.keys(r.upload_by_device || {}).length ? Object.keys(r.upload_by_device) : r.accepted;
  return h("tr", { "data-round": r.round },
    h("td", { class: "num" }, r.round),
    h("td", { class: "num" }, (r.selected || []).length),
    h("td", { class: "num" }, (r.accepted || []).length),
    h("td", {}, (r.late || []).length ? r.late.join(", ") : "–"),
    h("td", {}, rejected.length ? rejected.join(", ") : "–"),
    h("td", { class: "num" }, r.retries || 0),
    h("td", { class: "num" }, secs(r.seconds)),
    h("td", { class: "num" }, pct(r.accuracy)),
    h("td", { class: "num" }, mb(r.upload_bytes)),
    h("td", {}, h("div", { class: "device-list" }, devices.map((d, i) => [i ? ", " : "",
      h("a", { href: `#/devices/${encodeURIComponent(d)}` }, d)]))));
}
