// Types of @wscluster/client (src/index.js). The wire types mirror ring/src/contract.rs.

/** Close codes the cluster sends. */
export declare const CloseCode: Readonly<{
  REBALANCE: 4000;
  DRAIN: 4001;
  REPLACED: 4002;
  UNAVAILABLE: 4005;
  POLICY: 4008;
}>;

/** Backoff for unplanned reconnects: full jitter over [0, min(maxMs, baseMs * 2^attempt)]. */
export interface Backoff {
  baseMs: number;
  maxMs: number;
}

export declare const DEFAULT_BACKOFF: Readonly<Backoff>;
export declare const DEFAULT_MAX_RETRY_AFTER_MS: number;

/** A message the node delivers (`ClientMessage`). */
export interface ClientMessage {
  type: "message" | "broadcast" | "system" | "error";
  content: string;
  server: string;
  serverUserCount: number;
  timestamp: number;
  /** Per-user offset within `epoch`, for `message`. */
  offset?: number;
  /** The user's stream epoch the offset belongs to, for `message`. */
  epoch?: string;
  /** The verified sender, for chat messages. */
  from?: string;
}

/** A reset frame (`ResetFrame`): the close frame that follows says what to do. */
export interface ResetInfo {
  reason: "rebalance" | "drain" | "unavailable" | string;
  /** null when the frame had none or a bad one (then the client backs off instead). */
  retryAfterMs: number | null;
  ringVersion: number | null;
}

/** The session is live (`ReadyFrame`, or a legacy `system` "ready" from a node without epochs). */
export interface ReadyInfo {
  server: string | null;
  /** null from a legacy node. */
  epoch: string | null;
  offset: number;
  /** Whether everything after the client's `since` was delivered (a legacy node: unless it
   * reported a gap in an error frame). */
  recovered: boolean;
  legacy: boolean;
}

/** The client may have missed messages: its `since` (in `sinceEpoch`) could not be replayed. */
export interface RecoveryIncomplete {
  since: number | null;
  sinceEpoch: string | null;
  /** The stream's epoch and latest offset now: the client resumes from here. */
  epoch: string | null;
  offset: number;
  server: string | null;
  reason: "epoch-changed" | "not-kept" | "since-ahead" | "since-expired";
}

export type ClientState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export interface StateChange {
  state: ClientState;
  previous: ClientState;
  /** The close code that caused it (reconnecting, closed), null when no socket was made. */
  code?: number | null;
  /** Why: "rebalance", "drain", "unavailable", "connection-lost", "closed-<code>", "replaced",
   * "policy", "unauthorized", "forbidden", "client", ... */
  reason?: string;
  /** The close frame's reason text. */
  closeReason?: string;
  /** reconnecting: how long until the next attempt. */
  delayMs?: number;
  /** reconnecting: the reset frame obeyed, if any. */
  reset?: ResetInfo | null;
  /** open: the URL connected to. */
  url?: string;
}

/** A WebSocket constructor (the browser's, Node >= 22's global, or e.g. the `ws` package's). */
export type WebSocketConstructor = new (url: string) => {
  readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
};

export interface WsClusterOptions {
  /** The proxy's base URL (`wss://chat.example.com`), or a function returning one per attempt.
   * With `key` or `token` the client appends `/connect/<key>` or `/connect`; without, it is the
   * URL to open. */
  url: string | (() => string | Promise<string>);
  /** The business key (user id); sent as the path `/connect/<key>`. */
  key?: string;
  /** A token (JWT key source, `from: query`), or a function fetching a fresh one per attempt. */
  token?: string | (() => string | Promise<string>);
  /** Query parameter carrying the token; default `access_token`. */
  tokenParam?: string;
  /** WebSocket constructor; default `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** Default { baseMs: 500, maxMs: 30000 }. */
  backoff?: Partial<Backoff>;
  /** Cap on a reset frame's retryAfterMs; default 60000. */
  maxRetryAfterMs?: number;
  /** Resume from this offset (persisted by the application) on the first connect. */
  since?: number;
  /** The epoch `since` belongs to. */
  epoch?: string | null;
  /** After a failed handshake, GET the URL over HTTP to tell a 401/403 refusal from a network
   * failure (then stay closed). Default true. */
  probeAuth?: boolean;
  onMessage?: (message: ClientMessage) => void;
  onReady?: (ready: ReadyInfo) => void;
  onStateChange?: (change: StateChange) => void;
  onRecoveryIncomplete?: (info: RecoveryIncomplete) => void;
  onReset?: (reset: ResetInfo) => void;
  onError?: (error: Error) => void;
}

/** The last (epoch, offset) processed; deduplicates. */
export declare class Position {
  constructor(offset?: number, epoch?: string | null);
  offset: number;
  epoch: string | null;
  /** Whether the message is new; if so the position moves to it. */
  accept(epoch: string | null | undefined, offset: number): boolean;
  applyReady(ready: { epoch: string; offset: number; recovered: boolean }): void;
}

export declare class WsClusterClient {
  constructor(options: WsClusterOptions);
  readonly state: ClientState;
  readonly position: Position;
  readonly server: string | null;
  readonly closeReason: string | null;
  readonly duplicates: number;
  connect(): void;
  close(code?: number, reason?: string): void;
  send(text: string): boolean;
}

export declare function closeAction(code: number): {
  action: "final" | "planned" | "backoff";
  reason: string;
};
export declare function backoffDelay(attempt: number, backoff: Backoff, random?: () => number): number;
export declare function connectUrl(
  target: { url: string; key?: string; token?: string; tokenParam?: string },
  resume: { since: number; epoch: string | null } | null,
): string;
