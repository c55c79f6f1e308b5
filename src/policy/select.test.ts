// selectPolicies: which policies attach to a workload (same namespace, or the root namespace for
// the whole mesh), decided by selector labels.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { selectorMatches, selectPolicies } from "./select.js";
import type { AuthorizationPolicySpec, PolicyRef } from "./types.js";

const ROOT = "istio-system";
const p = (namespace: string, name: string, spec: AuthorizationPolicySpec = {}): PolicyRef => ({
  namespace,
  name,
  spec,
});
const names = (ps: PolicyRef[]) => ps.map((x) => `${x.namespace}/${x.name}`);
const orders = { namespace: "shop", labels: { app: "orders", version: "v1" } };

describe("selectPolicies", () => {
  test("a policy without selector applies to every workload of its namespace", () => {
    assert.deepEqual(names(selectPolicies([p("shop", "ns-wide")], orders, ROOT)), ["shop/ns-wide"]);
  });

  test("a selector applies when all its labels match", () => {
    const all = [
      p("shop", "match", { selector: { matchLabels: { app: "orders" } } }),
      p("shop", "match-both", { selector: { matchLabels: { app: "orders", version: "v1" } } }),
      p("shop", "other-value", { selector: { matchLabels: { app: "payments" } } }),
      p("shop", "missing-label", { selector: { matchLabels: { app: "orders", tier: "db" } } }),
    ];
    assert.deepEqual(names(selectPolicies(all, orders, ROOT)), ["shop/match", "shop/match-both"]);
  });

  test("an empty selector or empty matchLabels selects the whole namespace", () => {
    const all = [p("shop", "a", { selector: {} }), p("shop", "b", { selector: { matchLabels: {} } })];
    assert.deepEqual(names(selectPolicies(all, orders, ROOT)), ["shop/a", "shop/b"]);
  });

  test("a policy of another namespace never applies, even if its selector matches", () => {
    const all = [p("billing", "x"), p("billing", "y", { selector: { matchLabels: { app: "orders" } } })];
    assert.deepEqual(selectPolicies(all, orders, ROOT), []);
  });

  test("a root-namespace policy without selector applies to the whole mesh", () => {
    const all = [p(ROOT, "mesh-wide")];
    assert.deepEqual(names(selectPolicies(all, orders, ROOT)), [`${ROOT}/mesh-wide`]);
    assert.deepEqual(names(selectPolicies(all, { namespace: "billing", labels: {} }, ROOT)), [
      `${ROOT}/mesh-wide`,
    ]);
  });

  test("a root-namespace selector is matched against workloads in any namespace", () => {
    const all = [p(ROOT, "orders-everywhere", { selector: { matchLabels: { app: "orders" } } })];
    assert.deepEqual(names(selectPolicies(all, orders, ROOT)), [`${ROOT}/orders-everywhere`]);
    assert.deepEqual(selectPolicies(all, { namespace: "shop", labels: { app: "payments" } }, ROOT), []);
  });

  test("a workload in the root namespace gets root policies once", () => {
    const all = [p(ROOT, "a"), p(ROOT, "b", { selector: { matchLabels: { app: "gw" } } })];
    assert.deepEqual(names(selectPolicies(all, { namespace: ROOT, labels: { app: "gw" } }, ROOT)), [
      `${ROOT}/a`,
      `${ROOT}/b`,
    ]);
  });

  test("input order is kept and root and local policies mix", () => {
    const all = [p("shop", "z"), p(ROOT, "m"), p("shop", "a")];
    assert.deepEqual(names(selectPolicies(all, orders, ROOT)), ["shop/z", `${ROOT}/m`, "shop/a"]);
  });

  test("an inherited property does not satisfy a selector label", () => {
    assert.equal(selectorMatches({ matchLabels: { constructor: "x" } }, {}), false);
    assert.equal(selectorMatches({ matchLabels: { toString: "x" } }, { app: "orders" }), false);
  });
});
