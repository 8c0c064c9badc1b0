// Runs list (with start/stop and overlay selection) and the create form generated from RunConfig's schema.

import { api, ApiError } from "./api.js";
import { h, mb, patchRows, pct, phaseText, statusBadge, when } from "./format.js";

const REFRESH_MS = 3000;

export async function runsView(root, ctx) {
  const selected = new Set();
  const overlay = h("button", { type: "button", id: "overlay", disabled: true, onclick: () => {
    location.hash = `#/compare/${[...selected].map(encodeURIComponent).join(",")}`;
  } }, "Overlay selected runs");
  const caption = h("caption");
  const body = h("tbody");
  const table = h("table", { class: "data", id: "runs-table" }, caption,
    h("thead", {}, h("tr", {},
      ["Overlay", "Run", "Status", "Phase", "Algorithm", "Rounds", "Latest accuracy", "Upload", "Download",
        "Created", "Actions"].map((c) => h("th", { scope: "col" }, c)))), body);
  const fill = (runs) => {
    for (const id of [...selected]) if (!runs.some((r) => r.id === id)) selected.delete(id);
    overlay.disabled = selected.size < 2;
    caption.textContent = `${runs.length} run${runs.length === 1 ? "" : "s"}, newest first`;
    const rows = runs.slice().reverse().map((run) => runRow(run, selected, overlay, { ...ctx, refresh }));
    patchRows(body, rows.length ? rows : [h("tr", {}, h("td", { colspan: 11 }, "No runs yet: create one below."))],
      "run");
  };
  const refresh = async () => fill(await api("/api/runs"));
  await refresh();
  root.replaceChildren(
    h("div", { class: "toolbar" }, h("h2", {}, "Runs"), overlay),
    h("div", { class: "scroll" }, table),
    await createForm({ ...ctx, refresh }));
  // The list is re-read every few seconds (a run's own view follows its events live).
  const timer = setInterval(() => refresh().catch((err) => ctx.fail(err)), REFRESH_MS);
  return () => clearInterval(timer);
}

function runRow(run, selected, overlay, ctx) {
  const box = h("input", { type: "checkbox", "aria-label": `overlay ${run.name || run.id}`,
    checked: selected.has(run.id), onchange: () => {
    if (box.checked) selected.add(run.id); else selected.delete(run.id);
    overlay.disabled = selected.size < 2;
  } });
  return h("tr", { "data-run": run.id },
    h("td", {}, box),
    h("td", {}, h("a", { href: `#/runs/${encodeURIComponent(run.id)}` }, run.name || run.id),
      run.name ? h("div", { class: "muted" }, run.id) : null),
    h("td", { title: run.error || "" }, statusBadge(run.status), run.error ? h("div", { class: "muted clip" },
      run.error) : null),
    h("td", {}, phaseText(run.phase)),
    h("td", {}, run.algorithm ?? "–"),
    h("td", { class: "num" }, `${run.rounds_done ?? 0} / ${run.rounds_total ?? "?"}`),
    h("td", { class: "num" }, pct(run.latest_accuracy)),
    h("td", { class: "num" }, mb(run.upload_bytes)),
    h("td", { class: "num" }, mb(run.download_bytes)),
    h("td", {}, when(run.created_at)),
    h("td", {}, runActions(run, ctx)));
}

export function runActions(run, ctx) {
  const act = async (verb) => {
    try {
      await api(`/api/runs/${encodeURIComponent(run.id)}/${verb}`, { method: "POST" });
      ctx.say(`run ${run.id}: ${verb} requested`);
      await ctx.refresh();
    } catch (err) {
      ctx.fail(err);
    }
  };
  return h("span", { class: "actions" },
    run.status === "created" ? h("button", { type: "button", class: "start", onclick: () => act("start") },
      "Start") : null,
    ["created", "running"].includes(run.status)
      ? h("button", { type: "button", class: "stop", onclick: () => act("stop") }, "Stop") : null);
}

