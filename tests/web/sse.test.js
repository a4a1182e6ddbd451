// PresenceClient over Server-Sent Events (SPEC §10) and the "auto" transport: fallback to SSE
// after two WebSocket attempts that never open, back to WebSocket later, one debounced stream
// per change of the watch set, events applied with the same v ordering as over WebSocket.

import assert from "node:assert/strict";
import { test } from "node:test";

import { PresenceClient } from "../../gateway/web/presence.js";
import { sseUrlFor, streamUrl, tokenSubject } from "../../gateway/web/sse.js";
import { fakeEventSource, fakeWebSocket, jwtFor, record, settle, st, tokens, useClock } from "./fakes.js";

const URL_WS = "wss://gw.test/v1/apps/demo/ws";

/** @param {import("node:test").TestContext} t @param {object} [options] */
function sseClient(t, options = {}) {
  const tick = useClock(t);
  const ES = fakeEventSource();
  const tk = tokens();
  const client = new PresenceClient({ url: URL_WS, token: tk.fn, transport: "sse", EventSource: ES, ...options });
  t.after(() => client.close());
  return { tick, ES, tk, client };
}

test("the SSE endpoint is the WebSocket URL with https and /sse for /ws", () => {
  assert.equal(sseUrlFor("wss://gw.test/v1/apps/demo/ws"), "https://gw.test/v1/apps/demo/sse");
  assert.equal(sseUrlFor("ws://127.0.0.1:8080/v1/apps/a%20b/ws"), "http://127.0.0.1:8080/v1/apps/a%20b/sse");
  assert.equal(sseUrlFor("wss://gw.test/other"), null);
  assert.equal(
    streamUrl("https://gw.test/v1/apps/demo/sse", ["bob", "a&b"], "t.k"),
    "https://gw.test/v1/apps/demo/sse?user=bob&user=a%26b&token=t.k",
  );
  assert.equal(tokenSubject(jwtFor("alice")), "alice");
  assert.equal(tokenSubject("not a jwt"), null);
});

test("sse: users watched in one tick open one stream with ?user= for each and ?token=", async (t) => {
  const { tick, ES, tk, client } = sseClient(t);
  const users = Array.from({ length: 50 }, (_, i) => `u${i}`);
  for (const u of users) client.watch(u, () => {});
  await tick(0);
  await tick(100);
  assert.equal(ES.instances.length, 1);
  assert.deepEqual(ES.last.users, users);
  assert.equal(ES.last.token, "tok-1");
  assert.equal(new URL(ES.last.url).pathname, "/v1/apps/demo/sse");
  assert.deepEqual(tk.reasons, ["initial"]);
  assert.equal(client.transport, "sse");
});

test("sse: the stream opening sets status open and the user from the token's sub", async (t) => {
  const { tick, ES, client } = sseClient(t, { token: jwtFor("alice") });
  const statuses = record(client, "status");
  client.watch("bob", () => {});
  await tick(0);
  ES.last.open();
  assert.equal(client.status, "open");
  assert.equal(client.user, "alice");
  assert.equal(statuses.at(-1).transport, "sse");
});

test("sse: snapshot, presence and resync events are applied with v ordering", async (t) => {
  const { tick, ES, client } = sseClient(t);
  /** @type {any[]} */
  const got = [];
  client.watch(["bob", "carol"], (s) => got.push([s.user, s.status, s.v, s.custom]));
  await tick(0);
  const es = ES.last;
  es.open();
  es.emit("snapshot", { presence: [st("bob", { status: "online", v: 4, custom: "Busy" }), st("carol", { v: 1 })] });
  es.emit("presence", st("bob", { status: "offline", v: 4 })); // same v: dropped
  es.emit("presence", st("bob", { status: "offline", v: 3 })); // older: dropped
  es.emit("presence", st("bob", { status: "offline", v: 5 }));
  es.emit("resync", { presence: [st("bob", { status: "online", v: 2 }), st("carol", { v: 1 })] });
  assert.deepEqual(got, [
    ["bob", "online", 4, "Busy"],
    ["carol", "offline", 1, null],
    ["bob", "offline", 5, null],
    ["bob", "online", 2, null],
  ]);
  assert.equal(client.state("bob")?.v, 2);
});

