// Evaluation order, as in Istio: (1) if any DENY policy matches, deny; (2) otherwise, if the
// workload has no ALLOW policy, allow; (3) otherwise allow only if some ALLOW policy matches.
// AUDIT policies never change the decision (they are reported in `audits`), and dry-run policies
// are evaluated but not enforced (reported in `dryRun`). A plain TCP connection has no HTTP fields:
// an ALLOW rule using one never matches it, a DENY or AUDIT rule is matched without them.
// JWT attributes (requestPrincipals, request.auth.*) are HTTP-only; remote.ip, destination.ip and
// connection.sni are connection attributes.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { isZmeshError } from "../errors/index.js";
import { compilePolicies, evaluate, tcpWarnings } from "./compile.js";
import { normalizePath } from "./path.js";
import type {
  AuthorizationPolicySpec,
  Decision,
  Operation,
  PolicyRef,
  RequestAttributes,
  Source,
} from "./types.js";

function pol(
  name: string,
  spec: AuthorizationPolicySpec,
  o: { namespace?: string; dryRun?: boolean } = {},
): PolicyRef {
  return { namespace: o.namespace ?? "shop", name, spec, ...(o.dryRun ? { dryRun: true } : {}) };
}

interface ReqOpts {
  principal?: string | null;
  namespace?: string | null;
  sourceIp?: string | null;
  port?: number;
  tcp?: boolean;
  method?: string;
  path?: string;
  host?: string;
  headers?: Record<string, string | undefined>;
  remoteIp?: string | null;
  destinationIp?: string | null;
  sni?: string;
  auth?: RequestAttributes["auth"];
}

/**
 * A request from shop/frontend (198.18.0.5) to 198.18.0.9 port 8080, GET / on catalog.shop, without
 * JWT, unless overridden.
 */
function req(o: ReqOpts = {}): RequestAttributes {
  const r: RequestAttributes = { destinationPort: o.port ?? 8080 };
  const principal = o.principal === undefined ? "cluster.local/ns/shop/sa/frontend" : o.principal;
  const namespace = o.namespace === undefined ? (principal === null ? null : "shop") : o.namespace;
  const sourceIp = o.sourceIp === undefined ? "198.18.0.5" : o.sourceIp;
  if (principal !== null) r.principal = principal;
  if (namespace !== null) r.namespace = namespace;
  if (sourceIp !== null) r.sourceIp = sourceIp;
  const remoteIp = o.remoteIp === undefined ? sourceIp : o.remoteIp;
  if (remoteIp !== null) r.remoteIp = remoteIp;
  const destinationIp = o.destinationIp === undefined ? "198.18.0.9" : o.destinationIp;
  if (destinationIp !== null) r.destinationIp = destinationIp;
  if (o.sni !== undefined) r.sni = o.sni;
  if (o.auth !== undefined) r.auth = o.auth;
  if (!o.tcp) {
    r.http = {
      method: o.method ?? "GET",
      path: o.path ?? "/",
      host: o.host ?? "catalog.shop",
      headers: o.headers ?? {},
    };
  }
  return r;
}

function decide(policies: PolicyRef[], r: RequestAttributes = req()): Decision {
  return evaluate(compilePolicies(policies), r);
}

const allowFrom = (source: Source) => pol("allow", { action: "ALLOW", rules: [{ from: [{ source }] }] });
const allowTo = (operation: Operation) => pol("allow", { action: "ALLOW", rules: [{ to: [{ operation }] }] });

