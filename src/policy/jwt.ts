// Istio RequestAuthentication: validation of a spec from untrusted YAML, and verification of the
// JWT a request carries against the rules that apply to the workload (jose, keys inline, no I/O).
// A missing token is fine (no request principal); a present but invalid one is refused (401).

import type { JWTPayload, JWTVerifyGetKey, JWTVerifyOptions } from "jose";
import { ZmeshError } from "../errors/index.js";
import type {
  ClaimToHeader,
  Issue,
  JwtAuthResult,
  JwtHeaderLocation,
  JwtRule,
  RequestAuthenticationSpec,
  RequestAuthRef,
} from "./types.js";
import { Checker, describe, EMPTY, formatIssue, has, isObj, readSelector } from "./validate.js";

/** Asymmetric signatures only: "none" and HMAC (HS*) are never accepted. */
export const JWT_ALGORITHMS: readonly string[] = [
  "RS256",
  "RS384",
  "RS512",
  "PS256",
  "PS384",
  "PS512",
  "ES256",
  "ES384",
  "ES512",
  "EdDSA",
  "Ed25519",
];

/** Envoy's default clock skew for exp and nbf. */
const CLOCK_SKEW_SECONDS = 60;

const HEADER_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** Headers the proxy manages; a claim must not overwrite them. */
const RESERVED_HEADERS = new Set([
  "host",
  "content-length",
  "transfer-encoding",
  "connection",
  "keep-alive",
  "proxy-connection",
  "te",
  "trailer",
  "upgrade",
  "x-forwarded-client-cert",
  "x-request-id",
]);

const NO_EGRESS =
  "the mesh has no egress, so zmesh cannot fetch keys; put the issuer's public keys inline in jwks (a JSON Web Key Set as a string)";

const SPEC_UNSUPPORTED: Record<string, string> = {
  targetRef:
    "not supported yet by zmesh (policies attach to workloads through selector); use selector.matchLabels instead",
  targetRefs:
    "not supported yet by zmesh (policies attach to workloads through selector); use selector.matchLabels instead",
};

const RULE_FIELDS = [
  "issuer",
  "audiences",
  "jwks",
  "fromHeaders",
  "fromParams",
  "forwardOriginalToken",
  "outputClaimToHeaders",
];

const RULE_UNSUPPORTED: Record<string, string> = {
  jwksUri: `not supported by zmesh: ${NO_EGRESS}`,
  jwks_uri: `not supported by zmesh: ${NO_EGRESS}`,
  timeout: "not supported by zmesh (it bounds fetching jwksUri, which zmesh does not do); remove it",
  fromCookies: "not supported yet by zmesh; send the token in a header (fromHeaders) instead",
  outputPayloadToHeader:
    "not supported yet by zmesh; copy the claims you need with outputClaimToHeaders instead",
};

const KEY_PRIVATE_MEMBERS = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

function readJwks(c: Checker, v: unknown, path: string): string | undefined {
  if (typeof v !== "string") {
    c.invalid(
      path,
      `must be a JSON Web Key Set as a string, e.g. '{"keys": [{"kty": "EC", ...}]}', not ${describe(v)}`,
    );
    return undefined;
  }
  let set: unknown;
  try {
    set = JSON.parse(v);
  } catch (e) {
    c.invalid(path, `is not valid JSON (${(e as Error).message})`);
    return undefined;
  }
  if (!isObj(set) || !Array.isArray(set["keys"]) || set["keys"].length === 0) {
    c.invalid(path, 'must be a JSON Web Key Set: {"keys": [...]} with at least one public key');
    return undefined;
  }
  let ok = true;
  set["keys"].forEach((k: unknown, i) => {
    const kp = `${path}.keys[${i}]`;
    const bad = (m: string) => {
      ok = false;
      c.invalid(kp, m);
    };
    if (!isObj(k)) return bad(`must be a JSON Web Key (a map), not ${describe(k)}`);
    const kty = k["kty"];
    if (kty === "oct") {
      return bad(
        "is a symmetric key (kty oct), which zmesh refuses: whoever can verify with it can also sign; use RSA, EC or OKP public keys",
      );
    }
    if (kty !== "RSA" && kty !== "EC" && kty !== "OKP") {
      return bad(`has kty ${describe(kty)}; zmesh reads RSA, EC and OKP public keys`);
    }
    const priv = KEY_PRIVATE_MEMBERS.filter((m) => Object.hasOwn(k, m));
    if (priv.length > 0) {
      return bad(`contains private key material (${priv.join(", ")}); publish only the public key`);
    }
    const need = kty === "RSA" ? ["n", "e"] : kty === "EC" ? ["crv", "x", "y"] : ["crv", "x"];
    const missing = need.filter((m) => typeof k[m] !== "string" || k[m] === "");
    if (missing.length > 0) return bad(`is a ${kty} key without ${missing.join(", ")}`);
    if (k["alg"] !== undefined && (typeof k["alg"] !== "string" || !JWT_ALGORITHMS.includes(k["alg"]))) {
      return bad(`has alg ${describe(k["alg"])}; zmesh accepts ${JWT_ALGORITHMS.join(", ")}`);
    }
  });
  return ok ? v : undefined;
}

