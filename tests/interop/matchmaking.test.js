// Matchmaking (docs/ROOMS.md, "Matchmaking over the wire") with the official client:
// mm:queue, mm:matched into a room the players are members of already, parties that are
// never split, mm:cancel, mm:timeout, a disconnect that withdraws a party, refusals that
// touch nobody else, and the guide's game flow (queue, match, play, host leaves, migrate).
'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { io } = require('socket.io-client');
const { useCorelay, connected, ack, once, within, until, withoutOffset } = require('./lib');

// Queues of their own per test, so that a ticket one test leaves cannot match another's.
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'corelay-mm-'));
const config = path.join(dir, 'corelay.toml');
fs.writeFileSync(
  config,
  [
    '[matchmaking.queues.trio]      # a party of 2 and a solo: one room of 3',
    'match_size = 3',
    '[matchmaking.queues.trio.room]',
    'private = false',
    'metadata = { mode = "trio" }',
    '',
    '[matchmaking.queues.squad]     # parties that wait for a third nobody sends',
    'match_size = 3',
    '',
    '[matchmaking.queues.quick]     # times out at once',
    'timeout_s = 1',
    '',
    '[matchmaking.queues.calm]      # refusals next to a waiting bystander',
    'match_size = 3',
    '[matchmaking.queues.calm.room]',
    'max_members = 4',
    '',
  ].join('\n'),
);