describe("evaluation order and idioms", () => {
  test("no policy: allow", () => {
    assert.deepEqual(decide([]), {
      allowed: true,
      reason: "allowed: no authorization policy applies to this workload",
    });
  });

  test("spec {} is ALLOW with no rules: the workload has an ALLOW policy that matches nothing", () => {
    assert.deepEqual(decide([pol("allow-nothing", {})]), {
      allowed: false,
      reason:
        "denied: no ALLOW policy matched (checked shop/allow-nothing; shop/allow-nothing has no rules, so it allows nothing)",
    });
    assert.equal(decide([pol("allow-nothing", {})], req({ tcp: true })).allowed, false);
  });

  test("ALLOW with rules [{}] allows everything", () => {
    assert.deepEqual(decide([pol("allow-all", { rules: [{}] })]), {
      allowed: true,
      policy: "shop/allow-all",
      action: "ALLOW",
      rule: 0,
      reason: "allowed by shop/allow-all rule 0",
    });
    assert.equal(
      decide([pol("allow-all", { rules: [{}] })], req({ tcp: true, principal: null })).allowed,
      true,
    );
  });

  test("DENY with rules [{}] denies everything, even next to an allow-all", () => {
    const d = decide([pol("allow-all", { rules: [{}] }), pol("deny-all", { action: "DENY", rules: [{}] })]);
    assert.deepEqual(d, {
      allowed: false,
      policy: "shop/deny-all",
      action: "DENY",
      rule: 0,
      reason: "denied by shop/deny-all rule 0",
    });
  });

  test("DENY or AUDIT with no rules matches nothing and does not make an ALLOW policy", () => {
    assert.deepEqual(decide([pol("deny-none", { action: "DENY" })]), {
      allowed: true,
      reason: "allowed: no DENY policy matched and no ALLOW policy applies to this workload",
    });
    assert.deepEqual(decide([pol("audit-none", { action: "AUDIT", rules: [] })]), {
      allowed: true,
      reason: "allowed: no ALLOW policy applies to this workload",
    });
  });

  test("a matching DENY wins over a matching ALLOW", () => {
    const d = decide([
      pol("allow-get", { rules: [{ to: [{ operation: { methods: ["GET"] } }] }] }),
      pol("deny-frontend", {
        action: "DENY",
        rules: [{ from: [{ source: { principals: ["*/sa/frontend"] } }] }],
      }),
    ]);
    assert.equal(d.allowed, false);
    assert.equal(d.policy, "shop/deny-frontend");
  });

  test("with an ALLOW policy, a request it does not match is denied and the reason names what was checked", () => {
    const d = decide([
      pol("payments-allow", { rules: [{ to: [{ operation: { paths: ["/pay"] } }] }] }),
      pol("admin-allow", { rules: [{ to: [{ operation: { paths: ["/admin"] } }] }] }),
    ]);
    assert.deepEqual(d, {
      allowed: false,
      reason: "denied: no ALLOW policy matched (checked shop/admin-allow, shop/payments-allow)",
    });
  });

  test("any matching ALLOW policy allows, and the decision names its rule", () => {
    const d = decide([
      pol("a", { rules: [{ to: [{ operation: { paths: ["/x"] } }] }] }),
      pol("b", {
        rules: [{ to: [{ operation: { paths: ["/y"] } }] }, { to: [{ operation: { paths: ["/"] } }] }],
      }),
    ]);
    assert.deepEqual(d, {
      allowed: true,
      policy: "shop/b",
      action: "ALLOW",
      rule: 1,
      reason: "allowed by shop/b rule 1",
    });
  });

  test("policies are reported in namespace/name order whatever the input order", () => {
    const a = pol("a-deny", { action: "DENY", rules: [{}] });
    const b = pol("b-deny", { action: "DENY", rules: [{}] });
    assert.equal(decide([b, a]).policy, "shop/a-deny");
    assert.equal(decide([a, b]).policy, "shop/a-deny");
  });

  test("an absent action is ALLOW", () => {
    assert.equal(decide([pol("p", { rules: [{ to: [{ operation: { paths: ["/"] } }] }] })]).action, "ALLOW");
  });
});

describe("AUDIT", () => {
  const audit = pol("audit-get", { action: "AUDIT", rules: [{ to: [{ operation: { methods: ["GET"] } }] }] });

  test("a matching AUDIT policy is reported and never changes an allow", () => {
    assert.deepEqual(decide([audit]), {
      allowed: true,
      reason: "allowed: no ALLOW policy applies to this workload",
      audits: ["shop/audit-get"],
    });
  });

  test("a matching AUDIT policy is reported and never changes a deny", () => {
    const d = decide([audit, pol("deny-all", { action: "DENY", rules: [{}] })]);
    assert.equal(d.allowed, false);
    assert.equal(d.policy, "shop/deny-all");
    assert.deepEqual(d.audits, ["shop/audit-get"]);
  });

  test("a non-matching AUDIT policy leaves no audits field", () => {
    const d = decide([audit], req({ method: "POST" }));
    assert.equal(d.allowed, true);
    assert.equal("audits" in d, false);
  });

  test("several AUDIT policies are all reported", () => {
    const d = decide([audit, pol("audit-all", { action: "AUDIT", rules: [{}] })]);
    assert.deepEqual(d.audits, ["shop/audit-all", "shop/audit-get"]);
  });
});

describe("dry-run", () => {
  test("a matching dry-run DENY does not deny and reports wouldAllow false", () => {
    const d = decide([pol("deny-all", { action: "DENY", rules: [{}] }, { dryRun: true })]);
    assert.deepEqual(d, {
      allowed: true,
      reason: "allowed: no authorization policy applies to this workload",
      dryRun: [{ policy: "shop/deny-all", wouldAllow: false }],
    });
  });

  test("a non-matching dry-run DENY reports wouldAllow true", () => {
    const d = decide([
      pol(
        "deny-post",
        { action: "DENY", rules: [{ to: [{ operation: { methods: ["POST"] } }] }] },
        { dryRun: true },
      ),
    ]);
    assert.deepEqual(d.dryRun, [{ policy: "shop/deny-post", wouldAllow: true }]);
  });

  test("a dry-run ALLOW does not give the workload an ALLOW policy", () => {
    const dry = pol(
      "allow-admin",
      { rules: [{ to: [{ operation: { paths: ["/admin"] } }] }] },
      { dryRun: true },
    );
    const d = decide([dry]);
    assert.equal(d.allowed, true);
    assert.deepEqual(d.dryRun, [{ policy: "shop/allow-admin", wouldAllow: false }]);
    assert.deepEqual(decide([dry], req({ path: "/admin" })).dryRun, [
      { policy: "shop/allow-admin", wouldAllow: true },
    ]);
  });

  test("a dry-run policy does not change an enforced decision", () => {
    const d = decide([
      pol("deny-all", { action: "DENY", rules: [{}] }),
      pol("allow-all", { rules: [{}] }, { dryRun: true }),
    ]);
    assert.equal(d.allowed, false);
    assert.equal(d.policy, "shop/deny-all");
    assert.deepEqual(d.dryRun, [{ policy: "shop/allow-all", wouldAllow: true }]);
  });

  test("a dry-run AUDIT is reported as allowing and is not in audits", () => {
    const d = decide([pol("audit-all", { action: "AUDIT", rules: [{}] }, { dryRun: true })]);
    assert.deepEqual(d.dryRun, [{ policy: "shop/audit-all", wouldAllow: true }]);
    assert.equal("audits" in d, false);
  });

  test("without dry-run policies there is no dryRun field", () => {
    assert.equal("dryRun" in decide([pol("allow-all", { rules: [{}] })]), false);
  });
});

