// A strict HTTP/1.1 message-head parser (request and response heads only; bodies are not parsed
// here but framed by ./body.ts and spliced as bytes). Hand-written because Node exposes no
// head-only parser: its llhttp binding is internal (`process.binding`), and the http server and
// undici both parse and re-frame every message, which is what the proxy must avoid to be cheap.
// It is strict on purpose (request smuggling, issue 7): it refuses what two parsers could read
// differently — Content-Length with Transfer-Encoding, several Content-Lengths, a
// Transfer-Encoding not ending in one `chunked`, obs-fold, bare LF or CR, non-token names, control
// characters in values, over-long heads. Targets other than origin-form are read by ./target.ts
// into origin-form (absolute-form's authority becomes Host; `OPTIONS *`; CONNECT for the engine
// to refuse).

import { otherForm, useAuthority } from "./target.js";

/** Longest head accepted (request line or status line, and header lines). */
export const MAX_HEAD_BYTES = 64 * 1024;
export const MAX_HEADERS = 200;

export type BodyKind = "none" | "length" | "chunked" | "close";

export interface Head {
  /** Lower-cased names, in order (duplicates kept). */
  names: string[];
  /**
   * Where each field is in `buf`, four numbers per field: line start, value start, value end
   * (trailing blanks excluded), line end (after its CRLF). Values are read on demand (`value`) and
   * forwarded lines are copied as bytes (./wire.ts), so a relayed head makes no string per field.
   */
  at: number[];
  /** The bytes the head was parsed from (it starts at 0); never written to. */
  buf: Buffer;
  /** End of the start line, after its CRLF. */
  lineEnd: number;
  /**
   * An absolute-form target's authority (./target.ts): it replaces the Host field for every reader
   * (`field`, `value`, `fieldRecord`) and in the forwarded head (./wire.ts).
   */
  authority?: string;
  /** HTTP/1.<minor> */
  minor: 0 | 1;
  /** Content-Length if present, else -1. */
  contentLength: number;
  chunked: boolean;
  /** `connection` tokens, lower-cased (close, keep-alive, upgrade, named hop-by-hop headers). */
  connection: string[];
  /** Bytes of the head including the empty line. */
  size: number;
}

export interface RequestHead extends Head {
  method: string;
  target: string;
}

export interface ResponseHead extends Head {
  status: number;
  reason: string;
}

export type Parsed<T> = { ok: true; head: T } | { ok: false; reason: string } | undefined;

