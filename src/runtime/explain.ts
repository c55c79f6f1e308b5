// What happened to one request, from the proxies' access logs (`zmesh why <request-id>`). A
// denial's body names its request id, and every sidecar the request passed through logged a line
// with that id: the caller's outbound and the callee's inbound, each with its decision, policy, rule
// and a reason in words. This finds those lines in every workload's proxy log, pairs each outbound
// line with the inbound line it caused (an exchange), and says what each sidecar did and why. The
// demo explains its attempts with the same sentences.
//
// A request id is chosen by whoever sends the request (`x-request-id`), and an app that forwards it
// shares it with its own calls: one id can name several exchanges, which are reported apart.

import { open } from "node:fs/promises";
import { ZmeshError } from "../errors/index.js";
import type { AccessEntry } from "./mesh.js";
import type { MeshState } from "./state.js";
import { logFile } from "./supervisor.js";

/** One sidecar's record of the request. */
export interface Hop {
  /** namespace/name of the workload instance whose sidecar logged it. */
  instance: string;
  entry: AccessEntry;
}

/** A caller's outbound line and the inbound line it caused; either may be missing. */
export interface Exchange {
  outbound?: Hop;
  inbound?: Hop;
}

export interface Trace {
  exchanges: Exchange[];
  /** Some log held more lines with this id than are read (MAX_LINES_PER_LOG). */
  truncated: boolean;
}

/** Lines read per log for one id: a caller can send any number of requests with the same id. */
const MAX_LINES_PER_LOG = 1_000;
/** Exchanges `zmesh why` prints in text (all of them are in `-o json`). */
export const MAX_PRINTED = 20;
const CHUNK = 1 << 20;

/** Flags that mean a sidecar refused the request (policy, identity, protocol), not that it failed. */
const REFUSALS = new Set([
  "RBAC_DENIED",
  "JWT_INVALID",
  "BAD_REQUEST",
  "NO_ROUTE",
  "SECURE_NAMING",
  "CONNECT_REFUSED",
  "NOT_READY",
]);

/** Why a sidecar gave a request the outcome it logged, in words (empty when it logged no reason). */
export function explainEntry(e: AccessEntry): string {
  if (e.reason) return e.reason;
  if (e.flag === "NO_ROUTE")
    return "the caller's own sidecar refused: no service of the mesh listens at that address and port";
  if (e.flag) return `${e.flag}${e.err ? `: ${e.err}` : ""}`;
  return "";
}

/**
 * The access lines of request `id` in one proxy log, found by the exact text the access log writes
 * (`"requestId":<JSON string>,`), so an id that is part of another, or appears in a path, matches
 * nothing else; only those lines are parsed. At most MAX_LINES_PER_LOG; a missing log is empty.
 */
async function linesWithId(file: string, id: string): Promise<{ found: AccessEntry[]; more: boolean }> {
  const needle = Buffer.from(`"requestId":${JSON.stringify(id)},`);
  const found: AccessEntry[] = [];
  let fh: Awaited<ReturnType<typeof open>>;
  try {
    fh = await open(file, "r");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return { found, more: false }; // never started
    throw new ZmeshError(
      "ZMESH_RUNTIME",
      `cannot read the proxy log ${file} (${(e as NodeJS.ErrnoException).code}); zmesh why reads every proxy log of the mesh, run it as root`,
    );
  }
  try {
    let carry = Buffer.alloc(0);
    const chunk = Buffer.allocUnsafe(CHUNK);
    for (;;) {
      const { bytesRead } = await fh.read(chunk, 0, CHUNK, null);
      const data = bytesRead > 0 ? Buffer.concat([carry, chunk.subarray(0, bytesRead)]) : carry;
      // Whole lines only; the rest waits for the next chunk (at the end: a partial line, skipped).
      const end = bytesRead > 0 ? data.lastIndexOf(10) + 1 : data.length;
      let at = data.indexOf(needle);
      while (at >= 0 && at < end) {
        const start = data.lastIndexOf(10, at) + 1;
        const stop = data.indexOf(10, at);
        const line = data.toString("utf8", start, stop < 0 ? data.length : stop);
        try {
          const e = JSON.parse(line) as AccessEntry;
          if (e.msg === "access" && e.requestId === id) {
            if (found.length === MAX_LINES_PER_LOG) return { found, more: true };
            found.push(e);
          }
        } catch {
          // a partial line
        }
        at = stop < 0 ? -1 : data.indexOf(needle, stop);
      }
      if (bytesRead === 0) return { found, more: false };
      // A line longer than a chunk is no access line: drop it rather than grow without bound.
      carry = data.length - end > CHUNK ? Buffer.alloc(0) : data.subarray(end);
    }
  } finally {
    await fh.close();
  }
}

/** When a sidecar began with the request: a line is written when the request ends (`time`). */
function started(h: Hop): number {
  return Date.parse(h.entry.time) - (h.entry.durationMs ?? 0);
}

/**
 * Pairs each inbound line with the outbound line that caused it: same caller and callee identity,
 * same method, the nearest start (times are logged to the millisecond, so starts alone cannot
 * order a caller and a callee a fraction of a millisecond apart; the pairing does).
 */