describe("rule structure", () => {
  const p = (rule: NonNullable<AuthorizationPolicySpec["rules"]>[number]) => [pol("p", { rules: [rule] })];

  test("from entries OR", () => {
    const ps = p({ from: [{ source: { namespaces: ["billing"] } }, { source: { namespaces: ["shop"] } }] });
    assert.equal(decide(ps).allowed, true);
    assert.equal(decide(ps, req({ namespace: "dev" })).allowed, false);
  });

  test("to entries OR", () => {
    const ps = p({ to: [{ operation: { paths: ["/a"] } }, { operation: { methods: ["POST"] } }] });
    assert.equal(decide(ps, req({ path: "/a" })).allowed, true);
    assert.equal(decide(ps, req({ method: "POST" })).allowed, true);
    assert.equal(decide(ps).allowed, false);
  });

  test("from AND to AND every when condition", () => {
    const ps = p({
      from: [{ source: { namespaces: ["shop"] } }],
      to: [{ operation: { methods: ["GET"] } }],
      when: [
        { key: "request.headers[x-a]", values: ["1"] },
        { key: "destination.port", values: ["8080"] },
      ],
    });
    const good = { headers: { "x-a": "1" } };
    assert.equal(decide(ps, req(good)).allowed, true);
    assert.equal(decide(ps, req({ ...good, namespace: "dev" })).allowed, false);
    assert.equal(decide(ps, req({ ...good, method: "PUT" })).allowed, false);
    assert.equal(decide(ps, req({ headers: { "x-a": "2" } })).allowed, false);
    assert.equal(decide(ps, req({ ...good, port: 9090 })).allowed, false);
  });

  test("fields within one source AND; values within one field OR", () => {
    const ps = p({ from: [{ source: { namespaces: ["shop", "billing"], principals: ["*/sa/frontend"] } }] });
    assert.equal(decide(ps).allowed, true);
    assert.equal(
      decide(ps, req({ principal: "cluster.local/ns/billing/sa/frontend", namespace: "billing" })).allowed,
      true,
    );
    assert.equal(decide(ps, req({ principal: "cluster.local/ns/shop/sa/worker" })).allowed, false);
    assert.equal(
      decide(ps, req({ principal: "cluster.local/ns/dev/sa/frontend", namespace: "dev" })).allowed,
      false,
    );
  });

  test("a field and its not twin together must both hold", () => {
    const ps = p({ to: [{ operation: { paths: ["/api/*"], notPaths: ["/api/admin"] } }] });
    assert.equal(decide(ps, req({ path: "/api/items" })).allowed, true);
    assert.equal(decide(ps, req({ path: "/api/admin" })).allowed, false);
    assert.equal(decide(ps, req({ path: "/other" })).allowed, false);
  });

  test("a condition with values and notValues needs both", () => {
    const ps = p({ when: [{ key: "request.headers[x-user]", values: ["a*"], notValues: ["admin"] }] });
    assert.equal(decide(ps, req({ headers: { "x-user": "alice" } })).allowed, true);
    assert.equal(decide(ps, req({ headers: { "x-user": "admin" } })).allowed, false);
    assert.equal(decide(ps, req({ headers: { "x-user": "bob" } })).allowed, false);
  });

  test("the first matching rule of a policy is reported", () => {
    const d = decide([pol("p", { rules: [{ to: [{ operation: { paths: ["/x"] } }] }, {}, {}] })]);
    assert.equal(d.rule, 1);
  });
});

/**
 * Each field and its not twin: the positive field matches `hit` and not `miss`; the not twin the
 * other way round. Checked as ALLOW (allowed iff matched) and DENY (denied iff matched).
 */
interface FieldCase {
  field: string;
  values: string[];
  hit: RequestAttributes;
  miss: RequestAttributes;
  where: "source" | "operation";
}

const fieldCases: FieldCase[] = [
  {
    field: "principals",
    values: ["cluster.local/ns/shop/sa/frontend"],
    hit: req(),
    miss: req({ principal: "cluster.local/ns/shop/sa/other" }),
    where: "source",
  },
  { field: "namespaces", values: ["shop"], hit: req(), miss: req({ namespace: "billing" }), where: "source" },
  {
    field: "requestPrincipals",
    values: ["https://issuer.example/alice"],
    hit: req({ auth: { principal: "https://issuer.example/alice" } }),
    miss: req({ auth: { principal: "https://issuer.example/bob" } }),
    where: "source",
  },
  {
    field: "remoteIpBlocks",
    values: ["198.18.0.0/24"],
    hit: req(),
    miss: req({ remoteIp: "198.18.1.5" }),
    where: "source",
  },
  {
    field: "ipBlocks",
    values: ["198.18.0.0/24"],
    hit: req(),
    miss: req({ sourceIp: "198.18.1.5" }),
    where: "source",
  },
  {
    field: "hosts",
    values: ["catalog.shop"],
    hit: req(),
    miss: req({ host: "orders.shop" }),
    where: "operation",
  },
  { field: "ports", values: ["8080"], hit: req(), miss: req({ port: 9090 }), where: "operation" },
  { field: "methods", values: ["GET"], hit: req(), miss: req({ method: "POST" }), where: "operation" },
  { field: "paths", values: ["/"], hit: req(), miss: req({ path: "/x" }), where: "operation" },
];

