// The bench's Node peer: socket.io with @socket.io/redis-adapter, the way a team would build the
// presence gateway with it. `node server.js --port PORT --redis redis://127.0.0.1:6379/0`
//
// - Socket.IO on /socket.io/: `watch` (a list of user ids) joins one room per user and acks the
//   count; each change is emitted as `presence` to the user's room (the adapter also publishes
//   it on Redis for other nodes).
// - Plain node:http routes: POST /v1/apps/{app}/webhooks/{tencent|rongcloud} (Tencent single
//   events, RongCloud batches; signatures not checked) HSETs each state (one pipeline per
//   request) and emits it; GET /readyz; GET /metrics (GC pauses, from perf_hooks).
'use strict';

const http = require('node:http');
const { PerformanceObserver } = require('node:perf_hooks');
const { Server } = require('socket.io');
const { createAdapter } = require('@socket.io/redis-adapter');
const Redis = require('ioredis');

function arg(name) {
  const i = process.argv.indexOf(name);
  if (i < 0 || i + 1 >= process.argv.length) throw new Error(`missing ${name}`);
  return process.argv[i + 1];
}

const port = Number(arg('--port'));
const url = arg('--redis');
const store = new Redis(url);
const pub = new Redis(url);
const sub = pub.duplicate();

const gc = { max: 0, total: 0, count: 0 };
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) {
    gc.max = Math.max(gc.max, entry.duration);
    gc.total += entry.duration;
    gc.count += 1;
  }
}).observe({ entryTypes: ['gc'] });

const ACKS = {
  tencent: '{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}',
  rongcloud: '{"code":200}',
};

// Each provider event becomes {user, status, since, v}, v being the provider's event time.
function parse(provider, body) {
  const data = JSON.parse(body);
  if (provider === 'tencent') {
    const t = data.EventTime;
    const status = data.Info.Action === 'Login' ? 'online' : 'offline';
    return [{ user: data.Info.To_Account, status, since: t, v: t }];
  }
  if (provider === 'rongcloud') {
    const events = Array.isArray(data) ? data : [data];
    return events.map((e) => ({
      user: e.userid,
      status: e.status === '0' ? 'online' : 'offline',
      since: e.time,
      v: e.time,
    }));
  }
  throw new Error(`unknown provider ${provider}`);
}

function reply(res, status, body, type = 'application/json') {
  res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

function metrics() {
  return (
    `bench_gc_pause_max_seconds ${gc.max / 1000}\n` +
    `bench_gc_pause_seconds_total ${gc.total / 1000}\n` +
    `bench_gc_collections ${gc.count}\n`
  );
}

const WEBHOOK = /^\/v1\/apps\/[^/]+\/webhooks\/([a-z]+)$/;

const server = http.createServer((req, res) => {
  const path = req.url.split('?', 1)[0];
  if (req.method === 'GET' && path === '/readyz') return reply(res, 200, 'ok', 'text/plain');
  if (req.method === 'GET' && path === '/metrics') return reply(res, 200, metrics(), 'text/plain');
  const match = WEBHOOK.exec(path);
  if (req.method !== 'POST' || !match || !ACKS[match[1]]) {
    return reply(res, 404, 'not found', 'text/plain');
  }
  const provider = match[1];
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', async () => {
    let states;
    try {
      states = parse(provider, Buffer.concat(chunks).toString());
    } catch (err) {
      return reply(res, 400, 'bad request', 'text/plain');
    }
    try {
      const pipe = store.pipeline();
      for (const s of states) pipe.hset(`presence:${s.user}`, 'status', s.status, 'since', s.since);
      await pipe.exec();
    } catch (err) {
      return reply(res, 503, 'unavailable', 'text/plain');
    }
    for (const s of states) io.to(s.user).emit('presence', s);
    return reply(res, 200, ACKS[provider]);
  });
});

const io = new Server(server, { serveClient: false, cors: { origin: '*' } });
io.adapter(createAdapter(pub, sub));
io.on('connection', (socket) => {
  socket.on('watch', (users, ack) => {
    socket.join(users);
    if (typeof ack === 'function') ack(users.length);
  });
});

server.listen(port, '127.0.0.1');

function shutdown() {
  io.close();
  for (const client of [store, pub, sub]) client.disconnect();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