function readHeaderName(c: Checker, v: unknown, path: string, output: boolean): string | undefined {
  if (typeof v !== "string" || v === "") {
    c.invalid(path, `must be an HTTP header name, e.g. x-jwt-assertion, not ${describe(v)}`);
    return undefined;
  }
  if (!HEADER_NAME.test(v)) {
    c.invalid(path, `"${v}" is not a valid HTTP header name`);
    return undefined;
  }
  if (output && RESERVED_HEADERS.has(v.toLowerCase())) {
    c.invalid(path, `header "${v}" is managed by the proxy; choose another name, e.g. x-jwt-sub`);
    return undefined;
  }
  return v;
}

function readList<T>(
  c: Checker,
  v: unknown,
  path: string,
  example: string,
  read: (e: unknown, p: string) => T | undefined,
): T[] | undefined {
  if (!Array.isArray(v)) {
    c.invalid(path, `must be a list, e.g. ${example}, not ${describe(v)}`);
    return undefined;
  }
  if (v.length === 0) {
    c.invalid(path, "is an empty list; list at least one entry or remove the field");
    return undefined;
  }
  const out: T[] = [];
  let ok = true;
  v.forEach((e: unknown, i) => {
    const r = read(e, `${path}[${i}]`);
    if (r === undefined) ok = false;
    else out.push(r);
  });
  return ok ? out : undefined;
}

