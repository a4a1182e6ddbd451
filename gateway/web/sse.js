// The Server-Sent Events transport of a PresenceClient (SPEC §10), for networks that block
// WebSockets. The watch set of a stream is fixed, so a change of the watched users opens a
// new stream (debounced, with a fresh token); the old one is closed once the new one is open.
// EventSource's own reconnects are not used: on any error the stream is closed and the client
// reconnects with its own backoff and a fresh token.

import { ErrorCode } from "./codes.js";
import { limitUsers } from "./watchset.js";

/** How long after a change of the watched users the new stream is opened. */
export const SSE_DEBOUNCE_MS = 100;

/**
 * @typedef {import("./connection.js").TransportHost} TransportHost
 * @typedef {import("./connection.js").EndInfo} EndInfo
 * @typedef {import("./connection.js").TokenReason} TokenReason
 * @typedef {import("./connection.js").Transport} Transport
 */

/**
 * The SSE endpoint next to a WebSocket endpoint: same host, http(s), `/ws` → `/sse`.
 * @param {string} wsUrl absolute ws(s) URL
 * @returns {string | null} null when the path does not end in `/ws`
 */
export function sseUrlFor(wsUrl) {
  const u = new URL(wsUrl);
  if (!/\/ws\/?$/.test(u.pathname)) return null;
  u.protocol = u.protocol === "wss:" ? "https:" : "http:";
  u.pathname = u.pathname.replace(/\/ws\/?$/, "/sse");
  u.hash = "";
  return u.href;
}

/**
 * The URL of one stream: `?user=…&user=…&token=…`.
 * @param {string} base @param {string[]} users @param {string} token
 * @returns {string}
 */
export function streamUrl(base, users, token) {
  const u = new URL(base);
  u.searchParams.delete("user");
  u.searchParams.delete("token");
  for (const user of users) u.searchParams.append("user", user);
  u.searchParams.set("token", token);
  return u.href;
}

/**
 * The `sub` claim of a JWT, read without verifying it (only to report `client.user`).
 * @param {string} token @returns {string | null}
 */
export function tokenSubject(token) {
  try {
    const part = token.split(".")[1] ?? "";
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims.sub === "string" ? claims.sub : null;
  } catch {
    return null;
  }
}

/** @param {string[]} users @returns {string} */
const keyOf = (users) => JSON.stringify(users);

/** @param {unknown} data @returns {any} */
function parse(data) {
  try {
    return typeof data === "string" ? JSON.parse(data) : null;
  } catch {
    return null;
  }
}

/** @implements {Transport} */
export class SseConnection {
  /** @type {"sse"} */
  kind = "sse";
  #host;
  #url;
  #EventSource;
  #ended = false;
  #everOpened = false;
  #openedAt = 0;
  /** @type {TokenReason} */
  #reason = "initial";
  /** The open stream and its users. @type {EventSource | null} */
  #es = null;
  /** @type {string | null} */
  #esKey = null;
  /** The stream being opened (replaces #es when it opens). @type {EventSource | null} */
  #next = null;
  /** @type {string | null} */
  #nextKey = null;
  /** Users a token is being fetched for. @type {string | null} */
  #pendingKey = null;
  /** Bumped whenever a stream being prepared is superseded. */
  #generation = 0;
  #timer = /** @type {ReturnType<typeof setTimeout> | 0} */ (0);
  /** Already reported as over `max_watch` (until they are no longer over it). @type {Set<string>} */
  #overLimit = new Set();

  /** @param {TransportHost} host @param {string} url the SSE endpoint @param {typeof EventSource} ES */
  constructor(host, url, ES) {
    this.#host = host;
    this.#url = url;
    this.#EventSource = ES;
  }

  /** @param {TokenReason} reason for the first stream's token */
  start(reason) {
    this.#reason = reason;
    this.#schedule(0);
  }

  sync() {
    this.#schedule(SSE_DEBOUNCE_MS);
  }

  close() {
    if (this.#ended) return;
    this.#ended = true;
    this.#closeStreams();
  }

  /** @param {number} delayMs */
  #schedule(delayMs) {
    // A pending open reads the watch set when it fires, so it covers later changes too.
    if (this.#ended || this.#timer) return;
    if (keyOf(this.#wanted()) === this.#targetKey()) return;
    this.#timer = setTimeout(() => {
      this.#timer = 0;
      this.#open();
    }, delayMs);
  }

  /** Users of the stream that is (or is about to be) current. */
  #targetKey() {
    return this.#pendingKey ?? this.#nextKey ?? this.#esKey;
  }

