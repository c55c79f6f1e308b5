// The rule index: compilePolicies files rules under exact principals, namespaces, paths, path
// directories and methods so that a decision does not scan every policy. It must never change a
// decision: a fast-check property compares it with a plain in-order scan (`index: false`) on random
// policies and requests, including the reported policy, rule, audits and dry-run verdicts.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import { compilePolicies, evaluate } from "./compile.js";
import type { Condition, Operation, PolicyRef, RequestAttributes, Rule, Source } from "./types.js";

const PRINCIPALS = ["cluster.local/ns/a/sa/x", "cluster.local/ns/a/sa/y", "cluster.local/ns/b/sa/x"];
const PATHS = ["/", "/api/", "/api/v1/x", "/api/v2", "/admin", "/admin/x", "/a%2Fb"];
const METHODS = ["GET", "POST", "DELETE"];

const principalValue = fc.constantFrom(...PRINCIPALS, "cluster.local/ns/a/*", "*/sa/x", "*");
const namespaceValue = fc.constantFrom("a", "b", "a*", "*");
const pathValue = fc.constantFrom(...PATHS, "/api/*", "/api/v1*", "/adm*", "*x", "*", "/*", "/admin/*");
const methodValue = fc.constantFrom(...METHODS, "P*", "*");
const list = <T>(a: fc.Arbitrary<T>) => fc.array(a, { minLength: 1, maxLength: 3 });

const source: fc.Arbitrary<Source> = fc
  .record(
    {
      principals: list(principalValue),
      notPrincipals: list(principalValue),
      namespaces: list(namespaceValue),
      notNamespaces: list(namespaceValue),
      requestPrincipals: list(fc.constantFrom("iss/alice", "iss/*", "*")),
    },
    { requiredKeys: [] },
  )
  .filter((s) => Object.keys(s).length > 0);

const operation: fc.Arbitrary<Operation> = fc
  .record(
    {
      paths: list(pathValue),
      notPaths: list(pathValue),
      methods: list(methodValue),
      notMethods: list(methodValue),
      ports: list(fc.constantFrom("8080", "9090")),
    },
    { requiredKeys: [] },
  )
  .filter((o) => Object.keys(o).length > 0);

const condition: fc.Arbitrary<Condition> = fc.oneof(
  fc.record({ key: fc.constant("request.headers[x-a]"), values: list(fc.constantFrom("1", "*")) }),
  fc.record({ key: fc.constant("source.namespace"), notValues: list(namespaceValue) }),
  fc.record({ key: fc.constant("destination.port"), values: list(fc.constantFrom("8080", "9090")) }),
);

const rule: fc.Arbitrary<Rule> = fc.record(
  {
    from: fc.array(
      source.map((s) => ({ source: s })),
      { minLength: 1, maxLength: 2 },
    ),
    to: fc.array(
      operation.map((o) => ({ operation: o })),
      { minLength: 1, maxLength: 2 },
    ),
    when: fc.array(condition, { minLength: 1, maxLength: 2 }),
  },
  { requiredKeys: [] },
);

const policies: fc.Arbitrary<PolicyRef[]> = fc
  .array(
    fc.record({
      namespace: fc.constantFrom("shop", "zmesh-system"),
      action: fc.constantFrom("ALLOW", "DENY", "AUDIT"),
      rules: fc.array(rule, { maxLength: 3 }),
      dryRun: fc.boolean(),
    }),
    { maxLength: 8 },
  )
  .map((ps) =>
    ps.map((p, i) => ({
      namespace: p.namespace,
      name: `p${i}`,
      spec: { action: p.action, rules: p.rules },
      ...(p.dryRun && i % 3 === 0 ? { dryRun: true } : {}),
    })),
  );

const request: fc.Arbitrary<RequestAttributes> = fc
  .record({
    principal: fc.option(fc.constantFrom(...PRINCIPALS), { nil: undefined }),
    jwt: fc.option(fc.constantFrom("iss/alice", "iss/bob"), { nil: undefined }),
    tcp: fc.boolean(),
    path: fc.constantFrom(...PATHS, "/api/v1", "/apix", "/api/v1/y/z"),
    method: fc.constantFrom(...METHODS, "PUT"),
    port: fc.constantFrom(8080, 9090),
    header: fc.option(fc.constantFrom("1", "2"), { nil: undefined }),
  })
  .map((o) => {
    const r: RequestAttributes = { destinationPort: o.port };
    if (o.principal !== undefined) {
      r.principal = o.principal;
      r.namespace = o.principal.split("/")[2]!;
    }
    if (o.jwt !== undefined) r.auth = { principal: o.jwt };
    if (!o.tcp) {
      r.http = {
        method: o.method,
        path: o.path,
        host: "h",
        headers: o.header === undefined ? {} : { "x-a": o.header },
      };
    }
    return r;
  });

