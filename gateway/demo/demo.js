// Dev-mode demo page: a friends list with live presence, and a panel that posts real
// provider-format webhooks (Tencent IM, RongCloud, OpenIM, Easemob, NetEase, WuKongIM) to
// this gateway.

import { PresenceClient } from "/web/presence.js";
import { customOf, describePresence, platformIcon, platformName, timeAgo, usePresence } from "/web/presence-dot.js";

// ------------------------------------------------------------------------------------------
// Dev mode's app (SPEC §2). Its secrets are not here: every provider's request is built and
// signed by the gateway's dev-only helper (POST /v1/apps/{app}/dev-webhook/{provider},
// gateway/devtools.py) with the provider module's own inverse of its parser, so the wire
// formats and the dev secrets (config.dev_settings) each have one copy, and the page needs
// no hashing (Easemob signs with MD5, which crypto.subtle lacks).
const DEV = Object.freeze({ app: "demo" });
// ------------------------------------------------------------------------------------------

const FRIENDS = Object.freeze([
  { id: "alice", name: "Alice" },
  { id: "bob", name: "Bob" },
  { id: "carol", name: "Carol" },
  { id: "dave", name: "Dave" },
  { id: "erin", name: "Erin" },
  { id: "frank", name: "Frank" },
]);

/**
 * What each provider can send. `presence` says which way a button flips the user; `status`
 * is what the dev-webhook helper is asked for. Platform values are the gateway's names, labels
 * what the provider itself sends.
 */
const PROVIDERS = {
  tencent: {
    label: "Tencent IM",
    platforms: [
      ["ios", "iOS"],
      ["android", "Android"],
      ["web", "Web"],
      ["windows", "Windows"],
      ["mac", "Mac"],
      ["ipad", "iPad"],
    ],
    actions: [
      { label: "Login", presence: "online", status: "online" }, // Login / Register
      { label: "Logout", presence: "offline", status: "logout" }, // Logout / Unregister
      { label: "Disconnect", presence: "offline", status: "offline" }, // Disconnect / LinkClose
      // SPEC 3.1: CustomStatusChange, the text from the "Custom status" field (empty clears it)
      { label: "Set custom status", presence: "custom", status: "custom" },
    ],
  },
  rongcloud: {
    label: "RongCloud",
    platforms: [
      ["ios", "iOS"],
      ["android", "Android"],
      ["web", "Web (Websocket)"],
      ["pc", "PC"],
      ["harmonyos", "HarmonyOS"],
      ["miniprogram", "Mini Program"],
    ],
    actions: [
      { label: "Online", presence: "online", status: "online" }, // status "0"
      { label: "Offline", presence: "offline", status: "offline" }, // "1"
      { label: "Log out", presence: "offline", status: "logout" }, // "2"
    ],
  },
  openim: {
    label: "OpenIM",
    platforms: [
      ["ios", "IOS (1)"],
      ["android", "Android (2)"],
      ["windows", "Windows (3)"],
      ["mac", "OSX (4)"],
      ["web", "Web (5)"],
      ["miniprogram", "MiniWeb (6)"],
      ["linux", "Linux (7)"],
      ["apad", "APad (8)"],
      ["ipad", "IPad (9)"],
      ["harmonyos", "HarmonyOS (11)"],
    ],
    actions: [
      // OpenIM >= 3.7 callbackAfterUserOnlineCommand / ...OfflineCommand, in the URL path
      { label: "Online", presence: "online", status: "online" },
      { label: "Offline", presence: "offline", status: "offline" },
    ],
  },
  easemob: {
    label: "Easemob",
    platforms: [
      ["ios", "ios"],
      ["android", "android"],
      ["harmonyos", "harmonyos"],
      ["web", "web"],
      ["windows", "win"],
      ["mac", "mac"],
      ["linux", "linux"],
    ],
    actions: [
      { label: "Login", presence: "online", status: "online" },
      { label: "Logout", presence: "offline", status: "offline" },
      { label: "Replaced", presence: "offline", status: "kicked" },
    ],
  },
  netease: {
    label: "NetEase",
    platforms: [
      ["ios", "IOS"],
      ["android", "AOS (Android)"],
      ["harmonyos", "HARMONY"],
      ["web", "WEB"],
      ["windows", "PC (Windows)"],
      ["mac", "MAC"],
      ["linux", "LINUX"],
    ],
    actions: [
      { label: "Login", presence: "online", status: "online" },
      { label: "Logout", presence: "offline", status: "offline" },
    ],
  },
  wukongim: {
    label: "WuKongIM",
    platforms: [
      ["mobile", "App (deviceFlag 0)"],
      ["web", "Web (deviceFlag 1)"],
      ["pc", "PC (deviceFlag 2)"],
    ],
    actions: [
      { label: "Online", presence: "online", status: "online" },
      { label: "Offline", presence: "offline", status: "offline" },
    ],
  },
};

const CONNECTION_TEXT = {
  idle: "Not connected",
  connecting: "Connecting…",
  open: "Live",
  reconnecting: "Reconnecting…",
  closed: "Disconnected",
};