const ctx = useCorelay({ shards: 2, config });
after(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A connected official client; its player id is its `socket.id`. */
async function player() {
  const s = io(ctx.server.url, { transports: ['websocket'], forceNew: true, reconnection: false });
  ctx.sockets.push(s);
  await connected(s);
  return s;
}

/** Every event `socket` receives from now on, as [name, ...args]. */
function record(socket) {
  const seen = [];
  socket.onAny((...args) => seen.push(args));
  return seen;
}

/** The `mm:queue` ack of `socket` for `ticket`, after checking it is a ticket id. */
async function queued(socket, ticket) {
  const answer = await ack(socket, 3000, 'mm:queue', ticket);
  assert.equal(typeof answer.ticket_id, 'number', `a ticket: ${JSON.stringify(answer)}`);
  return answer.ticket_id;
}

// The guide's helper (docs/ROOMS.md, "A matched game with the official client"), as it is
// there: queues, resolves with mm:matched, rejects when the ticket ends otherwise.
function findGame(socket, ticket) {
  return new Promise((resolve, reject) => {
    const handlers = {
      'mm:matched': (match) => {
        stop();
        resolve(match);
      },
      'mm:timeout': () => {
        stop();
        reject(new Error('no game found'));
      },
      'mm:cancelled': ({ reason }) => {
        stop();
        reject(new Error(`ticket ${reason}`));
      },
    };
    const stop = () => {
      for (const [event, handler] of Object.entries(handlers)) socket.off(event, handler);
    };
    for (const [event, handler] of Object.entries(handlers)) socket.on(event, handler);
    socket.emitWithAck('mm:queue', ticket).then((answer) => {
      if (answer.error) {
        stop();
        reject(new Error(answer.error));
      }
    });
  });
}

test('two players are matched into one room, members already, and play', async () => {
  const [ann, bo] = await Promise.all([player(), player()]);
  const joinedNotices = [];
  for (const s of [ann, bo]) s.on('member_joined', (n) => joinedNotices.push(n));

  const matchedAnn = once(ann, 'mm:matched');
  const matchedBo = once(bo, 'mm:matched');
  const annTicket = await queued(ann, { skill: 1500 });
  const boTicket = await queued(bo, { queue: 'default', skill: 1520 });
  assert.notEqual(annTicket, boTicket);
  const [[a], [b]] = await Promise.all([matchedAnn, matchedBo]);

  assert.equal(a.ticket_id, annTicket);
  assert.equal(b.ticket_id, boTicket);
  assert.match(a.code, /^[23456789ABCDEFGHJKMNPQRSTUVWXYZ]{6}$/);
  assert.equal(a.room, `#${a.code}`);
  // Both are told the same room, roster and host: the oldest ticket's player, first.
  const { ticket_id: _a, ...sharedA } = a;
  const { ticket_id: _b, ...sharedB } = b;
  assert.deepEqual(sharedA, sharedB);
  assert.deepEqual(a.players, [{ id: ann.id }, { id: bo.id }]);
  assert.equal(a.host, ann.id);

  // Members already, without a join: a message reaches the other at once, both ways.
  const hello = once(bo, 'hello');
  assert.deepEqual(await ack(ann, 3000, 'to', a.room, 'hello', { from: 'ann' }), { room: a.room });
  const [payload, from] = await hello;
  assert.deepEqual(payload, { from: 'ann' });
  assert.equal(from, ann.id);
  const back = once(ann, 'back');
  bo.emit('to', b.room, 'back', 2);
  assert.equal((await back)[1], bo.id);
  assert.deepEqual(joinedNotices, [], 'no member_joined for a match\'s own players');

  // The built-in queue's room: private (not listed), as large as a match (a third is
  // room_full even with the code), and the tickets are over.
  const listed = await ack(ann, 3000, 'room:list', {});
  assert.ok(!listed.rooms.some((r) => r.room === a.room), `private: ${JSON.stringify(listed)}`);
  const outsider = await player();
  assert.deepEqual(await ack(outsider, 3000, 'join', { code: a.code }), { error: 'room_full' });
  assert.deepEqual(await ack(ann, 3000, 'mm:cancel', annTicket), { error: 'not_queued' });
  for (const s of [ann, bo, outsider]) s.disconnect();
});

test('a party of 2 and a solo share a room of 3; the party is never split', async () => {
  const [leader, friend, early, late] = await Promise.all([player(), player(), player(), player()]);

  // Friends learn each other's ids in a lobby room: its players, the leader first.
  const lobby = await ack(leader, 3000, 'room:create', { private: true });
  const joined = await ack(friend, 3000, 'join', { code: lobby.code });
  const party = joined.players.map((p) => p.id);
  assert.deepEqual(party, [leader.id, friend.id]);

  // Two solos wait first: with the party they are four, one more than a match, so one
  // solo goes with the party and the other keeps waiting.
  const earlyTicket = await queued(early, { queue: 'trio', skill: 1000 });
  const lateTicket = await queued(late, { queue: 'trio', skill: 1000 });
  const outcome = (s) =>
    within(5000, `mm:matched of ${s.id}`, findGame(s, { queue: 'trio', skill: 1000, party }));
  const soloMatches = [];
  const firstSolo = within(
    5000,
    'a solo matched',
    new Promise((resolve) => {
      for (const s of [early, late]) {
        s.on('mm:matched', (m) => {
          soloMatches.push({ s, m });
          resolve();
        });
      }
    }),
  );
  // The party's ticket is one, whoever asks; it waits once both members have queued.
  const [l, f] = await Promise.all([outcome(leader), outcome(friend), firstSolo]);
  const [solo] = soloMatches;
  const [left, leftTicket] = solo.s === early ? [late, lateTicket] : [early, earlyTicket];

  assert.equal(l.ticket_id, f.ticket_id, 'one ticket for the party');
  assert.equal(l.room, f.room);
  assert.equal(solo.m.room, l.room);
  assert.deepEqual(
    l.players.map((p) => p.id).sort(),
    [leader.id, friend.id, solo.s.id].sort(),
    'the whole party and one solo',
  );
  assert.deepEqual(f.players, l.players);
  assert.deepEqual(solo.m.players, l.players);
  // The host is the oldest ticket's: the solo queued before the party was whole.
  assert.equal(l.host, solo.s.id);
  assert.equal(l.players[0].id, solo.s.id);
  // The other solo was not matched: its ticket still waits.
  assert.deepEqual(await ack(left, 3000, 'mm:cancel', leftTicket), { ticket_id: leftTicket });

  // The queue's room options: listed (public), its metadata, as large as a match.
  const listed = await ack(friend, 3000, 'room:list', { metadata: { mode: 'trio' } });
  assert.deepEqual(listed, {
    rooms: [{ room: l.room, members: 3, max_members: 3, metadata: { mode: 'trio' } }],
    next_page: null,
  });
  const hi = once(solo.s, 'hi');
  friend.emit('to', l.room, 'hi', 'from the party');
  assert.deepEqual(withoutOffset(await hi), ['from the party', friend.id]);
  for (const s of [leader, friend, early, late]) s.disconnect();
});

test('cancel: the ack names the ticket, a party member is told who cancelled', async () => {
  const [solo, leader, friend] = await Promise.all([player(), player(), player()]);

  // A solo ticket: cancelled by its id, then nothing is queued.
  const ticket = await queued(solo, { queue: 'squad' });
  assert.deepEqual(await ack(solo, 3000, 'mm:cancel', ticket), { ticket_id: ticket });
  assert.deepEqual(await ack(solo, 3000, 'mm:cancel', ticket), { error: 'not_queued' });
  assert.deepEqual(await ack(solo, 3000, 'mm:cancel'), { error: 'not_queued' });

  // A party waiting for a third: the friend cancels (without naming the ticket), the
  // leader is told, and both may queue again.
  const party = [leader.id, friend.id];
  const leaderTicket = await queued(leader, { queue: 'squad', party });
  assert.equal(await queued(friend, { queue: 'squad', party }), leaderTicket, 'the same ticket');
  const told = once(leader, 'mm:cancelled');
  assert.deepEqual(await ack(friend, 3000, 'mm:cancel'), { ticket_id: leaderTicket });
  assert.deepEqual((await told)[0], {
    ticket_id: leaderTicket,
    reason: 'cancelled',
    player: friend.id,
  });
  assert.deepEqual(await ack(leader, 3000, 'mm:cancel', leaderTicket), { error: 'not_queued' });
  const again = await queued(leader, { queue: 'squad' });
  assert.deepEqual(await ack(leader, 3000, 'mm:cancel', again), { ticket_id: again });
  for (const s of [solo, leader, friend]) s.disconnect();
});

test('timeout: a ticket that waited its queue\'s timeout_s gets mm:timeout', async () => {
  const [alone, leader, absent] = await Promise.all([player(), player(), player()]);

  const timedOut = once(alone, 'mm:timeout', 5000);
  const ticket = await queued(alone, { queue: 'quick', skill: 10 });
  assert.deepEqual((await timedOut)[0], { ticket_id: ticket });
  // Over: a cancel finds nothing, and the player may queue again.
  assert.deepEqual(await ack(alone, 3000, 'mm:cancel', ticket), { error: 'not_queued' });
  const next = await queued(alone, { queue: 'quick' });
  assert.deepEqual(await ack(alone, 3000, 'mm:cancel', next), { ticket_id: next });

  // A party whose other member never queues times out the same way.
  const partyTimedOut = once(leader, 'mm:timeout', 5000);
  const partyTicket = await queued(leader, { queue: 'quick', party: [leader.id, absent.id] });
  assert.deepEqual((await partyTimedOut)[0], { ticket_id: partyTicket });
  for (const s of [alone, leader, absent]) s.disconnect();
});

test('a party member who disconnects withdraws the party; the other is told', async () => {
  const [leader, friend] = await Promise.all([player(), player()]);
  const party = [leader.id, friend.id];
  const ticket = await queued(leader, { queue: 'squad', party });
  await queued(friend, { queue: 'squad', party });
  const told = once(leader, 'mm:cancelled');
  const friendId = friend.id;
  friend.disconnect();
  assert.deepEqual((await told)[0], {
    ticket_id: ticket,
    reason: 'disconnected',
    player: friendId,
  });
  assert.deepEqual(await ack(leader, 3000, 'mm:cancel'), { error: 'not_queued' });
  leader.disconnect();
});

test('a lost connection withdraws the ticket even when the session is recovered', async () => {
  const leader = io(ctx.server.url, {
    transports: ['websocket'],
    forceNew: true,
    reconnectionDelay: 20,
    reconnectionDelayMax: 50,
    randomizationFactor: 0,
  });
  ctx.sockets.push(leader);
  await connected(leader);
  const friend = await player();
  const party = [leader.id, friend.id];
  const ticket = await queued(leader, { queue: 'squad', party });
  await queued(friend, { queue: 'squad', party });

  // Cut as a network would: no close handshake; the official client reconnects by itself.
  const told = once(friend, 'mm:cancelled');
  const back = once(leader, 'connect');
  const leaderId = leader.id;
  leader.io.engine.transport.ws._socket.destroy();
  assert.deepEqual((await told)[0], {
    ticket_id: ticket,
    reason: 'disconnected',
    player: leaderId,
  });
  await back;
  assert.equal(leader.recovered, true);
  assert.equal(leader.id, leaderId);
  // Recovered or not, the ticket is gone: the client queues again.
  assert.deepEqual(await ack(leader, 3000, 'mm:cancel'), { error: 'not_queued' });
  const again = await queued(leader, { queue: 'squad' });
  assert.deepEqual(await ack(leader, 3000, 'mm:cancel', again), { ticket_id: again });
  leader.disconnect();
  friend.disconnect();
});

// The party's leader (its list's first id) is its ticket's first player, and so the host,
// whichever member's mm:queue reached the queue first.
test('a party\'s leader is host even when a friend queues first', async () => {
  const [leader, friend] = await Promise.all([player(), player()]);
  const party = [leader.id, friend.id];
  const matched = [leader, friend].map((s) => once(s, 'mm:matched'));
  const ticket = await queued(friend, { party });
  assert.equal(await queued(leader, { party }), ticket);
  // A party of 2 fills the built-in 1v1 queue's match by itself.
  const [[m], [mFriend]] = await Promise.all(matched);
  assert.deepEqual(mFriend, m);
  assert.equal(m.host, leader.id, 'the leader is host');
  assert.deepEqual(m.players, [{ id: leader.id }, { id: friend.id }], 'the host first');
  leader.disconnect();
  friend.disconnect();
});

test('bad requests are refused to their sender only', async () => {
  const [bystander, bad, third] = await Promise.all([player(), player(), player()]);
  const seen = record(bystander);
  await queued(bystander, { queue: 'calm', skill: 7 });

  const refused = async (args, error) =>
    assert.deepEqual(await ack(bad, 3000, ...args), { error }, JSON.stringify(args));
  await refused(['mm:queue', 'calm'], 'bad_arguments');
  await refused(['mm:queue', { queue: 5 }], 'bad_arguments');
  await refused(['mm:queue', { queue: 'calm', skill: 'high' }], 'bad_arguments');
  await refused(['mm:queue', { queue: 'calm', region: ['eu'] }], 'bad_arguments');
  await refused(['mm:queue', { queue: 'calm', properties: { mode: { a: 1 } } }], 'bad_arguments');
  await refused(['mm:queue', { queue: 'calm', party: bad.id }], 'bad_arguments');
  await refused(['mm:queue', { queue: 'calm', party: [bad.id, 3] }], 'bad_arguments');
  await refused(['mm:cancel', 'my ticket'], 'bad_arguments');
  await refused(['mm:queue', { queue: 'no-such-queue' }], 'unknown_queue');
  // A party that does not name its sender is not a ticket of its.
  await refused(['mm:queue', { queue: 'calm', party: [bystander.id, third.id] }], 'invalid_value');
  // A party larger than the queue's match (3) cannot be matched.
  await refused(['mm:queue', { queue: 'calm', party: [bad.id, 'b', 'c', 'd'] }], 'invalid_value');
  await refused(['mm:cancel'], 'not_queued');
  // Without an ack the refusal comes as an `error` event.
  const error = once(bad, 'error');
  bad.emit('mm:queue', { skill: 'high' });
  assert.deepEqual((await error)[0], { error: 'bad_arguments', event: 'mm:queue' });

  const ticket = await queued(bad, { queue: 'calm', skill: 7 });
  await refused(['mm:queue', { queue: 'calm' }], 'already_queued');
  await refused(['mm:queue', { queue: 'trio' }], 'already_queued');
  assert.ok(bad.connected, 'refusals keep the connection');

  // The first ticket still stands: a third player completes the match of all three, and
  // the bystander saw nothing but its match.
  const matched = [bystander, bad, third].map((s) => once(s, 'mm:matched'));
  await queued(third, { queue: 'calm', skill: 7 });
  const [[m], [mBad]] = await Promise.all(matched);
  assert.equal(mBad.ticket_id, ticket);
  assert.deepEqual(
    m.players.map((p) => p.id),
    [bystander.id, bad.id, third.id],
    'oldest ticket first',
  );
  assert.equal(m.host, bystander.id);
  assert.deepEqual(seen.map(([name]) => name), ['mm:matched']);
  // The queue's room.max_members (4) leaves a seat for a player with the code.
  const guest = await player();
  const joinedNotice = once(bystander, 'member_joined');
  const joined = await ack(guest, 3000, 'join', { code: m.code });
  assert.equal(joined.members, 4);
  assert.equal(joined.host, bystander.id);
  assert.equal((await joinedNotice)[0].player, guest.id);
  for (const s of [bystander, bad, third, guest]) s.disconnect();
});

test('the guide\'s game: queue, match, play, the host leaves, the other runs it', async () => {
  const [ann, bo] = await Promise.all([player(), player()]);
  const moves = { [ann.id]: [], [bo.id]: [] };
  const hosts = [];
  for (const socket of [ann, bo]) {
    // As in docs/ROOMS.md: every player listens, then queues.
    socket.on('move', (payload, from) => moves[socket.id].push({ payload, from }));
    socket.on('room:host', ({ room, host, state }) => {
      if (host === socket.id) hosts.push({ who: socket.id, room, state });
    });
  }
  const [matchA, matchB] = await within(
    5000,
    'both matched',
    Promise.all([findGame(ann, { skill: 1500 }), findGame(bo, { skill: 1480 })]),
  );
  assert.equal(matchA.room, matchB.room);
  assert.equal(matchA.host, matchB.host);
  const { room } = matchA;
  const host = matchA.host === ann.id ? ann : bo;
  const other = host === ann ? bo : ann;

  // The host keeps the game's state in the room.
  assert.deepEqual(await ack(host, 3000, 'room:set_state', room, { turn: 1, board: [] }), { room });
  // Playing: each player's moves reach the other.
  host.emit('to', room, 'move', { x: 1, y: 2 });
  other.emit('to', room, 'move', { x: 3, y: 4 });
  await until(other, 'move', () => moves[other.id].length === 1, 3000, 'the host\'s move');
  await until(host, 'move', () => moves[host.id].length === 1, 3000, 'the other\'s move');
  assert.deepEqual(moves[other.id], [{ payload: { x: 1, y: 2 }, from: host.id }]);
  assert.deepEqual(moves[host.id], [{ payload: { x: 3, y: 4 }, from: other.id }]);
  assert.deepEqual(
    await ack(host, 3000, 'room:set_state', room, { turn: 2, board: [[1, 2], [3, 4]] }),
    { room },
  );

  // The host leaves: the other is host now, with the state, and may act as host.
  const migrated = once(other, 'room:host');
  assert.deepEqual(await ack(host, 3000, 'leave', room), { room });
  await migrated;
  assert.deepEqual(hosts, [
    { who: other.id, room, state: { turn: 2, board: [[1, 2], [3, 4]] } },
  ]);
  assert.deepEqual(await ack(other, 3000, 'room:set_state', room, { turn: 3 }), { room });
  ann.disconnect();
  bo.disconnect();
});
