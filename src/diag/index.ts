// diag: structured logs (pino, JSON lines) and named diagnostics channels, one per part, so
// that nothing prints ad hoc. ZMESH_DEBUG=proxy,controlplane (or *) mirrors channels to stderr.

import { type Channel, channel } from "node:diagnostics_channel";
import pino, { type Logger } from "pino";
import { ENV, envOr } from "../config/settings.js";

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

/** A JSON-lines logger for a long-running process (control plane, proxy). */
export function logger(part: Part, fields: Record<string, unknown> = {}): Logger {
  return pino({
    level: envOr(ENV.logLevel, "info"),
    base: { part, ...fields },
    timestamp: pino.stdTimeFunctions.isoTime,
  });
}

export type { Logger };
