// Browser client for the presence gateway WebSocket protocol (SPEC §5, §7).
// Plain ES module, no dependencies, no build step.
//
//   import { PresenceClient } from "/web/presence.js";
//   const client = new PresenceClient({ url: "/v1/apps/demo/ws", token: fetchToken });
//   const stop = client.watch(["bob", "carol"], (state) => render(state));
//   client.addEventListener("status", (e) => badge(e.detail.status));

/** Close codes after which reconnecting cannot help (SPEC §5). */
const FATAL_CLOSE_CODES = new Map([
  [4003, "origin_not_allowed"],
  [4009, "too_large_or_too_many"],
]);
const CLOSE_UNAUTHORIZED = 4001;
/** Close code this client uses when it gives up on a silent connection. */
const CLOSE_HEARTBEAT_TIMEOUT = 4000;

const DEFAULT_BACKOFF = Object.freeze({ initialMs: 500, maxMs: 30_000, resetAfterMs: 10_000 });
const DEFAULT_HEARTBEAT_MS = 25_000;
const DEFAULT_MAX_WATCH = 1000;
/** Time allowed from opening the socket to receiving `welcome`. */
const HANDSHAKE_TIMEOUT_MS = 15_000;
/** Watch/unwatch frames are split so that each stays well under the server's 64 KiB limit. */
const MAX_FRAME_BYTES = 32 * 1024;

const utf8 = new TextEncoder();

/**
 * Live presence of a set of users over one WebSocket, with reconnects.
 *
 * Events (the client is an `EventTarget`):
 * - `status` — `CustomEvent<{status, previous, attempt, delayMs?, code?, reason?}>` whenever the
 *   connection state changes (`idle`, `connecting`, `open`, `reconnecting`, `closed`).
 * - `error` — `CustomEvent<{code, message, fatal, users?, closeCode?}>`; `fatal: true` means the
 *   client stopped (status `closed`) and will not reconnect by itself.
 */
export class PresenceClient extends EventTarget {
  #url;
  #tokenFn;
  #backoff;
  #WebSocket;

  /** @type {string} */
  #status = "idle";
  #closed = false;
  /** @type {WebSocket | null} */
  #ws = null;
  #welcomed = false;
  /** @type {string | null} */
  #user = null;
  #maxWatch = DEFAULT_MAX_WATCH;
  #heartbeatMs = DEFAULT_HEARTBEAT_MS;

  #attempt = 0;
  #openedAt = 0;
  /** What the next token request is for. @type {"initial" | "reconnect" | "rejected"} */
  #tokenReason = "initial";
  /** Incremented on every (re)connect, so stale async work can tell it lost. */
  #generation = 0;

  #reconnectTimer = 0;
  #heartbeatTimer = 0;
  #handshakeTimer = 0;
  #flushTimer = 0;
  #retryTimer = 0;
  /** Consecutive `unavailable` answers, for the retry backoff; reset by a snapshot. */
  #unavailable = 0;
  #lastRx = 0;
  #pingSentAt = 0;
  #nextId = 1;

  /** user -> set of subscriptions ({ cb }) */
  /** @type {Map<string, Set<Subscription>>} */
  #subs = new Map();
  /** @type {Map<string, PresenceState>} */
  #states = new Map();
  /** Users the server currently has in this connection's watch set (as far as we asked). */
  /** @type {Set<string>} */
  #serverWatched = new Set();
  /** Users the server refused on this connection (forbidden / limit); retried after reconnect. */
  /** @type {Set<string>} */
  #refused = new Set();
  /** Users already reported as over `max_watch`, so each is reported once per connection. */
  /** @type {Set<string>} */
  #overLimit = new Set();
  /** Users for which a state has been received on the current connection. */
  /** @type {Set<string>} */
  #seenOnConnection = new Set();
  /** id -> { type, users } of requests not answered yet. */
  /** @type {Map<number, {type: string, users: string[]}>} */
  #pending = new Map();

  #onBrowserOnline = () => {
    if (this.#status === "reconnecting" && this.#reconnectTimer) {
      clearTimeout(this.#reconnectTimer);
      this.#reconnectTimer = 0;
      this.#connect();
    }
  };

