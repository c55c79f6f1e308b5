// Telemetry's series lookup: a record's label tuple is found among the last few tuples by field
// comparison, else by its key. Whatever the order of records (more tuples than are remembered,
// tuples that differ in one field only), each request is counted in its own tuple's series, and
// the capped labels (LabelGuard) map the same way on both paths.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import pino from "pino";
import { LABEL_VALUE_CAP, type Peer, Telemetry } from "./telemetry.js";

const quiet = () => pino({ level: "silent" });

interface Tuple {
  reporter: "source" | "destination";
  source: Peer;
  destination: Peer;
  service?: string;
  status: number;
  mtls: boolean;
  flag?: string;
  protocol: "http" | "grpc";
  grpcStatus?: string;
  decision?: "allow" | "deny";
  policy?: string;
  action?: string;
}

const PEERS: Peer[] = [
  {},
  { principal: "cluster.local/ns/shop/sa/a", workload: "a", namespace: "shop" },
  { principal: "cluster.local/ns/shop/sa/b", workload: "b", namespace: "shop" },
  { principal: "cluster.local/ns/shop/sa/b", workload: "b2", namespace: "shop" },
  { principal: "cluster.local/ns/shop/sa/b", workload: "b", namespace: "other" },
  { principal: "cluster.local/ns/shop/sa/c", workload: "b", namespace: "shop" },
];

const FIELDS = {
  reporter: ["source", "destination"],
  source: PEERS,
  destination: PEERS,
  service: ["api.shop.svc.cluster.local", "web.shop.svc.cluster.local", undefined],
  status: [200, 403, 503],
  mtls: [true, false],
  flag: [undefined, "RBAC_DENIED"],
  protocol: ["http", "grpc"],
  grpcStatus: [undefined, "0", "7"],
  decision: [undefined, "allow", "deny"],
  policy: [undefined, "shop/a", "shop/b"],
  action: [undefined, "ALLOW", "DENY"],
} as const;
type Field = keyof typeof FIELDS;
const NAMES = Object.keys(FIELDS) as Field[];

const tuple: fc.Arbitrary<Tuple> = fc.record(
  Object.fromEntries(NAMES.map((f) => [f, fc.constantFrom(...FIELDS[f])])) as never,
) as fc.Arbitrary<Tuple>;

/** A few tuples that differ from one another in a single field each: the hard case for matching. */
const neighbours: fc.Arbitrary<Tuple[]> = fc
  .tuple(tuple, fc.array(fc.tuple(fc.constantFrom(...NAMES), fc.nat()), { minLength: 1, maxLength: 8 }))
  .map(([base, changes]) => [
    base,
    ...changes.map(([f, i]) => ({ ...base, [f]: FIELDS[f][i % FIELDS[f].length] }) as Tuple),
  ]);

/** istio_requests_total and the decision counter by metric and label set (as JSON), from the registry. */
async function counts(t: Telemetry): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const name of ["istio_requests_total", "zmesh_authz_decisions_total"]) {
    const m = await t.registry.getSingleMetric(name)!.get();
    for (const v of m.values) out.set(`${name} ${JSON.stringify(v.labels)}`, v.value);
  }
  return out;
}

function record(t: Tuple) {
  return {
    ...t,
    // Copies, as a request brings its own strings and objects: matching is by value.
    source: { ...t.source },
    destination: { ...t.destination },
    requestId: "r",
    durationMs: 1,
    requestBytes: 0,
    responseBytes: 0,
  };
}

describe("Telemetry series lookup", () => {
  it("counts every record in its own tuple's series, whatever the order", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(neighbours, fc.array(tuple, { minLength: 1, maxLength: 12 })),
        fc.array(fc.nat(), { maxLength: 60 }),
        async (pool, picks) => {
          const fast = new Telemetry(quiet());
          const order = picks.map((i) => pool[i % pool.length]!);
          for (const t of order) fast.http(record(t));
          // The model: a fresh Telemetry per record counts it by the key path alone (nothing recent).
          const expected = new Map<string, number>();
          for (const t of order) {
            const one = new Telemetry(quiet());
            one.http(record(t));
            for (const [labels, n] of await counts(one))
              expected.set(labels, (expected.get(labels) ?? 0) + n);
          }
          assert.deepEqual(await counts(fast), expected);
        },
      ),
      { numRuns: 200 },
    );
  });

  it("a capped label maps the same way when its tuple is found among the recent ones", async () => {
    const t = new Telemetry(quiet());
    const base = {
      reporter: "destination" as const,
      destination: PEERS[1]!,
      status: 200,
      mtls: true,
      protocol: "http" as const,
    };
    for (let i = 0; i < LABEL_VALUE_CAP; i++) t.http(record({ ...base, source: { workload: `w${i}` } }));
    // Past the cap: new values count as "other", the first time (key path) and after (recent).
    for (let i = 0; i < 3; i++) t.http(record({ ...base, source: { workload: "late" } }));
    t.http(record({ ...base, source: { workload: "w0" } }));
    const c = await counts(t);
    const workloads = [...c]
      .filter(([k]) => k.startsWith("istio_requests_total "))
      .map(([k, n]) => [JSON.parse(k.slice(k.indexOf(" ") + 1)).source_workload, n]);
    assert.deepEqual(
      workloads.filter(([w]) => w === "other" || w === "w0" || w === "late"),
      [
        ["w0", 2],
        ["other", 3],
      ],
    );
  });
});
