// @wscluster/client: the reconnecting WebSocket client of docs/client.md as a library.
// No dependencies; runs in browsers and in Node >= 18 (Node >= 22 has a global WebSocket,
// older versions pass one with the `WebSocket` option). The wire contract it follows is
// ring/src/contract.rs: ResetFrame, ReadyFrame, ClientMessage and the CLOSE_* codes.

/** Close codes the cluster sends (ring/src/contract.rs `CLOSE_*`). */
export const CloseCode = Object.freeze({
  /** After a `rebalance` reset frame: the key moved; reconnect after `retryAfterMs`. */
  REBALANCE: 4000,
  /** After a `drain` reset frame: the node or proxy is leaving; reconnect after `retryAfterMs`. */
  DRAIN: 4001,
  /** A newer connection for the same key replaced this one: do not reconnect. */
  REPLACED: 4002,
  /** After an `unavailable` reset frame: the replay failed; reconnect with the same position. */
  UNAVAILABLE: 4005,
  /** The client broke the protocol: do not reconnect. */
  POLICY: 4008,
});

/** Default backoff for unplanned reconnects: full jitter over [0, min(maxMs, baseMs * 2^n)]. */
export const DEFAULT_BACKOFF = Object.freeze({ baseMs: 500, maxMs: 30_000 });

/** Longest wait a reset frame's `retryAfterMs` is obeyed up to, by default. */
export const DEFAULT_MAX_RETRY_AFTER_MS = 60_000;

// Codes after which reconnecting would repeat the same refusal: a newer session took over, or
// the client broke the protocol (RFC 6455 1002, 1003, 1007, 1008, 1009 and the cluster's 4008).
/** @type {Map<number, string>} */
const FINAL_CODES = new Map([
  [CloseCode.REPLACED, "replaced"],
  [CloseCode.POLICY, "policy"],
  [1002, "protocol-error"],
  [1003, "unsupported-data"],
  [1007, "invalid-payload"],
  [1008, "policy"],
  [1009, "message-too-big"],
]);

// Codes that follow a reset frame: the server chose the delay.
/** @type {Set<number>} */
const PLANNED_CODES = new Set([CloseCode.REBALANCE, CloseCode.DRAIN, CloseCode.UNAVAILABLE]);

/**
 * What the client does after a close with `code`: `final` (stay closed), `planned` (reconnect
 * after the reset frame's `retryAfterMs`, or with backoff when no reset frame came) or
 * `backoff` (reconnect with exponential backoff and full jitter).
 * @param {number} code
 * @returns {{action: "final" | "planned" | "backoff", reason: string}}
 */
export function closeAction(code) {
  const final = FINAL_CODES.get(code);
  if (final !== undefined) return { action: "final", reason: final };
  if (PLANNED_CODES.has(code)) {
    const reason = { 4000: "rebalance", 4001: "drain", 4005: "unavailable" }[code];
    return { action: "planned", reason };
  }
  return { action: "backoff", reason: code === 1006 ? "connection-lost" : `closed-${code}` };
}

/**
 * The delay before reconnect attempt `attempt` (0 for the first): full jitter,
 * `random() * min(maxMs, baseMs * 2^attempt)`.
 * @param {number} attempt
 * @param {{baseMs: number, maxMs: number}} backoff
 * @param {() => number} [random] uniform in [0, 1)
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, backoff, random = Math.random) {
  const ceiling = Math.min(backoff.maxMs, backoff.baseMs * 2 ** Math.min(attempt, 52));
  return Math.floor(random() * ceiling);
}

/**
 * Deduplicates messages by (epoch, offset) and tracks the position to resume from.
 * Offsets compare only within one epoch: a message of another epoch is new.
 */
export class Position {
  /**
   * @param {number} [offset] the last offset already processed
   * @param {string | null} [epoch] the epoch it belongs to
   */
  constructor(offset = 0, epoch = null) {
    /** @type {number} */
    this.offset = offset;
    /** @type {string | null} */
    this.epoch = epoch;
  }

