// Validation of an AuthorizationPolicy spec from untrusted YAML into the typed model: every
// problem becomes an Issue with a field path, and Istio features zmesh lacks are refused, never ignored.

import { parseIPv4Block } from "./match.js";
import type {
  Action,
  AuthorizationPolicySpec,
  Condition,
  Issue,
  Operation,
  Rule,
  Source,
  WorkloadSelector,
} from "./types.js";

export type Obj = Record<string, unknown>;

/** The kinds of values a list can hold; each has its own checks and example. */
export type ValueKind =
  | "principal"
  | "requestPrincipal"
  | "namespace"
  | "ip"
  | "port"
  | "method"
  | "path"
  | "host"
  | "header"
  | "value";

const EXAMPLE: Record<ValueKind, string> = {
  principal: '["cluster.local/ns/shop/sa/frontend"]',
  requestPrincipal: '["https://issuer.example/alice"]',
  namespace: '["shop"]',
  ip: '["198.18.0.0/16"]',
  port: '["8080"]',
  method: '["GET"]',
  path: '["/api/*"]',
  host: '["shop.example"]',
  header: '["value"]',
  value: '["value"]',
};

const SOURCE_FIELDS: Record<string, ValueKind> = {
  principals: "principal",
  notPrincipals: "principal",
  requestPrincipals: "requestPrincipal",
  notRequestPrincipals: "requestPrincipal",
  namespaces: "namespace",
  notNamespaces: "namespace",
  ipBlocks: "ip",
  notIpBlocks: "ip",
  remoteIpBlocks: "ip",
  notRemoteIpBlocks: "ip",
};

const OPERATION_FIELDS: Record<string, ValueKind> = {
  hosts: "host",
  notHosts: "host",
  ports: "port",
  notPorts: "port",
  methods: "method",
  notMethods: "method",
  paths: "path",
  notPaths: "path",
};

const SPEC_UNSUPPORTED: Record<string, string> = {
  provider:
    "not supported yet by zmesh (CUSTOM external authorization is not implemented); remove it and use action ALLOW, DENY or AUDIT",
  targetRef:
    "not supported yet by zmesh (policies attach to workloads through selector); use selector.matchLabels instead",
  targetRefs:
    "not supported yet by zmesh (policies attach to workloads through selector); use selector.matchLabels instead",
};

const ACTIONS: readonly string[] = ["ALLOW", "DENY", "AUDIT"];
const STANDARD_METHODS = new Set([
  "GET",
  "HEAD",
  "POST",
  "PUT",
  "DELETE",
  "CONNECT",
  "OPTIONS",
  "TRACE",
  "PATCH",
]);
const HEADER_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const CONDITION_KEYS =
  "request.headers[NAME], source.ip, source.namespace, source.principal, remote.ip, request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[NAME], destination.ip, destination.port, connection.sni";

/** request.auth.claims[NAME] or nested request.auth.claims[a][b]; names are taken literally. */
export const CLAIM_KEY = /^request\.auth\.claims((?:\[[^[\]]+\])+)$/;

export const EMPTY: Record<string, never> = {};

export function isObj(v: unknown): v is Obj {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

export function has(o: Obj, k: string): boolean {
  return Object.hasOwn(o, k) && o[k] !== undefined && o[k] !== null;
}

/** "spec.selector.matchLabels.app", or ["app.kubernetes.io/name"] for keys that are not identifiers. */
export function child(path: string, key: string): string {
  return /^[A-Za-z_][A-Za-z0-9_]*$/.test(key) ? `${path}.${key}` : `${path}[${JSON.stringify(key)}]`;
}

export function describe(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "a list";
  if (typeof v === "object") return "a map";
  const text = JSON.stringify(v) ?? String(v);
  return `${typeof v} ${text.length > 60 ? `${text.slice(0, 57)}...` : text}`;
}

function distance(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0]!;
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const up = prev[j]!;
      prev[j] = Math.min(
        up + 1,
        prev[j - 1]! + 1,
        diag + (a[i - 1]!.toLowerCase() === b[j - 1]!.toLowerCase() ? 0 : 1),
      );
      diag = up;
    }
  }
  return prev[b.length]!;
}

