// Browser client for the presence gateway (SPEC §5, §7, §10).
// Plain ES module, no dependencies, no build step.
//
//   import { PresenceClient } from "/web/presence.js";
//   const client = new PresenceClient({ url: "/v1/apps/demo/ws", token: fetchToken });
//   const stop = client.watch(["bob", "carol"], (state) => render(state));
//   client.addEventListener("status", (e) => badge(e.detail.status));
//
// This module is the facade: reconnects, backoff, tokens and the choice of transport. The
// WebSocket connection is in connection.js, the SSE stream in sse.js, subscriptions and states
// in watchset.js, protocol codes in codes.js.

import { ClientErrorCode, CloseCode } from "./codes.js";
import { classifyClose, DEFAULT_MAX_WATCH, messageOf, WsConnection } from "./connection.js";
import { SseConnection, sseUrlFor } from "./sse.js";
import { normalizeUsers, WatchSet } from "./watchset.js";

export { ClientErrorCode, CloseCode, ErrorCode } from "./codes.js";

const DEFAULT_BACKOFF = Object.freeze({ initialMs: 500, maxMs: 30_000, resetAfterMs: 10_000 });
/** In `"auto"` mode: WebSocket attempts in a row that never open before SSE is used. */
export const WS_FAILURES_BEFORE_SSE = 2;
/** SSE streams in a row that fail before opening before the token is asked for as `"rejected"`. */
export const SSE_FAILURES_BEFORE_REJECTED = 3;
const TRANSPORTS = ["auto", "websocket", "sse"];

/**
 * @typedef {import("./watchset.js").PresenceState} PresenceState
 * @typedef {import("./watchset.js").PresenceDevice} PresenceDevice
 * @typedef {import("./connection.js").TokenReason} TokenReason
 * @typedef {import("./connection.js").EndInfo} EndInfo
 * @typedef {import("./connection.js").ErrorDetail} ErrorDetail
 * @typedef {import("./connection.js").Transport} Transport
 * @typedef {"idle" | "connecting" | "open" | "reconnecting" | "closed"} ConnectionStatus
 */

/**
 * Live presence of a set of users over one WebSocket (or an SSE stream where WebSockets are
 * blocked), with reconnects.
 *
 * Events (the client is an `EventTarget`):
 * - `status` — `CustomEvent<{status, previous, attempt, transport?, delayMs?, code?, reason?, user?}>`
 *   whenever the connection state changes (`idle`, `connecting`, `open`, `reconnecting`, `closed`).
 * - `error` — `CustomEvent<{code, message, fatal, users?, closeCode?}>`; `fatal: true` means the
 *   client stopped (status `closed`) and will not reconnect by itself.
 */
export class PresenceClient extends EventTarget {
  #url;
  #sseUrl;
  #tokenFn;
  #backoff;
  #WebSocket;
  #EventSource;
  /** @type {"auto" | "websocket" | "sse"} */
  #mode;

  /** @type {ConnectionStatus} */
  #status = "idle";
  #closed = false;
  /** @type {Transport | null} */
  #transport = null;
  /** @type {string | null} */
  #user = null;
  #maxWatch = DEFAULT_MAX_WATCH;

  #attempt = 0;
  /** What the next token request is for. @type {TokenReason} */
  #tokenReason = "initial";
  /** WebSocket attempts in a row whose socket never opened. */
  #wsFailures = 0;
  /** SSE streams in a row that failed before opening. */
  #sseFailures = 0;
  /** After an SSE stream that stayed up, the next reconnect tries the WebSocket again. */
  #probeWs = false;
  #reconnectTimer = /** @type {ReturnType<typeof setTimeout> | 0} */ (0);

  #watchSet = new WatchSet(() => this.#transport?.sync());

  #onBrowserOnline = () => {
    if (this.#status === "reconnecting" && this.#reconnectTimer) {
      clearTimeout(this.#reconnectTimer);
      this.#reconnectTimer = 0;
      this.#connect();
    }
  };

