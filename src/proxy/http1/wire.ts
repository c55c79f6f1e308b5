// Rewriting heads for the next hop, as strings written in one go: hop-by-hop fields are
// connection-local and never forwarded (except Transfer-Encoding and Trailer, because bodies are
// spliced in the framing they came in), identity fields from the caller are never trusted.

import { spoofable } from "../headers.js";
import type { Head, RequestHead, ResponseHead } from "./head.js";

/** Fields that belong to one connection. */
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "te",
  "upgrade",
  "proxy-authorization",
  "proxy-authenticate",
]);

/** Whether field `i` of `h` is hop-by-hop (by name, or named by `connection`). */
function hop(h: Head, name: string): boolean {
  if (HOP_BY_HOP.has(name)) return true;
  return h.connection.length > 0 && h.connection.includes(name) && name !== "transfer-encoding";
}

/**
 * The request head for upstream: `path` as the target, HTTP/1.1, the caller's fields minus
 * hop-by-hop ones, those `drop` names and every identity field only the mesh may set (XFCC,
 * x-forwarded-for, x-zmesh-*, ...: `spoofable`), then `extra` (values set by the mesh).
 */
export function requestHeadFor(
  h: RequestHead,
  path: string,
  drop: ReadonlySet<string>,
  extra: readonly string[],
): string {
  let s = `${h.method} ${path} HTTP/1.1\r\n`;
  const { names, rawNames, values } = h;
  for (let i = 0; i < names.length; i++) {
    const n = names[i]!;
    if (drop.has(n) || hop(h, n) || spoofable(n)) continue;
    s += `${rawNames[i]}: ${values[i]}\r\n`;
  }
  for (let i = 0; i + 1 < extra.length; i += 2) s += `${extra[i]}: ${extra[i + 1]}\r\n`;
  return `${s}\r\n`;
}

/**
 * The response head for the downstream: hop-by-hop fields dropped, `connection: close` when
 * closing. `dechunked`: the body goes out without its chunked framing (to an HTTP/1.0 client,
 * which cannot read it), so `transfer-encoding` and `trailer` are dropped and `close` is set.
 */
export function responseHeadFor(
  h: ResponseHead,
  close: boolean,
  http10KeepAlive: boolean,
  dechunked = false,
): string {
  let s = `HTTP/1.1 ${h.status} ${h.reason}\r\n`;
  const { names, rawNames, values } = h;
  for (let i = 0; i < names.length; i++) {
    if (hop(h, names[i]!)) continue;
    if (dechunked && (names[i] === "transfer-encoding" || names[i] === "trailer")) continue;
    s += `${rawNames[i]}: ${values[i]}\r\n`;
  }
  if (close) s += "connection: close\r\n";
  else if (http10KeepAlive) s += "connection: keep-alive\r\n";
  return `${s}\r\n`;
}

/** An interim (1xx) response, relayed as is but without hop-by-hop fields. */
export function interimHeadFor(h: ResponseHead): string {
  return responseHeadFor(h, false, false);
}
