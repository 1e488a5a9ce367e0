// The socket.io side of tests/interop.rs's mixed-room test:
//   node mixed_peer.js URL ROOM [websocket|polling|default]
// Connects to URL with the official client (transports [websocket] or [polling]; `default`
// leaves the client's own choice, polling then an upgrade to websocket), joins ROOM, prints
//   {"type":"joined","id":"<socket id>","members":<n>,"transport":"<engine transport now>",
//    "opened_with":"<engine transport of the handshake>"}
// and, when the engine upgrades, {"type":"upgrade","transport":"<name>"} (it may come
// before or after the joined line).
// then sends to the room an object (event "from_sio_json", {"b":2,"list":[1,"x"]}) and a
// Buffer (event "from_sio_bin", bytes 1 2 3 255), and prints every event it receives as
//   {"type":"event","event":"<name>","payload":<json>|{"buffer":[bytes...]},"binary":bool,"from":"<id>"}
// Each line on its stdin is a command, {"to":"<room>","event":"<name>","payload":<json>}: it
// emits `to` with an ack and prints the answer as
//   {"type":"ack","event":"<name>","answer":<json>}
// It disconnects and exits 0 when its stdin closes, 1 on a connect error, on any disconnect
// it did not ask for (a parse error among them) or after 30 s.
'use strict';

const { io } = require('socket.io-client');

const [url, room, transport = 'websocket'] = process.argv.slice(2);
if (!url || !room) {
  console.error('usage: node mixed_peer.js URL ROOM [websocket|polling|default]');
  process.exit(2);
}

const print = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const fail = (msg) => {
  console.error(`mixed_peer: ${msg}`);
  process.exit(1);
};
setTimeout(() => fail('gave up after 30 s'), 30_000).unref();

const socket = io(url, {
  reconnection: false,
  ...(transport === 'default' ? {} : { transports: [transport] }),
});
let openedWith = null;
socket.io.on('open', () => {
  openedWith = socket.io.engine.transport.name;
  socket.io.engine.on('upgrade', (t) => print({ type: 'upgrade', transport: t.name }));
});
socket.on('connect_error', (e) => fail(`connect_error: ${e.message}`));
socket.on('disconnect', (reason) => {
  if (reason !== 'io client disconnect') fail(`disconnected: ${reason}`);
});
socket.onAny((event, payload, from) => {
  const binary = Buffer.isBuffer(payload);
  print({
    type: 'event',
    event,
    payload: binary ? { buffer: [...payload] } : payload,
    binary,
    from: from ?? null,
  });
});
socket.on('connect', async () => {
  try {
    const answer = await socket.timeout(5000).emitWithAck('join', room);
    print({
      type: 'joined',
      id: socket.id,
      members: answer.members,
      error: answer.error,
      transport: socket.io.engine.transport.name,
      opened_with: openedWith,
    });
    socket.emit('to', room, 'from_sio_json', { b: 2, list: [1, 'x'] });
    socket.emit('to', room, 'from_sio_bin', Buffer.from([1, 2, 3, 255]));
  } catch (e) {
    fail(`join: ${e.message}`);
  }
});

// On stdin's end: disconnect, and let node exit once the goodbye packets are written (an
// immediate process.exit could drop a polling client's close, leaving the server to notice
// only at the heartbeat timeout).
let input = '';
process.stdin.on('data', (chunk) => {
  input += chunk;
  let newline;
  while ((newline = input.indexOf('\n')) >= 0) {
    const line = input.slice(0, newline);
    input = input.slice(newline + 1);
    if (line.trim() === '') continue;
    const { to, event, payload } = JSON.parse(line);
    socket
      .timeout(5000)
      .emitWithAck('to', to, event, payload)
      .then((answer) => print({ type: 'ack', event, answer }))
      .catch((e) => fail(`to ${event}: ${e.message}`));
  }
});
process.stdin.on('end', () => {
  socket.disconnect();
});
process.stdin.resume();