function fieldPolicy(c: FieldCase, action: "ALLOW" | "DENY", negate: boolean): PolicyRef {
  const name = negate ? `not${c.field[0]!.toUpperCase()}${c.field.slice(1)}` : c.field;
  const body = { [name]: c.values };
  const rule =
    c.where === "source"
      ? { from: [{ source: body as Source }] }
      : { to: [{ operation: body as Operation }] };
  return pol(`${action.toLowerCase()}-${name}`, { action, rules: [rule] });
}

describe("every field and its not twin", () => {
  for (const c of fieldCases) {
    const notName = `not${c.field[0]!.toUpperCase()}${c.field.slice(1)}`;
    test(`${c.field} and ${notName}`, () => {
      for (const action of ["ALLOW", "DENY"] as const) {
        const expectAllowed = (matched: boolean) => (action === "ALLOW" ? matched : !matched);
        const pos = [fieldPolicy(c, action, false)];
        const neg = [fieldPolicy(c, action, true)];
        assert.equal(decide(pos, c.hit).allowed, expectAllowed(true), `${action} ${c.field} hit`);
        assert.equal(decide(pos, c.miss).allowed, expectAllowed(false), `${action} ${c.field} miss`);
        assert.equal(decide(neg, c.hit).allowed, expectAllowed(false), `${action} ${notName} hit`);
        assert.equal(decide(neg, c.miss).allowed, expectAllowed(true), `${action} ${notName} miss`);
      }
    });
  }

  test("an absent attribute matches no positive value and every not value", () => {
    const plaintext = req({ principal: null, sourceIp: null });
    assert.equal(decide([allowFrom({ principals: ["*"] })], plaintext).allowed, false);
    assert.equal(
      decide([allowFrom({ notPrincipals: ["cluster.local/ns/shop/sa/frontend"] })], plaintext).allowed,
      true,
    );
    assert.equal(decide([allowFrom({ namespaces: ["*"] })], plaintext).allowed, false);
    assert.equal(decide([allowFrom({ notNamespaces: ["shop"] })], plaintext).allowed, true);
    assert.equal(decide([allowFrom({ ipBlocks: ["0.0.0.0/0"] })], plaintext).allowed, false);
    assert.equal(decide([allowFrom({ notIpBlocks: ["0.0.0.0/0"] })], plaintext).allowed, true);
    const noJwt = req({ remoteIp: null });
    assert.equal(decide([allowFrom({ requestPrincipals: ["*"] })], noJwt).allowed, false);
    assert.equal(decide([allowFrom({ notRequestPrincipals: ["*/x"] })], noJwt).allowed, true);
    assert.equal(decide([allowFrom({ remoteIpBlocks: ["0.0.0.0/0"] })], noJwt).allowed, false);
    assert.equal(decide([allowFrom({ notRemoteIpBlocks: ["0.0.0.0/0"] })], noJwt).allowed, true);
  });

  test("remoteIpBlocks reads remoteIp and ipBlocks reads sourceIp", () => {
    const r = req({ sourceIp: "198.18.0.5", remoteIp: "198.18.7.7" });
    assert.equal(decide([allowFrom({ remoteIpBlocks: ["198.18.7.0/24"] })], r).allowed, true);
    assert.equal(decide([allowFrom({ ipBlocks: ["198.18.7.0/24"] })], r).allowed, false);
  });
});

describe("value forms in policies", () => {
  test("exact, prefix*, *suffix and * on paths", () => {
    const ok = (paths: string[], path: string) => decide([allowTo({ paths })], req({ path })).allowed;
    assert.equal(ok(["/api"], "/api"), true);
    assert.equal(ok(["/api"], "/api/"), false);
    assert.equal(ok(["/api/*"], "/api/v1/x"), true);
    assert.equal(ok(["/api/*"], "/apiv1"), false);
    assert.equal(ok(["*.png"], "/img/a.png"), true);
    assert.equal(ok(["*.png"], "/img/a.jpg"), false);
    assert.equal(ok(["*"], "/anything"), true);
  });

  test("principals with prefix and suffix forms", () => {
    assert.equal(decide([allowFrom({ principals: ["cluster.local/ns/shop/*"] })]).allowed, true);
    assert.equal(decide([allowFrom({ principals: ["*/sa/frontend"] })]).allowed, true);
    assert.equal(decide([allowFrom({ principals: ["cluster.local/ns/billing/*"] })]).allowed, false);
  });

  test("hosts compare case-insensitively and ignore the request port when the value has none", () => {
    const ok = (hosts: string[], host: string) => decide([allowTo({ hosts })], req({ host })).allowed;
    assert.equal(ok(["Catalog.Shop"], "catalog.shop"), true);
    assert.equal(ok(["catalog.shop"], "CATALOG.SHOP:8080"), true);
    assert.equal(ok(["catalog.shop:8080"], "catalog.shop:8080"), true);
    assert.equal(ok(["catalog.shop:8080"], "catalog.shop"), false);
    assert.equal(ok(["catalog.shop:8080"], "catalog.shop:9090"), false);
    assert.equal(ok(["*.shop"], "catalog.shop:8080"), true);
  });

  test("methods compare exactly (HTTP methods are case-sensitive)", () => {
    assert.equal(decide([allowTo({ methods: ["GET"] })], req({ method: "get" })).allowed, false);
    assert.equal(decide([allowTo({ methods: ["PROPFIND"] })], req({ method: "PROPFIND" })).allowed, true);
  });

  test("ipBlocks take single addresses and CIDRs", () => {
    assert.equal(decide([allowFrom({ ipBlocks: ["198.18.0.5"] })]).allowed, true);
    assert.equal(decide([allowFrom({ ipBlocks: ["198.18.0.6"] })]).allowed, false);
    assert.equal(decide([allowFrom({ ipBlocks: ["198.16.0.0/14"] })]).allowed, true);
  });
});