function readRule(c: Checker, v: unknown, path: string): JwtRule | undefined {
  if (!isObj(v)) {
    c.invalid(path, `must be a map with issuer and jwks, not ${describe(v)}`);
    return undefined;
  }
  c.fields(v, path, RULE_FIELDS, RULE_UNSUPPORTED);
  const rule: JwtRule = { issuer: "" };
  const iss = v["issuer"];
  if (!has(v, "issuer")) c.invalid(`${path}.issuer`, "is required, e.g. https://issuer.example");
  else if (typeof iss !== "string" || iss === "")
    c.invalid(`${path}.issuer`, `must be a non-empty string, not ${describe(iss)}`);
  else rule.issuer = iss;
  if (has(v, "audiences")) {
    const l = c.list(v["audiences"], `${path}.audiences`, "value");
    if (l) rule.audiences = l;
  }
  if (has(v, "jwks")) {
    const j = readJwks(c, v["jwks"], `${path}.jwks`);
    if (j !== undefined) rule.jwks = j;
  } else if (!has(v, "jwksUri") && !has(v, "jwks_uri")) {
    // Istio would discover the keys from the issuer (OpenID discovery): that needs egress too.
    c.unsupported(`${path}.jwks`, `is required by zmesh: ${NO_EGRESS}`);
  }
  if (has(v, "fromHeaders")) {
    const l = readList(
      c,
      v["fromHeaders"],
      `${path}.fromHeaders`,
      "[{name: x-jwt, prefix: 'Bearer '}]",
      (e, p) => {
        if (!isObj(e)) {
          c.invalid(p, `must be a map {name: HEADER, prefix?: TEXT}, not ${describe(e)}`);
          return undefined;
        }
        c.fields(e, p, ["name", "prefix"], EMPTY);
        const name = readHeaderName(c, e["name"], `${p}.name`, false);
        if (name === undefined) return undefined;
        const loc: JwtHeaderLocation = { name };
        if (has(e, "prefix")) {
          if (typeof e["prefix"] !== "string") {
            c.invalid(`${p}.prefix`, `must be a string, e.g. "Bearer ", not ${describe(e["prefix"])}`);
            return undefined;
          }
          if (e["prefix"] !== "") loc.prefix = e["prefix"];
        }
        return loc;
      },
    );
    if (l) rule.fromHeaders = l;
  }
  if (has(v, "fromParams")) {
    const l = c.list(v["fromParams"], `${path}.fromParams`, "value");
    if (l) rule.fromParams = l;
  }
  if (has(v, "forwardOriginalToken")) {
    const f = v["forwardOriginalToken"];
    if (typeof f !== "boolean")
      c.invalid(`${path}.forwardOriginalToken`, `must be true or false, not ${describe(f)}`);
    else rule.forwardOriginalToken = f;
  }
  if (has(v, "outputClaimToHeaders")) {
    const l = readList(
      c,
      v["outputClaimToHeaders"],
      `${path}.outputClaimToHeaders`,
      "[{header: x-jwt-sub, claim: sub}]",
      (e, p): ClaimToHeader | undefined => {
        if (!isObj(e)) {
          c.invalid(p, `must be a map {header: NAME, claim: CLAIM}, not ${describe(e)}`);
          return undefined;
        }
        c.fields(e, p, ["header", "claim"], EMPTY);
        const header = readHeaderName(c, e["header"], `${p}.header`, true);
        const claim = e["claim"];
        if (typeof claim !== "string" || claim === "") {
          c.invalid(`${p}.claim`, `must be the name of a claim, e.g. sub, not ${describe(claim)}`);
          return undefined;
        }
        return header === undefined ? undefined : { header, claim };
      },
    );
    if (l) rule.outputClaimToHeaders = l;
  }
  return rule;
}

/**
 * Validates an untrusted RequestAuthentication spec. Returns the typed spec (known fields, copied)
 * when there is no issue; otherwise every issue found. A missing spec is the empty spec (no rules).
 */
export function validateRequestAuthenticationSpec(spec: unknown): {
  value?: RequestAuthenticationSpec;
  issues: Issue[];
} {
  const c = new Checker();
  if (spec === undefined || spec === null) return { value: {}, issues: c.issues };
  if (!isObj(spec)) {
    c.invalid("spec", `must be a map with selector and jwtRules, not ${describe(spec)}`);
    return { issues: c.issues };
  }
  c.fields(spec, "spec", ["selector", "jwtRules"], SPEC_UNSUPPORTED);
  const value: RequestAuthenticationSpec = {};
  if (has(spec, "selector")) {
    const sel = readSelector(c, spec["selector"], "spec.selector");
    if (sel) value.selector = sel;
  }
  if (has(spec, "jwtRules")) {
    const rules = spec["jwtRules"];
    if (!Array.isArray(rules)) {
      c.invalid(
        "spec.jwtRules",
        `must be a list of rules, e.g. [{issuer: ..., jwks: ...}], not ${describe(rules)}`,
      );
    } else {
      const out: JwtRule[] = [];
      rules.forEach((r: unknown, i) => {
        const rule = readRule(c, r, `spec.jwtRules[${i}]`);
        if (rule) out.push(rule);
      });
      value.jwtRules = out;
    }
  }
  return c.issues.length === 0 ? { value, issues: c.issues } : { issues: c.issues };
}

// ---- verification ----

interface Location {
  /** "h:<name>\0<prefix>" or "q:<param>": identifies where a token was found. */
  key: string;
  header?: string;
  prefix?: string;
  param?: string;
  where: string;
}

