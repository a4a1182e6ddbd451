// One WebSocket connection of a PresenceClient (SPEC §5): hello, welcome, heartbeat, the
// server's watch set, close codes. Reconnecting is the client's job (presence.js): a
// connection reports how it ended and is never reused.

import { CloseCode, ErrorCode, FATAL_CLOSE_CODES } from "./codes.js";
import { ServerWatch } from "./watchset.js";

export const DEFAULT_HEARTBEAT_MS = 25_000;
export const DEFAULT_MAX_WATCH = 1000;
/** Time allowed from opening the socket to receiving `welcome`. */
export const HANDSHAKE_TIMEOUT_MS = 15_000;

/**
 * @typedef {import("./watchset.js").WatchSet} WatchSet
 * @typedef {"initial" | "reconnect" | "rejected"} TokenReason
 * @typedef {{initialMs: number, maxMs: number, resetAfterMs: number}} Backoff
 * @typedef {{code: string, message: string, fatal: boolean, users?: string[], closeCode?: number}} ErrorDetail
 * @typedef {object} EndInfo How a connection (or SSE stream) ended.
 * @property {boolean} opened the socket (or the last stream) opened: the transport itself works
 * @property {boolean} stayedUp it was open and authenticated for at least `resetAfterMs`
 * @property {boolean} [welcomed] the server's `welcome` arrived on this connection
 * @property {number} [code] WebSocket close code
 * @property {string} [reason] close reason, or what this client gave up on
 * @property {unknown} [tokenError] the token function failed (nothing was opened)
 * @property {string} [badUrl] the URL could not be opened: why
 * @typedef {object} TransportHost What a connection needs from its PresenceClient.
 * @property {WatchSet} watchSet
 * @property {Backoff} backoff
 * @property {() => number} maxWatch the last known `max_watch`
 * @property {(reason: TokenReason) => Promise<string>} token a fresh, non-empty token
 * @property {(info: {user: string | null, maxWatch?: number}) => void} opened
 * @property {(info: EndInfo) => void} ended called once, never after `close()`
 * @property {(detail: ErrorDetail) => void} error a non-fatal error event
 * @typedef {object} Transport
 * @property {"websocket" | "sse"} kind
 * @property {(reason: TokenReason) => void} start
 * @property {() => void} sync the watch set changed (called at most once per tick)
 * @property {() => void} close stop without reporting `ended`
 */

/**
 * What a close code means for the client: stop (`fatal`, with the error code to report),
 * reconnect with a new token (`rejected`), or just reconnect.
 * @param {number} code
 * @returns {{fatal?: string, rejected: boolean}}
 */
export function classifyClose(code) {
  const fatal = FATAL_CLOSE_CODES.get(code);
  if (fatal) return { fatal, rejected: false };
  return { rejected: code === CloseCode.UNAUTHORIZED };
}

/** @implements {Transport} */
export class WsConnection {
  /** @type {"websocket"} */
  kind = "websocket";
  #host;
  #url;
  #WebSocket;
  /** @type {WebSocket | null} */
  #ws = null;
  #ended = false;
  #socketOpened = false;
  #welcomed = false;
  #openedAt = 0;
  #maxWatch = DEFAULT_MAX_WATCH;
  #heartbeatMs = DEFAULT_HEARTBEAT_MS;
  #handshakeTimer = /** @type {ReturnType<typeof setTimeout> | 0} */ (0);
  #heartbeatTimer = /** @type {ReturnType<typeof setInterval> | 0} */ (0);
  #retryTimer = /** @type {ReturnType<typeof setTimeout> | 0} */ (0);
  /** Consecutive `unavailable` answers, for the retry backoff; reset by a snapshot. */
  #unavailable = 0;
  #lastRx = 0;
  #pingSentAt = 0;
  #nextId = 1;
  #server;

