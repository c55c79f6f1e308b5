// HTTP/2 plumbing shared by both directions (h2c with apps, h2 over mutual TLS between sidecars;
// gRPC rides on it): header hygiene for HTTP/2, a pool of client sessions by destination (whose
// owner retires those of destinations gone from the config: `SessionPool.prune`), and the
// relay of one stream (headers, body both ways with backpressure, trailers, resets) to an upstream
// session. node:http2 does all the framing, flow control and HPACK; nothing here parses bytes.

import { randomUUID } from "node:crypto";
import {
  type ClientHttp2Session,
  type ClientHttp2Stream,
  constants,
  createServer,
  type Http2Session,
  type IncomingHttpHeaders,
  type OutgoingHttpHeaders,
  type ServerHttp2Stream,
} from "node:http2";
import type { Socket } from "node:net";
import type { Logger } from "../diag/index.js";
import { spoofable } from "./headers.js";
import { abortedHere, abortResponse, FLAGS, type Flag, rescueH2 } from "./rescue.js";
import type { ProxyState } from "./state.js";
import type { HttpRecord, Telemetry } from "./telemetry.js";

const {
  NGHTTP2_NO_ERROR,
  NGHTTP2_CANCEL,
  NGHTTP2_INTERNAL_ERROR,
  NGHTTP2_REFUSED_STREAM,
  NGHTTP2_FLAG_END_STREAM,
} = constants;

/** Larger windows than HTTP/2's 64 KiB default, so a single large body is not paced by round trips. */
export const H2_SETTINGS = { initialWindowSize: 1 << 20 };
/** Connection-level receive window set on every session we create or accept. */
export const H2_SESSION_WINDOW = 8 << 20;
/** Memory (MB) nghttp2 may hold per session before it refuses new streams. */
export const H2_MAX_SESSION_MEMORY = 64;
/** A pooled upstream session with no frame for this long is closed (gracefully: open streams finish). */
const IDLE_MS = 60_000;
/** The same for sessions we serve, longer, so that the client side usually closes first. */
export const H2_SERVED_IDLE_MS = 120_000;

/**
 * Request body bytes kept until the answer begins, so that a refused stream can be sent again
 * (RFC 9113 section 8.7); a stream that sent more is not retried.
 */
const REPLAY_MAX = 64 * 1024;

/** Connection-specific headers HTTP/2 forbids (RFC 9113 section 8.2.2); `te` may only say "trailers". */
const CONNECTION_SPECIFIC = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "upgrade",
  "http2-settings",
]);

/** gRPC (and gRPC-Web) requests say so in their content-type; their errors go in grpc-status. */
export function isGrpc(headers: IncomingHttpHeaders): boolean {
  const ct = headers["content-type"];
  return typeof ct === "string" && ct.startsWith("application/grpc");
}

/**
 * Whether an HTTP/1.1 request asks to switch to HTTP/2 (`Upgrade: h2c`). The inbound refuses it:
 * spliced as an upgrade, its later streams would reach the app without being authorized one by
 * one ("h2c smuggling"). Clients use prior knowledge instead (or h2 via their sidecar).
 */
export function isH2cUpgrade(upgrade: string | undefined): boolean {
  return upgrade !== undefined && /(^|,)\s*h2c\s*(,|$)/i.test(upgrade);
}

/** The request id of a stream: the caller's, else a new one. */
export function requestIdOf(headers: IncomingHttpHeaders): string {
  const id = headers["x-request-id"];
  return typeof id === "string" && id !== "" ? id : randomUUID();
}

/** Request headers to pass on (pseudo-headers included); identity headers dropped when asked. */
export function h2RequestHeaders(h: IncomingHttpHeaders, stripIdentity: boolean): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(h)) {
    if (v === undefined || CONNECTION_SPECIFIC.has(k)) continue;
    if (k === "te" && v !== "trailers") continue;
    if (stripIdentity && spoofable(k)) continue; // identity headers only the mesh may set
    out[k] = v;
  }
  return out;
}

/** Response headers and trailers to pass on: connection-specific ones dropped. */
export function h2ResponseHeaders(h: IncomingHttpHeaders): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(h)) if (v !== undefined && !CONNECTION_SPECIFIC.has(k)) out[k] = v;
  return out;
}