describe("when conditions", () => {
  const allowWhen = (key: string, values?: string[], notValues?: string[]) =>
    pol("allow", {
      rules: [{ when: [{ key, ...(values ? { values } : {}), ...(notValues ? { notValues } : {}) }] }],
    });

  test("request.headers[NAME]: the name is case-insensitive, the value exact", () => {
    const p = [allowWhen("request.headers[X-Tenant]", ["acme"])];
    assert.equal(decide(p, req({ headers: { "x-tenant": "acme" } })).allowed, true);
    assert.equal(decide(p, req({ headers: { "x-tenant": "ACME" } })).allowed, false);
    assert.equal(decide(p, req({ headers: {} })).allowed, false);
  });

  test("request.headers notValues matches an absent header", () => {
    const p = [allowWhen("request.headers[x-debug]", undefined, ["*"])];
    assert.equal(decide(p, req({ headers: {} })).allowed, true);
    assert.equal(decide(p, req({ headers: { "x-debug": "1" } })).allowed, false);
    assert.equal(decide(p, req({ headers: { "x-debug": undefined } })).allowed, true);
  });

  test("source.ip", () => {
    assert.equal(decide([allowWhen("source.ip", ["198.18.0.0/16"])]).allowed, true);
    assert.equal(decide([allowWhen("source.ip", undefined, ["198.18.0.0/16"])]).allowed, false);
    assert.equal(
      decide([allowWhen("source.ip", ["198.18.0.0/16"])], req({ sourceIp: "198.19.0.1" })).allowed,
      false,
    );
  });

  test("source.namespace", () => {
    assert.equal(decide([allowWhen("source.namespace", ["shop"])]).allowed, true);
    assert.equal(decide([allowWhen("source.namespace", undefined, ["shop"])]).allowed, false);
    assert.equal(
      decide([allowWhen("source.namespace", ["sh*"])], req({ namespace: "billing" })).allowed,
      false,
    );
  });

  test("source.principal", () => {
    assert.equal(decide([allowWhen("source.principal", ["*/sa/frontend"])]).allowed, true);
    assert.equal(decide([allowWhen("source.principal", undefined, ["*/sa/frontend"])]).allowed, false);
    assert.equal(decide([allowWhen("source.principal", ["*"])], req({ principal: null })).allowed, false);
  });

  test("destination.port", () => {
    assert.equal(decide([allowWhen("destination.port", ["8080", "8443"])]).allowed, true);
    assert.equal(decide([allowWhen("destination.port", undefined, ["8080"])]).allowed, false);
    assert.equal(decide([allowWhen("destination.port", ["8443"])], req({ port: 8080 })).allowed, false);
  });
});