  /**
   * Whether a message with this epoch and offset is new; if so the position moves to it.
   * @param {string | null | undefined} epoch
   * @param {number} offset
   * @returns {boolean}
   */
  accept(epoch, offset) {
    const e = epoch ?? null;
    if (e !== null && e !== this.epoch) {
      this.epoch = e;
      this.offset = offset;
      return true;
    }
    if (offset <= this.offset) return false;
    this.offset = offset;
    return true;
  }

  /**
   * Applies a ready frame: the stream's epoch and latest offset. On a recovered session in the
   * same epoch the position only moves forward; otherwise it is the stream's.
   * @param {{epoch: string, offset: number, recovered: boolean}} ready
   */
  applyReady(ready) {
    if (ready.recovered && ready.epoch === this.epoch) {
      this.offset = Math.max(this.offset, ready.offset);
    } else {
      this.epoch = ready.epoch;
      this.offset = ready.offset;
    }
  }
}

/**
 * The URL to open: `url` + `/connect/<key>`, or `/connect?<tokenParam>=<token>`, or `url` as
 * given; plus `since` and `epoch` when resuming.
 * @param {{url: string, key?: string, token?: string, tokenParam?: string}} target
 * @param {{since: number, epoch: string | null} | null} resume
 * @returns {string}
 */
export function connectUrl(target, resume) {
  const u = new URL(target.url);
  const base = u.pathname.replace(/\/+$/, "");
  if (target.key !== undefined) u.pathname = `${base}/connect/${encodeURIComponent(target.key)}`;
  else if (target.token !== undefined) {
    u.pathname = `${base}/connect`;
    u.searchParams.set(target.tokenParam ?? "access_token", target.token);
  }
  if (resume) {
    u.searchParams.set("since", String(resume.since));
    if (resume.epoch !== null) u.searchParams.set("epoch", resume.epoch);
  }
  return u.toString();
}

/**
 * Parses one text frame; `null` when it is not a JSON object.
 * @param {unknown} data
 * @returns {Record<string, any> | null}
 */
function parseFrame(data) {
  if (typeof data !== "string") return null;
  try {
    const v = JSON.parse(data);
    return v !== null && typeof v === "object" && !Array.isArray(v) ? v : null;
  } catch (_) {
    return null;
  }
}

const isOffset = (v) => Number.isSafeInteger(v) && v >= 0;

/** A reset frame's fields, or null when the frame is not a well-formed reset. */
function asReset(frame) {
  if (frame.type !== "reset" || typeof frame.reason !== "string") return null;
  const ms = frame.retryAfterMs;
  return {
    reason: frame.reason,
    retryAfterMs: Number.isFinite(ms) && ms >= 0 ? ms : null,
    ringVersion: isOffset(frame.ringVersion) ? frame.ringVersion : null,
  };
}

/** A ready frame's fields, or null when the frame is not a well-formed ready frame. */
function asReady(frame) {
  if (frame.type !== "ready") return null;
  if (typeof frame.epoch !== "string" || !isOffset(frame.offset)) return null;
  if (typeof frame.recovered !== "boolean") return null;
  return {
    server: typeof frame.server === "string" ? frame.server : null,
    epoch: frame.epoch,
    offset: frame.offset,
    recovered: frame.recovered,
  };
}

// Nodes before epochs (no ready frame) say "ready" as a system message, and a `since` past the
// stream's end or before its retention as an error text. Read those so such a node still works.
const LEGACY_AHEAD = /ahead of the latest offset (\d+)/;
const LEGACY_EXPIRED = /older than the retention; the oldest available offset is (\d+)/;


