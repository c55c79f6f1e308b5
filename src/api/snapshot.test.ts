// The snapshot validator as a proxy runs it: a push that leaves services out is completed from
// the last good snapshot only when it names the services version the proxy holds.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parseSnapshot, SERVICES_NOT_HELD, type SnapshotService } from "./snapshot.js";

const PEM = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n";
const svc: SnapshotService = {
  name: "a",
  namespace: "team",
  vip: "198.19.0.10",
  hostnames: ["a"],
  ports: [{ port: 80, targetPort: 8080, protocol: "http" }],
  endpoints: [],
  allowedIds: [],
};

function push(extra: Record<string, unknown>): string {
  return JSON.stringify({
    version: "v1",
    trustDomain: "cluster.local",
    rootNamespace: "zmesh-system",
    trustBundlePem: PEM,
    issuerId: "i",
    workload: {
      name: "a",
      namespace: "team",
      serviceAccount: "a",
      spiffeId: "spiffe://x",
      address: "198.18.0.2",
    },
    policies: [],
    peerAuthentications: [],
    requestAuthentications: [],
    ...extra,
  });
}

describe("parseSnapshot and services left out", () => {
  it("a full push carries its services", () => {
    const s = parseSnapshot(push({ servicesVersion: "s1", services: [svc] }));
    assert.deepEqual(s.services, [svc]);
  });

  it("a push without services keeps the held list when the versions match", () => {
    const held = parseSnapshot(push({ servicesVersion: "s1", services: [svc] }));
    const s = parseSnapshot(push({ servicesVersion: "s1" }), held);
    assert.equal(s.services, held.services);
  });

  it("a push without services is refused when the proxy holds another version or none", () => {
    const held = parseSnapshot(push({ servicesVersion: "s1", services: [svc] }));
    for (const h of [held, undefined]) {
      assert.throws(
        () => parseSnapshot(push({ servicesVersion: "s2" }), h),
        (e: Error) => e.message.startsWith(SERVICES_NOT_HELD),
      );
    }
  });

  it("servicesVersion is required", () => {
    assert.throws(() => parseSnapshot(push({ services: [svc] })), /servicesVersion: must be a string/);
  });

  it("an outbound traffic policy must name REGISTRY_ONLY or ALLOW_ANY and its source", () => {
    const ok = parseSnapshot(
      push({
        servicesVersion: "s1",
        services: [svc],
        outboundTrafficPolicy: { mode: "ALLOW_ANY", source: "default" },
      }),
    );
    assert.equal(ok.outboundTrafficPolicy?.mode, "ALLOW_ANY");
    assert.throws(
      () =>
        parseSnapshot(
          push({
            servicesVersion: "s1",
            services: [svc],
            outboundTrafficPolicy: { mode: "ANY", source: "x" },
          }),
        ),
      /outboundTrafficPolicy.mode: must be REGISTRY_ONLY or ALLOW_ANY/,
    );
  });
});