/** The path of a request without its query string, for policies and logs. */
export function splitPath(path: string): { path: string; query: string } {
  const q = path.indexOf("?");
  return q < 0 ? { path, query: "" } : { path: path.slice(0, q), query: path.slice(q + 1) };
}

/**
 * One client session per key (an endpoint, or an app port), shared by all streams to it. A
 * session that closes, errs or gets GOAWAY leaves the pool; the next stream opens a new one.
 * `open` resolves once the session can take streams, or rejects when its connection failed.
 */
export class SessionPool {
  private readonly sessions = new Map<string, Promise<ClientHttp2Session>>();
  /** The session each settled entry of `sessions` holds, checked before it is handed out again. */
  private readonly settled = new Map<string, ClientHttp2Session>();
  private readonly live = new Set<ClientHttp2Session>();

  get(key: string, open: () => Promise<ClientHttp2Session>): Promise<ClientHttp2Session> {
    const have = this.sessions.get(key);
    if (have) {
      // A session that got GOAWAY (node:http2 then closes it) or closed takes no new stream.
      const s = this.settled.get(key);
      if (s === undefined || !(s.closed || s.destroyed)) return have;
      this.sessions.delete(key);
      this.settled.delete(key);
    }
    const p = open().then(
      (s) => {
        this.live.add(s);
        const evict = () => {
          if (this.sessions.get(key) === p) {
            this.sessions.delete(key);
            this.settled.delete(key);
          }
        };
        s.once("close", () => {
          evict();
          this.live.delete(s);
        });
        s.once("goaway", evict);
        s.on("error", evict);
        s.setTimeout(IDLE_MS, () => {
          evict();
          s.close();
        });
        if (s.closed || s.destroyed) evict();
        else if (this.sessions.get(key) === p) this.settled.set(key, s);
        return s;
      },
      (e: Error) => {
        if (this.sessions.get(key) === p) this.sessions.delete(key);
        throw e;
      },
    );
    this.sessions.set(key, p);
    return p;
  }

  /** Forgets `session` under `key` at once (it refused a new stream: closing or gone away). */
  drop(key: string, session: ClientHttp2Session): void {
    const have = this.sessions.get(key);
    if (!have) return;
    have.then(
      (s) => {
        if (s === session && this.sessions.get(key) === have) {
          this.sessions.delete(key);
          this.settled.delete(key);
        }
      },
      () => {},
    );
  }

  /**
   * Retires the session under `key`, open or still opening: it takes no new stream, its open
   * streams finish, then it closes (as after GOAWAY); the next `get` opens a new one. For a change
   * of what its opening checked (the identities the service may run as). Streams already handed
   * the session (their `then` runs before this one) are sent first: node:http2 refuses a stream
   * whose HEADERS are not out yet when `close()` is called, so the close waits for the writes that
   * those requests scheduled (setImmediate, after them).
   */
  retire(key: string): void {
    const have = this.sessions.get(key);
    if (!have) return;
    this.sessions.delete(key);
    this.settled.delete(key);
    have.then(
      (s) =>
        setImmediate(() => {
          if (!(s.closed || s.destroyed)) s.close();
        }),
      () => {},
    );
  }

  /**
   * Retires (see `retire`) the session of every key not in `live`: the endpoints of a new config,
   * so that sessions to endpoints gone from it end once their open streams have.
   */
  prune(live: Pick<ReadonlySet<string>, "has">): void {
    for (const key of this.sessions.keys()) if (!live.has(key)) this.retire(key);
  }

  /** Keys with a session, open or opening (tests, and the sidecar's counts). */
  get size(): number {
    return this.sessions.size;
  }

  close(): void {
    this.sessions.clear();
    this.settled.clear();
    for (const s of this.live) s.destroy();
    this.live.clear();
  }
}

/** Waits for a new client session's connection: resolves on `connect`, rejects on an early error. */
export function whenConnected(s: ClientHttp2Session): Promise<ClientHttp2Session> {
  return new Promise((resolve, reject) => {
    const onError = (e: Error) => {
      s.destroy();
      reject(e);
    };
    s.once("error", onError);
    s.once("connect", () => {
      s.off("error", onError);
      s.on("error", () => {}); // later errors close the session; its streams see them
      s.setLocalWindowSize(H2_SESSION_WINDOW);
      resolve(s);
    });
  });
}

