// The load generator of the data-plane benchmarks, run as its own process (the parent pins it to
// its own core) and driven over IPC. Two jobs: closed-loop maximum rps over N keep-alive
// connections for a fixed time, and an open-loop fixed rate whose latency counts from each
// request's scheduled send time, so a stall is not hidden (no coordinated omission). Raw sockets
// and a minimal HTTP/1.1 response reader keep its own cost per request small.

import { connect, type Socket } from "node:net";
import { createHistogram, performance, type RecordableHistogram } from "node:perf_hooks";

export interface Target {
  host: string;
  port: number;
  path: string;
}

export type Job =
  | { kind: "max"; target: Target; connections: number; durationMs: number }
  | { kind: "rate"; target: Target; connections: number; durationMs: number; rps: number };

export interface LoadResult {
  kind: Job["kind"];
  /** Responses completed (max: within the window; rate: all, including those that came late). */
  completed: number;
  /** Connection errors and resets. */
  errors: number;
  /** Requests still unanswered when the drain deadline passed (an overloaded chain, not an error). */
  unanswered: number;
  /** Responses whose status was not 2xx. */
  non2xx: number;
  seconds: number;
  /** Responses per second within the window: for a rate job, below the rate means it could not keep up. */
  rps: number;
  p50_ms: number;
  p90_ms: number;
  p99_ms: number;
  max_ms: number;
  /** Rate jobs: p99 of (actual send - scheduled send); large means queueing or a lagging generator. */
  send_lag_p99_ms?: number;
}

export type Request = { id: number; job: Job } | { id: number; stop: true };
export type Reply = { id: number; result: LoadResult } | { id: number; error: string };

const CONNECT_TIMEOUT_MS = 5_000;
const MAX_HEAD_BYTES = 64 * 1024;
/** Time given to requests still in flight when a job's window ends. */
const DRAIN_MS = 5_000;
/** Reconnects allowed per job: a target that keeps resetting fails the job instead of looping. */
const MAX_RECONNECTS = 1_000;

enum St {
  Head,
  Body,
  ChunkSize,
  ChunkData,
  Trailers,
}

/** One keep-alive connection carrying one request at a time; reads responses by Content-Length or chunks. */
class Conn {
  busy = false;
  dead = false;
  /** When the request in flight was scheduled (rate jobs) or sent (max jobs), in performance.now() ms. */
  t = 0;
  private buf: Buffer | undefined;
  private st = St.Head;
  private remaining = 0;
  private status = 0;

  private constructor(
    private readonly sock: Socket,
    private readonly request: Buffer,
    private readonly done: (c: Conn, status: number) => void,
  ) {
    sock.on("data", (d: Buffer) => this.read(d));
    const fail = () => {
      if (this.dead) return;
      this.dead = true;
      sock.destroy();
      if (this.busy) {
        this.busy = false;
        done(this, -1);
      }
    };
    sock.on("error", fail);
    sock.on("close", fail);
    sock.on("end", fail);
  }

  static open(target: Target, request: Buffer, done: (c: Conn, status: number) => void): Promise<Conn> {
    return new Promise((resolve, reject) => {
      const sock = connect({ host: target.host, port: target.port, noDelay: true });
      const timer = setTimeout(() => {
        sock.destroy();
        reject(new Error(`connect to ${target.host}:${target.port} timed out`));
      }, CONNECT_TIMEOUT_MS);
      sock.once("error", (e) => {
        clearTimeout(timer);
        reject(e);
      });
      sock.once("connect", () => {
        clearTimeout(timer);
        sock.removeAllListeners("error");
        resolve(new Conn(sock, request, done));
      });
    });
  }

  send(t: number): void {
    this.busy = true;
    this.t = t;
    this.st = St.Head;
    this.sock.write(this.request);
  }

  close(): void {
    this.dead = true;
    this.sock.destroy();
  }

