// Preload for loadgen/reference/socketio-relay.js, which always listens on 127.0.0.1:
// with HOST set, its listen(port, "127.0.0.1") binds HOST instead. scripts/bench-netns.sh
// needs this to reach the unchanged reference server from another network namespace.
//
//   HOST=10.77.0.1 PORT=3000 node -r ./loadgen/peers/node/listen-host.js \
//       loadgen/reference/socketio-relay.js
"use strict";

const net = require("net");

const host = process.env.HOST;
if (host && host !== "127.0.0.1") {
  const listen = net.Server.prototype.listen;
  net.Server.prototype.listen = function (...args) {
    if (typeof args[0] === "number" && args[1] === "127.0.0.1") {
      args[1] = host;
      console.log(`listen-host.js: listening on ${host}:${args[0]} instead of 127.0.0.1`);
    }
    return listen.apply(this, args);
  };
}