export interface StreamResult {
  /** HTTP status the upstream answered with; 0 when it never answered. */
  status: number;
  /** grpc-status from the response's trailers (or a trailers-only response). */
  grpcStatus?: string;
  requestBytes: number;
  responseBytes: number;
  /**
   * The upstream failed. With `status` 0 nothing was sent to the client yet and the caller
   * answers (rescue); otherwise the client's stream was reset with the upstream's code.
   */
  error?: Error;
  /** The client reset its stream (its RST_STREAM code), e.g. a cancelled gRPC call. */
  clientReset?: number;
  /** The session refused to open the stream (it is closing): nothing was sent, a retry is safe. */
  notSent?: boolean;
  /**
   * The upstream refused the stream (REFUSED_STREAM, which is also how streams above a GOAWAY's
   * last stream id end): it processed none of it (RFC 9113 section 8.7), so any method may be
   * sent again, on another session, with this (relayStream's `replay`). The client's stream is
   * untouched and no longer listened to.
   */
  refused?: Replay;
}

/** What a refused stream had sent, to send again first on the next try. */
export interface Replay {
  bodyless: boolean;
  chunks: Buffer[];
  /** The client had ended its request (body and trailers are all in here). */
  ended: boolean;
  trailers: OutgoingHttpHeaders | undefined;
}

/**
 * Relays one client stream `down` to a new stream on `session` with `headers`, and the answer
 * back: body chunks both ways with backpressure, request and response trailers (gRPC's status
 * lives there), a trailers-only response kept trailers-only, and resets passed on both ways.
 * `done` is called once, when the exchange is over or the upstream failed before answering.
 */
