// The HTTP access log line, written straight into the proxy logger's destination. pino builds a
// line by walking the object's keys, checking serializers and stringifiers per key and formatting
// the time with `toISOString()` per line; for one line per request that was 5–10 % of a sidecar's
// CPU. This writer emits the same line pino would (pino's level prefix, time, the logger's bindings,
// the record's fields in a fixed order with absent ones left out, then `"msg":"access"`), builds
// the ISO time from a prefix cached per second, and JSON-escapes only strings that need it. It is
// hand-written because no logging library offers a precompiled line for one fixed record shape.

import pino, { type Logger } from "pino";

const S = pino.symbols as unknown as Record<string, symbol>;
/** Characters a JSON string cannot hold as they are (controls, quote, backslash, surrogates). */
const NEEDS_ESCAPE = /[\u0000-\u001f"\\\ud800-\udfff]/;
const INFO = 30;

/** A JSON string literal for `s`. */
export function jsonString(s: string): string {
  return s.length < 128 && !NEEDS_ESCAPE.test(s) ? `"${s}"` : JSON.stringify(s);
}

/** `,"time":"<ISO>"` as pino's isoTime writes it, from a cache of the part up to the second. */
class IsoClock {
  private second = -1;
  private prefix = "";

  stamp(now: number): string {
    const sec = Math.floor(now / 1000);
    if (sec !== this.second) {
      this.second = sec;
      this.prefix = `,"time":"${new Date(sec * 1000).toISOString().slice(0, 20)}`;
    }
    const ms = now - sec * 1000;
    return `${this.prefix}${ms < 10 ? "00" : ms < 100 ? "0" : ""}${ms}Z"`;
  }
}

export interface AccessFields {
  direction: string;
  requestId: string;
  source?: string;
  destination?: string;
  service?: string;
  upstream?: string;
  mtls: boolean;
  method?: string;
  path?: string;
  status: number;
  grpcStatus?: string;
  http2?: boolean;
  flag?: string;
  decision?: string;
  policy?: string;
  rule?: number;
  reason?: string;
  dryRun?: unknown;
  requestBytes: number;
  responseBytes: number;
  durationMs: number;
  err?: string;
}

function num(n: number): string {
  return Number.isFinite(n) ? String(n) : "null";
}

/**
 * `num(n)` for a non-negative `n` with at most three decimals (a duration rounded to the
 * microsecond), from integers: V8's shortest-decimal conversion of a fraction showed in the
 * profile. Anything else goes to `num`.
 */
export function num3(n: number): string {
  const micros = Math.round(n * 1000);
  if (!(n >= 0) || micros > 0x7fffffff || micros / 1000 !== n) return num(n);
  const whole = Math.floor(micros / 1000);
  let frac = micros - whole * 1000;
  if (frac === 0) return String(whole);
  let digits = 3;
  while (frac % 10 === 0) {
    frac /= 10;
    digits--;
  }
  const f = String(frac);
  return `${whole}.${f.length < digits ? "0".repeat(digits - f.length) + f : f}`;
}

/**
 * Writes access lines for `log`. Falls back to `log.info` when the logger formats lines in a way
 * this writer does not reproduce (a log formatter, hooks, a mixin, a nested key).
 */
export class AccessLog {
  private readonly clock = new IsoClock();
  private readonly fast: boolean;
  private readonly isoTime: boolean;
  /**
   * What the line needs of the logger, read once (a pino logger's symbol-keyed fields are slow to
   * look up per line): its level prefix, its bindings (the proxy never changes them after start),
   * its time function and its destination.
   */
  private readonly levelPrefix: string;
  private readonly bindings: string;
  private readonly timeFn: () => string;
  private readonly stream: { write(line: string): unknown };

  constructor(private readonly log: Logger) {
    const l = log as unknown as Record<symbol, unknown>;
    const formatters = l[S["formattersSym"]!] as { log?: unknown } | undefined;
    const hooks = l[S["hooksSym"]!] as { logMethod?: unknown; streamWrite?: unknown } | undefined;
    this.fast =
      typeof (l[S["streamSym"]!] as { write?: unknown } | undefined)?.write === "function" &&
      formatters?.log === undefined &&
      hooks?.logMethod === undefined &&
      hooks?.streamWrite === undefined &&
      l[S["mixinSym"]!] === undefined &&
      l[S["nestedKeySym"]!] == null &&
      l[S["messageKeySym"]!] === "msg" &&
      !l[S["msgPrefixSym"]!] &&
      typeof (l[S["lsCacheSym"]!] as Record<number, unknown> | undefined)?.[INFO] === "string";
    this.isoTime = l[S["timeSym"]!] === pino.stdTimeFunctions.isoTime;
    this.levelPrefix = String((l[S["lsCacheSym"]!] as Record<number, string> | undefined)?.[INFO] ?? "");
    this.bindings = String(l[S["chindingsSym"]!] ?? "");
    this.timeFn = l[S["timeSym"]!] as () => string;
    this.stream = l[S["streamSym"]!] as { write(line: string): unknown };
  }

  write(r: AccessFields): void {
    const log = this.log;
    if (log.levelVal > INFO) return;
    if (!this.fast) {
      log.info(r, "access");
      return;
    }
    const time = this.isoTime ? this.clock.stamp(Date.now()) : this.timeFn();
    let s = `${this.levelPrefix}${time}${this.bindings}`;
    s += `,"direction":${jsonString(r.direction)},"requestId":${jsonString(r.requestId)}`;
    if (r.source !== undefined) s += `,"source":${jsonString(r.source)}`;
    if (r.destination !== undefined) s += `,"destination":${jsonString(r.destination)}`;
    if (r.service !== undefined) s += `,"service":${jsonString(r.service)}`;
    if (r.upstream !== undefined) s += `,"upstream":${jsonString(r.upstream)}`;
    s += `,"mtls":${r.mtls}`;
    if (r.method !== undefined) s += `,"method":${jsonString(r.method)}`;
    if (r.path !== undefined) s += `,"path":${jsonString(r.path)}`;
    s += `,"status":${num(r.status)}`;
    if (r.grpcStatus !== undefined) s += `,"grpcStatus":${jsonString(r.grpcStatus)}`;
    if (r.http2 !== undefined) s += `,"http2":${r.http2}`;
    if (r.flag !== undefined) s += `,"flag":${jsonString(r.flag)}`;
    if (r.decision !== undefined) s += `,"decision":${jsonString(r.decision)}`;
    if (r.policy !== undefined) s += `,"policy":${jsonString(r.policy)}`;
    if (r.rule !== undefined) s += `,"rule":${num(r.rule)}`;
    if (r.reason !== undefined) s += `,"reason":${jsonString(r.reason)}`;
    if (r.dryRun !== undefined) {
      const d = JSON.stringify(r.dryRun);
      if (d !== undefined) s += `,"dryRun":${d}`;
    }
    s += `,"requestBytes":${num(r.requestBytes)},"responseBytes":${num(r.responseBytes)},"durationMs":${num3(r.durationMs)}`;
    if (r.err !== undefined) s += `,"err":${jsonString(r.err)}`;
    this.stream.write(`${s},"msg":"access"}\n`);
  }
}
