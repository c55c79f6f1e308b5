// Compilation of validated policies into matcher functions, indexed per workload, and evaluation
// of a request against them with Istio's order (DENY, then ALLOW; AUDIT and dry-run never decide).
// Pure and allocation-lean: a decision looks rules up by principal, namespace, path and method,
// so its cost does not grow with the number of policies.

import { ZmeshError } from "../errors/index.js";
import { compileHosts, compileIpBlocks, compilePorts, compileValues, type ValueMatcher } from "./match.js";
import type {
  Action,
  AuthorizationPolicySpec,
  Condition,
  Decision,
  Operation,
  PolicyRef,
  RequestAttributes,
  Rule,
  Source,
} from "./types.js";
import { CLAIM_KEY, formatIssue, validateAuthorizationPolicySpec } from "./validate.js";

type Test = (req: RequestAttributes) => boolean;

/** One field (or one half of a condition); `http` marks the fields a TCP connection does not have. */
interface Check {
  readonly http: boolean;
  readonly test: Test;
}

/** Whether a rule matches; `tcp` drops the HTTP-only checks (see ruleMatch). */
type Match = (req: RequestAttributes, tcp: boolean) => boolean;

export interface CompiledRule {
  readonly index: number;
  /** from (entries OR, fields AND) AND to (likewise) AND every when condition, in one function. */
  readonly match: Match;
  /** HTTP-only fields the rule uses, e.g. "methods", "when request.headers[x-user]". */
  readonly httpFields: readonly string[];
  readonly reason: string;
  readonly tcpReason: string;
}

export interface CompiledPolicy {
  /** "namespace/name". */
  readonly key: string;
  readonly action: Action;
  readonly dryRun: boolean;
  readonly rules: readonly CompiledRule[];
}

/**
 * A rule in evaluation order: `ord` grows with (policy key, rule index) within one action. Flat, so
 * that a decision touches few objects (with thousands of policies, memory reads are the cost).
 */
interface Entry {
  readonly ord: number;
  /**
   * A rule that is (once its indexed field is proven) at most one `to` entry of up to two exact
   * methods and up to two exact paths and two path prefixes is matched from these fields, with no
   * function call: m0/m1 methods, p0/p1 paths, x0/x1 prefixes. Otherwise `match` is called.
   */
  readonly fast: boolean;
  readonly m0: string | undefined;
  readonly m1: string | undefined;
  readonly paths: boolean;
  readonly p0: string | undefined;
  readonly p1: string | undefined;
  readonly x0: string | undefined;
  readonly x1: string | undefined;
  /** For a fast entry: whether it matches a TCP connection. */
  readonly tcpOk: boolean;
  readonly match: Match;
  /** Policy "namespace/name". */
  readonly key: string;
  readonly index: number;
  readonly reason: string;
  readonly tcpReason: string;
}

function matches(e: Entry, req: RequestAttributes, tcp: boolean): boolean {
  if (!e.fast) return e.match(req, tcp);
  if (tcp) return e.tcpOk;
  const h = req.http!;
  if (e.m0 !== undefined && h.method !== e.m0 && h.method !== e.m1) return false;
  if (!e.paths) return true;
  const p = h.path;
  if (p === e.p0 || p === e.p1) return true;
  return (e.x0 !== undefined && p.startsWith(e.x0)) || (e.x1 !== undefined && p.startsWith(e.x1));
}

/** One entry, or several in evaluation order. */
type Bucket = Entry | Entry[];

type Group = "deny" | "allow" | "audit";

/**
 * The rules of one action, each filed under the keys it cannot match without (its exact
 * principals, namespaces, paths, path directories or methods; the dimension whose fullest bucket is
 * smallest), or in `rest` when it has none. A request visits only the buckets of its own attribute
 * values, plus `rest`, and tries the rules there in evaluation order.
 */
interface RuleIndex {
  readonly principal: Map<string, Bucket>;
  readonly namespace: Map<string, Bucket>;
  readonly path: Map<string, Bucket>;
  /** Path prefixes cut back to their last "/" ("/api/v1*" -> "/api/"). */
  readonly dir: Map<string, Bucket>;
  /** dirLength[n] is true when some key of `dir` has length n. */
  readonly dirLength: boolean[];
  readonly method: Map<string, Bucket>;
  /** Rules without a usable key, tried for every request. */
  readonly rest: Entry[];
  /**
   * Every key above, hashed (keyHash): most lookups of a request find nothing, and with thousands
   * of keys each of those Map lookups would be a cache miss; the filter rules most of them out.
   */
  readonly filter: KeyFilter;
}

/** One index per action, for HTTP requests or for plain TCP connections (no HTTP-only keys). */
type ActionIndexes = Readonly<Record<Group, RuleIndex>>;

/** Policies of one workload, compiled; reasons that do not depend on the request are built here. */
export interface CompiledPolicies {
  readonly deny: readonly CompiledPolicy[];
  readonly allow: readonly CompiledPolicy[];
  readonly audit: readonly CompiledPolicy[];
  readonly dryRun: readonly CompiledPolicy[];
  readonly noAllowReason: string;
  readonly noMatchReason: string;
  readonly noMatchTcpReason: string;
  readonly index: { readonly http: ActionIndexes; readonly tcp: ActionIndexes };
}

type Getter = (req: RequestAttributes) => string | undefined;

function check(http: boolean, negate: boolean, get: Getter, m: ValueMatcher): Check {
  return { http, test: negate ? (r) => !m(get(r)) : (r) => m(get(r)) };
}