/** Checks the constructor's options; throws a TypeError naming the first bad one. */
function checkOptions(o) {
  if (o === null || typeof o !== "object") throw new TypeError("options must be an object");
  if (typeof o.url !== "string" && typeof o.url !== "function") {
    throw new TypeError("options.url must be a ws:// or wss:// URL or a function returning one");
  }
  if (typeof o.url === "string") checkUrl(o.url);
  if (o.key !== undefined && o.token !== undefined) {
    throw new TypeError("give options.key or options.token, not both");
  }
  if (o.key !== undefined && (typeof o.key !== "string" || o.key === "")) {
    throw new TypeError("options.key must be a non-empty string");
  }
  if (o.token !== undefined && typeof o.token !== "string" && typeof o.token !== "function") {
    throw new TypeError("options.token must be a string or a function returning one");
  }
  if (o.tokenParam !== undefined && (typeof o.tokenParam !== "string" || o.tokenParam === "")) {
    throw new TypeError("options.tokenParam must be a non-empty string");
  }
  const b = { ...DEFAULT_BACKOFF, ...(o.backoff ?? {}) };
  const positive = (v) => Number.isFinite(v) && v > 0;
  if (!positive(b.baseMs) || !positive(b.maxMs) || b.baseMs > b.maxMs) {
    throw new TypeError("options.backoff needs 0 < baseMs <= maxMs (milliseconds)");
  }
  const cap = o.maxRetryAfterMs ?? DEFAULT_MAX_RETRY_AFTER_MS;
  if (!Number.isFinite(cap) || cap < 0) throw new TypeError("options.maxRetryAfterMs must be >= 0");
  if (o.since !== undefined && !isOffset(o.since)) {
    throw new TypeError("options.since must be a non-negative integer offset");
  }
  if (o.epoch !== undefined && o.epoch !== null && typeof o.epoch !== "string") {
    throw new TypeError("options.epoch must be a string");
  }
  const WS = o.WebSocket ?? globalThis.WebSocket;
  if (typeof WS !== "function") {
    throw new TypeError("no WebSocket: on Node < 22 pass a constructor as options.WebSocket");
  }
  return { backoff: b, maxRetryAfterMs: cap, WebSocket: WS };
}

function checkUrl(url) {
  let u;
  try {
    u = new URL(url);
  } catch (_) {
    throw new TypeError(`not a URL: ${url}`);
  }
  if (u.protocol !== "ws:" && u.protocol !== "wss:") {
    throw new TypeError(`the URL must be ws:// or wss://, not ${u.protocol}//`);
  }
  return url;
}

/**
 * Asks the connect URL over HTTP after a failed handshake: 401 or 403 there means the proxy
 * refuses the credentials, which a WebSocket handshake failure does not tell (it is 1006).
 * Returns the refusal's reason, or null (network trouble, another status, CORS, no fetch).
 */
async function probeRefusal(wsUrl) {
  if (typeof globalThis.fetch !== "function") return null;
  const url = wsUrl.replace(/^ws/, "http");
  try {
    const signal = typeof AbortSignal.timeout === "function" ? AbortSignal.timeout(5000) : undefined;
    const res = await globalThis.fetch(url, { cache: "no-store", signal });
    if (res.status === 401) return "unauthorized";
    if (res.status === 403) return "forbidden";
    return null;
  } catch (_) {
    return null;
  }
}

/**
 * A wscluster WebSocket client: connects with a key or a token, reconnects with exponential
 * backoff and full jitter, obeys reset frames (`retryAfterMs`, capped), follows the close-code
 * table (4002 replaced, 4008 policy and auth refusals stay closed), resumes with `since` and
 * `epoch`, drops duplicates by (epoch, offset) and reports incomplete recoveries.
 */
