// 500 official socket.io clients in 50 rooms of 10 through `corelay serve`: every message
// delivered to every other member exactly once. One client per room polls, the rest use
// WebSocket.
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { io } = require('socket.io-client');
const { useCorelay, within, ack } = require('./lib');

const CLIENTS = Number(process.env.INTEROP_CLIENTS || 500);
const ROOM_SIZE = 10;
const MESSAGES = 3;
const BUDGET_MS = 55_000;

// Every client comes from 127.0.0.1, faster than one address's handshake rate allows a
// real host (engineio_handshake_rate): this test is a crowd, not one host.
const ctx = useCorelay({ env: { CORELAY_ENGINEIO_HANDSHAKE_RATE: '100000' } });
const sockets = ctx.sockets;

/** Runs `fn` over `items` with at most `limit` in flight. */
async function pool(items, limit, fn) {
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i], i);
    }
  });
  await Promise.all(workers);
}

test(`${CLIENTS} clients in rooms of ${ROOM_SIZE}, ${MESSAGES} messages each, each delivered exactly once`, { timeout: 60_000 }, async () => {
  const started = Date.now();
  const rooms = Math.ceil(CLIENTS / ROOM_SIZE);
  const clients = Array.from({ length: CLIENTS }, (_, i) => ({
    index: i,
    room: `load-${i % rooms}`,
    polling: Math.floor(i / rooms) === ROOM_SIZE - 1, // the last of each room
    socket: null,
    id: null,
    got: new Map(), // from -> [seq...]
    done: new Set(), // peers whose `done` marker arrived
    duplicates: [],
  }));
  let allDone;
  const finished = new Promise((resolve) => {
    allDone = resolve;
  });
  let completed = 0;
  const roomSize = (c) => clients.filter((o) => o.room === c.room).length;

  await within(BUDGET_MS, 'all clients connected and joined', (async () => {
    await pool(clients, 100, async (c) => {
      const socket = io(ctx.server.url, {
        transports: c.polling ? ['polling'] : ['websocket'],
        reconnection: false,
        forceNew: true,
        timeout: 20_000,
      });
      sockets.push(socket);
      c.socket = socket;
      await new Promise((resolve, reject) => {
        socket.once('connect', resolve);
        socket.once('connect_error', (e) => reject(new Error(`client ${c.index}: ${e.message}`)));
      });
      c.id = socket.id;
      socket.on('msg', (payload, from) => {
        assert.equal(from, payload.from, 'from is the sender socket id');
        const seqs = c.got.get(from) || [];
        if (seqs.includes(payload.seq)) c.duplicates.push([from, payload.seq]);
        seqs.push(payload.seq);
        c.got.set(from, seqs);
      });
      socket.on('done', (_, from) => {
        if (c.done.has(from)) c.duplicates.push([from, 'done']);
        c.done.add(from);
        if (c.done.size === roomSize(c) - 1) {
          completed += 1;
          if (completed === CLIENTS) allDone();
        }
      });
      const answer = await ack(socket, 20_000, 'join', c.room);
      assert.equal(answer.room, c.room);
    });
  })());
  const joinedAt = Date.now();

  // Everyone is in; everyone sends its messages, then a `done` marker (ordered after them).
  for (const c of clients) {
    for (let seq = 0; seq < MESSAGES; seq++) c.socket.emit('to', c.room, 'msg', { from: c.id, seq });
    c.socket.emit('to', c.room, 'done', null);
  }
  await within(BUDGET_MS - (Date.now() - started), `done markers (${completed}/${CLIENTS} complete)`, finished);
  const doneAt = Date.now();

  for (const c of clients) {
    const peers = clients.filter((o) => o.room === c.room && o !== c);
    assert.deepEqual(c.duplicates, [], `client ${c.index} got duplicates`);
    assert.equal(c.got.size, peers.length, `client ${c.index} heard from every peer`);
    let total = 0;
    for (const p of peers) {
      assert.deepEqual(c.got.get(p.id), [...Array(MESSAGES).keys()], `client ${c.index} from ${p.index}`);
      total += MESSAGES;
    }
    assert.equal(total, (ROOM_SIZE - 1) * MESSAGES);
  }
  const polling = clients.filter((c) => c.polling).length;
  console.log(
    `${CLIENTS} clients (${polling} polling) joined in ${joinedAt - started} ms, ` +
      `${CLIENTS * MESSAGES * (ROOM_SIZE - 1)} deliveries in ${doneAt - joinedAt} ms`,
  );
  assert.ok(Date.now() - started < 60_000);
});