/** Collects issues while reading one resource spec; shared by the three policy kinds. */
export class Checker {
  readonly issues: Issue[] = [];

  invalid(path: string, message: string): void {
    this.issues.push({ path, message, code: "ZMESH_CONFIG_INVALID" });
  }

  unsupported(path: string, message: string): void {
    this.issues.push({ path, message, code: "ZMESH_CONFIG_UNSUPPORTED" });
  }

  /** Reports unknown fields (with a suggestion) and refuses known Istio fields zmesh lacks. */
  fields(obj: Obj, path: string, allowed: readonly string[], unsupported: Record<string, string>): void {
    for (const k of Object.keys(obj)) {
      if (allowed.includes(k)) continue;
      if (Object.hasOwn(unsupported, k)) {
        this.unsupported(child(path, k), `"${k}" is ${unsupported[k]}`);
        continue;
      }
      const known = [...allowed, ...Object.keys(unsupported)];
      let best: string | undefined;
      let bestD = 3;
      // Keys come from untrusted YAML: only suggest for names of a plausible length.
      for (const a of k.length <= 64 ? known : []) {
        const d = distance(k, a);
        if (d < bestD) {
          best = a;
          bestD = d;
        }
      }
      const hint = best !== undefined ? ` (did you mean "${best}"?)` : "";
      this.invalid(
        child(path, k),
        `unknown field "${k}"${hint}; the fields allowed here are ${allowed.join(", ")}`,
      );
    }
  }

  value(v: string, path: string, kind: ValueKind): void {
    switch (kind) {
      case "principal":
        if (v.startsWith("spiffe://")) {
          this.invalid(path, `write principals without the scheme, e.g. "${v.slice("spiffe://".length)}"`);
        }
        return;
      case "requestPrincipal":
        if (!v.startsWith("*") && !v.endsWith("*") && !v.includes("/")) {
          this.invalid(
            path,
            `"${v}" never matches because a request principal is "<iss>/<sub>", e.g. "https://issuer.example/${v}"`,
          );
        }
        return;
      case "ip":
        if (v.includes(":")) {
          this.unsupported(
            path,
            `IPv6 address "${v}" is not supported yet by zmesh (the mesh is IPv4-only); remove it`,
          );
        } else if (parseIPv4Block(v) === undefined) {
          this.invalid(
            path,
            `"${v}" is not an IPv4 address or CIDR block; write e.g. "198.18.0.0/16" or "198.18.0.7"`,
          );
        }
        return;
      case "port":
        if (!/^[0-9]{1,5}$/.test(v) || Number(v) < 1 || Number(v) > 65535) {
          this.invalid(path, `"${v}" is not a port; write a number from 1 to 65535 as a string, e.g. "8080"`);
        }
        return;
      case "method": {
        const upper = v.toUpperCase();
        if (upper !== v && STANDARD_METHODS.has(upper)) {
          this.invalid(
            path,
            `"${v}" never matches because HTTP methods are case-sensitive; write "${upper}"`,
          );
        }
        return;
      }
      case "path":
        if (v.includes("{*}") || v.includes("{**}")) {
          this.unsupported(
            path,
            `path templates such as "{*}" are not supported yet by zmesh; use "/prefix*" or "*suffix", or list the paths`,
          );
        } else if (!v.startsWith("/") && !v.startsWith("*")) {
          this.invalid(path, `"${v}" never matches because request paths start with "/"; write "/${v}"`);
        } else if (v.includes("?") || v.includes("#")) {
          this.invalid(
            path,
            `"${v}" never matches because paths are matched without the query; remove the part from "?"`,
          );
        }
        return;
      default:
        return;
    }
  }

