// One downstream HTTP/1.1 connection: reads request heads (./head.ts), hands each to the listener
// (inbound or outbound) to authorize and route, then splices the body to a pooled upstream
// connection by its framing and the response back, parsing only the response head. Requests on a
// connection, pipelined or not, are handled one at a time, in order. No Node http server, no
// undici, no stream.pipeline: per request there is one Exchange object and the heads' strings.

import { randomUUID } from "node:crypto";
import type { Duplex } from "node:stream";
import type { ProxyTimeouts } from "../../config/index.js";
import { type Flag, rescueWire } from "../rescue.js";
import { Framer } from "./body.js";
import {
  field,
  fieldRecord,
  keepAlive,
  parseRequestHead,
  parseResponseHead,
  type RequestHead,
  type ResponseHead,
} from "./head.js";
import { coarseNow, tickClock, type Upstream, type UpstreamPool, type UpstreamUser } from "./pool.js";
import { interimHeadFor, responseHeadFor } from "./wire.js";

/** At a drain, a connection idle this long between requests is closed. */
const DRAIN_IDLE_MS = 1_000;
/** Bytes read ahead of the request being handled (pipelined requests) before reading pauses. */
const READ_AHEAD = 64 * 1024;
const IDEMPOTENT = new Set(["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]);

export interface ForwardResult {
  status: number;
  requestBytes: number;
  responseBytes: number;
  /** Set when no complete response could be relayed. With `status` 0, nothing reached the client. */
  error?: Error;
  /** The flag the engine already chose for `error` (a timeout); else the listener's. */
  flag?: Flag;
}

export interface UpgradeRequest {
  method: string;
  url: string;
  headers: Record<string, string>;
}

export interface Http1Listener {
  /** A request head: call `conn.forward` or `conn.reject` exactly once (again after a failed forward). */
  request(conn: Http1Conn, head: RequestHead): void;
  /** A request asking to switch protocols: the socket is handed over, with bytes read past the head. */
  upgrade(sock: Duplex, req: UpgradeRequest, rest: Buffer): void;
  /** A head that could not be parsed: logged by the listener; the 400 is written here. */
  malformed(conn: Http1Conn, reason: string): void;
  /** True while the proxy drains: responses ask the client to close. */
  draining(): boolean;
  /** The time bounds its connections are held to (read by each sweep). */
  readonly timeouts: ProxyTimeouts;
}

enum C {
  Head,
  Held,
  Body,
  After,
  Closed,
}

/**
 * The connections of one listener: one coarse sweep (no timer per request) holds them to the
 * listener's time bounds (`Http1Conn.sweep`); `close` ends them all.
 */
export class Http1Server {
  readonly conns = new Set<Http1Conn>();
  private timer: NodeJS.Timeout | undefined;

  constructor(readonly listener: Http1Listener) {}

  serve(sock: Duplex): Http1Conn {
    this.timer ??= this.startSweep();
    return new Http1Conn(sock, this);
  }

  /** Every quarter of the shortest bound (10 ms to 1 s): each bound holds to within that. */
  private startSweep(): NodeJS.Timeout {
    const t = this.listener.timeouts;
    const every = Math.min(1_000, Math.max(10, Math.min(t.requestHeadersMs, t.idleMs, t.streamIdleMs) / 4));
    tickClock(); // the coarse clock may be a second old; the first connection's stamps must be fresh
    const timer = setInterval(() => {
      const now = tickClock();
      const bounds = this.listener.timeouts;
      for (const c of this.conns) c.sweep(now, bounds);
    }, every);
    timer.unref();
    return timer;
  }

  /**
   * A drain: connections idle between requests close once they have been idle for
   * `DRAIN_IDLE_MS` (a client then dials an instance that is not going away); the others ask their
   * client to close with the response in progress (`Http1Conn.closing`) and close after it. The
   * wait leaves a request already on its way on an idle connection the time to arrive and be
   * served, as at any idle bound.
   */
  drain(): void {
    setTimeout(() => {
      const now = tickClock();
      for (const c of this.conns) c.closeIfIdle(now, DRAIN_IDLE_MS);
    }, DRAIN_IDLE_MS).unref();
  }

  close(): void {
    clearInterval(this.timer);
    for (const c of this.conns) c.sock.destroy();
    this.conns.clear();
  }
}

export class Http1Conn {
  private state = C.Head;
  private pending: Buffer | undefined;
  private looping = false;
  /** When a byte last moved for this connection (downstream reads; the exchange's both ways). */
  lastActive = coarseNow();
  private headStart = 0;
  /** The request being handled. */
  head: RequestHead | undefined;
  private framer: Framer | undefined;
  private keep = true;
  private ex: Exchange | undefined;
  private readonly listener: Http1Listener;
  private readonly onData = (d: Buffer) => this.data(d);

  constructor(
    readonly sock: Duplex,
    private readonly server: Http1Server,
  ) {
    this.listener = server.listener;
    server.conns.add(this);
    sock.on("data", this.onData);
    sock.on("drain", () => this.ex?.clientDrain());
    sock.on("error", () => {});
    sock.on("close", () => {
      this.state = C.Closed;
      server.conns.delete(this);
      this.ex?.clientClosed();
    });
    sock.resume();
  }

  get closed(): boolean {
    return this.state === C.Closed;
  }

  /**
   * Holds the connection to its time bounds at `now` (called by the server's sweep): idle between
   * requests for `idleMs`, it is closed; a head not complete `requestHeadersMs` after its first
   * byte (one trickled a byte at a time) gets 408 and close; an exchange where no byte moved
   * either way for `streamIdleMs` is ended by `Exchange.timedOut`.
   */
  sweep(now: number, t: ProxyTimeouts): void {
    if (this.state === C.Head) {
      if (!this.pending) {
        if (now - this.lastActive >= t.idleMs) this.sock.destroy();
      } else if (now - this.headStart >= t.requestHeadersMs) {
        this.listener.malformed(this, `request head not complete within ${t.requestHeadersMs} ms`);
        this.endWith(rescueWire("REQUEST_TIMEOUT", randomUUID(), true));
      }
    } else if (this.ex !== undefined && this.state !== C.Closed && now - this.lastActive >= t.streamIdleMs)
      this.ex.timedOut(t.streamIdleMs);
  }

  /** Closes the connection if it is between requests, nothing read of the next one for `idleMs`. */
  closeIfIdle(now: number, idleMs: number): void {
    if (this.state !== C.Head || this.pending !== undefined || now - this.lastActive < idleMs) return;
    this.state = C.Closed;
    this.sock.end();
  }

  /** Whether the request has a body (of any length but zero). */
  get hasBody(): boolean {
    return this.framer !== undefined && !(this.framer.done && this.framer.payload === 0);
  }

  private data(d: Buffer): void {
    this.lastActive = coarseNow();
    if (this.state === C.Body) return this.pumpBody(d);
    if (this.state === C.Head && !this.pending) this.headStart = this.lastActive;
    this.pending = this.pending ? Buffer.concat([this.pending, d]) : d;
    if (this.state === C.Head) this.loop();
    else if (this.pending.length > READ_AHEAD) this.sock.pause();
  }

  /** Parses and dispatches the heads in `pending`, one request at a time. */
  private loop(): void {
    if (this.looping) return;
    this.looping = true;
    try {
      while (this.state === C.Head && this.pending) {
        const r = parseRequestHead(this.pending);
        if (r === undefined) return;
        if (!r.ok) {
          this.listener.malformed(this, r.reason);
          this.endWith(rescueWire("BAD_REQUEST", randomUUID(), true));
          return;
        }
        const head = r.head;
        if (head.method === "CONNECT") return this.refuseConnect();
        const rest = this.pending.length > head.size ? this.pending.subarray(head.size) : undefined;
        this.pending = rest;
        this.head = head;
        this.keep = keepAlive(head);
        if (head.connection.includes("upgrade") && field(head, "upgrade") !== undefined) {
          this.detach();
          this.listener.upgrade(
            this.sock,
            { method: head.method, url: head.target, headers: fieldRecord(head) },
            rest ?? Buffer.alloc(0),
          );
          return;
        }
        this.framer = new Framer(head.chunked ? -1 : Math.max(head.contentLength, 0));
        this.state = C.Held;
        this.listener.request(this, head);
      }
    } finally {
      this.looping = false;
    }
  }

  /**
   * CONNECT is refused (501), whatever its target: the connection was captured for one
   * destination (the outbound routes by the original destination, the inbound serves one app
   * port), and a tunnel to a destination the caller names would carry bytes that neither routing
   * nor per-request authorization ever see, and would make the outbound an open proxy.
   */
  private refuseConnect(): void {
    this.listener.malformed(this, "CONNECT (a tunnel) is not proxied by the sidecar");
    this.endWith(rescueWire("CONNECT_REFUSED", randomUUID(), true));
  }

  private detach(): void {
    this.state = C.Closed;
    this.server.conns.delete(this);
    this.sock.removeListener("data", this.onData);
    this.sock.pause();
  }

  private endWith(text: string): void {
    this.state = C.Closed;
    this.pending = undefined;
    this.sock.end(text, "latin1");
  }

  /** Sends the request upstream over a connection of `pool`, then relays the response. */
  forward(pool: UpstreamPool, headBytes: Buffer, done: (r: ForwardResult) => void): void {
    if (this.state !== C.Held) {
      done({
        status: 0,
        requestBytes: 0,
        responseBytes: 0,
        error: new Error("downstream connection closed"),
      });
      return;
    }
    const ex = new Exchange(this, pool, headBytes, done);
    this.ex = ex;
    ex.acquire();
  }

  /** Answers the request with a flag's fixed response (or drops the connection if a response started). */
  reject(flag: Flag, requestId: string): void {
    if (this.state === C.Closed) return;
    if (this.ex?.started) {
      this.sock.destroy();
      return;
    }
    this.ex = undefined;
    const close = !this.keep || this.framer?.done !== true || this.listener.draining();
    if (close) return this.endWith(rescueWire(flag, requestId, true));
    this.sock.write(rescueWire(flag, requestId, false), "latin1");
    this.next();
  }

  /** Called by the exchange: the upstream connection is ready for the body. */
  startBody(): void {
    this.state = C.Body;
    const p = this.pending;
    this.pending = undefined;
    if (p) this.pumpBody(p);
    else if (this.framer!.done) this.state = C.After;
    // Reading may have paused while the request waited (read-ahead full); the body flows now.
    if (this.state === C.Body && this.sock.isPaused() && !this.ex?.upstreamFull()) this.sock.resume();
  }

  private pumpBody(d: Buffer): void {
    const f = this.framer!;
    const ex = this.ex!;
    const n = f.feed(d, 0);
    if (n < 0) {
      ex.requestBroken(f.error!);
      return;
    }
    if (n > 0) ex.sendBody(n === d.length ? d : d.subarray(0, n));
    if (f.done) {
      this.state = C.After;
      if (n < d.length) this.pending = d.subarray(n);
    }
  }

  /** Framing of the request body: done (or not) and its payload bytes. */
  get requestDone(): boolean {
    return this.framer?.done === true;
  }

  get requestBytes(): number {
    return this.framer?.payload ?? 0;
  }

  /** Back to reading request heads after a complete exchange, or closing. */
  next(close = false): void {
    this.ex = undefined;
    this.head = undefined;
    this.framer = undefined;
    if (this.state === C.Closed) return;
    // During a drain a connection closes after its exchange, even one whose response began before
    // the drain (and so did not say `connection: close`); a pipelined request already read is
    // served first (its response says close).
    if (close || !this.keep || (this.listener.draining() && this.pending === undefined)) {
      this.state = C.Closed;
      this.sock.end();
      return;
    }
    this.state = C.Head;
    this.headStart = coarseNow();
    this.lastActive = this.headStart;
    if (this.sock.isPaused()) this.sock.resume();
    if (this.pending) this.loop();
  }

  /** After a failed exchange: the request waits for another forward or a reject. */
  held(): void {
    if (this.state !== C.Closed) this.state = C.Held;
  }

  /** Whether the response must ask the client to close. */
  closing(): boolean {
    return !this.keep || this.listener.draining();
  }
}

/** A head and the body bytes after it as one buffer, so they leave in one write. */
function joined(head: Buffer, body: Buffer): Buffer {
  return Buffer.concat([head, body], head.length + body.length);
}

enum R {
  Connecting,
  Head,
  Body,
  Done,
}

/** One request and its response over one upstream connection. */
class Exchange implements UpstreamUser {
  started = false;
  private up: Upstream | undefined;
  private r = R.Connecting;
  private rbuf: Buffer | undefined;
  private rframer: Framer | undefined;
  private status = 0;
  private upKeep = true;
  private clientClose = false;
  /** The client speaks HTTP/1.0 and the response is chunked: its payload goes out bare, delimited by close. */
  private dechunk = false;
  private parts: Buffer[] = [];
  private staleRetried = false;
  private reqHead: Buffer | undefined;
  private respHead: Buffer | undefined;
  private finished = false;

  constructor(
    private readonly conn: Http1Conn,
    private readonly pool: UpstreamPool,
    private readonly headBytes: Buffer,
    private readonly done: (r: ForwardResult) => void,
  ) {}

  acquire(): void {
    this.pool.acquire((err, up) => {
      if (this.finished) {
        if (up) this.pool.release(up);
        return;
      }
      if (err || !up) return this.fail(err ?? new Error("connect failed"));
      if (this.conn.closed) {
        this.pool.release(up);
        return this.fail(new Error("downstream connection closed"));
      }
      this.up = up;
      up.user = this;
      this.r = R.Head;
      // The head goes out with the first body bytes already read, in one write (one TLS record).
      this.reqHead = this.headBytes;
      this.conn.startBody();
      if (this.reqHead !== undefined && (this.r as R) !== R.Done) up.sock.write(this.reqHead);
      this.reqHead = undefined;
    });
  }

  sendBody(b: Buffer): void {
    const up = this.up;
    if (!up || this.r === R.Done) return;
    const head = this.reqHead;
    this.reqHead = undefined;
    if (!up.sock.write(head === undefined ? b : joined(head, b))) this.conn.sock.pause();
  }

  upstreamFull(): boolean {
    return this.up?.sock.writableNeedDrain === true;
  }

  upDrain(): void {
    this.conn.lastActive = coarseNow();
    if (!this.conn.closed) this.conn.sock.resume();
  }

  clientDrain(): void {
    this.conn.lastActive = coarseNow();
    if (this.up && this.r === R.Body) this.up.sock.resume();
  }

  /**
   * No byte moved either way for `ms` (Http1Conn.sweep): both connections are given up. With no
   * response begun, a request body still owed is the client's stall (408), else the upstream's
   * (504); a response begun is cut by closing the downstream connection (rescue's rule).
   */
  timedOut(ms: number): void {
    if (this.r === R.Done) return;
    const clientStalled = this.up !== undefined && !this.conn.requestDone;
    if (this.up) {
      this.up.user = undefined;
      this.up.sock.destroy();
    }
    if (this.started) this.conn.sock.destroy();
    const flag: Flag = clientStalled ? "REQUEST_TIMEOUT" : "UPSTREAM_TIMEOUT";
    const who = clientStalled ? "request body" : "upstream";
    this.fail(new Error(`stream idle timeout: no byte from the ${who} for ${ms} ms`), flag);
  }

  /** The request body's framing is invalid: nothing more can be sent on either connection. */
  requestBroken(why: string): void {
    this.up?.sock.destroy();
    this.fail(new Error(`invalid request body: ${why}`));
  }

  upData(d: Buffer): void {
    this.conn.lastActive = coarseNow();
    if (this.r === R.Body) return this.body(d, 0);
    if (this.r !== R.Head) return;
    let buf: Buffer = this.rbuf ? Buffer.concat([this.rbuf, d]) : d;
    this.rbuf = buf;
    for (;;) {
      const p = parseResponseHead(buf);
      if (p === undefined) return;
      if (!p.ok) {
        this.up!.sock.destroy();
        return this.fail(new Error(`invalid response head: ${p.reason}`));
      }
      const h = p.head;
      const rest: Buffer | undefined = buf.length > h.size ? buf.subarray(h.size) : undefined;
      this.rbuf = rest;
      if (h.status === 101) {
        this.up!.sock.destroy();
        return this.fail(new Error("101 Switching Protocols to a request that asked for no upgrade"));
      }
      if (h.status < 200) {
        // 100 Continue and other interim responses go to the client as they are.
        this.conn.sock.write(interimHeadFor(h));
        if (!rest) return;
        buf = rest;
        continue;
      }
      this.responseHead(h);
      if (rest && (this.r as R) === R.Body) this.body(rest, 0);
      else if (this.respHead !== undefined) this.flushResponseHead();
      return;
    }
  }

  private responseHead(h: ResponseHead): void {
    const method = this.conn.head!.method;
    let length: number;
    if (method === "HEAD" || h.status === 204 || h.status === 304) length = 0;
    else if (h.chunked) length = -1;
    else if (h.contentLength >= 0) length = h.contentLength;
    else length = -2;
    this.status = h.status;
    this.upKeep = keepAlive(h) && length !== -2;
    // An HTTP/1.0 client cannot read chunked framing: it gets the payload, ended by the close.
    this.dechunk = length === -1 && this.conn.head!.minor === 0;
    this.clientClose = this.conn.closing() || length === -2 || this.dechunk;
    this.rframer = new Framer(length);
    if (this.dechunk) this.rframer.data = (b, start, end) => this.parts.push(b.subarray(start, end));
    this.r = R.Body;
    this.started = true;
    // Written with the first body bytes (see body) unless there are none.
    this.respHead = responseHeadFor(
      h,
      this.clientClose,
      this.conn.head!.minor === 0 && !this.clientClose,
      this.dechunk,
    );
    if (this.rframer.done) {
      this.flushResponseHead();
      this.complete(false);
    }
  }

  private flushResponseHead(): void {
    const head = this.respHead;
    this.respHead = undefined;
    if (head !== undefined) this.conn.sock.write(head);
  }

  private body(d: Buffer, from: number): void {
    const f = this.rframer!;
    const n = f.feed(d, from);
    if (n < 0) {
      this.up!.sock.destroy();
      this.conn.sock.destroy();
      return this.fail(new Error(`invalid response body: ${f.error}`));
    }
    if (n > 0 && this.dechunk) {
      const parts = this.parts;
      this.parts = [];
      const head = this.respHead;
      this.respHead = undefined;
      if (head !== undefined) parts.unshift(head);
      const out = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
      if (out.length > 0 && !this.conn.sock.write(out)) this.up!.sock.pause();
    } else if (n > 0) {
      const chunk = from === 0 && n === d.length ? d : d.subarray(from, from + n);
      const head = this.respHead;
      this.respHead = undefined;
      if (!this.conn.sock.write(head === undefined ? chunk : joined(head, chunk))) this.up!.sock.pause();
    } else if (this.respHead !== undefined) this.flushResponseHead();
    if (f.done) this.complete(from + n < d.length);
  }

  /** The response is complete: the connections are reused when both sides allow it. */
  private complete(extra: boolean): void {
    this.r = R.Done;
    const up = this.up!;
    const reqDone = this.conn.requestDone;
    if (this.upKeep && !extra && reqDone && !up.closed) this.pool.release(up);
    else {
      up.user = undefined;
      up.sock.destroy();
    }
    this.finish();
    this.conn.next(this.clientClose || !reqDone);
  }

  upClosed(err: Error | undefined): void {
    if (this.r === R.Done) return;
    if (this.r === R.Body && this.rframer!.length === -2) {
      // A response framed by the close of the connection: complete now.
      this.r = R.Done;
      this.finish();
      this.conn.next(true);
      return;
    }
    if (this.r === R.Head && !this.started && this.up!.uses > 0 && !this.staleRetried && this.retryable()) {
      // A kept-alive connection closed under a request that had no body yet sent: it never
      // reached the app; try once on another connection.
      this.staleRetried = true;
      this.up = undefined;
      this.r = R.Connecting;
      this.conn.held();
      return this.acquire();
    }
    if (this.started) this.conn.sock.destroy();
    this.fail(err ?? new Error("upstream closed the connection"));
  }

  private retryable(): boolean {
    return !this.conn.hasBody && IDEMPOTENT.has(this.conn.head?.method ?? "");
  }

  clientClosed(): void {
    if (this.r === R.Done) return;
    if (this.up) {
      this.up.user = undefined;
      this.up.sock.destroy();
    }
    this.fail(new Error("downstream connection closed"));
  }

  private fail(err: Error, flag?: Flag): void {
    if (this.finished) return;
    this.r = R.Done;
    if (this.up) this.up.user = undefined;
    this.conn.held();
    this.finished = true;
    this.done({
      status: this.status,
      requestBytes: this.conn.requestBytes,
      responseBytes: this.rframer?.payload ?? 0,
      error: err,
      flag,
    });
  }

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    this.done({
      status: this.status,
      requestBytes: this.conn.requestBytes,
      responseBytes: this.rframer?.payload ?? 0,
    });
  }
}
