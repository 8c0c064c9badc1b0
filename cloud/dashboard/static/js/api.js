// The public API with the user's bearer token (kept in sessionStorage), and a server-sent-events
// reader over fetch (EventSource cannot send an Authorization header) that resumes with Last-Event-ID.

const TOKEN_KEY = "feddst.token";

export class AuthError extends Error {}

export class ApiError extends Error {
  constructor(status, detail) {
    super(ApiError.describe(status, detail));
    this.status = status;
    this.detail = detail;
  }

  static describe(status, detail) {
    if (Array.isArray(detail)) {
      return detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".") || "body"}: ${d.msg}`)
        .join("; ");
    }
    return typeof detail === "string" ? detail : `HTTP ${status}`;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

function headers(extra = {}) {
  return { Authorization: `Bearer ${token()}`, ...extra };
}

export async function api(path, { method = "GET", body } = {}) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  if (response.status === 401) throw new AuthError("the token was refused; sign in again");
  const data = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) throw new ApiError(response.status, data?.detail);
  return data;
}

// Follows /api/runs/{id}/events until `signal` aborts; reconnects after errors with Last-Event-ID.
// onEvent(kind, data) for every event; onGap() after each reconnect (the caller re-reads what it missed).
export async function followEvents(runId, { onEvent, onGap, signal }) {
  let lastId = null;
  let first = true;
  while (!signal.aborted) {
    try {
      const h = headers({ Accept: "text/event-stream" });
      if (lastId !== null) h["Last-Event-ID"] = lastId;
      const response = await fetch(`/api/runs/${encodeURIComponent(runId)}/events`, { headers: h, signal });
      if (response.status === 401) throw new AuthError("the token was refused; sign in again");
      if (!response.ok || !response.body) throw new ApiError(response.status, null);
      if (!first) onGap?.();
      first = false;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const event = parseBlock(block);
          if (event.id !== null) lastId = event.id;
          if (event.data !== null) onEvent(event.kind, JSON.parse(event.data));
        }
      }
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof AuthError) throw err;
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function parseBlock(block) {
  const event = { id: null, kind: "message", data: null };
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") event.id = value;
    else if (field === "event") event.kind = value;
    else if (field === "data") event.data = event.data === null ? value : `${event.data}\n${value}`;
  }
  return event;
}