export function pairExchanges(hops: Hop[]): Exchange[] {
  const outbound = hops.filter((h) => h.entry.direction === "outbound");
  const paired = new Set<Hop>();
  const exchanges: Exchange[] = [];
  for (const inbound of hops.filter((h) => h.entry.direction === "inbound")) {
    const e = inbound.entry;
    let best: Hop | undefined;
    for (const o of outbound) {
      if (paired.has(o) || o.entry.method !== e.method) continue;
      if (e.source === undefined || o.entry.source !== e.source || o.entry.destination !== e.destination)
        continue;
      if (!best || Math.abs(started(o) - started(inbound)) < Math.abs(started(best) - started(inbound)))
        best = o;
    }
    if (best) paired.add(best);
    exchanges.push(best ? { outbound: best, inbound } : { inbound });
  }
  for (const o of outbound) if (!paired.has(o)) exchanges.push({ outbound: o });
  const first = (x: Exchange) => started((x.outbound ?? x.inbound)!);
  return exchanges.sort((a, b) => first(a) - first(b));
}

/** Every exchange of request `id` that a sidecar of the mesh logged, in the order they began. */
export async function traceRequest(state: MeshState, id: string): Promise<Trace> {
  let truncated = false;
  const perInstance = await Promise.all(
    state.instances.map(async (inst) => {
      const { found, more } = await linesWithId(logFile(state, "proxy", inst), id);
      truncated ||= more;
      return found.map((entry) => ({ instance: `${inst.namespace}/${inst.name}`, entry }));
    }),
  );
  return { exchanges: pairExchanges(perInstance.flat()), truncated };
}

/** The last path segment of a SPIFFE ID's service account, or the ID itself. */
function who(spiffeId: string | undefined): string {
  if (!spiffeId) return "an unknown caller";
  const m = /\/ns\/([^/]+)\/sa\/([^/]+)$/.exec(spiffeId);
  return m ? `${m[1]}/${m[2]} (${spiffeId})` : spiffeId;
}

/** What a caller's request became, for the headline. */
function outcome(x: Exchange): string {
  const hops = [x.outbound, x.inbound].filter((h): h is Hop => h !== undefined);
  const refused = hops.find((h) => h.entry.decision === "deny" || REFUSALS.has(h.entry.flag ?? ""));
  if (refused) return `refused by the sidecar of ${refused.instance} (${refused.entry.direction})`;
  const failed = hops.find((h) => h.entry.flag);
  if (failed)
    return `failed at the sidecar of ${failed.instance} (${failed.entry.direction}): ${failed.entry.flag}`;
  return hops.some((h) => h.entry.decision === "allow") ? "allowed" : "passed";
}

/** One sidecar's line of the report, and why. */
function hopLines({ instance, entry: e }: Hop): string[] {
  const grpc = e.grpcStatus === undefined ? "" : ` (gRPC status ${e.grpcStatus})`;
  const status = e.status === undefined ? "" : ` ${e.status}${grpc}`;
  let line: string;
  if (e.direction === "outbound") {
    const to = e.service ?? e.upstream;
    line = `  ${instance} outbound${status}: ${e.flag ? `${e.flag}${to ? ` (to ${to})` : ""}` : `sent to ${to ?? "?"}`}`;
  } else {
    const verdict = e.decision === "deny" ? "DENIED" : e.decision === "allow" ? "ALLOWED" : e.flag;
    const by = e.policy ? ` by ${e.policy}${e.rule === undefined ? "" : ` rule ${e.rule}`}` : "";
    const from = `from ${who(e.source)} over ${e.mtls === false ? "plaintext" : "mutual TLS"}`;
    line = `  ${instance} inbound${status}: ${verdict ? `${verdict}${by}, ${from}` : from}`;
  }
  const lines = [line];
  const why = explainEntry(e);
  if (why) lines.push(`      why: ${why}`);
  for (const d of e.dryRun ?? [])
    lines.push(
      `      dry run: ${d.policy} would have ${d.wouldAllow ? "allowed" : "denied"} it (not enforced)`,
    );
  return lines;
}

/**
 * Control characters (C0, DEL, C1), bidirectional controls and line separators as `\xNN` /
 * `\u{NNNN}`: a logged path or header value comes from a caller, and must not drive the
 * operator's terminal.
 */
function printable(line: string): string {
  return line.replace(/[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]/g, (c) => {
    const code = c.charCodeAt(0);
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u{${code.toString(16)}}`;
  });
}

/** JSON whose every character outside printable ASCII is a `\uXXXX` escape (same value, inert text). */
export function inertJson(value: unknown): string {
  return JSON.stringify(value, null, 2).replace(
    /[\u007f-\uffff]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}

/** The report `zmesh why` prints: per exchange a headline, then each sidecar with what it did and why. */
export function formatTrace(id: string, trace: Trace): string[] {
  const { exchanges } = trace;
  const n = exchanges.length;
  const lines: string[] = [];
  if (n > 1)
    lines.push(
      `request ${id}: ${n} separate requests carry this id (a caller chooses its request ids, and an app that forwards x-request-id shares it with its own calls)`,
    );
  exchanges.slice(0, MAX_PRINTED).forEach((x, i) => {
    const first = (x.outbound ?? x.inbound)!.entry;
    const which = n > 1 ? ` (${i + 1} of ${n})` : "";
    lines.push(`request ${id}${which}: ${first.method ?? "?"} ${first.path ?? "?"}: ${outcome(x)}`);
    for (const h of [x.outbound, x.inbound]) if (h) lines.push(...hopLines(h));
  });
  if (n > MAX_PRINTED) lines.push(`... and ${n - MAX_PRINTED} more (zmesh why ${id} -o json lists them all)`);
  if (trace.truncated)
    lines.push(
      `(a proxy log holds more than ${MAX_LINES_PER_LOG} lines with this id; only the first were read)`,
    );
  return lines.map(printable);
}
