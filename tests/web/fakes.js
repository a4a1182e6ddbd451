// Test doubles for the browser client's unit tests: a fake WebSocket and a fake EventSource
// driven by the test (the "server" side), a token function that records its calls, and helpers
// for Node's mock timers. No DOM needed.

/** A fake WebSocket class with its own list of instances. */
export function fakeWebSocket() {
  class FakeWebSocket extends EventTarget {
    /** @type {FakeWebSocket[]} */
    static instances = [];
    readyState = 0;
    /** @type {any[]} */
    sent = [];
    /** @type {{code?: number, reason?: string} | null} */
    closedWith = null;

    /** @param {string} url */
    constructor(url) {
      super();
      this.url = url;
      FakeWebSocket.instances.push(this);
    }
    /** @param {string} data */
    send(data) {
      this.sent.push(JSON.parse(data));
    }
    /** @param {number} [code] @param {string} [reason] */
    close(code, reason) {
      this.closedWith = { code, reason };
      this.readyState = 3;
    }
    // ---- the server's side
    open() {
      this.readyState = 1;
      this.dispatchEvent(new Event("open"));
    }
    /** @param {object} msg */
    receive(msg) {
      this.dispatchEvent(Object.assign(new Event("message"), { data: JSON.stringify(msg) }));
    }
    /** @param {number} code @param {string} [reason] */
    serverClose(code, reason = "") {
      this.readyState = 3;
      this.dispatchEvent(Object.assign(new Event("close"), { code, reason }));
    }
    /** The connection attempt fails before the socket opens (what a blocked network looks like). */
    failToOpen() {
      this.dispatchEvent(new Event("error"));
      this.serverClose(1006);
    }
    /** Open, check the hello, and welcome. @param {object} [welcome] */
    accept(welcome = {}) {
      this.open();
      this.receive({ type: "welcome", user: "me", max_watch: 1000, heartbeat_ms: 25000, ...welcome });
    }
    /** @param {string} type */
    sentOfType(type) {
      return this.sent.filter((m) => m.type === type);
    }
    static get last() {
      return FakeWebSocket.instances[FakeWebSocket.instances.length - 1];
    }
  }
  return FakeWebSocket;
}

/** A fake EventSource class with its own list of instances. */
export function fakeEventSource() {
  class FakeEventSource extends EventTarget {
    /** @type {FakeEventSource[]} */
    static instances = [];
    readyState = 0;
    closed = false;

    /** @param {string} url */
    constructor(url) {
      super();
      this.url = url;
      FakeEventSource.instances.push(this);
    }
    close() {
      this.closed = true;
      this.readyState = 2;
    }
    get users() {
      return new URL(this.url).searchParams.getAll("user");
    }
    get token() {
      return new URL(this.url).searchParams.get("token");
    }
    // ---- the server's side
    open() {
      this.readyState = 1;
      this.dispatchEvent(new Event("open"));
    }
    /** @param {string} type @param {unknown} data */
    emit(type, data) {
      this.dispatchEvent(Object.assign(new Event(type), { data: JSON.stringify(data) }));
    }
    /** An error as EventSource reports it: a refusal before opening, or a dropped stream. */
    fail() {
      this.readyState = 0; // EventSource would now reconnect by itself
      this.dispatchEvent(new Event("error"));
    }
    static get last() {
      return FakeEventSource.instances[FakeEventSource.instances.length - 1];
    }
  }
  return FakeEventSource;
}

/** A token function that records the reason of each call and returns "tok-1", "tok-2", ... */
export function tokens() {
  /** @type {string[]} */
  const reasons = [];
  const fn = (/** @type {{reason: string}} */ { reason }) => {
    reasons.push(reason);
    return `tok-${reasons.length}`;
  };
  return { fn, reasons };
}

/** A JWT-shaped token whose payload has `sub` (not signed: the client never verifies it). */
export function jwtFor(/** @type {string} */ sub) {
  const b64 = (/** @type {object} */ o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, exp: 4102444800 })}.sig`;
}

/** Let pending promises and microtasks run (setImmediate is not mocked). */
export function settle() {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * Mock timers and Math.random for one test.
 * @param {import("node:test").TestContext} t @param {number} [random]
 */
export function useClock(t, random = 0.999) {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval", "Date"], now: 1_000_000 });
  t.mock.method(Math, "random", () => random);
  /** Advance time and let the async work it starts finish. @param {number} ms */
  return async (ms) => {
    t.mock.timers.tick(ms);
    await settle();
  };
}

/** A state as the server sends it. @param {string} user @param {object} [fields] */
export function st(user, fields = {}) {
  return { user, status: "offline", since: null, devices: [], custom: null, v: 0, ...fields };
}

/** Record the detail of every event of `type`. @param {EventTarget} target @param {string} type */
export function record(target, type) {
  /** @type {any[]} */
  const details = [];
  target.addEventListener(type, (e) => details.push(/** @type {CustomEvent} */ (e).detail));
  return details;
}
