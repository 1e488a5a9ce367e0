// The Node SocketCluster server (npm socketcluster-server, pinned in package.json and
// package-lock.json), as SocketCluster users run one worker of it, so that corelay-loadgen
// can measure it beside corelay's /socketcluster/ endpoint (scripts/bench-sc.sh).
//
// Run:
//   cd loadgen/peers/socketcluster && npm ci && node server.js   # PORT=8000, HOST=127.0.0.1
//   taskset -c 0 node server.js &                                  # pinned, as bench-sc.sh does
//   corelay-loadgen relay --protocol socketcluster --url ws://127.0.0.1:8000/socketcluster/
//
// One process, one worker: a plain WebSocket server (the `ws` engine, no TLS, no
// per-message deflate) on an HTTP server that answers nothing else, at the client's default
// path /socketcluster/. Open channels: no middleware and no auth, so every client may
// subscribe and publish to any channel (allowClientPublish, the default). A publish goes to
// every subscriber of its channel, the publisher included, through the built-in simple
// broker (which encodes each publish once for all subscribers). Every other option keeps
// socketcluster-server's default (pingInterval 8 s, pingTimeout 30 s, protocolVersion 2:
// pings are empty messages). The benchmark adds nothing per message.
"use strict";

const http = require("http");
const socketClusterServer = require("socketcluster-server");

const port = Number(process.env.PORT || 8000);
const host = process.env.HOST || "127.0.0.1";

const httpServer = http.createServer((req, res) => {
  res.writeHead(404);
  res.end();
});
const agServer = socketClusterServer.attach(httpServer, {
  path: "/socketcluster/",
});

// Errors and warnings are reported, never thrown: a client's bad input closes only it.
(async () => {
  for await (const { error } of agServer.listener("error")) {
    console.error(`socketcluster-server error: ${error && error.message}`);
  }
})();
(async () => {
  for await (const { warning } of agServer.listener("warning")) {
    // A client that goes away mid-write is routine under load; keep the log short.
    if (warning && warning.name !== "SocketProtocolError") {
      console.error(`socketcluster-server warning: ${warning.message}`);
    }
  }
})();

httpServer.listen(port, host, () => {
  const version = require("socketcluster-server/package.json").version;
  console.log(`socketcluster-server ${version} on ws://${host}:${port}/socketcluster/ (pid ${process.pid})`);
});

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    agServer.close();
    httpServer.close(() => process.exit(0));
    // Open sockets keep the server up: do not wait for them.
    setTimeout(() => process.exit(0), 500).unref();
  });
}
