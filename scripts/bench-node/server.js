// The peers scripts/bench-node.sh measures the node against, behind the node's own server API so
// one driver (tests/src/bin/wscluster-sendload.rs) measures every target the same way:
//
//   POST /api/v1/users/<user>/messages  {"message": "..."}  Authorization: Bearer <key>
//     -> 200 {"delivered": true, "sessions": n} when a live socket of <user> got it, else 202
//
//   node server.js ws          # ws: GET /connect/<user> upgrades, frames {"type":"message",...}
//   node server.js sio         # Socket.IO, in-memory adapter, connection state recovery
//   node server.js sio-redis   # Socket.IO, Redis Streams adapter, connection state recovery
//
// Settings come from the environment: PORT (0: any free one), API_KEY (required), and for
// sio-redis REDIS_URL and PREFIX (the stream and session keys, flushed by the script). The first
// line on stdout is "listening on 127.0.0.1:<port>". Loopback only.
"use strict";

const http = require("node:http");

const MODES = new Set(["ws", "sio", "sio-redis"]);
const MAX_BODY = 64 * 1024 + 1024; // the node's default --max-frame-bytes plus the envelope
const ROUTE = /^\/api\/v1\/users\/([^/]+)\/messages$/;

const mode = process.argv[2];
if (!MODES.has(mode)) {
  console.error(`usage: node server.js ws|sio|sio-redis (got ${mode})`);
  process.exit(2);
}
const apiKey = process.env.API_KEY;
if (!apiKey) {
  console.error("API_KEY is required");
  process.exit(2);
}
const port = Number(process.env.PORT || 0);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`PORT must be 0-65535 (got ${process.env.PORT})`);
  process.exit(2);
}

function answer(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
  });
  res.end(text);
}

// Reads a bounded JSON body {"message": string}; null (answered) when it is not one.
function readMessage(req, res, done) {
  const chunks = [];
  let size = 0;
  req.on("data", (c) => {
    size += c.length;
    if (size > MAX_BODY) {
      answer(res, 413, { error: "body-too-large" });
      req.destroy();
      return;
    }
    chunks.push(c);
  });
  req.on("end", () => {
    if (size > MAX_BODY) return;
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    } catch {
      answer(res, 400, { error: "invalid-json" });
      return;
    }
    if (!body || typeof body.message !== "string") {
      answer(res, 400, { error: "missing-message" });
      return;
    }
    done(body.message);
  });
}

// The server API: `deliver(user, message)` returns how many live sockets got it.
function api(deliver) {
  return (req, res) => {
    const route = ROUTE.exec(req.url || "");
    if (!route) return answer(res, 404, { error: "not-found" });
    if (req.method !== "POST") return answer(res, 405, { error: "method-not-allowed" });
    if (req.headers.authorization !== `Bearer ${apiKey}`) {
      return answer(res, 401, { error: "unauthorized" });
    }
    let user;
    try {
      user = decodeURIComponent(route[1]);
    } catch {
      return answer(res, 400, { error: "invalid-user-id" });
    }
    readMessage(req, res, (message) => {
      const sessions = deliver(user, message);
      answer(res, sessions > 0 ? 200 : 202, { delivered: sessions > 0, sessions });
    });
  };
}

function listen(server) {
  server.keepAliveTimeout = 60_000;
  server.listen(port, "127.0.0.1", () => {
    console.log(`listening on 127.0.0.1:${server.address().port}`);
  });
}

function serveWs() {
  const { WebSocketServer } = require("ws");
  const users = new Map(); // user -> Set of sockets
  const server = http.createServer(
    api((user, message) => {
      const sockets = users.get(user);
      if (!sockets) return 0;
      const frame = JSON.stringify({ type: "message", content: message });
      for (const s of sockets) s.send(frame);
      return sockets.size;
    }),
  );
  const wss = new WebSocketServer({ noServer: true, maxPayload: 64 * 1024 });
  server.on("upgrade", (req, socket, head) => {
    const m = /^\/connect\/([^/?]+)/.exec(req.url || "");
    let user = null;
    try {
      user = m && decodeURIComponent(m[1]);
    } catch {
      user = null;
    }
    if (!user) return socket.destroy();
    wss.handleUpgrade(req, socket, head, (ws) => {
      let set = users.get(user);
      if (!set) users.set(user, (set = new Set()));
      set.add(ws);
      ws.on("close", () => {
        set.delete(ws);
        if (set.size === 0 && users.get(user) === set) users.delete(user);
      });
      ws.on("error", () => ws.terminate());
      ws.send(JSON.stringify({ type: "ready", recovered: false }));
    });
  });
  listen(server);
}

async function serveSocketIo(withRedis) {
  const { Server } = require("socket.io");
  let io;
  const server = http.createServer(
    api((user, message) => {
      const sessions = io.sockets.adapter.rooms.get(user)?.size ?? 0;
      io.to(user).emit("message", { type: "message", content: message });
      return sessions;
    }),
  );
  const opts = {
    transports: ["websocket"],
    maxHttpBufferSize: 64 * 1024,
    connectionStateRecovery: { maxDisconnectionDuration: 2 * 60 * 1000, skipMiddlewares: true },
  };
  if (withRedis) {
    const { createClient } = require("redis");
    const { createAdapter } = require("@socket.io/redis-streams-adapter");
    const prefix = process.env.PREFIX || "bench-node";
    const client = createClient({ url: process.env.REDIS_URL || "redis://127.0.0.1:6379" });
    client.on("error", (e) => console.error(`redis: ${e.message}`));
    await client.connect();
    opts.adapter = createAdapter(client, {
      streamName: `${prefix}:socket.io`,
      sessionKeyPrefix: `${prefix}:session:`,
    });
  }
  io = new Server(server, opts);
  io.on("connection", (socket) => {
    const user = socket.handshake.query.userId;
    if (typeof user !== "string" || user.length === 0) return socket.disconnect(true);
    // A recovered socket is back in its rooms already.
    if (!socket.recovered) socket.join(user);
  });
  listen(server);
}

if (mode === "ws") {
  serveWs();
} else {
  serveSocketIo(mode === "sio-redis").catch((e) => {
    console.error(`${mode}: ${e.message}`);
    process.exit(1);
  });
}
