// PresenceClient over a fake WebSocket: hello, batching, chunking, v ordering, resync,
// reconnects with backoff and fresh tokens, close codes, server refusals, heartbeat.

import assert from "node:assert/strict";
import { test } from "node:test";

import { PresenceClient } from "../../gateway/web/presence.js";
import { fakeWebSocket, record, settle, st, tokens, useClock } from "./fakes.js";

const URL_WS = "wss://gw.test/v1/apps/demo/ws";

/** A client on a fake WebSocket, connected and welcomed, with `users` watched. */
async function connected(/** @type {import("node:test").TestContext} */ t, users = ["bob"], welcome = {}) {
  const tick = useClock(t);
  const WS = fakeWebSocket();
  const tk = tokens();
  const client = new PresenceClient({ url: URL_WS, token: tk.fn, transport: "websocket", WebSocket: WS });
  t.after(() => client.close());
  /** @type {Record<string, any[]>} */
  const seen = {};
  for (const u of users) client.watch(u, (s) => (seen[u] ??= []).push(s));
  client.connect();
  await settle();
  WS.last.accept(welcome);
  return { tick, WS, tk, client, seen, ws: WS.last };
}

test("the first frame is hello with the token from the token function", async (t) => {
  const { ws, tk } = await connected(t);
  assert.deepEqual(ws.sent[0], { type: "hello", token: "tok-1" });
  assert.deepEqual(tk.reasons, ["initial"]);
});

test("watch calls made in one tick before the welcome go out as one watch message after it", async (t) => {
  const { ws, tick } = await connected(t, ["bob", "carol", "dave"]);
  await tick(0);
  assert.deepEqual(
    ws.sentOfType("watch").map((m) => m.users),
    [["bob", "carol", "dave"]],
  );
});

test("watch calls made in one tick while open are batched into one watch message", async (t) => {
  const { ws, tick, client } = await connected(t, []);
  for (const u of ["x", "y", "z"]) client.watch(u, () => {});
  assert.equal(ws.sentOfType("watch").length, 0);
  await tick(0);
  assert.deepEqual(
    ws.sentOfType("watch").map((m) => m.users),
    [["x", "y", "z"]],
  );
});

test("a watch set too large for one frame is split into frames under 32 KiB each", async (t) => {
  const users = Array.from({ length: 3000 }, (_, i) => `user-${String(i).padStart(15, "0")}`);
  const { ws, tick, client } = await connected(t, [], { max_watch: 5000 });
  client.watch(users, () => {});
  await tick(0);
  const frames = ws.sentOfType("watch");
  assert.ok(frames.length >= 2, `expected several frames, got ${frames.length}`);
  for (const f of frames) assert.ok(JSON.stringify(f).length < 33 * 1024);
  assert.deepEqual(
    frames.flatMap((f) => f.users),
    users,
  );
  assert.equal(new Set(frames.map((f) => f.id)).size, frames.length);
});

test("a state whose v is not above the held one is ignored", async (t) => {
  const { ws, seen, client } = await connected(t);
  const id = ws.sentOfType("watch")[0].id;
  ws.receive({ type: "snapshot", id, presence: [st("bob", { status: "online", since: 1, v: 5 })] });
  ws.receive({ type: "presence", ...st("bob", { status: "offline", since: 2, v: 5 }) });
  ws.receive({ type: "presence", ...st("bob", { status: "offline", since: 2, v: 4 }) });
  ws.receive({ type: "presence", ...st("bob", { status: "offline", since: 3, v: 6 }) });
  assert.deepEqual(
    seen.bob.map((s) => s.v),
    [5, 6],
  );
  assert.equal(client.state("bob")?.status, "offline");
  assert.equal(client.state("bob")?.v, 6);
});

