// Rooms across nodes (docs/SCALING.md) through the official socket.io client: two
// `corelay serve` processes on one `redis-server`, clients of the same room on both. What a
// member sends reaches the other node's members once and in order, Buffers intact, and
// member_joined / member_left cross nodes with the room's count across them, whatever
// transport each client uses.
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { io } = require('socket.io-client');
const {
  startCorelay,
  startRedis,
  numsub,
  connected,
  ack,
  once,
  until,
  withoutOffset,
} = require('./lib');

let redis = null;
const nodes = {};
const sockets = [];

before(async () => {
  redis = await startRedis();
  const node = (id) =>
    startCorelay({
      env: { CORELAY_CLUSTER_REDIS: redis.url, CORELAY_CLUSTER_NODE_ID: `interop-${id}` },
    });
  // One after the other, so that the after-hook stops whichever started if the other fails.
  nodes.a = await node('a');
  nodes.b = await node('b');
});

after(async () => {
  for (const s of sockets) s.disconnect();
  // Every process stopped by its PID, even when another one failed to stop cleanly.
  const codes = {};
  for (const [id, n] of Object.entries(nodes)) codes[id] = (await n.stop()).code;
  if (redis) await redis.stop();
  for (const [id, code] of Object.entries(codes)) {
    assert.equal(code, 0, `node ${id} exits 0 on SIGTERM`);
  }
});

/** A connected official client of node `at` ('a' or 'b') over `transports`. */
async function client(at, transports = ['websocket']) {
  const s = io(nodes[at].url, { transports, reconnection: false, forceNew: true });
  sockets.push(s);
  await connected(s);
  return s;
}

/**
 * Resolves once `n` nodes follow `room` in Redis. A node hears a room's messages only once
 * its SUBSCRIBE is confirmed, which a join's ack does not wait for; a test that sent before
 * it would lose messages by design, not by a bug.
 */