  /** A non-empty list of non-empty strings; undefined (with issues) otherwise. */
  list(v: unknown, path: string, kind: ValueKind): string[] | undefined {
    if (!Array.isArray(v)) {
      this.invalid(path, `must be a list of strings, e.g. ${EXAMPLE[kind]}, not ${describe(v)}`);
      return undefined;
    }
    if (v.length === 0) {
      this.invalid(
        path,
        "is an empty list, which Istio reads as absent (matches anything); list at least one value or remove the field",
      );
      return undefined;
    }
    const out: string[] = [];
    let ok = true;
    v.forEach((e: unknown, i) => {
      const p = `${path}[${i}]`;
      if (typeof e !== "string") {
        ok = false;
        if (kind === "port" && typeof e === "number")
          this.invalid(p, `must be a string of digits; quote it: "${e}"`);
        else this.invalid(p, `must be a string, not ${describe(e)}`);
      } else if (e === "") {
        ok = false;
        this.invalid(p, "must not be an empty string; write a value or remove it");
      } else {
        this.value(e, p, kind);
        out.push(e);
      }
    });
    return ok ? out : undefined;
  }
}

export function readSelector(c: Checker, v: unknown, path: string): WorkloadSelector | undefined {
  if (!isObj(v)) {
    c.invalid(path, `must be a map with matchLabels, e.g. {matchLabels: {app: orders}}, not ${describe(v)}`);
    return undefined;
  }
  c.fields(v, path, ["matchLabels"], EMPTY);
  if (!has(v, "matchLabels")) return {};
  const ml = v["matchLabels"];
  const mlPath = `${path}.matchLabels`;
  if (!isObj(ml)) {
    c.invalid(mlPath, `must be a map of label names to values, e.g. {app: orders}, not ${describe(ml)}`);
    return undefined;
  }
  const labels: Record<string, string> = {};
  for (const [k, val] of Object.entries(ml)) {
    if (k === "") c.invalid(mlPath, "has an empty label name; name the label, e.g. app");
    else if (typeof val !== "string") {
      c.invalid(child(mlPath, k), `must be a string; quote it: "${String(val)}"`);
    } else labels[k] = val;
  }
  return { matchLabels: labels };
}

function readAction(c: Checker, v: unknown, path: string): Action | undefined {
  if (typeof v !== "string") {
    c.invalid(path, `must be one of ALLOW, DENY or AUDIT, not ${describe(v)}`);
  } else if (v === "CUSTOM") {
    c.unsupported(
      path,
      "action CUSTOM is not supported yet by zmesh (external authorization is not implemented); use ALLOW, DENY or AUDIT",
    );
  } else if (ACTIONS.includes(v)) {
    return v as Action;
  } else if (ACTIONS.includes(v.toUpperCase())) {
    c.invalid(path, `action "${v}" must be written in upper case: "${v.toUpperCase()}"`);
  } else {
    c.invalid(path, `action "${v}" is not one of ALLOW, DENY or AUDIT`);
  }
  return undefined;
}

/** Reads the value-list fields of a source or operation; returns the object and whether any field was set. */
function readMatchFields(
  c: Checker,
  v: Obj,
  path: string,
  fields: Record<string, ValueKind>,
  unsupported: Record<string, string>,
): { out: Record<string, string[]>; any: boolean } {
  c.fields(v, path, Object.keys(fields), unsupported);
  const out: Record<string, string[]> = {};
  let any = false;
  for (const [name, kind] of Object.entries(fields)) {
    if (!has(v, name)) continue;
    any = true;
    const list = c.list(v[name], `${path}.${name}`, kind);
    if (list) out[name] = list;
  }
  // Unknown and unsupported fields are reported on their own; they still count as "some field".
  for (const name of Object.keys(v)) if (has(v, name)) any = true;
  return { out, any };
}

