// Numbers with units, and small DOM builders.

export const mb = (bytes) => (bytes == null ? "–" : `${(bytes / 1e6).toFixed(2)} MB`);
export const pct = (fraction) => (fraction == null ? "–" : `${(fraction * 100).toFixed(1)} %`);
export const secs = (s) => (s == null ? "–" : `${s.toFixed(s < 10 ? 2 : 1)} s`);
export const mib = (m) => (m == null ? "–" : `${m} MB`);

export function ago(unix) {
  if (!unix) return "never";
  const s = Math.max(0, Date.now() / 1000 - unix);
  if (s < 60) return `${s.toFixed(0)} s ago`;
  if (s < 3600) return `${(s / 60).toFixed(0)} min ago`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h ago`;
  return new Date(unix * 1000).toISOString().slice(0, 16).replace("T", " ");
}

export const when = (unix) => (unix ? new Date(unix * 1000).toLocaleString() : "–");

// h("tag", {attr: value, onclick: fn}, child, ...): an element; strings become text nodes.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// Show the fresh <tr>s `rows` in `body`, keyed by their `data-<key>` attribute: a row already shown is kept and
// patched (patchCells), so a refresh never swaps out the button, link or box under the pointer (a click whose
// press and release straddle a swap is lost) or the one holding focus. Rows are re-inserted only on a change of order.
export function patchRows(body, rows, key) {
  const shown = new Map([...body.children].filter((tr) => tr.dataset[key] !== undefined)
    .map((tr) => [tr.dataset[key], tr]));
  const next = rows.map((fresh) => {
    const old = fresh.dataset[key] === undefined ? undefined : shown.get(fresh.dataset[key]);
    return old ? patchCells(old, fresh) : fresh;
  });
  if (next.length !== body.children.length || next.some((row, i) => body.children[i] !== row)) {
    body.replaceChildren(...next);
  }
}

// Make element `old` show what `fresh` shows: its attributes, and each child replaced only if its markup differs.
export function patchCells(old, fresh) {
  for (const { name, value } of fresh.attributes) if (old.getAttribute(name) !== value) old.setAttribute(name, value);
  for (const { name } of [...old.attributes]) if (!fresh.hasAttribute(name)) old.removeAttribute(name);
  const cells = [...fresh.children];  // appending a cell to `old` moves it out of `fresh`
  cells.forEach((cell, i) => {
    const current = old.children[i];
    if (!current) old.append(cell);
    else if (current.outerHTML !== cell.outerHTML) current.replaceWith(cell);
  });
  while (old.children.length > cells.length) old.lastElementChild.remove();
  return old;
}

export function statusBadge(status) {
  return h("span", { class: `badge badge-${status}` }, status);
}

// A run's phase: a string, or an object {name, progress} (e.g. "collecting 7/20"); "–" when none.
export function phaseText(phase) {
  if (phase == null || phase === "") return "–";
  if (typeof phase === "string") return phase.replaceAll("_", " ");
  return [String(phase.name ?? "").replaceAll("_", " "), phase.progress].filter(Boolean).join(" ") || "–";
}
