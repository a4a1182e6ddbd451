// Type declarations for web/presence.js (the presence gateway browser client, SPEC §5, §7, §10).

/** One online device of a user. Device and session ids are never exposed to watchers. */
export interface PresenceDevice {
  /** Lower-case platform name: ios, android, ipad, apad, harmonyos, web, miniprogram, windows, mac, linux, pc, server, unknown. */
  readonly platform: string;
  /** ms time at which this device came online. */
  readonly since: number;
}

/** What watchers see of a user (SPEC §4). Instances handed out by the client are frozen. */
export interface PresenceState {
  readonly user: string;
  /** `online` if at least one device is online. */
  readonly status: "online" | "offline";
  /** ms time at which the current status began (for offline: last seen); `null` if never seen. */
  readonly since: number | null;
  /** The online devices. */
  readonly devices: readonly PresenceDevice[];
  /** The user's custom status text (at most 100 bytes), independent of `status`; `null` if none. */
  readonly custom: string | null;
  /** Per-user version; increases with every published change. */
  readonly v: number;
}

/** Connection state of a {@link PresenceClient}. */
export type PresenceConnectionStatus = "idle" | "connecting" | "open" | "reconnecting" | "closed";

/** Why the token function is being called. */
export interface TokenContext {
  /**
   * `"rejected"` after the server closed with 4001 (bad or expired token), or after several SSE
   * streams in a row failed to open (a refusal EventSource cannot read): do not reuse a cached token.
   */
  reason: "initial" | "reconnect" | "rejected";
}

/** Reconnect backoff: full jitter over `min(maxMs, initialMs * 2^attempt)`. */
export interface BackoffOptions {
  /** Default 500. */
  initialMs?: number;
  /** Default 30000. */
  maxMs?: number;
  /** A connection that stayed open this long resets the attempt count. Default 10000. */
  resetAfterMs?: number;
}

/** How a {@link PresenceClient} reaches the gateway. */
export type PresenceTransport = "auto" | "websocket" | "sse";

export interface PresenceClientOptions {
  /**
   * WebSocket endpoint, e.g. `wss://host/v1/apps/demo/ws`; relative and http(s) URLs are resolved
   * against the page. The SSE endpoint is the same URL with http(s) and `/sse` for `/ws`.
   */
  url: string | URL;
  /** Returns a client JWT; called on every (re)connect and for every SSE stream. A plain string is accepted for tests. */
  token: ((ctx: TokenContext) => string | Promise<string>) | string;
  /**
   * `"auto"` (default): WebSocket first; after two WebSocket attempts in a row that never open,
   * Server-Sent Events; WebSocket again on a reconnect after an SSE stream that stayed up.
   */
  transport?: PresenceTransport;
  backoff?: BackoffOptions;
  /** WebSocket constructor; defaults to the global one. */
  WebSocket?: typeof WebSocket;
  /** EventSource constructor; defaults to the global one. */
  EventSource?: typeof EventSource;
}

/** Detail of the `status` event. */
export interface PresenceStatusDetail {
  status: PresenceConnectionStatus;
  previous: PresenceConnectionStatus;
  /** Reconnect attempts since the last connection that stayed up. */
  attempt: number;
  /** With `connecting`, `reconnecting` (when an attempt starts) and `open`: the transport used. */
  transport?: "websocket" | "sse";
  /** With `reconnecting`: the delay before the next attempt. */
  delayMs?: number;
  /** Close code of the connection that ended, when there was one. */
  code?: number;
  reason?: string;
  /** With `open`: the authenticated user. */
  user?: string | null;
}