interface CompiledJwtRule {
  issuer: string;
  audiences: string[] | undefined;
  keys: JWTVerifyGetKey;
  locations: Location[];
  forward: boolean;
  outputs: { header: string; claim: string }[];
}

const DEFAULT_LOCATION: Location = {
  key: "h:authorization\0bearer ",
  header: "authorization",
  prefix: "Bearer ",
  where: 'header "authorization" (Bearer)',
};

const cache = new WeakMap<RequestAuthenticationSpec, CompiledJwtRule[]>();

type Jose = typeof import("jose");
let josePromise: Promise<Jose> | undefined;

/** jose is loaded on the first token to check: a proxy without RequestAuthentication never pays for it. */
function loadJose(): Promise<Jose> {
  josePromise ??= import("jose");
  return josePromise;
}

/**
 * Loads the JWT library now. A proxy that drops privileges calls this first: a lazy load after the
 * drop reads node_modules as uid 1337, which a root-only checkout refuses (every token would fail).
 */
export async function preloadJwt(): Promise<void> {
  await loadJose();
}

function headerLocation(h: JwtHeaderLocation): Location {
  const name = h.name.toLowerCase();
  const prefix = h.prefix ?? "";
  const loc: Location = {
    key: `h:${name}\0${prefix.toLowerCase()}`,
    header: name,
    where: prefix ? `header "${name}" (${prefix.trim()})` : `header "${name}"`,
  };
  if (prefix) loc.prefix = prefix;
  return loc;
}

function compileSpec(ref: RequestAuthRef, jose: Jose): CompiledJwtRule[] {
  const hit = cache.get(ref.spec);
  if (hit) return hit;
  const r = validateRequestAuthenticationSpec(ref.spec);
  const first = r.issues[0];
  if (first !== undefined || r.value === undefined) {
    const more = r.issues.length > 1 ? ` (and ${r.issues.length - 1} more)` : "";
    throw new ZmeshError(
      first?.code ?? "ZMESH_CONFIG_INVALID",
      `RequestAuthentication ${ref.namespace}/${ref.name}: ${first ? formatIssue(first) : "invalid spec"}${more}`,
    );
  }
  const out = (r.value.jwtRules ?? []).map((rule): CompiledJwtRule => {
    // Istio's default location is the Authorization header (Envoy also reads ?access_token=);
    // zmesh reads only the header by default: tokens in URLs end up in logs.
    const locations: Location[] =
      rule.fromHeaders === undefined && rule.fromParams === undefined
        ? [DEFAULT_LOCATION]
        : [
            ...(rule.fromHeaders ?? []).map(headerLocation),
            ...(rule.fromParams ?? []).map((p) => ({
              key: `q:${p}`,
              param: p,
              where: `query parameter "${p}"`,
            })),
          ];
    return {
      issuer: rule.issuer,
      audiences: rule.audiences,
      keys: jose.createLocalJWKSet(JSON.parse(rule.jwks!)),
      locations,
      forward: rule.forwardOriginalToken === true,
      outputs: (rule.outputClaimToHeaders ?? []).map((o) => ({
        header: o.header.toLowerCase(),
        claim: o.claim,
      })),
    };
  });
  cache.set(ref.spec, out);
  return out;
}

function startsWithIgnoreCase(s: string, p: string): boolean {
  return s.length >= p.length && s.slice(0, p.length).toLowerCase() === p.toLowerCase();
}

interface Found {
  token: string;
  location: Location;
}

function extract(
  loc: Location,
  headers: Record<string, string | undefined>,
  params: () => URLSearchParams,
): string[] {
  if (loc.header !== undefined) {
    const v = Object.hasOwn(headers, loc.header) ? headers[loc.header] : undefined;
    if (typeof v !== "string") return [];
    if (loc.prefix !== undefined && !startsWithIgnoreCase(v, loc.prefix)) return [];
    const t = v.slice(loc.prefix?.length ?? 0).trim();
    return t === "" ? [] : [t];
  }
  return params()
    .getAll(loc.param!)
    .map((t) => t.trim())
    .filter((t) => t !== "");
}

