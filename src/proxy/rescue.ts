// The one place where an HTTP listener's failures become wire responses. Each failure has a
// fixed flag that the access log and (later) metrics carry unchanged, so a response, its log
// line and its counter always agree. For gRPC (over HTTP/2) each flag also has a gRPC status.

import type { ServerResponse } from "node:http";
import type { ServerHttp2Stream } from "node:http2";
import type { Duplex } from "node:stream";

/**
 * `grpc`: the status a gRPC caller gets instead (codes from grpc/doc/statuscodes.md): 7
 * PERMISSION_DENIED, 13 INTERNAL (what gRPC maps HTTP 400 to), 16 UNAUTHENTICATED, 14 UNAVAILABLE,
 * 4 DEADLINE_EXCEEDED, 12 UNIMPLEMENTED.
 */
export const FLAGS = {
  RBAC_DENIED: { status: 403, grpc: 7, body: "RBAC: access denied" },
  BAD_REQUEST: { status: 400, grpc: 13, body: "bad request" },
  JWT_INVALID: { status: 401, grpc: 16, body: "Jwt verification fails" },
  NO_ROUTE: { status: 502, grpc: 14, body: "no service of the mesh at this address" },
  SECURE_NAMING: { status: 503, grpc: 14, body: "upstream presented an identity the service may not run as" },
  UPSTREAM_FAILURE: { status: 503, grpc: 14, body: "upstream connect error or disconnect" },
  NOT_READY: { status: 503, grpc: 14, body: "proxy not ready" },
  REQUEST_TIMEOUT: { status: 408, grpc: 4, body: "request timeout" },
  UPSTREAM_TIMEOUT: { status: 504, grpc: 4, body: "upstream request timeout" },
  CONNECT_REFUSED: {
    status: 501,
    grpc: 12,
    body: "CONNECT is not proxied by the mesh: the connection already goes to the service it was opened to",
  },
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

/** The same on a connection that was being upgraded (WebSocket): nothing can follow it, so it closes. */
export function rescueUpgrade(sock: Duplex, flag: Flag, requestId: string): void {
  sock.end(rescueWire(flag, requestId, true));
}

const REASONS: Record<number, string> = {
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  408: "Request Timeout",
  501: "Not Implemented",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
};

/** grpc-message is percent-encoded outside printable ASCII, and `%` itself (gRPC over HTTP/2 spec). */
function grpcMessage(text: string): string {
  return text.replace(/[^\x20-\x24\x26-\x7e]/gu, (c) => encodeURIComponent(c));
}

/** Client streams this sidecar reset itself after their response began (abortResponse). */
const abortedStreams = new WeakSet<ServerHttp2Stream>();

/**
 * Resets a client's stream whose response has begun, so that the cut response cannot pass for a
 * complete one. Node's `close(code)` ends the writable side first: the client gets END_STREAM
 * before the RST_STREAM, and one whose request had ended sees a clean end (measured on Node 20).
 * `destroy(err)` sends RST_STREAM (INTERNAL_ERROR) alone.
 */
export function abortResponse(stream: ServerHttp2Stream, why: string): void {
  if (stream.destroyed) return;
  abortedStreams.add(stream);
  stream.destroy(new Error(why));
}

/** Whether this sidecar reset the stream itself (abortResponse), rather than the client. */
export function abortedHere(stream: ServerHttp2Stream): boolean {
  return abortedStreams.has(stream);
}

/**
 * The same for one HTTP/2 stream: for gRPC a trailers-only response (HTTP 200, `grpc-status`,
 * `grpc-message` with the request id), else the HTTP status and body. A stream whose response
 * already started is reset instead. A request body still arriving is read and dropped.
 */
export function rescueH2(stream: ServerHttp2Stream, flag: Flag, requestId: string, grpc: boolean): void {
  if (stream.destroyed || stream.closed) return;
  if (stream.headersSent) return abortResponse(stream, `${flag} after the response began`);
  const { status, body, grpc: code } = FLAGS[flag];
  const text = `${body} (request id ${requestId})`;
  if (grpc) {
    stream.respond(
      {
        ":status": 200,
        "content-type": "application/grpc",
        "grpc-status": String(code),
        "grpc-message": grpcMessage(text),
        "x-request-id": requestId,
        "x-zmesh-flag": flag,
      },
      { endStream: true },
    );
  } else {
    stream.respond({
      ":status": status,
      "content-type": "text/plain; charset=utf-8",
      "content-length": Buffer.byteLength(text) + 1,
      "x-request-id": requestId,
      "x-zmesh-flag": flag,
    });
    stream.end(`${text}\n`);
  }
  stream.resume();
}