  private read(d: Buffer): void {
    let b = this.buf ? Buffer.concat([this.buf, d]) : d;
    this.buf = undefined;
    for (let guard = 0; guard < 10_000; guard++) {
      switch (this.st) {
        case St.Head: {
          const end = b.indexOf("\r\n\r\n", 0, "latin1");
          if (end < 0) {
            if (b.length > MAX_HEAD_BYTES) return this.protocolError();
            this.buf = b;
            return;
          }
          const head = b.toString("latin1", 0, end).toLowerCase();
          this.status = Number(head.slice(9, 12));
          b = b.subarray(end + 4);
          const cl = /\r\ncontent-length:\s*(\d+)/.exec(head);
          if (cl) {
            this.remaining = Number(cl[1]);
            this.st = St.Body;
          } else if (/\r\ntransfer-encoding:[^\r]*chunked/.test(head)) this.st = St.ChunkSize;
          else return this.protocolError(); // no length: the benchmark's servers always send one
          break;
        }
        case St.Body: {
          if (b.length < this.remaining) {
            this.remaining -= b.length;
            return;
          }
          b = b.subarray(this.remaining);
          this.complete();
          if (b.length === 0) return;
          break;
        }
        case St.ChunkSize: {
          const eol = b.indexOf("\r\n", 0, "latin1");
          if (eol < 0) {
            this.buf = b;
            return;
          }
          const size = Number.parseInt(b.toString("latin1", 0, eol), 16);
          if (Number.isNaN(size)) return this.protocolError();
          b = b.subarray(eol + 2);
          if (size === 0) this.st = St.Trailers;
          else {
            this.remaining = size + 2; // data and its CRLF
            this.st = St.ChunkData;
          }
          break;
        }
        case St.ChunkData: {
          if (b.length < this.remaining) {
            this.remaining -= b.length;
            return;
          }
          b = b.subarray(this.remaining);
          this.st = St.ChunkSize;
          break;
        }
        case St.Trailers: {
          const eol = b.indexOf("\r\n", 0, "latin1");
          if (eol < 0) {
            this.buf = b;
            return;
          }
          b = b.subarray(eol + 2);
          if (eol === 0) {
            this.complete();
            if (b.length === 0) return;
          }
          break;
        }
      }
    }
    this.protocolError();
  }

  private complete(): void {
    this.st = St.Head;
    this.busy = false;
    this.done(this, this.status);
  }

  private protocolError(): void {
    this.sock.destroy(new Error("unreadable HTTP response"));
  }
}

function histogram(): RecordableHistogram {
  return createHistogram({ lowest: 1, highest: 120e9, figures: 3 });
}

const ms = (h: RecordableHistogram, p: number) => (h.count === 0 ? 0 : h.percentile(p) / 1e6);
const elapsedNs = (from: number) => Math.max(1, Math.round((performance.now() - from) * 1e6));

function requestBytes(t: Target): Buffer {
  return Buffer.from(
    `GET ${t.path} HTTP/1.1\r\nhost: bench.local\r\nuser-agent: zmesh-loadgen\r\n\r\n`,
    "latin1",
  );
}

/** Opens `n` connections; a failure to open them all fails the job. */
async function openAll(job: Job, req: Buffer, done: (c: Conn, s: number) => void): Promise<Conn[]> {
  return Promise.all(Array.from({ length: job.connections }, () => Conn.open(job.target, req, done)));
}

function result(
  kind: Job["kind"],
  h: RecordableHistogram,
  counts: { completed: number; errors: number; unanswered: number; non2xx: number },
  seconds: number,
  inWindow: number,
  lag?: RecordableHistogram,
): LoadResult {
  return {
    kind,
    ...counts,
    seconds,
    rps: inWindow / seconds,
    p50_ms: ms(h, 50),
    p90_ms: ms(h, 90),
    p99_ms: ms(h, 99),
    max_ms: h.count === 0 ? 0 : h.max / 1e6,
    ...(lag ? { send_lag_p99_ms: ms(lag, 99) } : {}),
  };
}

