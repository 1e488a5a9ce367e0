// A plain socket.io server implementing corelay's relay convention (docs/SOCKETIO.md,
// "The relay convention"), so that corelay-loadgen can measure it beside corelay.
//
// Run:
//   cd loadgen/reference && npm install && node socketio-relay.js   # PORT=3000, HOST=127.0.0.1 by default
//   taskset -c 0 node socketio-relay.js &                            # pinned, as in README
//   corelay-loadgen relay --protocol socketio --url ws://127.0.0.1:3000/socket.io/
//
// Several processes sharing rooms, the way socket.io users do it: with REDIS_URL set
// (redis://host:port), the official Redis adapter (@socket.io/redis-adapter with the
// `redis` client) relays every room broadcast to the other processes through Redis:
//   REDIS_URL=redis://127.0.0.1:6379 PORT=3000 node socketio-relay.js &
//   REDIS_URL=redis://127.0.0.1:6379 PORT=3002 node socketio-relay.js &
// The join ack's `members` then counts this process's members only (a count across
// processes would cost a request to every process per join).
//
// Convention: emit("join", room, ack) -> ack({room, members}); emit("leave", room, ack)
// -> ack({room}); emit("to", room, event, payload) -> every OTHER member of room gets
// emit(event, payload, from) where from is the sender's id. Bad input gets {error}.
"use strict";

const { createServer } = require("http");
const { Server } = require("socket.io");

const port = Number(process.env.PORT || 3000);
const host = process.env.HOST || "127.0.0.1";
const httpServer = createServer();
const io = new Server(httpServer, {
  transports: ["websocket", "polling"],
  maxHttpBufferSize: 1e6,
  cors: { origin: "*" },
});
const redisUrl = process.env.REDIS_URL;

const ok = (room) => typeof room === "string" && room.length > 0 && room.length <= 128;

io.on("connection", (socket) => {
  socket.on("join", (room, ack) => {
    if (!ok(room)) return typeof ack === "function" && ack({ error: "bad_room" });
    socket.join(room);
    const members = io.sockets.adapter.rooms.get(room)?.size ?? 0;
    if (typeof ack === "function") ack({ room, members });
  });
  socket.on("leave", (room, ack) => {
    if (!ok(room)) return typeof ack === "function" && ack({ error: "bad_room" });
    socket.leave(room);
    if (typeof ack === "function") ack({ room });
  });
  socket.on("to", (room, event, payload) => {
    if (!ok(room) || typeof event !== "string" || !socket.rooms.has(room)) {
      socket.emit("error_reply", { error: "not_member" });
      return;
    }
    socket.to(room).emit(event, payload, socket.id);
  });
});

// With Redis, listen only once both connections are up, so that a client that gets in
// is already part of the cluster (benchmark scripts wait for the port).
async function useRedis(url) {
  const { createClient } = require("redis");
  const { createAdapter } = require("@socket.io/redis-adapter");
  const pubClient = createClient({ url });
  const subClient = pubClient.duplicate();
  for (const client of [pubClient, subClient]) {
    client.on("error", (err) => console.error(`redis: ${err.message}`));
  }
  await Promise.all([pubClient.connect(), subClient.connect()]);
  io.adapter(createAdapter(pubClient, subClient));
}

(redisUrl ? useRedis(redisUrl) : Promise.resolve()).then(
  () => {
    httpServer.listen(port, host, () => {
      const via = redisUrl ? ` with the Redis adapter on ${redisUrl}` : "";
      console.log(
        `socket.io relay listening on ws://${host}:${port}/socket.io/${via} (pid ${process.pid})`,
      );
    });
  },
  (err) => {
    console.error(`cannot reach Redis at ${redisUrl}: ${err.message}`);
    process.exit(1);
  },
);
