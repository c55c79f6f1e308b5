// Value matchers compiled once from policy strings and run per request: Istio's value forms
// (exact, "prefix*", "*suffix", "*" = present), hosts, IPv4 blocks and ports. No allocation per call.

/** Tests one request attribute; `undefined` means the attribute is absent. */
export type ValueMatcher = (s: string | undefined) => boolean;

const NEVER: ValueMatcher = () => false;

interface Forms {
  exact: string[];
  prefixes: string[];
  suffixes: string[];
  presence: boolean;
}

/** Istio's order: "*" first, then a leading "*" (suffix), then a trailing "*" (prefix), else exact. */
function split(values: readonly string[], lower: boolean): Forms {
  const f: Forms = { exact: [], prefixes: [], suffixes: [], presence: false };
  for (const raw of values) {
    const v = lower ? raw.toLowerCase() : raw;
    if (v === "*") f.presence = true;
    else if (v.startsWith("*")) f.suffixes.push(v.slice(1));
    else if (v.endsWith("*")) f.prefixes.push(v.slice(0, -1));
    else f.exact.push(v);
  }
  return f;
}

/** Case-sensitive matcher for a list of values (principals, namespaces, methods, paths, headers). */
export function compileValues(values: readonly string[]): ValueMatcher {
  const { exact, prefixes, suffixes, presence } = split(values, false);
  const set = new Set(exact);
  if (presence && set.size === 0) return (s) => s !== undefined && s.length > 0;
  if (!presence && prefixes.length === 0 && suffixes.length === 0) {
    if (set.size === 0) return NEVER;
    if (set.size === 1) {
      const only = exact[0]!;
      return (s) => s === only;
    }
    return (s) => s !== undefined && set.has(s);
  }
  return (s) => {
    if (s === undefined) return false;
    if (presence && s.length > 0) return true;
    if (set.has(s)) return true;
    for (let i = 0; i < prefixes.length; i++) if (s.startsWith(prefixes[i]!)) return true;
    for (let i = 0; i < suffixes.length; i++) if (s.endsWith(suffixes[i]!)) return true;
    return false;
  };
}

/** ASCII case-insensitive compare of s[from, from+p.length) with p, where p is already lower-case. */
function regionEqualsLower(s: string, from: number, p: string): boolean {
  for (let i = 0; i < p.length; i++) {
    let c = s.charCodeAt(from + i);
    if (c >= 0x41 && c <= 0x5a) c += 0x20;
    if (c !== p.charCodeAt(i)) return false;
  }
  return true;
}

/** Index where the host name ends, excluding a trailing ":port" ("[::1]:80" -> 5, "a:80" -> 1). */
export function hostNameEnd(h: string): number {
  let i = h.length - 1;
  while (i >= 0 && h.charCodeAt(i) >= 0x30 && h.charCodeAt(i) <= 0x39) i--;
  if (i < 0 || i === h.length - 1 || h.charCodeAt(i) !== 0x3a /* : */) return h.length;
  if (h.charCodeAt(0) === 0x5b /* [ */) return h.charCodeAt(i - 1) === 0x5d /* ] */ ? i : h.length;
  return h.indexOf(":") === i ? i : h.length;
}

/**
 * A fully qualified name's trailing dot names the same host ("secret.shop." is "secret.shop"):
 * dropped from hosts and from policy values, or a DENY on "secret.shop" is bypassed by adding the
 * dot (attack suite, "Host with a trailing dot"). Not after "*" or "." (a pattern, not a name).
 */
export function stripHostDot(h: string): string {
  const end = hostNameEnd(h);
  if (end < 2 || h.charCodeAt(end - 1) !== 0x2e) return h;
  const before = h.charCodeAt(end - 2);
  if (before === 0x2e || before === 0x2a /* * */) return h;
  return h.slice(0, end - 1) + h.slice(end);
}

/** Whether a host value names a port ("shop:8080", "[::1]:80", "*:8080"). */
export function hostValueHasPort(v: string): boolean {
  return v.indexOf(":", v.lastIndexOf("]") + 1) >= 0;
}

function rangeMatcher(f: Forms): (s: string, end: number) => boolean {
  const { exact, prefixes, suffixes } = f;
  return (s, end) => {
    for (let i = 0; i < exact.length; i++) {
      const p = exact[i]!;
      if (end === p.length && regionEqualsLower(s, 0, p)) return true;
    }
    for (let i = 0; i < prefixes.length; i++) {
      const p = prefixes[i]!;
      if (end >= p.length && regionEqualsLower(s, 0, p)) return true;
    }
    for (let i = 0; i < suffixes.length; i++) {
      const p = suffixes[i]!;
      if (end >= p.length && regionEqualsLower(s, end - p.length, p)) return true;
    }
    return false;
  };
}