/** tchar of RFC 9110: ALPHA DIGIT ! # $ % & ' * + - . ^ _ ` | ~ */
const TCHAR = new Uint8Array(256);
for (let c = 0; c < 256; c++) {
  const ch = String.fromCharCode(c);
  TCHAR[c] = /[A-Za-z0-9!#$%&'*+\-.^_`|~]/.test(ch) && c < 128 ? 1 : 0;
}
/** field-vchar, SP, HTAB, obs-text: what a field value may hold. */
const VALUE = new Uint8Array(256);
for (let c = 0; c < 256; c++) VALUE[c] = c === 9 || (c >= 0x20 && c !== 0x7f) ? 1 : 0;
/** What an origin-form target may hold: visible ASCII. */
const TARGET = new Uint8Array(256);
for (let c = 0x21; c < 0x7f; c++) TARGET[c] = 1;

const CR = 13;
const LF = 10;

/**
 * Finds the end of a head (index after CRLF CRLF) in `buf` from `from`; -1 if not there yet.
 * A bare LF anywhere in the head is refused by the line parser, so only CRLF CRLF is looked for.
 */
export function headEnd(buf: Buffer, from: number): number {
  const i = buf.indexOf("\r\n\r\n", from, "latin1");
  return i < 0 ? -1 : i + 4;
}

function fail(reason: string): { ok: false; reason: string } {
  return { ok: false, reason };
}

/** Parses header lines from `pos` (just after the start line's CRLF) to `end` (after CRLF CRLF). */
function fields(buf: Buffer, pos: number, end: number, h: Head): string | undefined {
  let teSeen = false;
  const at = h.at;
  while (pos < end - 2) {
    if (h.names.length >= MAX_HEADERS) return "too many header fields";
    const c0 = buf[pos]!;
    if (c0 === 32 || c0 === 9) return "obsolete line folding (obs-fold) in header fields";
    let i = pos;
    while (i < end && TCHAR[buf[i]!] === 1) i++;
    if (i === pos || buf[i] !== 58) return "invalid character in a header field name";
    const nameEnd = i;
    i++;
    while (buf[i] === 32 || buf[i] === 9) i++;
    const vStart = i;
    while (i < end && VALUE[buf[i]!] === 1) i++;
    if (buf[i] !== CR || buf[i + 1] !== LF)
      return `invalid character or line ending in header field ${buf.toString("latin1", pos, nameEnd)}`;
    let vEnd = i;
    while (vEnd > vStart && (buf[vEnd - 1] === 32 || buf[vEnd - 1] === 9)) vEnd--;
    const name = lowerName(buf, pos, nameEnd);
    at.push(pos, vStart, vEnd, i + 2);
    pos = i + 2;
    h.names.push(name);
    if (name === "content-length") {
      if (h.contentLength >= 0) return "more than one Content-Length";
      const value = buf.toString("latin1", vStart, vEnd);
      if (!/^[0-9]{1,15}$/.test(value)) return "Content-Length is not a decimal number";
      h.contentLength = Number(value);
    } else if (name === "transfer-encoding") {
      if (teSeen) return "more than one Transfer-Encoding field";
      teSeen = true;
      const codings = buf.toString("latin1", vStart, vEnd).toLowerCase().split(",");
      for (let k = 0; k < codings.length; k++) {
        const c = codings[k]!.trim();
        if (!/^[a-z0-9!#$%&'*+\-.^_`|~]+$/.test(c)) return "invalid Transfer-Encoding";
        if (c === "chunked" && k !== codings.length - 1) return "chunked is not the final transfer coding";
        if (k === codings.length - 1 && c !== "chunked")
          return "Transfer-Encoding whose final coding is not chunked";
      }
      h.chunked = true;
    } else if (name === "connection") {
      for (const t of buf.toString("latin1", vStart, vEnd).toLowerCase().split(",")) {
        const tok = t.trim();
        if (tok) h.connection.push(tok);
      }
    }
  }
  if (h.chunked && h.contentLength >= 0) return "both Content-Length and Transfer-Encoding";
  return undefined;
}

/**
 * Names the proxy meets on most requests, interned once: a field name is compared to these before
 * a new string is cut for it (most heads then allocate no name strings at all).
 */
const COMMON = [
  "host",
  "user-agent",
  "accept",
  "accept-encoding",
  "accept-language",
  "content-length",
  "content-type",
  "transfer-encoding",
  "connection",
  "keep-alive",
  "date",
  "server",
  "cache-control",
  "authorization",
  "cookie",
  "x-request-id",
  "traceparent",
  "tracestate",
  "x-forwarded-client-cert",
  "x-zmesh-source-workload",
  "upgrade",
  "te",
  "trailer",
  "etag",
  "vary",
  "location",
  "set-cookie",
  "grpc-status",
];
const COMMON_BY_LENGTH: string[][] = [];
for (const n of COMMON) {
  const same = COMMON_BY_LENGTH[n.length] ?? [];
  same.push(n);
  COMMON_BY_LENGTH[n.length] = same;
}

/** The lower-cased name at `buf[start, end)`: a known one without allocating, else a new string. */
function lowerName(buf: Buffer, start: number, end: number): string {
  const candidates = COMMON_BY_LENGTH[end - start];
  if (candidates !== undefined) {
    outer: for (let k = 0; k < candidates.length; k++) {
      const c = candidates[k]!;
      for (let j = 0; j < c.length; j++) {
        let b = buf[start + j]!;
        if (b >= 65 && b <= 90) b += 32;
        if (b !== c.charCodeAt(j)) continue outer;
      }
      return c;
    }
  }
  return buf.toString("latin1", start, end).toLowerCase();
}

/**
 * A new head. Request and response heads are one object shape, every field present from the
 * start (the other kind's fields empty): the parser, the readers and ./wire.ts then see one hidden
 * class, not one per kind and one more when an authority is set.
 */
function blank(buf: Buffer, size: number, lineEnd: number): RequestHead & ResponseHead {
  return {
    names: [],
    at: [],
    buf,
    lineEnd,
    authority: undefined,
    minor: 1,
    contentLength: -1,
    chunked: false,
    connection: [],
    size,
    method: "",
    target: "",
    status: 0,
    reason: "",
  };
}

/** Reads `HTTP/1.0` or `HTTP/1.1` at `i`; the minor version, or -1. */
function version(buf: Buffer, i: number): 0 | 1 | -1 {
  if (
    buf[i] !== 72 ||
    buf[i + 1] !== 84 ||
    buf[i + 2] !== 84 ||
    buf[i + 3] !== 80 ||
    buf[i + 4] !== 47 ||
    buf[i + 5] !== 49 ||
    buf[i + 6] !== 46
  )
    return -1;
  const m = buf[i + 7];
  return m === 49 ? 1 : m === 48 ? 0 : -1;
}

/**
 * Parses a request head at the start of `buf`: undefined while incomplete (and under the limit),
 * else the head or the reason it is refused.
 */
export function parseRequestHead(buf: Buffer): Parsed<RequestHead> {
  const end = headEnd(buf, 0);
  if (end < 0) {
    if (buf.length > MAX_HEAD_BYTES) return fail(`request head longer than ${MAX_HEAD_BYTES} bytes`);
    // A bare LF would never give CRLF CRLF: refuse it as soon as it is seen.
    const lf = buf.indexOf(LF);
    if (lf === 0 || (lf > 0 && buf[lf - 1] !== CR)) return fail("bare LF line ending");
    return undefined;
  }
  if (end > MAX_HEAD_BYTES) return fail(`request head longer than ${MAX_HEAD_BYTES} bytes`);
  let i = 0;
  while (i < end && TCHAR[buf[i]!] === 1) i++;
  if (i === 0 || buf[i] !== 32) return fail("invalid request method");
  const method = buf.toString("latin1", 0, i);
  const t0 = ++i;
  while (i < end && TARGET[buf[i]!] === 1) i++;
  if (buf[i] !== 32 || i === t0) return fail("invalid request target");
  let target = buf.toString("latin1", t0, i);
  let authority: string | undefined;
  if (buf[t0] !== 47) {
    const t = otherForm(method, target);
    if (!t.ok) return fail(t.reason);
    target = t.target;
    authority = t.authority;
  }
  const minor = version(buf, i + 1);
  if (minor < 0) return fail("unsupported HTTP version");
  if (buf[i + 9] !== CR || buf[i + 10] !== LF) return fail("invalid request line ending");
  const h: RequestHead = blank(buf, end, i + 11);
  h.method = method;
  h.target = target;
  h.minor = minor as 0 | 1;
  const why = fields(buf, i + 11, end, h);
  if (why) return fail(why);
  if (h.chunked && minor === 0) return fail("Transfer-Encoding in an HTTP/1.0 request");
  if (minor === 1) {
    let hosts = 0;
    for (const n of h.names) if (n === "host") hosts++;
    if (hosts !== 1) return fail(hosts === 0 ? "no Host header" : "more than one Host header");
  }
  if (authority !== undefined) useAuthority(h, authority);
  return { ok: true, head: h };
}

/** Parses a response head at the start of `buf` (undefined while incomplete). */
export function parseResponseHead(buf: Buffer): Parsed<ResponseHead> {
  const end = headEnd(buf, 0);
  if (end < 0) {
    if (buf.length > MAX_HEAD_BYTES) return fail(`response head longer than ${MAX_HEAD_BYTES} bytes`);
    const lf = buf.indexOf(LF);
    if (lf === 0 || (lf > 0 && buf[lf - 1] !== CR)) return fail("bare LF line ending");
    return undefined;
  }
  if (end > MAX_HEAD_BYTES) return fail(`response head longer than ${MAX_HEAD_BYTES} bytes`);
  const minor = version(buf, 0);
  if (minor < 0 || buf[8] !== 32) return fail("invalid status line");
  const d0 = buf[9]! - 48;
  const d1 = buf[10]! - 48;
  const d2 = buf[11]! - 48;
  if (d0 < 1 || d0 > 5 || d1 < 0 || d1 > 9 || d2 < 0 || d2 > 9) return fail("invalid status code");
  let i = 12;
  let reason = "";
  if (buf[i] === 32) {
    i++;
    const r0 = i;
    while (i < end && VALUE[buf[i]!] === 1) i++;
    reason = buf.toString("latin1", r0, i);
  }
  if (buf[i] !== CR || buf[i + 1] !== LF) return fail("invalid status line ending");
  const h: ResponseHead = blank(buf, end, i + 2);
  h.status = d0 * 100 + d1 * 10 + d2;
  h.reason = reason;
  h.minor = minor as 0 | 1;
  const why = fields(buf, i + 2, end, h);
  if (why) return fail(why);
  return { ok: true, head: h };
}

/** The value of field `i` (trailing blanks excluded). */
export function value(h: Head, i: number): string {
  if (h.authority !== undefined && h.names[i] === "host") return h.authority;
  return h.buf.toString("latin1", h.at[i * 4 + 1], h.at[i * 4 + 2]);
}

/** The value of the first field named `name` (lower-case), if any. */
export function field(h: Head, name: string): string | undefined {
  if (h.authority !== undefined && name === "host") return h.authority;
  const i = h.names.indexOf(name);
  return i < 0 ? undefined : value(h, i);
}

/** Fields as a record (duplicates joined with ", ", as Node's IncomingMessage does), for policy and JWT. */
export function fieldRecord(h: Head): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i < h.names.length; i++) {
    const n = h.names[i]!;
    const prev = out[n];
    out[n] = prev === undefined ? value(h, i) : `${prev}, ${value(h, i)}`;
  }
  if (h.authority !== undefined) out["host"] = h.authority;
  return out;
}

/** Whether the connection stays open after this message, by version and `connection`. */
export function keepAlive(h: Head): boolean {
  if (h.connection.includes("close")) return false;
  return h.minor === 1 || h.connection.includes("keep-alive");
}
