// The proxy's log destination: lines are encoded into one buffer as they come and written to the
// file descriptor in blocks (4 KiB, or every 100 ms, or at a flush or exit), with synchronous
// writes. Hand-written because pino's own destination (sonic-boom) keeps the pending lines as one
// string, measures that whole string with Buffer.byteLength on every write (which flattens it:
// up to 4 KiB copied per line) and copies it into a Buffer after each write; with one access line
// per request, that was a fifth of each sidecar's allocation (bench/README.md, "Round 5").

import { writeSync } from "node:fs";

/**
 * How long one block may wait for a full pipe (EAGAIN) before the rest of it is dropped. After a
 * drop, writes do not wait at all (a block that cannot go out at once is dropped) until a whole
 * block goes out:
 * a log reader that stalls must not stall the proxy's traffic once a second.
 */
const STALL_LIMIT_MS = 1_000;
const sleeper = new Int32Array(new SharedArrayBuffer(4));

export class LineSink {
  private readonly buf: Buffer;
  private len = 0;
  /** Bytes dropped: the descriptor stayed full (STALL_LIMIT_MS, then at once), or failed. */
  dropped = 0;
  /** Since the last drop, until a write succeeds: no waiting on a full descriptor. */
  private degraded = false;

  constructor(
    private readonly fd: number,
    private readonly blockBytes = 4_096,
    flushMs = 100,
    capacity = 64 * 1024,
  ) {
    this.buf = Buffer.allocUnsafe(capacity);
    setInterval(() => this.flushSync(), flushMs).unref();
  }

  /** One or more complete lines (pino's destination interface). */
  write(text: string): boolean {
    // A UTF-16 code unit is at most 3 bytes of UTF-8: room for `text` is checked for the worst case.
    if (text.length * 3 > this.buf.length - this.len) {
      this.flushSync();
      if (text.length * 3 > this.buf.length) {
        this.writeOut(Buffer.from(text, "utf8"));
        return true;
      }
    }
    this.len += this.buf.write(text, this.len, "utf8");
    if (this.len >= this.blockBytes) this.flushSync();
    return true;
  }

  /** Writes what is buffered now. */
  flushSync(): void {
    if (this.len === 0) return;
    const len = this.len;
    this.len = 0;
    this.writeOut(this.buf.subarray(0, len));
  }

  /** pino's `logger.flush(cb)` (writeOut never throws: what it cannot write is counted). */
  flush(cb?: () => void): void {
    this.flushSync();
    cb?.();
  }

  private writeOut(bytes: Buffer): void {
    let off = 0;
    const deadline = Date.now() + STALL_LIMIT_MS;
    while (off < bytes.length) {
      try {
        off += writeSync(this.fd, bytes, off, bytes.length - off);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if ((code !== "EAGAIN" && code !== "EBUSY") || this.degraded || Date.now() >= deadline) {
          // A full pipe nobody reads, or a closed descriptor: the proxy goes on, the block is lost.
          if (this.dropped === 0)
            process.stderr.write(`zmesh: log output ${code ?? "failed"}: log lines are being dropped\n`);
          this.dropped += bytes.length - off;
          this.degraded = true;
          return;
        }
        Atomics.wait(sleeper, 0, 0, 1);
      }
    }
    // A whole block went out: the descriptor is read again.
    this.degraded = false;
  }
}
