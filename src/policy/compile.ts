// Compilation of validated policies into matcher functions, and evaluation of a request against
// them with Istio's order (DENY, then ALLOW; AUDIT and dry-run never decide). Pure and allocation-lean.

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
import { formatIssue, validateAuthorizationPolicySpec } from "./validate.js";

type Test = (req: RequestAttributes) => boolean;

/** One field (or one half of a condition); `http` marks the fields a TCP connection does not have. */
interface Check {
  readonly http: boolean;
  readonly test: Test;
}

export interface CompiledRule {
  readonly index: number;
  /** OR over entries, AND over the checks of an entry; undefined = any. */
  readonly from: readonly (readonly Check[])[] | undefined;
  readonly to: readonly (readonly Check[])[] | undefined;
  readonly when: readonly Check[];
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

/** Policies of one workload, compiled; reasons that do not depend on the request are built here. */
export interface CompiledPolicies {
  readonly deny: readonly CompiledPolicy[];
  readonly allow: readonly CompiledPolicy[];
  readonly audit: readonly CompiledPolicy[];
  readonly dryRun: readonly CompiledPolicy[];
  readonly noAllowReason: string;
  readonly noMatchReason: string;
  readonly noMatchTcpReason: string;
}

type Getter = (req: RequestAttributes) => string | undefined;

function check(http: boolean, negate: boolean, get: Getter, m: ValueMatcher): Check {
  return { http, test: negate ? (r) => !m(get(r)) : (r) => m(get(r)) };
}

function portCheck(negate: boolean, values: readonly string[]): Check {
  const m = compilePorts(values);
  return { http: false, test: negate ? (r) => !m(r.destinationPort) : (r) => m(r.destinationPort) };
}

const principal: Getter = (r) => r.principal;
const namespace: Getter = (r) => r.namespace;
const sourceIp: Getter = (r) => r.sourceIp;
const host: Getter = (r) => r.http?.host;
const method: Getter = (r) => r.http?.method;
const path: Getter = (r) => r.http?.path;

function headerGetter(name: string): Getter {
  return (r) => {
    if (r.http === undefined) return undefined;
    const v = r.http.headers[name];
    // typeof guards against inherited members such as headers["constructor"].
    return typeof v === "string" ? v : undefined;
  };
}

const HEADER_KEY = /^request\.headers\[(.*)\]$/;

function sourceChecks(s: Source): Check[] {
  const out: Check[] = [];
  if (s.principals) out.push(check(false, false, principal, compileValues(s.principals)));
  if (s.notPrincipals) out.push(check(false, true, principal, compileValues(s.notPrincipals)));
  if (s.namespaces) out.push(check(false, false, namespace, compileValues(s.namespaces)));
  if (s.notNamespaces) out.push(check(false, true, namespace, compileValues(s.notNamespaces)));
  if (s.ipBlocks) out.push(check(false, false, sourceIp, compileIpBlocks(s.ipBlocks)));
  if (s.notIpBlocks) out.push(check(false, true, sourceIp, compileIpBlocks(s.notIpBlocks)));
  return out;
}

function operationChecks(o: Operation): Check[] {
  const out: Check[] = [];
  if (o.hosts) out.push(check(true, false, host, compileHosts(o.hosts)));
  if (o.notHosts) out.push(check(true, true, host, compileHosts(o.notHosts)));
  if (o.ports) out.push(portCheck(false, o.ports));
  if (o.notPorts) out.push(portCheck(true, o.notPorts));
  if (o.methods) out.push(check(true, false, method, compileValues(o.methods)));
  if (o.notMethods) out.push(check(true, true, method, compileValues(o.notMethods)));
  if (o.paths) out.push(check(true, false, path, compileValues(o.paths)));
  if (o.notPaths) out.push(check(true, true, path, compileValues(o.notPaths)));
  return out;
}

function conditionChecks(c: Condition): Check[] {
  const out: Check[] = [];
  const add = (negate: boolean, values: readonly string[]): void => {
    if (c.key === "destination.port") {
      out.push(portCheck(negate, values));
    } else if (c.key === "source.ip") {
      out.push(check(false, negate, sourceIp, compileIpBlocks(values)));
    } else if (c.key === "source.namespace") {
      out.push(check(false, negate, namespace, compileValues(values)));
    } else if (c.key === "source.principal") {
      out.push(check(false, negate, principal, compileValues(values)));
    } else {
      const m = HEADER_KEY.exec(c.key);
      if (!m) throw new ZmeshError("ZMESH_CONFIG_INVALID", `condition key "${c.key}" cannot be compiled`);
      out.push(check(true, negate, headerGetter(m[1]!.toLowerCase()), compileValues(values)));
    }
  };
  if (c.values) add(false, c.values);
  if (c.notValues) add(true, c.notValues);
  return out;
}

const HTTP_OPERATION_FIELDS = ["hosts", "notHosts", "methods", "notMethods", "paths", "notPaths"] as const;

/** Names of the HTTP-only fields a validated rule uses (each once). */
export function httpFieldsOf(rule: Rule): string[] {
  const out: string[] = [];
  for (const t of rule.to ?? []) {
    for (const f of HTTP_OPERATION_FIELDS) {
      if (t.operation[f] !== undefined && !out.includes(f)) out.push(f);
    }
  }
  for (const c of rule.when ?? []) {
    const name = `when ${c.key}`;
    if (HEADER_KEY.test(c.key) && !out.includes(name)) out.push(name);
  }
  return out;
}

function compileRule(key: string, action: Action, rule: Rule, index: number): CompiledRule {
  const httpFields = httpFieldsOf(rule);
  const verb = action === "ALLOW" ? "allowed by" : action === "DENY" ? "denied by" : "audited by";
  const reason = `${verb} ${key} rule ${index}`;
  const tcpReason =
    httpFields.length > 0 && action !== "ALLOW"
      ? `${reason} (on a TCP connection its HTTP-only fields ${httpFields.join(", ")} are ignored, which widens the rule)`
      : reason;
  return {
    index,
    from: rule.from?.map((f) => sourceChecks(f.source)),
    to: rule.to?.map((t) => operationChecks(t.operation)),
    when: (rule.when ?? []).flatMap(conditionChecks),
    httpFields,
    reason,
    tcpReason,
  };
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

function compilePolicy(p: PolicyRef): CompiledPolicy {
  const spec = validSpec(p);
  const key = `${p.namespace}/${p.name}`;
  const action = spec.action ?? "ALLOW";
  return {
    key,
    action,
    dryRun: p.dryRun === true,
    rules: (spec.rules ?? []).map((r, i) => compileRule(key, action, r, i)),
  };
}

/**
 * Compiles the policies that apply to one workload (see selectPolicies). Each spec is validated
 * again, and an invalid one throws a ZmeshError: a policy is never silently dropped.
 */
export function compilePolicies(policies: readonly PolicyRef[]): CompiledPolicies {
  const compiled = policies.map(compilePolicy).sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  const enforced = compiled.filter((p) => !p.dryRun);
  const deny = enforced.filter((p) => p.action === "DENY");
  const allow = enforced.filter((p) => p.action === "ALLOW");
  const audit = enforced.filter((p) => p.action === "AUDIT");
  const dryRun = compiled.filter((p) => p.dryRun);

  const noAllowReason =
    enforced.length === 0
      ? "allowed: no authorization policy applies to this workload"
      : deny.length > 0
        ? "allowed: no DENY policy matched and no ALLOW policy applies to this workload"
        : "allowed: no ALLOW policy applies to this workload";
  const notes: string[] = [];
  for (const p of allow) if (p.rules.length === 0) notes.push(`${p.key} has no rules, so it allows nothing`);
  const tcpOnlyHttp: string[] = [];
  for (const p of allow) {
    for (const r of p.rules) {
      if (r.httpFields.length > 0) tcpOnlyHttp.push(`${p.key} rule ${r.index} (${r.httpFields.join(", ")})`);
    }
  }
  const checked = `checked ${allow.map((p) => p.key).join(", ")}`;
  const noMatchReason = `denied: no ALLOW policy matched (${[checked, ...notes].join("; ")})`;
  const tcpNote =
    tcpOnlyHttp.length > 0
      ? [`on a TCP connection rules with HTTP-only fields never match: ${tcpOnlyHttp.join(", ")}`]
      : [];
  const noMatchTcpReason = `denied: no ALLOW policy matched (${[checked, ...notes, ...tcpNote].join("; ")})`;
  return { deny, allow, audit, dryRun, noAllowReason, noMatchReason, noMatchTcpReason };
}

function checksPass(checks: readonly Check[], req: RequestAttributes, skipHttp: boolean): boolean {
  for (let i = 0; i < checks.length; i++) {
    const c = checks[i]!;
    if (skipHttp && c.http) continue;
    if (!c.test(req)) return false;
  }
  return true;
}

function anyEntry(
  entries: readonly (readonly Check[])[],
  req: RequestAttributes,
  skipHttp: boolean,
): boolean {
  for (let i = 0; i < entries.length; i++) if (checksPass(entries[i]!, req, skipHttp)) return true;
  return false;
}

/**
 * For TCP (no `http`), Istio drops HTTP-only fields: an ALLOW rule using one never matches (smaller
 * allow), a DENY or AUDIT rule is matched without them (wider deny).
 */
function ruleMatches(rule: CompiledRule, action: Action, req: RequestAttributes, tcp: boolean): boolean {
  if (tcp && action === "ALLOW" && rule.httpFields.length > 0) return false;
  if (rule.from !== undefined && !anyEntry(rule.from, req, tcp)) return false;
  if (rule.to !== undefined && !anyEntry(rule.to, req, tcp)) return false;
  return checksPass(rule.when, req, tcp);
}

function firstMatch(p: CompiledPolicy, req: RequestAttributes, tcp: boolean): CompiledRule | undefined {
  for (let i = 0; i < p.rules.length; i++) {
    const r = p.rules[i]!;
    if (ruleMatches(r, p.action, req, tcp)) return r;
  }
  return undefined;
}

/**
 * Decides one request or connection: a matching DENY policy denies; else, with no ALLOW policy,
 * allow; else allow only if an ALLOW policy matches. AUDIT and dry-run policies are reported only.
 */
export function evaluate(compiled: CompiledPolicies, req: RequestAttributes): Decision {
  const tcp = req.http === undefined;
  let d: Decision | undefined;
  for (let i = 0; i < compiled.deny.length && d === undefined; i++) {
    const p = compiled.deny[i]!;
    const r = firstMatch(p, req, tcp);
    if (r !== undefined) {
      d = {
        allowed: false,
        policy: p.key,
        action: "DENY",
        rule: r.index,
        reason: tcp ? r.tcpReason : r.reason,
      };
    }
  }
  if (d === undefined) {
    if (compiled.allow.length === 0) {
      d = { allowed: true, reason: compiled.noAllowReason };
    } else {
      for (let i = 0; i < compiled.allow.length && d === undefined; i++) {
        const p = compiled.allow[i]!;
        const r = firstMatch(p, req, tcp);
        if (r !== undefined)
          d = { allowed: true, policy: p.key, action: "ALLOW", rule: r.index, reason: r.reason };
      }
      if (d === undefined) {
        d = { allowed: false, reason: tcp ? compiled.noMatchTcpReason : compiled.noMatchReason };
      }
    }
  }
  for (let i = 0; i < compiled.audit.length; i++) {
    const p = compiled.audit[i]!;
    if (firstMatch(p, req, tcp) === undefined) continue;
    if (d.audits === undefined) d.audits = [p.key];
    else d.audits.push(p.key);
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
