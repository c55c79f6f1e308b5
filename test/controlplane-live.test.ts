// The control plane at depth, in one process with fake proxies: store changes pushed within
// 100 ms and debounced, editors' rename-writes seen, unchanged snapshots not pushed again, bad
// changes rejected with their reason (status, metrics) while proxies keep their version, NACKs
// recorded, and a restart (CA store, resource store and tokens on disk) that loses nothing:
// proxies reconnect in sync without being sent what they already hold.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readFile, rename, rm, writeFile } from "node:fs/promises";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import pino from "pino";
import { SERVICES_NOT_HELD } from "../src/api/index.js";
import { loadConfig } from "../src/config/index.js";
import { ControlPlane, Registry, TokenFileAttestor, tokenDigest } from "../src/controlplane/index.js";
import { newKek, parseKek } from "../src/identity/index.js";
import { FakeProxy } from "./controlplane-fakeproxy.js";

const quiet = pino({ level: "silent" });
const NAMES = ["a", "b", "c", "d"];

function entries(): string {
  return NAMES.map(
    (n) => `apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: ${n}, namespace: team, labels: { app: ${n} } }
spec: { address: 198.18.0.${10 + NAMES.indexOf(n)}, serviceAccount: ${n}, labels: { app: ${n} } }
---
apiVersion: v1
kind: Service
metadata: { name: ${n}, namespace: team }
spec: { selector: { app: ${n} }, clusterIP: 198.19.0.${10 + NAMES.indexOf(n)}, ports: [{ port: 80, targetPort: 8080 }] }
`,
  ).join("---\n");
}

function policy(app: string, from: string[], name = `${app}-policy`): string {
  return `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: ${name}, namespace: team }
spec:
  selector: { matchLabels: { app: ${app} } }
  rules: [{ from: [{ source: { principals: [${from.map((f) => `"cluster.local/ns/team/sa/${f}"`).join(", ")}] } }] }]
`;
}

/**
 * Replaces a file the way editors do: write a temporary file, rename it over. The temporary name is
 * the same each time, as with vim: Node 20's recursive fs.watch on Linux misses every such write
 * after the first (regression guard).
 */
async function renameWrite(file: string, text: string): Promise<void> {
  const tmp = `${file}.swp`;
  await writeFile(tmp, text);
  await rename(tmp, file);
}

function get(port: number, path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    request({ host: "127.0.0.1", port, path }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => {
        body += d;
      });
      res.on("end", () => resolve(body));
    })
      .on("error", reject)
      .end();
  });
}

function metric(text: string, name: string): number {
  const line = text.split("\n").find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
  return Number(line?.split(" ").at(-1) ?? Number.NaN);
}

interface Fixture {
  dir: string;
  store: string;
  tokens: Map<string, string>;
  caStore: string;
  kek: Buffer;
}

async function fixture(): Promise<Fixture> {
  const dir = await mkdtemp(join(tmpdir(), "zmesh-cplive-"));
  const store = join(dir, "store");
  await mkdir(store);
  await writeFile(join(store, "entries.yaml"), entries());
  await writeFile(join(store, "policies.yaml"), policy("a", ["b"]));
  const tokens = new Map<string, string>();
  const table: Record<string, { namespace: string; entry: string }> = {};
  for (const n of NAMES) {
    const t = randomBytes(24).toString("base64url");
    tokens.set(n, t);
    table[tokenDigest(t)] = { namespace: "team", entry: n };
  }
  await writeFile(join(dir, "tokens.json"), JSON.stringify(table));
  return { dir, store, tokens, caStore: join(dir, "ca.json"), kek: parseKek(newKek(), "test") };
}

function startCp(f: Fixture, port = 0, more: Partial<Parameters<typeof ControlPlane.start>[0]> = {}) {
  return ControlPlane.start({
    configPaths: [f.store],
    listen: `127.0.0.1:${port}`,
    attestor: new TokenFileAttestor(join(f.dir, "tokens.json")),
    trustDomain: "cluster.local",
    rootNamespace: "zmesh-system",
    caStore: f.caStore,
    kek: f.kek,
    debugListen: "127.0.0.1:0",
    log: quiet,
    ...more,
  });
}