test("sse: a change of the watch set opens one new stream (debounced, fresh token) and closes the old once it opens", async (t) => {
  const { tick, ES, tk, client } = sseClient(t);
  client.watch("bob", () => {});
  await tick(0);
  const first = ES.last;
  first.open();
  first.emit("snapshot", { presence: [st("bob", { v: 1 })] });
  // 50 dots added over a few ticks, then one removed: a single new stream.
  for (let i = 0; i < 50; i++) {
    client.watch(`d${i}`, () => {});
    if (i % 10 === 0) await tick(0);
  }
  client.unwatch("d49");
  await tick(0);
  assert.equal(ES.instances.length, 1, "debounced");
  await tick(100);
  assert.equal(ES.instances.length, 2);
  const second = ES.last;
  assert.deepEqual(second.users, ["bob", ...Array.from({ length: 49 }, (_, i) => `d${i}`)]);
  assert.deepEqual(tk.reasons, ["initial", "reconnect"]);
  assert.equal(second.token, "tok-2");
  assert.equal(first.closed, false, "the old stream delivers until the new one is open");
  first.emit("presence", st("bob", { status: "online", v: 2 }));
  assert.equal(client.state("bob")?.v, 2);
  second.open();
  assert.equal(first.closed, true);
  assert.equal(client.status, "open");
  // The new stream's snapshot is the baseline again.
  second.emit("snapshot", { presence: [st("bob", { status: "online", v: 2 }), st("d0", { v: 0 })] });
  assert.equal(client.state("d0")?.v, 0);
  await tick(1000);
  assert.equal(ES.instances.length, 2, "no further stream without a change");
});

test("sse: watching users that are already in the stream opens no new stream", async (t) => {
  const { tick, ES, client } = sseClient(t);
  client.watch(["bob", "carol"], () => {});
  await tick(0);
  ES.last.open();
  const stop = client.watch("bob", () => {});
  client.watch("dave", () => {});
  client.unwatch("dave");
  stop();
  await tick(1000);
  assert.equal(ES.instances.length, 1);
});

test("sse: an error on an open stream closes it and reconnects with backoff and a fresh token", async (t) => {
  const { tick, ES, tk, client } = sseClient(t);
  client.watch("bob", () => {});
  await tick(0);
  const es = ES.last;
  es.open();
  es.fail();
  assert.equal(es.closed, true, "EventSource's own reconnect (same token) is stopped");
  assert.equal(client.status, "reconnecting");
  await tick(499);
  assert.equal(ES.instances.length, 2);
  assert.deepEqual(tk.reasons, ["initial", "reconnect"]);
  ES.last.open();
  ES.last.emit("snapshot", { presence: [st("bob", { v: 1 })] });
  assert.equal(client.state("bob")?.v, 1);
});

test("sse: three streams in a row that fail before opening ask for the token with reason rejected", async (t) => {
  const { tick, ES, tk, client } = sseClient(t);
  const errors = record(client, "error");
  client.watch("bob", () => {});
  await tick(0);
  for (let i = 0; i < 3; i++) {
    ES.last.fail(); // e.g. a 401 that EventSource cannot show
    await tick(30_000);
  }
  assert.deepEqual(tk.reasons, ["initial", "reconnect", "reconnect", "rejected"]);
  assert.deepEqual(
    errors.map((e) => [e.code, e.fatal]),
    [["sse_failed", false]],
  );
  ES.last.open();
  ES.last.fail();
  await tick(30_000);
  assert.equal(tk.reasons.at(-1), "reconnect", "an opened stream resets the count");
});

test("sse: at most max_watch users are requested, the rest reported once as limit", async (t) => {
  const { tick, ES, client } = sseClient(t);
  const errors = record(client, "error");
  const users = Array.from({ length: 1003 }, (_, i) => `u${i}`);
  client.watch(users, () => {});
  await tick(0);
  assert.equal(ES.last.users.length, 1000);
  assert.deepEqual(
    errors.map((e) => [e.code, e.users]),
    [["limit", ["u1000", "u1001", "u1002"]]],
  );
  ES.last.open();
  client.unwatch("u0");
  await tick(0);
  await tick(100);
  assert.deepEqual(ES.last.users, users.slice(1, 1001));
  assert.equal(errors.length, 1, "not reported again");
});

test("sse: unwatching everyone closes the stream without a new one", async (t) => {
  const { tick, ES, client } = sseClient(t);
  const stop = client.watch("bob", () => {});
  await tick(0);
  ES.last.open();
  stop();
  await tick(0);
  await tick(100);
  assert.equal(ES.last.closed, true);
  assert.equal(ES.instances.length, 1);
  client.watch("carol", () => {});
  await tick(0);
  await tick(100);
  assert.deepEqual(ES.last.users, ["carol"]);
});