  /** The watched users within `max_watch`; the others are reported once as `limit`. */
  #wanted() {
    const max = this.#host.maxWatch();
    const { kept, excess } = limitUsers(this.#host.watchSet.users, max);
    const over = new Set(excess);
    for (const u of this.#overLimit) if (!over.has(u)) this.#overLimit.delete(u);
    const fresh = excess.filter((u) => !this.#overLimit.has(u));
    if (fresh.length) {
      for (const u of fresh) this.#overLimit.add(u);
      this.#host.error({
        code: ErrorCode.LIMIT,
        message: `watching more than max_watch (${max}) users; ${fresh.length} not watched`,
        fatal: false,
        users: fresh,
      });
    }
    return kept;
  }

  async #open() {
    if (this.#ended) return;
    const users = this.#wanted();
    const key = keyOf(users);
    if (key === this.#targetKey()) return;
    const generation = ++this.#generation;
    this.#next?.close();
    this.#next = this.#nextKey = null;
    if (users.length === 0) {
      // Nothing to listen to: no stream (the status stays what it was).
      this.#es?.close();
      this.#es = null;
      this.#esKey = key;
      this.#pendingKey = null;
      return;
    }
    this.#pendingKey = key;
    let token;
    try {
      token = await this.#host.token(this.#reason);
    } catch (err) {
      if (generation === this.#generation) this.#end({ opened: false, tokenError: err });
      return;
    }
    if (generation !== this.#generation || this.#ended) return;
    this.#reason = "reconnect";
    this.#pendingKey = null;
    let es;
    try {
      es = new this.#EventSource(streamUrl(this.#url, users, token));
    } catch (err) {
      this.#end({ opened: false, badUrl: `cannot open ${this.#url}: ${err instanceof Error ? err.message : String(err)}` });
      return;
    }
    this.#next = es;
    this.#nextKey = key;
    const watchSet = this.#host.watchSet;
    es.addEventListener("open", () => {
      if (es !== this.#next) return;
      const old = this.#es;
      this.#es = es;
      this.#esKey = key;
      this.#next = this.#nextKey = null;
      old?.close();
      watchSet.newConnection();
      if (!this.#everOpened) {
        this.#everOpened = true;
        this.#openedAt = Date.now();
        this.#host.opened({ user: tokenSubject(token) });
      }
    });
    es.addEventListener("snapshot", (ev) => {
      if (es === this.#es) watchSet.applyAll(parse(/** @type {MessageEvent} */ (ev).data)?.presence, "snapshot");
    });
    es.addEventListener("presence", (ev) => {
      if (es === this.#es) watchSet.apply(parse(/** @type {MessageEvent} */ (ev).data), "presence");
    });
    es.addEventListener("resync", (ev) => {
      if (es === this.#es) watchSet.applyAll(parse(/** @type {MessageEvent} */ (ev).data)?.presence, "resync");
    });
    es.addEventListener("error", () => {
      // A refusal (401/403/400), a dropped stream or a network error: EventSource cannot tell
      // which, and would reconnect by itself with the same (maybe expired) token. Stop it and
      // let the client reconnect with its backoff and a fresh token.
      if (es === this.#es) this.#end({ opened: true, reason: "stream ended" });
      else if (es === this.#next) this.#end({ opened: false, reason: "stream failed to open" });
    });
  }

  /** @param {Omit<EndInfo, "stayedUp">} info */
  #end(info) {
    if (this.#ended) return;
    this.#ended = true;
    const stayedUp = this.#everOpened && Date.now() - this.#openedAt >= this.#host.backoff.resetAfterMs;
    this.#closeStreams();
    this.#host.ended({ ...info, stayedUp });
  }

  #closeStreams() {
    this.#generation++;
    clearTimeout(this.#timer);
    this.#timer = 0;
    this.#es?.close();
    this.#next?.close();
    this.#es = this.#next = null;
    this.#esKey = this.#nextKey = this.#pendingKey = null;
  }
}
