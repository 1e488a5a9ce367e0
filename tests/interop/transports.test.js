// The official socket.io client on each transport of `corelay serve`: WebSocket only,
// HTTP long-polling only, and polling upgraded to WebSocket with traffic across the upgrade.
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { io } = require('socket.io-client');
const { useCorelay, connected, ack, once, until, withoutOffset } = require('./lib');

const ctx = useCorelay();
const sockets = ctx.sockets;

function client(opts) {
  const socket = io(ctx.server.url, { reconnection: false, forceNew: true, ...opts });
  sockets.push(socket);
  return socket;
}

/** Two clients (given transports) join one room and exchange a JSON message each way. */
async function exchange(transportsA, transportsB, room) {
  const a = client({ transports: transportsA });
  const b = client({ transports: transportsB });
  await Promise.all([connected(a), connected(b)]);
  // The first to join hosts the room; the player id of an anonymous socket is its id.
  assert.deepEqual(await ack(a, 3000, 'join', room), { room, members: 1, host: a.id });
  const joined = once(a, 'member_joined');
  assert.deepEqual(await ack(b, 3000, 'join', room), { room, members: 2, host: a.id });
  assert.deepEqual((await joined)[0], { room, player: b.id, members: 2 });

  const atB = once(b, 'chat');
  a.emit('to', room, 'chat', { text: 'hello b', n: [1, 2, 3] });
  assert.deepEqual(withoutOffset(await atB), [{ text: 'hello b', n: [1, 2, 3] }, a.id]);

  const atA = once(a, 'chat');
  assert.deepEqual(await ack(b, 3000, 'to', room, 'chat', 'hello a'), { room });
  assert.deepEqual(withoutOffset(await atA), ['hello a', b.id]);
  return [a, b];
}

test('websocket only', async () => {
  const [a, b] = await exchange(['websocket'], ['websocket'], 'ws-room');
  assert.equal(a.io.engine.transport.name, 'websocket');
  assert.equal(b.io.engine.transport.name, 'websocket');

  // Errors come back as an ack, or as an `error` event without one.
  assert.deepEqual(await ack(a, 3000, 'to', 'nowhere', 'chat', 1), { error: 'not_member' });
  assert.deepEqual(await ack(a, 3000, 'join', 42), { error: 'bad_arguments' });
  assert.deepEqual(await ack(a, 3000, 'no-such-event', 1), { error: 'unknown_event' });
  const err = once(a, 'error');
  a.emit('to', 'nowhere', 'chat', 1);
  assert.deepEqual((await err)[0], { error: 'not_member', event: 'to' });

  // Leaving: the other member is told, and no longer receives. a hosted the room, so b,
  // now its longest-present member, is told it hosts it, after the member_left.
  const notices = [];
  const onLeft = () => notices.push('member_left');
  const onHost = () => notices.push('room:host');
  b.on('member_left', onLeft);
  b.on('room:host', onHost);
  const left = once(b, 'member_left');
  const hosted = once(b, 'room:host');
  assert.deepEqual(await ack(a, 3000, 'leave', 'ws-room'), { room: 'ws-room' });
  const [info] = await left;
  assert.equal(info.room, 'ws-room');
  assert.equal(info.player, a.id);
  assert.equal(info.members, 1);
  assert.equal(typeof info.reason, 'string');
  assert.deepEqual(withoutOffset(await hosted), [{ room: 'ws-room', host: b.id }]);
  b.off('member_left', onLeft);
  b.off('room:host', onHost);
  assert.deepEqual(notices, ['member_left', 'room:host']);
});

test('polling only', async () => {
  const [a, b] = await exchange(['polling'], ['polling'], 'poll-room');
  assert.equal(a.io.engine.transport.name, 'polling');
  assert.equal(b.io.engine.transport.name, 'polling');

  // A burst larger than one poll's worth arrives complete and in order.
  const got = [];
  b.on('burst', (payload) => got.push(payload));
  for (let i = 0; i < 200; i++) a.emit('to', 'poll-room', 'burst', i);
  await until(b, 'burst', () => got.length >= 200, 5000, '200 burst messages over polling');
  assert.deepEqual(got, [...Array(200).keys()]);
});