export function relayStream(
  down: ServerHttp2Stream,
  session: ClientHttp2Session,
  headers: OutgoingHttpHeaders,
  done: (r: StreamResult) => void,
  replay?: Replay,
): void {
  const r: StreamResult = { status: 0, requestBytes: 0, responseBytes: 0 };
  let settled = false;
  const settle = () => {
    if (settled) return;
    settled = true;
    done(r);
  };
  if (down.closed || down.destroyed) {
    r.clientReset = down.rstCode ?? NGHTTP2_CANCEL;
    return settle();
  }
  const bodyless = replay ? replay.bodyless : requestComplete(down);
  let up: ClientHttp2Stream;
  try {
    up = session.request(headers, bodyless ? { endStream: true } : { waitForTrailers: true });
  } catch (e) {
    r.error = e as Error;
    r.notSent = true;
    return settle();
  }
  let responseEnded = false;
  let trailersOnly = false;
  /** Headers node:http2 refuses to send (it throws) end the exchange with a reset, not the process. */
  const guarded = (fn: () => void) => {
    try {
      fn();
    } catch (e) {
      r.error ??= e as Error;
      if (!up.closed) up.close(NGHTTP2_INTERNAL_ERROR);
      if (down.headersSent) abortResponse(down, (e as Error).message);
      else if (!down.closed) down.close(NGHTTP2_INTERNAL_ERROR);
    }
  };
  let requestTrailers: OutgoingHttpHeaders | undefined = replay?.trailers;
  let responseTrailers: OutgoingHttpHeaders | undefined;
  // What went upstream before an answer, kept to send again if the stream is refused.
  let held: Buffer[] | undefined = replay?.chunks;
  let heldBytes = 0;
  let replayable = true;
  let requestEnded = bodyless || replay?.ended === true;

  // Request: client → upstream.
  const onData = (c: Buffer) => {
    // This sidecar has answered the client and closed its stream: what still arrives goes nowhere.
    if (down.closed) return;
    r.requestBytes += c.length;
    if (replayable && r.status === 0) {
      heldBytes += c.length;
      if (heldBytes <= REPLAY_MAX) {
        if (held === undefined) held = [c];
        else held.push(c);
      } else {
        replayable = false;
        held = undefined;
      }
    }
    if (!up.destroyed && !up.write(c)) down.pause();
  };
  const onTrailers = (t: IncomingHttpHeaders) => {
    // Request trailers are headers too: identity headers are no more trusted there.
    requestTrailers = h2RequestHeaders(t, true);
  };
  const onEnd = () => {
    // Node ends a stream's readable side when it is closed or reset too: that request was cut,
    // and must reach the upstream as cancelled, never as complete.
    if (down.closed) {
      if (!up.closed && !up.destroyed) up.close(NGHTTP2_CANCEL);
      return;
    }
    requestEnded = true;
    if (!up.destroyed && !up.writableEnded) up.end();
  };
  if (!bodyless) {
    if (replay) {
      for (const c of replay.chunks) {
        heldBytes += c.length;
        r.requestBytes += c.length;
        up.write(c);
      }
    }
    if (replay?.ended) up.end();
    else {
      down.on("data", onData);
      down.on("trailers", onTrailers);
      down.once("end", onEnd);
      if (replay && down.isPaused()) down.resume();
    }
    up.on("drain", () => down.resume());
    up.once("wantTrailers", () => guarded(() => up.sendTrailers(requestTrailers ?? {})));
  }

  // Response: upstream → client.
  up.once("response", (h: IncomingHttpHeaders, flags: number) => {
    r.status = Number(h[":status"]);
    held = undefined;
    if (down.closed || down.destroyed) return;
    const out = h2ResponseHeaders(h);
    if (flags & NGHTTP2_FLAG_END_STREAM) {
      // Trailers-only (how gRPC reports an error without a message): its status is in the headers.
      if (typeof h["grpc-status"] === "string") r.grpcStatus = h["grpc-status"];
      responseEnded = true;
      trailersOnly = true;
      guarded(() => down.respond(out, { endStream: true }));
      return;
    }
    guarded(() => down.respond(out, { waitForTrailers: true }));
  });
  up.on("data", (c: Buffer) => {
    r.responseBytes += c.length;
    if (down.writable && !down.write(c)) up.pause();
  });
  const onDownDrain = () => up.resume();
  down.on("drain", onDownDrain);
  up.on("trailers", (t: IncomingHttpHeaders) => {
    if (typeof t["grpc-status"] === "string") r.grpcStatus = t["grpc-status"];
    responseTrailers = h2ResponseHeaders(t);
  });
  up.once("end", () => {
    responseEnded = true;
    if (r.status !== 0 && down.headersSent && !down.destroyed && !down.writableEnded) down.end();
  });
  let trailersSent = false;
  let stopAfterTrailers = false;
  /** `stopClient` after Node's own sending of the trailers (an immediate): a closed stream sends none. */
  const stopClientLater = () => setImmediate(() => stopClient(down));
  const onWantTrailers = () => {
    guarded(() => down.sendTrailers(responseTrailers ?? {}));
    trailersSent = true;
    if (stopAfterTrailers) stopClientLater();
  };
  down.once("wantTrailers", onWantTrailers);

  up.on("error", (e: Error) => {
    r.error ??= e;
  });
  up.once("close", () => {
    const code = up.rstCode ?? NGHTTP2_NO_ERROR;
    if (r.status === 0) {
      if (code === NGHTTP2_REFUSED_STREAM && replayable && !down.closed && !down.destroyed) {
        // Never processed upstream: handed back whole, for one more try on another session.
        down.off("data", onData);
        down.off("trailers", onTrailers);
        down.off("end", onEnd);
        down.off("drain", onDownDrain);
        down.off("wantTrailers", onWantTrailers);
        down.off("close", onDownClose);
        down.pause(); // what arrives meanwhile waits for the next try
        r.refused = { bodyless, chunks: held ?? [], ended: requestEnded, trailers: requestTrailers };
        r.error ??= new Error("upstream refused the stream (REFUSED_STREAM)");
        return settle();
      }
      // No answer at all: the caller answers the client (it may still be sending; that is dropped).
      r.error ??= new Error(`upstream closed the stream before answering (HTTP/2 code ${code})`);
      return settle();
    }
    if (code !== NGHTTP2_NO_ERROR && !responseEnded && !down.closed) {
      r.error ??= new Error(`upstream reset the stream (HTTP/2 code ${code})`);
      // A response already begun is reset so that it cannot pass for complete (abortResponse).
      if (down.headersSent) abortResponse(down, r.error.message);
      else down.close(code === NGHTTP2_CANCEL ? NGHTTP2_CANCEL : NGHTTP2_INTERNAL_ERROR);
    }
    // A complete answer before the whole request (an early 408, 413, ...): the client is told to
    // stop sending once the answer is out, as the upstream told us (RFC 9113 section 8.1).
    if (responseEnded && !requestEnded && !down.closed) {
      // A trailers-only answer is complete already; one with trailers, once they are out.
      if (trailersOnly || trailersSent) stopClientLater();
      else stopAfterTrailers = true;
    }
    if (down.closed) settle();
  });
  down.on("error", () => {});
  const onDownClose = () => {
    const code = down.rstCode ?? NGHTTP2_NO_ERROR;
    // Reset by this sidecar (abortResponse), the upstream stream is cancelled; by the client, the
    // client's code is passed on.
    const here = abortedHere(down);
    if (code !== NGHTTP2_NO_ERROR || !responseEnded) {
      if (code !== NGHTTP2_NO_ERROR && r.error === undefined && !here) r.clientReset = code;
      if (!up.closed && !up.destroyed) up.close(code === NGHTTP2_NO_ERROR || here ? NGHTTP2_CANCEL : code);
    }
    // Otherwise the upstream's close settles (it was just asked to close, if it was open).
    if (r.status !== 0 || r.clientReset !== undefined || here || up.closed) settle();
  };
  down.once("close", onDownClose);
}

