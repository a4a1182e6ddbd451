// Dev-mode demo page: a friends list with live presence, and a panel that posts real
// provider-format webhooks (Tencent IM, RongCloud, OpenIM, Easemob, NetEase, WuKongIM) to
// this gateway.

import { PresenceClient } from "./presence.js";
import { customOf, describePresence, platformIcon, platformName, timeAgo, usePresence } from "./presence-dot.js";

// ------------------------------------------------------------------------------------------
// Dev-mode settings. These are the values `presence-gateway serve` configures when it runs
// without a config file (SPEC §2). They are public test values, never production secrets.
const DEV = Object.freeze({
  app: "demo",
  tencent: Object.freeze({ sdkAppId: 1400000000 }), // no callback_token → no Sign
  rongcloud: Object.freeze({ appKey: "demo-app-key", appSecret: "demo-app-secret" }),
  openim: Object.freeze({ token: "" }), // empty → no token path segment
  // Easemob, NetEase and WuKongIM requests are built and signed by the gateway's dev-only
  // helper (POST /v1/apps/{app}/dev-webhook/{provider}, gateway/devtools.py) with the
  // provider modules' own inverse: Easemob signs with MD5, which crypto.subtle lacks, and
  // their dev secrets stay in one place (config.dev_settings).
});
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
 * What each provider can send. `presence` says which way a button flips the user.
 * Platform values are what the provider itself sends.
 */
const PROVIDERS = {
  tencent: {
    label: "Tencent IM",
    platforms: [
      ["iOS", "iOS"],
      ["Android", "Android"],
      ["Web", "Web"],
      ["Windows", "Windows"],
      ["Mac", "Mac"],
      ["iPad", "iPad"],
    ],
    actions: [
      { label: "Login", presence: "online", action: "Login", reason: "Register" },
      { label: "Logout", presence: "offline", action: "Logout", reason: "Unregister" },
      { label: "Disconnect", presence: "offline", action: "Disconnect", reason: "LinkClose" },
      // SPEC 3.1: the custom status text, from the "Custom status" field (empty clears it)
      { label: "Set custom status", presence: "custom", action: "CustomStatusChange", reason: "SetCustomStatus" },
    ],
    send: sendTencent,
  },
  rongcloud: {
    label: "RongCloud",
    platforms: [
      ["iOS", "iOS"],
      ["Android", "Android"],
      ["Websocket", "Web (Websocket)"],
      ["PC", "PC"],
      ["HarmonyOS", "HarmonyOS"],
      ["MiniProgram", "Mini Program"],
    ],
    actions: [
      { label: "Online", presence: "online", status: "0" },
      { label: "Offline", presence: "offline", status: "1" },
      { label: "Log out", presence: "offline", status: "2" },
    ],
    send: sendRongCloud,
  },
  openim: {
    label: "OpenIM",
    platforms: [
      ["1", "IOS"],
      ["2", "Android"],
      ["3", "Windows"],
      ["4", "OSX"],
      ["5", "Web"],
      ["6", "MiniWeb"],
      ["7", "Linux"],
      ["8", "APad"],
      ["9", "IPad"],
      ["11", "HarmonyOS"],
    ],
    actions: [
      { label: "Online", presence: "online", command: "callbackAfterUserOnlineCommand" },
      { label: "Offline", presence: "offline", command: "callbackAfterUserOfflineCommand" },
    ],
    send: sendOpenIM,
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
    send: sendEasemob,
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
    send: sendNetEase,
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
    send: sendWuKongIM,
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
  const insecure = key === "rongcloud" && !globalThis.crypto?.subtle;
  $("hook-secure").hidden = !insecure;
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
    const res = await provider.send(action, user, platform);
    const text = await res.text();
    finishEntry(entry, res.status, text);
  } catch (err) {
    finishEntry(entry, null, err instanceof Error ? err.message : String(err));
  } finally {
    button.disabled = false;
  }
}