test('polling then upgrade to websocket, messages across the upgrade exactly once in order', async () => {
  const room = 'upgrade-room';
  const b = client({ transports: ['websocket'] });
  await connected(b);
  await ack(b, 3000, 'join', room);

  // `a` starts on polling and upgrades. It queues `join` and a stream of messages before it
  // is even connected, so the first ones travel over polling and the last over WebSocket.
  const a = client({ transports: ['polling', 'websocket'], autoConnect: false });
  const upgraded = new Promise((resolve) => {
    a.io.on('open', () => {
      assert.equal(a.io.engine.transport.name, 'polling');
      a.io.engine.once('upgrade', (transport) => resolve(transport.name));
    });
  });
  const fromB = [];
  const fromA = [];
  let aDoneAt = -1;
  let bDoneAt = -1;
  a.on('seq', (n, from) => {
    assert.equal(from, b.id);
    fromB.push(n);
  });
  a.on('end', (n) => {
    bDoneAt = n;
  });
  b.on('seq', (n, from) => {
    assert.equal(from, a.id);
    fromA.push(n);
  });
  b.on('end', (n) => {
    aDoneAt = n;
  });

  a.connect();
  a.emit('join', room);
  const sentOver = { polling: 0, websocket: 0 };
  let sent = 0;
  let afterUpgrade = -1;
  await new Promise((resolve, reject) => {
    const deadline = setTimeout(() => {
      clearInterval(timer);
      reject(new Error(`upgrade did not happen (sent ${sent})`));
    }, 10000);
    const timer = setInterval(() => {
      const name = a.io.engine.transport.name;
      sentOver[name] += 1;
      a.emit('to', room, 'seq', sent++);
      if (name === 'websocket' && afterUpgrade < 0) afterUpgrade = 0;
      if (afterUpgrade >= 0 && ++afterUpgrade >= 20) {
        clearInterval(timer);
        clearTimeout(deadline);
        resolve();
      }
    }, 2);
  });
  assert.equal(await upgraded, 'websocket');
  assert.equal(a.io.engine.transport.name, 'websocket');
  assert.ok(sentOver.polling > 0, `some sent before the upgrade: ${JSON.stringify(sentOver)}`);
  assert.ok(sentOver.websocket >= 20, `some sent after the upgrade: ${JSON.stringify(sentOver)}`);
  a.emit('to', room, 'end', sent);

  // The other direction across the upgrade is the next test; here b answers over the
  // upgraded transport.
  await until(b, 'end', () => aDoneAt >= 0, 5000, "a's end marker");
  assert.equal(aDoneAt, sent);
  assert.deepEqual(fromA, [...Array(sent).keys()], 'every message a sent, once, in order');

  for (let i = 0; i < 50; i++) b.emit('to', room, 'seq', i);
  b.emit('to', room, 'end', 50);
  await until(a, 'end', () => bDoneAt >= 0, 5000, "b's end marker");
  assert.deepEqual(fromB, [...Array(50).keys()]);
});

test('both directions streaming while the upgrade happens: exactly once, in order', async () => {
  const room = 'upgrade-room-2';
  const b = client({ transports: ['websocket'] });
  await connected(b);
  await ack(b, 3000, 'join', room);

  // `a` polls with automatic upgrades off; once both streams are flowing over polling, the
  // test starts the upgrade probe itself (engine.io-client's internal `_probe`, the method
  // its own onOpen calls), so that the upgrade is sure to happen mid-stream.
  const a = client({ transports: ['polling', 'websocket'], upgrade: false });
  await connected(a);
  await ack(a, 3000, 'join', room);
  assert.equal(a.io.engine.transport.name, 'polling');
  assert.equal(typeof a.io.engine._probe, 'function', 'engine.io-client still has _probe');

  const streams = {
    atA: { got: [], over: { polling: 0, websocket: 0 }, end: -1 },
    atB: { got: [], end: -1 },
  };
  a.on('seq', (n, from) => {
    assert.equal(from, b.id);
    streams.atA.got.push(n);
    streams.atA.over[a.io.engine.transport.name] += 1;
  });
  a.on('end', (n) => {
    streams.atA.end = n;
  });
  b.on('seq', (n, from) => {
    assert.equal(from, a.id);
    streams.atB.got.push(n);
  });
  b.on('end', (n) => {
    streams.atB.end = n;
  });

  let sentA = 0;
  let sentB = 0;
  const sentAOver = { polling: 0, websocket: 0 };
  let upgraded = false;
  let afterUpgrade = 0;
  let probing = false;
  await new Promise((resolve, reject) => {
    const deadline = setTimeout(() => {
      clearInterval(timer);
      reject(new Error(`upgrade did not complete (a sent ${sentA}, b sent ${sentB})`));
    }, 10000);
    const timer = setInterval(() => {
      sentAOver[a.io.engine.transport.name] += 1;
      a.emit('to', room, 'seq', sentA++);
      b.emit('to', room, 'seq', sentB++);
      if (!probing && streams.atA.got.length >= 10 && streams.atB.got.length >= 10) {
        probing = true;
        a.io.engine.once('upgrade', (transport) => {
          assert.equal(transport.name, 'websocket');
          upgraded = true;
        });
        a.io.engine._probe('websocket');
      }
      if (upgraded && ++afterUpgrade >= 20) {
        clearInterval(timer);
        clearTimeout(deadline);
        resolve();
      }
    }, 2);
  });
  assert.equal(a.io.engine.transport.name, 'websocket');
  a.emit('to', room, 'end', sentA);
  b.emit('to', room, 'end', sentB);
  await until(a, 'end', () => streams.atA.end >= 0, 5000, 'end marker at a');
  await until(b, 'end', () => streams.atB.end >= 0, 5000, 'end marker at b');
  assert.equal(streams.atA.end, sentB);
  assert.equal(streams.atB.end, sentA);
  assert.deepEqual(streams.atB.got, [...Array(sentA).keys()], 'a -> b: every message once, in order');
  assert.deepEqual(streams.atA.got, [...Array(sentB).keys()], 'b -> a: every message once, in order');
  assert.ok(sentAOver.polling >= 10 && sentAOver.websocket >= 20, JSON.stringify(sentAOver));
  assert.ok(
    streams.atA.over.polling >= 10 && streams.atA.over.websocket > 0,
    `a received over both transports: ${JSON.stringify(streams.atA.over)}`,
  );
});
