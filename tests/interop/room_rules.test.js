// `[[auth.rooms]]` rules (docs/AUTH.md, "Authorization") as the official client sees them,
// against `corelay serve --config` (the rules are TOML only): a player without the claim
// cannot join `match-*`, a spectator joins but its sends are refused while a player's go
// through; every refusal is `{error: "forbidden", message}` and the socket stays connected.
'use strict';

const { test, after, before } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { io } = require('socket.io-client');
const { startCorelay, connected, ack, once } = require('./lib');

const SECRET = 'interop-rules-secret';
const sockets = [];
let server;
let dir;

/** An HS256 JWT good for ten minutes, minted with node:crypto as a game backend would. */
function mint(claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const full = { ...claims, exp: Math.floor(Date.now() / 1000) + 600 };
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(full)}`;
  const sig = crypto.createHmac('sha256', SECRET).update(body).digest('base64url');
  return `${body}.${sig}`;
}

async function player(claims) {
  const s = io(server.url, {
    transports: ['websocket'],
    forceNew: true,
    reconnection: false,
    auth: { token: mint(claims) },
  });
  sockets.push(s);
  await connected(s);
  return s;
}

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'corelay-rules-'));
  const config = path.join(dir, 'corelay.toml');
  fs.writeFileSync(
    config,
    [
      '[auth]',
      `jwt_secret = "${SECRET}"`,
      '',
      '[[auth.rooms]]',
      'room = "match-*"',
      'claim = "role"',
      'values = ["player", "spectator"]',
      'read_only = ["spectator"]',
      '',
    ].join('\n'),
  );
  server = await startCorelay({ config });
});

after(async () => {
  for (const s of sockets) s.disconnect();
  if (server) await server.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

test('a player without the claim cannot join a match room, and stays connected', async () => {
  const guest = await player({ sub: 'guest', role: 'guest' });
  assert.deepEqual(await ack(guest, 3000, 'join', 'match-1'), {
    error: 'forbidden',
    message: 'room match-1 requires the claim role',
  });
  const [err] = await (async () => {
    const got = once(guest, 'error');
    guest.emit('join', 'match-2');
    return got;
  })();
  assert.deepEqual(err, {
    error: 'forbidden',
    event: 'join',
    message: 'room match-2 requires the claim role',
  });
  assert.deepEqual(await ack(guest, 3000, 'join', 'lobby'), {
    members: 1,
    room: 'lobby',
    host: 'guest',
  });
  assert.equal(guest.connected, true);
});

test('a spectator watches but may not send; a player is heard', async () => {
  const p = await player({ sub: 'pl', role: 'player' });
  const sp = await player({ sub: 'sp', role: 'spectator' });
  await ack(p, 3000, 'join', 'match-9');
  await ack(sp, 3000, 'join', 'match-9');
  assert.deepEqual(await ack(sp, 3000, 'to', 'match-9', 'move', { x: 1 }), {
    error: 'forbidden',
    message: 'spectator members may not send to match-9',
  });
  const got = once(sp, 'move');
  assert.deepEqual(await ack(p, 3000, 'to', 'match-9', 'move', { x: 2 }), { room: 'match-9' });
  const [payload, from] = await got;
  assert.deepEqual(payload, { x: 2 });
  assert.equal(from, 'pl');
  assert.equal(sp.connected, true);
});