/** Closed loop: every connection sends its next request as soon as a response ends, until the window closes. */
async function runMax(job: Extract<Job, { kind: "max" }>): Promise<LoadResult> {
  const req = requestBytes(job.target);
  const h = histogram();
  const counts = { completed: 0, errors: 0, unanswered: 0, non2xx: 0 };
  let end = Number.POSITIVE_INFINITY;
  let reconnects = 0;
  let inFlight = 0;
  let settle: (() => void) | undefined;
  const done = (c: Conn, status: number) => {
    inFlight--;
    const now = performance.now();
    if (now <= end) {
      if (status < 0) counts.errors++;
      else {
        counts.completed++;
        if (status < 200 || status > 299) counts.non2xx++;
        h.record(elapsedNs(c.t));
      }
    }
    if (now < end && !c.dead) {
      inFlight++;
      c.send(now);
    } else if (now < end && reconnects++ < MAX_RECONNECTS) {
      void Conn.open(job.target, req, done).then(
        (n) => {
          conns.push(n);
          if (performance.now() < end) {
            inFlight++;
            n.send(performance.now());
          }
        },
        () => undefined,
      );
    }
    if (inFlight === 0 && now >= end) settle?.();
  };
  const conns = await openAll(job, req, done);
  const start = performance.now();
  end = start + job.durationMs;
  for (const c of conns) {
    inFlight++;
    c.send(start);
  }
  await new Promise<void>((resolve) => {
    settle = resolve;
    setTimeout(resolve, job.durationMs + DRAIN_MS).unref();
  });
  counts.unanswered = inFlight; // still unanswered at the drain deadline
  for (const c of conns) c.close();
  return result("max", h, counts, job.durationMs / 1000, counts.completed);
}

/**
 * Open loop: request k is due at start + k/rps whatever happened before; it goes out on an idle
 * connection or waits for one, and its latency runs from when it was due. The scheduler spins on
 * setImmediate (the generator has a core of its own) so sends are not late by a timer's granularity.
 */
async function runRate(job: Extract<Job, { kind: "rate" }>): Promise<LoadResult> {
  const req = requestBytes(job.target);
  const h = histogram();
  const lag = histogram();
  const counts = { completed: 0, errors: 0, unanswered: 0, non2xx: 0 };
  let inWindow = 0;
  const total = Math.round((job.rps * job.durationMs) / 1000);
  const interval = 1000 / job.rps;
  let start = 0;
  let due = 0; // requests whose time has come
  let sent = 0;
  let answered = 0;
  let reconnects = 0;
  const idle: Conn[] = [];
  const sendNext = (c: Conn) => {
    const scheduled = start + sent * interval;
    sent++;
    lag.record(elapsedNs(scheduled));
    c.send(scheduled);
  };
  const done = (c: Conn, status: number) => {
    answered++;
    if (status < 0) counts.errors++;
    else {
      counts.completed++;
      if (performance.now() <= start + job.durationMs) inWindow++;
      if (status < 200 || status > 299) counts.non2xx++;
      h.record(elapsedNs(c.t));
    }
    if (!c.dead) {
      if (sent < due) sendNext(c);
      else idle.push(c);
    } else if (reconnects++ < MAX_RECONNECTS) {
      void Conn.open(job.target, req, done).then(
        (n) => idle.push(n),
        () => undefined,
      );
    }
  };
  const conns = await openAll(job, req, done);
  idle.push(...conns);
  start = performance.now();
  const deadline = start + job.durationMs + DRAIN_MS;
  await new Promise<void>((resolve) => {
    const tick = () => {
      const now = performance.now();
      while (due < total && start + due * interval <= now) due++;
      while (sent < due && idle.length > 0) {
        const c = idle.pop()!;
        if (c.dead) continue;
        sendNext(c);
      }
      if ((answered >= total && sent >= total) || now > deadline) return resolve();
      setImmediate(tick);
    };
    tick();
  });
  counts.unanswered = total - answered; // due but never answered (or never sent) by the deadline
  for (const c of conns) c.close();
  for (const c of idle) c.close();
  return result("rate", h, counts, job.durationMs / 1000, inWindow, lag);
}

function run(job: Job): Promise<LoadResult> {
  return job.kind === "max" ? runMax(job) : runRate(job);
}

if (process.send) {
  let busy = false;
  process.on("message", (m: Request | "stop") => {
    if (typeof m !== "object" || "stop" in m) process.exit(0); // "stop" (bench/lib/children.ts) or { stop }
    if (busy) {
      process.send!({ id: m.id, error: "a job is already running" } satisfies Reply);
      return;
    }
    busy = true;
    run(m.job).then(
      (result) => {
        busy = false;
        process.send!({ id: m.id, result } satisfies Reply);
      },
      (e: Error) => {
        busy = false;
        process.send!({ id: m.id, error: e.message } satisfies Reply);
      },
    );
  });
  process.on("disconnect", () => process.exit(0));
}
