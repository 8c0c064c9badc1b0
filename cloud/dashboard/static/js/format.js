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

export function statusBadge(status) {
  return h("span", { class: `badge badge-${status}` }, status);
}

// A run's phase: a string, or an object {name, progress} (e.g. "collecting 7/20"); "–" when none.
export function phaseText(phase) {
  if (phase == null || phase === "") return "–";
  if (typeof phase === "string") return phase.replaceAll("_", " ");
  return [String(phase.name ?? "").replaceAll("_", " "), phase.progress].filter(Boolean).join(" ") || "–";
}
