// Socket.IO connection state recovery across nodes (docs/SCALING.md, "History and resume
// across nodes") with the official socket.io client: its node is killed with SIGKILL, the
// load balancer in front (a TCP proxy here) sends its reconnect to another node, and the
// socket comes back `recovered` with exactly the events it missed, in order, once.
'use strict';

const net = require('node:net');
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { io } = require('socket.io-client');
const { startCorelay, startRedis, numsub, connected, ack, once, withoutOffset } = require('./lib');

let redis = null;
const nodes = {};
const sockets = [];
let proxy = null;

/**
 * A TCP proxy on an ephemeral port that forwards each new connection to the node it
 * points at now, as a load balancer does; `to(node)` changes that for new connections.
 */
function switchingProxy(first) {
  let target = first;
  const pairs = new Set();
  const server = net.createServer((down) => {
    const up = net.connect(target.port, '127.0.0.1');
    const pair = [down, up];
    pairs.add(pair);
    const end = () => {
      down.destroy();
      up.destroy();
      pairs.delete(pair);
    };
    for (const s of pair) {
      s.on('error', end);
      s.on('close', end);
    }
    down.pipe(up);
    up.pipe(down);
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () =>
      resolve({
        url: `http://127.0.0.1:${server.address().port}`,
        to(node) {
          target = node;
        },
        close() {
          for (const [down, up] of pairs) {
            down.destroy();
            up.destroy();
          }
          server.close();
        },
      }),
    );
  });
}

before(async () => {
  redis = await startRedis();
  const node = (id) =>
    startCorelay({
      env: {
        CORELAY_CLUSTER_REDIS: redis.url,
        CORELAY_CLUSTER_NODE_ID: `recovery-${id}`,
        CORELAY_CLUSTER_LEASE_MS: '1000',
      },
    });
  nodes.a = await node('a');
  nodes.b = await node('b');
  proxy = await switchingProxy(nodes.a);
});

after(async () => {
  for (const s of sockets) s.disconnect();
  if (proxy) proxy.close();
  const codes = {};
  for (const [id, n] of Object.entries(nodes)) {
    const { code, signal } = await n.stop();
    codes[id] = signal === 'SIGKILL' ? 'killed' : code;
  }
  if (redis) await redis.stop();
  assert.equal(codes.b, 0, 'node b exits 0 on SIGTERM');
  if ('d' in codes) assert.equal(codes.d, 0, 'node d exits 0 on SIGTERM');
});

/** Resolves once `n` nodes follow `room` in Redis. */
async function followedBy(room, n, ms = 5000) {
  const channel = `corelay:room:{${room}}`;
  const deadline = Date.now() + ms;
  for (;;) {
    if ((await numsub(redis.port, channel)) === n) return;
    if (Date.now() > deadline) throw new Error(`${channel} not followed by ${n} nodes`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test('a socket whose node dies is recovered on another node with exactly what it missed', async () => {
  const room = 'recovery-arena';
  // Bob reaches node A through the proxy and reconnects by himself, as a game client does.
  const bob = io(proxy.url, {
    transports: ['websocket'],
    reconnectionDelay: 50,
    reconnectionDelayMax: 200,
    randomizationFactor: 0,
  });
  sockets.push(bob);
  await connected(bob);
  const bobId = bob.id;
  const heard = [];
  bob.on('n', (k) => heard.push(k));
  assert.equal((await ack(bob, 3000, 'join', room)).room, room);
  await followedBy(room, 1);

  const alice = io(nodes.b.url, { transports: ['websocket'], reconnection: false, forceNew: true });
  sockets.push(alice);
  await connected(alice);
  assert.equal((await ack(alice, 3000, 'join', room)).room, room);
  await followedBy(room, 2);
  // Bob's node hears Alice (a node hears a room once its subscription is confirmed).
  const probe = once(bob, 'probe', 5000);
  const probing = setInterval(() => alice.emit('to', room, 'probe', 1), 50);
  await probe;
  clearInterval(probing);

  for (let k = 0; k < 50; k++) alice.emit('to', room, 'n', k);
  const twenty = Date.now() + 5000;
  while (heard.length < 20) {
    assert.ok(Date.now() < twenty, `Bob heard ${heard.length} of the first 20`);
    await new Promise((r) => setTimeout(r, 5));
  }
  // The load balancer sends new connections to B; A dies with events on their way.
  proxy.to(nodes.b);
  const back = once(bob, 'connect', 10000);
  nodes.a.child.kill('SIGKILL');
  for (let k = 50; k < 100; k++) alice.emit('to', room, 'n', k);
  await back;
  assert.equal(bob.recovered, true, 'the socket was recovered on B');
  assert.equal(bob.id, bobId, 'with its id');
  const done = once(bob, 'done', 10000);
  alice.emit('to', room, 'done', 1);
  await done;
  assert.deepEqual(
    heard.map((args) => args),
    Array.from({ length: 100 }, (_, k) => k),
    'every event once, in order',
  );
  // Bob, on B now, is heard by Alice as himself.
  const fromBob = once(alice, 'hi', 5000);
  bob.emit('to', room, 'hi', 1);
  assert.deepEqual(withoutOffset(await fromBob), [1, bobId]);
});

test('a socket in two rooms is not recovered on another node, and its old self leaves both', async () => {
  // Nodes of this test's own: the first test killed its node A.
  const node = (id) =>
    startCorelay({
      env: {
        CORELAY_CLUSTER_REDIS: redis.url,
        CORELAY_CLUSTER_NODE_ID: `recovery-two-${id}`,
        CORELAY_CLUSTER_LEASE_MS: '1000',
      },
    });
  nodes.c = await node('c');
  nodes.d = await node('d');
  const lb = await switchingProxy(nodes.c);
  try {
    const bob = io(lb.url, {
      transports: ['websocket'],
      reconnectionDelay: 50,
      reconnectionDelayMax: 200,
      randomizationFactor: 0,
    });
    sockets.push(bob);
    await connected(bob);
    const oldId = bob.id;
    for (const room of ['two-a', 'two-b']) {
      assert.equal((await ack(bob, 3000, 'join', room)).room, room);
    }
    const eve = io(nodes.d.url, { transports: ['websocket'], reconnection: false, forceNew: true });
    sockets.push(eve);
    await connected(eve);
    for (const room of ['two-a', 'two-b']) {
      assert.equal((await ack(eve, 3000, 'join', room)).room, room);
      await followedBy(room, 2);
    }
    // An event of one room reaches Bob, so his offset names that room.
    const probe = once(bob, 'probe', 5000);
    const probing = setInterval(() => eve.emit('to', 'two-a', 'probe', 1), 50);
    await probe;
    clearInterval(probing);
    const left = [];
    eve.on('member_left', (e) => left.push(e));
    lb.to(nodes.d);
    const back = once(bob, 'connect', 10000);
    nodes.c.child.kill('SIGKILL');
    await back;
    assert.equal(bob.recovered, false, 'a socket in two rooms cannot be placed in both');
    assert.notEqual(bob.id, oldId, 'a fresh socket');
    // Its old self leaves both rooms at once (its record was taken), well before C's
    // lease (1 s) could end and take it out.
    const deadline = Date.now() + 800;
    while (left.filter((e) => e.player === oldId).length < 2) {
      assert.ok(Date.now() < deadline, `left: ${JSON.stringify(left)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.deepEqual(
      left.filter((e) => e.player === oldId).map((e) => [e.room, e.reason]).sort(),
      [['two-a', 'disconnected'], ['two-b', 'disconnected']],
    );
  } finally {
    lb.close();
  }
});
