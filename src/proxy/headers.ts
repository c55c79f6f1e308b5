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

/** Identity headers only the mesh may set. */
const SPOOFABLE = new Set(["x-forwarded-client-cert", SOURCE_WORKLOAD_HEADER]);

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
    if (stripIdentity && SPOOFABLE.has(k)) continue;
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