/**
 * Host matcher: case-insensitive; a value without a port ignores the request's ":port", a value
 * with a port compares the whole Host.
 */
export function compileHosts(given: readonly string[]): ValueMatcher {
  const values = given.map(stripHostDot);
  const withPort = split(
    values.filter((v) => v !== "*" && hostValueHasPort(v)),
    true,
  );
  const noPort = split(
    values.filter((v) => v === "*" || !hostValueHasPort(v)),
    true,
  );
  const presence = noPort.presence;
  const matchNoPort = rangeMatcher(noPort);
  const matchWithPort = rangeMatcher(withPort);
  return (s) => {
    if (s === undefined) return false;
    if (presence && s.length > 0) return true;
    s = stripHostDot(s);
    return matchNoPort(s, hostNameEnd(s)) || matchWithPort(s, s.length);
  };
}

/** Parses a dotted-quad IPv4 address (no leading zeros) to an unsigned 32-bit number, or -1. */
export function parseIPv4(s: string): number {
  let value = 0;
  let octets = 0;
  let i = 0;
  const n = s.length;
  while (octets < 4) {
    const start = i;
    let octet = 0;
    while (i < n) {
      const c = s.charCodeAt(i);
      if (c < 0x30 || c > 0x39) break;
      octet = octet * 10 + (c - 0x30);
      i++;
      if (i - start > 3) return -1;
    }
    const len = i - start;
    if (len === 0 || octet > 255 || (len > 1 && s.charCodeAt(start) === 0x30)) return -1;
    value = value * 256 + octet;
    octets++;
    if (octets < 4) {
      if (s.charCodeAt(i) !== 0x2e) return -1;
      i++;
    }
  }
  return i === n ? value : -1;
}

export interface Ipv4Block {
  base: number;
  mask: number;
}

/** Parses "198.18.0.0/16" or a single address; host bits after the prefix are ignored. */
export function parseIPv4Block(s: string): Ipv4Block | undefined {
  const slash = s.indexOf("/");
  const addr = parseIPv4(slash < 0 ? s : s.slice(0, slash));
  if (addr < 0) return undefined;
  let bits = 32;
  if (slash >= 0) {
    const b = s.slice(slash + 1);
    if (!/^(0|[1-9][0-9]?)$/.test(b)) return undefined;
    bits = Number(b);
    if (bits > 32) return undefined;
  }
  const mask = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
  return { base: (addr & mask) >>> 0, mask };
}

// One-entry memo: the same request's source address is usually parsed by several checks in a row.
let lastIp: string | undefined;
let lastIpValue = -1;

/** Request-side parse: accepts IPv4 and IPv4-mapped IPv6 ("::ffff:198.18.0.7"); -1 otherwise. */
export function requestIPv4(s: string): number {
  if (s === lastIp) return lastIpValue;
  let v = parseIPv4(s);
  if (v < 0 && s.length > 7 && s.charCodeAt(0) === 0x3a && s.slice(0, 7).toLowerCase() === "::ffff:") {
    v = parseIPv4(s.slice(7));
  }
  lastIp = s;
  lastIpValue = v;
  return v;
}

/** Matcher for ipBlocks / notIpBlocks / source.ip values (validated beforehand). */
export function compileIpBlocks(values: readonly string[]): ValueMatcher {
  const blocks: Ipv4Block[] = [];
  for (const v of values) {
    const b = parseIPv4Block(v);
    if (b) blocks.push(b);
  }
  return (s) => {
    if (s === undefined) return false;
    const ip = requestIPv4(s);
    if (ip < 0) return false;
    for (let i = 0; i < blocks.length; i++) {
      const b = blocks[i]!;
      if ((ip & b.mask) >>> 0 === b.base) return true;
    }
    return false;
  };
}

/** Matcher for ports / notPorts / destination.port values (strings of digits, validated beforehand). */
export function compilePorts(values: readonly string[]): (port: number) => boolean {
  const set = new Set<number>();
  for (const v of values) set.add(Number(v));
  if (set.size === 1) {
    const only = Number(values[0]);
    return (p) => p === only;
  }
  return (p) => set.has(p);
}
