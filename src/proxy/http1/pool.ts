// Keep-alive upstream connections for HTTP/1.1, one pool per destination (an endpoint's sidecar
// over mutual TLS on the outbound side, an app port on the inbound side). A connection carries one
// exchange at a time; idle ones are reused most-recent first and closed by one coarse sweep after
// the pool's idle time: IDLE_MS for apps, below the 5 s keep-alive of Node servers, so a reused
// socket is rarely stale; longer towards other sidecars, whose idle bound zmesh knows
// (`meshPoolIdleMs`), so that a burst does not pay for new mutual-TLS handshakes. A pool owns its
// connections only: who keeps pools by destination ends one whose destination went (`shutdown`).

import type { Duplex } from "node:stream";

export const IDLE_MS = 4_000;

/**
 * How long a pooled connection to another sidecar may stay idle, so that the sidecar that closes
 * it is this one: 10 s less than the inbound's own idle bound (`idleMs`, 60 s by default, so 50 s),
 * or, for a short bound, IDLE_MS or half the bound, whichever is less.
 */
export function meshPoolIdleMs(peerIdleMs: number): number {
  return peerIdleMs > IDLE_MS + 10_000 ? peerIdleMs - 10_000 : Math.min(IDLE_MS, peerIdleMs / 2);
}
const SWEEP_MS = 1_000;
const MAX_CONNECTIONS = 64;

/** What an upstream connection reports to the exchange that holds it. */
export interface UpstreamUser {
  upData(chunk: Buffer): void;
  upDrain(): void;
  upClosed(err: Error | undefined): void;
}

/**
 * One buffer for the reads of every pooled connection (Node's `onread`): each read is handed to
 * `Upstream.read` before the next one fills it, so it is shared. A connection read this way skips
 * the Readable stream's per-read work and Node's per-read allocation of a 64 KiB buffer, shrunk
 * to fit and wrapped in an ArrayBuffer; the bytes kept are copied out (bench/README.md, "Round 5").
 */
const READ_BUFFER = Buffer.allocUnsafe(64 * 1024);

/** What a dial passes as its socket's `onread`; it feeds the connection's Upstream once there is one. */
export class ReadHook {
  up: Upstream | undefined;
  readonly onread = {
    buffer: READ_BUFFER,
    // Never false (which would stop reading): backpressure pauses the socket itself.
    callback: (n: number, buf: Buffer): boolean => {
      if (this.up) this.up.read(n, buf);
      return true;
    },
  };
}

export class Upstream {
  user: UpstreamUser | undefined;
  idleSince = 0;
  /** Exchanges carried so far (0 on a new connection: a failure then is a connect failure). */
  uses = 0;
  err: Error | undefined;
  closed = false;
  /** The pool's generation when this connection was made (`UpstreamPool.retire`). */
  readonly generation: number;

  constructor(
    readonly sock: Duplex,
    readonly pool: UpstreamPool,
  ) {
    this.generation = pool.generation;
    sock.on("drain", () => this.user?.upDrain());
    sock.on("error", (e: Error) => {
      this.err ??= e;
    });
    sock.on("close", () => {
      this.closed = true;
      pool.gone(this);
      const u = this.user;
      this.user = undefined;
      u?.upClosed(this.err);
    });
  }

  /** `n` bytes read into the shared `buf`: copied out (the exchange may keep them), then handed on. */
  read(n: number, buf: Buffer): void {
    const user = this.user;
    if (user === undefined) {
      this.sock.destroy(); // an idle connection has nothing to say
      return;
    }
    const d = Buffer.allocUnsafe(n);
    buf.copy(d, 0, 0, n);
    user.upData(d);
  }
}

/**
 * Opens a connection for the pool, reading it through `onread` (net.connect's and tls.connect's
 * option of that name), so that no byte reaches the socket's Readable side.
 */
export type Dial = (onread: ReadHook["onread"], cb: (err: Error | null, sock: Duplex | null) => void) => void;
type Waiter = (err: Error | null, up: Upstream | null) => void;

