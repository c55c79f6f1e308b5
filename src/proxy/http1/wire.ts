// Rewriting heads for the next hop. Hop-by-hop fields are connection-local and never forwarded
// (except Transfer-Encoding and Trailer, because bodies are spliced in the framing they came in);
// identity fields from the caller are never trusted. The fields that go on are copied as the bytes
// the parser validated (./head.ts), not re-serialized from strings: a forwarded head costs one
// buffer and a few copies, where a string head took dozens of concatenations, a flattening copy
// in the write, and a string per field value (bench/README.md, "Round 4: CPU and the GC tail").

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

/** Whether a field named `name` of `h` is hop-by-hop (by name, or named by `connection`). */
function hop(h: Head, name: string): boolean {
  if (HOP_BY_HOP.has(name)) return true;
  return h.connection.length > 0 && h.connection.includes(name) && name !== "transfer-encoding";
}

/** `start` (a start line with its CRLF), the fields of `h` that `keep` passes, as sent, then `tail`. */
function assemble(h: Head, start: string | undefined, keep: (name: string) => boolean, tail: string): Buffer {
  const { names, at, buf } = h;
  let size = (start === undefined ? h.lineEnd : start.length) + tail.length;
  for (let i = 0; i < names.length; i++) if (keep(names[i]!)) size += at[i * 4 + 3]! - at[i * 4]!;
  const out = Buffer.allocUnsafe(size);
  let o = start === undefined ? buf.copy(out, 0, 0, h.lineEnd) : out.write(start, 0, "latin1");
  for (let i = 0; i < names.length; i++) {
    if (keep(names[i]!)) o += buf.copy(out, o, at[i * 4]!, at[i * 4 + 3]!);
  }
  out.write(tail, o, "latin1");
  return out;
}

/**
 * The request head for upstream: `path` as the target, HTTP/1.1, the caller's fields minus
 * hop-by-hop ones, those `drop` names and every identity field only the mesh may set (XFCC,
 * x-forwarded-for, x-zmesh-*, ...: `spoofable`), then `extra` (name, value pairs set by the mesh).
 */
export function requestHeadFor(
  h: RequestHead,
  path: string,
  drop: ReadonlySet<string>,
  extra: readonly string[],
): Buffer {
  // An absolute-form target's authority goes on as the Host field, in place of the one sent.
  const authority = h.authority;
  let tail = authority === undefined ? "" : `host: ${authority}\r\n`;
  for (let i = 0; i + 1 < extra.length; i += 2) tail += `${extra[i]}: ${extra[i + 1]}\r\n`;
  return assemble(
    h,
    `${h.method} ${path} HTTP/1.1\r\n`,
    (n) => !drop.has(n) && !hop(h, n) && !spoofable(n) && (authority === undefined || n !== "host"),
    `${tail}\r\n`,
  );
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
): Buffer {
  const keep = dechunked
    ? (n: string) => !hop(h, n) && n !== "transfer-encoding" && n !== "trailer"
    : (n: string) => !hop(h, n);
  const tail = close
    ? "connection: close\r\n\r\n"
    : http10KeepAlive
      ? "connection: keep-alive\r\n\r\n"
      : "\r\n";
  // An HTTP/1.1 status line goes on as it came; an HTTP/1.0 one is answered as HTTP/1.1.
  return assemble(h, h.minor === 1 ? undefined : `HTTP/1.1 ${h.status} ${h.reason}\r\n`, keep, tail);
}

/** An interim (1xx) response, relayed as is but without hop-by-hop fields. */
export function interimHeadFor(h: ResponseHead): Buffer {
  return responseHeadFor(h, false, false);
}
