// A minimal RFC 6455 server over node:net for the client's tests: the handshake, unmasked text
// and close frames out, masked text and close frames in. No dependencies. Each connection is
// handed to the test as a `FakeSocket` in arrival order; `refuse` answers the next handshakes
// (and plain GETs) with an HTTP status instead.
import { createHash } from "node:crypto";
import net from "node:net";

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/** One accepted WebSocket connection, seen from the server. */
export class FakeSocket {
  constructor(socket, url) {
    this.socket = socket;
    /** The request target, e.g. `/connect/alice?since=3&epoch=e1`. */
    this.url = new URL(url, "http://fake");
    /** Text frames the client sent. */
    this.received = [];
    this.buffer = Buffer.alloc(0);
    this.closed = new Promise((resolve) => { this._closed = resolve; });
    socket.on("data", (chunk) => this._data(chunk));
    socket.on("close", () => this._closed(this.closeCode ?? 1006));
    socket.on("error", () => {});
  }

  /** Sends a text frame (an object is sent as JSON). */
  send(value) {
    const text = typeof value === "string" ? value : JSON.stringify(value);
    this.socket.write(frame(0x1, Buffer.from(text)));
  }

  /** Sends a close frame with `code` and ends the connection. */
  close(code, reason = "") {
    const body = Buffer.alloc(2 + Buffer.byteLength(reason));
    body.writeUInt16BE(code, 0);
    body.write(reason, 2);
    this.closeCode = code;
    this.socket.end(frame(0x8, body));
  }

  /** Drops the TCP connection without a close frame (the client sees 1006). */
  drop() {
    this.socket.destroy();
  }

  _data(chunk) {
    this.buffer = Buffer.concat([this.buffer, chunk]);
    for (;;) {
      const f = parseClientFrame(this.buffer);
      if (!f) return;
      this.buffer = this.buffer.subarray(f.length);
      if (f.opcode === 0x1) this.received.push(f.payload.toString("utf8"));
      if (f.opcode === 0x8) {
        this.closeCode = f.payload.length >= 2 ? f.payload.readUInt16BE(0) : 1005;
        this.socket.end(frame(0x8, f.payload.subarray(0, 2)));
      }
    }
  }
}

function frame(opcode, payload) {
  const n = payload.length;
  let head;
  if (n < 126) head = Buffer.from([0x80 | opcode, n]);
  else if (n < 65536) {
    head = Buffer.alloc(4);
    head[0] = 0x80 | opcode;
    head[1] = 126;
    head.writeUInt16BE(n, 2);
  } else {
    head = Buffer.alloc(10);
    head[0] = 0x80 | opcode;
    head[1] = 127;
    head.writeBigUInt64BE(BigInt(n), 2);
  }
  return Buffer.concat([head, payload]);
}

function parseClientFrame(buf) {
  if (buf.length < 2) return null;
  const opcode = buf[0] & 0x0f;
  let len = buf[1] & 0x7f;
  let at = 2;
  if (len === 126) {
    if (buf.length < 4) return null;
    len = buf.readUInt16BE(2);
    at = 4;
  } else if (len === 127) {
    if (buf.length < 10) return null;
    len = Number(buf.readBigUInt64BE(2));
    at = 10;
  }
  const masked = (buf[1] & 0x80) !== 0;
  const maskAt = at;
  if (masked) at += 4;
  if (buf.length < at + len) return null;
  const payload = Buffer.from(buf.subarray(at, at + len));
  if (masked) for (let i = 0; i < len; i++) payload[i] ^= buf[maskAt + (i % 4)];
  return { opcode, payload, length: at + len };
}

/** A listening fake server on 127.0.0.1; `await server.next()` yields connections in order. */
export class FakeServer {
  constructor() {
    this.connections = [];
    this.requests = [];
    this.refusals = [];
    this._waiters = [];
    this._taken = new Set();
    this.server = net.createServer((s) => this._accept(s));
  }

