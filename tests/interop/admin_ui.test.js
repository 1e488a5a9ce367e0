// The official Socket.IO Admin UI's protocol (@socket.io/admin-ui 0.5, docs/ADMIN_UI.md),
// spoken with the official client as the UI speaks it: a login to the `/admin` namespace
// with `auth: {username, password}` checked against a bcrypt hash (made here with bcryptjs,
// as the package's README makes them), then `session`, `config`, `server_stats` and
// `all_sockets`, the changes as they happen on either shard, and the commands (`join`,
// `leave`, `_disconnect`) acting on the players' sockets.
'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const { EventEmitter } = require('node:events');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const bcrypt = require('bcryptjs');
const { io, Manager } = require('socket.io-client');
const { useCorelay, connected, ack, once, until, within } = require('./lib');

const PASSWORD = 'changeit';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'corelay-admin-ui-'));
const config = path.join(dir, 'corelay.toml');
fs.writeFileSync(
  config,
  [
    'socketio_namespaces = ["/chat"]',
    '[admin_ui]',
    'enabled = true',
    'username = "admin"',
    // Cost 4 keeps a debug build's check short; a real hash costs 10 or more.
    `password_hash = "${bcrypt.hashSync(PASSWORD, 4)}"`,
    'events = true',
    '',
  ].join('\n'),
);

const ctx = useCorelay({ shards: 2, config });
after(() => fs.rmSync(dir, { recursive: true, force: true }));

/** The shard of a client's Engine.IO session: the first two hex digits of its id. */
function shardOf(socket) {
  return parseInt(socket.io.engine.id.slice(0, 2), 16);
}

/**
 * A client of the admin namespace as the UI makes one, and every event it receives from the
 * start, as [name, ...args]; `wait(pred, what)` resolves with the first one that `pred`
 * accepts, within 5 s.
 */
function admin(auth) {
  const socket = io(`${ctx.server.url}/admin`, {
    auth,
    forceNew: true,
    reconnection: false,
    transports: ['websocket'],
  });
  ctx.sockets.push(socket);
  const seen = [];
  const bus = new EventEmitter();
  socket.onAny((...event) => {
    seen.push(event);
    bus.emit('event');
  });
  const wait = (pred, what, ms = 5000) =>
    until(bus, 'event', () => seen.some(pred), ms, what).then(() => seen.find(pred));
  return { socket, seen, wait };
}

/** A player of the relay convention, connected. */
async function player(transports = ['websocket']) {
  const s = io(ctx.server.url, { transports, forceNew: true, reconnection: false });
  ctx.sockets.push(s);
  await connected(s);
  return s;
}

/** Players until there is one on each of the server's two shards (bounded). */
async function playersOnBothShards() {
  const players = [];
  for (let i = 0; i < 24 && new Set(players.map(shardOf)).size < 2; i++) {
    players.push(await player());
  }
  assert.equal(new Set(players.map(shardOf)).size, 2, 'players on both shards');
  return players;
}

/** The connect error of `socket` (it must not connect), within 5 s. */
async function refusal(socket) {
  const [err] = await once(socket, 'connect_error');
  assert.equal(socket.connected, false);
  return err.message;
}

test('a wrong login is refused with the words the UI knows; the right one is let in', async () => {
  const wrongPassword = admin({ username: 'admin', password: 'changeme' });
  assert.equal(await refusal(wrongPassword.socket), 'invalid credentials');
  const wrongUser = admin({ username: 'root', password: PASSWORD });
  assert.equal(await refusal(wrongUser.socket), 'invalid credentials');
  const nothing = admin({});
  assert.equal(await refusal(nothing.socket), 'invalid credentials');
  const forged = admin({ sessionId: 'eyJhbGciOiJIUzI1NiJ9.e30.x' });
  assert.equal(await refusal(forged.socket), 'invalid credentials');
  for (const refused of [wrongPassword, wrongUser, nothing, forged]) {
    assert.deepEqual(refused.seen, [], 'a refused admin is told nothing');
  }

  const ui = admin({ username: 'admin', password: PASSWORD });
  await connected(ui.socket);
  const [, sessionId] = await ui.wait(([e]) => e === 'session', 'session');
  assert.equal(typeof sessionId, 'string');
  const [, config] = await ui.wait(([e]) => e === 'config', 'config');
  for (const feature of ['JOIN', 'LEAVE', 'DISCONNECT', 'MJOIN', 'MLEAVE', 'MDISCONNECT']) {
    assert.ok(config.supportedFeatures.includes(feature), feature);
  }
  assert.ok(config.supportedFeatures.includes('AGGREGATED_EVENTS'));
  assert.ok(config.supportedFeatures.includes('ALL_EVENTS'), 'development mode: sockets shown');

  // The UI reloaded: it logs in again with the session it keeps, without the password.
  const again = admin({ sessionId });
  await connected(again.socket);
  await again.wait(([e]) => e === 'all_sockets', 'all_sockets after a session login');
  assert.ok(!again.seen.some(([e]) => e === 'session'), 'no new session for a session login');
  ui.socket.disconnect();
  again.socket.disconnect();
});

