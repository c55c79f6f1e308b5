// Relays one HTTP/1.1 request to an upstream pool and its response back, counting body bytes
// both ways; shared by inbound (to the app) and outbound (to the destination's sidecar).

import type { IncomingMessage, ServerResponse } from "node:http";
import { pipeline } from "node:stream";
import type { Pool } from "undici";
import { type OutHeaders, responseHeaders } from "./headers.js";

export interface RelayResult {
  status: number;
  requestBytes: number;
  responseBytes: number;
  /** Set when the upstream could not be reached or broke off before a response started. */
  error?: Error;
}

/** Whether a request carries a body (`content-length: 0` does not). */
export function hasBody(req: IncomingMessage): boolean {
  const length = req.headers["content-length"];
  return (length !== undefined && length !== "0") || req.headers["transfer-encoding"] !== undefined;
}

export function relay(
  pool: Pool,
  req: IncomingMessage,
  res: ServerResponse,
  path: string,
  headers: OutHeaders,
  done: (r: RelayResult) => void,
): void {
  const r: RelayResult = { status: 0, requestBytes: 0, responseBytes: 0 };
  const body = hasBody(req);
  if (body) {
    req.on("data", (c: Buffer) => {
      r.requestBytes += c.length;
    });
  }
  pool.request({ path, method: req.method as "GET", headers, body: body ? req : null }).then(
    (up) => {
      r.status = up.statusCode;
      res.writeHead(up.statusCode, responseHeaders(up.headers));
      up.body.on("data", (c: Buffer) => {
        r.responseBytes += c.length;
      });
      pipeline(up.body, res, () => done(r));
    },
    (e: Error) => {
      r.error = e;
      done(r);
    },
  );
}