test("auto: after two WebSocket attempts that never open, the client switches to SSE", async (t) => {
  const tick = useClock(t);
  const WS = fakeWebSocket();
  const ES = fakeEventSource();
  const tk = tokens();
  const client = new PresenceClient({ url: URL_WS, token: tk.fn, WebSocket: WS, EventSource: ES });
  t.after(() => client.close());
  client.watch("bob", () => {});
  await settle();
  assert.equal(client.transport, "websocket");
  WS.last.failToOpen();
  await tick(500);
  assert.equal(WS.instances.length, 2, "one failure: WebSocket again");
  assert.equal(ES.instances.length, 0);
  WS.last.failToOpen();
  await tick(1000);
  assert.equal(WS.instances.length, 2);
  assert.equal(ES.instances.length, 1);
  assert.equal(client.transport, "sse");
  assert.deepEqual(ES.last.users, ["bob"]);
  assert.equal(ES.last.token, "tok-3");
  ES.last.open();
  assert.equal(client.status, "open");
});

test("auto: a WebSocket that opened and then closed does not count toward the SSE fallback", async (t) => {
  const tick = useClock(t);
  const WS = fakeWebSocket();
  const ES = fakeEventSource();
  const client = new PresenceClient({ url: URL_WS, token: "tok", WebSocket: WS, EventSource: ES });
  t.after(() => client.close());
  client.connect();
  await settle();
  WS.last.failToOpen();
  await tick(500);
  WS.last.open();
  WS.last.serverClose(4001);
  await tick(2000);
  WS.last.failToOpen();
  await tick(4000);
  assert.equal(ES.instances.length, 0);
  assert.equal(WS.instances.length, 4);
});

test("auto: after an SSE stream that stayed up ends, the next reconnect tries WebSocket again", async (t) => {
  const tick = useClock(t);
  const WS = fakeWebSocket();
  const ES = fakeEventSource();
  const client = new PresenceClient({ url: URL_WS, token: "tok", WebSocket: WS, EventSource: ES });
  t.after(() => client.close());
  client.watch("bob", () => {});
  await settle();
  WS.last.failToOpen();
  await tick(500);
  WS.last.failToOpen();
  await tick(1000);
  ES.last.open();
  await tick(10_000); // resetAfterMs: the stream stayed up
  ES.last.fail();
  await tick(500);
  assert.equal(WS.instances.length, 3, "back to WebSocket");
  assert.equal(client.transport, "websocket");
  WS.last.accept();
  assert.equal(client.status, "open");
  assert.deepEqual(
    WS.last.sentOfType("watch").map((m) => m.users),
    [["bob"]],
  );
});

test("auto: when the WebSocket probe after SSE fails, the next attempt is SSE again", async (t) => {
  const tick = useClock(t);
  const WS = fakeWebSocket();
  const ES = fakeEventSource();
  const client = new PresenceClient({ url: URL_WS, token: "tok", WebSocket: WS, EventSource: ES });
  t.after(() => client.close());
  client.watch("bob", () => {});
  await settle();
  WS.last.failToOpen();
  await tick(500);
  WS.last.failToOpen();
  await tick(1000);
  ES.last.open();
  await tick(10_000);
  ES.last.fail();
  await tick(500);
  WS.last.failToOpen();
  await tick(1000);
  assert.equal(ES.instances.length, 2);
  assert.equal(WS.instances.length, 3);
});

test("auto: when the SSE stream fails to open too, the next attempt is WebSocket again", async (t) => {
  const tick = useClock(t);
  const WS = fakeWebSocket();
  const ES = fakeEventSource();
  const client = new PresenceClient({ url: URL_WS, token: "tok", WebSocket: WS, EventSource: ES });
  t.after(() => client.close());
  client.watch("bob", () => {});
  await settle();
  WS.last.failToOpen();
  await tick(500);
  WS.last.failToOpen();
  await tick(1000);
  ES.last.fail(); // the whole server is down, or has no SSE endpoint
  await tick(2000);
  assert.equal(WS.instances.length, 3);
  assert.equal(ES.instances.length, 1);
  WS.last.accept();
  assert.equal(client.status, "open");
  assert.equal(client.transport, "websocket");
});

test("websocket-only clients never open an EventSource", async (t) => {
  const tick = useClock(t);
  const WS = fakeWebSocket();
  const ES = fakeEventSource();
  const client = new PresenceClient({ url: URL_WS, token: "tok", transport: "websocket", WebSocket: WS, EventSource: ES });
  t.after(() => client.close());
  client.connect();
  await settle();
  for (let i = 0; i < 4; i++) {
    WS.last.failToOpen();
    await tick(30_000);
  }
  assert.equal(ES.instances.length, 0);
  assert.equal(WS.instances.length, 5);
});

test("an unknown transport option is refused", () => {
  assert.throws(
    () => new PresenceClient({ url: URL_WS, token: "t", transport: /** @type {any} */ ("polling") }),
    TypeError,
  );
});