  /**
   * @param {object} options
   * @param {string | URL} options.url WebSocket endpoint, e.g. `wss://host/v1/apps/demo/ws`. A
   *   relative or http(s) URL is resolved against the page and mapped to ws(s). The SSE endpoint
   *   is the same URL with http(s) and `/sse` for `/ws`.
   * @param {((ctx: {reason: TokenReason}) => string | Promise<string>) | string} options.token
   *   Returns a client JWT. Called on every (re)connect and for every SSE stream; `reason` is
   *   `"rejected"` after the server closed with 4001 (bad or expired token), or after several SSE
   *   streams in a row failed to open, so a cached token must not be reused.
   * @param {"auto" | "websocket" | "sse"} [options.transport] `"auto"` (default): WebSocket
   *   first, SSE after two WebSocket attempts in a row that never open, WebSocket again on a
   *   reconnect after an SSE stream that stayed up or failed to open (then SSE again if that
   *   WebSocket attempt does not open either).
   * @param {{initialMs?: number, maxMs?: number, resetAfterMs?: number}} [options.backoff]
   *   Reconnect delay: full jitter over `min(maxMs, initialMs * 2^attempt)`. The attempt count
   *   resets once a connection stayed open for `resetAfterMs`.
   * @param {typeof WebSocket} [options.WebSocket] WebSocket constructor (defaults to the global).
   * @param {typeof EventSource} [options.EventSource] EventSource constructor (defaults to the global).
   */
  constructor(options) {
    super();
    if (!options || typeof options !== "object") throw new TypeError("PresenceClient: options required");
    const {
      url,
      token,
      backoff = {},
      transport = "auto",
      WebSocket: WS = globalThis.WebSocket,
      EventSource: ES = globalThis.EventSource,
    } = options;
    if (typeof token !== "function" && typeof token !== "string") {
      throw new TypeError("PresenceClient: token must be a function or a string");
    }
    if (!TRANSPORTS.includes(transport)) {
      throw new TypeError(`PresenceClient: transport must be one of ${TRANSPORTS.join(", ")}`);
    }
    this.#url = resolveWsUrl(url);
    this.#sseUrl = sseUrlFor(this.#url);
    const hasWs = typeof WS === "function";
    const hasEs = typeof ES === "function" && this.#sseUrl !== null;
    if (transport === "websocket" && !hasWs) throw new TypeError("PresenceClient: no WebSocket implementation");
    if (transport === "sse" && typeof ES !== "function") throw new TypeError("PresenceClient: no EventSource implementation");
    if (transport === "sse" && !hasEs) throw new TypeError("PresenceClient: url must end in /ws (or /sse) for SSE");
    if (!hasWs && !hasEs) throw new TypeError("PresenceClient: no WebSocket implementation");
    this.#mode = transport === "auto" && !hasWs ? "sse" : transport === "auto" && !hasEs ? "websocket" : transport;
    this.#tokenFn = typeof token === "string" ? () => token : token;
    this.#backoff = { ...DEFAULT_BACKOFF, ...backoff };
    if (!(this.#backoff.initialMs > 0) || !(this.#backoff.maxMs >= this.#backoff.initialMs)) {
      throw new RangeError("PresenceClient: backoff needs 0 < initialMs <= maxMs");
    }
    this.#WebSocket = WS;
    this.#EventSource = ES;
  }

  /**
   * Connection state: `"idle"` (never connected), `"connecting"`, `"open"` (authenticated),
   * `"reconnecting"` (waiting or retrying after a drop) or `"closed"` (stopped for good).
   * @returns {ConnectionStatus}
   */
  get status() {
    return this.#status;
  }

  /**
   * The transport of the current connection attempt, or `null` between attempts.
   * @returns {"websocket" | "sse" | null}
   */
  get transport() {
    return this.#transport?.kind ?? null;
  }

  /**
   * The user id the server authenticated (from `welcome`; over SSE the token's `sub`), or
   * `null` before that.
   * @returns {string | null}
   */
  get user() {
    return this.#user;
  }

  /**
   * How many users one connection may watch, as announced by the server in `welcome` (SSE
   * streams keep the last announced value, 1000 before any).
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
    return this.#watchSet.users;
  }

  /**
   * Open the connection now. Called implicitly by the first `watch()`; calling it again, or
   * while connected, does nothing. A closed client cannot be reopened: create a new one.
   * @returns {void}
   */
  connect() {
    if (this.#closed || this.#status !== "idle") return;
    globalThis.addEventListener?.("online", this.#onBrowserOnline);
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
    const unsubscribe = this.#watchSet.add(normalizeUsers(users), onChange);
    if (this.#status === "idle") this.connect();
    return unsubscribe;
  }

  /**
   * Stop watching users entirely, whoever subscribed to them through this client.
   * @param {string | Iterable<string>} users
   * @returns {void}
   */
  unwatch(users) {
    this.#watchSet.remove(normalizeUsers(users));
  }

  /**
   * The last known state of a watched user, or `undefined` if none has arrived yet (or the user
   * is not watched).
   * @param {string} user
   * @returns {PresenceState | undefined}
   */
  state(user) {
    return this.#watchSet.state(user);
  }

  /**
   * Stop for good: close the connection, cancel timers, drop all watches. Status becomes `closed`.
   * @returns {void}
   */
  close() {
    if (this.#closed) return;
    this.#stop();
    this.#setStatus("closed");
  }

  // ---------------------------------------------------------------- connection lifecycle

  #connect() {
    if (this.#closed) return;
    const kind = this.#chooseTransport();
    this.#setStatus(this.#attempt === 0 && this.#tokenReason === "initial" ? "connecting" : "reconnecting", {
      attempt: this.#attempt,
      transport: kind,
    });
    /** @type {Transport} */
    let transport;
    const host = {
      watchSet: this.#watchSet,
      backoff: this.#backoff,
      maxWatch: () => this.#maxWatch,
      token: (/** @type {TokenReason} */ reason) => this.#token(reason),
      opened: (/** @type {{user: string | null, maxWatch?: number}} */ info) => {
        if (this.#transport === transport) this.#onOpened(transport, info);
      },
      ended: (/** @type {EndInfo} */ info) => {
        if (this.#transport === transport) this.#onEnded(transport, info);
      },
      error: (/** @type {ErrorDetail} */ detail) => {
        if (this.#transport === transport) this.#emitError(detail);
      },
    };
    transport =
      kind === "sse"
        ? new SseConnection(host, /** @type {string} */ (this.#sseUrl), this.#EventSource)
        : new WsConnection(host, this.#url, this.#WebSocket);
    this.#transport = transport;
    transport.start(this.#tokenReason);
  }

  /** @returns {"websocket" | "sse"} */
  #chooseTransport() {
    if (this.#mode !== "auto") return this.#mode;
    if (this.#probeWs) {
      this.#probeWs = false;
      return "websocket";
    }
    return this.#wsFailures >= WS_FAILURES_BEFORE_SSE ? "sse" : "websocket";
  }

  /** @param {TokenReason} reason @returns {Promise<string>} */
  async #token(reason) {
    const token = await this.#tokenFn({ reason });
    if (typeof token !== "string" || token === "") throw new TypeError("token function returned no token");
    return token;
  }

  /** @param {Transport} transport @param {{user: string | null, maxWatch?: number}} info */
  #onOpened(transport, info) {
    this.#user = info.user;
    if (info.maxWatch !== undefined) this.#maxWatch = info.maxWatch;
    this.#tokenReason = "reconnect";
    if (transport.kind === "sse") this.#sseFailures = 0;
    this.#setStatus("open", { user: this.#user, transport: transport.kind });
  }

  /** @param {Transport} transport @param {EndInfo} info */
  #onEnded(transport, info) {
    this.#transport = null;
    if (this.#closed) return;
    if (info.stayedUp) this.#attempt = 0;
    if (info.badUrl !== undefined) {
      this.#fail(ClientErrorCode.BAD_URL, info.badUrl, {});
      return;
    }
    if (info.tokenError !== undefined) {
      this.#emitError({
        code: ClientErrorCode.TOKEN,
        message: `could not get a token: ${messageOf(info.tokenError)}`,
        fatal: false,
      });
      this.#scheduleReconnect({});
      return;
    }
    this.#countFailure(transport, info);
    /** @type {{code?: number, reason?: string}} */
    const detail = info.reason !== undefined ? { reason: info.reason } : {};
    if (info.code !== undefined) {
      const { code, reason } = info;
      detail.code = code;
      const what = classifyClose(code);
      if (code === CloseCode.TOO_LARGE_OR_TOO_MANY && !info.welcomed) {
        // Refused after hello: this user has too many connections (SPEC 5, 4009). Another tab
        // may close, so try again, but at the longest backoff.
        this.#tokenReason = "reconnect";
        this.#attempt = Math.max(this.#attempt, 30);
        this.#emitError({
          code: ClientErrorCode.TOO_MANY_CONNECTIONS,
          message: `too many connections for this user (${code}${reason ? `: ${reason}` : ""}); retrying later`,
          fatal: false,
          closeCode: code,
        });
        this.#scheduleReconnect(detail);
        return;
      }
      if (what.fatal) {
        this.#fail(what.fatal, `server closed the connection (${code}${reason ? `: ${reason}` : ""})`, {
          closeCode: code,
        });
        return;
      }
      if (what.rejected) {
        this.#tokenReason = "rejected";
        this.#emitError({
          code: ClientErrorCode.UNAUTHORIZED,
          message: `token refused (${code}${reason ? `: ${reason}` : ""}); retrying with a new one`,
          fatal: false,
          closeCode: code,
        });
      } else {
        this.#tokenReason = "reconnect";
      }
    }
    this.#scheduleReconnect(detail);
  }

