// The one place where an HTTP listener's failures become wire responses. Each failure has a
// fixed flag that the access log and (later) metrics carry unchanged, so a response, its log
// line and its counter always agree.

import type { ServerResponse } from "node:http";

export const FLAGS = {
  RBAC_DENIED: { status: 403, body: "RBAC: access denied" },
  BAD_REQUEST: { status: 400, body: "bad request" },
  JWT_INVALID: { status: 401, body: "Jwt verification fails" },
  NO_ROUTE: { status: 502, body: "no service of the mesh at this address" },
  SECURE_NAMING: { status: 503, body: "upstream presented an identity the service may not run as" },
  UPSTREAM_FAILURE: { status: 503, body: "upstream connect error or disconnect" },
  NOT_READY: { status: 503, body: "proxy not ready" },
} as const;

export type Flag = keyof typeof FLAGS;

/** Writes the fixed response of a flag (or destroys the socket if headers already went). */
export function rescueHttp(res: ServerResponse, flag: Flag, requestId: string): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const { status, body } = FLAGS[flag];
  const text = `${body} (request id ${requestId})\n`;
  res.writeHead(status, {
    "content-type": "text/plain; charset=utf-8",
    "content-length": Buffer.byteLength(text),
    "x-request-id": requestId,
    "x-zmesh-flag": flag,
  });
  res.end(text);
}

/** The same fixed response as raw HTTP/1.1 bytes, for listeners that write heads themselves. */
export function rescueWire(flag: Flag, requestId: string, close: boolean): string {
  const { status, body } = FLAGS[flag];
  const text = `${body} (request id ${requestId})\n`;
  return (
    `HTTP/1.1 ${status} ${REASONS[status] ?? ""}\r\ncontent-type: text/plain; charset=utf-8\r\n` +
    `content-length: ${Buffer.byteLength(text)}\r\nx-request-id: ${requestId}\r\nx-zmesh-flag: ${flag}\r\n` +
    `${close ? "connection: close\r\n" : ""}\r\n${text}`
  );
}

const REASONS: Record<number, string> = {
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  502: "Bad Gateway",
  503: "Service Unavailable",
};
