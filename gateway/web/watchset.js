// The watch set of a PresenceClient: who is watched by whom, the latest state of each user
// (v ordering, snapshot and resync semantics), batching of changes per tick, and what the
// server has been asked for on the current WebSocket (diff, chunking, refusals).

/** Watch/unwatch frames are split so that each stays well under the server's 64 KiB limit. */
export const MAX_FRAME_BYTES = 32 * 1024;

const utf8 = new TextEncoder();

/**
 * @typedef {{platform: string, since: number}} PresenceDevice
 * @typedef {{user: string, status: "online" | "offline", since: number | null,
 *            devices: readonly PresenceDevice[], custom: string | null, v: number}} PresenceState
 * @typedef {{cb: (state: PresenceState) => void}} Subscription
 * @typedef {"snapshot" | "presence" | "resync"} StateKind
 */

/**
 * Subscriptions and states. Changes to the set of watched users are reported through
 * `onFlush` once per tick (a page that adds 50 dots in one tick causes one flush).
 */
export class WatchSet {
  /** user -> subscriptions; the set size is the user's refcount. @type {Map<string, Set<Subscription>>} */
  #subs = new Map();
  /** @type {Map<string, PresenceState>} */
  #states = new Map();
  /** Users for which a state has arrived on the current connection or stream. @type {Set<string>} */
  #seen = new Set();
  #flushTimer = /** @type {ReturnType<typeof setTimeout> | 0} */ (0);
  #closed = false;
  #onFlush;

  /** @param {() => void} onFlush called (at most once per tick) after the watched users changed */
  constructor(onFlush) {
    this.#onFlush = onFlush;
  }

