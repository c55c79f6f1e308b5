// HTTP/1.1 upgrades (WebSocket and the like): after the request head, the connection is no longer
// HTTP, so both directions are relayed as bytes once the request was routed and authorized.

import type { IncomingHttpHeaders } from "node:http";
import type { Duplex } from "node:stream";
import { forwardable, type OutHeaders } from "./headers.js";

/** The request head to send upstream: hop-by-hop headers dropped, but the upgrade itself kept. */
export function upgradeHead(
  method: string,
  path: string,
  headers: IncomingHttpHeaders,
  extra: OutHeaders,
): Buffer {
  const out = forwardable(headers, true);
  Object.assign(out, extra);
  out["connection"] = "upgrade";
  if (headers.upgrade) out["upgrade"] = headers.upgrade;
  const lines = [`${method} ${path} HTTP/1.1`];
  for (const [k, v] of Object.entries(out)) {
    for (const one of Array.isArray(v) ? v : [v]) lines.push(`${k}: ${one}`);
  }
  return Buffer.from(`${lines.join("\r\n")}\r\n\r\n`, "latin1");
}

/** Relays bytes both ways until either side closes; `done` runs once. */
export function splice(a: Duplex, b: Duplex, done: () => void): void {
  let closed = false;
  const end = () => {
    if (closed) return;
    closed = true;
    a.destroy();
    b.destroy();
    done();
  };
  a.pipe(b);
  b.pipe(a);
  a.on("error", end);
  b.on("error", end);
  a.once("close", end);
  b.once("close", end);
}
