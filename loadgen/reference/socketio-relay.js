// A plain socket.io server implementing corelay's relay convention (docs/SOCKETIO.md,
// "The relay convention"), so that corelay-loadgen can measure it beside corelay.
//
// Run:
//   cd loadgen/reference && npm install && node socketio-relay.js   # PORT=3000, HOST=127.0.0.1 by default
//   taskset -c 0 node socketio-relay.js &                            # pinned, as in README
//   corelay-loadgen relay --protocol socketio --url ws://127.0.0.1:3000/socket.io/
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

httpServer.listen(port, host, () => {
  console.log(`socket.io relay listening on ws://${host}:${port}/socket.io/ (pid ${process.pid})`);
});