export class WsClusterClient {
  /** @param {import("../index.js").WsClusterOptions} options */
  constructor(options) {
    const checked = checkOptions(options);
    this._o = options;
    this._backoff = checked.backoff;
    this._maxRetryAfterMs = checked.maxRetryAfterMs;
    this._WebSocket = checked.WebSocket;
    /** "idle" | "connecting" | "open" | "reconnecting" | "closed" */
    this.state = "idle";
    /** The position to resume from: the last (epoch, offset) processed. */
    this.position = new Position(options.since ?? 0, options.epoch ?? null);
    /** Node serving the session, from its ready frame. */
    this.server = null;
    /** Why the client is closed (state "closed"), else null. */
    this.closeReason = null;
    /** Messages dropped as duplicates so far. */
    this.duplicates = 0;
    this._resume = options.since !== undefined;
    this._attempt = 0;
    this._ws = null;
    this._timer = null;
    this._reset = null;
    this._legacyNote = null;
    this._sentResume = null;
    this._stopped = true;
    this._generation = 0;
  }

  /** Starts connecting; does nothing while already connecting or connected. */
  connect() {
    if (!this._stopped) return;
    this._stopped = false;
    this._generation += 1;
    this.closeReason = null;
    this._attempt = 0;
    this._setState("connecting", {});
    void this._open();
  }

  /**
   * Closes the connection and stops reconnecting.
   * @param {number} [code] close code sent to the server (1000 or 3000-4999)
   * @param {string} [reason]
   */
  close(code = 1000, reason = "") {
    if (this._stopped && this.state === "closed") return;
    this._stopped = true;
    this._generation += 1;
    clearTimeout(this._timer);
    this._timer = null;
    const ws = this._ws;
    this._ws = null;
    if (ws) ws.close(code, reason);
    this.closeReason = "client";
    this._setState("closed", { reason: "client" });
  }

  /**
   * Sends a text frame on the open connection.
   * @param {string} text
   * @returns {boolean} whether it was handed to the socket (false when not open)
   */
  send(text) {
    if (!this._ws || this._ws.readyState !== 1) return false;
    this._ws.send(text);
    return true;
  }

  // One attempt: the URL (and token) of this attempt, then the socket. A failure to make either
  // is retried with backoff and reported to onError.
  async _open() {
    const generation = this._generation;
    const current = () => !this._stopped && this._generation === generation;
    try {
      const base = typeof this._o.url === "function" ? checkUrl(await this._o.url()) : this._o.url;
      const token = typeof this._o.token === "function" ? await this._o.token() : this._o.token;
      if (this._o.token !== undefined && (typeof token !== "string" || token === "")) {
        throw new TypeError("options.token returned no token");
      }
      const resume = this._resume ? { since: this.position.offset, epoch: this.position.epoch } : null;
      const url = connectUrl({ url: base, key: this._o.key, token, tokenParam: this._o.tokenParam }, resume);
      if (!current()) return;
      this._sentResume = resume;
      this._dial(url);
    } catch (err) {
      if (!current()) return;
      this._emit("onError", err);
      this._retry({ code: null, reason: "dial-failed" }, null);
    }
  }

  _dial(url) {
    const ws = new this._WebSocket(url);
    this._ws = ws;
    this._reset = null;
    this._legacyNote = null;
    let opened = false;
    const generation = this._generation;
    ws.onopen = () => {
      if (this._ws !== ws) return;
      opened = true;
      this._setState("open", { url });
    };
    ws.onmessage = (event) => {
      if (this._ws === ws) this._frame(event.data);
    };
    const ended = (code, reason) => {
      if (this._ws !== ws) return;
      this._ws = null;
      void this._closed(code, reason, opened ? null : url, generation);
    };
    ws.onclose = (event) => ended(event.code, event.reason);
    // A failed handshake is an error then a close (1006); some implementations (Node 20's)
    // fire only the error, so a handshake error ends the attempt on its own.
    ws.onerror = () => {
      if (opened) return;
      ended(1006, "");
      try {
        ws.close();
      } catch (_) {
        // already closing
      }
    };
  }