/** A check on an attribute with several values (audiences, claims): it matches if any value does. */
function anyCheck(
  http: boolean,
  negate: boolean,
  get: (r: RequestAttributes) => unknown,
  m: ValueMatcher,
): Check {
  const any = (r: RequestAttributes): boolean => {
    const v = get(r);
    if (typeof v === "string") return m(v);
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) {
        const e: unknown = v[i];
        if (typeof e === "string" && m(e)) return true;
      }
    }
    // Numbers, booleans and maps never match, as in Istio (string and list-of-string claims only).
    return false;
  };
  return { http, test: negate ? (r) => !any(r) : any };
}

function portCheck(negate: boolean, values: readonly string[]): Check {
  const m = compilePorts(values);
  return { http: false, test: negate ? (r) => !m(r.destinationPort) : (r) => m(r.destinationPort) };
}

type Field = "principal" | "namespace" | "requestPrincipal" | "method" | "path";
const GETTERS: Record<Field, Getter> = {
  principal: (r) => r.principal,
  namespace: (r) => r.namespace,
  requestPrincipal: (r) => r.auth?.principal,
  method: (r) => r.http?.method,
  path: (r) => r.http?.path,
};

const principal = GETTERS.principal;
const namespace = GETTERS.namespace;
const sourceIp: Getter = (r) => r.sourceIp;
const remoteIp: Getter = (r) => r.remoteIp;
const destinationIp: Getter = (r) => r.destinationIp;
const sni: Getter = (r) => r.sni;
const requestPrincipal = GETTERS.requestPrincipal;
const presenter: Getter = (r) => r.auth?.presenter;
const audiences = (r: RequestAttributes): unknown => r.auth?.audiences;
const host: Getter = (r) => r.http?.host;

function isExact(v: string): boolean {
  return !v.startsWith("*") && !v.endsWith("*");
}

/**
 * The same string, flat (one block of characters): values cut from a YAML text or glued from
 * parts are slices or trees, and every comparison or hash would walk them. JSON.parse always
 * builds a fresh flat string (and internalizes short ones). Deduplicated per compilation.
 */
function intern(s: string): string {
  const hit = internPool?.get(s);
  if (hit !== undefined) return hit;
  const flat = JSON.parse(JSON.stringify(s)) as string;
  internPool?.set(s, flat);
  return flat;
}

/** Strings interned during one compilePolicies call (many rules repeat the same values). */
let internPool: Map<string, string> | undefined;

/**
 * A check on one attribute in a single closure (each extra closure is one more memory read per
 * rule): exact values compare directly, other forms ("prefix*", "*suffix", "*") are tested inline.
 */
function valueCheck(http: boolean, negate: boolean, field: Field, values: readonly string[]): Check {
  const get = GETTERS[field];
  const exact = [...new Set(values.filter(isExact).map(intern))];
  const prefixes = values
    .filter((v) => v !== "*" && !v.startsWith("*") && v.endsWith("*"))
    .map((v) => v.slice(0, -1));
  const suffixes = values.filter((v) => v !== "*" && v.startsWith("*")).map((v) => v.slice(1));
  const presence = values.includes("*");
  let t: Test;
  if (prefixes.length > 0 || suffixes.length > 0 || presence) {
    const set = new Set(exact);
    t = (r) => {
      const s = get(r);
      if (s === undefined) return false;
      if (presence && s.length > 0) return true;
      if (set.size > 0 && set.has(s)) return true;
      for (let i = 0; i < prefixes.length; i++) if (s.startsWith(prefixes[i]!)) return true;
      for (let i = 0; i < suffixes.length; i++) if (s.endsWith(suffixes[i]!)) return true;
      return false;
    };
  } else if (exact.length === 1) {
    const v = exact[0]!;
    t = (r) => get(r) === v;
  } else if (exact.length === 2) {
    const a = exact[0]!;
    const b = exact[1]!;
    t = (r) => {
      const s = get(r);
      return s === a || s === b;
    };
  } else {
    const set = new Set(exact);
    t = (r) => {
      const s = get(r);
      return s !== undefined && set.has(s);
    };
  }
  return { http, test: negate ? (r) => !t(r) : t };
}

function headerGetter(name: string): Getter {
  return (r) => {
    if (r.http === undefined) return undefined;
    const v = r.http.headers[name];
    // typeof guards against inherited members such as headers["constructor"].
    return typeof v === "string" ? v : undefined;
  };
}

/** Reads claims[a][b]... with own properties only (claims come from untrusted JSON). */
function claimGetter(names: readonly string[]): (r: RequestAttributes) => unknown {
  return (r) => {
    let v: unknown = r.auth?.claims;
    for (let i = 0; i < names.length; i++) {
      if (typeof v !== "object" || v === null || Array.isArray(v)) return undefined;
      const o = v as Record<string, unknown>;
      if (!Object.hasOwn(o, names[i]!)) return undefined;
      v = o[names[i]!];
    }
    return v;
  };
}

/** ["a", "b"] from "request.auth.claims[a][b]". */
export function claimPath(key: string): string[] | undefined {
  const m = CLAIM_KEY.exec(key);
  if (!m) return undefined;
  return m[1]!.slice(1, -1).split("][");
}

const HEADER_KEY = /^request\.headers\[(.*)\]$/;