  /** Starts listening on a free port. */
  async listen() {
    await new Promise((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.url = `ws://127.0.0.1:${this.server.address().port}`;
    return this;
  }

  /** Answers the next `count` requests (handshakes or plain GETs) with HTTP `status`. */
  refuse(status, count = Infinity) {
    this.refusals.push({ status, count });
  }

  /**
   * The next connection not yet taken whose path is `path` (any path when omitted), already
   * accepted or still to come, bounded by `timeoutMs`. Matching by path keeps a test from taking
   * another test's late reconnect.
   */
  next(path, timeoutMs = 5000) {
    const match = (c) => !this._taken.has(c) && (path === undefined || c.url.pathname === path);
    const ready = this.connections.find(match);
    if (ready) {
      this._taken.add(ready);
      return Promise.resolve(ready);
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no connection to ${path ?? "any path"} within ${timeoutMs} ms`)), timeoutMs);
      this._waiters.push({ match, resolve: (c) => { clearTimeout(timer); resolve(c); } });
    });
  }

  /** Stops listening and drops every connection. */
  async close() {
    for (const c of this.connections) c.socket.destroy();
    await new Promise((resolve) => this.server.close(resolve));
  }

  _accept(socket) {
    let head = Buffer.alloc(0);
    const onData = (chunk) => {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf("\r\n\r\n");
      if (end < 0) return;
      socket.off("data", onData);
      this._request(socket, head.subarray(0, end).toString("latin1"), head.subarray(end + 4));
    };
    socket.on("data", onData);
    socket.on("error", () => {});
  }

  _request(socket, head, rest) {
    const [requestLine, ...lines] = head.split("\r\n");
    const target = requestLine.split(" ")[1];
    const headers = Object.fromEntries(lines.map((l) => {
      const i = l.indexOf(":");
      return [l.slice(0, i).trim().toLowerCase(), l.slice(i + 1).trim()];
    }));
    this.requests.push({ target, upgrade: headers.upgrade === "websocket" });
    const refusal = this.refusals.find((r) => r.count > 0);
    if (refusal || headers.upgrade !== "websocket") {
      if (refusal) refusal.count -= 1;
      const status = refusal ? refusal.status : 400;
      socket.end(`HTTP/1.1 ${status} Refused\r\ncontent-length: 0\r\nconnection: close\r\n\r\n`);
      return;
    }
    const accept = createHash("sha1").update(headers["sec-websocket-key"] + GUID).digest("base64");
    socket.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
      `Sec-WebSocket-Accept: ${accept}\r\n\r\n`);
    const conn = new FakeSocket(socket, target);
    if (rest.length) conn._data(rest);
    this.connections.push(conn);
    const i = this._waiters.findIndex((w) => w.match(conn));
    if (i >= 0) {
      this._taken.add(conn);
      this._waiters.splice(i, 1)[0].resolve(conn);
    }
  }
}

/**
 * Records a client's callbacks as events `{kind, value}`; `waitFor` resolves on the first event
 * (past or future) that matches, or rejects after `timeoutMs`.
 */
export class Recorder {
  constructor() {
    this.events = [];
    this._waiters = [];
  }

  /** Callback options for a WsClusterClient that feed this recorder. */
  callbacks() {
    const on = (kind) => (value) => this.push(kind, value);
    return {
      onMessage: on("message"), onReady: on("ready"), onStateChange: on("state"),
      onRecoveryIncomplete: on("incomplete"), onReset: on("reset"), onError: on("error"),
    };
  }

  push(kind, value) {
    const event = { kind, value };
    this.events.push(event);
    this._waiters = this._waiters.filter((w) => !(w.match(event) && (w.resolve(event), true)));
  }

  /** Values of the events of one kind. */
  of(kind) {
    return this.events.filter((e) => e.kind === kind).map((e) => e.value);
  }

  /** The first event of `kind` whose value satisfies `pred`, after index `from`. */
  waitFor(kind, pred = () => true, timeoutMs = 5000, from = 0) {
    const match = (e) => e.kind === kind && pred(e.value);
    const past = this.events.slice(from).find(match);
    if (past) return Promise.resolve(past.value);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${kind} event within ${timeoutMs} ms`)), timeoutMs);
      this._waiters.push({ match, resolve: (e) => { clearTimeout(timer); resolve(e.value); } });
    });
  }

  /** waitFor, counting only events from now on. */
  next(kind, pred = () => true, timeoutMs = 5000) {
    return this.waitFor(kind, pred, timeoutMs, this.events.length);
  }
}