  _frame(data) {
    const frame = parseFrame(data);
    if (frame === null) {
      this._emit("onError", new Error("the server sent a frame that is not a JSON object"));
      return;
    }
    const reset = asReset(frame);
    if (reset) {
      this._reset = reset;
      this._emit("onReset", reset);
      return;
    }
    const ready = asReady(frame);
    if (ready) return this._ready(ready);
    if (frame.type === "system" && frame.content === "ready") return this._legacyReady(frame);
    if (frame.type === "error" && typeof frame.content === "string") this._legacyError(frame.content);
    const epoch = typeof frame.epoch === "string" ? frame.epoch : null;
    if (isOffset(frame.offset) && !this.position.accept(epoch, frame.offset)) {
      this.duplicates += 1;
      return;
    }
    this._emit("onMessage", frame);
  }

  _ready(ready) {
    this._attempt = 0;
    this._resume = true;
    this.server = ready.server;
    const asked = this._sentResume;
    this.position.applyReady(ready);
    this._emit("onReady", { ...ready, legacy: false });
    if (!ready.recovered) {
      this._emit("onRecoveryIncomplete", {
        since: asked ? asked.since : null,
        sinceEpoch: asked ? asked.epoch : null,
        epoch: ready.epoch,
        offset: ready.offset,
        server: ready.server,
        reason: asked && asked.epoch !== null && asked.epoch !== ready.epoch ? "epoch-changed" : "not-kept",
      });
    }
  }

  // A node without epochs: the error frames of the greeting told what was missing.
  _legacyReady(frame) {
    this._attempt = 0;
    this._resume = true;
    this.server = typeof frame.server === "string" ? frame.server : null;
    const note = this._legacyNote;
    this._legacyNote = null;
    if (note && note.reason === "since-ahead") this.position.offset = note.latest;
    const r = { server: this.server, epoch: null, offset: this.position.offset, recovered: !note, legacy: true };
    this._emit("onReady", r);
    if (note) {
      const since = this._sentResume ? this._sentResume.since : null;
      this._emit("onRecoveryIncomplete", {
        since, sinceEpoch: null, epoch: null, offset: this.position.offset, server: this.server,
        reason: note.reason,
      });
    }
  }

  _legacyError(text) {
    const ahead = LEGACY_AHEAD.exec(text);
    if (ahead) this._legacyNote = { reason: "since-ahead", latest: Number(ahead[1]) };
    else if (LEGACY_EXPIRED.test(text)) this._legacyNote = { reason: "since-expired" };
  }

  async _closed(code, reason, failedUrl, generation) {
    if (this._stopped) return;
    const reset = this._reset;
    this._reset = null;
    if (failedUrl !== null && this._o.probeAuth !== false) {
      const refusal = await probeRefusal(failedUrl);
      if (this._stopped || this._generation !== generation) return;
      if (refusal) return this._final({ code, reason: refusal, closeReason: reason });
    }
    const act = closeAction(code);
    if (act.action === "final") return this._final({ code, reason: act.reason, closeReason: reason });
    this._retry({ code, reason: act.reason, closeReason: reason }, act.action === "planned" ? reset : null);
  }

  _final(info) {
    this._stopped = true;
    this.closeReason = info.reason;
    this._setState("closed", info);
  }

  _retry(info, reset) {
    let delayMs;
    if (reset && reset.retryAfterMs !== null) {
      delayMs = Math.min(reset.retryAfterMs, this._maxRetryAfterMs);
    } else {
      delayMs = backoffDelay(this._attempt, this._backoff);
      this._attempt += 1;
    }
    this._timer = setTimeout(() => {
      this._timer = null;
      if (!this._stopped) void this._open();
    }, delayMs);
    this._setState("reconnecting", { ...info, delayMs, reset });
  }

  _setState(state, info) {
    const previous = this.state;
    this.state = state;
    this._emit("onStateChange", { state, previous, ...info });
  }

  _emit(name, arg) {
    const fn = this._o[name];
    if (typeof fn !== "function") return;
    try {
      fn(arg);
    } catch (err) {
      // An application callback's error must not stop the client; surface it asynchronously.
      queueMicrotask(() => {
        throw err;
      });
    }
  }
}