describe("when conditions on connection and JWT attributes", () => {
  const allowWhen = (key: string, values?: string[], notValues?: string[]) =>
    pol("allow", {
      rules: [{ when: [{ key, ...(values ? { values } : {}), ...(notValues ? { notValues } : {}) }] }],
    });
  const jwt = (auth: RequestAttributes["auth"], o: ReqOpts = {}) => req({ ...o, auth });

  test("remote.ip", () => {
    assert.equal(decide([allowWhen("remote.ip", ["198.18.0.0/24"])]).allowed, true);
    assert.equal(
      decide([allowWhen("remote.ip", ["198.18.0.0/24"])], req({ remoteIp: "198.19.0.1" })).allowed,
      false,
    );
    assert.equal(decide([allowWhen("remote.ip", undefined, ["198.18.0.5"])]).allowed, false);
  });

  test("destination.ip", () => {
    assert.equal(decide([allowWhen("destination.ip", ["198.18.0.9"])]).allowed, true);
    assert.equal(
      decide([allowWhen("destination.ip", ["198.18.0.9"])], req({ destinationIp: "198.18.0.8" })).allowed,
      false,
    );
    assert.equal(
      decide([allowWhen("destination.ip", ["198.18.0.0/16"])], req({ destinationIp: null })).allowed,
      false,
    );
  });

  test("connection.sni", () => {
    const p = [allowWhen("connection.sni", ["*.shop.svc.cluster.local"])];
    assert.equal(decide(p, req({ sni: "catalog.shop.svc.cluster.local" })).allowed, true);
    assert.equal(decide(p, req({ sni: "catalog.billing.svc.cluster.local" })).allowed, false);
    assert.equal(decide(p, req()).allowed, false, "no SNI matches no value");
    assert.equal(decide([allowWhen("connection.sni", undefined, ["x"])], req()).allowed, true);
  });

  test("request.auth.principal", () => {
    const p = [allowWhen("request.auth.principal", ["https://issuer.example/*"])];
    assert.equal(decide(p, jwt({ principal: "https://issuer.example/alice" })).allowed, true);
    assert.equal(decide(p, jwt({ principal: "https://evil.example/alice" })).allowed, false);
    assert.equal(decide(p, req()).allowed, false);
  });

  test("request.auth.audiences: any audience of the token may match", () => {
    const p = [allowWhen("request.auth.audiences", ["shop"])];
    assert.equal(decide(p, jwt({ audiences: ["billing", "shop"] })).allowed, true);
    assert.equal(decide(p, jwt({ audiences: ["billing"] })).allowed, false);
    assert.equal(decide(p, jwt({})).allowed, false);
    const not = [allowWhen("request.auth.audiences", undefined, ["billing"])];
    assert.equal(decide(not, jwt({ audiences: ["shop", "billing"] })).allowed, false);
    assert.equal(decide(not, jwt({ audiences: ["shop"] })).allowed, true);
  });

  test("request.auth.presenter", () => {
    const p = [allowWhen("request.auth.presenter", ["web-app"])];
    assert.equal(decide(p, jwt({ presenter: "web-app" })).allowed, true);
    assert.equal(decide(p, jwt({ presenter: "cli" })).allowed, false);
  });

  test("request.auth.claims[NAME]: strings, and lists where any element may match", () => {
    const p = [allowWhen("request.auth.claims[groups]", ["admins"])];
    assert.equal(decide(p, jwt({ claims: { groups: "admins" } })).allowed, true);
    assert.equal(decide(p, jwt({ claims: { groups: ["dev", "admins"] } })).allowed, true);
    assert.equal(decide(p, jwt({ claims: { groups: ["dev"] } })).allowed, false);
    assert.equal(decide(p, jwt({ claims: {} })).allowed, false);
    assert.equal(decide(p, req()).allowed, false);
    const not = [allowWhen("request.auth.claims[groups]", undefined, ["banned"])];
    assert.equal(decide(not, jwt({ claims: { groups: ["dev", "banned"] } })).allowed, false);
    assert.equal(decide(not, jwt({ claims: { groups: ["dev"] } })).allowed, true);
  });

  test("request.auth.claims[a][b] reads nested claims", () => {
    const p = [allowWhen("request.auth.claims[realm_access][roles]", ["buyer"])];
    assert.equal(decide(p, jwt({ claims: { realm_access: { roles: ["viewer", "buyer"] } } })).allowed, true);
    assert.equal(decide(p, jwt({ claims: { realm_access: { roles: "buyer" } } })).allowed, true);
    assert.equal(decide(p, jwt({ claims: { realm_access: ["buyer"] } })).allowed, false);
    assert.equal(decide(p, jwt({ claims: { realm_access: null } })).allowed, false);
    assert.equal(decide(p, jwt({ claims: { "realm_access.roles": "buyer" } })).allowed, false);
  });

  test("claims that are numbers, booleans or maps never match, as in Istio", () => {
    assert.equal(
      decide([allowWhen("request.auth.claims[n]", ["1"])], jwt({ claims: { n: 1 } })).allowed,
      false,
    );
    assert.equal(
      decide([allowWhen("request.auth.claims[b]", ["true"])], jwt({ claims: { b: true } })).allowed,
      false,
    );
    assert.equal(
      decide([allowWhen("request.auth.claims[m]", ["*"])], jwt({ claims: { m: { a: "x" } } })).allowed,
      false,
    );
  });

  test("inherited members of claims are not claims", () => {
    const p = [allowWhen("request.auth.claims[constructor]", ["*"])];
    assert.equal(decide(p, jwt({ claims: {} })).allowed, false);
    const q = [allowWhen("request.auth.claims[a][toString]", ["*"])];
    assert.equal(decide(q, jwt({ claims: { a: {} } })).allowed, false);
  });

  test("requestPrincipals and notRequestPrincipals: the 'require a JWT' idiom", () => {
    const requireJwt = pol("require-jwt", {
      action: "DENY",
      rules: [{ from: [{ source: { notRequestPrincipals: ["*"] } }] }],
    });
    assert.equal(decide([requireJwt], req()).allowed, false);
    assert.equal(decide([requireJwt], jwt({ principal: "https://issuer.example/alice" })).allowed, true);
  });
});