function proxies(f: Fixture, cp: ControlPlane, opts: { nack?: string } = {}): Map<string, FakeProxy> {
  const out = new Map<string, FakeProxy>();
  for (const n of NAMES) {
    out.set(
      n,
      new FakeProxy({
        address: `127.0.0.1:${cp.port}`,
        trustBundlePem: cp.ca.trustBundlePem(),
        credential: f.tokens.get(n)!,
        parse: true,
        keep: true,
        ...(opts.nack && n === "d" ? { nack: () => opts.nack } : {}),
      }).start(),
    );
  }
  return out;
}

async function allReceived(ps: Map<string, FakeProxy>): Promise<void> {
  await Promise.all([...ps.values()].map((p) => p.until(() => p.received.length > 0)));
}

describe("control plane: live changes", () => {
  let f: Fixture;
  let cp: ControlPlane;
  let ps: Map<string, FakeProxy>;

  before(async () => {
    f = await fixture();
    cp = await startCp(f);
    ps = proxies(f, cp, { nack: "snapshot policies[0]: this fake proxy refuses everything" });
    await allReceived(ps);
  });

  after(async () => {
    for (const p of ps.values()) p.close();
    await cp.close();
    await rm(f.dir, { recursive: true, force: true });
  });

  it("a policy change reaches its proxy within 100 ms of the write, and only that proxy", async (t) => {
    const a = ps.get("a")!;
    const b = ps.get("b")!;
    const latencies: number[] = [];
    for (let i = 0; i < 5; i++) {
      const count = { a: a.received.length, b: b.received.length };
      const t0 = performance.now();
      await renameWrite(join(f.store, "policies.yaml"), policy("a", i % 2 === 0 ? ["b", "c"] : ["b"]));
      await a.until(() => a.received.length > count.a, 2_000);
      latencies.push(a.received.at(-1)!.at - t0);
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(b.received.length, count.b, "b's snapshot did not change: nothing is pushed to it");
    }
    latencies.sort((x, y) => x - y);
    t.diagnostic(`store write to push: ${latencies.map((l) => l.toFixed(1)).join(", ")} ms`);
    assert.ok(
      latencies[2]! < 100,
      `median store-write-to-push ${latencies[2]!.toFixed(1)} ms (all: ${latencies.map((l) => l.toFixed(0)).join(", ")})`,
    );
    assert.ok(latencies[4]! < 250, `slowest store-write-to-push ${latencies[4]!.toFixed(1)} ms`);
  });

  it("each proxy gets exactly the registry's snapshot (the shared-services shortcut changes only the version)", async () => {
    await writeFile(
      join(f.store, "peer.yaml"),
      "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: b-metrics, namespace: team}\nspec: {selector: {matchLabels: {app: b}}, portLevelMtls: {9090: {mode: PERMISSIVE}}}\n",
    );
    const b = ps.get("b")!;
    await b.until(() => (b.last ?? "").includes("b-metrics"), 2_000);
    const registry = new Registry(await loadConfig([f.store]), {
      trustDomain: "cluster.local",
      rootNamespace: "zmesh-system",
    });
    const ca = { trustBundlePem: cp.ca.trustBundlePem(), issuerId: cp.ca.issuerId() };
    for (const n of ["a", "b", "c"]) {
      const got = JSON.parse(ps.get(n)!.last!) as Record<string, unknown>;
      const want = registry.snapshotFor(registry.entry("team", n)!, ca) as unknown as Record<string, unknown>;
      assert.deepEqual({ ...got, version: "" }, { ...want, version: "" }, n);
    }
    await rm(join(f.store, "peer.yaml"));
    await b.until(() => !(b.last ?? "").includes("b-metrics"), 2_000);
  });

  it("a push whose services did not change leaves them out and the proxy keeps its list; a Service change sends it", async () => {
    const a = ps.get("a")!;
    const services = () =>
      (JSON.parse(a.last!) as { services: { name: string }[] }).services.map((s) => s.name);
    let n = a.received.length;
    await renameWrite(join(f.store, "policies.yaml"), policy("a", ["c"]));
    await a.until(() => a.received.length > n, 2_000);
    const light = a.received.at(-1)!;
    assert.equal(light.withServices, false, "a policy change does not resend the services");
    assert.deepEqual(services(), ["a", "b", "c", "d"], "the proxy keeps the list it held");
    n = a.received.length;
    const extra = join(f.store, "extra-service.yaml");
    await writeFile(
      extra,
      "apiVersion: v1\nkind: Service\nmetadata: { name: e, namespace: team }\nspec: { selector: { app: a }, clusterIP: 198.19.0.20, ports: [{ port: 81, targetPort: 8080 }] }\n",
    );
    await a.until(() => a.received.length > n, 2_000);
    assert.equal(a.received.at(-1)!.withServices, true, "a Service change sends the list");
    assert.ok(a.received.at(-1)!.bytes > light.bytes);
    assert.deepEqual(services(), ["a", "b", "c", "d", "e"]);
    n = a.received.length;
    await rm(extra);
    await a.until(() => a.received.length > n && !services().includes("e"), 2_000);
    await renameWrite(join(f.store, "policies.yaml"), policy("a", ["b"]));
    await a.until(() => JSON.stringify(JSON.parse(a.last!).policies).includes('sa/b"'), 2_000);
  });

  it("a proxy that NACKs a push for lacking the services it left out gets the whole snapshot, not counted as a rejection", async () => {
    const m0 = metric(await get(cp.debugPort, "/metrics"), 'pilot_total_xds_rejects{type="snapshot"}');
    let refused = 0;
    const c = new FakeProxy({
      address: `127.0.0.1:${cp.port}`,
      trustBundlePem: cp.ca.trustBundlePem(),
      credential: f.tokens.get("c")!,
      keep: true,
      nack: (push) => {
        if ("services" in JSON.parse(push.snapshotJson) || refused > 0) return undefined;
        refused++;
        return `${SERVICES_NOT_HELD}, but this proxy lost them`;
      },
    }).start();
    try {
      await c.until(() => c.applied !== "", 2_000);
      const n = c.received.length;
      await renameWrite(join(f.store, "policies.yaml"), policy("c", ["a"], "c-extra"));
      await c.until(() => c.received.length >= n + 2 && c.applied === c.received.at(-1)!.version, 3_000);
      assert.equal(refused, 1);
      assert.deepEqual(
        c.received.slice(n).map((r) => r.withServices),
        [false, true],
        "the light push, then the whole snapshot",
      );
      const m1 = metric(await get(cp.debugPort, "/metrics"), 'pilot_total_xds_rejects{type="snapshot"}');
      assert.equal(m1, m0);
    } finally {
      c.close();
      await renameWrite(join(f.store, "policies.yaml"), policy("a", ["b"]));
    }
  });

  it("a burst of writes is debounced into one push", async () => {
    const a = ps.get("a")!;
    const before = a.received.length;
    for (let i = 0; i < 6; i++) {
      await writeFile(join(f.store, "policies.yaml"), policy("a", ["b", NAMES[i % 4]!]));
      await new Promise((r) => setTimeout(r, 5));
    }
    await a.until(() => a.received.length > before, 2_000);
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(a.received.length - before <= 2, `${a.received.length - before} pushes for one burst`);
    assert.equal(cp.status().proxies.find((p) => p.proxy === "team/a")?.inSync, true);
  });

  it("an identical rewrite, or a touch, pushes nothing and counts as unchanged", async () => {
    const text = await readFile(join(f.store, "policies.yaml"), "utf8");
    const pushes = [...ps.values()].map((p) => p.received.length);
    const m0 = await get(cp.debugPort, "/metrics");
    await renameWrite(join(f.store, "policies.yaml"), text);
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(
      [...ps.values()].map((p) => p.received.length),
      pushes,
    );
    const m1 = await get(cp.debugPort, "/metrics");
    assert.ok(
      metric(m1, 'zmesh_config_changes_total{result="unchanged"}') >
        metric(m0, 'zmesh_config_changes_total{result="unchanged"}'),
    );
  });

  it("a bad change is rejected with its reason; every proxy keeps its version; fixing it clears it", async () => {
    const versions = [...ps.values()].map((p) => p.applied);
    const generation = cp.status().config.generation;
    const good = await readFile(join(f.store, "policies.yaml"), "utf8");
    await renameWrite(
      join(f.store, "policies.yaml"),
      `${good}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: team}\nspec: {action: MAYBE}\n`,
    );
    const deadline = Date.now() + 2_000;
    while (!cp.status().config.lastRejection && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 10));
    const s = cp.status();
    assert.match(
      s.config.lastRejection?.reason ?? "",
      /policies\.yaml:\d+: AuthorizationPolicy team\/bad: spec\.action/,
    );
    assert.equal(s.config.generation, generation);
    assert.deepEqual(
      [...ps.values()].map((p) => p.applied),
      versions,
    );
    const m = await get(cp.debugPort, "/metrics");
    assert.ok(metric(m, 'zmesh_config_changes_total{result="rejected"}') >= 1);
    await renameWrite(join(f.store, "policies.yaml"), good);
    const deadline2 = Date.now() + 2_000;
    while (cp.status().config.lastRejection && Date.now() < deadline2)
      await new Promise((r) => setTimeout(r, 10));
    assert.equal(cp.status().config.lastRejection, null);
  });

  it("a NACK is recorded with the proxy's reason and counted", async () => {
    const s = cp.status().proxies.find((p) => p.proxy === "team/d");
    assert.match(s?.lastNack?.reason ?? "", /refuses everything/);
    assert.equal(s?.inSync, false);
    assert.equal(ps.get("d")!.applied, "");
    const m = await get(cp.debugPort, "/metrics");
    assert.ok(metric(m, 'pilot_total_xds_rejects{type="snapshot"}') >= 1);
  });

  it("metrics: convergence time per ACK, pushes and connected proxies, with Istio's names", async () => {
    const m = await get(cp.debugPort, "/metrics");
    assert.equal(metric(m, "pilot_xds"), 4);
    assert.ok(
      metric(m, 'pilot_xds_pushes{type="snapshot"}') +
        metric(m, 'pilot_xds_pushes{type="snapshot_without_services"}') >=
        9,
    );
    const count = metric(m, "pilot_proxy_convergence_time_count");
    assert.ok(count >= 5, `${count} convergence observations`);
    assert.ok(metric(m, "pilot_proxy_convergence_time_sum") / count < 0.5);
    assert.match(await get(cp.debugPort, "/"), /GET {2}\/metrics/);
  });
});