const me = new URLSearchParams(location.search).get("me") || "visitor";
const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));

// ---------------------------------------------------------------- presence

const client = new PresenceClient({
  url: `/v1/apps/${DEV.app}/ws`,
  token: async () => {
    const res = await fetch(`/v1/apps/${DEV.app}/dev-token?user=${encodeURIComponent(me)}`, { cache: "no-store" });
    if (!res.ok) throw new Error(`dev token request failed: HTTP ${res.status}`);
    const body = await res.json();
    return body.token;
  },
  backoff: { initialMs: 250, maxMs: 5000 },
});
usePresence(client);

client.addEventListener("status", (e) => {
  const { status, delayMs } = e.detail;
  const badge = $("conn");
  badge.dataset.status = status;
  let text = CONNECTION_TEXT[status] ?? status;
  if (status === "reconnecting" && typeof delayMs === "number" && delayMs >= 1000) {
    text = `Reconnecting in ${Math.round(delayMs / 1000)} s…`;
  }
  $("conn-text").textContent = text;
  if (status === "open") showNotice("");
});
client.addEventListener("error", (e) => {
  const { message, fatal } = e.detail;
  showNotice(fatal ? `Stopped: ${message}` : message);
});

/** @param {string} text */
function showNotice(text) {
  const notice = $("notice");
  notice.textContent = text;
  notice.hidden = text === "";
}

// ---------------------------------------------------------------- friends list

function renderFriends() {
  const list = $("friends");
  for (const friend of FRIENDS) {
    const li = document.createElement("li");
    li.className = "friend";
    li.dataset.user = friend.id;
    li.innerHTML = `
      <span class="avatar" style="--hue:${hue(friend.id)}">
        <span aria-hidden="true">${friend.name[0]}</span>
        <presence-dot class="avatar-dot"></presence-dot>
      </span>
      <span class="who">
        <span class="name"></span>
        <span class="detail">Connecting…</span>
      </span>
      <span class="devices" aria-hidden="true"></span>
      <button type="button" class="ghost pick">Simulate</button>`;
    const dot = /** @type {HTMLElement} */ (li.querySelector("presence-dot"));
    dot.setAttribute("user", friend.id);
    dot.setAttribute("name", friend.name);
    /** @type {HTMLElement} */ (li.querySelector(".name")).textContent = friend.name;
    const pick = /** @type {HTMLButtonElement} */ (li.querySelector(".pick"));
    pick.setAttribute("aria-label", `Simulate webhooks for ${friend.name}`);
    pick.addEventListener("click", () => {
      const select = /** @type {HTMLSelectElement} */ ($("hook-user"));
      select.value = friend.id;
      select.focus();
    });
    list.append(li);
  }
  client.watch(
    FRIENDS.map((f) => f.id),
    (state) => renderFriend(state.user),
  );
}

/** @param {string} user */
function renderFriend(user) {
  const li = /** @type {HTMLElement | null} */ (document.querySelector(`.friend[data-user="${CSS.escape(user)}"]`));
  if (!li) return;
  const state = client.state(user);
  const detail = /** @type {HTMLElement} */ (li.querySelector(".detail"));
  const devices = /** @type {HTMLElement} */ (li.querySelector(".devices"));
  li.dataset.status = state ? state.status : "unknown";
  if (!state) {
    detail.textContent = "Status unknown";
    devices.replaceChildren();
    return;
  }
  const platforms = [...new Set(state.devices.map((d) => d.platform))].sort();
  if (state.status === "online") {
    detail.textContent = platforms.length ? `Online on ${platforms.map(platformName).join(", ")}` : "Online";
  } else {
    detail.textContent = state.since == null ? "Never seen" : `Last seen ${timeAgo(state.since)}`;
  }
  const custom = customOf(state);
  if (custom) detail.textContent += ` · ${custom}`; // text, never markup
  const key = platforms.join();
  if (devices.dataset.key !== key) {
    devices.dataset.key = key;
    devices.replaceChildren(
      ...platforms.map((p) => {
        const span = document.createElement("span");
        span.className = "device";
        span.title = platformName(p);
        span.innerHTML = platformIcon(p); // fixed markup, chosen by kind
        return span;
      }),
    );
  }
  const friend = FRIENDS.find((f) => f.id === user);
  li.title = describePresence(friend?.name ?? user, state);
}

// Keep "last seen …" fresh.
setInterval(() => {
  for (const f of FRIENDS) renderFriend(f.id);
}, 30_000);

/** A stable hue per user for the avatar. @param {string} s */
function hue(s) {
  let h = 0;
  for (const ch of s) h = (h * 31 + ch.charCodeAt(0)) % 360;
  return h;
}

// ---------------------------------------------------------------- webhook panel