describe("plain TCP connections", () => {
  const tcp = req({ tcp: true });

  test("an ALLOW rule using an HTTP-only field never matches TCP", () => {
    for (const operation of [
      { hosts: ["*"] },
      { notHosts: ["x"] },
      { methods: ["GET"] },
      { notMethods: ["DELETE"] },
      { paths: ["*"] },
      { notPaths: ["/x"] },
    ] as Operation[]) {
      assert.equal(
        decide([allowTo({ ...operation, ports: ["8080"] })], tcp).allowed,
        false,
        JSON.stringify(operation),
      );
    }
    const headerRule = pol("allow", { rules: [{ when: [{ key: "request.headers[x]", notValues: ["y"] }] }] });
    assert.equal(decide([headerRule], tcp).allowed, false);
  });

  test("the TCP denial reason names the rules that cannot match", () => {
    const d = decide(
      [pol("allow-get", { rules: [{ to: [{ operation: { methods: ["GET"], ports: ["8080"] } }] }] })],
      tcp,
    );
    assert.equal(
      d.reason,
      "denied: no ALLOW policy matched (checked shop/allow-get; on a TCP connection rules with HTTP-only fields never match: shop/allow-get rule 0 (methods))",
    );
  });

  test("an ALLOW rule without HTTP-only fields matches TCP", () => {
    const p = pol("allow", {
      rules: [
        { to: [{ operation: { methods: ["GET"] } }] },
        { from: [{ source: { namespaces: ["shop"] } }], to: [{ operation: { ports: ["8080"] } }] },
      ],
    });
    assert.deepEqual(decide([p], tcp), {
      allowed: true,
      policy: "shop/allow",
      action: "ALLOW",
      rule: 1,
      reason: "allowed by shop/allow rule 1",
    });
  });

  test("a DENY rule drops its HTTP-only fields on TCP and so denies more", () => {
    const p = pol("deny-delete", {
      action: "DENY",
      rules: [{ to: [{ operation: { methods: ["DELETE"] } }] }],
    });
    assert.deepEqual(decide([p], tcp), {
      allowed: false,
      policy: "shop/deny-delete",
      action: "DENY",
      rule: 0,
      reason:
        "denied by shop/deny-delete rule 0 (on a TCP connection its HTTP-only fields methods are ignored, which widens the rule)",
    });
    assert.equal(decide([p], req({ method: "GET" })).allowed, true);
  });

  test("a DENY rule keeps its TCP fields on TCP", () => {
    const p = pol("deny", {
      action: "DENY",
      rules: [
        {
          to: [{ operation: { ports: ["9000"], notPaths: ["/health"] } }],
          when: [{ key: "request.headers[x]", values: ["y"] }],
        },
      ],
    });
    assert.equal(decide([p], req({ tcp: true, port: 9000 })).allowed, false);
    assert.equal(decide([p], req({ tcp: true, port: 8080 })).allowed, true);
  });

  test("JWT fields are HTTP-only: an ALLOW rule with them never matches TCP, a DENY rule widens", () => {
    const allowJwt = pol("allow-jwt", { rules: [{ from: [{ source: { requestPrincipals: ["*"] } }] }] });
    assert.equal(decide([allowJwt], tcp).allowed, false);
    const allowClaim = pol("allow-claim", {
      rules: [{ when: [{ key: "request.auth.claims[groups]", values: ["admins"] }] }],
    });
    assert.equal(decide([allowClaim], tcp).allowed, false);
    const denyNoJwt = pol("deny-no-jwt", {
      action: "DENY",
      rules: [{ from: [{ source: { notRequestPrincipals: ["*"], namespaces: ["billing"] } }] }],
    });
    assert.equal(decide([denyNoJwt], tcp).allowed, true, "namespaces still applies on TCP");
    assert.equal(decide([denyNoJwt], req({ tcp: true, namespace: "billing" })).allowed, false);
  });

  test("connection attributes still apply on TCP", () => {
    const p = pol("allow", {
      rules: [
        {
          from: [{ source: { remoteIpBlocks: ["198.18.0.0/24"] } }],
          when: [
            { key: "destination.ip", values: ["198.18.0.9"] },
            { key: "connection.sni", values: ["db.shop"] },
            { key: "remote.ip", values: ["198.18.0.5"] },
          ],
        },
      ],
    });
    assert.equal(decide([p], req({ tcp: true, sni: "db.shop" })).allowed, true);
    assert.equal(decide([p], req({ tcp: true, sni: "db.other" })).allowed, false);
    assert.deepEqual(tcpWarnings([p]), []);
  });

  test("an AUDIT rule drops its HTTP-only fields on TCP too", () => {
    const p = pol("audit-get", { action: "AUDIT", rules: [{ to: [{ operation: { methods: ["GET"] } }] }] });
    assert.deepEqual(decide([p], tcp).audits, ["shop/audit-get"]);
  });

  test("tcpWarnings names each rule whose meaning changes on TCP", () => {
    const warnings = tcpWarnings([
      pol("allow-get", {
        rules: [
          { to: [{ operation: { methods: ["GET"], paths: ["/a"] } }, { operation: { methods: ["HEAD"] } }] },
          {},
        ],
      }),
      pol("deny-hdr", {
        action: "DENY",
        rules: [{}, { when: [{ key: "request.headers[X-A]", values: ["1"] }] }],
      }),
      pol("dry", { rules: [{ to: [{ operation: { notHosts: ["x"] } }] }] }, { dryRun: true }),
      pol("ports-only", { rules: [{ to: [{ operation: { ports: ["80"] } }] }] }),
      pol("broken", {
        rules: [{ to: [{ operation: { methods: "GET" } }] }],
      } as unknown as AuthorizationPolicySpec),
    ]);
    assert.deepEqual(warnings, [
      "shop/allow-get rule 0 (ALLOW) uses HTTP-only fields (methods, paths), so it never matches a plain TCP connection",
      "shop/deny-hdr rule 1 (DENY) uses HTTP-only fields (when request.headers[X-A]), which are ignored for a plain TCP connection, so there the rule matches more widely",
      "shop/dry (dry-run) rule 0 (ALLOW) uses HTTP-only fields (notHosts), so it never matches a plain TCP connection",
    ]);
  });
});

describe("compilePolicies", () => {
  test("an invalid policy is not silently dropped: compiling it throws with the path", () => {
    const bad = pol("bad", {
      rules: [{ to: [{ operation: { methods: "GET" } }] }],
    } as unknown as AuthorizationPolicySpec);
    assert.throws(
      () => compilePolicies([bad]),
      (e: unknown) =>
        isZmeshError(e, "ZMESH_CONFIG_INVALID") &&
        e.message.startsWith(
          "AuthorizationPolicy shop/bad: spec.rules[0].to[0].operation.methods: must be a list",
        ),
    );
  });

  test("an unsupported field throws ZMESH_CONFIG_UNSUPPORTED", () => {
    const template = pol("template", {
      rules: [{ to: [{ operation: { paths: ["/api/{*}"] } }] }],
    });
    assert.throws(
      () => compilePolicies([template]),
      (e: unknown) => isZmeshError(e, "ZMESH_CONFIG_UNSUPPORTED"),
    );
  });

  test("root-namespace policies are named with their own namespace", () => {
    const d = decide([pol("mesh-deny", { action: "DENY", rules: [{}] }, { namespace: "istio-system" })]);
    assert.equal(d.policy, "istio-system/mesh-deny");
  });
});

