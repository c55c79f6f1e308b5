// Header hygiene shared by both directions: hop-by-hop headers are connection-local and never
// forwarded; identity headers from the caller are never trusted.

import type { IncomingHttpHeaders } from "node:http";

const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "te",
  "trailer",
  "upgrade",
  "proxy-authorization",
  "proxy-authenticate",
]);

/** Set by the calling sidecar for telemetry (the source workload's name); never by an app. */
export const SOURCE_WORKLOAD_HEADER = "x-zmesh-source-workload";

/**
 * Headers only the mesh may set: identity (XFCC), the client address chain (an app must not learn
 * a caller-chosen address as the peer's), and every x-zmesh-* / x-envoy-* header, which mesh code
 * reads as its own. Stripped from what a caller sends (the attack suite's spoofing cases).
 */
const SPOOFABLE = new Set(["x-forwarded-client-cert", "x-forwarded-for", "x-real-ip", "forwarded"]);
const SPOOFABLE_PREFIXES = ["x-zmesh-", "x-envoy-"];

export function spoofable(name: string): boolean {
  // "x_forwarded_client_cert" reaches a CGI-style app as the same variable as the dashed name.
  const n = name.includes("_") ? name.replaceAll("_", "-") : name;
  return (
    SPOOFABLE.has(n) || (n.charCodeAt(0) === 0x78 /* x */ && SPOOFABLE_PREFIXES.some((p) => n.startsWith(p)))
  );
}

/**
 * Fields a sidecar drops from the head it forwards because it writes its own (identity fields are
 * dropped anyway: `spoofable`). One set for both directions.
 */
export const REWRITTEN = new Set(["x-request-id"]);

export type OutHeaders = Record<string, string | string[]>;

export function forwardable(headers: IncomingHttpHeaders, stripIdentity: boolean): OutHeaders {
  const out: OutHeaders = {};
  const conn = headers["connection"];
  const named = conn
    ? new Set(
        conn
          .toLowerCase()
          .split(",")
          .map((s) => s.trim()),
      )
    : undefined;
  for (const [k, v] of Object.entries(headers)) {
    if (v === undefined || HOP_BY_HOP.has(k) || named?.has(k)) continue;
    if (stripIdentity && spoofable(k)) continue;
    out[k] = v;
  }
  return out;
}

/** Response headers from undici: drop hop-by-hop ones before relaying. */
export function responseHeaders(h: Record<string, string | string[] | undefined>): OutHeaders {
  const out: OutHeaders = {};
  for (const [k, v] of Object.entries(h)) if (v !== undefined && !HOP_BY_HOP.has(k)) out[k] = v;
  return out;
}

/** X-Forwarded-Client-Cert as Envoy writes it: who we are, the peer certificate's hash and its URI. */
export function xfcc(self: string, peer: { certHash: string; spiffeId: string }): string {
  return `By=${self};Hash=${peer.certHash};Subject="";URI=${peer.spiffeId}`;
}

/** destination_service from a Host or :authority value: without its port (`svc:8080` is `svc`), absent when empty. */
export function serviceOf(host: string): string | undefined {
  let end = host.length;
  while (end > 0 && host.charCodeAt(end - 1) >= 48 && host.charCodeAt(end - 1) <= 57) end--;
  if (end < host.length && end > 0 && host.charCodeAt(end - 1) === 58)
    return host.slice(0, end - 1) || undefined;
  return host || undefined;
}
