// Protocol facts of a connection: waiting, for a bounded time, for its first bytes without
// consuming them (how the proxy tells HTTP from opaque TCP when nothing declares the protocol),
// and the ALPN names sidecars use between themselves.

import type { Socket } from "node:net";

/** How long to wait for a client's first bytes on a port of unknown protocol before calling it TCP. */
export const SNIFF_MS = 100;
/** ALPN that tells the inbound sidecar a connection carries opaque TCP, not HTTP. */
export const ALPN_TCP = "zmesh-tcp";
const HTTP_START = /^(GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH|TRACE|CONNECT) /;

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