function setupPanel() {
  const userSelect = /** @type {HTMLSelectElement} */ ($("hook-user"));
  for (const f of FRIENDS) userSelect.add(new Option(f.name, f.id));

  const providerBox = $("hook-provider");
  for (const [key, p] of Object.entries(PROVIDERS)) {
    const label = document.createElement("label");
    label.className = "segment";
    const input = document.createElement("input");
    input.type = "radio";
    input.name = "provider";
    input.value = key;
    input.checked = key === "tencent";
    input.addEventListener("change", renderProvider);
    label.append(input, document.createTextNode(p.label));
    providerBox.append(label);
  }
  renderProvider();
  const customField = $("hook-custom-field");
  customField.hidden = currentProvider() !== "tencent";
  providerBox.addEventListener("change", () => {
    customField.hidden = currentProvider() !== "tencent";
  });

  $("log-clear").addEventListener("click", () => $("log").replaceChildren());
}

function currentProvider() {
  const checked = /** @type {HTMLInputElement | null} */ (document.querySelector('input[name="provider"]:checked'));
  return /** @type {keyof typeof PROVIDERS} */ (checked?.value ?? "tencent");
}

function renderProvider() {
  const key = currentProvider();
  const provider = PROVIDERS[key];
  const platformSelect = /** @type {HTMLSelectElement} */ ($("hook-platform"));
  platformSelect.replaceChildren(...provider.platforms.map(([value, label]) => new Option(label, value)));

  const actions = $("hook-actions");
  actions.replaceChildren(
    ...provider.actions.map((action) => {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = action.label;
      button.dataset.presence = action.presence;
      button.className = action.presence === "online" ? "primary" : action.presence === "custom" ? "ghost" : "secondary";
      button.addEventListener("click", () => send(key, action, button));
      return button;
    }),
  );
}

/**
 * @param {keyof typeof PROVIDERS} key
 * @param {any} action
 * @param {HTMLButtonElement} button
 */
async function send(key, action, button) {
  const provider = PROVIDERS[key];
  const user = /** @type {HTMLSelectElement} */ ($("hook-user")).value;
  const platformSelect = /** @type {HTMLSelectElement} */ ($("hook-platform"));
  const platform = platformSelect.value;
  const platformLabel = platformSelect.selectedOptions[0]?.textContent ?? platform;
  const entry = logEntry(`${provider.label} · ${action.label}`, `${user} on ${platformLabel}`);
  button.disabled = true;
  try {
    const res = await sendSignedByGateway(key, action, user, platform);
    const text = await res.text();
    finishEntry(entry, res.status, text);
  } catch (err) {
    finishEntry(entry, null, err instanceof Error ? err.message : String(err));
  } finally {
    button.disabled = false;
  }
}

/**
 * The gateway's dev-only helper builds the provider's exact request (signed where the
 * provider signs), and the page posts it to the webhook URL like the provider would.
 * @param {string} provider @param {any} action @param {string} user @param {string} platform
 */
async function sendSignedByGateway(provider, action, user, platform) {
  /** @type {{user: string, platform: string, status: string, custom?: string}} */
  const asked = { user, platform, status: action.status };
  if (action.status === "custom") asked.custom = /** @type {HTMLInputElement} */ ($("hook-custom")).value.trim();
  const helper = await postJson(`/v1/apps/${DEV.app}/dev-webhook/${provider}`, asked);
  if (!helper.ok) throw new Error(`dev-webhook helper: HTTP ${helper.status} ${await helper.text()}`);
  /** @type {{url: string, headers: Record<string, string>, body: string}} */
  const signed = await helper.json();
  return fetch(signed.url, { method: "POST", headers: signed.headers, body: signed.body });
}

/** @param {string} url @param {unknown} body */
function postJson(url, body) {
  return fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

// ---------------------------------------------------------------- log

/** @param {string} what @param {string} who */
function logEntry(what, who) {
  const li = document.createElement("li");
  li.className = "log-entry";
  li.dataset.state = "pending";
  li.innerHTML = `
    <span class="code" aria-label="HTTP status">…</span>
    <span class="log-main"><span class="log-what"></span> <span class="log-who"></span></span>
    <time class="log-time"></time>
    <code class="log-body"></code>`;
  /** @type {HTMLElement} */ (li.querySelector(".log-what")).textContent = what;
  /** @type {HTMLElement} */ (li.querySelector(".log-who")).textContent = who;
  const time = /** @type {HTMLTimeElement} */ (li.querySelector("time"));
  const now = new Date();
  time.dateTime = now.toISOString();
  time.textContent = now.toLocaleTimeString();
  const log = $("log");
  log.prepend(li);
  while (log.children.length > 20) log.lastElementChild?.remove();
  return li;
}

/** @param {HTMLElement} li @param {number | null} status @param {string} body */
function finishEntry(li, status, body) {
  const ok = status !== null && status >= 200 && status < 300;
  li.dataset.state = ok ? "ok" : "error";
  li.dataset.httpStatus = status === null ? "" : String(status);
  /** @type {HTMLElement} */ (li.querySelector(".code")).textContent = status === null ? "ERR" : String(status);
  const short = body.length > 120 ? `${body.slice(0, 117)}…` : body;
  const code = /** @type {HTMLElement} */ (li.querySelector(".log-body"));
  code.textContent = short;
  code.title = body;
}

// ---------------------------------------------------------------- start

$("me").textContent = me;
renderFriends();
setupPanel();
Object.assign(globalThis, { presenceDemo: { client, DEV } });
