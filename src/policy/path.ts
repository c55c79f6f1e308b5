// Request-path normalization, so that "/a/../admin", "//admin" and "/%61dmin" cannot slip past a
// rule on "/admin". Input is untrusted bytes; the function never throws and its output is idempotent.

export interface NormalizeOptions {
  /** Merge repeated slashes ("//a" -> "/a"). Default true. */
  mergeSlashes?: boolean;
  /** Decode %2F and %5C to "/" before the other steps. Default false (they stay encoded). */
  decodeSlashes?: boolean;
}

export type NormalizeResult = { ok: true; path: string; query: string } | { ok: false; reason: string };

const SLASH = 0x2f;
const BACKSLASH = 0x5c;
const PERCENT = 0x25;
const DOT = 0x2e;

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x41 && c <= 0x46) return c - 0x41 + 10;
  if (c >= 0x61 && c <= 0x66) return c - 0x61 + 10;
  return -1;
}

/** RFC 3986 unreserved: ALPHA / DIGIT / "-" / "." / "_" / "~". */
function isUnreserved(c: number): boolean {
  return (
    (c >= 0x41 && c <= 0x5a) ||
    (c >= 0x61 && c <= 0x7a) ||
    (c >= 0x30 && c <= 0x39) ||
    c === 0x2d ||
    c === DOT ||
    c === 0x5f ||
    c === 0x7e
  );
}

const HEX = "0123456789ABCDEF";

/**
 * Normalizes an origin-form request-target: splits off the query, drops a fragment, turns "\" into
 * "/", decodes escaped unreserved characters, upper-cases the remaining escapes, merges slashes and
 * removes dot segments (RFC 3986 5.2.4, never above the root).
 */
export function normalizePath(raw: string, opts?: NormalizeOptions): NormalizeResult {
  const merge = opts?.mergeSlashes ?? true;
  const decodeSlashes = opts?.decodeSlashes ?? false;
  if (typeof raw !== "string" || raw.charCodeAt(0) !== SLASH) {
    return { ok: false, reason: "the request path must start with '/'" };
  }
  // One pass over the whole target: control characters are never legal in a request line.
  let pathEnd = -1;
  let fragment = -1;
  for (let i = 0; i < raw.length; i++) {
    const c = raw.charCodeAt(i);
    if (c < 0x20 || c === 0x7f) {
      return { ok: false, reason: `the request target contains a control character (code ${c})` };
    }
    if (c === 0x3f /* ? */ && pathEnd < 0 && fragment < 0) pathEnd = i;
    else if (c === 0x23 /* # */ && fragment < 0) fragment = i;
    else if (c === PERCENT && raw.charCodeAt(i + 1) === 0x30 && raw.charCodeAt(i + 2) === 0x30) {
      return { ok: false, reason: "the request target contains an encoded NUL (%00)" };
    }
  }
  const end = fragment >= 0 ? fragment : raw.length;
  if (pathEnd < 0 || pathEnd > end) pathEnd = end;
  const query = pathEnd < end ? raw.slice(pathEnd + 1, end) : "";

  // Fast path: nothing to decode, convert, merge or remove.
  let clean = true;
  for (let i = 0; i < pathEnd; i++) {
    const c = raw.charCodeAt(i);
    if (c === PERCENT || c === BACKSLASH) {
      clean = false;
      break;
    }
    if (c === SLASH) {
      const n = raw.charCodeAt(i + 1);
      if ((n === SLASH && merge && i + 1 < pathEnd) || (n === DOT && i + 1 < pathEnd)) {
        clean = false;
        break;
      }
    }
  }
  if (clean) return { ok: true, path: pathEnd === raw.length ? raw : raw.slice(0, pathEnd), query };

  // Escapes, backslashes and (optionally) encoded slashes, in one pass.
  let s = "";
  for (let i = 0; i < pathEnd; i++) {
    const c = raw.charCodeAt(i);
    if (c === BACKSLASH) {
      s += "/";
    } else if (c === PERCENT) {
      const hi = i + 1 < pathEnd ? hexValue(raw.charCodeAt(i + 1)) : -1;
      const lo = i + 2 < pathEnd ? hexValue(raw.charCodeAt(i + 2)) : -1;
      if (hi < 0 || lo < 0) {
        return { ok: false, reason: `the request path has a malformed percent-escape at offset ${i}` };
      }
      const v = hi * 16 + lo;
      if (isUnreserved(v) || (decodeSlashes && (v === SLASH || v === BACKSLASH))) {
        s += v === BACKSLASH ? "/" : String.fromCharCode(v);
      } else {
        s += "%" + HEX[hi] + HEX[lo];
      }
      i += 2;
    } else {
      s += raw[i];
    }
  }
  return { ok: true, path: removeDotSegments(s, merge), query };
}

/** RFC 3986 5.2.4 for an absolute path (starts with "/"), optionally dropping empty segments. */
function removeDotSegments(path: string, merge: boolean): string {
  const segs = path.split("/");
  const out: string[] = [];
  // segs[0] is the empty string before the leading "/".
  for (let i = 1; i < segs.length; i++) {
    const seg = segs[i]!;
    const last = i === segs.length - 1;
    if (seg === ".") {
      if (last) out.push("");
    } else if (seg === "..") {
      out.pop();
      if (last) out.push("");
    } else if (seg === "" && merge && !last) {
      // "//": an empty segment in the middle is dropped when merging.
    } else {
      out.push(seg);
    }
  }
  return "/" + out.join("/");
}
