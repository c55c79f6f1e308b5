// Protocol facts of a connection: waiting, for a bounded time, for its first bytes without
// consuming them (how the proxy tells HTTP from opaque TCP when nothing declares the protocol),
// and the ALPN names sidecars use between themselves.

import type { Socket } from "node:net";

/** How long to wait for a client's first bytes on a port of unknown protocol before calling it TCP. */
export const SNIFF_MS = 100;
/** ALPN that tells the inbound sidecar a connection carries opaque TCP, not HTTP. */
export const ALPN_TCP = "zmesh-tcp";
/** ALPN of HTTP/2 between sidecars (h2): the inbound serves an HTTP/2 session on the TLS socket. */
export const ALPN_H2 = "h2";
const HTTP_START = /^(GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH|TRACE|CONNECT) /;
/** What an HTTP/2 client with prior knowledge (h2c, gRPC) sends first (RFC 9113 section 3.4). */
const H2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");

/** Whether the first bytes are (the start of, at least "PRI ") the HTTP/2 connection preface. */
export function looksLikeH2(first: Buffer): boolean {
  const n = Math.min(first.length, H2_PREFACE.length);
  return n >= 4 && first.subarray(0, n).equals(H2_PREFACE.subarray(0, n));
}

export function looksLikeHttp(first: Buffer): boolean {
  return HTTP_START.test(first.toString("latin1", 0, 8));
}

/** Calls `done` once with the first chunk (pushed back into the socket) or undefined after `ms`. */
export function sniff(s: Socket, ms: number, done: (first: Buffer | undefined) => void): void {
  let called = false;
  const finish = (first: Buffer | undefined) => {
    if (called) return;
    called = true;
    clearTimeout(timer);
    s.off("data", onData);
    s.off("close", onClose);
    s.pause();
    if (first) s.unshift(first);
    done(first);
  };
  const onData = (chunk: Buffer) => finish(chunk);
  const onClose = () => finish(undefined);
  const timer = setTimeout(() => finish(undefined), ms);
  s.on("data", onData);
  s.once("close", onClose);
}