function sourceChecks(s: Source): Check[] {
  const out: Check[] = [];
  if (s.principals) out.push(valueCheck(false, false, "principal", s.principals));
  if (s.notPrincipals) out.push(valueCheck(false, true, "principal", s.notPrincipals));
  if (s.requestPrincipals) out.push(valueCheck(true, false, "requestPrincipal", s.requestPrincipals));
  if (s.notRequestPrincipals) out.push(valueCheck(true, true, "requestPrincipal", s.notRequestPrincipals));
  if (s.namespaces) out.push(valueCheck(false, false, "namespace", s.namespaces));
  if (s.notNamespaces) out.push(valueCheck(false, true, "namespace", s.notNamespaces));
  if (s.ipBlocks) out.push(check(false, false, sourceIp, compileIpBlocks(s.ipBlocks)));
  if (s.notIpBlocks) out.push(check(false, true, sourceIp, compileIpBlocks(s.notIpBlocks)));
  if (s.remoteIpBlocks) out.push(check(false, false, remoteIp, compileIpBlocks(s.remoteIpBlocks)));
  if (s.notRemoteIpBlocks) out.push(check(false, true, remoteIp, compileIpBlocks(s.notRemoteIpBlocks)));
  return out;
}

function operationChecks(o: Operation): Check[] {
  const out: Check[] = [];
  if (o.hosts) out.push(check(true, false, host, compileHosts(o.hosts)));
  if (o.notHosts) out.push(check(true, true, host, compileHosts(o.notHosts)));
  if (o.ports) out.push(portCheck(false, o.ports));
  if (o.notPorts) out.push(portCheck(true, o.notPorts));
  if (o.methods) out.push(valueCheck(true, false, "method", o.methods));
  if (o.notMethods) out.push(valueCheck(true, true, "method", o.notMethods));
  if (o.paths) out.push(valueCheck(true, false, "path", o.paths));
  if (o.notPaths) out.push(valueCheck(true, true, "path", o.notPaths));
  return out;
}

/** Whether a condition key reads an HTTP-only attribute. */
function httpKey(key: string): boolean {
  return HEADER_KEY.test(key) || key.startsWith("request.auth.");
}

function conditionChecks(c: Condition): Check[] {
  const out: Check[] = [];
  const add = (negate: boolean, values: readonly string[]): void => {
    switch (c.key) {
      case "destination.port":
        out.push(portCheck(negate, values));
        return;
      case "source.ip":
        out.push(check(false, negate, sourceIp, compileIpBlocks(values)));
        return;
      case "remote.ip":
        out.push(check(false, negate, remoteIp, compileIpBlocks(values)));
        return;
      case "destination.ip":
        out.push(check(false, negate, destinationIp, compileIpBlocks(values)));
        return;
      case "source.namespace":
        out.push(check(false, negate, namespace, compileValues(values)));
        return;
      case "source.principal":
        out.push(check(false, negate, principal, compileValues(values)));
        return;
      case "connection.sni":
        out.push(check(false, negate, sni, compileValues(values)));
        return;
      case "request.auth.principal":
        out.push(check(true, negate, requestPrincipal, compileValues(values)));
        return;
      case "request.auth.presenter":
        out.push(check(true, negate, presenter, compileValues(values)));
        return;
      case "request.auth.audiences":
        out.push(anyCheck(true, negate, audiences, compileValues(values)));
        return;
    }
    const claim = claimPath(c.key);
    if (claim !== undefined) {
      out.push(anyCheck(true, negate, claimGetter(claim), compileValues(values)));
      return;
    }
    const m = HEADER_KEY.exec(c.key);
    if (!m) throw new ZmeshError("ZMESH_CONFIG_INVALID", `condition key "${c.key}" cannot be compiled`);
    out.push(check(true, negate, headerGetter(m[1]!.toLowerCase()), compileValues(values)));
  };
  if (c.values) add(false, c.values);
  if (c.notValues) add(true, c.notValues);
  return out;
}

const HTTP_SOURCE_FIELDS = ["requestPrincipals", "notRequestPrincipals"] as const;
const HTTP_OPERATION_FIELDS = ["hosts", "notHosts", "methods", "notMethods", "paths", "notPaths"] as const;

/** Names of the HTTP-only fields a validated rule uses (each once). */
export function httpFieldsOf(rule: Rule): string[] {
  const out: string[] = [];
  for (const f of rule.from ?? []) {
    for (const name of HTTP_SOURCE_FIELDS) {
      if (f.source[name] !== undefined && !out.includes(name)) out.push(name);
    }
  }
  for (const t of rule.to ?? []) {
    for (const f of HTTP_OPERATION_FIELDS) {
      if (t.operation[f] !== undefined && !out.includes(f)) out.push(f);
    }
  }
  for (const c of rule.when ?? []) {
    const name = `when ${c.key}`;
    if (httpKey(c.key) && !out.includes(name)) out.push(name);
  }
  return out;
}

/** Index keys of a rule: for each usable dimension, the values one of which the request must have. */
type Dim = "principal" | "namespace" | "path" | "dir" | "method";
type KeyOption = { bucket: Dim; key: string }[];

/** Keys of a `from`/`to` field when every entry has it with exact values; undefined otherwise. */
function exactKeys<E>(
  entries: readonly E[] | undefined,
  values: (e: E) => readonly string[] | undefined,
  bucket: Dim,
): KeyOption | undefined {
  if (entries === undefined) return undefined;
  const out: KeyOption = [];
  for (const e of entries) {
    const vs = values(e);
    if (vs === undefined || !vs.every(isExact)) return undefined;
    for (const v of vs) out.push({ bucket, key: v });
  }
  return out;
}