function claimText(v: unknown): string | undefined {
  let s: string;
  if (typeof v === "string") s = v;
  else if (typeof v === "number" || typeof v === "boolean") s = String(v);
  else return undefined;
  // A header value cannot carry control characters (CR/LF would split the request).
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if ((c < 0x20 && c !== 0x09) || c === 0x7f) return undefined;
  }
  return s;
}

function failureReason(e: unknown, rule: CompiledJwtRule): string {
  const code = (e as { code?: string }).code;
  const claim = (e as { claim?: string }).claim;
  switch (code) {
    case "ERR_JWT_EXPIRED":
      return "the JWT has expired";
    case "ERR_JWT_CLAIM_VALIDATION_FAILED":
      if (claim === "nbf") return "the JWT is not valid yet (nbf is in the future)";
      if (claim === "aud")
        return `the JWT's audience is not one of ${rule.audiences?.join(", ") ?? "the accepted audiences"}`;
      if (claim === "iat") return "the JWT's iat claim is invalid";
      return `the JWT's ${claim ?? "claims"} claim is invalid (${(e as Error).message})`;
    case "ERR_JWS_SIGNATURE_VERIFICATION_FAILED":
    case "ERR_JWKS_NO_MATCHING_KEY":
      return `the JWT's signature does not verify with the keys of issuer ${rule.issuer}`;
    case "ERR_JOSE_ALG_NOT_ALLOWED":
    case "ERR_JOSE_NOT_SUPPORTED":
      return `the JWT's algorithm is not accepted (zmesh accepts ${JWT_ALGORITHMS.join(", ")})`;
    default:
      return `the JWT is malformed (${(e as Error).message})`;
  }
}

async function verifyWith(jose: Jose, token: string, rule: CompiledJwtRule, now: Date): Promise<JWTPayload> {
  const opts: JWTVerifyOptions = {
    issuer: rule.issuer,
    algorithms: JWT_ALGORITHMS as string[],
    currentDate: now,
    clockTolerance: CLOCK_SKEW_SECONDS,
  };
  if (rule.audiences !== undefined) opts.audience = rule.audiences;
  try {
    return (await jose.jwtVerify(token, rule.keys, opts)).payload;
  } catch (e) {
    // Several keys without kid match: jose hands them over one by one.
    if ((e as { code?: string }).code !== "ERR_JWKS_MULTIPLE_MATCHING_KEYS") throw e;
    let last: unknown = e;
    for await (const key of e as AsyncIterable<CryptoKey>) {
      try {
        return (await jose.jwtVerify(token, key, opts)).payload;
      } catch (e2) {
        last = e2;
      }
    }
    throw last;
  }
}

/**
 * Authenticates the JWT of a request against the RequestAuthentication rules that apply to the
 * workload (already selected, see selectPolicies). Each rule reads the token from its fromHeaders
 * and fromParams, or by default from `Authorization: Bearer`; a token elsewhere is not looked at.
 * No token: ok without principal. A token found: it must be one token, signed with an asymmetric
 * algorithm by a key of a rule whose issuer it names, within exp/nbf (60 s skew) and with one of
 * the rule's audiences (any when the rule lists none); otherwise not ok, and the proxy answers 401.
 *
 * Unlike Envoy, a header named in any outputClaimToHeaders is always removed unless zmesh sets it
 * from a verified claim, so a caller cannot forge it. A token read from a query parameter stays in
 * the query even without forwardOriginalToken (as in Envoy).
 */