/** Detail of the `error` event. */
export interface PresenceErrorDetail {
  /**
   * `limit`, `forbidden`, `bad_request`, `unknown_type` (server refusals, or `limit` when the
   * watch set exceeds `max_watch`); `unauthorized` (4001, retrying); `token` (token function
   * failed, retrying); `sse_failed` (several SSE streams in a row failed to open, retrying with a
   * token asked for as `"rejected"`); `origin_not_allowed` (4003) and `too_large_or_too_many`
   * (4009 after the welcome), both fatal; `too_many_connections` (4009 before the welcome: the
   * user has too many connections; retried at the longest backoff); `bad_url` (fatal). `unavailable` is retried by the client itself.
   */
  code: ServerErrorCode | ClientErrorCodeValue | (string & {});
  message: string;
  /** `true`: the client stopped (status `closed`) and will not reconnect. */
  fatal: boolean;
  /** Users a refused or over-limit watch concerned. */
  users?: string[];
  closeCode?: number;
}

export interface PresenceClientEventMap {
  status: CustomEvent<PresenceStatusDetail>;
  error: CustomEvent<PresenceErrorDetail>;
}

/** Live presence of a set of users over one WebSocket (or SSE stream), with reconnects. */
export class PresenceClient extends EventTarget {
  constructor(options: PresenceClientOptions);

  /** Current connection state. */
  readonly status: PresenceConnectionStatus;
  /** Transport of the current connection attempt; `null` between attempts. */
  readonly transport: "websocket" | "sse" | null;
  /** The authenticated user from `welcome` (over SSE: the token's `sub`), or `null` before it. */
  readonly user: string | null;
  /** Users one connection may watch, from `welcome` (SSE keeps the last one; 1000 before any). */
  readonly maxWatch: number;
  /** Users currently watched through this client. */
  readonly watching: string[];

  /** Open the connection now (the first `watch()` does this implicitly). */
  connect(): void;
  /**
   * Watch users; `onChange` gets every new state (the snapshot included). Calls in the same tick
   * are batched into one message. Returns a function that removes this subscription.
   */
  watch(users: string | Iterable<string>, onChange: (state: PresenceState) => void): () => void;
  /** Stop watching users entirely, whoever subscribed to them. */
  unwatch(users: string | Iterable<string>): void;
  /** Last known state of a watched user, or `undefined`. */
  state(user: string): PresenceState | undefined;
  /** Stop for good. */
  close(): void;

  addEventListener<K extends keyof PresenceClientEventMap>(
    type: K,
    listener: (this: PresenceClient, ev: PresenceClientEventMap[K]) => unknown,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof PresenceClientEventMap>(
    type: K,
    listener: (this: PresenceClient, ev: PresenceClientEventMap[K]) => unknown,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

/** WebSocket close codes (SPEC §5), and 4000, which this client sends for a silent socket. */
export declare const CloseCode: Readonly<{
  NORMAL: 1000;
  SERVICE_RESTART: 1012;
  HEARTBEAT_TIMEOUT: 4000;
  UNAUTHORIZED: 4001;
  ORIGIN_NOT_ALLOWED: 4003;
  TOO_SLOW: 4008;
  TOO_LARGE_OR_TOO_MANY: 4009;
}>;

/** Error codes of the server's `error` message (SPEC §5). */
export declare const ErrorCode: Readonly<{
  BAD_REQUEST: "bad_request";
  FORBIDDEN: "forbidden";
  LIMIT: "limit";
  UNKNOWN_TYPE: "unknown_type";
  UNAVAILABLE: "unavailable";
}>;
export type ServerErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** Codes of `error` events raised by the client itself. */
export declare const ClientErrorCode: Readonly<{
  UNAUTHORIZED: "unauthorized";
  TOKEN: "token";
  ORIGIN_NOT_ALLOWED: "origin_not_allowed";
  TOO_LARGE_OR_TOO_MANY: "too_large_or_too_many";
  TOO_MANY_CONNECTIONS: "too_many_connections";
  BAD_URL: "bad_url";
  SSE_FAILED: "sse_failed";
}>;
export type ClientErrorCodeValue = (typeof ClientErrorCode)[keyof typeof ClientErrorCode];

/** In `"auto"` mode, WebSocket attempts in a row that never open before SSE is used (2). */
export declare const WS_FAILURES_BEFORE_SSE: number;
/** SSE streams in a row that fail before opening before the token is asked for as `"rejected"` (3). */
export declare const SSE_FAILURES_BEFORE_REJECTED: number;