function readEntries<T>(
  c: Checker,
  v: unknown,
  path: string,
  field: "from" | "to",
  inner: "source" | "operation",
  read: (o: Obj, p: string) => T | undefined,
): T[] | undefined {
  const what = field === "from" ? "source" : "operation";
  if (!Array.isArray(v)) {
    c.invalid(path, `must be a list of {${inner}: ...} entries, not ${describe(v)}`);
    return undefined;
  }
  if (v.length === 0) {
    c.invalid(path, `is an empty list; list at least one ${what}, or remove "${field}" to match any ${what}`);
    return undefined;
  }
  const out: T[] = [];
  v.forEach((e: unknown, i) => {
    const p = `${path}[${i}]`;
    if (!isObj(e)) {
      c.invalid(p, `must be a map with "${inner}", not ${describe(e)}`);
      return;
    }
    c.fields(e, p, [inner], EMPTY);
    const ip = `${p}.${inner}`;
    if (!has(e, inner)) {
      c.invalid(ip, `is required in each "${field}" entry; give it at least one field`);
      return;
    }
    const body = e[inner];
    if (!isObj(body)) {
      c.invalid(ip, `must be a map of fields, not ${describe(body)}`);
      return;
    }
    const r = read(body, ip);
    if (r !== undefined) out.push(r);
  });
  return out;
}

function readSource(c: Checker, v: Obj, path: string): Source | undefined {
  const { out, any } = readMatchFields(c, v, path, SOURCE_FIELDS, EMPTY);
  if (!any) {
    c.invalid(
      path,
      "has no fields, so it would match any source; add one such as principals, or remove this entry",
    );
  }
  return out as Source;
}

function readOperation(c: Checker, v: Obj, path: string): Operation | undefined {
  const { out, any } = readMatchFields(c, v, path, OPERATION_FIELDS, EMPTY);
  if (!any) {
    c.invalid(
      path,
      "has no fields, so it would match any request; add one such as paths, or remove this entry",
    );
  }
  return out as Operation;
}

/** The value kind of a condition key, or undefined (with an issue) when the key is not usable. */
function conditionKind(c: Checker, key: string, path: string): ValueKind | undefined {
  switch (key) {
    case "source.ip":
      return "ip";
    case "source.namespace":
      return "namespace";
    case "source.principal":
      return "principal";
    case "destination.port":
      return "port";
    case "remote.ip":
    case "destination.ip":
      return "ip";
    case "connection.sni":
    case "request.auth.audiences":
    case "request.auth.presenter":
      return "value";
    case "request.auth.principal":
      return "requestPrincipal";
  }
  if (key.startsWith("request.auth.")) {
    if (CLAIM_KEY.test(key)) return "value";
    c.invalid(
      path,
      key.startsWith("request.auth.claims")
        ? `write a claim condition as request.auth.claims[NAME] or, nested, request.auth.claims[NAME][FIELD], not "${key}"`
        : `unknown condition key "${key}"; the request.auth keys are request.auth.principal, request.auth.audiences, request.auth.presenter and request.auth.claims[NAME]`,
    );
    return undefined;
  }
  if (key.startsWith("experimental.")) {
    c.unsupported(path, `key "${key}" is not supported by zmesh (it reads Envoy filter metadata); remove it`);
    return undefined;
  }
  const m = /^request\.headers\[(.*)\]$/.exec(key);
  if (m) {
    if (!HEADER_NAME.test(m[1]!)) {
      c.invalid(path, `"${m[1]}" is not a valid HTTP header name; write e.g. request.headers[x-user]`);
      return undefined;
    }
    return "header";
  }
  if (key.startsWith("request.headers")) {
    c.invalid(
      path,
      `write a header condition as request.headers[NAME], e.g. request.headers[x-user], not "${key}"`,
    );
    return undefined;
  }
  c.invalid(path, `unknown condition key "${key}"; the keys supported are ${CONDITION_KEYS}`);
  return undefined;
}