test('server_stats and all_sockets describe the players of both shards', async () => {
  const players = await playersOnBothShards();
  const poller = await player(['polling']);
  const everyone = [...players, poller];
  for (const p of everyone) {
    const joined = await ack(p, 3000, 'join', 'lobby');
    assert.equal(joined.members, everyone.indexOf(p) + 1);
  }

  const ui = admin({ username: 'admin', password: PASSWORD });
  await connected(ui.socket);
  // Counts as the UI sums them: sockets by namespace, clients and those on long-polling
  // (the admin's own session is a client too). Stats come at once, then every 2 s.
  const [, stats] = await ui.wait(
    ([e, s]) =>
      e === 'server_stats' &&
      s.namespaces.find((n) => n.name === '/').socketsCount === everyone.length &&
      s.clientsCount === everyone.length + 1,
    'server_stats counting the players',
  );
  assert.equal(stats.pollingClientsCount, 1);
  assert.equal(stats.namespaces.find((n) => n.name === '/admin').socketsCount, 1);
  assert.equal(stats.namespaces.find((n) => n.name === '/chat').socketsCount, 0);
  assert.equal(typeof stats.serverId, 'string');
  assert.equal(typeof stats.pid, 'number');
  assert.ok(stats.uptime > 0);

  const [, sockets] = await ui.wait(([e]) => e === 'all_sockets', 'all_sockets');
  for (const p of everyone) {
    const s = sockets.find((s) => s.id === p.id);
    assert.ok(s, `${p.id} is listed`);
    assert.equal(s.nsp, '/');
    assert.deepEqual(s.rooms, [p.id, 'lobby'], 'its own room first, as socket.io has it');
    assert.equal(s.transport, p === poller ? 'polling' : 'websocket');
    assert.equal(s.data.shard, shardOf(p));
    assert.equal(s.handshake.address, '127.0.0.1');
    assert.equal(typeof s.clientId, 'string');
    assert.ok(!Number.isNaN(new Date(s.handshake.issued).getTime()));
  }
  const me = sockets.find((s) => s.id === ui.socket.id);
  assert.equal(me.nsp, '/admin', 'the admin namespace is listed too, as the package lists it');

  // The rates come with the stats that follow: a player sends at each stats until they show.
  ui.socket.on('server_stats', () => everyone[0].emit('to', 'lobby', 'tick', 1));
  await ui.wait(
    ([e, s]) => e === 'server_stats' && s.aggregatedEvents.some((a) => a.type === 'packetsIn'),
    'aggregated events',
    7000,
  );
  for (const p of everyone) p.disconnect();
  ui.socket.disconnect();
});

test('changes on either shard reach the admin as they happen', async () => {
  const ui = admin({ username: 'admin', password: PASSWORD });
  await connected(ui.socket);
  await ui.wait(([e]) => e === 'all_sockets', 'all_sockets');
  const players = await playersOnBothShards();
  const uiShard = shardOf(ui.socket);
  const elsewhere = players.find((p) => shardOf(p) !== uiShard);
  const here = players.find((p) => shardOf(p) === uiShard);

  for (const p of [elsewhere, here]) {
    const [, socket] = await ui.wait(
      ([e, s]) => e === 'socket_connected' && s.id === p.id,
      `socket_connected of a player on shard ${shardOf(p)}`,
    );
    assert.equal(socket.nsp, '/');
    await ack(p, 3000, 'join', 'arena');
    await ui.wait(
      ([e, nsp, room, id]) => e === 'room_joined' && nsp === '/' && room === 'arena' && id === p.id,
      `room_joined of shard ${shardOf(p)}`,
    );
    p.emit('to', 'arena', 'shout', { n: shardOf(p) });
    const [, nsp, id, args, at] = await ui.wait(
      ([e, , id, args]) => e === 'event_received' && id === p.id && args[0] === 'to',
      'event_received',
    );
    assert.equal(nsp, '/');
    assert.deepEqual(args, ['to', 'arena', 'shout', { n: shardOf(p) }]);
    assert.ok(!Number.isNaN(new Date(at).getTime()));
    await ack(p, 3000, 'leave', 'arena');
    await ui.wait(
      ([e, , room, id]) => e === 'room_left' && room === 'arena' && id === p.id,
      'room_left',
    );
  }

  // A client that starts on long-polling and upgrades: its transport changes in the UI.
  const upgrading = io(ctx.server.url, { forceNew: true, reconnection: false });
  ctx.sockets.push(upgrading);
  await connected(upgrading);
  await ui.wait(
    ([e, s]) => e === 'socket_updated' && s.id === upgrading.id && s.transport === 'websocket',
    'socket_updated to websocket',
  );

  // A player that leaves: disconnected, and out of its rooms.
  await ack(elsewhere, 3000, 'join', 'lobby2');
  const id = elsewhere.id;
  elsewhere.disconnect();
  const [, , , reason] = await ui.wait(
    ([e, nsp, sid]) => e === 'socket_disconnected' && nsp === '/' && sid === id,
    'socket_disconnected',
  );
  assert.equal(reason, 'client namespace disconnect');
  await ui.wait(
    ([e, , room, sid]) => e === 'room_left' && room === 'lobby2' && sid === id,
    'room_left on disconnect',
  );
  for (const p of [...players, upgrading]) p.disconnect();
  ui.socket.disconnect();
});

