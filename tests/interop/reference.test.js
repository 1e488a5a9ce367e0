// The official socket.io client against the socketio_reference example (application
// handlers on corelay): acks both ways, binary attachments, namespaces, the auth payload.
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { io } = require('socket.io-client');
const { startReference, connected, ack, once } = require('./lib');

let server;
const sockets = [];

before(async () => {
  server = await startReference();
});

after(async () => {
  for (const s of sockets) s.disconnect();
  await server.stop();
});

/** Emits with an ack callback and resolves with all the ack's arguments. */
function ackArgs(socket, ...args) {
  return new Promise((resolve, reject) => {
    socket.timeout(3000).emit(...args, (err, ...rest) => (err ? reject(err) : resolve(rest)));
  });
}

function client(nsp = '/', opts = {}) {
  const socket = io(server.url + nsp, { reconnection: false, forceNew: true, ...opts });
  sockets.push(socket);
  return socket;
}

for (const transports of [['websocket'], ['polling']]) {
  const label = transports[0];

  test(`[${label}] client -> server ack (message-with-ack) with JSON and binary args`, async () => {
    const s = client('/', { transports });
    await connected(s);
    // emitWithAck resolves with the first argument of the ack.
    assert.equal(await ack(s, 3000, 'message-with-ack', 'first', 2), 'first');
    assert.deepEqual(await ackArgs(s, 'message-with-ack', 1, '2', { three: [3] }, null), [1, '2', { three: [3] }, null]);
    const args = await ackArgs(s, 'message-with-ack', 'x', Buffer.from([1, 2, 3]), Buffer.alloc(0));
    assert.equal(args[0], 'x');
    assert.ok(Buffer.isBuffer(args[1]), 'binary arg comes back as a Buffer');
    assert.deepEqual([...args[1]], [1, 2, 3]);
    assert.ok(Buffer.isBuffer(args[2]) && args[2].length === 0, 'an empty Buffer too');
  });

  test(
    `[${label}] nested binary in an ack`,
    async () => {
      const s = client('/', { transports });
      await connected(s);
      const args = await ackArgs(s, 'message-with-ack', { b: Buffer.from('hi') }, Buffer.from([9]));
      assert.ok(Buffer.isBuffer(args[0].b), 'nested binary comes back as a Buffer');
      assert.equal(args[0].b.toString(), 'hi');
      assert.deepEqual([...args[1]], [9]);
    },
  );

  test(`[${label}] server -> client ack (ask-ack / server-ack / server-ack-answer)`, async () => {
    const s = client('/', { transports });
    await connected(s);
    const asked = once(s, 'server-ack');
    const answered = once(s, 'server-ack-answer');
    s.emit('ask-ack', 'question', 7);
    const [q, n, callback] = await asked;
    assert.equal(q, 'question');
    assert.equal(n, 7);
    assert.equal(typeof callback, 'function', 'the server asked for an ack');
    callback('answer', { n: n * 6 }, Buffer.from([0xca, 0xfe]));
    const answer = await answered;
    assert.equal(answer[0], 'answer');
    assert.deepEqual(answer[1], { n: 42 });
    assert.ok(Buffer.isBuffer(answer[2]));
    assert.deepEqual([...answer[2]], [0xca, 0xfe]);
  });

  test(`[${label}] binary attachments both ways through message-back`, async () => {
    const s = client('/', { transports });
    await connected(s);
    const big = Buffer.alloc(100_000, 7);
    big[0] = 1;
    big[big.length - 1] = 2;
    const back = once(s, 'message-back');
    s.emit('message', Buffer.from([1, 2, 3]), 'text', big, { plain: true });
    const [b1, text, b3, obj] = await back;
    assert.ok(Buffer.isBuffer(b1));
    assert.deepEqual([...b1], [1, 2, 3]);
    assert.equal(text, 'text');
    assert.ok(Buffer.isBuffer(b3));
    assert.ok(b3.equals(big), 'a 100 kB attachment arrives intact');
    assert.deepEqual(obj, { plain: true });
  });

  test(
    `[${label}] nested binary through message-back`,
    async () => {
      const s = client('/', { transports });
      await connected(s);
      const back = once(s, 'message-back');
      s.emit('message', Buffer.from([1]), { nested: [Buffer.from('abc'), 'text'] }, Buffer.from([3]));
      const [b1, obj, b3] = await back;
      assert.deepEqual([...b1], [1]);
      assert.ok(Buffer.isBuffer(obj.nested[0]), 'nested binary comes back as a Buffer');
      assert.equal(obj.nested[0].toString('hex'), Buffer.from('abc').toString('hex'));
      assert.equal(obj.nested[1], 'text');
      assert.deepEqual([...b3], [3]);
    },
  );

  test(`[${label}] auth payload and the custom namespace`, async () => {
    const auth = { token: 'secret', user: { id: 12, name: 'zoë' } };
    const main = client('/', { transports, auth });
    const gotAuth = once(main, 'auth');
    await connected(main);
    assert.deepEqual((await gotAuth)[0], auth);

    const custom = client('/custom', { transports, auth: { ns: 'custom' } });
    const customAuth = once(custom, 'auth');
    await connected(custom);
    assert.deepEqual((await customAuth)[0], { ns: 'custom' });
    const back = once(custom, 'message-back');
    custom.emit('message', 'on custom');
    assert.deepEqual(await back, ['on custom']);
    assert.deepEqual(await ack(custom, 3000, 'message-with-ack', 'custom-ack'), 'custom-ack');

    // Without an auth payload the server sees {}.
    const plain = client('/', { transports });
    const plainAuth = once(plain, 'auth');
    await connected(plain);
    assert.deepEqual((await plainAuth)[0], {});
  });

  test(`[${label}] two namespaces over one multiplexed connection`, async () => {
    const manager = client('/', { transports }).io;
    const main = sockets[sockets.length - 1];
    const custom = manager.socket('/custom');
    sockets.push(custom);
    custom.connect();
    await Promise.all([connected(main), connected(custom)]);
    assert.notEqual(main.id, custom.id);
    const [a, b] = await Promise.all([once(main, 'message-back'), once(custom, 'message-back'), main.emit('message', 'main'), custom.emit('message', 'custom')]);
    assert.deepEqual(a, ['main']);
    assert.deepEqual(b, ['custom']);
  });

  test(`[${label}] an unknown namespace gets connect_error`, async () => {
    const s = client('/nope', { transports });
    const [err] = await once(s, 'connect_error');
    assert.ok(err instanceof Error);
    assert.match(err.message, /invalid namespace/i);
    assert.equal(s.connected, false);
  });
}