test("the snapshot on a new connection replaces the held state even with a lower v", async (t) => {
  const { ws, tick, WS, seen, client } = await connected(t);
  ws.receive({ type: "snapshot", id: ws.sentOfType("watch")[0].id, presence: [st("bob", { status: "online", v: 9 })] });
  ws.serverClose(1012, "restart");
  await tick(30_000);
  const ws2 = WS.last;
  assert.notEqual(ws2, ws);
  ws2.accept();
  const id = ws2.sentOfType("watch")[0].id;
  // A server that lost its state starts v again at 0.
  ws2.receive({ type: "snapshot", id, presence: [st("bob", { status: "offline", since: null, v: 0 })] });
  assert.deepEqual(
    seen.bob.map((s) => [s.status, s.v]),
    [
      ["online", 9],
      ["offline", 0],
    ],
  );
  assert.equal(client.state("bob")?.v, 0);
  // An identical snapshot after yet another reconnect is not delivered again.
  ws2.serverClose(1012);
  await tick(30_000);
  WS.last.accept();
  WS.last.receive({ type: "snapshot", id: 1, presence: [st("bob", { v: 0 })] });
  assert.equal(seen.bob.length, 2);
});

test("resync replaces held states whatever their v", async (t) => {
  const { ws, seen } = await connected(t, ["bob", "carol"]);
  const id = ws.sentOfType("watch")[0].id;
  ws.receive({ type: "snapshot", id, presence: [st("bob", { v: 7, status: "online" }), st("carol", { v: 2 })] });
  ws.receive({ type: "resync", presence: [st("bob", { v: 3 }), st("carol", { v: 2 })] });
  assert.deepEqual(
    seen.bob.map((s) => [s.status, s.v]),
    [
      ["online", 7],
      ["offline", 3],
    ],
  );
  assert.equal(seen.carol.length, 1, "an identical state is not delivered again");
});

test("states carry custom; an empty string reads as null", async (t) => {
  const { ws, seen } = await connected(t);
  const id = ws.sentOfType("watch")[0].id;
  ws.receive({ type: "snapshot", id, presence: [st("bob", { status: "online", custom: "In a meeting", v: 1 })] });
  ws.receive({ type: "presence", ...st("bob", { status: "online", custom: "", v: 2 }) });
  assert.deepEqual(
    seen.bob.map((s) => s.custom),
    ["In a meeting", null],
  );
  assert.ok(Object.isFrozen(seen.bob[0]));
});

test("after a drop it reconnects with full-jitter backoff and a fresh token, and re-watches everyone", async (t) => {
  const { ws, tick, WS, tk, client } = await connected(t, ["bob", "carol"]);
  client.watch("dave", () => {});
  await tick(0);
  const statuses = record(client, "status");
  ws.serverClose(1006);
  // Math.random() is 0.999: the delay is just under the cap, initialMs * 2^0 = 500.
  assert.equal(statuses.at(-1).status, "reconnecting");
  assert.equal(statuses.at(-1).delayMs, 499);
  await tick(498);
  assert.equal(WS.instances.length, 1);
  await tick(1);
  assert.equal(WS.instances.length, 2);
  assert.deepEqual(tk.reasons, ["initial", "reconnect"]);
  // This attempt never opens: the next cap doubles.
  WS.last.failToOpen();
  assert.equal(statuses.at(-1).delayMs, 999);
  await tick(999);
  assert.equal(WS.instances.length, 3);
  assert.deepEqual(WS.last.sent, [], "no frame before the socket opens");
  WS.last.accept();
  assert.deepEqual(WS.last.sent[0], { type: "hello", token: "tok-3" });
  assert.deepEqual(
    WS.last.sentOfType("watch").flatMap((m) => m.users),
    ["bob", "carol", "dave"],
  );
  assert.equal(client.status, "open");
});

test("a token function that throws is reported and retried with backoff", async (t) => {
  const tick = useClock(t);
  const WS = fakeWebSocket();
  let calls = 0;
  const client = new PresenceClient({
    url: URL_WS,
    transport: "websocket",
    WebSocket: WS,
    token: () => {
      calls += 1;
      if (calls === 1) throw new Error("offline");
      return "tok";
    },
  });
  t.after(() => client.close());
  const errors = record(client, "error");
  client.connect();
  await settle();
  assert.equal(errors[0].code, "token");
  assert.equal(errors[0].fatal, false);
  assert.equal(WS.instances.length, 0);
  await tick(500);
  assert.equal(WS.instances.length, 1);
});

