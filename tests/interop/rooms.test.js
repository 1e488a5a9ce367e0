// The game flow of docs/ROOMS.md with the official client: a private room made with
// room:create, joined by its code, its state kept by the host and handed to the next host.
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { io } = require('socket.io-client');
const { useCorelay, connected, ack, once } = require('./lib');

const ctx = useCorelay({ shards: 2 });

test('a private room: created, joined by code, its state handed to the next host', async () => {
  const opts = { transports: ['websocket'], forceNew: true, reconnection: false };
  const host = io(ctx.server.url, opts);
  const friend = io(ctx.server.url, opts);
  ctx.sockets.push(host, friend);
  await Promise.all([connected(host), connected(friend)]);

  const created = await ack(host, 3000, 'room:create', {
    max_members: 4,
    private: true,
    metadata: { mode: 'duel' },
    empty_ttl_ms: 30000,
  });
  assert.match(created.code, /^[23456789ABCDEFGHJKMNPQRSTUVWXYZ]{6}$/);
  assert.equal(created.room, `#${created.code}`);
  assert.equal(created.host, host.id);
  const { room } = created;
  assert.deepEqual(await ack(host, 3000, 'room:set_state', room, { turn: 1, board: [] }), { room });

  const joined = await ack(friend, 3000, 'join', { code: created.code.toLowerCase() });
  assert.deepEqual(joined, {
    room,
    members: 2,
    host: host.id,
    state: { turn: 1, board: [] },
    players: [{ id: host.id }, { id: friend.id }],
  });
  // Private: not listed.
  const listed = await ack(friend, 3000, 'room:list', { metadata: { mode: 'duel' } });
  assert.deepEqual(listed, { rooms: [], next_page: null });
  // Only the host keeps the state.
  assert.deepEqual(await ack(friend, 3000, 'room:set_state', room, { turn: 99 }), {
    error: 'not_host',
  });

  const move = once(friend, 'move');
  host.emit('to', room, 'move', { x: 1, y: 2 });
  const [payload, from] = await move;
  assert.deepEqual(payload, { x: 1, y: 2 });
  assert.equal(from, host.id);
  await ack(host, 3000, 'room:set_state', room, { turn: 2, board: [[1, 2]] });

  const handover = once(friend, 'room:host');
  await ack(host, 3000, 'leave', room);
  const [notice] = await handover;
  assert.deepEqual(notice, { room, host: friend.id, state: { turn: 2, board: [[1, 2]] } });
  assert.deepEqual(await ack(friend, 3000, 'room:lock', room, true), { room });
  host.disconnect();
  friend.disconnect();
});