/**
 * Tells a client still sending to stop: RST_STREAM NO_ERROR, which Node sends once the answer is
 * out (RFC 9113 section 8.1). Resumed, since Node closes a stream only once its readable side has
 * ended (what still arrives is dropped).
 */
function stopClient(down: ServerHttp2Stream): void {
  if (down.closed) return;
  down.close(NGHTTP2_NO_ERROR);
  down.resume();
}

/** Whether the client has sent all of its request (headers that ended the stream, or the body's end). */
function requestComplete(down: ServerHttp2Stream): boolean {
  return down.readableEnded || (down as { endAfterHeaders?: boolean }).endAfterHeaders === true;
}

/** Whether the client's whole request has arrived, read or not (Node's stream state says so before 'end'). */
function requestReceived(down: ServerHttp2Stream): boolean {
  return (
    requestComplete(down) || (down as { _readableState?: { ended?: boolean } })._readableState?.ended === true
  );
}

/** Resets a client's stream as refused (never processed), so that the client may send it again. */
export function refuseStream(down: ServerHttp2Stream): void {
  if (!down.closed && !down.destroyed) down.close(NGHTTP2_REFUSED_STREAM);
}

/**
 * Records a relayed stream's outcome once no retry is left to take, the same in both directions:
 * a reset by the other side (`resetBy` says who), a stream refused again (passed on as refused, so
 * the caller may send it elsewhere), a failure before or after the response began, or success.
 */
export function finishRelayed(
  down: ServerHttp2Stream,
  r: StreamResult,
  finish: (r: Partial<HttpRecord>, flag?: Flag) => void,
  resetBy: string,
): void {
  const result = {
    status: r.status,
    requestBytes: r.requestBytes,
    responseBytes: r.responseBytes,
    grpcStatus: r.grpcStatus,
  };
  if (r.clientReset !== undefined)
    return finish({ ...result, err: `${resetBy} reset the stream (HTTP/2 code ${r.clientReset})` });
  if (r.refused) {
    refuseStream(down);
    return finish({ ...result, err: r.error?.message, flag: "UPSTREAM_FAILURE" });
  }
  if (r.error && r.status === 0) return finish({ ...result, err: r.error.message }, "UPSTREAM_FAILURE");
  if (r.error) return finish({ ...result, err: r.error.message, flag: "UPSTREAM_FAILURE" });
  finish(result);
}

/**
 * The end of one served stream, the same in both directions: `finish` runs once, takes the stream
 * out of the in-flight count, writes the flag's wire response (rescue.ts) and records the stream;
 * `bug` turns a throw in a promise callback into a failed stream instead of a dead process.
 */
