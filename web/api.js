// The API as the page uses it: the same routes and key checks as any other client.

const KEY_STORAGE = "gpt-api.key";

export class ApiError extends Error {
  constructor(status, code, message, details = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

let askForKey = async () => null;

/** `prompt(reason)` resolves to a key the user typed; called whenever the API answers 401. */
export function onKeyNeeded(prompt) {
  askForKey = prompt;
}

export function storedKey() {
  return localStorage.getItem(KEY_STORAGE);
}

export function forgetKey() {
  localStorage.removeItem(KEY_STORAGE);
}

function headers(accept = "application/json") {
  const found = { Accept: accept, "Content-Type": "application/json" };
  const key = storedKey();
  if (key) found.Authorization = `Bearer ${key}`;
  return found;
}

async function errorOf(response) {
  let error = {};
  try {
    error = (await response.json()).error || {};
  } catch {
    // not our envelope: a proxy's page, say
  }
  const { code = "http_" + response.status, message, ...details } = error;
  const retry = response.headers.get("Retry-After");
  if (retry && details.retry_after === undefined) details.retry_after = Number(retry);
  return new ApiError(response.status, code, message || `The server answered ${response.status}.`, details);
}

/** fetch() that asks for a key on 401 and tries again with it. */
async function send(path, init, makeHeaders) {
  for (;;) {
    let response;
    try {
      response = await fetch(path, { ...init, headers: makeHeaders() });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError(0, "network", "The server cannot be reached; check that it is running.");
    }
    if (response.status !== 401) return response;
    const refused = await errorOf(response);
    const key = await askForKey(storedKey() ? `That key was refused: ${refused.message}` : refused.message);
    if (!key) throw refused;
    localStorage.setItem(KEY_STORAGE, key);
  }
}

/** POST /api/chat/<route> with a JSON body; resolves to the `response` payload. */
export async function call(route, body = {}) {
  const response = await send(`/api/chat/${route}`, { method: "POST", body: JSON.stringify(body) }, () =>
    headers(),
  );
  if (!response.ok) throw await errorOf(response);
  return (await response.json()).response;
}

/**
 * `ask` with `"stream": true`: `onEvent({response, delta})` for each event as it arrives.
 * Resolves when the stream ends; rejects with an ApiError (an `event: error`, a broken
 * connection) or an AbortError when `signal` stops it.
 */
export async function askStreaming(body, onEvent, signal) {
  const response = await send(
    "/api/chat/ask",
    { method: "POST", body: JSON.stringify({ ...body, stream: true }), signal },
    () => headers("text/event-stream"),
  );
  if (!response.ok) throw await errorOf(response);
  if (!(response.headers.get("Content-Type") || "").startsWith("text/event-stream")) {
    onEvent({ response: (await response.json()).response, delta: "" });
    return;
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw connectionLost();
    }
    if (chunk.done) break;
    buffer += chunk.value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (handleBlock(block, onEvent)) return;
    }
  }
  throw connectionLost();
}

function connectionLost() {
  return new ApiError(
    0,
    "connection_lost",
    "The connection to the server was lost while the answer was being written.",
  );
}

/** One server-sent event; true when it is the final `[DONE]`. */
function handleBlock(block, onEvent) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (!data.length) return false; // a keep-alive comment
  const text = data.join("\n");
  if (text === "[DONE]") return true;
  const payload = JSON.parse(text);
  if (event === "error") {
    const { code, message, ...details } = payload.error;
    throw new ApiError(200, code, message, details);
  }
  onEvent(payload);
  return false;
}

/** Does the service have this route? A 404 is "no"; any other answer (even 400) is "yes". */
export async function hasSearch() {
  try {
    const response = await send("/api/chat/search", { method: "POST", body: "{}" }, () => headers());
    return response.status !== 404;
  } catch {
    return false;
  }
}

/**
 * The upstream's model ids from `/v1/models`: [] when the service has no such route or
 * cannot list them now; rejects with the ApiError when no upstream is configured at all.
 */
export async function listModels() {
  let response;
  try {
    response = await send("/v1/models", { method: "GET" }, () => headers());
  } catch {
    return [];
  }
  if (!response.ok) {
    const error = await errorOf(response);
    if (error.code === "upstream_not_configured") throw error;
    return [];
  }
  try {
    const { data } = await response.json();
    return Array.isArray(data)
      ? data
          .map((model) => model.id)
          .filter(Boolean)
          .sort()
      : [];
  } catch {
    return [];
  }
}
