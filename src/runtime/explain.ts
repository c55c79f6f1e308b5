// What happened to one request, from the proxies' access logs (`zmesh why <request-id>`). A
// denial's body names its request id, and every sidecar the request passed through logged a line
// with that id: the caller's outbound and the callee's inbound, each with its decision, policy, rule
// and a reason in words. This finds those lines in every workload's proxy log and says, per hop,
// what that sidecar did and why. The demo explains its attempts with the same sentences.

import { once } from "node:events";
import { createReadStream } from "node:fs";
import { createInterface } from "node:readline";
import type { AccessEntry } from "./mesh.js";
import type { MeshState } from "./state.js";
import { logFile } from "./supervisor.js";

/** One sidecar's record of the request. */
export interface Hop {
  /** namespace/name of the workload instance whose sidecar logged it. */
  instance: string;
  entry: AccessEntry;
}

/** Why a sidecar gave a request the outcome it logged, in words (empty when it logged no reason). */
export function explainEntry(e: AccessEntry): string {
  if (e.reason) return e.reason;
  if (e.flag === "NO_ROUTE")
    return "the caller's own sidecar refused: no service of the mesh listens at that address and port";
  if (e.flag) return `${e.flag}${e.err ? `: ${e.err}` : ""}`;
  return "";
}

/** The access lines with request id `id` in one proxy log (JSON lines; other lines are skipped). */
async function linesWithId(file: string, id: string): Promise<AccessEntry[]> {
  const found: AccessEntry[] = [];
  const input = createReadStream(file, { encoding: "utf8" });
  try {
    await once(input, "open");
  } catch {
    return found; // no log: that workload's proxy never started
  }
  for await (const line of createInterface({ input, crlfDelay: Number.POSITIVE_INFINITY })) {
    if (!line.startsWith("{") || !line.includes(id)) continue;
    try {
      const e = JSON.parse(line) as AccessEntry;
      if (e.msg === "access" && e.requestId === id) found.push(e);
    } catch {
      // a partial last line
    }
  }
  return found;
}

/**
 * When a sidecar began with the request: a line is written when the request ends (`time`), so a
 * callee's inbound line comes before its caller's outbound line; the start orders them as they ran.
 */
function started(e: AccessEntry): number {
  return Date.parse(e.time) - (e.durationMs ?? 0);
}

/** Every sidecar's record of request `id`, in the order the request reached them (the caller's first). */
export async function traceRequest(state: MeshState, id: string): Promise<Hop[]> {
  const perInstance = await Promise.all(
    state.instances.map(async (inst) => {
      const entries = await linesWithId(logFile(state, "proxy", inst), id);
      return entries.map((entry) => ({ instance: `${inst.namespace}/${inst.name}`, entry }));
    }),
  );
  return perInstance
    .flat()
    .sort(
      (a, b) =>
        started(a.entry) - started(b.entry) ||
        Number(a.entry.direction === "inbound") - Number(b.entry.direction === "inbound"),
    );
}

/** The last path segment of a SPIFFE ID's service account, or the ID itself. */
function who(spiffeId: string | undefined): string {
  if (!spiffeId) return "an unknown caller";
  const m = /\/ns\/([^/]+)\/sa\/([^/]+)$/.exec(spiffeId);
  return m ? `${m[1]}/${m[2]} (${spiffeId})` : spiffeId;
}

/**
 * Control characters (C0, DEL, C1) and bidirectional overrides as `\\xNN` / `\\u{NNNN}`: a logged
 * path or header value comes from a caller, and must not drive the operator's terminal.
 */
function printable(line: string): string {
  return line.replace(/[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g, (c) => {
    const code = c.charCodeAt(0);
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u{${code.toString(16)}}`;
  });
}

/** The report `zmesh why` prints: a headline, then each hop with what it did and why. */
export function formatTrace(id: string, hops: Hop[]): string[] {
  const first = hops[0]?.entry;
  const deciding = hops.find((h) => h.entry.decision === "deny") ?? hops.find((h) => h.entry.flag);
  const outcome = deciding
    ? `refused by the sidecar of ${deciding.instance} (${deciding.entry.direction})`
    : hops.some((h) => h.entry.decision === "allow")
      ? "allowed"
      : "passed";
  const lines = [`request ${id}: ${first?.method ?? "?"} ${first?.path ?? "?"}: ${outcome}`];
  for (const { instance, entry: e } of hops) {
    const status = e.status === undefined ? "" : ` ${e.status}`;
    if (e.direction === "outbound") {
      const to = e.service ?? e.upstream;
      const did = e.flag ? `${e.flag}${to ? ` (to ${to})` : ""}` : `sent to ${to ?? "?"}`;
      lines.push(`  ${instance} outbound${status}: ${did}`);
    } else {
      const verdict = e.decision === "deny" ? "DENIED" : e.decision === "allow" ? "ALLOWED" : e.flag;
      const by = e.policy ? ` by ${e.policy}${e.rule === undefined ? "" : ` rule ${e.rule}`}` : "";
      const over = e.mtls === false ? "plaintext" : "mutual TLS";
      const from = `from ${who(e.source)} over ${over}`;
      lines.push(`  ${instance} inbound${status}: ${verdict ? `${verdict}${by}, ${from}` : from}`);
    }
    const why = explainEntry(e);
    if (why) lines.push(`      why: ${why}`);
  }
  return lines.map(printable);
}