function readCondition(c: Checker, v: unknown, path: string): Condition | undefined {
  if (!isObj(v)) {
    c.invalid(path, `must be a map with key and values or notValues, not ${describe(v)}`);
    return undefined;
  }
  c.fields(v, path, ["key", "values", "notValues"], EMPTY);
  const key = v["key"];
  let kind: ValueKind | undefined;
  if (!has(v, "key"))
    c.invalid(`${path}.key`, "is required, e.g. request.headers[x-user] or source.namespace");
  else if (typeof key !== "string") c.invalid(`${path}.key`, `must be a string, not ${describe(key)}`);
  else kind = conditionKind(c, key, `${path}.key`);
  const hasValues = has(v, "values");
  const hasNot = has(v, "notValues");
  // A misspelt "values" is already reported as an unknown field; do not report it twice.
  const misspelt = Object.keys(v).some((k) => k !== "key" && k !== "values" && k !== "notValues");
  if (!hasValues && !hasNot && !misspelt) {
    c.invalid(path, "needs values or notValues (or both); a condition without them cannot match anything");
  }
  const out: Condition = { key: typeof key === "string" ? key : "" };
  if (hasValues) {
    const l = c.list(v["values"], `${path}.values`, kind ?? "header");
    if (l) out.values = l;
  }
  if (hasNot) {
    const l = c.list(v["notValues"], `${path}.notValues`, kind ?? "header");
    if (l) out.notValues = l;
  }
  return out;
}

function readRule(c: Checker, v: unknown, path: string): Rule | undefined {
  if (!isObj(v)) {
    c.invalid(
      path,
      `must be a map with from, to and/or when (write {} to match every request), not ${describe(v)}`,
    );
    return undefined;
  }
  c.fields(v, path, ["from", "to", "when"], EMPTY);
  const out: Rule = {};
  if (has(v, "from")) {
    const from = readEntries(c, v["from"], `${path}.from`, "from", "source", (o, p) => readSource(c, o, p));
    if (from) out.from = from.map((source) => ({ source }));
  }
  if (has(v, "to")) {
    const to = readEntries(c, v["to"], `${path}.to`, "to", "operation", (o, p) => readOperation(c, o, p));
    if (to) out.to = to.map((operation) => ({ operation }));
  }
  if (has(v, "when")) {
    const when = v["when"];
    if (!Array.isArray(when)) {
      c.invalid(
        `${path}.when`,
        `must be a list of conditions, e.g. [{key: source.namespace, values: [shop]}], not ${describe(when)}`,
      );
    } else if (when.length > 0) {
      const conds: Condition[] = [];
      when.forEach((w: unknown, i) => {
        const cond = readCondition(c, w, `${path}.when[${i}]`);
        if (cond) conds.push(cond);
      });
      out.when = conds;
    }
  }
  return out;
}

/**
 * Validates an untrusted AuthorizationPolicy spec. Returns the typed spec (only the known fields,
 * copied) when there is no issue; otherwise every issue found. A missing spec (undefined or null)
 * is the empty spec: ALLOW with no rules, i.e. allow nothing.
 */
export function validateAuthorizationPolicySpec(spec: unknown): {
  value?: AuthorizationPolicySpec;
  issues: Issue[];
} {
  const c = new Checker();
  if (spec === undefined || spec === null) return { value: {}, issues: c.issues };
  if (!isObj(spec)) {
    c.invalid("spec", `must be a map with selector, action and rules, not ${describe(spec)}`);
    return { issues: c.issues };
  }
  c.fields(spec, "spec", ["selector", "action", "rules"], SPEC_UNSUPPORTED);
  const value: AuthorizationPolicySpec = {};
  if (has(spec, "selector")) {
    const sel = readSelector(c, spec["selector"], "spec.selector");
    if (sel) value.selector = sel;
  }
  if (has(spec, "action")) {
    const action = readAction(c, spec["action"], "spec.action");
    if (action) value.action = action;
  }
  if (has(spec, "rules")) {
    const rules = spec["rules"];
    if (!Array.isArray(rules)) {
      c.invalid(
        "spec.rules",
        `must be a list of rules (write [{}] to match every request), not ${describe(rules)}`,
      );
    } else {
      const out: Rule[] = [];
      rules.forEach((r: unknown, i) => {
        const rule = readRule(c, r, `spec.rules[${i}]`);
        if (rule) out.push(rule);
      });
      value.rules = out;
    }
  }
  return c.issues.length === 0 ? { value, issues: c.issues } : { issues: c.issues };
}

/** "spec.rules[0].to[0].operation.methods[1]: must be a string" — the usual way to print one issue. */
export function formatIssue(issue: Issue): string {
  return `${issue.path}: ${issue.message}`;
}