  /** @param {TransportHost} host @param {string} url ws(s) URL @param {typeof WebSocket} WS */
  constructor(host, url, WS) {
    this.#host = host;
    this.#url = url;
    this.#WebSocket = WS;
    this.#server = new ServerWatch(host.watchSet, (type, users) => {
      const id = this.#nextId++;
      this.#send({ type, id, users });
      return id;
    });
  }

  /** Get a token, open the socket, say hello. @param {TokenReason} reason */
  async start(reason) {
    let token;
    try {
      token = await this.#host.token(reason);
    } catch (err) {
      this.#end({ tokenError: err });
      return;
    }
    if (this.#ended) return;
    let ws;
    try {
      ws = new this.#WebSocket(this.#url);
    } catch (err) {
      this.#end({ badUrl: `cannot open ${this.#url}: ${messageOf(err)}` });
      return;
    }
    this.#ws = ws;
    this.#handshakeTimer = setTimeout(() => {
      this.#end({ reason: "handshake timeout" }, CloseCode.HEARTBEAT_TIMEOUT);
    }, HANDSHAKE_TIMEOUT_MS);
    ws.addEventListener("open", () => {
      if (this.#ws !== ws) return;
      this.#socketOpened = true;
      this.#send({ type: "hello", token });
    });
    ws.addEventListener("message", (ev) => {
      if (this.#ws === ws) this.#onMessage(ev.data);
    });
    ws.addEventListener("close", (ev) => {
      if (this.#ws === ws) this.#end({ code: ev.code, reason: ev.reason });
    });
    // "error" is always followed by "close", which carries the code: nothing to do here.
  }

  /** Ask the server for what the watch set wants now. */
  sync() {
    if (!this.#welcomed || this.#ended) return;
    const excess = this.#server.sync(this.#maxWatch);
    if (excess.length) {
      this.#host.error({
        code: ErrorCode.LIMIT,
        message: `watching more than max_watch (${this.#maxWatch}) users; ${excess.length} not watched`,
        fatal: false,
        users: excess,
      });
    }
  }

  close() {
    if (this.#ended) return;
    this.#ended = true;
    this.#drop(CloseCode.NORMAL, "client closed");
  }

  /** @param {Omit<EndInfo, "opened" | "stayedUp" | "welcomed">} info @param {number} [closeCode] close the socket with it */
  #end(info, closeCode) {
    if (this.#ended) return;
    this.#ended = true;
    const welcomed = this.#welcomed;
    const stayedUp = welcomed && Date.now() - this.#openedAt >= this.#host.backoff.resetAfterMs;
    const opened = this.#socketOpened;
    this.#drop(closeCode, info.reason);
    this.#host.ended({ ...info, opened, stayedUp, welcomed });
  }

  /** @param {number} [code] @param {string} [reason] */
  #drop(code, reason) {
    const ws = this.#ws;
    this.#ws = null;
    this.#welcomed = false;
    clearTimeout(this.#handshakeTimer);
    clearInterval(this.#heartbeatTimer);
    clearTimeout(this.#retryTimer);
    this.#handshakeTimer = this.#heartbeatTimer = this.#retryTimer = 0;
    if (ws && code !== undefined) {
      try {
        ws.close(code, reason);
      } catch {
        // already closing or closed
      }
    }
  }

  #startHeartbeat() {
    clearInterval(this.#heartbeatTimer);
    this.#pingSentAt = 0;
    this.#heartbeatTimer = setInterval(() => {
      // Dead if a ping sent one interval ago got no message back at all. Judging from our own
      // ping (not wall time since the last message) stays correct when a background tab's
      // timers are throttled.
      if (this.#pingSentAt && this.#lastRx < this.#pingSentAt) {
        this.#end({ reason: "heartbeat timeout" }, CloseCode.HEARTBEAT_TIMEOUT);
        return;
      }
      this.#pingSentAt = Date.now();
      this.#send({ type: "ping", id: this.#nextId++ });
    }, this.#heartbeatMs);
  }

  /** @param {unknown} data */
  #onMessage(data) {
    this.#lastRx = Date.now();
    if (typeof data !== "string") return;
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (!msg || typeof msg !== "object") return;
    const watchSet = this.#host.watchSet;
    switch (msg.type) {
      case "welcome":
        return this.#onWelcome(msg);
      case "snapshot":
        if (typeof msg.id === "number") this.#server.answered(msg.id);
        this.#unavailable = 0;
        return watchSet.applyAll(msg.presence, "snapshot");
      case "presence":
        return watchSet.apply(msg, "presence");
      case "resync":
        return watchSet.applyAll(msg.presence, "resync");
      case "ok":
      case "pong":
        if (typeof msg.id === "number") this.#server.answered(msg.id);
        return;
      case "error":
        return this.#onServerError(msg);
      default:
        // Unknown types are ignored so the server can add messages later.
        return;
    }
  }

  /** @param {any} msg */
  #onWelcome(msg) {
    if (this.#welcomed) return;
    clearTimeout(this.#handshakeTimer);
    this.#handshakeTimer = 0;
    this.#welcomed = true;
    this.#openedAt = Date.now();
    this.#maxWatch = Number.isInteger(msg.max_watch) && msg.max_watch >= 0 ? msg.max_watch : DEFAULT_MAX_WATCH;
    const hb = Number(msg.heartbeat_ms);
    this.#heartbeatMs = Number.isFinite(hb) && hb > 0 ? Math.min(Math.max(hb, 1000), 300_000) : DEFAULT_HEARTBEAT_MS;
    this.#startHeartbeat();
    this.#host.watchSet.newConnection();
    this.#host.opened({ user: typeof msg.user === "string" ? msg.user : null, maxWatch: this.#maxWatch });
    if (this.#ended) return;
    // Flushing now (not on the next tick) sends the whole watch set right after the welcome.
    this.#host.watchSet.flush();
  }

  /** @param {any} msg */
  #onServerError(msg) {
    const transient = msg.code === ErrorCode.UNAVAILABLE; // the server's store is down: ask again soon
    const users = typeof msg.id === "number" ? this.#server.refused(msg.id, transient) : undefined;
    if (users && transient && !this.#retryTimer) {
      const { initialMs, maxMs } = this.#host.backoff;
      const cap = Math.min(maxMs, initialMs * 2 ** Math.min(this.#unavailable++, 30));
      this.#retryTimer = setTimeout(() => {
        this.#retryTimer = 0;
        this.#host.watchSet.scheduleFlush();
      }, Math.random() * cap);
    }
    this.#host.error({
      code: typeof msg.code === "string" ? msg.code : "error",
      message: typeof msg.message === "string" ? msg.message : "request refused",
      fatal: false,
      ...(users ? { users: [...users] } : {}),
    });
  }

  /** @param {object} msg */
  #send(msg) {
    const ws = this.#ws;
    if (!ws || ws.readyState !== 1) return;
    try {
      ws.send(JSON.stringify(msg));
    } catch {
      // the close event follows
    }
  }
}

/** @param {unknown} err @returns {string} */
export function messageOf(err) {
  return err instanceof Error ? err.message : String(err);
}
