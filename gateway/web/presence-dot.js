// <presence-dot user="bob"> — a live online/offline indicator (SPEC §7).
//
//   import { PresenceClient } from "/web/presence.js";
//   import { usePresence } from "/web/presence-dot.js";
//   usePresence(new PresenceClient({ url: "/v1/apps/demo/ws", token: fetchToken }));
//
//   <presence-dot user="bob" name="Bob" show-platform show-custom></presence-dot>
//
// Every dot on the page shares the one client given to usePresence(); dots added before or
// after that call both work. Until then (or without a state yet) a dot's status is "unknown".
//
// Styling: --presence-dot-size, --presence-dot-online, --presence-dot-offline,
// --presence-dot-unknown, and ::part(dot), ::part(platform), ::part(custom) (the custom status
// text, shown with the `show-custom` attribute; it is in the accessible label either way).

/** How often "last seen …" labels are refreshed (one timer for all dots). */
const REFRESH_MS = 30_000;

/** @typedef {import("./presence.js").PresenceClient} PresenceClient */
/** @typedef {import("./presence.js").PresenceState} PresenceState */

/** @type {PresenceClient | null} */
let sharedClient = null;
/** Connected dots by the user they show; the set size is the user's refcount. */
/** @type {Map<string, Set<PresenceDot>>} */
const dotsByUser = new Map();
/** user -> unsubscribe, for the users watched through the shared client. */
/** @type {Map<string, () => void>} */
const subscriptions = new Map();
let liveDotCount = 0;
let refreshTimer = 0;

/**
 * Make every `<presence-dot>` on the page (present and future) use `client`. Calling it again
 * with another client moves all dots to it; `null` detaches them (they show "unknown").
 * @param {PresenceClient | null} client
 * @returns {PresenceClient | null} the client
 */
export function usePresence(client) {
  if (client === sharedClient) return client;
  if (client !== null && (typeof client !== "object" || typeof client.watch !== "function")) {
    throw new TypeError("usePresence: expected a PresenceClient or null");
  }
  for (const unsubscribe of subscriptions.values()) unsubscribe();
  subscriptions.clear();
  sharedClient = client;
  for (const [user, dots] of dotsByUser) {
    subscribe(user);
    for (const dot of dots) dot.render();
  }
  return client;
}

/**
 * The client given to `usePresence()`, or `null`.
 * @returns {PresenceClient | null}
 */
export function presenceClient() {
  return sharedClient;
}

/** @param {string} user */
function subscribe(user) {
  if (!sharedClient || subscriptions.has(user)) return;
  const unsubscribe = sharedClient.watch([user], () => {
    for (const dot of dotsByUser.get(user) ?? []) dot.render();
  });
  subscriptions.set(user, unsubscribe);
}

/** @param {PresenceDot} dot @param {string} user */
function acquire(dot, user) {
  let dots = dotsByUser.get(user);
  if (!dots) {
    dots = new Set();
    dotsByUser.set(user, dots);
  }
  dots.add(dot);
  subscribe(user);
}

/** @param {PresenceDot} dot @param {string} user */
function release(dot, user) {
  const dots = dotsByUser.get(user);
  if (!dots || !dots.delete(dot) || dots.size > 0) return;
  dotsByUser.delete(user);
  subscriptions.get(user)?.();
  subscriptions.delete(user);
}

/** @param {string} user @returns {PresenceState | undefined} */
function stateOf(user) {
  return subscriptions.has(user) ? sharedClient?.state(user) : undefined;
}

function startRefresh() {
  if (refreshTimer) return;
  refreshTimer = setInterval(() => {
    for (const dots of dotsByUser.values()) {
      for (const dot of dots) if (dot.getAttribute("status") === "offline") dot.render();
    }
  }, REFRESH_MS);
}

function stopRefresh() {
  clearInterval(refreshTimer);
  refreshTimer = 0;
}

// ---------------------------------------------------------------- wording

const UNITS = /** @type {const} */ ([
  ["year", 365 * 24 * 3600_000],
  ["month", 30 * 24 * 3600_000],
  ["week", 7 * 24 * 3600_000],
  ["day", 24 * 3600_000],
  ["hour", 3600_000],
  ["minute", 60_000],
]);
/** @type {Intl.RelativeTimeFormat | undefined} */
let rtf;

/**
 * "5 minutes ago", "yesterday", "just now": how long ago `since` (ms) was, in English.
 * @param {number} since
 * @param {number} [now]
 * @returns {string}
 */
export function timeAgo(since, now = Date.now()) {
  const elapsed = Math.max(0, now - since);
  rtf ??= new Intl.RelativeTimeFormat("en", { numeric: "auto" });
  for (const [unit, ms] of UNITS) {
    if (elapsed >= ms) return rtf.format(-Math.floor(elapsed / ms), unit);
  }
  return "just now";
}

