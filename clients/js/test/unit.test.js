// Pure parts of the client: backoff bounds, the close-code table, dedupe by (epoch, offset),
// the connect URL and option checks.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  CloseCode, DEFAULT_BACKOFF, Position, WsClusterClient, backoffDelay, closeAction, connectUrl,
} from "../src/index.js";

test("backoff is full jitter under an exponential ceiling capped at maxMs", () => {
  const b = { baseMs: 100, maxMs: 5000 };
  for (let attempt = 0; attempt < 80; attempt++) {
    const ceiling = Math.min(5000, 100 * 2 ** attempt);
    assert.equal(backoffDelay(attempt, b, () => 0), 0, "the floor is 0 (full jitter)");
    const top = backoffDelay(attempt, b, () => 0.999999);
    assert.ok(top < ceiling && top >= ceiling - 1, `attempt ${attempt}: ${top} vs ${ceiling}`);
    for (let i = 0; i < 50; i++) {
      const d = backoffDelay(attempt, b);
      assert.ok(Number.isInteger(d) && d >= 0 && d < ceiling, `attempt ${attempt}: ${d}`);
    }
  }
  // Spread: 1000 draws at the cap are not all in one tenth of the window.
  const draws = Array.from({ length: 1000 }, () => backoffDelay(30, b));
  const buckets = new Set(draws.map((d) => Math.floor(d / 500)));
  assert.equal(buckets.size, 10);
  assert.deepEqual(DEFAULT_BACKOFF, { baseMs: 500, maxMs: 30000 });
});

test("the close-code table", () => {
  const table = [
    [CloseCode.REBALANCE, "planned", "rebalance"],
    [CloseCode.DRAIN, "planned", "drain"],
    [CloseCode.UNAVAILABLE, "planned", "unavailable"],
    [CloseCode.REPLACED, "final", "replaced"],
    [CloseCode.POLICY, "final", "policy"],
    [1008, "final", "policy"],
    [1002, "final", "protocol-error"],
    [1007, "final", "invalid-payload"],
    [1009, "final", "message-too-big"],
    [1006, "backoff", "connection-lost"],
    [1001, "backoff", "closed-1001"],
    [1011, "backoff", "closed-1011"],
    [1013, "backoff", "closed-1013"],
    [1000, "backoff", "closed-1000"],
    [4999, "backoff", "closed-4999"],
  ];
  for (const [code, action, reason] of table) {
    assert.deepEqual(closeAction(code), { action, reason }, `code ${code}`);
  }
});

test("dedupe by (epoch, offset): duplicates dropped, a new epoch starts over", () => {
  const p = new Position();
  const seq = [["e1", 1], ["e1", 2], ["e1", 2], ["e1", 1], ["e1", 3], ["e2", 1], ["e2", 1], ["e2", 2], ["e1", 3]];
  const accepted = seq.filter(([e, o]) => p.accept(e, o));
  assert.deepEqual(accepted, [["e1", 1], ["e1", 2], ["e1", 3], ["e2", 1], ["e2", 2], ["e1", 3]]);
  assert.deepEqual({ ...p }, { offset: 3, epoch: "e1" });
  // A node without epochs: offsets alone.
  const legacy = new Position();
  assert.deepEqual([1, 2, 2, 3, 1].map((o) => legacy.accept(undefined, o)), [true, true, false, true, false]);
});

test("a ready frame sets the position: forward only when recovered in the same epoch", () => {
  const p = new Position(7, "e1");
  p.applyReady({ epoch: "e1", offset: 5, recovered: true });
  assert.deepEqual({ ...p }, { offset: 7, epoch: "e1" });
  p.applyReady({ epoch: "e1", offset: 9, recovered: true });
  assert.deepEqual({ ...p }, { offset: 9, epoch: "e1" });
  p.applyReady({ epoch: "e2", offset: 2, recovered: false });
  assert.deepEqual({ ...p }, { offset: 2, epoch: "e2" });
  p.applyReady({ epoch: "e2", offset: 0, recovered: false });
  assert.deepEqual({ ...p }, { offset: 0, epoch: "e2" });
});

test("the connect URL: key path, token query, since and epoch", () => {
  assert.equal(connectUrl({ url: "ws://h:1" }, null), "ws://h:1/");
  assert.equal(connectUrl({ url: "wss://h/", key: "a b/é?" }, null), "wss://h/connect/a%20b%2F%C3%A9%3F");
  assert.equal(connectUrl({ url: "ws://h/chat", key: "alice" }, { since: 5, epoch: "9f" }),
    "ws://h/chat/connect/alice?since=5&epoch=9f");
  assert.equal(connectUrl({ url: "ws://h", token: "t.k+n" }, { since: 0, epoch: null }),
    "ws://h/connect?access_token=t.k%2Bn&since=0");
  assert.equal(connectUrl({ url: "ws://h", token: "t", tokenParam: "jwt" }, null), "ws://h/connect?jwt=t");
});

test("bad options are refused with a clear error", () => {
  const WebSocket = function () {};
  const bad = [
    [{}, /options.url/],
    [{ url: "http://h", WebSocket }, /ws:\/\/ or wss:\/\//],
    [{ url: "not a url", WebSocket }, /not a URL/],
    [{ url: "ws://h", key: "a", token: "t", WebSocket }, /not both/],
    [{ url: "ws://h", key: "", WebSocket }, /options.key/],
    [{ url: "ws://h", token: 3, WebSocket }, /options.token/],
    [{ url: "ws://h", backoff: { baseMs: 0 }, WebSocket }, /backoff/],
    [{ url: "ws://h", backoff: { baseMs: 10, maxMs: 5 }, WebSocket }, /backoff/],
    [{ url: "ws://h", since: -1, WebSocket }, /since/],
    [{ url: "ws://h", since: 1.5, WebSocket }, /since/],
    [{ url: "ws://h", epoch: 3, WebSocket }, /epoch/],
    [{ url: "ws://h", maxRetryAfterMs: -1, WebSocket }, /maxRetryAfterMs/],
    [{ url: "ws://h", WebSocket: 1 }, /WebSocket/],
  ];
  for (const [options, message] of bad) {
    assert.throws(() => new WsClusterClient(options), (e) => e instanceof TypeError && message.test(e.message),
      JSON.stringify(options));
  }
  const ok = new WsClusterClient({ url: "ws://h", key: "alice", WebSocket });
  assert.equal(ok.state, "idle");
});