test('commands: join, leave and disconnect act on the players, on every shard', async () => {
  const ui = admin({ username: 'admin', password: PASSWORD });
  await connected(ui.socket);
  await ui.wait(([e]) => e === 'all_sockets', 'all_sockets');
  const players = await playersOnBothShards();
  const [a, b] = [players[0], players.find((p) => shardOf(p) !== shardOf(players[0]))];

  // One socket, by its id (the UI's "join a room" on a socket's page).
  ui.socket.emit('join', '/', 'vip', a.id);
  await ui.wait(
    ([e, , room, id]) => e === 'room_joined' && room === 'vip' && id === a.id,
    'room_joined by the admin',
  );
  // Really a member: the room takes its messages.
  assert.deepEqual(await ack(a, 3000, 'to', 'vip', 'hi', 1), { room: 'vip' });
  assert.deepEqual(await ack(b, 3000, 'to', 'vip', 'hi', 1), { error: 'not_member' });

  // The protocol's emit (no button in the UI of 0.5): to one socket, by its id.
  const notice = once(a, 'notice');
  ui.socket.emit('emit', '/', a.id, 'notice', { from: 'ops' });
  assert.deepEqual(await notice, [{ from: 'ops' }]);

  // Every socket of a room (the Rooms page): b joins vip by the room's filter too.
  ui.socket.emit('join', '/', 'vip', b.id);
  await ui.wait(([e, , room, id]) => e === 'room_joined' && room === 'vip' && id === b.id, 'b in vip');
  ui.socket.emit('leave', '/', 'vip');
  for (const p of [a, b]) {
    await ui.wait(
      ([e, , room, id]) => e === 'room_left' && room === 'vip' && id === p.id,
      `room_left of ${p.id}`,
    );
  }
  assert.deepEqual(await ack(a, 3000, 'to', 'vip', 'hi', 1), { error: 'not_member' });

  // Disconnect one chosen socket, on the other shard: it hears "io server disconnect" and
  // does not come back; the others stay.
  const gone = once(b, 'disconnect');
  const bId = b.id; // the client forgets it once disconnected
  ui.socket.emit('_disconnect', '/', false, bId);
  const [reason] = await gone;
  assert.equal(reason, 'io server disconnect');
  const [, , , why] = await ui.wait(
    ([e, , id]) => e === 'socket_disconnected' && id === bId,
    'socket_disconnected by the admin',
  );
  assert.equal(why, 'server namespace disconnect');
  assert.ok(a.connected, 'the others stay');
  assert.equal((await ack(a, 3000, 'join', 'still-here')).members, 1);

  // Close a whole client: every namespace it has goes, as closing its connection would.
  const manager = new Manager(ctx.server.url, { forceNew: true, reconnection: false, transports: ['websocket'] });
  const main = manager.socket('/');
  const chat = manager.socket('/chat');
  ctx.sockets.push(main, chat);
  await Promise.all([connected(main), connected(chat)]);
  await ui.wait(([e, s]) => e === 'socket_connected' && s.id === chat.id && s.nsp === '/chat', 'chat socket');
  const both = Promise.all([once(main, 'disconnect'), once(chat, 'disconnect')]);
  ui.socket.emit('_disconnect', '/', true, main.id);
  await within(5000, 'both sockets of the client', both);
  for (const p of players) p.disconnect();
  ui.socket.disconnect();
});