/**
 * The accessible label of a dot: "bob is online", "bob was last seen 5 minutes ago",
 * "bob was never seen", "bob's status is unknown"; with a custom status, it follows a colon:
 * "Bob is online: In a meeting".
 * @param {string} name display name
 * @param {PresenceState | undefined} state
 * @param {number} [now]
 * @returns {string}
 */
export function describePresence(name, state, now = Date.now()) {
  if (!state) return `${name}'s status is unknown`;
  const custom = customOf(state);
  const suffix = custom ? `: ${custom}` : "";
  if (state.status === "online") return `${name} is online${suffix}`;
  if (state.since == null) return `${name} was never seen${suffix}`;
  return `${name} was last seen ${timeAgo(state.since, now)}${suffix}`;
}

/**
 * The custom status text of a state, or null (also for states from older servers without it).
 * @param {PresenceState | undefined} state
 * @returns {string | null}
 */
export function customOf(state) {
  const custom = /** @type {{custom?: unknown} | undefined} */ (state)?.custom;
  return typeof custom === "string" && custom !== "" ? custom : null;
}

const SVG_OPEN =
  '<svg viewBox="0 0 24 24" width="1em" height="1em" fill="none" stroke="currentColor" ' +
  'stroke-width="2" stroke-linecap="round" stroke-linejoin="round" aria-hidden="true" focusable="false">';
const ICON_PATHS = {
  phone: '<rect x="7" y="2.5" width="10" height="19" rx="2"/><path d="M11 18h2"/>',
  tablet: '<rect x="4" y="2.5" width="16" height="19" rx="2"/><path d="M11 18h2"/>',
  computer: '<rect x="3" y="4" width="18" height="12" rx="1.5"/><path d="M2 20h20"/>',
  web: '<circle cx="12" cy="12" r="9"/><path d="M3 12h18M12 3a14 14 0 0 1 0 18M12 3a14 14 0 0 0 0 18"/>',
  server:
    '<rect x="3" y="4" width="18" height="7" rx="1.5"/><rect x="3" y="13" width="18" height="7" rx="1.5"/>' +
    '<path d="M7 7.5h.01M7 16.5h.01"/>',
  unknown: '<circle cx="12" cy="12" r="9"/><path d="M12 16h.01M12 8v4"/>',
};
/** Device kind of each normalized platform name (SPEC §4). */
const PLATFORM_KIND = {
  ios: "phone",
  android: "phone",
  harmonyos: "phone",
  miniprogram: "phone",
  ipad: "tablet",
  apad: "tablet",
  web: "web",
  windows: "computer",
  mac: "computer",
  linux: "computer",
  pc: "computer",
  server: "server",
};
/** Display names of normalized platform names. */
const PLATFORM_NAMES = {
  ios: "iOS",
  android: "Android",
  harmonyos: "HarmonyOS",
  miniprogram: "Mini Program",
  ipad: "iPad",
  apad: "Android pad",
  web: "Web",
  windows: "Windows",
  mac: "macOS",
  linux: "Linux",
  pc: "PC",
  server: "Server",
  unknown: "unknown device",
};

/**
 * A small decorative inline SVG (phone, tablet, computer, globe, server) for a platform name.
 * Trusted markup, safe to assign to innerHTML.
 * @param {string} platform normalized platform name, e.g. "ios"
 * @returns {string}
 */
export function platformIcon(platform) {
  const kind = /** @type {Record<string, string>} */ (PLATFORM_KIND)[platform] ?? "unknown";
  return `${SVG_OPEN}${/** @type {Record<string, string>} */ (ICON_PATHS)[kind]}</svg>`;
}

/**
 * Human name of a platform: "ios" → "iOS", "mac" → "macOS".
 * @param {string} platform
 * @returns {string}
 */
export function platformName(platform) {
  return /** @type {Record<string, string>} */ (PLATFORM_NAMES)[platform] ?? platform;
}

// ---------------------------------------------------------------- element

const template = globalThis.document?.createElement("template");
if (template) {
  template.innerHTML = `
<style>
  :host {
    display: inline-flex;
    align-items: center;
    gap: 0.25em;
    vertical-align: middle;
    line-height: 1;
  }
  :host([hidden]) { display: none; }
  .dot {
    box-sizing: border-box;
    display: inline-block;
    inline-size: var(--presence-dot-size, 0.625rem);
    block-size: var(--presence-dot-size, 0.625rem);
    border-radius: 50%;
    background: var(--presence-dot-unknown, #a1a1aa);
    opacity: 0.5;
    transition: background-color 0.2s, border-color 0.2s, opacity 0.2s;
  }
  /* Online is filled, offline a ring: the states differ by shape, not only by colour. */
  :host([status="online"]) .dot {
    background: var(--presence-dot-online, #16a34a);
    opacity: 1;
  }
  :host([status="offline"]) .dot {
    background: transparent;
    border: calc(var(--presence-dot-size, 0.625rem) / 4) solid var(--presence-dot-offline, #71717a);
    opacity: 1;
  }
  .platform {
    display: inline-flex;
    gap: 0.125em;
    font-size: calc(var(--presence-dot-size, 0.625rem) * 1.4);
    color: var(--presence-dot-online, #16a34a);
  }
  .platform[hidden] { display: none; }
  .custom {
    font-size: 0.875em;
    color: var(--presence-dot-custom, inherit);
    max-inline-size: var(--presence-dot-custom-max, 16em);
    overflow: hidden;
    text-overflow: ellipsis;
    white-space: nowrap;
  }
  .custom[hidden] { display: none; }
  @media (prefers-reduced-motion: reduce) { .dot { transition: none; } }
  @media (forced-colors: active) {
    :host([status="online"]) .dot { background: CanvasText; }
    :host([status="offline"]) .dot { border-color: CanvasText; }
    .dot { background: GrayText; }
  }
</style>
<span class="dot" part="dot"></span><span class="platform" part="platform" hidden></span><span class="custom" part="custom" hidden></span>`;
}