test("close 4001 asks the token function again with reason rejected", async (t) => {
  const { ws, tick, tk, client } = await connected(t);
  const errors = record(client, "error");
  ws.serverClose(4001, "token expired");
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, "unauthorized");
  assert.equal(errors[0].closeCode, 4001);
  assert.equal(errors[0].fatal, false);
  await tick(500);
  assert.deepEqual(tk.reasons, ["initial", "rejected"]);
});

for (const [code, name] of /** @type {const} */ ([
  [4003, "origin_not_allowed"],
  [4009, "too_large_or_too_many"],
])) {
  test(`close ${code} is fatal: status closed, a fatal ${name} error, no reconnect`, async (t) => {
    const { ws, tick, WS, client } = await connected(t);
    const errors = record(client, "error");
    ws.serverClose(code);
    assert.equal(client.status, "closed");
    assert.deepEqual(
      errors.map((e) => [e.code, e.fatal, e.closeCode]),
      [[name, true, code]],
    );
    await tick(120_000);
    assert.equal(WS.instances.length, 1);
  });
}

for (const code of [1012, 4008]) {
  test(`close ${code} reconnects with reason reconnect and no error event`, async (t) => {
    const { ws, tick, WS, tk, client } = await connected(t);
    const errors = record(client, "error");
    ws.serverClose(code);
    assert.equal(client.status, "reconnecting");
    await tick(500);
    assert.equal(WS.instances.length, 2);
    assert.deepEqual(tk.reasons, ["initial", "reconnect"]);
    assert.deepEqual(errors, []);
  });
}

test("a connection that stayed up resets the backoff", async (t) => {
  const { ws, tick, WS, client } = await connected(t);
  ws.serverClose(1006);
  await tick(500);
  WS.last.failToOpen();
  await tick(1000);
  WS.last.accept();
  await tick(10_000); // resetAfterMs
  const statuses = record(client, "status");
  WS.last.receive({ type: "pong", id: 1 });
  WS.last.serverClose(1012);
  assert.equal(statuses.at(-1).delayMs, 499, "back to the first step");
});

test("an unavailable refusal is reported and the same users are asked for again later", async (t) => {
  const { ws, tick, client } = await connected(t, ["bob", "carol"]);
  const errors = record(client, "error");
  const first = ws.sentOfType("watch")[0];
  ws.receive({ type: "error", id: first.id, code: "unavailable", message: "store down" });
  assert.deepEqual(errors[0].users, ["bob", "carol"]);
  assert.equal(errors[0].fatal, false);
  await tick(499);
  await tick(1);
  const again = ws.sentOfType("watch");
  assert.equal(again.length, 2);
  assert.deepEqual(again[1].users, ["bob", "carol"]);
});

test("a forbidden user is not asked for again on the same connection, but is after a reconnect", async (t) => {
  const { ws, tick, WS, client } = await connected(t);
  const errors = record(client, "error");
  ws.receive({ type: "error", id: ws.sentOfType("watch")[0].id, code: "forbidden", message: "policy" });
  assert.deepEqual(
    errors.map((e) => [e.code, e.users]),
    [["forbidden", ["bob"]]],
  );
  client.watch("carol", () => {});
  await tick(0);
  assert.deepEqual(
    ws.sentOfType("watch").map((m) => m.users),
    [["bob"], ["carol"]],
  );
  ws.serverClose(1012);
  await tick(500);
  WS.last.accept();
  assert.deepEqual(
    WS.last.sentOfType("watch").map((m) => m.users),
    [["bob", "carol"]],
  );
});