// --- the create form --------------------------------------------------------------------------

let schemaCache = null;

async function schemas() {
  if (!schemaCache) {
    const response = await fetch("/openapi.json");
    schemaCache = (await response.json()).components.schemas;
  }
  return schemaCache;
}

function resolve(prop, all) {
  if (prop.$ref) return all[prop.$ref.split("/").pop()];
  const ref = (prop.anyOf || []).find((p) => p.$ref);
  if (ref) return all[ref.$ref.split("/").pop()];
  return null;
}

function scalarType(prop) {
  if (prop.enum) return "enum";
  if (prop.type) return prop.type;
  const alt = (prop.anyOf || []).find((p) => p.type && p.type !== "null");
  return alt ? alt.type : "string";
}

function field(prefix, name, prop) {
  const id = `f-${prefix}${name}`;
  const type = scalarType(prop);
  const value = prop.default;
  let input;
  if (type === "enum") {
    input = h("select", { id, name }, prop.enum.map((v) => h("option", { value: v, selected: v === value }, v)));
  } else if (type === "boolean") {
    input = h("input", { id, name, type: "checkbox", checked: value === true });
  } else if (type === "integer" || type === "number") {
    const alt = (prop.anyOf || []).find((p) => p.type === type) || prop;
    input = h("input", { id, name, type: "number", step: type === "integer" ? 1 : "any", value: value ?? "",
      min: alt.minimum ?? alt.exclusiveMinimum, max: alt.maximum ?? alt.exclusiveMaximum,
      placeholder: value == null ? "default" : null });
  } else {
    input = h("input", { id, name, type: "text", value: value ?? "", placeholder: value == null ? "default" : null });
  }
  input.dataset.type = type;
  return h("div", { class: "field" }, h("label", { for: id }, name), input,
    prop.description ? h("small", {}, prop.description) : null);
}

function read(fieldset) {
  const out = {};
  for (const input of fieldset.querySelectorAll(":scope > .grid > .field > [name]")) {
    const type = input.dataset.type;
    if (type === "boolean") { out[input.name] = input.checked; continue; }
    if (input.value === "") continue;
    if (type === "integer") out[input.name] = Number.parseInt(input.value, 10);
    else if (type === "number") out[input.name] = Number.parseFloat(input.value);
    else out[input.name] = input.value;
  }
  return out;
}

async function createForm(ctx) {
  const all = await schemas();
  const config = all.RunConfig;
  const top = h("fieldset", {}, h("legend", {}, "Run"),
    h("div", { class: "grid" }, Object.entries(config.properties)
      .filter(([, p]) => !resolve(p, all)).map(([n, p]) => field("", n, p))));
  const evalSchema = resolve(config.properties.eval, all);
  const evaluate = h("input", { type: "checkbox", id: "f-evaluate", checked: true });
  const evalSet = h("fieldset", {}, h("legend", {}, evaluate, h("label", { for: "f-evaluate" },
    " Evaluate on held-out data (accuracy)")),
  h("div", { class: "grid" }, Object.entries(evalSchema.properties).map(([n, p]) => field("eval-", n, p))));
  const error = h("p", { class: "error", role: "alert" });
  const form = h("form", { id: "create-run", onsubmit: async (e) => {
    e.preventDefault();
    error.textContent = "";
    const body = read(top);
    if (evaluate.checked) body.eval = read(evalSet);
    try {
      const run = await api("/api/runs", { method: "POST", body });
      ctx.say(`created run ${run.id}`);
      await ctx.refresh();
    } catch (err) {
      if (err instanceof ApiError) error.textContent = `Not created: ${err.message}`;
      else ctx.fail(err);
    }
  } }, top, evalSet, error, h("button", { type: "submit" }, "Create run"));
  return h("details", { class: "card", id: "create" }, h("summary", {}, "Create a run"),
    h("p", { class: "muted" }, "Defaults are the coordinator's (from its OpenAPI schema)."), form);
}