const Base = /** @type {typeof HTMLElement} */ (globalThis.HTMLElement ?? class {});

/**
 * `<presence-dot user="bob" [name="Bob"] [show-platform] [show-custom]>`: reflects `status`
 * ("online", "offline", "unknown") on itself and keeps `role="img"` and `aria-label` current.
 */
export class PresenceDot extends Base {
  /** @returns {string[]} */
  static get observedAttributes() {
    return ["user", "name", "show-platform", "show-custom"];
  }

  /** @type {string | null} user currently acquired from the shared client */
  #watched = null;
  /** @type {HTMLElement} */
  #dot;
  /** @type {HTMLElement} */
  #platform;
  /** @type {HTMLElement} */
  #custom;
  #icons = "";

  constructor() {
    super();
    const root = this.attachShadow({ mode: "open" });
    root.append(/** @type {HTMLTemplateElement} */ (template).content.cloneNode(true));
    this.#dot = /** @type {HTMLElement} */ (root.querySelector(".dot"));
    this.#platform = /** @type {HTMLElement} */ (root.querySelector(".platform"));
    this.#custom = /** @type {HTMLElement} */ (root.querySelector(".custom"));
  }

  /**
   * The watched user id (the `user` attribute).
   * @returns {string}
   */
  get user() {
    return this.getAttribute("user") ?? "";
  }

  /** @param {string} value */
  set user(value) {
    this.setAttribute("user", value);
  }

  /**
   * The latest state of the user, or `undefined` (status "unknown").
   * @returns {PresenceState | undefined}
   */
  get state() {
    return this.#watched ? stateOf(this.#watched) : undefined;
  }

  /** Starts watching the user through the shared client. @returns {void} */
  connectedCallback() {
    if (!this.hasAttribute("role")) this.setAttribute("role", "img");
    liveDotCount += 1;
    startRefresh();
    this.#follow(this.user);
    this.render();
  }

  /** Stops watching; the last dot for a user unwatches it. @returns {void} */
  disconnectedCallback() {
    liveDotCount -= 1;
    this.#follow(null);
    if (liveDotCount === 0) stopRefresh();
  }

  /** @param {string} name @param {string | null} _old @param {string | null} _value @returns {void} */
  attributeChangedCallback(name, _old, _value) {
    if (!this.isConnected) return;
    if (name === "user") this.#follow(this.user);
    this.render();
  }

  /**
   * Redraw from the shared client's current state. Called by the module; harmless to call.
   * @returns {void}
   */
  render() {
    const state = this.state;
    const status = state ? state.status : "unknown";
    if (this.getAttribute("status") !== status) this.setAttribute("status", status);
    const label = describePresence(this.getAttribute("name") || this.user || "someone", state);
    if (this.getAttribute("aria-label") !== label) this.setAttribute("aria-label", label);
    this.#dot.title = label;
    const platforms = state?.status === "online" ? [...new Set(state.devices.map((d) => d.platform))] : [];
    const show = this.hasAttribute("show-platform") && platforms.length > 0;
    this.#platform.hidden = !show;
    const icons = show ? [...new Set(platforms.map(platformIcon))].join("") : "";
    if (this.#icons !== icons) {
      this.#icons = icons;
      this.#platform.innerHTML = icons;
    }
    // Text, never markup: the custom status is whatever the user typed.
    const custom = this.hasAttribute("show-custom") ? customOf(state) : null;
    this.#custom.hidden = custom === null;
    if (this.#custom.textContent !== (custom ?? "")) this.#custom.textContent = custom ?? "";
  }

  /** @param {string | null} user */
  #follow(user) {
    const next = user || null;
    if (next === this.#watched) return;
    if (this.#watched) release(this, this.#watched);
    this.#watched = next;
    if (next) acquire(this, next);
  }
}

if (globalThis.customElements && !customElements.get("presence-dot")) {
  customElements.define("presence-dot", PresenceDot);
}