export async function authenticateJwt(
  rules: readonly RequestAuthRef[],
  request: { headers: Record<string, string | undefined>; query: string },
  now: Date,
): Promise<JwtAuthResult> {
  if (rules.length === 0) return { ok: true, headersToSet: {}, headersToRemove: [] };
  const jose = await loadJose();
  const compiled: { policy: string; rule: CompiledJwtRule }[] = [];
  for (const ref of rules) {
    for (const rule of compileSpec(ref, jose))
      compiled.push({ policy: `${ref.namespace}/${ref.name}`, rule });
  }
  const outputHeaders = new Set<string>();
  for (const c of compiled) for (const o of c.rule.outputs) outputHeaders.add(o.header);

  let parsed: URLSearchParams | undefined;
  const params = () => {
    parsed ??= new URLSearchParams(request.query);
    return parsed;
  };
  const found: Found[] = [];
  const looked = new Set<string>();
  for (const c of compiled) {
    for (const loc of c.rule.locations) {
      if (looked.has(loc.key)) continue;
      looked.add(loc.key);
      for (const token of extract(loc, request.headers, params)) found.push({ token, location: loc });
    }
  }
  if (found.length === 0) {
    return { ok: true, headersToSet: {}, headersToRemove: [...outputHeaders] };
  }
  const token = found[0]!.token;
  const other = found.find((f) => f.token !== token);
  if (other !== undefined) {
    return {
      ok: false,
      reason: `the request carries more than one JWT (in ${found[0]!.location.where} and ${other.location.where}); send one`,
    };
  }
  let alg: unknown;
  let iss: unknown;
  try {
    alg = jose.decodeProtectedHeader(token).alg;
    iss = jose.decodeJwt(token).iss;
  } catch (e) {
    return { ok: false, reason: `the JWT is malformed (${(e as Error).message})` };
  }
  if (typeof alg !== "string" || !JWT_ALGORITHMS.includes(alg)) {
    return {
      ok: false,
      reason: `the JWT's algorithm ${JSON.stringify(alg)} is not accepted (zmesh accepts ${JWT_ALGORITHMS.join(", ")})`,
    };
  }
  if (typeof iss !== "string") return { ok: false, reason: "the JWT has no issuer (iss claim)" };
  const keys = new Set(found.map((f) => f.location.key));
  const candidates = compiled.filter(
    (c) => c.rule.issuer === iss && c.rule.locations.some((l) => keys.has(l.key)),
  );
  if (candidates.length === 0) {
    const where = found[0]!.location.where;
    const elsewhere = compiled.find((c) => c.rule.issuer === iss);
    return elsewhere !== undefined
      ? {
          ok: false,
          reason: `a JWT of issuer ${iss} was found in ${where}, where ${elsewhere.policy} does not accept that issuer's tokens`,
          policy: elsewhere.policy,
        }
      : { ok: false, reason: `the JWT's issuer ${iss} is not configured for this workload` };
  }
  let failure: { reason: string; policy: string } | undefined;
  for (const c of candidates) {
    let payload: JWTPayload;
    try {
      payload = await verifyWith(jose, token, c.rule, now);
    } catch (e) {
      failure ??= { reason: failureReason(e, c.rule), policy: c.policy };
      continue;
    }
    const headersToSet: Record<string, string> = {};
    for (const o of c.rule.outputs) {
      const text = Object.hasOwn(payload, o.claim) ? claimText(payload[o.claim]) : undefined;
      if (text !== undefined) headersToSet[o.header] = text;
    }
    const headersToRemove: string[] = [];
    if (!c.rule.forward) {
      for (const f of found) {
        const h = f.location.header;
        if (
          h !== undefined &&
          !headersToRemove.includes(h) &&
          c.rule.locations.some((l) => l.key === f.location.key)
        )
          headersToRemove.push(h);
      }
    }
    for (const h of outputHeaders) {
      if (!Object.hasOwn(headersToSet, h) && !headersToRemove.includes(h)) headersToRemove.push(h);
    }
    const result: JwtAuthResult = {
      ok: true,
      claims: payload,
      policy: c.policy,
      headersToSet,
      headersToRemove,
    };
    if (typeof payload.sub === "string") result.principal = `${iss}/${payload.sub}`;
    const aud = payload.aud;
    if (typeof aud === "string") result.audiences = [aud];
    else if (Array.isArray(aud)) result.audiences = aud.filter((a): a is string => typeof a === "string");
    if (typeof payload["azp"] === "string") result.presenter = payload["azp"];
    return result;
  }
  return { ok: false, ...failure! };
}