export function streamEnd(
  state: ProxyState,
  telemetry: Telemetry,
  log: Logger,
  s: { down: ServerHttp2Stream; record: HttpRecord; requestId: string; grpc: boolean; start: bigint },
) {
  let finished = false;
  /** Set when the stream idle bound reset a stream whose response had begun. */
  let timedOut: { flag: Flag; err: string } | undefined;
  const finish = (r: Partial<HttpRecord>, flag?: Flag): void => {
    if (finished) return;
    finished = true;
    state.inflight--;
    Object.assign(s.record, r);
    if (timedOut !== undefined && flag === undefined) {
      // The relay's outcome (status, byte counts), under the idle bound's flag and reason.
      s.record.flag = timedOut.flag;
      s.record.err = timedOut.err;
    }
    if (flag) {
      s.record.flag = flag;
      s.record.status = s.grpc ? 200 : FLAGS[flag].status;
      if (s.grpc) s.record.grpcStatus = String(FLAGS[flag].grpc);
      rescueH2(s.down, flag, s.requestId, s.grpc);
      // A client still sending is told to stop once the answer is out (RST_STREAM NO_ERROR, RFC
      // 9113 section 8.1): Node keeps a stream that has read open after its response ends. The
      // close also cancels an upstream stream (the relay's close handler) and stops work still
      // pending (a dial, a retry, a JWT check) from sending the request on: relayStream refuses
      // a closed stream.
      if (!requestComplete(s.down)) stopClient(s.down);
    }
    s.record.durationMs = Number(process.hrtime.bigint() - s.start) / 1e6;
    telemetry.http(s.record);
  };
  // Envoy's stream_idle_timeout, as for HTTP/1.1: no byte of this stream either way for
  // `streamIdleMs` ends it (a timer per stream, which Node refreshes on every read and write; the
  // HTTP/1.1 bound is one coarse sweep per listener instead). The client's stream is closed either
  // way, which cancels the upstream stream and any work still pending (see `finish`).
  const idleMs = state.timeouts.streamIdleMs;
  s.down.setTimeout(idleMs, () => {
    if (finished || s.down.closed) return;
    if (s.down.writableEnded) {
      // The whole answer went out; only the client's side is open: it is told to stop.
      return stopClient(s.down);
    }
    // A paused request is one the upstream stopped reading: the upstream stalled, not the client.
    const clientStalled = !requestReceived(s.down) && !s.down.isPaused();
    const flag: Flag = clientStalled ? "REQUEST_TIMEOUT" : "UPSTREAM_TIMEOUT";
    const err = `stream idle timeout: no byte from the ${clientStalled ? "request body" : "upstream"} for ${idleMs} ms`;
    if (s.down.headersSent) {
      // The response began: a reset; the relay then settles and records the stream.
      timedOut = { flag, err };
      abortResponse(s.down, err);
      return;
    }
    finish({ err }, flag);
    stopClient(s.down);
  });
  const bug = (e: unknown): void => {
    log.error(
      { requestId: s.requestId, err: (e as Error).stack ?? String(e) },
      "HTTP/2 stream handling failed",
    );
    finish({ err: (e as Error).message }, "UPSTREAM_FAILURE");
  };
  return { finish, bug };
}

/**
 * The HTTP/2 server side of one listener, shared by both directions: serves the sockets handed to
 * it, remembers what each connection was accepted with (the inbound's peer, the outbound's original
 * destination) and destroys them all on close.
 */
export class ServedSessions<T> {
  private readonly server = createServer({ settings: H2_SETTINGS, maxSessionMemory: H2_MAX_SESSION_MEMORY });
  private readonly contexts = new WeakMap<Http2Session, T>();
  private readonly served = new Set<Http2Session>();
  private accepting: T | undefined;

  constructor(onStream: (s: ServerHttp2Stream, h: IncomingHttpHeaders) => void, onError: (e: Error) => void) {
    // `connection` creates the session synchronously, so its context is known right here.
    this.server.on("session", (s: Http2Session) => {
      if (this.accepting !== undefined) this.contexts.set(s, this.accepting);
      this.served.add(s);
      s.once("close", () => this.served.delete(s));
      s.on("error", onError);
      s.setLocalWindowSize(H2_SESSION_WINDOW);
      s.setTimeout(H2_SERVED_IDLE_MS, () => s.close());
    });
    this.server.on("stream", onStream);
  }

  /** Serves `sock` (already known to speak HTTP/2) as a server session accepted with `context`. */
  serve(sock: Socket, context: T): void {
    this.accepting = context;
    try {
      this.server.emit("connection", sock);
    } finally {
      this.accepting = undefined;
    }
  }

  /** What the session of a stream was accepted with. */
  contextOf(session: Http2Session | undefined): T | undefined {
    return session ? this.contexts.get(session) : undefined;
  }

  /**
   * A drain: every session gets GOAWAY now, idle or busy (`close` sends it with the last stream
   * id it took), so clients open new streams elsewhere while the streams in flight finish. One
   * accepted later (its connection was already in) gets it after its first stream.
   */
  drain(): void {
    for (const s of this.served) s.close();
  }

  close(): void {
    for (const s of this.served) s.destroy();
  }
}