/** Path keys: exact paths, or prefixes cut back to their last "/"; no suffix or presence forms. */
function pathKeys(rule: Rule): KeyOption | undefined {
  if (rule.to === undefined) return undefined;
  const out: KeyOption = [];
  for (const t of rule.to) {
    const vs = t.operation.paths;
    if (vs === undefined) return undefined;
    for (const v of vs) {
      if (v.startsWith("*")) return undefined;
      if (v.endsWith("*")) {
        const prefix = v.slice(0, -1);
        out.push({ bucket: "dir", key: prefix.slice(0, prefix.lastIndexOf("/") + 1) });
      } else out.push({ bucket: "path", key: v });
    }
  }
  return out;
}

/** Candidate dimensions in order of preference; HTTP-only ones are left out for TCP. */
function keyOptions(rule: Rule, tcp: boolean): KeyOption[] {
  const opts: (KeyOption | undefined)[] = [
    exactKeys(rule.from, (f) => f.source.principals, "principal"),
    tcp ? undefined : pathKeys(rule),
    exactKeys(rule.from, (f) => f.source.namespaces, "namespace"),
    tcp ? undefined : exactKeys(rule.to, (t) => t.operation.methods, "method"),
  ];
  return opts.filter((o): o is KeyOption => o !== undefined && o.length > 0);
}

/**
 * `checks` is the rule whose matchers are built, `rule` itself unless the index already proves a
 * field (see withoutProven); fields, reasons and the index always come from `rule`.
 */
function compileRule(
  key: string,
  action: Action,
  rule: Rule,
  index: number,
  checks: Rule = rule,
): CompiledRule {
  const httpFields = httpFieldsOf(rule);
  const verb = action === "ALLOW" ? "allowed by" : action === "DENY" ? "denied by" : "audited by";
  const reason = `${verb} ${key} rule ${index}`;
  const tcpReason =
    httpFields.length > 0 && action !== "ALLOW"
      ? `${reason} (on a TCP connection its HTTP-only fields ${httpFields.join(", ")} are ignored, which widens the rule)`
      : reason;
  return {
    index,
    match: ruleMatch(
      checks.from?.map((f) => sourceChecks(f.source)),
      checks.to?.map((t) => operationChecks(t.operation)),
      (checks.when ?? []).flatMap(conditionChecks),
      action === "ALLOW" && httpFields.length > 0,
    ),
    httpFields,
    reason,
    tcpReason,
  };
}

const ANY: Match = () => true;

/** AND of checks; on TCP the HTTP-only ones are skipped. */
function allOf(checks: readonly Check[]): Match {
  if (checks.length === 0) return ANY;
  if (checks.length === 1) {
    const a = checks[0]!.test;
    return checks[0]!.http ? (r, tcp) => tcp || a(r) : (r) => a(r);
  }
  if (checks.length === 2) {
    const a = checks[0]!.test;
    const b = checks[1]!.test;
    const ha = checks[0]!.http;
    const hb = checks[1]!.http;
    return (r, tcp) => ((tcp && ha) || a(r)) && ((tcp && hb) || b(r));
  }
  const tests = checks.map((c) => c.test);
  const http = checks.map((c) => c.http);
  return (r, tcp) => {
    for (let i = 0; i < tests.length; i++) {
      if (tcp && http[i]) continue;
      if (!tests[i]!(r)) return false;
    }
    return true;
  };
}

/** OR of entries (from or to), each an AND of checks. */
function anyOf(entries: readonly (readonly Check[])[]): Match {
  const ms = entries.map(allOf);
  if (ms.includes(ANY)) return ANY;
  if (ms.length === 1) return ms[0]!;
  return (r, tcp) => {
    for (let i = 0; i < ms.length; i++) if (ms[i]!(r, tcp)) return true;
    return false;
  };
}

/**
 * from AND to AND when, as one function. For TCP (no `http`), Istio drops HTTP-only fields: an
 * ALLOW rule using one never matches (smaller allow), a DENY or AUDIT rule is matched without them
 * (wider deny).
 */
function ruleMatch(
  from: readonly (readonly Check[])[] | undefined,
  to: readonly (readonly Check[])[] | undefined,
  when: readonly Check[],
  neverOnTcp: boolean,
): Match {
  const parts = [from && anyOf(from), to && anyOf(to), allOf(when)].filter(
    (m): m is Match => m !== undefined && m !== ANY,
  );
  let m: Match;
  if (parts.length === 0) m = ANY;
  else if (parts.length === 1) m = parts[0]!;
  else if (parts.length === 2) {
    const a = parts[0]!;
    const b = parts[1]!;
    m = (r, tcp) => a(r, tcp) && b(r, tcp);
  } else {
    const [a, b, c] = parts as [Match, Match, Match];
    m = (r, tcp) => a(r, tcp) && b(r, tcp) && c(r, tcp);
  }
  if (!neverOnTcp) return m;
  const inner = m;
  return (r, tcp) => !tcp && inner(r, tcp);
}

function validSpec(p: PolicyRef): AuthorizationPolicySpec {
  const r = validateAuthorizationPolicySpec(p.spec);
  const first = r.issues[0];
  if (first !== undefined || r.value === undefined) {
    const more = r.issues.length > 1 ? ` (and ${r.issues.length - 1} more)` : "";
    throw new ZmeshError(
      first?.code ?? "ZMESH_CONFIG_INVALID",
      `AuthorizationPolicy ${p.namespace}/${p.name}: ${first ? formatIssue(first) : "invalid spec"}${more}`,
    );
  }
  return r.value;
}

