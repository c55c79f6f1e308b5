// diag: structured logs (pino, JSON lines) and named diagnostics channels, one per part, so
// that nothing prints ad hoc. ZMESH_DEBUG=proxy,controlplane (or *) mirrors channels to stderr.

import { type Channel, channel } from "node:diagnostics_channel";
import pino, { type Logger } from "pino";
import { ENV, envOr } from "../config/settings.js";
import { LineSink } from "./linesink.js";

export type Part = "identity" | "controlplane" | "proxy" | "runtime" | "cli";

const channels = new Map<Part, Channel>();
const debugParts = new Set(envOr(ENV.debug, "").split(",").filter(Boolean));

/** The diagnostics channel of a part: "zmesh:<part>". Subscribers get {event, ...fields}. */
export function diagnostics(part: Part): Channel {
  let c = channels.get(part);
  if (!c) {
    c = channel(`zmesh:${part}`);
    channels.set(part, c);
    if (debugParts.has(part) || debugParts.has("*")) {
      c.subscribe((msg) => process.stderr.write(`[zmesh:${part}] ${JSON.stringify(msg)}\n`));
    }
  }
  return c;
}

/** Buffered log output: lines reach stdout at most this long after they were logged. */
const FLUSH_MS = 100;

/**
 * A JSON-lines logger for a long-running process (control plane, proxy). The proxy's (one access
 * log line per request) is buffered (./linesink.ts): written in blocks of 4 KiB, by one periodic
 * flush, at drain and at exit, instead of a write syscall per line. The writes stay synchronous:
 * an asynchronous write hands each block to libuv's thread pool, which costs more than writing it.
 */
export function logger(part: Part, fields: Record<string, unknown> = {}): Logger {
  const options = {
    level: envOr(ENV.logLevel, "info"),
    base: { part, ...fields },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  if (part !== "proxy") return pino(options);
  const dest = new LineSink(1, 4_096, FLUSH_MS);
  process.once("exit", () => dest.flushSync());
  return pino(options, dest);
}

export type { Logger };
