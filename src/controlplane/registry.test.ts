// Which Sidecar decides a workload's outbound traffic policy, in Istio's order: a Sidecar of its
// namespace whose selector matches it > its namespace's without selector > the root namespace's
// without selector > zmesh's default REGISTRY_ONLY (Istio's default is ALLOW_ANY).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { Sidecar } from "../config/index.js";
import { resolveOutboundMode } from "./registry.js";

const sc = (namespace: string, name: string, mode?: Sidecar["outboundMode"], app?: string): Sidecar => ({
  kind: "Sidecar",
  meta: { name, namespace, labels: {}, annotations: {} },
  ...(app ? { selector: { app } } : {}),
  ...(mode ? { outboundMode: mode } : {}),
  source: { file: "f.yaml", doc: 0 },
});
const web = { namespace: "shop", labels: { app: "web" } };
const resolve = (list: Sidecar[]) => resolveOutboundMode(list, web, "zmesh-system");

describe("resolveOutboundMode", () => {
  it("defaults to REGISTRY_ONLY when no Sidecar applies", () => {
    assert.deepEqual(resolve([]), { mode: "REGISTRY_ONLY", source: "default" });
    assert.deepEqual(resolve([sc("other", "default", "ALLOW_ANY"), sc("shop", "db", "ALLOW_ANY", "db")]), {
      mode: "REGISTRY_ONLY",
      source: "default",
    });
  });

  it("takes selector > namespace > root, whatever the order of the list", () => {
    const root = sc("zmesh-system", "default", "ALLOW_ANY");
    const ns = sc("shop", "default", "REGISTRY_ONLY");
    const mine = sc("shop", "web-out", "ALLOW_ANY", "web");
    assert.deepEqual(resolve([root]), { mode: "ALLOW_ANY", source: "zmesh-system/default" });
    assert.deepEqual(resolve([root, ns]), { mode: "REGISTRY_ONLY", source: "shop/default" });
    assert.deepEqual(resolve([ns, mine, root]), { mode: "ALLOW_ANY", source: "shop/web-out" });
  });

  it("skips Sidecars without a mode, and selector Sidecars in the root namespace", () => {
    assert.deepEqual(resolve([sc("shop", "empty"), sc("zmesh-system", "default", "ALLOW_ANY")]), {
      mode: "ALLOW_ANY",
      source: "zmesh-system/default",
    });
    assert.deepEqual(resolve([sc("zmesh-system", "web", "ALLOW_ANY", "web")]).mode, "REGISTRY_ONLY");
  });
});