/** Tencent IM `State.StateChange` (PROVIDERS.md). */
/** @param {any} action @param {string} user @param {string} platform */
function sendTencent(action, user, platform) {
  const query = new URLSearchParams({
    SdkAppid: String(DEV.tencent.sdkAppId),
    CallbackCommand: "State.StateChange",
    contenttype: "json",
    ClientIP: "127.0.0.1",
    OptPlatform: platform,
  });
  const body = {
    CallbackCommand: "State.StateChange",
    EventTime: Date.now(),
    Info: { Action: action.action, To_Account: user, Reason: action.reason },
  };
  if (action.action === "CustomStatusChange") {
    const custom = /** @type {HTMLInputElement} */ ($("hook-custom")).value.trim();
    Object.assign(body.Info, { CustomStatus: custom });
  }
  return postJson(`/v1/apps/${DEV.app}/webhooks/tencent?${query}`, body);
}

/** RongCloud online status subscription, signed with SHA-1(appSecret + nonce + timestamp). */
/** @param {any} action @param {string} user @param {string} os */
async function sendRongCloud(action, user, os) {
  if (!globalThis.crypto?.subtle) {
    throw new Error("RongCloud signing needs crypto.subtle: open the page on localhost or over HTTPS");
  }
  const nonce = String(Math.floor(Math.random() * 1e9));
  const timestamp = String(Date.now());
  const signature = await sha1Hex(DEV.rongcloud.appSecret + nonce + timestamp);
  const query = new URLSearchParams({ appKey: DEV.rongcloud.appKey, nonce, timestamp, signature });
  const body = [
    {
      userid: user,
      status: action.status,
      os,
      time: Date.now(),
      clientIp: "127.0.0.1:1",
      // One session per user and platform, so that "offline" ends the session "online" began.
      sessionId: `demo-${user}-${os}`,
    },
  ];
  return postJson(`/v1/apps/${DEV.app}/webhooks/rongcloud?${query}`, body);
}

/** OpenIM ≥ 3.7 user online/offline callback (command appended to the URL, as ≥ 3.5 does). */
/** @param {any} action @param {string} user @param {string} platformId */
function sendOpenIM(action, user, platformId) {
  const platform = PROVIDERS.openim.platforms.find(([id]) => id === platformId)?.[1] ?? "Web";
  const operationID = `demo-${Date.now()}`;
  const body = {
    callbackCommand: action.command,
    operationID,
    platformID: Number(platformId),
    platform,
    userID: user,
    seq: Date.now(),
    connID: "",
    ...(action.presence === "online" ? { isAppBackground: false } : {}),
  };
  const token = DEV.openim.token ? `/${encodeURIComponent(DEV.openim.token)}` : "";
  return postJson(`/v1/apps/${DEV.app}/webhooks/openim${token}/${action.command}`, body, { operationID });
}

/** @param {any} action @param {string} user @param {string} platform */
function sendEasemob(action, user, platform) {
  return sendSignedByGateway("easemob", action, user, platform);
}
/** @param {any} action @param {string} user @param {string} platform */
function sendNetEase(action, user, platform) {
  return sendSignedByGateway("netease", action, user, platform);
}
/** @param {any} action @param {string} user @param {string} platform */
function sendWuKongIM(action, user, platform) {
  return sendSignedByGateway("wukongim", action, user, platform);
}

/**
 * Easemob `userStatus`, NetEase login/logout copy or WuKongIM `user.onlinestatus` batch: the
 * gateway's dev-only helper builds the provider's exact request (signed where the provider
 * signs), and the page posts it to the webhook URL like the provider would.
 * @param {string} provider @param {any} action @param {string} user @param {string} platform
 */
async function sendSignedByGateway(provider, action, user, platform) {
  const helper = await postJson(`/v1/apps/${DEV.app}/dev-webhook/${provider}`, {
    user,
    platform,
    status: action.status,
  });
  if (!helper.ok) throw new Error(`dev-webhook helper: HTTP ${helper.status} ${await helper.text()}`);
  /** @type {{url: string, headers: Record<string, string>, body: string}} */
  const signed = await helper.json();
  return fetch(signed.url, { method: "POST", headers: signed.headers, body: signed.body });
}

/** @param {string} url @param {unknown} body @param {Record<string, string>} [headers] */
function postJson(url, body, headers = {}) {
  return fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
}

/** @param {string} text */
async function sha1Hex(text) {
  const digest = await crypto.subtle.digest("SHA-1", new TextEncoder().encode(text));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
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