describe("control plane: restart", () => {
  it("loses nothing: the proxies trust the new process, resync without a push, and get the next change", async () => {
    const f = await fixture();
    const cp1 = await startCp(f);
    const port = cp1.port;
    const bundle = cp1.ca.trustBundlePem();
    const ps = proxies(f, cp1);
    try {
      await allReceived(ps);
      const held = new Map([...ps].map(([n, p]) => [n, p.applied]));
      await cp1.close();
      await new Promise((r) => setTimeout(r, 300));
      // While it is down, each proxy keeps what it holds.
      assert.deepEqual(new Map([...ps].map(([n, p]) => [n, p.applied])), held);
      const cp2 = await startCp(f, port);
      try {
        assert.equal(cp2.ca.trustBundlePem(), bundle, "the CA came back from its store");
        const deadline = Date.now() + 10_000;
        while (Date.now() < deadline) {
          const s = cp2.status();
          if (s.proxies.length === 4 && s.proxies.every((p) => p.inSync)) break;
          await new Promise((r) => setTimeout(r, 50));
        }
        const s = cp2.status();
        assert.equal(s.proxies.length, 4, "every proxy reconnected with its bootstrap token");
        assert.ok(s.proxies.every((p) => p.inSync && p.acked === held.get(p.proxy.split("/")[1]!)));
        const m2 = await cp2.metricsText();
        assert.equal(metric(m2, 'pilot_xds_pushes{type="snapshot"}'), 0, "nothing resent");
        assert.equal(metric(m2, 'pilot_xds_pushes{type="snapshot_without_services"}'), 0, "nothing resent");
        const a = ps.get("a")!;
        const n = a.received.length;
        await renameWrite(join(f.store, "policies.yaml"), policy("a", ["c"]));
        await a.until(() => a.received.length > n, 3_000);
        assert.notEqual(a.applied, held.get("a"));
        assert.equal(a.received.at(-1)!.withServices, false, "it resynced in sync: its services are known");
      } finally {
        await cp2.close();
      }
    } finally {
      for (const p of ps.values()) p.close();
      await rm(f.dir, { recursive: true, force: true });
    }
  });

  it("a store given as a file is still watched after an editor replaces it by rename", async () => {
    const f = await fixture();
    const file = join(f.dir, "all.yaml");
    await writeFile(file, `${entries()}---\n${policy("a", ["b"])}`);
    const cp = await startCp(f, 0, { configPaths: [file], debugListen: undefined });
    const ps = proxies(f, cp);
    try {
      await allReceived(ps);
      const a = ps.get("a")!;
      for (const from of [["c"], ["d"], ["b"]]) {
        const n = a.received.length;
        await renameWrite(file, `${entries()}---\n${policy("a", from)}`);
        await a.until(() => a.received.length > n, 2_000);
      }
    } finally {
      for (const p of ps.values()) p.close();
      await cp.close();
      await rm(f.dir, { recursive: true, force: true });
    }
  });
});