test("users beyond max_watch are not sent and are reported once as limit", async (t) => {
  const { ws, tick, client } = await connected(t, ["a", "b", "c"], { max_watch: 2 });
  assert.equal(client.maxWatch, 2);
  const errors = record(client, "error");
  await tick(0);
  client.watch("d", () => {});
  await tick(0);
  assert.deepEqual(
    ws.sentOfType("watch").map((m) => m.users),
    [["a", "b"]],
  );
  // "c" was reported at the welcome's flush (before the recorder); only "d" is new here.
  assert.deepEqual(
    errors.map((e) => [e.code, e.users]),
    [["limit", ["d"]]],
  );
});

test("the last unsubscribe of a user sends unwatch; other subscribers keep it watched", async (t) => {
  const { ws, tick, client } = await connected(t, []);
  const stop1 = client.watch("bob", () => {});
  const stop2 = client.watch("bob", () => {});
  await tick(0);
  stop1();
  await tick(0);
  assert.equal(ws.sentOfType("unwatch").length, 0);
  stop2();
  stop2(); // idempotent
  await tick(0);
  assert.deepEqual(
    ws.sentOfType("unwatch").map((m) => m.users),
    [["bob"]],
  );
  assert.deepEqual(client.watching, []);
});

test("unwatch then watch of a user in the same tick sends nothing and delivers the held state", async (t) => {
  const { ws, tick, client } = await connected(t);
  ws.receive({ type: "snapshot", id: ws.sentOfType("watch")[0].id, presence: [st("bob", { status: "online", v: 3 })] });
  client.unwatch("bob");
  /** @type {any[]} */
  const got = [];
  client.watch("bob", (s) => got.push(s));
  await tick(0);
  assert.equal(ws.sentOfType("unwatch").length, 0);
  assert.equal(ws.sentOfType("watch").length, 1);
  assert.deepEqual(
    got.map((s) => s.v),
    [3],
  );
});

test("a ping without any answer within one heartbeat closes the socket and reconnects", async (t) => {
  const { ws, tick, WS, client } = await connected(t, ["bob"], { heartbeat_ms: 1000 });
  await tick(1000);
  assert.equal(ws.sentOfType("ping").length, 1);
  ws.receive({ type: "pong", id: ws.sentOfType("ping")[0].id });
  await tick(1000);
  assert.equal(ws.sentOfType("ping").length, 2, "an answered ping keeps the connection");
  assert.equal(ws.closedWith, null);
  await tick(1000);
  assert.equal(ws.closedWith?.code, 4000);
  assert.equal(client.status, "reconnecting");
  await tick(500);
  assert.equal(WS.instances.length, 2);
});

test("a socket that opens but gets no welcome in 15 s is closed and retried", async (t) => {
  const tick = useClock(t);
  const WS = fakeWebSocket();
  const client = new PresenceClient({ url: URL_WS, token: "tok", transport: "websocket", WebSocket: WS });
  t.after(() => client.close());
  client.connect();
  await settle();
  WS.last.open();
  await tick(15_000);
  assert.equal(WS.last.closedWith?.code, 4000);
  await tick(500);
  assert.equal(WS.instances.length, 2);
});

test("close() closes the socket with 1000 and stops reconnecting", async (t) => {
  const { ws, tick, WS, client } = await connected(t);
  client.close();
  assert.equal(client.status, "closed");
  assert.equal(ws.closedWith?.code, 1000);
  await tick(60_000);
  assert.equal(WS.instances.length, 1);
});

test("close 4009 before the welcome (too many connections) retries at the longest backoff", async (t) => {
  const tick = useClock(t);
  const WS = fakeWebSocket();
  const tk = tokens();
  const client = new PresenceClient({ url: URL_WS, token: tk.fn, transport: "websocket", WebSocket: WS });
  t.after(() => client.close());
  const errors = record(client, "error");
  client.watch("bob", () => {});
  client.connect();
  await settle();
  WS.last.open();
  await settle();
  WS.last.serverClose(4009, "too many connections for this user");
  assert.equal(client.status, "reconnecting");
  assert.deepEqual(
    errors.map((e) => [e.code, e.fatal, e.closeCode]),
    [["too_many_connections", false, 4009]],
  );
  await tick(31_000);
  assert.equal(WS.instances.length, 2);
});
