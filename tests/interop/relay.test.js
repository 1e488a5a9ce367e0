// The relay convention of `corelay serve` through the official socket.io client: payload
// types (JSON and Buffer) through `to`, member events, several rooms.
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { io } = require('socket.io-client');
const { useCorelay, connected, ack, once, until } = require('./lib');

const ctx = useCorelay();
const sockets = ctx.sockets;

async function pair(room, transportsA, transportsB) {
  const a = io(ctx.server.url, { transports: transportsA, reconnection: false, forceNew: true });
  const b = io(ctx.server.url, { transports: transportsB, reconnection: false, forceNew: true });
  sockets.push(a, b);
  await Promise.all([connected(a), connected(b)]);
  await ack(a, 3000, 'join', room);
  const joined = once(a, 'member_joined');
  await ack(b, 3000, 'join', room);
  await joined;
  return [a, b];
}

for (const [ta, tb] of [
  [['websocket'], ['websocket']],
  [['polling'], ['websocket']],
  [['websocket'], ['polling']],
]) {
  const label = `${ta[0]} -> ${tb[0]}`;

  test(`[${label}] Buffer payloads through "to" arrive as Buffers`, async () => {
    const [a, b] = await pair(`bin ${label}`, ta, tb);
    const payloads = [
      Buffer.from([0, 1, 2, 254, 255]),
      Buffer.alloc(0),
      Buffer.alloc(64 * 1024, 0xab),
      Buffer.from('{"looks":"like json"}'),
    ];
    const got = [];
    b.on('bin', (payload, from) => got.push([payload, from]));
    for (const p of payloads) a.emit('to', `bin ${label}`, 'bin', p);
    await until(b, 'bin', () => got.length >= payloads.length, 5000, 'all binary payloads');
    for (const [i, [payload, from]] of got.entries()) {
      assert.ok(Buffer.isBuffer(payload), `payload ${i} is a Buffer`);
      assert.ok(payload.equals(payloads[i]), `payload ${i} intact (${payload.length} bytes)`);
      assert.equal(from, a.id);
    }
    // And back the other way, with an ack.
    const back = once(a, 'bin-back');
    assert.deepEqual(await ack(b, 3000, 'to', `bin ${label}`, 'bin-back', Buffer.from('pong')), {
      room: `bin ${label}`,
    });
    const [payload, from] = await back;
    assert.ok(Buffer.isBuffer(payload));
    assert.equal(payload.toString(), 'pong');
    assert.equal(from, b.id);
  });

  test(`[${label}] JSON payloads through "to" arrive as the same JSON`, async () => {
    const [a, b] = await pair(`json ${label}`, ta, tb);
    const payloads = [
      { a: 1, nested: { list: [1, 'two', null, true], s: 'é ✓ "q"' } },
      'a string',
      42,
      -1.5,
      true,
      null,
      [1, [2, [3]]],
      {},
    ];
    const got = [];
    b.on('json', (payload, from) => got.push([payload, from]));
    for (const p of payloads) a.emit('to', `json ${label}`, 'json', p);
    await until(b, 'json', () => got.length >= payloads.length, 5000, 'all JSON payloads');
    assert.deepEqual(
      got.map(([p]) => p),
      payloads,
    );
    assert.ok(got.every(([, from]) => from === a.id));
  });
}

test(
  'a JSON payload with a Buffer inside through "to"',
  async () => {
    const [a, b] = await pair('nested-bin', ['websocket'], ['websocket']);
    const got = once(b, 'nested');
    a.emit('to', 'nested-bin', 'nested', { data: Buffer.from([7, 8]) });
    const [payload, from] = await got;
    assert.equal(from, a.id);
    assert.ok(Buffer.isBuffer(payload.data), JSON.stringify(payload));
    assert.deepEqual([...payload.data], [7, 8]);
  },
);

test('member_joined and member_left, also on disconnect; several rooms at once', async () => {
  const [a, b] = await pair('presence-1', ['websocket'], ['websocket']);
  await ack(a, 3000, 'join', 'presence-2');
  const joined2 = once(a, 'member_joined');
  assert.deepEqual(await ack(b, 3000, 'join', 'presence-2'), {
    room: 'presence-2',
    members: 2,
    host: a.id,
  });
  assert.deepEqual((await joined2)[0], { room: 'presence-2', player: b.id, members: 2 });

  // A message to one room reaches b once, tagged by event name only (rooms are separate).
  const got = [];
  b.on('where', (p) => got.push(p));
  a.emit('to', 'presence-1', 'where', 1);
  a.emit('to', 'presence-2', 'where', 2);
  await until(b, 'where', () => got.length >= 2, 3000, 'both room messages');
  // Each room orders its own messages at its home shard (docs/SESSIONS.md), so two rooms
  // homed on different shards may deliver one sender's messages in either order.
  assert.deepEqual(got.sort(), [1, 2]);

  const left = [];
  a.on('member_left', (info) => left.push(info));
  const bId = b.id;
  b.disconnect();
  await until(a, 'member_left', () => left.length >= 2, 3000, 'member_left in both rooms');
  assert.deepEqual(left.map((l) => l.room).sort(), ['presence-1', 'presence-2']);
  for (const l of left) {
    assert.equal(l.player, bId);
    assert.equal(l.members, 1);
    assert.equal(typeof l.reason, 'string');
  }
});