interface Compiled {
  policy: CompiledPolicy;
  spec: AuthorizationPolicySpec;
}

function compilePolicy(p: PolicyRef): Compiled {
  const spec = validSpec(p);
  const key = `${p.namespace}/${p.name}`;
  const action = spec.action ?? "ALLOW";
  const policy: CompiledPolicy = {
    key,
    action,
    dryRun: p.dryRun === true,
    rules: (spec.rules ?? []).map((r, i) => compileRule(key, action, r, i)),
  };
  return { policy, spec };
}

/** The fields of a fast entry (see Entry), or undefined when `checks` has another shape. */
function fastForm(checks: Rule): Pick<Entry, "m0" | "m1" | "paths" | "p0" | "p1" | "x0" | "x1"> | undefined {
  if (checks.from !== undefined || (checks.when !== undefined && checks.when.length > 0)) return undefined;
  const none = {
    m0: undefined,
    m1: undefined,
    paths: false,
    p0: undefined,
    p1: undefined,
    x0: undefined,
    x1: undefined,
  };
  if (checks.to === undefined) return none;
  if (checks.to.length !== 1) return undefined;
  const o = checks.to[0]!.operation;
  if (Object.keys(o).some((k) => k !== "methods" && k !== "paths")) return undefined;
  const methods = o.methods ?? [];
  if (methods.length > 2 || !methods.every(isExact)) return undefined;
  const paths = o.paths ?? [];
  const exact = paths.filter(isExact);
  const prefixes = paths
    .filter((v) => v !== "*" && !v.startsWith("*") && v.endsWith("*"))
    .map((v) => v.slice(0, -1));
  if (exact.length > 2 || prefixes.length > 2 || exact.length + prefixes.length !== paths.length)
    return undefined;
  return {
    m0: methods[0] === undefined ? undefined : intern(methods[0]),
    m1: methods[1] === undefined ? undefined : intern(methods[1]),
    paths: paths.length > 0,
    p0: exact[0] === undefined ? undefined : intern(exact[0]),
    p1: exact[1] === undefined ? undefined : intern(exact[1]),
    x0: prefixes[0] === undefined ? undefined : intern(prefixes[0]),
    x1: prefixes[1] === undefined ? undefined : intern(prefixes[1]),
  };
}

function entryOf(ord: number, key: string, rule: CompiledRule, checks: Rule, action: Action): Entry {
  const f = fastForm(checks);
  return {
    ord,
    fast: f !== undefined,
    m0: f?.m0,
    m1: f?.m1,
    paths: f?.paths ?? false,
    p0: f?.p0,
    p1: f?.p1,
    x0: f?.x0,
    x1: f?.x1,
    // A fast rule has only HTTP-only fields: on TCP, ALLOW never matches and DENY/AUDIT always do.
    tcpOk: action !== "ALLOW" || rule.httpFields.length === 0,
    match: rule.match,
    key,
    index: rule.index,
    reason: rule.reason,
    tcpReason: rule.tcpReason,
  };
}

function push(map: Map<string, Bucket>, key: string, e: Entry): void {
  const b = map.get(key);
  if (b === undefined) map.set(key, e);
  else if (!Array.isArray(b)) {
    if (b !== e) map.set(key, [b, e]);
  } else if (b[b.length - 1] !== e) b.push(e);
}

// Salts, so that the filter of an index tells the dimensions apart.
const SALT = {
  principal: 0x9e3779b9,
  namespace: 0x85ebca6b,
  path: 0xc2b2ae35,
  dir: 0x165667b1,
  method: 0x27d4eb2f,
};

