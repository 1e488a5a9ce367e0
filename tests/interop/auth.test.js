// The official client authenticates as `io(url, { auth: { token } })` documents, against
// `corelay serve` configured only through CORELAY_AUTH_* variables: a good token connects
// and its `sub` is the `from` others see; a bad or missing one is a `connect_error` whose
// message says why (docs/AUTH.md).
'use strict';

const { test, after, before } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { io } = require('socket.io-client');
const { startCorelay, connected, ack, once } = require('./lib');

const SECRET = 'interop-test-secret';
const sockets = [];
let server;

/** An HS256 JWT, minted as a game backend would (here with node:crypto, no library). */
function mint(claims, secret = SECRET) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  const sig = crypto.createHmac('sha256', secret).update(body).digest('base64url');
  return `${body}.${sig}`;
}

const exp = () => Math.floor(Date.now() / 1000) + 600;

function client(token) {
  const s = io(server.url, {
    transports: ['websocket'],
    forceNew: true,
    reconnection: false,
    auth: token === undefined ? {} : { token },
  });
  sockets.push(s);
  return s;
}

before(async () => {
  server = await startCorelay({
    env: { CORELAY_AUTH_REQUIRED: 'true', CORELAY_AUTH_JWT_SECRET: SECRET },
  });
});

after(async () => {
  for (const s of sockets) s.disconnect();
  if (server) await server.stop();
});

test('a good token connects, and its sub is the from that others see', async () => {
  const alice = client(mint({ sub: 'alice', exp: exp() }));
  const bob = client(mint({ sub: 'bob', exp: exp() }));
  await Promise.all([connected(alice), connected(bob)]);
  await ack(alice, 3000, 'join', 'auth-room');
  const joined = once(alice, 'member_joined');
  await ack(bob, 3000, 'join', 'auth-room');
  const [notice] = await joined;
  assert.equal(notice.player, 'bob');
  const got = once(bob, 'hello');
  assert.deepEqual(await ack(alice, 3000, 'to', 'auth-room', 'hello', { n: 1 }), { room: 'auth-room' });
  const [payload, from] = await got;
  assert.deepEqual(payload, { n: 1 });
  assert.equal(from, 'alice');
});

for (const [what, token, message] of [
  ['a bad signature', mint({ sub: 'mallory', exp: exp() }, 'not-the-secret'), 'bad token signature'],
  ['an expired token', mint({ sub: 'late', exp: Math.floor(Date.now() / 1000) - 600 }), 'token expired'],
  ['no token', undefined, 'token required'],
]) {
  test(`${what} is a connect_error saying so`, async () => {
    const s = client(token);
    const [err] = await once(s, 'connect_error');
    assert.equal(err.message, message);
    assert.deepEqual(err.data, { code: 'unauthorized' });
    assert.equal(s.connected, false);
  });
}
