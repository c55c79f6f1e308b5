// Request targets other than origin-form (RFC 9112 section 3.2), read by the head parser into the
// origin-form every later step uses, so that nothing downstream (policy, routing, the forwarded
// head, logs) can see two different paths or hosts for one request:
// - absolute-form (`GET http://host/path`): the target becomes `/path` and the authority replaces
//   Host (section 3.2.2: a proxy MUST ignore the received Host and use the target's authority);
//   userinfo, fragments, other schemes and anything but a plain host[:port] are refused;
// - asterisk-form (`OPTIONS *`): kept as `*`, for OPTIONS only;
// - authority-form (`CONNECT host:port`): parsed, then refused by the engine (conn.ts says why).

import type { RequestHead } from "./head.js";

export type OtherForm = { ok: true; target: string; authority?: string } | { ok: false; reason: string };

const ABSOLUTE = /^https?:\/\/([^/?#]*)([^#]*)$/i;
/** A registered name or IPv4 address (a trailing dot allowed), or an IP literal; a port of 1-5 digits. */
const AUTHORITY = /^(?:[A-Za-z0-9_](?:[A-Za-z0-9_.-]*)|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$/;
const HOST_PORT = /^(?:[A-Za-z0-9_](?:[A-Za-z0-9_.-]*)|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$/;

/** Reads a target that does not start with `/` (origin-form is the parser's own fast path). */
export function otherForm(method: string, target: string): OtherForm {
  if (target === "*") {
    if (method === "OPTIONS") return { ok: true, target };
    return { ok: false, reason: "request target * (asterisk-form) is only for OPTIONS" };
  }
  if (method === "CONNECT") {
    if (HOST_PORT.test(target)) return { ok: true, target };
    return { ok: false, reason: "CONNECT target is not host:port (authority-form)" };
  }
  const m = ABSOLUTE.exec(target);
  if (!m) return { ok: false, reason: "request target is neither a path nor an http(s) absolute URI" };
  const authority = m[1]!;
  if (authority.includes("@")) return { ok: false, reason: "userinfo (user@) in an absolute-form target" };
  if (!AUTHORITY.test(authority)) return { ok: false, reason: "invalid host in an absolute-form target" };
  const rest = m[2]!;
  return { ok: true, target: rest === "" ? "/" : rest.startsWith("?") ? `/${rest}` : rest, authority };
}

/** The authority of an absolute-form target replaces the Host field's value (or becomes it, in HTTP/1.0). */
export function useAuthority(h: RequestHead, authority: string): void {
  h.authority = authority;
}