describe("rule index", () => {
  test("gives the same decisions as an in-order scan of every rule (property)", () => {
    fc.assert(
      fc.property(policies, fc.array(request, { minLength: 1, maxLength: 6 }), (ps, reqs) => {
        const indexed = compilePolicies(ps);
        const linear = compilePolicies(ps, { index: false });
        for (const r of reqs) assert.deepEqual(evaluate(indexed, r), evaluate(linear, r));
      }),
      { numRuns: 1500 },
    );
  });

  const allowPath = (name: string, principal: string, path: string, ns = "shop"): PolicyRef => ({
    namespace: ns,
    name,
    spec: {
      rules: [{ from: [{ source: { principals: [principal] } }], to: [{ operation: { paths: [path] } }] }],
    },
  });
  const http = (principal: string, path: string, method = "GET"): RequestAttributes => ({
    principal,
    namespace: "shop",
    destinationPort: 8080,
    http: { method, path, host: "h", headers: {} },
  });

  test("reports the first match in policy order even when several buckets match", () => {
    const ps: PolicyRef[] = [
      allowPath("c-by-principal", "td/ns/shop/sa/a", "/x/*"),
      allowPath("b-by-path", "td/ns/shop/sa/*", "/x/y"),
      { namespace: "shop", name: "d-rest", spec: { rules: [{}] } },
      allowPath("a-by-dir", "td/ns/*", "/x/*"),
    ];
    const d = evaluate(compilePolicies(ps), http("td/ns/shop/sa/a", "/x/y"));
    assert.equal(d.policy, "shop/a-by-dir");
    const e = evaluate(compilePolicies(ps), http("td/ns/shop/sa/a", "/z"));
    assert.equal(e.policy, "shop/d-rest");
  });

  test("with thousands of policies each request finds its own rule", () => {
    const ps: PolicyRef[] = [];
    for (let i = 0; i < 5000; i++) {
      ps.push(allowPath(`p${String(i).padStart(5, "0")}`, `td/ns/shop/sa/s${i}`, `/svc${i}/*`));
    }
    ps.push({
      namespace: "zmesh-system",
      name: "deny-debug",
      spec: { action: "DENY", rules: [{ to: [{ operation: { paths: ["/debug/*"] } }] }] },
    });
    const c = compilePolicies(ps);
    for (const i of [0, 1, 2500, 4999]) {
      const d = evaluate(c, http(`td/ns/shop/sa/s${i}`, `/svc${i}/items`));
      assert.equal(d.allowed, true);
      assert.equal(d.policy, `shop/p${String(i).padStart(5, "0")}`);
      assert.equal(evaluate(c, http(`td/ns/shop/sa/s${i}`, `/svc${i + 1}/items`)).allowed, false);
      assert.equal(evaluate(c, http(`td/ns/shop/sa/s${i}`, "/debug/x")).policy, "zmesh-system/deny-debug");
    }
  });

  test("a DENY on a deep directory is found in a path with more segments than ever seen", () => {
    const deep = `/${"a/".repeat(100)}`;
    const ps: PolicyRef[] = [
      { namespace: "shop", name: "allow-all", spec: { rules: [{}] } },
      {
        namespace: "shop",
        name: "deny-deep",
        spec: { action: "DENY", rules: [{ to: [{ operation: { paths: [`${deep}secret/*`] } }] }] },
      },
    ];
    const c = compilePolicies(ps);
    assert.equal(evaluate(c, http("td/ns/shop/sa/a", `${deep}secret/x`)).policy, "shop/deny-deep");
    assert.equal(evaluate(c, http("td/ns/shop/sa/a", `${deep}public/x`)).allowed, true);
  });

  test("a DENY rule filed under a path still matches a TCP connection (its path is dropped there)", () => {
    const ps: PolicyRef[] = [
      {
        namespace: "shop",
        name: "deny-admin",
        spec: { action: "DENY", rules: [{ to: [{ operation: { paths: ["/admin"], methods: ["GET"] } }] }] },
      },
    ];
    const d = evaluate(compilePolicies(ps), { principal: "td/ns/shop/sa/a", destinationPort: 8080 });
    assert.equal(d.allowed, false);
    assert.equal(d.policy, "shop/deny-admin");
  });
});
