// Parses and builds SPIFFE IDs by the SPIFFE-ID standard. Pure string code: every other identity file and
// every peer certificate goes through parseSpiffeId, so it must reject anything the standard does not allow.

import { ZmeshError } from "../errors/index.js";

export const DEFAULT_TRUST_DOMAIN = "cluster.local";

export interface SpiffeId {
  trustDomain: string;
  /** "" or "/seg/seg...", e.g. "/ns/shop/sa/orders". */
  path: string;
  /** The whole ID, e.g. "spiffe://cluster.local/ns/shop/sa/orders". */
  uri: string;
}

const SCHEME_PREFIX = "spiffe://";
const MAX_BYTES = 2048;
const TRUST_DOMAIN_CHARS = /^[a-z0-9._-]+$/;
const SEGMENT_CHARS = /^[A-Za-z0-9._-]+$/;

/** The broken rules, worded to follow "... is not a SPIFFE ID: ". */
export const SpiffeRule = {
  notString: "it must be a string",
  empty: "it is empty",
  tooLong: `it is longer than ${MAX_BYTES} bytes`,
  scheme: "it must start with the scheme 'spiffe://'",
  schemeCase: "the scheme must be 'spiffe' in lower case",
  query: "it may not have a query ('?')",
  fragment: "it may not have a fragment ('#')",
  percent: "it may not contain percent-encoding ('%')",
  trustDomainMissing: "the trust domain is missing",
  userinfo: "the trust domain may not contain userinfo ('user@')",
  port: "the trust domain may not contain a port",
  trustDomainChars: "the trust domain may contain only lower-case letters, digits, '.', '-' and '_'",
  trailingSlash: "the path may not end with '/'",
  emptySegment: "the path may not contain empty segments ('//')",
  dotSegment: "the path may not contain '.' or '..' segments",
  segmentChars: "path segments may contain only letters, digits, '.', '-' and '_'",
} as const;

function quote(s: string): string {
  return JSON.stringify(s.length > 120 ? `${s.slice(0, 117)}...` : s);
}

function fail(s: string, rule: string): never {
  throw new ZmeshError("ZMESH_SPIFFE_ID", `${quote(s)} is not a SPIFFE ID: ${rule}`);
}

/** The rule a trust domain name breaks, or undefined when it is valid. */
export function trustDomainRule(td: string): string | undefined {
  if (td === "") return SpiffeRule.trustDomainMissing;
  if (td.includes("@")) return SpiffeRule.userinfo;
  if (td.includes(":")) return SpiffeRule.port;
  if (!TRUST_DOMAIN_CHARS.test(td)) return SpiffeRule.trustDomainChars;
  return undefined;
}

/** The rule a single path segment (text between two '/') breaks, or undefined when it is valid. */
export function segmentRule(segment: string): string | undefined {
  if (segment === "") return SpiffeRule.emptySegment;
  if (segment === "." || segment === "..") return SpiffeRule.dotSegment;
  if (!SEGMENT_CHARS.test(segment)) return SpiffeRule.segmentChars;
  return undefined;
}

/** Parses a SPIFFE ID; throws ZmeshError ZMESH_SPIFFE_ID naming the first broken rule. */
export function parseSpiffeId(s: string): SpiffeId {
  if (typeof s !== "string") {
    throw new ZmeshError("ZMESH_SPIFFE_ID", `${typeof s} is not a SPIFFE ID: ${SpiffeRule.notString}`);
  }
  if (s === "") fail(s, SpiffeRule.empty);
  // UTF-8 is at most 3 bytes per UTF-16 unit, so only long strings need the exact count.
  if (s.length > MAX_BYTES / 3 && Buffer.byteLength(s, "utf8") > MAX_BYTES) fail(s, SpiffeRule.tooLong);
  if (!s.startsWith(SCHEME_PREFIX)) {
    fail(
      s,
      s.slice(0, SCHEME_PREFIX.length).toLowerCase() === SCHEME_PREFIX
        ? SpiffeRule.schemeCase
        : SpiffeRule.scheme,
    );
  }
  if (s.includes("#")) fail(s, SpiffeRule.fragment);
  if (s.includes("?")) fail(s, SpiffeRule.query);
  if (s.includes("%")) fail(s, SpiffeRule.percent);

  const slash = s.indexOf("/", SCHEME_PREFIX.length);
  const trustDomain = slash === -1 ? s.slice(SCHEME_PREFIX.length) : s.slice(SCHEME_PREFIX.length, slash);
  const path = slash === -1 ? "" : s.slice(slash);
  const tdRule = trustDomainRule(trustDomain);
  if (tdRule !== undefined) fail(s, tdRule);

  if (path !== "") {
    if (path.endsWith("/")) fail(s, SpiffeRule.trailingSlash);
    let start = 1;
    while (start <= path.length) {
      let end = path.indexOf("/", start);
      if (end === -1) end = path.length;
      const rule = segmentRule(path.slice(start, end));
      if (rule !== undefined) fail(s, rule);
      start = end + 1;
    }
  }
  return { trustDomain, path, uri: s };
}

/** Builds and validates "spiffe://<td>/ns/<namespace>/sa/<serviceAccount>". */
export function workloadId(trustDomain: string, namespace: string, serviceAccount: string): string {
  const tdRule = trustDomainRule(trustDomain);
  if (tdRule !== undefined) {
    throw new ZmeshError(
      "ZMESH_SPIFFE_ID",
      `Trust domain ${quote(trustDomain)} cannot form a SPIFFE ID: ${tdRule}.`,
    );
  }
  checkNameSegment("namespace", namespace);
  checkNameSegment("service account", serviceAccount);
  return parseSpiffeId(`${SCHEME_PREFIX}${trustDomain}/ns/${namespace}/sa/${serviceAccount}`).uri;
}

function checkNameSegment(what: string, value: string): void {
  const rule = segmentRule(value);
  if (rule === undefined) return;
  const why =
    rule === SpiffeRule.emptySegment
      ? "it is empty"
      : rule === SpiffeRule.dotSegment
        ? "it may not be '.' or '..'"
        : "it may contain only letters, digits, '.', '-' and '_'";
  throw new ZmeshError(
    "ZMESH_SPIFFE_ID",
    `The ${what} ${quote(value)} cannot be part of a SPIFFE ID: ${why}.`,
  );
}

/** "spiffe://td/ns/a/sa/b" -> "td/ns/a/sa/b", the form Istio policies use for principals. */
export function principalOf(uri: string): string {
  const id = parseSpiffeId(uri);
  return id.trustDomain + id.path;
}

/** The namespace of an ID whose path is exactly /ns/<namespace>/sa/<service-account>. */
export function namespaceOf(id: SpiffeId): string | undefined {
  const parts = id.path.split("/");
  if (parts.length === 5 && parts[1] === "ns" && parts[3] === "sa") return parts[2];
  return undefined;
}
