// Close codes and error codes of the presence gateway protocol (SPEC §5, §10), and the codes
// this client itself reports in its `error` events. Plain ES module, no dependencies.

/** WebSocket close codes the server uses (SPEC §5), and the one this client uses itself. */
export const CloseCode = Object.freeze({
  /** Normal closure (this client's `close()`). */
  NORMAL: 1000,
  /** The node is shutting down: reconnect (elsewhere). */
  SERVICE_RESTART: 1012,
  /** Sent by this client when it gives up on a silent socket (no welcome, no pong). */
  HEARTBEAT_TIMEOUT: 4000,
  /** Bad or expired token, or no hello in time: reconnect with a new token. */
  UNAUTHORIZED: 4001,
  /** Origin not allowed: reconnecting cannot help. */
  ORIGIN_NOT_ALLOWED: 4003,
  /** The client could not keep up: reconnect. */
  TOO_SLOW: 4008,
  /**
   * Message too large (64 KiB) or too many messages: reconnecting cannot help. Before the
   * welcome it means too many connections for this user: reconnect later (another may close).
   */
  TOO_LARGE_OR_TOO_MANY: 4009,
});

/** Error codes of the server's `error` message (SPEC §5). */
export const ErrorCode = Object.freeze({
  BAD_REQUEST: "bad_request",
  /** The token's watch policy does not allow this user. */
  FORBIDDEN: "forbidden",
  /** Over `max_watch`. Also reported by the client itself before asking. */
  LIMIT: "limit",
  UNKNOWN_TYPE: "unknown_type",
  /** The store cannot be read right now: the client asks again later by itself. */
  UNAVAILABLE: "unavailable",
});

/** Codes of `error` events that come from the client, not from a server `error` message. */
export const ClientErrorCode = Object.freeze({
  /** 4001: the token was refused; retrying with a new one (reason `"rejected"`). */
  UNAUTHORIZED: "unauthorized",
  /** The token function threw or returned no token; retrying. */
  TOKEN: "token",
  /** 4003, fatal. */
  ORIGIN_NOT_ALLOWED: "origin_not_allowed",
  /** 4009 after the welcome, fatal. */
  TOO_LARGE_OR_TOO_MANY: "too_large_or_too_many",
  /** 4009 before the welcome: the user has too many connections; retrying at the longest backoff. */
  TOO_MANY_CONNECTIONS: "too_many_connections",
  /** The URL cannot be opened, fatal. */
  BAD_URL: "bad_url",
  /** Several SSE streams in a row failed before opening (refused or unreachable); retrying with a new token. */
  SSE_FAILED: "sse_failed",
});

/** Close codes after which reconnecting cannot help, with the error code reported for each. */
/** @type {ReadonlyMap<number, string>} */
export const FATAL_CLOSE_CODES = new Map([
  [CloseCode.ORIGIN_NOT_ALLOWED, ClientErrorCode.ORIGIN_NOT_ALLOWED],
  [CloseCode.TOO_LARGE_OR_TOO_MANY, ClientErrorCode.TOO_LARGE_OR_TOO_MANY],
]);
