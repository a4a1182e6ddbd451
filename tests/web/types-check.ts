// Compiled by `tsc -p gateway/web/tsconfig.json` only (never run): uses gateway/web/presence.d.ts
// and gateway/web/presence-dot.d.ts the way a TypeScript application would, so a declaration that
// drifts from the documented API fails the type check.

import { ErrorCode, PresenceClient, type PresenceState } from "../../gateway/web/presence.js";
import { describePresence, usePresence, type PresenceDotAttributes } from "../../gateway/web/presence-dot.js";

const client = new PresenceClient({
  url: "wss://example.test/v1/apps/demo/ws",
  token: async ({ reason }) => (reason === "rejected" ? "fresh" : "cached"),
  transport: "auto",
});
const same: PresenceClient = usePresence(client);
const none: null = usePresence(null);

const stop: () => void = client.watch(["bob"], (state: PresenceState) => {
  const custom: string | null = state.custom;
  const label: string = describePresence(state.user, state);
  void custom;
  void label;
});
stop();

client.addEventListener("status", (e) => {
  const transport: "websocket" | "sse" | undefined = e.detail.transport;
  void transport;
});
client.addEventListener("error", (e) => {
  if (e.detail.code === ErrorCode.FORBIDDEN) void e.detail.users;
});
const now: "websocket" | "sse" | null = client.transport;

const dot = document.createElement("presence-dot");
dot.user = "bob";
const state: PresenceState | undefined = dot.state;
dot.render();
const found = document.querySelector("presence-dot");
found?.render();

const attrs: PresenceDotAttributes = { user: "bob", name: "Bob", "show-custom": true };

// @ts-expect-error transport is one of "auto", "websocket", "sse"
new PresenceClient({ url: "/ws", token: "t", transport: "long-polling" });

export { attrs, none, now, same, state };
