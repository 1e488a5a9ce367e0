// The official client reconnects by itself after `corelay serve` restarts on the same port.
'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const { io } = require('socket.io-client');
const { startCorelay, freePort, connected, ack, once, withoutOffset } = require('./lib');

const sockets = [];
let server;

after(async () => {
  for (const s of sockets) s.disconnect();
  if (server) await server.stop();
});

for (const transports of [['websocket'], ['polling', 'websocket']]) {
  test(`[${transports.join('+')}] reconnects after a server restart and relays again`, async () => {
    const port = await freePort();
    server = await startCorelay({ port });
    const opts = {
      transports,
      forceNew: true,
      reconnectionDelay: 50,
      reconnectionDelayMax: 200,
      randomizationFactor: 0,
    };
    const a = io(server.url, opts);
    const b = io(server.url, opts);
    sockets.push(a, b);
    await Promise.all([connected(a), connected(b)]);
    await ack(a, 3000, 'join', 'before');
    // Starting on polling, both upgrade first: a server that dies mid-upgrade (between the
    // probe's answer and the end of the poll that pauses polling) leaves engine.io-client
    // paused, noticing only at its ping timeout, which is not what this test is about.
    await Promise.all(
      [a, b].map((s) =>
        s.io.engine.transport.name === transports[transports.length - 1]
          ? null
          : once(s.io.engine, 'upgrade'),
      ),
    );
    const firstEngine = a.io.engine.id;

    const disconnected = Promise.all([once(a, 'disconnect'), once(b, 'disconnect')]);
    const { code, signal } = await server.stop('SIGTERM');
    assert.equal(code, 0, `corelay exits 0 on SIGTERM (signal ${signal})`);
    const [[reasonA]] = await disconnected;
    assert.equal(typeof reasonA, 'string');
    assert.equal(a.connected, false);

    // Same port again; both clients come back on their own.
    const reconnected = Promise.all([once(a, 'connect', 10000), once(b, 'connect', 10000)]);
    server = await startCorelay({ port });
    await reconnected;
    assert.ok(a.connected && b.connected);
    assert.notEqual(a.io.engine.id, firstEngine, 'a new Engine.IO session after the restart');

    const after = (members) => ({ room: 'after', members, host: a.id });
    assert.deepEqual(await ack(a, 3000, 'join', 'after'), after(1));
    assert.deepEqual(await ack(b, 3000, 'join', 'after'), after(2));
    const got = once(b, 'hello');
    a.emit('to', 'after', 'hello', { again: true });
    assert.deepEqual(withoutOffset(await got), [{ again: true }, a.id]);

    a.disconnect();
    b.disconnect();
    const end = await server.stop();
    assert.equal(end.code, 0);
    server = undefined;
  });
}