  /**
   * @param {object} options
   * @param {string} options.url WebSocket endpoint, e.g. `wss://host/v1/apps/demo/ws`. A relative
   *   or http(s) URL is resolved against the page and mapped to ws(s).
   * @param {((ctx: {reason: "initial" | "reconnect" | "rejected"}) => string | Promise<string>) | string} options.token
   *   Returns a client JWT. Called on every (re)connect; `reason` is `"rejected"` after the server
   *   closed with 4001 (bad or expired token), so a cached token must not be reused.
   * @param {{initialMs?: number, maxMs?: number, resetAfterMs?: number}} [options.backoff]
   *   Reconnect delay: full jitter over `min(maxMs, initialMs * 2^attempt)`. The attempt count
   *   resets once a connection stayed open for `resetAfterMs`.
   * @param {typeof WebSocket} [options.WebSocket] WebSocket constructor (defaults to the global).
   */
  constructor(options) {
    super();
    if (!options || typeof options !== "object") throw new TypeError("PresenceClient: options required");
    const { url, token, backoff = {}, WebSocket: WS = globalThis.WebSocket } = options;
    if (typeof token !== "function" && typeof token !== "string") {
      throw new TypeError("PresenceClient: token must be a function or a string");
    }
    if (typeof WS !== "function") throw new TypeError("PresenceClient: no WebSocket implementation");
    this.#url = resolveWsUrl(url);
    this.#tokenFn = typeof token === "string" ? () => token : token;
    this.#backoff = { ...DEFAULT_BACKOFF, ...backoff };
    if (!(this.#backoff.initialMs > 0) || !(this.#backoff.maxMs >= this.#backoff.initialMs)) {
      throw new RangeError("PresenceClient: backoff needs 0 < initialMs <= maxMs");
    }
    this.#WebSocket = WS;
  }

  /**
   * Connection state: `"idle"` (never connected), `"connecting"`, `"open"` (authenticated),
   * `"reconnecting"` (waiting or retrying after a drop) or `"closed"` (stopped for good).
   * @returns {"idle" | "connecting" | "open" | "reconnecting" | "closed"}
   */
  get status() {
    return /** @type {any} */ (this.#status);
  }

  /**
   * The user id the server authenticated (from `welcome`), or `null` before that.
   * @returns {string | null}
   */
  get user() {
    return this.#user;
  }

  /**
   * How many users one connection may watch, as announced by the server in `welcome`.
   * @returns {number}
   */
  get maxWatch() {
    return this.#maxWatch;
  }

  /**
   * Users currently watched through this client (whether or not the server has confirmed them).
   * @returns {string[]}
   */
  get watching() {
    return [...this.#subs.keys()];
  }

  /**
   * Open the connection now. Called implicitly by the first `watch()`; calling it again, or
   * while connected, does nothing. A closed client cannot be reopened: create a new one.
   * @returns {void}
   */
  connect() {
    if (this.#closed || this.#status !== "idle") return;
    this.#addBrowserListeners();
    this.#connect();
  }

  /**
   * Watch users. `onChange(state)` is called with every new state of each of them: the snapshot
   * first (or, if this client already knows the user, the known state, asynchronously), then each
   * change. Calls made in the same tick are sent to the server as one `watch` message.
   * @param {string | Iterable<string>} users
   * @param {(state: PresenceState) => void} onChange
   * @returns {() => void} Unsubscribe: stops this `onChange`; a user nobody else watches through
   *   this client is unwatched on the server.
   */
  watch(users, onChange) {
    if (typeof onChange !== "function") throw new TypeError("watch: onChange must be a function");
    const list = normalizeUsers(users);
    /** @type {Subscription} */
    const entry = { cb: onChange };
    let added = false;
    for (const user of list) {
      let set = this.#subs.get(user);
      if (!set) {
        set = new Set();
        this.#subs.set(user, set);
        added = true;
      }
      set.add(entry);
      const known = this.#states.get(user);
      if (known) {
        queueMicrotask(() => {
          if (this.#subs.get(user)?.has(entry)) this.#call(entry, this.#states.get(user) ?? known);
        });
      }
    }
    if (added) this.#scheduleFlush();
    if (this.#status === "idle") this.connect();
    let active = true;
    return () => {
      if (!active) return;
      active = false;
      let removed = false;
      for (const user of list) {
        const set = this.#subs.get(user);
        if (!set || !set.delete(entry)) continue;
        if (set.size === 0) {
          this.#forget(user);
          removed = true;
        }
      }
      if (removed) this.#scheduleFlush();
    };
  }

  /**
   * Stop watching users entirely, whoever subscribed to them through this client.
   * @param {string | Iterable<string>} users
   * @returns {void}
   */
  unwatch(users) {
    let removed = false;
    for (const user of normalizeUsers(users)) {
      if (this.#subs.has(user)) {
        this.#forget(user);
        removed = true;
      }
    }
    if (removed) this.#scheduleFlush();
  }

  /**
   * The last known state of a watched user, or `undefined` if none has arrived yet (or the user
   * is not watched).
   * @param {string} user
   * @returns {PresenceState | undefined}
   */
  state(user) {
    if (!this.#subs.has(user)) return undefined;
    return /** @type {any} */ (this.#states.get(user));
  }

  /**
   * Stop for good: close the socket, cancel timers, drop all watches. Status becomes `closed`.
   * @returns {void}
   */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    this.#removeBrowserListeners();
    clearTimeout(this.#reconnectTimer);
    clearTimeout(this.#flushTimer);
    clearTimeout(this.#retryTimer);
    this.#reconnectTimer = this.#flushTimer = this.#retryTimer = 0;
    this.#dropSocket(1000, "client closed");
    this.#setStatus("closed");
  }

  // ---------------------------------------------------------------- connection lifecycle

  async #connect() {
    const generation = ++this.#generation;
    this.#setStatus(this.#attempt === 0 && this.#tokenReason === "initial" ? "connecting" : "reconnecting", {
      attempt: this.#attempt,
    });
    let token;
    try {
      token = await this.#tokenFn({ reason: this.#tokenReason });
      if (typeof token !== "string" || token === "") throw new TypeError("token function returned no token");
    } catch (err) {
      if (generation !== this.#generation || this.#closed) return;
      this.#emitError({ code: "token", message: `could not get a token: ${messageOf(err)}`, fatal: false });
      this.#scheduleReconnect({});
      return;
    }
    if (generation !== this.#generation || this.#closed) return;

    let ws;
    try {
      ws = new this.#WebSocket(this.#url);
    } catch (err) {
      this.#fail("bad_url", `cannot open ${this.#url}: ${messageOf(err)}`, {});
      return;
    }
    this.#ws = ws;
    this.#welcomed = false;
    this.#handshakeTimer = setTimeout(() => {
      if (this.#ws !== ws) return;
      this.#dropSocket(CLOSE_HEARTBEAT_TIMEOUT, "handshake timeout");
      this.#scheduleReconnect({ reason: "handshake timeout" });
    }, HANDSHAKE_TIMEOUT_MS);

    ws.addEventListener("open", () => {
      if (this.#ws !== ws) return;
      this.#send({ type: "hello", token });
    });
    ws.addEventListener("message", (ev) => {
      if (this.#ws !== ws) return;
      this.#onMessage(ev.data);
    });
    ws.addEventListener("close", (ev) => {
      if (this.#ws !== ws) return;
      this.#onClose(ev.code, ev.reason);
    });
    // "error" is always followed by "close", which carries the code: nothing to do here.
  }

  /** @param {number} code @param {string} reason */
  #onClose(code, reason) {
    const stayedUp = this.#welcomed && Date.now() - this.#openedAt >= this.#backoff.resetAfterMs;
    this.#dropSocket();
    if (this.#closed) return;
    if (stayedUp) this.#attempt = 0;
    const fatal = FATAL_CLOSE_CODES.get(code);
    if (fatal) {
      this.#fail(fatal, `server closed the connection (${code}${reason ? `: ${reason}` : ""})`, { closeCode: code });
      return;
    }
    if (code === CLOSE_UNAUTHORIZED) {
      this.#tokenReason = "rejected";
      this.#emitError({
        code: "unauthorized",
        message: `token refused (${code}${reason ? `: ${reason}` : ""}); retrying with a new one`,
        fatal: false,
        closeCode: code,
      });
    } else {
      this.#tokenReason = "reconnect";
    }
    this.#scheduleReconnect({ code, reason });
  }

  /** @param {{code?: number, reason?: string}} info */
  #scheduleReconnect(info) {
    if (this.#closed) return;
    if (this.#tokenReason === "initial") this.#tokenReason = "reconnect";
    const cap = Math.min(this.#backoff.maxMs, this.#backoff.initialMs * 2 ** Math.min(this.#attempt, 30));
    const delayMs = Math.floor(Math.random() * cap);
    this.#attempt += 1;
    this.#setStatus("reconnecting", { attempt: this.#attempt, delayMs, ...info }, true);
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = 0;
      this.#connect();
    }, delayMs);
  }

  /** Stop after an error reconnecting cannot fix. */
  /** @param {string} code @param {string} message @param {{closeCode?: number}} extra */
  #fail(code, message, extra) {
    this.#closed = true;
    this.#removeBrowserListeners();
    clearTimeout(this.#reconnectTimer);
    clearTimeout(this.#flushTimer);
    this.#dropSocket();
    this.#setStatus("closed", { code: extra.closeCode, reason: message });
    this.#emitError({ code, message, fatal: true, ...extra });
  }

  /**
   * Forget the current socket (its late events are ignored) and reset per-connection state.
   * @param {number} [code] when given, also close the socket with this code
   * @param {string} [reason]
   */
  #dropSocket(code, reason) {
    const ws = this.#ws;
    this.#ws = null;
    this.#welcomed = false;
    clearTimeout(this.#handshakeTimer);
    clearInterval(this.#heartbeatTimer);
    this.#handshakeTimer = this.#heartbeatTimer = 0;
    this.#serverWatched.clear();
    this.#refused.clear();
    this.#overLimit.clear();
    this.#seenOnConnection.clear();
    this.#pending.clear();
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
        this.#dropSocket(CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout");
        this.#tokenReason = "reconnect";
        this.#scheduleReconnect({ reason: "heartbeat timeout" });
        return;
      }
      this.#pingSentAt = Date.now();
      this.#send({ type: "ping", id: this.#nextId++ });
    }, this.#heartbeatMs);
  }

  // ---------------------------------------------------------------- protocol

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
    switch (msg.type) {
      case "welcome":
        return this.#onWelcome(msg);
      case "snapshot":
        if (typeof msg.id === "number") this.#pending.delete(msg.id);
        this.#unavailable = 0;
        if (Array.isArray(msg.presence)) for (const s of msg.presence) this.#apply(s, "snapshot");
        return;
      case "presence":
        return this.#apply(msg, "presence");
      case "resync":
        if (Array.isArray(msg.presence)) for (const s of msg.presence) this.#apply(s, "resync");
        return;
      case "ok":
      case "pong":
        if (typeof msg.id === "number") this.#pending.delete(msg.id);
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
    clearTimeout(this.#handshakeTimer);
    this.#handshakeTimer = 0;
    this.#welcomed = true;
    this.#openedAt = Date.now();
    this.#user = typeof msg.user === "string" ? msg.user : null;
    this.#maxWatch = Number.isInteger(msg.max_watch) && msg.max_watch >= 0 ? msg.max_watch : DEFAULT_MAX_WATCH;
    const hb = Number(msg.heartbeat_ms);
    this.#heartbeatMs = Number.isFinite(hb) && hb > 0 ? Math.min(Math.max(hb, 1000), 300_000) : DEFAULT_HEARTBEAT_MS;
    this.#tokenReason = "reconnect";
    this.#startHeartbeat();
    this.#setStatus("open", { user: this.#user });
    clearTimeout(this.#flushTimer);
    this.#flushTimer = 0;
    this.#flush();
  }

  /** @param {any} msg */
  #onServerError(msg) {
    const req = typeof msg.id === "number" ? this.#pending.get(msg.id) : undefined;
    if (req) this.#pending.delete(msg.id);
    const users = req?.type === "watch" ? req.users : undefined;
    const transient = msg.code === "unavailable"; // the server's store is down: ask again soon
    if (users) {
      for (const u of users) {
        this.#serverWatched.delete(u);
        if (!transient) this.#refused.add(u);
      }
    }
    if (users && transient && !this.#retryTimer) {
      const cap = Math.min(this.#backoff.maxMs, this.#backoff.initialMs * 2 ** this.#unavailable++);
      this.#retryTimer = setTimeout(() => {
        this.#retryTimer = 0;
        this.#scheduleFlush();
      }, Math.random() * cap);
    }
    this.#emitError({
      code: typeof msg.code === "string" ? msg.code : "error",
      message: typeof msg.message === "string" ? msg.message : "request refused",
      fatal: false,
      ...(users ? { users: [...users] } : {}),
    });
  }

  /**
   * Apply one state from the server.
   *
   * Within one connection the server sends each user's states in `v` order, so a state whose `v`
   * is not higher than the held one is a duplicate or stale and is dropped. The first state of a
   * user on a new connection (its snapshot) is the server's current truth and replaces the held
   * one unless identical — even with a lower `v`: that only happens when the server lost its
   * state (in-memory backend restarted, Redis data lost), and holding on to the old `v` would
   * hide every later change. `resync` replaces in the same way.
   * @param {any} raw @param {"snapshot" | "presence" | "resync"} kind
   */
  #apply(raw, kind) {
    const state = normalizeState(raw);
    if (!state) return;
    const user = state.user;
    const subs = this.#subs.get(user);
    if (!subs) return; // no longer watched
    const held = this.#states.get(user);
    const baseline = kind === "resync" || !this.#seenOnConnection.has(user);
    this.#seenOnConnection.add(user);
    if (held) {
      if (baseline ? sameState(held, state) : !(state.v > held.v)) return;
    }
    this.#states.set(user, state);
    for (const entry of [...subs]) this.#call(entry, state);
  }

  /** @param {Subscription} entry @param {PresenceState} state */
  #call(entry, state) {
    try {
      entry.cb(state);
    } catch (err) {
      if (typeof globalThis.reportError === "function") globalThis.reportError(err);
      else console.error(err);
    }
  }

  /** @param {string} user */
  #forget(user) {
    this.#subs.delete(user);
  }

  #scheduleFlush() {
    if (this.#flushTimer || this.#closed) return;
    this.#flushTimer = setTimeout(() => {
      this.#flushTimer = 0;
      this.#flush();
    }, 0);
  }

  /** Bring the server's watch set in line with what is wanted. */
  #flush() {
    // States of users nobody watches any more are dropped here rather than in unwatch(), so
    // that an unwatch followed by a watch in the same tick keeps the state (no new snapshot
    // will come for it).
    for (const u of this.#states.keys()) if (!this.#subs.has(u)) this.#states.delete(u);
    if (!this.#welcomed || this.#closed) return;
    const toUnwatch = [...this.#serverWatched].filter((u) => !this.#subs.has(u));
    for (const u of toUnwatch) {
      this.#serverWatched.delete(u);
      this.#seenOnConnection.delete(u);
    }
    for (const set of [this.#refused, this.#overLimit]) {
      for (const u of set) if (!this.#subs.has(u)) set.delete(u);
    }
    for (const chunk of chunkUsers(toUnwatch)) this.#request("unwatch", chunk);

    const missing = [...this.#subs.keys()].filter((u) => !this.#serverWatched.has(u) && !this.#refused.has(u));
    const room = Math.max(0, this.#maxWatch - this.#serverWatched.size);
    const toWatch = missing.slice(0, room);
    const excess = missing.slice(room).filter((u) => !this.#overLimit.has(u));
    for (const u of toWatch) {
      this.#serverWatched.add(u);
      this.#overLimit.delete(u);
    }
    for (const chunk of chunkUsers(toWatch)) this.#request("watch", chunk);
    if (excess.length) {
      for (const u of excess) this.#overLimit.add(u);
      this.#emitError({
        code: "limit",
        message: `watching more than max_watch (${this.#maxWatch}) users; ${excess.length} not watched`,
        fatal: false,
        users: excess,
      });
    }
  }

  /** @param {"watch" | "unwatch"} type @param {string[]} users */
  #request(type, users) {
    const id = this.#nextId++;
    this.#pending.set(id, { type, users });
    this.#send({ type, id, users });
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

  // ---------------------------------------------------------------- events

  /** @param {string} status @param {object} [detail] @param {boolean} [always] */
  #setStatus(status, detail = {}, always = false) {
    const previous = this.#status;
    if (previous === status && !always) return;
    this.#status = status;
    this.dispatchEvent(new CustomEvent("status", { detail: { status, previous, attempt: this.#attempt, ...detail } }));
  }

  /** @param {{code: string, message: string, fatal: boolean, users?: string[], closeCode?: number}} detail */
  #emitError(detail) {
    this.dispatchEvent(new CustomEvent("error", { detail }));
  }

  #addBrowserListeners() {
    globalThis.addEventListener?.("online", this.#onBrowserOnline);
  }

  #removeBrowserListeners() {
    globalThis.removeEventListener?.("online", this.#onBrowserOnline);
  }
}

/**
 * @typedef {{platform: string, since: number}} PresenceDevice
 * @typedef {{user: string, status: "online" | "offline", since: number | null,
 *            devices: readonly PresenceDevice[], v: number}} PresenceState
 * @typedef {{cb: (state: PresenceState) => void}} Subscription
 */

// ---------------------------------------------------------------- helpers

/** @param {unknown} url @returns {string} */
function resolveWsUrl(url) {
  if (typeof url !== "string" && !(url instanceof URL)) throw new TypeError("PresenceClient: url required");
  const base = globalThis.location?.href;
  const u = base ? new URL(url, base) : new URL(url);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  if (u.protocol !== "ws:" && u.protocol !== "wss:") {
    throw new TypeError(`PresenceClient: url must be ws(s):// or http(s)://, got ${u.protocol}`);
  }
  return u.href;
}

/** @param {unknown} users @returns {string[]} */
function normalizeUsers(users) {
  const list = typeof users === "string" ? [users] : users != null ? [...(/** @type {Iterable<unknown>} */ (users))] : [];
  for (const u of list) {
    if (typeof u !== "string" || u === "") throw new TypeError("user ids must be non-empty strings");
  }
  return [...new Set(/** @type {string[]} */ (list))];
}

/** @param {string[]} users @returns {string[][]} */
function chunkUsers(users) {
  const chunks = [];
  let chunk = [];
  let size = 0;
  for (const u of users) {
    const n = utf8.encode(JSON.stringify(u)).length + 1;
    if (chunk.length && size + n > MAX_FRAME_BYTES) {
      chunks.push(chunk);
      chunk = [];
      size = 0;
    }
    chunk.push(u);
    size += n;
  }
  if (chunk.length) chunks.push(chunk);
  return chunks;
}

/** @param {any} raw @returns {PresenceState | null} */
function normalizeState(raw) {
  if (!raw || typeof raw !== "object" || typeof raw.user !== "string") return null;
  const status = raw.status === "online" ? "online" : "offline";
  const devices = Array.isArray(raw.devices)
    ? raw.devices
        .filter((/** @type {any} */ d) => d && typeof d === "object")
        .map((/** @type {any} */ d) => Object.freeze({ platform: String(d.platform ?? "unknown"), since: Number(d.since) }))
    : [];
  return Object.freeze({
    user: raw.user,
    status,
    since: typeof raw.since === "number" ? raw.since : null,
    devices: Object.freeze(devices),
    v: typeof raw.v === "number" ? raw.v : 0,
  });
}

/** @param {PresenceState} a @param {PresenceState} b */
function sameState(a, b) {
  return (
    a.v === b.v &&
    a.status === b.status &&
    a.since === b.since &&
    a.devices.length === b.devices.length &&
    a.devices.every((d, i) => d.platform === b.devices[i].platform && d.since === b.devices[i].since)
  );
}

/** @param {unknown} err */
function messageOf(err) {
  return err instanceof Error ? err.message : String(err);
}