/** FNV-1a over UTF-16 code units, from a salt; `keyHash(s, 0, s.length, salt)` hashes all of s. */
function keyHash(s: string, from: number, to: number, seed: number): number {
  let h = seed;
  for (let i = from; i < to; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/**
 * A Bloom filter (two probes) over the keys of an index. Most lookups of a request find nothing
 * (its path is no key, its namespace has no rule...), and with thousands of keys each such Map
 * lookup is a cache miss; the filter is small enough to stay in cache and rules most of them out.
 */
class KeyFilter {
  private bits = new Uint32Array(32);
  private mask = 1023;
  private readonly hashes: number[] = [];

  add(h: number): void {
    this.hashes.push(h);
  }

  /** Sizes the filter to ~16 bits per key, once every key is added. */
  seal(): void {
    let size = 1024;
    while (size < this.hashes.length * 16 && size < 1 << 24) size *= 2;
    this.bits = new Uint32Array(size >>> 5);
    this.mask = size - 1;
    for (const h of this.hashes) this.set(h);
    this.hashes.length = 0;
  }

  private set(h: number): void {
    const a = h & this.mask;
    const b = Math.imul(h, 0x5bd1e995) >>> 7;
    const bb = b & this.mask;
    this.bits[a >>> 5]! |= 1 << (a & 31);
    this.bits[bb >>> 5]! |= 1 << (bb & 31);
  }

  has(h: number): boolean {
    const a = h & this.mask;
    const b = (Math.imul(h, 0x5bd1e995) >>> 7) & this.mask;
    return (this.bits[a >>> 5]! & (1 << (a & 31))) !== 0 && (this.bits[b >>> 5]! & (1 << (b & 31))) !== 0;
  }
}

/**
 * Files each rule of `group` (already in evaluation order) under the dimension whose fullest
 * bucket is the smallest, so that few rules share a key; rules without a usable key go to `rest`.
 */
/**
 * A rule found through an exact principal, namespace, path or method bucket has that value, so
 * when the rule has a single from (or to) entry its check on that field can go: the rule without
 * it, or undefined when nothing is proven (path prefixes, several entries).
 */
function withoutProven(rule: Rule, option: KeyOption): Rule | undefined {
  const bucket = option[0]?.bucket;
  if (bucket === undefined || bucket === "dir" || option.some((k) => k.bucket !== bucket)) return undefined;
  if (bucket === "principal" || bucket === "namespace") {
    if (rule.from?.length !== 1) return undefined;
    const source: Source = { ...rule.from[0]!.source };
    delete source[bucket === "principal" ? "principals" : "namespaces"];
    const { from: _, ...rest } = rule;
    return Object.keys(source).length > 0 ? { ...rest, from: [{ source }] } : rest;
  }
  if (rule.to?.length !== 1) return undefined;
  const operation: Operation = { ...rule.to[0]!.operation };
  delete operation[bucket === "path" ? "paths" : "methods"];
  const { to: _, ...rest } = rule;
  return Object.keys(operation).length > 0 ? { ...rest, to: [{ operation }] } : rest;
}

function buildIndex(
  group: readonly Compiled[],
  tcp: boolean,
  useKeys: boolean,
  variants: Map<string, CompiledRule>,
): RuleIndex {
  const ix: RuleIndex = {
    principal: new Map(),
    namespace: new Map(),
    path: new Map(),
    dir: new Map(),
    dirLength: [],
    method: new Map(),
    rest: [],
    filter: new KeyFilter(),
  };
  const items: { entry: Entry; options: KeyOption[]; rule: Rule; policy: CompiledPolicy }[] = [];
  const counts: Record<Dim, Map<string, number>> = {
    principal: new Map(),
    namespace: new Map(),
    path: new Map(),
    dir: new Map(),
    method: new Map(),
  };
  let ord = 0;
  for (const { policy, spec } of group) {
    (spec.rules ?? []).forEach((rule, i) => {
      const compiled = policy.rules[i]!;
      const entry = entryOf(ord++, policy.key, compiled, rule, policy.action);
      // An ALLOW rule with HTTP-only fields never matches a plain TCP connection.
      if (tcp && policy.action === "ALLOW" && compiled.httpFields.length > 0) return;
      const options = useKeys ? keyOptions(rule, tcp) : [];
      for (const o of options) {
        for (const k of o) counts[k.bucket].set(k.key, (counts[k.bucket].get(k.key) ?? 0) + 1);
      }
      items.push({ entry, options, rule, policy });
    });
  }
  for (const { entry: e, options, rule, policy } of items) {
    let entry = e;
    let best: KeyOption | undefined;
    let bestCost = Number.POSITIVE_INFINITY;
    for (const o of options) {
      let cost = 0;
      for (const k of o) cost = Math.max(cost, counts[k.bucket].get(k.key) ?? 0);
      if (cost < bestCost) {
        best = o;
        bestCost = cost;
      }
    }
    if (best === undefined) {
      ix.rest.push(entry);
      continue;
    }
    const lean = withoutProven(rule, best);
    if (lean !== undefined) {
      // Shared by the HTTP and TCP indexes: one compilation per rule and proven field.
      const id = `${entry.key}\0${entry.index}\0${best[0]!.bucket}`;
      let compiled = variants.get(id);
      if (compiled === undefined) {
        compiled = compileRule(entry.key, policy.action, rule, entry.index, lean);
        variants.set(id, compiled);
      }
      entry = entryOf(entry.ord, entry.key, compiled, lean, policy.action);
    }
    for (const k of best) {
      push(ix[k.bucket], intern(k.key), entry);
      ix.filter.add(keyHash(k.key, 0, k.key.length, SALT[k.bucket]));
      if (k.bucket === "dir") ix.dirLength[k.key.length] = true;
    }
  }
  ix.filter.seal();
  return ix;
}

/** At most `max` names, then "and N more", so that reasons stay readable with many policies. */
function names(keys: readonly string[], max = 10): string {
  return keys.length <= max
    ? keys.join(", ")
    : `${keys.slice(0, max).join(", ")} and ${keys.length - max} more`;
}

/**
 * Compiles the policies that apply to one workload (see selectPolicies). Each spec is validated
 * again, and an invalid one throws a ZmeshError: a policy is never silently dropped.
 * `index: false` scans every rule in order instead (same decisions; for tests and benchmarks).
 */
export function compilePolicies(
  policies: readonly PolicyRef[],
  opts?: { index?: boolean },
): CompiledPolicies {
  const useKeys = opts?.index ?? true;
  internPool = new Map();
  try {
    return compileAll(policies, useKeys);
  } finally {
    internPool = undefined;
  }
}

function compileAll(policies: readonly PolicyRef[], useKeys: boolean): CompiledPolicies {
  const compiled = policies
    .map(compilePolicy)
    .sort((a, b) => (a.policy.key < b.policy.key ? -1 : a.policy.key > b.policy.key ? 1 : 0));
  const enforcedC = compiled.filter((c) => !c.policy.dryRun);
  const denyC = enforcedC.filter((c) => c.policy.action === "DENY");
  const allowC = enforcedC.filter((c) => c.policy.action === "ALLOW");
  const auditC = enforcedC.filter((c) => c.policy.action === "AUDIT");
  const enforced = enforcedC.map((c) => c.policy);
  const deny = denyC.map((c) => c.policy);
  const allow = allowC.map((c) => c.policy);
  const audit = auditC.map((c) => c.policy);
  const dryRun = compiled.filter((c) => c.policy.dryRun).map((c) => c.policy);

  const noAllowReason =
    enforced.length === 0
      ? "allowed: no authorization policy applies to this workload"
      : deny.length > 0
        ? "allowed: no DENY policy matched and no ALLOW policy applies to this workload"
        : "allowed: no ALLOW policy applies to this workload";
  const empty: string[] = [];
  for (const p of allow) if (p.rules.length === 0) empty.push(p.key);
  const notes = empty.length <= 10 ? empty.map((k) => `${k} has no rules, so it allows nothing`) : [];
  if (empty.length > 10) notes.push(`${names(empty)} have no rules, so they allow nothing`);
  const tcpOnlyHttp: string[] = [];
  for (const p of allow) {
    for (const r of p.rules) {
      if (r.httpFields.length > 0) tcpOnlyHttp.push(`${p.key} rule ${r.index} (${r.httpFields.join(", ")})`);
    }
  }
  const checked = `checked ${names(allow.map((p) => p.key))}`;
  const noMatchReason = `denied: no ALLOW policy matched (${[checked, ...notes].join("; ")})`;
  const tcpNote =
    tcpOnlyHttp.length > 0
      ? [`on a TCP connection rules with HTTP-only fields never match: ${names(tcpOnlyHttp)}`]
      : [];
  const noMatchTcpReason = `denied: no ALLOW policy matched (${[checked, ...notes, ...tcpNote].join("; ")})`;
  const variants = new Map<string, CompiledRule>();
  const indexes = (tcp: boolean): ActionIndexes => ({
    deny: buildIndex(denyC, tcp, useKeys, variants),
    allow: buildIndex(allowC, tcp, useKeys, variants),
    audit: buildIndex(auditC, tcp, useKeys, variants),
  });
  const http = indexes(false);
  const tcp = indexes(true);
  return {
    deny,
    allow,
    audit,
    dryRun,
    noAllowReason,
    noMatchReason,
    noMatchTcpReason,
    index: { http, tcp },
  };
}

function firstMatch(p: CompiledPolicy, req: RequestAttributes, tcp: boolean): CompiledRule | undefined {
  for (let i = 0; i < p.rules.length; i++) {
    const r = p.rules[i]!;
    if (r.match(req, tcp)) return r;
  }
  return undefined;
}

// State of one evaluate() call, kept in module variables: evaluate() is synchronous, and this way
// a decision allocates nothing but its result. The request's keys are hashed once (hashKeys) and
// each action's index is then probed with them.
let hPrincipal = 0;
let hNamespace = 0;
let hPath = 0;
let hMethod = 0;
/** Path positions just after a "/" (prefix lengths) and the hashes of those prefixes. */
let dirEnd = new Int32Array(64);
let dirHash = new Uint32Array(64);
let dirCount = 0;
let bestOrd = Number.POSITIVE_INFINITY;
let bestEntry: Entry | undefined;
let matched: Entry[] = [];

function hashKeys(req: RequestAttributes): void {
  const p = req.principal;
  hPrincipal = p === undefined ? 0 : keyHash(p, 0, p.length, SALT.principal);
  const n = req.namespace;
  hNamespace = n === undefined ? 0 : keyHash(n, 0, n.length, SALT.namespace);
  dirCount = 0;
  const http = req.http;
  if (http === undefined) return;
  const path = http.path;
  hPath = keyHash(path, 0, path.length, SALT.path);
  hMethod = keyHash(http.method, 0, http.method.length, SALT.method);
  // The directories' hashes, incrementally: no string is cut unless a filter lets it through.
  let h = SALT.dir;
  for (let i = 0; i < path.length; i++) {
    const c = path.charCodeAt(i);
    h = Math.imul(h ^ c, 0x01000193);
    if (c === 0x2f) {
      if (dirCount === dirEnd.length) {
        // A path with more segments than ever seen: grow (every directory must be looked up).
        const end = new Int32Array(dirCount * 2);
        end.set(dirEnd);
        dirEnd = end;
        const hash = new Uint32Array(dirCount * 2);
        hash.set(dirHash);
        dirHash = hash;
      }
      dirEnd[dirCount] = i + 1;
      dirHash[dirCount++] = h >>> 0;
    }
  }
}

function probe(map: Map<string, Bucket>, f: KeyFilter, key: string, h: number): Bucket | undefined {
  return map.size > 0 && f.has(h) ? map.get(key) : undefined;
}

/** Hands `visitor` every bucket of `ix` the request can match: its principal, namespace, path, directories, method, and rest. */
function visit(
  ix: RuleIndex,
  req: RequestAttributes,
  tcp: boolean,
  visitor: (b: Bucket | undefined, req: RequestAttributes, tcp: boolean) => void,
): void {
  const f = ix.filter;
  if (req.principal !== undefined) visitor(probe(ix.principal, f, req.principal, hPrincipal), req, tcp);
  if (req.namespace !== undefined) visitor(probe(ix.namespace, f, req.namespace, hNamespace), req, tcp);
  const http = req.http;
  if (http !== undefined) {
    const path = http.path;
    visitor(probe(ix.path, f, path, hPath), req, tcp);
    if (ix.dir.size > 0) {
      const lengths = ix.dirLength;
      for (let k = 0; k < dirCount; k++) {
        const end = dirEnd[k]!;
        if (lengths[end] === true && f.has(dirHash[k]!)) visitor(ix.dir.get(path.slice(0, end)), req, tcp);
      }
    }
    visitor(probe(ix.method, f, http.method, hMethod), req, tcp);
  }
  if (ix.rest.length > 0) visitor(ix.rest, req, tcp);
}

/** Looks for a match in one bucket, stopping at entries that come after the best one already found. */
function scan(bucket: Bucket | undefined, req: RequestAttributes, tcp: boolean): void {
  if (bucket === undefined) return;
  if (!Array.isArray(bucket)) {
    if (bucket.ord < bestOrd && matches(bucket, req, tcp)) {
      bestOrd = bucket.ord;
      bestEntry = bucket;
    }
    return;
  }
  for (let i = 0; i < bucket.length; i++) {
    const e = bucket[i]!;
    if (e.ord >= bestOrd) return;
    if (matches(e, req, tcp)) {
      bestOrd = e.ord;
      bestEntry = e;
      return;
    }
  }
}

/** The first matching rule of one action in evaluation order (policy key, then rule index). */
function firstOf(ix: RuleIndex, req: RequestAttributes, tcp: boolean): Entry | undefined {
  bestOrd = Number.POSITIVE_INFINITY;
  bestEntry = undefined;
  visit(ix, req, tcp, scan);
  const e = bestEntry;
  bestEntry = undefined;
  return e;
}

function collect(bucket: Bucket | undefined, req: RequestAttributes, tcp: boolean): void {
  if (bucket === undefined) return;
  if (!Array.isArray(bucket)) {
    if (matches(bucket, req, tcp)) matched.push(bucket);
    return;
  }
  for (let i = 0; i < bucket.length; i++) {
    const e = bucket[i]!;
    if (matches(e, req, tcp)) matched.push(e);
  }
}

/** Keys of every policy of `ix` with a matching rule, in evaluation order, each once. */
function allOfIndex(ix: RuleIndex, req: RequestAttributes, tcp: boolean): string[] | undefined {
  matched = [];
  visit(ix, req, tcp, collect);
  if (matched.length === 0) return undefined;
  matched.sort((a, b) => a.ord - b.ord);
  const out: string[] = [];
  for (const e of matched) if (out[out.length - 1] !== e.key) out.push(e.key);
  matched = [];
  return out;
}

/**
 * Decides one request or connection: a matching DENY policy denies; else, with no ALLOW policy,
 * allow; else allow only if an ALLOW policy matches. AUDIT and dry-run policies are reported only.
 */
export function evaluate(compiled: CompiledPolicies, req: RequestAttributes): Decision {
  const tcp = req.http === undefined;
  const ix = tcp ? compiled.index.tcp : compiled.index.http;
  hashKeys(req);
  let d: Decision | undefined;
  if (compiled.deny.length > 0) {
    const e = firstOf(ix.deny, req, tcp);
    if (e !== undefined) {
      d = {
        allowed: false,
        policy: e.key,
        action: "DENY",
        rule: e.index,
        reason: tcp ? e.tcpReason : e.reason,
      };
    }
  }
  if (d === undefined) {
    if (compiled.allow.length === 0) {
      d = { allowed: true, reason: compiled.noAllowReason };
    } else {
      const e = firstOf(ix.allow, req, tcp);
      d =
        e !== undefined
          ? {
              allowed: true,
              policy: e.key,
              action: "ALLOW",
              rule: e.index,
              reason: e.reason,
            }
          : { allowed: false, reason: tcp ? compiled.noMatchTcpReason : compiled.noMatchReason };
    }
  }
  if (compiled.audit.length > 0) {
    const audits = allOfIndex(ix.audit, req, tcp);
    if (audits !== undefined) d.audits = audits;
  }
  if (compiled.dryRun.length > 0) {
    const out: { policy: string; wouldAllow: boolean }[] = [];
    for (let i = 0; i < compiled.dryRun.length; i++) {
      const p = compiled.dryRun[i]!;
      const matched = firstMatch(p, req, tcp) !== undefined;
      out.push({
        policy: p.key,
        wouldAllow: p.action === "DENY" ? !matched : p.action === "ALLOW" ? matched : true,
      });
    }
    d.dryRun = out;
  }
  return d;
}

/**
 * One line per rule whose meaning changes on a plain TCP connection because it uses HTTP-only fields.
 * Policies with an invalid spec are skipped (validation reports them).
 */
export function tcpWarnings(policies: readonly PolicyRef[]): string[] {
  const out: string[] = [];
  for (const p of policies) {
    const r = validateAuthorizationPolicySpec(p.spec);
    if (r.value === undefined) continue;
    const action = r.value.action ?? "ALLOW";
    const dry = p.dryRun === true ? " (dry-run)" : "";
    (r.value.rules ?? []).forEach((rule, i) => {
      const fields = httpFieldsOf(rule);
      if (fields.length === 0) return;
      const head = `${p.namespace}/${p.name}${dry} rule ${i} (${action}) uses HTTP-only fields (${fields.join(", ")})`;
      out.push(
        action === "ALLOW"
          ? `${head}, so it never matches a plain TCP connection`
          : `${head}, which are ignored for a plain TCP connection, so there the rule matches more widely`,
      );
    });
  }
  return out;
}