describe("regressions", () => {
  const denyAdmin = pol("deny-admin", {
    action: "DENY",
    rules: [{ to: [{ operation: { paths: ["/admin", "/admin/*"] } }] }],
  });
  const through = (raw: string, opts?: Parameters<typeof normalizePath>[1]) => {
    const n = normalizePath(raw, opts);
    assert.ok(n.ok);
    return decide([denyAdmin], req({ path: n.path })).allowed;
  };

  test("CVE-2021-31920: //admin does not bypass a rule on /admin", () => {
    assert.equal(through("//admin"), false);
    assert.equal(through("//admin//users"), false);
  });

  test("dot segments do not bypass a rule on /admin", () => {
    assert.equal(through("/public/../admin"), false);
    assert.equal(through("/./admin/./x"), false);
    assert.equal(through("/public/%2e%2e/admin"), false);
    assert.equal(through("/public\\..\\admin"), false);
  });

  test("percent-encoded letters do not bypass a rule on /admin", () => {
    assert.equal(through("/%61dmin"), false);
    assert.equal(through("/%41dmin"), true, "paths are case-sensitive: /Admin is another path");
  });

  test("%2F: encoded slashes do not bypass a rule on /admin when decodeSlashes is on", () => {
    assert.equal(through("/public%2F..%2Fadmin", { decodeSlashes: true }), false);
    assert.equal(through("/admin%2Fusers", { decodeSlashes: true }), false);
    assert.equal(through("/admin%2fusers", { decodeSlashes: true }), false);
  });

  test("%2F: off by default, the encoded path is matched exactly as the app will receive it", () => {
    const n = normalizePath("/public%2F..%2Fadmin");
    assert.ok(n.ok);
    assert.equal(n.path, "/public%2F..%2Fadmin");
    const allowPublicOnly = pol("public", { rules: [{ to: [{ operation: { paths: ["/public/*"] } }] }] });
    assert.equal(decide([allowPublicOnly], req({ path: n.path })).allowed, false);
  });

  test("CVE-2021-39156: a #fragment does not bypass a rule on /admin", () => {
    assert.equal(through("/admin#"), false);
    assert.equal(through("/admin#/../public"), false);
    assert.equal(through("/admin/users#x"), false);
    const allowPng = pol("png", { rules: [{ to: [{ operation: { paths: ["*.png"] } }] }] });
    const n = normalizePath("/admin#.png");
    assert.ok(n.ok);
    assert.equal(
      decide([allowPng], req({ path: n.path })).allowed,
      false,
      "the fragment is not part of the path",
    );
  });

  test("a query string does not bypass a rule on /admin", () => {
    assert.equal(through("/admin?x=/public"), false);
  });

  test("an upper-case Host or a Host with a port does not bypass a DENY on the host", () => {
    const p = pol("deny-host", {
      action: "DENY",
      rules: [{ to: [{ operation: { hosts: ["admin.shop"] } }] }],
    });
    assert.equal(decide([p], req({ host: "ADMIN.shop" })).allowed, false);
    assert.equal(decide([p], req({ host: "admin.shop:8080" })).allowed, false);
  });

  test("a plaintext peer does not satisfy principals ['*']", () => {
    assert.equal(decide([allowFrom({ principals: ["*"] })], req({ principal: null })).allowed, false);
  });

  test("notPrincipals ['*'] in a DENY policy denies plaintext and nothing else", () => {
    const p = pol("require-mtls", {
      action: "DENY",
      rules: [{ from: [{ source: { notPrincipals: ["*"] } }] }],
    });
    assert.equal(decide([p], req({ principal: null })).allowed, false);
    assert.equal(decide([p]).allowed, true);
  });

  test("a header named like an Object member is not treated as present", () => {
    const p = pol("allow", { rules: [{ when: [{ key: "request.headers[constructor]", values: ["*"] }] }] });
    assert.equal(decide([p], req({ headers: {} })).allowed, false);
    const q = pol("allow", { rules: [{ when: [{ key: "request.headers[__proto__]", values: ["*"] }] }] });
    assert.equal(decide([q], req({ headers: {} })).allowed, false);
  });

  test("an IPv4-mapped IPv6 source address does not escape an IPv4 DENY block", () => {
    const p = pol("deny-net", {
      action: "DENY",
      rules: [{ from: [{ source: { ipBlocks: ["198.18.0.0/16"] } }] }],
    });
    assert.equal(decide([p], req({ sourceIp: "::ffff:198.18.0.5" })).allowed, false);
  });

  test("a DENY policy with HTTP fields is not dropped for TCP traffic", () => {
    const p = pol("deny-post", { action: "DENY", rules: [{ to: [{ operation: { methods: ["POST"] } }] }] });
    assert.equal(decide([p], req({ tcp: true })).allowed, false);
  });

  test("a lower-case method in the request does not match an upper-case DENY, nor get past an ALLOW", () => {
    const allowGet = pol("allow-get", { rules: [{ to: [{ operation: { methods: ["GET"] } }] }] });
    assert.equal(decide([allowGet], req({ method: "get" })).allowed, false);
  });
});