export class UpstreamPool {
  private readonly idle: Upstream[] = [];
  private count = 0;
  private readonly waiters: Waiter[] = [];
  private closed = false;
  /** Set by `shutdown`: no connection goes back to the pool. */
  private ending = false;
  /** Bumped by `retire`; connections of an older generation are not reused. */
  generation = 0;

  constructor(
    private readonly dial: Dial,
    /** Idle connections are closed after this long (IDLE_MS unless told). */
    private readonly idleMs = IDLE_MS,
  ) {}

  /** An idle connection, or a new one (up to the limit; then the next one released). */
  acquire(cb: Waiter): void {
    if (this.closed) return cb(new Error("pool closed"), null);
    const up = this.idle.pop();
    if (up) return cb(null, up);
    if (this.count >= MAX_CONNECTIONS) {
      this.waiters.push(cb);
      return;
    }
    this.count++;
    const hook = new ReadHook();
    this.dial(hook.onread, (err, sock) => {
      if (err || !sock) {
        this.count--;
        return cb(err ?? new Error("connect failed"), null);
      }
      if (this.closed) {
        this.count--;
        sock.destroy();
        return cb(new Error("pool closed"), null);
      }
      hook.up = new Upstream(sock, this);
      cb(null, hook.up);
    });
  }

  /** Returns a connection whose exchange ended cleanly (keep-alive both ways). */
  release(up: Upstream): void {
    up.user = undefined;
    up.uses++;
    if (up.closed) return;
    // Its exchange may have paused it for backpressure; idle, it must be read (a close, or junk).
    if (up.sock.isPaused()) up.sock.resume();
    if (this.closed || up.generation !== this.generation) return void up.sock.destroy();
    const w = this.waiters.shift();
    // Shut down: a request that was waiting for a connection (begun while the endpoint was routed)
    // takes this one, checked when it was dialled; a new dial would be checked against a config
    // that no longer routes here. Nothing else reuses it.
    if (w) return w(null, up);
    if (this.ending) return void up.sock.destroy();
    up.idleSince = now;
    this.idle.push(up);
    pools.add(this);
  }

  /** A connection that closed (idle or not). */
  gone(up: Upstream): void {
    this.count--;
    const i = this.idle.indexOf(up);
    if (i >= 0) this.idle.splice(i, 1);
    // Room for one more: a waiter gets a new connection.
    const w = this.waiters.shift();
    if (w) this.acquire(w);
  }

  /** Closes the connections idle for longer than the pool's idle time at `t`. */
  sweep(t: number): void {
    const limit = t - this.idleMs;
    // Oldest first at the bottom of the stack.
    while (this.idle.length > 0 && this.idle[0]!.idleSince < limit) this.idle.shift()!.sock.destroy();
    if (this.idle.length === 0) pools.delete(this);
  }

  /**
   * Retires every connection made so far: idle ones close now, busy ones after their exchange.
   * For a change of what their dial checked (the identities the service may run as).
   */
  retire(): void {
    this.generation++;
    for (const up of this.idle.splice(0)) up.sock.destroy();
  }

  /**
   * Ends the pool without failing a request: no connection is reused any more, idle ones close
   * now, busy ones after their exchange, and a request already waiting for a connection (or one
   * that still reaches this pool) gets one, used once. For an endpoint gone from the config, whose
   * requests in flight must still complete (`close` fails those waiting).
   */
  shutdown(): void {
    this.ending = true;
    for (const up of this.idle.splice(0)) up.sock.destroy();
    pools.delete(this);
  }

  close(): void {
    this.closed = true;
    for (const up of this.idle.splice(0)) up.sock.destroy();
    for (const w of this.waiters.splice(0)) w(new Error("pool closed"), null);
    pools.delete(this);
  }
}

/** The coarse clock and the one sweep of idle connections of every pool. */
let now = Date.now();
const pools = new Set<UpstreamPool>();
setInterval(() => {
  now = Date.now();
  for (const p of pools) p.sweep(now);
}, SWEEP_MS).unref();

export function coarseNow(): number {
  return now;
}

/** Moves the coarse clock to now (for sweeps that run more often than this one) and returns it. */
export function tickClock(): number {
  now = Date.now();
  return now;
}
