// The SocketCluster side of tests/interop.rs's mixed-room test:
//   node sc_peer.js PORT CHANNEL
// Connects to 127.0.0.1:PORT with the official client (npm socketcluster-client), subscribes
// to CHANNEL and prints {"type":"subscribed","id":"<socket id>"}, then every message of the
// channel as {"type":"message","data":<json>}. Each line on its stdin is a command,
// {"publish":<json>} or {"publish_buffer":[bytes...]}: it publishes that (a Buffer for the
// second) to CHANNEL with invokePublish and prints {"type":"published"}.
// It disconnects and exits 0 when its stdin closes, 1 on any error, on a disconnect it did
// not ask for, or after 30 s.
'use strict';

const scClient = require('socketcluster-client');

const [port, channelName] = process.argv.slice(2);
if (!port || !channelName) {
  console.error('usage: node sc_peer.js PORT CHANNEL');
  process.exit(2);
}

const print = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const fail = (msg) => {
  console.error(`sc_peer: ${msg}`);
  process.exit(1);
};
setTimeout(() => fail('gave up after 30 s'), 30_000).unref();

const socket = scClient.create({ hostname: '127.0.0.1', port: Number(port), autoReconnect: false });
let leaving = false;

(async () => {
  for await (const { error } of socket.listener('error')) fail(`error: ${error.message}`);
})();
(async () => {
  for await (const { code } of socket.listener('disconnect')) {
    if (!leaving) fail(`disconnected with ${code}`);
  }
})();

const channel = socket.subscribe(channelName);
(async () => {
  for await (const { error } of channel.listener('subscribeFail')) fail(`subscribe: ${error.message}`);
})();
(async () => {
  await channel.listener('subscribe').once();
  print({ type: 'subscribed', id: socket.id });
})();
(async () => {
  for await (const data of channel) print({ type: 'message', data });
})();

let input = '';
process.stdin.on('data', (chunk) => {
  input += chunk;
  let newline;
  while ((newline = input.indexOf('\n')) >= 0) {
    const line = input.slice(0, newline);
    input = input.slice(newline + 1);
    if (line.trim() === '') continue;
    const command = JSON.parse(line);
    const data =
      'publish_buffer' in command ? Buffer.from(command.publish_buffer) : command.publish;
    socket
      .invokePublish(channelName, data)
      .then(() => print({ type: 'published' }))
      .catch((e) => fail(`publish: ${e.message}`));
  }
});
process.stdin.on('end', () => {
  leaving = true;
  socket.disconnect();
  process.exit(0);
});
process.stdin.resume();