  /** Bookkeeping for the choice of transport and the SSE token rule. @param {Transport} transport @param {EndInfo} info */
  #countFailure(transport, info) {
    if (transport.kind === "websocket") {
      this.#wsFailures = info.opened ? 0 : this.#wsFailures + 1;
      return;
    }
    if (info.opened) {
      this.#sseFailures = 0;
      if (this.#mode === "auto" && info.stayedUp) this.#probeWs = true;
      return;
    }
    // In "auto" mode the server may just be down (or have no SSE endpoint): try the WebSocket
    // again next, so an outage that made two WebSocket attempts fail does not pin us to SSE.
    if (this.#mode === "auto") this.#probeWs = true;
    // EventSource cannot read a 401/403/400: after a few streams in a row that never opened,
    // the token may be what is wrong.
    this.#sseFailures += 1;
    if (this.#sseFailures >= SSE_FAILURES_BEFORE_REJECTED) {
      this.#tokenReason = "rejected";
      if (this.#sseFailures === SSE_FAILURES_BEFORE_REJECTED) {
        this.#emitError({
          code: ClientErrorCode.SSE_FAILED,
          message: `${this.#sseFailures} event streams in a row failed to open; retrying with a new token`,
          fatal: false,
        });
      }
    }
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
    this.#stop();
    this.#setStatus("closed", { code: extra.closeCode, reason: message });
    this.#emitError({ code, message, fatal: true, ...extra });
  }

  #stop() {
    this.#closed = true;
    globalThis.removeEventListener?.("online", this.#onBrowserOnline);
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = 0;
    this.#watchSet.close();
    const transport = this.#transport;
    this.#transport = null;
    transport?.close();
  }

  // ---------------------------------------------------------------- events

  /** @param {ConnectionStatus} status @param {object} [detail] @param {boolean} [always] */
  #setStatus(status, detail = {}, always = false) {
    const previous = this.#status;
    if (previous === status && !always) return;
    this.#status = status;
    this.dispatchEvent(new CustomEvent("status", { detail: { status, previous, attempt: this.#attempt, ...detail } }));
  }

  /** @param {ErrorDetail} detail */
  #emitError(detail) {
    this.dispatchEvent(new CustomEvent("error", { detail }));
  }
}

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
  // An SSE endpoint given as the url names its WebSocket endpoint too.
  u.pathname = u.pathname.replace(/\/sse\/?$/, "/ws");
  return u.href;
}