  /** Users currently watched, in the order they were first watched. @returns {string[]} */
  get users() {
    return [...this.#subs.keys()];
  }

  /** @param {string} user @returns {boolean} */
  has(user) {
    return this.#subs.has(user);
  }

  /** @param {string} user @returns {PresenceState | undefined} */
  state(user) {
    return this.#subs.has(user) ? this.#states.get(user) : undefined;
  }

  /**
   * Subscribe `cb` to `users`. A user whose state is already known gets it, asynchronously.
   * @param {string[]} users normalized (unique, non-empty)
   * @param {(state: PresenceState) => void} cb
   * @returns {() => void} unsubscribe (idempotent)
   */
  add(users, cb) {
    /** @type {Subscription} */
    const entry = { cb };
    let added = false;
    for (const user of users) {
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
          if (this.#subs.get(user)?.has(entry)) call(entry, this.#states.get(user) ?? known);
        });
      }
    }
    if (added) this.scheduleFlush();
    let active = true;
    return () => {
      if (!active) return;
      active = false;
      let removed = false;
      for (const user of users) {
        const set = this.#subs.get(user);
        if (!set || !set.delete(entry)) continue;
        if (set.size === 0) {
          this.#subs.delete(user);
          removed = true;
        }
      }
      if (removed) this.scheduleFlush();
    };
  }

  /** Drop every subscription of `users`. @param {string[]} users */
  remove(users) {
    let removed = false;
    for (const user of users) removed = this.#subs.delete(user) || removed;
    if (removed) this.scheduleFlush();
  }

  /**
   * Apply one state from the server.
   *
   * Within one connection (or SSE stream) the server sends each user's states in `v` order, so
   * a state whose `v` is not higher than the held one is a duplicate or stale and is dropped.
   * The first state of a user on a new connection (its snapshot) is the server's current truth
   * and replaces the held one unless identical, even with a lower `v`: that only happens when
   * the server lost its state (in-memory backend restarted, Redis data lost), and holding on to
   * the old `v` would hide every later change. `resync` replaces in the same way.
   * @param {unknown} raw @param {StateKind} kind
   */
  apply(raw, kind) {
    const state = normalizeState(raw);
    if (!state) return;
    const user = state.user;
    const subs = this.#subs.get(user);
    if (!subs) return; // no longer watched
    const held = this.#states.get(user);
    const baseline = kind === "resync" || !this.#seen.has(user);
    this.#seen.add(user);
    if (held && (baseline ? sameState(held, state) : !(state.v > held.v))) return;
    this.#states.set(user, state);
    for (const entry of [...subs]) call(entry, state);
  }

  /** @param {unknown} list @param {StateKind} kind */
  applyAll(list, kind) {
    if (Array.isArray(list)) for (const s of list) this.apply(s, kind);
  }

  /** A new connection or stream begins: its first state of each user is a baseline. */
  newConnection() {
    this.#seen.clear();
  }

  /** The user was unwatched on the server: its next snapshot is a baseline. @param {string} user */
  unseen(user) {
    this.#seen.delete(user);
  }

  scheduleFlush() {
    if (this.#flushTimer || this.#closed) return;
    this.#flushTimer = setTimeout(() => {
      this.#flushTimer = 0;
      this.flush();
    }, 0);
  }

  /** Drop the states nobody watches any more, then report the change. */
  flush() {
    clearTimeout(this.#flushTimer);
    this.#flushTimer = 0;
    // Dropped here rather than in unwatch(), so that an unwatch followed by a watch in the same
    // tick keeps the state (no new snapshot will come for it).
    for (const u of this.#states.keys()) if (!this.#subs.has(u)) this.#states.delete(u);
    if (!this.#closed) this.#onFlush();
  }

  /** No more flushes. */
  close() {
    this.#closed = true;
    clearTimeout(this.#flushTimer);
    this.#flushTimer = 0;
  }
}

/**
 * What the server has been asked to watch on one WebSocket connection, brought in line with a
 * WatchSet by `sync()`: unwatch first, then watch what is missing, in frames of at most
 * MAX_FRAME_BYTES, never more than `maxWatch` users in all.
 */
export class ServerWatch {
  /** @type {Set<string>} */
  #watched = new Set();
  /** Refused (forbidden, limit, ...) on this connection; asked again after a reconnect. @type {Set<string>} */
  #refused = new Set();
  /** Already reported as over `max_watch` on this connection. @type {Set<string>} */
  #overLimit = new Set();
  /** id -> request not answered yet. @type {Map<number, {type: "watch" | "unwatch", users: string[]}>} */
  #pending = new Map();
  #watchSet;
  #send;

  /**
   * @param {WatchSet} watchSet
   * @param {(type: "watch" | "unwatch", users: string[]) => number} send sends one request, returns its id
   */
  constructor(watchSet, send) {
    this.#watchSet = watchSet;
    this.#send = send;
  }

  /**
   * Send the watch/unwatch requests that make the server's set match the wanted one.
   * @param {number} maxWatch
   * @returns {string[]} users newly found over `maxWatch` (not sent; report them once)
   */
  sync(maxWatch) {
    const ws = this.#watchSet;
    const toUnwatch = [...this.#watched].filter((u) => !ws.has(u));
    for (const u of toUnwatch) {
      this.#watched.delete(u);
      ws.unseen(u);
    }
    for (const set of [this.#refused, this.#overLimit]) {
      for (const u of set) if (!ws.has(u)) set.delete(u);
    }
    for (const chunk of chunkUsers(toUnwatch)) this.#request("unwatch", chunk);

    const missing = ws.users.filter((u) => !this.#watched.has(u) && !this.#refused.has(u));
    const room = Math.max(0, maxWatch - this.#watched.size);
    const toWatch = missing.slice(0, room);
    const excess = missing.slice(room).filter((u) => !this.#overLimit.has(u));
    for (const u of toWatch) {
      this.#watched.add(u);
      this.#overLimit.delete(u);
    }
    for (const chunk of chunkUsers(toWatch)) this.#request("watch", chunk);
    for (const u of excess) this.#overLimit.add(u);
    return excess;
  }

  /** A request was answered (`snapshot`, `ok`). @param {number} id */
  answered(id) {
    this.#pending.delete(id);
  }

  /**
   * A request was refused. The users of a refused watch are no longer watched on the server;
   * unless the refusal is `transient` they are not asked for again on this connection.
   * @param {number} id @param {boolean} transient
   * @returns {string[] | undefined} the users of the refused watch, if it was one
   */
  refused(id, transient) {
    const req = this.#pending.get(id);
    this.#pending.delete(id);
    if (req?.type !== "watch") return undefined;
    for (const u of req.users) {
      this.#watched.delete(u);
      if (!transient) this.#refused.add(u);
    }
    return req.users;
  }

  /** @param {"watch" | "unwatch"} type @param {string[]} users */
  #request(type, users) {
    const id = this.#send(type, users);
    this.#pending.set(id, { type, users });
  }
}

/**
 * The first `max` users and the ones left over.
 * @param {string[]} users @param {number} max
 * @returns {{kept: string[], excess: string[]}}
 */
export function limitUsers(users, max) {
  const n = Math.max(0, max);
  return { kept: users.slice(0, n), excess: users.slice(n) };
}

/**
 * Split user ids into groups whose JSON encoding stays under `maxBytes`.
 * @param {string[]} users @param {number} [maxBytes]
 * @returns {string[][]}
 */
export function chunkUsers(users, maxBytes = MAX_FRAME_BYTES) {
  const chunks = [];
  /** @type {string[]} */
  let chunk = [];
  let size = 0;
  for (const u of users) {
    const n = utf8.encode(JSON.stringify(u)).length + 1;
    if (chunk.length && size + n > maxBytes) {
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

/**
 * Unique, non-empty user ids from a string or an iterable.
 * @param {unknown} users @returns {string[]}
 */
export function normalizeUsers(users) {
  const list = typeof users === "string" ? [users] : users != null ? [...(/** @type {Iterable<unknown>} */ (users))] : [];
  for (const u of list) {
    if (typeof u !== "string" || u === "") throw new TypeError("user ids must be non-empty strings");
  }
  return [...new Set(/** @type {string[]} */ (list))];
}

/**
 * A frozen PresenceState from a server object, or null when it has no user.
 * @param {unknown} value @returns {PresenceState | null}
 */
export function normalizeState(value) {
  const raw = /** @type {any} */ (value);
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
    // An empty string clears the custom status, like null (SPEC §4).
    custom: typeof raw.custom === "string" && raw.custom !== "" ? raw.custom : null,
    v: typeof raw.v === "number" ? raw.v : 0,
  });
}

/** @param {PresenceState} a @param {PresenceState} b @returns {boolean} */
export function sameState(a, b) {
  return (
    a.v === b.v &&
    a.status === b.status &&
    a.since === b.since &&
    a.custom === b.custom &&
    a.devices.length === b.devices.length &&
    a.devices.every((d, i) => d.platform === b.devices[i].platform && d.since === b.devices[i].since)
  );
}

/** @param {Subscription} entry @param {PresenceState} state */
function call(entry, state) {
  try {
    entry.cb(state);
  } catch (err) {
    if (typeof globalThis.reportError === "function") globalThis.reportError(err);
    else console.error(err);
  }
}
