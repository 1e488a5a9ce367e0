// Rate limits (`[rate_limits.socketio]`, set here through CORELAY_RATE_LIMITS_SOCKETIO_*)
// as the official socket.io client sees them: a `to` past the limit is acked with
// `{ error: "rate_limited" }` and not relayed; a client that keeps exceeding it gets a
// server-side disconnect while the room goes on.
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { io } = require('socket.io-client');
const { useCorelay, connected, ack, once } = require('./lib');

const ctx = useCorelay({
  shards: 1,
  env: {
    // Three events at once (the join is one), then one a second.
    CORELAY_RATE_LIMITS_SOCKETIO_MESSAGES_PER_S: '1',
    CORELAY_RATE_LIMITS_SOCKETIO_MESSAGES_BURST: '3',
    CORELAY_RATE_LIMITS_SUSTAINED_MS: '500',
  },
});
const sockets = ctx.sockets;

function client(transports = ['websocket']) {
  const s = io(ctx.server.url, { transports, reconnection: false, forceNew: true });
  sockets.push(s);
  return s;
}

for (const transport of ['websocket', 'polling']) {
  test(`[${transport}] "to" past the limit is acked with rate_limited and not relayed`, async () => {
    const room = `rl-${transport}`;
    const [a, b] = [client([transport]), client()];
    await Promise.all([connected(a), connected(b)]);
    await ack(b, 3000, 'join', room);
    // b spends one of its three on the join above; a spends one on its own join.
    await ack(a, 3000, 'join', room);
    const got = [];
    b.on('move', (n) => got.push(n));
    assert.deepEqual(await ack(a, 3000, 'to', room, 'move', 1), { room });
    assert.deepEqual(await ack(a, 3000, 'to', room, 'move', 2), { room });
    assert.deepEqual(await ack(a, 3000, 'to', room, 'move', 3), { error: 'rate_limited' });
    // Without an ack the refusal comes as an `error` event.
    const error = once(a, 'error');
    a.emit('to', room, 'move', 4);
    assert.deepEqual((await error)[0], { error: 'rate_limited', event: 'to' });
    // b, with a token left, marks the end: a's refused events never came before it.
    const marker = once(a, 'move');
    await ack(b, 3000, 'to', room, 'move', 'marker');
    await marker;
    assert.deepEqual(got, [1, 2]);
    assert.ok(a.connected, 'a refused client stays connected');
  });
}

for (const transport of ['websocket', 'polling']) {
test(`[${transport}] a client that keeps exceeding its limit is disconnected by the server and does not reconnect; the room goes on`, async () => {
  const room = `rl-abuse-${transport}`;
  const [abuser, sender, receiver] = [client([transport]), client(), client()];
  await Promise.all([connected(abuser), connected(sender), connected(receiver)]);
  await ack(receiver, 3000, 'join', room);
  await ack(sender, 3000, 'join', room);
  await ack(abuser, 3000, 'join', room);
  const gone = once(abuser, 'disconnect', 5000);
  // Fifty a second against one, for as long as it takes (about sustained_ms).
  const flood = setInterval(() => abuser.emit('to', room, 'spam', 0), 20);
  try {
    const [reason] = await gone;
    assert.equal(reason, 'io server disconnect');
  } finally {
    clearInterval(flood);
  }
  assert.equal(abuser.connected, false);
  const tick = once(receiver, 'tick');
  sender.emit('to', room, 'tick', 'after');
  assert.equal((await tick)[0], 'after');
});
}
