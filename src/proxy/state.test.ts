// Which endpoints a config still routes to (LiveEndpoints), as the outbound's prune asks: by the
// key its pools hold (the one Route.endpoint gives) and by address (the balancer's).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { ProxySnapshot, SnapshotService } from "../api/index.js";
import { LiveEndpoints, ProxyState, Route } from "./state.js";

const ep = (address: string) => ({ address, workload: "w", spiffeId: "spiffe://cluster.local/ns/shop/sa/w" });

function service(name: string, addresses: string[], targetPorts: number[]): SnapshotService {
  return {
    name,
    namespace: "shop",
    vip: "198.19.0.5",
    hostnames: [],
    ports: targetPorts.map((t, i) => ({ port: 80 + i, targetPort: t, protocol: "http" as const })),
    endpoints: addresses.map(ep),
    allowedIds: [],
  };
}

describe("LiveEndpoints", () => {
  const orders = service("orders", ["198.18.0.10", "198.18.0.11"], [8080, 9090]);
  const cart = service("cart", ["198.18.0.20"], [8080]);
  const live = new LiveEndpoints([orders, cart]);
  const keyOf = (svc: SnapshotService, i: number, port: number) => {
    const p = svc.ports.find((x) => x.targetPort === port)!;
    return new Route(svc, p.port, p.targetPort, "http", new Set()).endpoint(svc.endpoints[i]!).key;
  };

  it("holds the pool key of every endpoint and target port of every service", () => {
    for (const [svc, n, ports] of [
      [orders, 2, [8080, 9090]],
      [cart, 1, [8080]],
    ] as const)
      for (let i = 0; i < n; i++) for (const port of ports) assert.ok(live.keys.has(keyOf(svc, i, port)));
  });

  it("not a key of an endpoint under another service, target port or address, nor of a service gone", () => {
    const gone = service("gone", ["198.18.0.10"], [8080]);
    assert.equal(live.keys.has(keyOf(gone, 0, 8080)), false, "a service no longer in the config");
    assert.equal(live.keys.has(keyOf(service("cart", ["198.18.0.10"], [8080]), 0, 8080)), false);
    assert.equal(live.keys.has(keyOf(service("cart", ["198.18.0.20"], [9090]), 0, 9090)), false);
    assert.equal(live.keys.has(keyOf(service("orders", ["198.18.0.12"], [8080]), 0, 8080)), false);
  });

  it("holds every endpoint address, and no other", () => {
    for (const a of ["198.18.0.10", "198.18.0.11", "198.18.0.20"]) assert.ok(live.addresses.has(a));
    assert.equal(live.addresses.has("198.18.0.12"), false);
    assert.equal(live.addresses.has("198.19.0.5"), false, "a VIP is no endpoint");
  });
});

describe("ProxyState.afterConfig (a retry or failure of a request begun under an older config)", () => {
  const snapshot = (services: SnapshotService[], version: string): ProxySnapshot => ({
    version,
    trustDomain: "cluster.local",
    rootNamespace: "zmesh-system",
    trustBundlePem: "",
    issuerId: "",
    workload: {
      name: "web",
      namespace: "shop",
      serviceAccount: "web",
      spiffeId: "spiffe://cluster.local/ns/shop/sa/web",
      address: "198.18.0.2",
      labels: {},
    },
    policies: [],
    peerAuthentications: [],
    requestAuthentications: [],
    servicesVersion: version,
    services,
  });

  it("gives the route of now, and whether the endpoint is still one of its endpoints", () => {
    const state = new ProxyState();
    state.applySnapshot(snapshot([service("orders", ["198.18.0.10", "198.18.0.11"], [8080])], "1"));
    const old = state.route("198.19.0.5", 80)!;
    assert.deepEqual(state.afterConfig(old, "198.18.0.10"), { route: old, live: true }, "no config since");

    state.applySnapshot(snapshot([service("orders", ["198.18.0.11"], [8080])], "2"));
    const now = state.route("198.19.0.5", 80)!;
    assert.notEqual(now, old);
    assert.deepEqual(state.afterConfig(old, "198.18.0.10"), { route: now, live: false }, "removed");
    assert.deepEqual(state.afterConfig(old, "198.18.0.11"), { route: now, live: true }, "kept");

    state.applySnapshot(snapshot([], "3"));
    assert.deepEqual(
      state.afterConfig(now, "198.18.0.11"),
      { route: undefined, live: false },
      "service gone",
    );
  });
});