async function followedBy(room, n, ms = 5000) {
  const channel = `corelay:room:{${room}}`;
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await numsub(redis.port, channel);
    if (last === n) return;
    if (Date.now() > deadline) {
      throw new Error(`${channel} has ${last} subscribers after ${ms} ms, not ${n}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * `first` (on node A) joins `room`, node A follows it, then `second` (on node B) joins:
 * `first` is told of `second` with both counted. Only that direction is certain: the
 * second node learns of the first's members from a snapshot that may come after its own
 * join's ack, so that ack's count may still be its node's alone (eventually consistent).
 */
async function meet(room, first, second) {
  assert.deepEqual(await ack(first, 3000, 'join', room), { room, members: 1, host: first.id });
  await followedBy(room, 1);
  const joined = once(first, 'member_joined');
  const answer = await ack(second, 3000, 'join', room);
  assert.equal(answer.room, room, JSON.stringify(answer));
  assert.ok([1, 2].includes(answer.members), `count in the join ack: ${JSON.stringify(answer)}`);
  assert.deepEqual(withoutOffset(await joined), [{ room, player: second.id, members: 2 }]);
  await followedBy(room, 2);
}

/** Every `event` that `socket` receives from now on, as its arguments. */
function record(socket, event) {
  const got = [];
  socket.on(event, (...args) => got.push(args));
  return got;
}

test('each side sends 100 numbered events; the other node gets all, once, in order', async () => {
  const room = 'cluster-order';
  const [a, b] = await Promise.all([client('a'), client('b')]);
  await meet(room, a, b);

  const PER = 100;
  const heardByA = record(a, 'n');
  const heardByB = record(b, 'n');
  const doneA = once(a, 'done', 10000);
  const doneB = once(b, 'done', 10000);
  // Both at once: a node's own sends and what it hears from Redis interleave. Each side's
  // `done` comes after its 100 in the same order, so anything still missing (or repeated)
  // by the time it arrives is a loss (or a duplicate), not a late message.
  for (let k = 0; k < PER; k++) {
    a.emit('to', room, 'n', k);
    b.emit('to', room, 'n', k);
  }
  a.emit('to', room, 'done', 'a');
  b.emit('to', room, 'done', 'b');
  assert.deepEqual(withoutOffset(await doneA), ['b', b.id]);
  assert.deepEqual(withoutOffset(await doneB), ['a', a.id]);

  const expected = Array.from({ length: PER }, (_, k) => k);
  for (const [who, heard, from] of [
    ['a', heardByA, b.id],
    ['b', heardByB, a.id],
  ]) {
    const fromOthers = heard.map(withoutOffset);
    const strangers = fromOthers.filter(([, f]) => f !== from);
    assert.deepEqual(strangers, [], `${who} hears only the other member`);
    const numbers = fromOthers.map(([k]) => k);
    assert.deepEqual(numbers, expected, `${who} hears 0..${PER - 1} once, in order`);
  }
  // Each receiving node numbers what it delivers in the room's order there: one room tag
  // (the first 8 hex digits) and numbers that only increase, so that a recovering client
  // could say where it stands.
  for (const heard of [heardByA, heardByB]) {
    const offsets = heard.map((args) => args[args.length - 1]);
    assert.equal(new Set(offsets.map((o) => o.slice(0, 8))).size, 1, 'one room tag');
    const numbers = offsets.map((o) => BigInt(`0x${o.slice(8)}`));
    for (let i = 1; i < numbers.length; i++) {
      assert.ok(numbers[i] > numbers[i - 1], `offsets increase: ${offsets[i - 1]}, ${offsets[i]}`);
    }
  }
});

test('Buffers, and objects holding Buffers, cross nodes intact both ways', async () => {
  const room = 'cluster-binary';
  const [a, b] = await Promise.all([client('a'), client('b')]);
  await meet(room, a, b);

  const payloads = [
    Buffer.from([0, 1, 2, 254, 255]),
    Buffer.alloc(0),
    Buffer.alloc(64 * 1024, 0xab),
    Buffer.from('{"looks":"like json"}'),
  ];
  const got = record(b, 'bin');
  for (const p of payloads) a.emit('to', room, 'bin', p);
  await until(b, 'bin', () => got.length >= payloads.length, 5000, 'every Buffer on node B');
  for (const [i, args] of got.entries()) {
    const [payload, from] = withoutOffset(args);
    assert.ok(Buffer.isBuffer(payload), `payload ${i} is a Buffer`);
    assert.ok(payload.equals(payloads[i]), `payload ${i} intact (${payload.length} bytes)`);
    assert.equal(from, a.id);
  }

  // An object with Buffers inside (socket.io's binary attachments), the other way, acked.
  const nested = once(a, 'nested');
  const sent = { id: 7, data: Buffer.from([7, 8, 0, 255]), list: [Buffer.from('x'), 'y'] };
  assert.deepEqual(await ack(b, 3000, 'to', room, 'nested', sent), { room });
  const [payload, from] = withoutOffset(await nested);
  assert.equal(from, b.id);
  assert.equal(payload.id, 7);
  assert.ok(Buffer.isBuffer(payload.data), JSON.stringify(payload));
  assert.deepEqual([...payload.data], [7, 8, 0, 255]);
  assert.ok(Buffer.isBuffer(payload.list[0]), JSON.stringify(payload));
  assert.equal(payload.list[0].toString(), 'x');
  assert.equal(payload.list[1], 'y');
});

test('joins, a leave and a disconnect cross nodes with the count across nodes', async () => {
  const room = 'cluster-presence';
  const [a, b, c] = await Promise.all([client('a'), client('b'), client('a')]);
  await meet(room, a, b);

  // Node A has counted b from its notice (a was told), so a second member there is the
  // third across nodes, in its ack and in what node B's member is told.
  const cJoined = once(b, 'member_joined');
  const answer = await ack(c, 3000, 'join', room);
  assert.equal(answer.members, 3, JSON.stringify(answer));
  assert.deepEqual(withoutOffset(await cJoined), [{ room, player: c.id, members: 3 }]);

  // c's leave: told on its own node and across, with the same count after it. (Waiting
  // for a's notice too, so that it cannot be taken below for b's.)
  const left = [once(b, 'member_left'), once(a, 'member_left')];
  assert.deepEqual(await ack(c, 3000, 'leave', room), { room });
  for (const notice of await Promise.all(left)) {
    assert.deepEqual(withoutOffset(notice), [{ room, player: c.id, members: 2, reason: 'left' }]);
  }

  // B's only member goes: node B tells A and stops following the room.
  const bLeft = once(a, 'member_left');
  const bId = b.id;
  b.disconnect();
  assert.deepEqual(withoutOffset(await bLeft), [
    { room, player: bId, members: 1, reason: 'disconnected' },
  ]);
  await followedBy(room, 1);

  // A member who comes back on node B is counted with a alone, and a is told so.
  const again = await client('b');
  const joinedAgain = once(a, 'member_joined');
  await ack(again, 3000, 'join', room);
  assert.deepEqual(withoutOffset(await joinedAgain), [{ room, player: again.id, members: 2 }]);
});

for (const [ta, tb] of [
  ['websocket', 'polling'],
  ['polling', 'websocket'],
]) {
  test(`a ${ta} client on node A and a ${tb} client on node B meet in a room`, async () => {
    const room = `cluster-${ta}-${tb}`;
    const [a, b] = await Promise.all([client('a', [ta]), client('b', [tb])]);
    assert.equal(a.io.engine.transport.name, ta);
    assert.equal(b.io.engine.transport.name, tb);
    await meet(room, a, b);

    const toB = once(b, 'hello');
    assert.deepEqual(await ack(a, 3000, 'to', room, 'hello', { from: ta, n: [1, 'two'] }), {
      room,
    });
    assert.deepEqual(withoutOffset(await toB), [{ from: ta, n: [1, 'two'] }, a.id]);
    // A Buffer the other way: to a long-polling client it travels as base64.
    const toA = once(a, 'bytes');
    b.emit('to', room, 'bytes', Buffer.from([9, 0, 255]));
    const [payload, from] = withoutOffset(await toA);
    assert.ok(Buffer.isBuffer(payload));
    assert.deepEqual([...payload], [9, 0, 255]);
    assert.equal(from, b.id);
    a.disconnect();
    b.disconnect();
  });
}
