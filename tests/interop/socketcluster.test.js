// The official SocketCluster client (npm socketcluster-client 20.x) against corelay, unchanged:
// the handshake, invoke and transmit, channels shared with socket.io clients, JWT, middleware
// refusals, reconnection with resubscription after a restart, and 500 clients in 50
// channels. The server is the socketcluster_app example (its procedures and middleware are
// described there); the restart test runs `corelay serve`.
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const scClient = require('socketcluster-client');
const { io } = require('socket.io-client');
const { startScApp, startCorelay, freePort, within, connected, ack, withoutOffset } = require('./lib');

const SECRET = 'socketcluster-interop-secret';
let app;
const sockets = [];

before(async () => {
  app = await startScApp({ env: { CORELAY_AUTH_JWT_SECRET: SECRET } });
});

after(async () => {
  for (const s of sockets) s.disconnect();
  if (app) await app.stop();
});

/** A SocketCluster client of `port`, not reconnecting unless told. */
function client(port, options = {}) {
  const socket = scClient.create({
    hostname: '127.0.0.1',
    port,
    autoReconnect: false,
    ackTimeout: 5000,
    ...options,
  });
  sockets.push(socket);
  return socket;
}

/** The next `name` event of an SC emitter (socket or channel), within `ms`. */
function next(emitter, name, ms = 5000) {
  return within(ms, `${name} event`, emitter.listener(name).once());
}

/** A consumer of `stream` created now, so that nothing written from now on is missed. */
function consume(stream) {
  const consumer = stream.createConsumer();
  return {
    next: (what, ms = 5000) => within(ms, what, consumer.next().then((r) => r.value)),
    stop: () => consumer.return(),
  };
}

/** Resolves once `socket` is connected; with the handshake's status when it was awaited. */
async function opened(socket) {
  if (socket.state === socket.OPEN) return null;
  return next(socket, 'connect');
}

/** Subscribes `socket` to `name` and waits until the server has answered. */
async function subscribed(socket, name) {
  const channel = socket.subscribe(name);
  if (!channel.isSubscribed()) await next(channel, 'subscribe');
  return channel;
}

