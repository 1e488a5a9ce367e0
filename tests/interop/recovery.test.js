// Connection state recovery with the official client and no client code for it: after a
// lost connection, `socket.recovered` is true, the id and rooms are the same, and every
// room event sent meanwhile arrives exactly once, in order, before anything newer. The
// server runs two shards; a reconnect lands on either, and the test sees both.
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { io } = require('socket.io-client');
const { useCorelay, connected, ack, once, until } = require('./lib');

const ctx = useCorelay({ shards: 2 });

const ROOMS = ['north', 'south'];

/** The shard of the client's Engine.IO session: the first two hex digits of its id. */
function shardOf(socket) {
  return parseInt(socket.io.engine.id.slice(0, 2), 16);
}

/** Cuts the client's connection as a network would: no close handshake. */
function cut(socket, transport) {
  const engine = socket.io.engine;
  if (transport === 'websocket') {
    engine.transport.ws._socket.destroy();
  } else {
    // Long-polling has no one socket to cut: the client drops its transport.
    engine.close();
  }
}

for (const transports of [['websocket'], ['polling']]) {
  test(`[${transports}] a lost connection is recovered with what it missed, on either shard`, async () => {
    const opts = {
      transports,
      forceNew: true,
      reconnectionDelay: 20,
      reconnectionDelayMax: 50,
      randomizationFactor: 0,
    };
    const bob = io(ctx.server.url, { ...opts, reconnection: false });
    const alice = io(ctx.server.url, opts);
    ctx.sockets.push(alice, bob);
    await Promise.all([connected(alice), connected(bob)]);
    for (const room of ROOMS) {
      await ack(alice, 3000, 'join', room);
      await ack(bob, 3000, 'join', room);
    }
    assert.equal(alice.recovered, false, 'a first connection recovers nothing');
    const id = alice.id;

    // Every `move` alice's handlers see, per room, and the offsets they came with.
    const got = { north: [], south: [] };
    const offsets = [];
    alice.on('move', (payload, from, offset) => {
      assert.equal(from, bob.id);
      got[payload.room].push(payload.n);
      offsets.push(offset);
    });
    const notices = [];
    bob.on('member_away', (n) => notices.push(['away', n.player, n.room]));
    bob.on('member_back', (n) => notices.push(['back', n.player, n.room]));

    let next = 0;
    const sent = { north: [], south: [] };
    const send = async (count) => {
      for (let i = 0; i < count; i++) {
        const room = ROOMS[next % 2];
        sent[room].push(next);
        await ack(bob, 3000, 'to', room, 'move', { room, n: next });
        next += 1;
      }
    };
    const seenShards = new Set();
    let crossed = false;
    let round = 0;
    // Until a recovery on the same shard and one on the other were both seen (each round
    // lands on either with even odds; 16 rounds miss one with odds of 1 in 32,768).
    while (round < 16 && !(crossed && seenShards.size === 2 && round >= 2)) {
      await send(4);
      await until(alice, 'move', () => got.north.length + got.south.length === next, 3000, 'the live moves');
      const before = shardOf(alice);
      const away = notices.length;
      const lost = once(alice, 'disconnect');
      const back = once(alice, 'connect', 5000);
      cut(alice, transports[0]);
      const [reason] = await lost;
      assert.equal(reason, transports[0] === 'websocket' ? 'transport close' : 'forced close');
      // Sent while alice is away (or while the server has not noticed yet).
      await send(3);
      await back;
      assert.equal(alice.recovered, true, `round ${round}: socket.recovered`);
      assert.equal(alice.id, id, 'the same socket id');
      const after = shardOf(alice);
      seenShards.add(after);
      if (after !== before) crossed = true;
      await send(1);
      await until(alice, 'move', () => got.north.length + got.south.length === next, 3000, 'the missed moves');
      assert.deepEqual(got, sent, `round ${round}: each move once, in order per room`);
      await until(bob, 'member_back', () => notices.filter((n) => n[0] === 'back').length >= (round + 1) * 2, 3000, 'back');
      assert.ok(notices.length > away);
      round += 1;
    }
    assert.ok(crossed, 'a recovery on the other shard was seen');
    assert.ok(seenShards.size === 2, 'recoveries on both shards were seen');
    for (const o of offsets) assert.match(o, /^[0-9a-f]{9,24}$/);
    // The rooms saw alice away and back, never leaving.
    assert.ok(notices.every(([, player]) => player === id));
    assert.deepEqual(
      [...new Set(notices.map(([kind]) => kind))].sort(),
      ['away', 'back'],
    );
    alice.disconnect();
    bob.disconnect();
  });
}