/** An HS256 JWT of `claims` signed with `secret`. */
function mint(claims, secret = SECRET) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const body = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`;
  const sig = crypto.createHmac('sha256', secret).update(body).digest('base64url');
  return `${body}.${sig}`;
}

const inAnHour = () => Math.floor(Date.now() / 1000) + 3600;

test('connects, and invoke answers with a result and with an error', async () => {
  const s = client(app.port);
  const status = await opened(s);
  assert.equal(status.isAuthenticated, false);
  assert.equal(typeof status.pingTimeout, 'number');
  assert.equal(typeof s.id, 'string');

  assert.deepEqual(await s.invoke('echo', { a: [1, 'b'], n: null }), { a: [1, 'b'], n: null });
  await assert.rejects(s.invoke('fail', {}), (e) => {
    assert.equal(e.name, 'MyAppError');
    assert.match(e.message, /always fails/);
    return true;
  });
  await assert.rejects(s.invoke('no-such-procedure'), { name: 'InvalidActionError' });
  const whoami = await s.invoke('whoami');
  assert.deepEqual(whoami, { id: s.id, player: s.id, authenticated: false });

  // transmit both ways: the server's `told` answers our `tell-me`.
  const told = consume(s.receiver('told'));
  await s.transmit('tell-me', { x: 1 });
  assert.deepEqual(await told.next('told'), { x: 1 });
});

test('a channel is a room: socket.io members and SocketCluster subscribers meet', async () => {
  const s = client(app.port);
  await opened(s);
  const channel = await subscribed(s, 'arena-42');
  const data = consume(channel);

  const sio = io(app.url, { transports: ['websocket'], forceNew: true, reconnection: false });
  sockets.push(sio);
  await connected(sio);
  const joined = await ack(sio, 3000, 'join', 'arena-42');
  assert.equal(joined.members, 2);

  // socket.io to the channel: `publish` is the channel's message, any other event is
  // wrapped, and a Buffer arrives as the codec's base64 object.
  await ack(sio, 3000, 'to', 'arena-42', 'publish', { hp: 3 });
  assert.deepEqual(await data.next('publish from socket.io'), { hp: 3 });
  await ack(sio, 3000, 'to', 'arena-42', 'move', { x: 1 });
  assert.deepEqual(await data.next('move from socket.io'), {
    event: 'move',
    data: { x: 1 },
    from: sio.id,
  });
  await ack(sio, 3000, 'to', 'arena-42', 'publish', Buffer.from([1, 2, 3]));
  assert.deepEqual(await data.next('binary from socket.io'), { base64: true, data: 'AQID' });

  // SocketCluster to the room: the event `publish` with (data, from) at socket.io, Buffers
  // as Buffers; the publisher, a subscriber, gets its own message as SocketCluster does.
  const heard = new Promise((resolve) => sio.once('publish', (...args) => resolve(args)));
  await s.invokePublish('arena-42', { hi: 'there' });
  assert.deepEqual(withoutOffset(await within(3000, 'publish at socket.io', heard)), [
    { hi: 'there' },
    s.id,
  ]);
  assert.deepEqual(await data.next('own publish'), { hi: 'there' });
  const heardBinary = new Promise((resolve) => sio.once('publish', (...args) => resolve(args)));
  await s.invokePublish('arena-42', Buffer.from([9, 8, 7]));
  const [buffer, from] = withoutOffset(await within(3000, 'binary at socket.io', heardBinary));
  assert.ok(Buffer.isBuffer(buffer), 'a Buffer');
  assert.deepEqual([...buffer], [9, 8, 7]);
  assert.equal(from, s.id);
  assert.deepEqual(await data.next('own binary'), { base64: true, data: 'CQgH' });

  // The server's exchange reaches both.
  const announced = new Promise((resolve) => sio.once('publish', (...args) => resolve(args)));
  await s.invoke('announce', { channel: 'arena-42', data: { news: 1 } });
  assert.deepEqual(await data.next('exchange publish'), { news: 1 });
  assert.deepEqual(withoutOffset(await within(3000, 'exchange at socket.io', announced)), [
    { news: 1 },
  ]);

  // Kicked out by server code: the client's `kickOut`, and the channel is unsubscribed.
  await subscribed(s, 'kick-zone');
  const kicked = next(s, 'kickOut');
  await s.invoke('kick-me', { channel: 'kick-zone' });
  assert.deepEqual(await kicked, { channel: 'kick-zone', message: 'you asked for it' });
  assert.equal(s.isSubscribed('kick-zone', true), false);

  // Unsubscribed: the room sees it leave.
  const left = new Promise((resolve) => sio.once('member_left', (...args) => resolve(args)));
  s.unsubscribe('arena-42');
  const [notice] = withoutOffset(await within(3000, 'member_left', left));
  assert.equal(notice.player, s.id);
  assert.equal(notice.reason, 'left');
  assert.equal(notice.members, 1);
  data.stop();
  sio.disconnect();
});

test('JWT: #authenticate with a valid token, a refusal, and a token the server issues', async () => {
  const s = client(app.port);
  await opened(s);

  const changed = next(s, 'authStateChange');
  const status = await s.authenticate(mint({ sub: 'alice', exp: inAnHour() }));
  assert.equal(status.isAuthenticated, true);
  assert.equal((await changed).newAuthState, 'authenticated');
  assert.equal(s.authState, 'authenticated');
  assert.equal((await s.invoke('whoami')).player, 'alice');

  // A bad signature: refused, and the client is anonymous again.
  const dropped = next(s, 'authStateChange');
  await assert.rejects(s.authenticate(mint({ sub: 'mallory', exp: inAnHour() }, 'wrong')), {
    name: 'AuthTokenInvalidError',
  });
  assert.equal((await dropped).newAuthState, 'unauthenticated');
  assert.equal((await s.invoke('whoami')).authenticated, false);

  // The server issues a token (#setAuthToken): the client holds it, and brings it back on
  // its next handshake.
  const issued = next(s, 'authStateChange');
  assert.deepEqual(await s.invoke('login', { username: 'bob' }), { ok: true });
  assert.equal((await issued).newAuthState, 'authenticated');
  assert.equal(s.authToken.sub, 'bob');
  s.disconnect();
  s.connect();
  const again = await opened(s);
  assert.equal(again.isAuthenticated, true, 'the stored token authenticates the handshake');
  assert.equal((await s.invoke('whoami')).player, 'bob');

  // deauthenticate (#removeAuthToken): anonymous on the server too.
  await s.deauthenticate();
  assert.equal((await s.invoke('whoami')).authenticated, false);
});

test('middleware refusals reach the client as errors', async () => {
  const s = client(app.port);
  await opened(s);
  await assert.rejects(s.invoke('secret-plans'), (e) => {
    assert.equal(e.name, 'ForbiddenError');
    assert.match(e.message, /secrets are for admins/);
    return true;
  });
  const failed = next(s, 'subscribeFail');
  s.subscribe('private-club');
  const { error, channel } = await failed;
  assert.equal(channel, 'private-club');
  assert.equal(error.name, 'ForbiddenError');
  assert.match(error.message, /invitation/);
  await assert.rejects(s.invokePublish('readonly-news', 'hi'), (e) => {
    assert.equal(e.name, 'ForbiddenError');
    assert.match(e.message, /read-only/);
    return true;
  });
  // The connection goes on.
  assert.equal(await s.invoke('echo', 7), 7);
});

test('reconnects after a server restart and resubscribes by itself', async () => {
  const port = await freePort();
  let server = await startCorelay({ port });
  try {
    const s = client(port, {
      autoReconnect: true,
      autoReconnectOptions: { initialDelay: 100, randomness: 100, multiplier: 1, maxDelay: 500 },
    });
    await opened(s);
    const channel = await subscribed(s, 'survivor');
    const data = consume(channel);

    const gone = next(s, 'disconnect');
    const { code } = await server.stop('SIGTERM');
    assert.equal(code, 0);
    await gone;
    const back = next(s, 'connect', 10000);
    const resubscribed = next(channel, 'subscribe', 10000);
    server = await startCorelay({ port });
    await back;
    await resubscribed;

    const sio = io(server.url, { transports: ['websocket'], forceNew: true, reconnection: false });
    sockets.push(sio);
    await connected(sio);
    await ack(sio, 3000, 'join', 'survivor');
    await ack(sio, 3000, 'to', 'survivor', 'publish', 'back again');
    assert.equal(await data.next('message after the restart'), 'back again');
    s.disconnect();
    sio.disconnect();
  } finally {
    await server.stop();
  }
});

test('500 clients in 50 channels: every message delivered exactly once', async () => {
  const CLIENTS = 500;
  const CHANNELS = 50;
  const clients = [];
  for (let i = 0; i < CLIENTS; i++) clients.push(client(app.port, { connectTimeout: 20000 }));
  await within(30000, 'every connect', Promise.all(clients.map(opened)));
  // Per receiver: how many times each sender's message arrived.
  const seen = clients.map(() => new Map());
  const channels = await within(
    30000,
    'every subscription',
    Promise.all(clients.map((s, i) => subscribed(s, `load-${i % CHANNELS}`))),
  );
  const consumers = channels.map((channel, i) =>
    (async () => {
      for await (const message of channel) {
        seen[i].set(message.from, (seen[i].get(message.from) || 0) + 1);
      }
    })(),
  );
  // Every client publishes once to its channel; each of its channel's 10 subscribers, the
  // publisher among them, must get it once.
  await within(
    30000,
    'every publish answered',
    Promise.all(clients.map((s, i) => s.invokePublish(`load-${i % CHANNELS}`, { from: i }))),
  );
  const perChannel = CLIENTS / CHANNELS;
  const complete = () => seen.every((m) => [...m.values()].reduce((a, b) => a + b, 0) >= perChannel);
  const deadline = Date.now() + 30000;
  while (!complete()) {
    assert.ok(Date.now() < deadline, 'every message delivered within 30 s');
    await new Promise((r) => setTimeout(r, 50));
  }
  // A moment more for duplicates to show, then exactly once each, from its channel's members.
  await new Promise((r) => setTimeout(r, 300));
  seen.forEach((m, i) => {
    const expected = [];
    for (let j = i % CHANNELS; j < CLIENTS; j += CHANNELS) expected.push(j);
    assert.deepEqual(
      [...m.keys()].sort((a, b) => a - b),
      expected,
      `client ${i} heard its channel's members`,
    );
    assert.ok([...m.values()].every((n) => n === 1), `client ${i} heard each once`);
  });
  for (const s of clients) s.disconnect();
  await Promise.race([Promise.all(consumers), new Promise((r) => setTimeout(r, 100))]);
});
