// Running a mesh, end to end as root (mesh "zmops", the shop copied to a scratch directory): `up`
// is idempotent and reconciles, meshes run side by side, policies change live within a second,
// `status` and `get` show the mesh, the supervisor restarts a killed app, proxy and control plane
// (enforcement never stops, nothing is plaintext, proxies resync), bad input to every command is
// one sentence that changes nothing, and `down` after kill -9 of every zmesh process leaves
// nothing. Skips, visibly, when not root.

import assert from "node:assert/strict";
import { existsSync, readdirSync } from "node:fs";
import { cp, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  addUnmeshed,
  applyResources,
  controlPlaneAdmin,
  deleteResources,
  down,
  exec,
  findInstance,
  leftovers,
  listNamespaces,
  loadState,
  type MeshState,
  meshStatus,
  readProcesses,
  startCapture,
  stateRoot,
  up,
  zmeshPids,
} from "../../src/runtime/index.js";
import {
  downScratchShop,
  eventually,
  NEEDS_ROOT,
  SHOP_EXAMPLE,
  upScratchShop,
  zmeshCli,
} from "../harness/netns.js";

const MESH = "zmops";
const SIDE = "zmops2";

const ALLOW_FRONTEND_TO_PAYMENTS = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: payments-from-frontend, namespace: shop }
spec:
  selector: { matchLabels: { app: payments } }
  rules:
    - from: [{ source: { principals: ["cluster.local/ns/shop/sa/frontend"] } }]
      to: [{ operation: { methods: ["POST"], paths: ["/charge"] } }]
`;

async function status(state: MeshState, who: string, method: string, url: string): Promise<string> {
  const r = await exec(
    state,
    who,
    ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3", "-X", method, url],
    { timeoutMs: 10_000 },
  );
  return r.stdout.trim();
}

async function procs(mesh: string) {
  return (await readProcesses(join(stateRoot(), mesh)))!.procs;
}

/** Waits until every process of the mesh is ready and every proxy is in sync with the control plane. */
async function settled(mesh: string): Promise<void> {
  await eventually(
    `mesh ${mesh} settled`,
    async () => ({ p: await procs(mesh), s: await meshStatus(mesh) }),
    ({ p, s }) =>
      Object.values(p).every((r) => r.ready) &&
      s.controlPlane.answer?.proxies.length === 4 &&
      s.controlPlane.answer.proxies.every((x) => x.inSync),
  );
}

describe("operating a mesh", {
  skip: NEEDS_ROOT,
}, () => {
  let dir: string;
  let state: MeshState;

  before(async () => {
    ({ dir, state } = await upScratchShop(MESH, "zmesh-ops-"));
  });

  after(async () => {
    await downScratchShop(dir, SIDE, MESH);
  });

  it("up brings every workload up with its proxy first, all supervised", async () => {
    const p = await procs(MESH);
    assert.equal(Object.keys(p).length, 1 + 2 * 4);
    for (const r of Object.values(p)) {
      assert.ok(r.ready && r.pid > 0, JSON.stringify(r));
      assert.equal(r.restarts, 0);
    }
    const appsAfterProxies = state.instances.every(
      (i) =>
        Date.parse(p[`shop/${i.name}:app`]!.startedAt) >= Date.parse(p[`shop/${i.name}:proxy`]!.startedAt),
    );
    assert.ok(appsAfterProxies, "each app starts after its proxy");
    assert.equal(await status(state, "frontend", "GET", "http://localhost:8080/"), "200");
  });

  it("up again on the same directory changes nothing: same processes, no restarts", async () => {
    const before = await procs(MESH);
    const lines: string[] = [];
    const again = await up(dir, { name: MESH, log: (l) => lines.push(l) });
    assert.match(lines.join("\n"), /nothing to change/);
    assert.deepEqual(await procs(MESH), before);
    assert.equal(again.net.block, state.net.block);
  });

  it("up again after a policy edit in the directory applies it live, without a restart", async () => {
    const before = await procs(MESH);
    await writeFile(join(dir, "extra-policy.yaml"), ALLOW_FRONTEND_TO_PAYMENTS);
    const lines: string[] = [];
    try {
      await up(dir, { name: MESH, log: (l) => lines.push(l) });
      assert.match(lines.join("\n"), /AuthorizationPolicy shop\/payments-from-frontend created/);
      await eventually(
        "frontend may charge",
        () => status(state, "frontend", "POST", "http://payments/charge"),
        (s) => s === "200",
        3_000,
      );
    } finally {
      await rm(join(dir, "extra-policy.yaml"));
    }
    await up(dir, { name: MESH, log: (l) => lines.push(l) });
    assert.match(lines.join("\n"), /payments-from-frontend deleted\n {2}in force: 4\/4 proxies ACKed/);
    assert.equal(await status(state, "frontend", "POST", "http://payments/charge"), "403");
    assert.deepEqual(
      Object.values(await procs(MESH)).map((r) => r.pid),
      Object.values(before).map((r) => r.pid),
    );
  });

  it("a second mesh runs side by side under another name, on its own addresses", async () => {
    const side = await up(dir, { name: SIDE });
    try {
      assert.notEqual(side.net.block, state.net.block);
      assert.notEqual(side.net.gateway, state.net.gateway);
      assert.equal(await status(side, "frontend", "GET", "http://localhost:8080/"), "200");
      assert.equal(await status(state, "frontend", "GET", "http://localhost:8080/"), "200");
    } finally {
      await down(SIDE, { purge: true });
    }
    assert.deepEqual(await leftovers(SIDE), []);
    assert.equal(await status(state, "frontend", "GET", "http://catalog/items"), "200");
  });

  it("a live policy change is enforced within a second, and so is its deletion", async (t) => {
    const file = join(dir, "..", `zmops-allow-${process.pid}.yaml`);
    await writeFile(file, ALLOW_FRONTEND_TO_PAYMENTS);
    try {
      assert.equal(await status(state, "frontend", "POST", "http://payments/charge"), "403");
      const t0 = Date.now();
      const applied = await applyResources(state, [file]);
      await eventually(
        "allowed",
        () => status(state, "frontend", "POST", "http://payments/charge"),
        (s) => s === "200",
        2_000,
      );
      const allowMs = Date.now() - t0;
      assert.deepEqual(applied.change.created, ["AuthorizationPolicy shop/payments-from-frontend"]);
      assert.equal(applied.rollout?.inSync, 4);
      const t1 = Date.now();
      await deleteResources(state, [file]);
      await eventually(
        "denied again",
        () => status(state, "frontend", "POST", "http://payments/charge"),
        (s) => s === "403",
        2_000,
      );
      const denyMs = Date.now() - t1;
      t.diagnostic(`apply to first allowed call: ${allowMs} ms; delete to first denied call: ${denyMs} ms`);
      assert.ok(allowMs < 1_000, `apply took ${allowMs} ms to be enforced`);
      assert.ok(denyMs < 1_000, `delete took ${denyMs} ms to be enforced`);
    } finally {
      await rm(file, { force: true });
    }
  });

  it("status shows each workload's identity, certificate, mTLS mode, readiness, config version and restarts", async () => {
    const text = await zmeshCli(["status", "--name", MESH]);
    assert.equal(text.code, 0, text.stderr);
    for (const w of ["frontend", "catalog", "orders", "payments"]) {
      const row = text.stdout.split("\n").find((l) => l.startsWith(`shop/${w} `));
      assert.ok(row, `a row for ${w}:\n${text.stdout}`);
      assert.match(
        row,
        new RegExp(
          `spiffe://cluster\\.local/ns/shop/sa/${w}\\s+in \\d+h\\d+m\\s+STRICT\\s+ready\\s+[0-9a-f]{12} \\(ACKed\\)\\s+proxy 0, app 0`,
        ),
      );
    }
    assert.match(text.stdout, /config generation \d+ .* 4\/4 proxies in sync/);
    const json = JSON.parse((await zmeshCli(["status", "--name", MESH, "-o", "json"])).stdout) as Awaited<
      ReturnType<typeof meshStatus>
    >;
    assert.equal(json.workloads.length, 4);
    assert.ok(json.workloads.every((w) => w.proxyReady && w.config?.inSync && w.certExpires));
    assert.equal(json.supervisor.running, true);
    // A change that fails validation (written straight into the store) is shown with its reason.
    const broken = join(state.stateDir, "store", "broken.yaml");
    await writeFile(
      broken,
      "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: broken, namespace: shop}\nspec: {action: MAYBE}\n",
    );
    try {
      const shown = await eventually(
        "the rejection in zmesh status",
        async () => (await zmeshCli(["status", "--name", MESH])).stdout,
        (out) => out.includes("REJECTED"),
        3_000,
      );
      assert.match(
        shown,
        /last change REJECTED at \S+: .*broken\.yaml:\d+: AuthorizationPolicy shop\/broken: spec\.action/,
      );
      assert.match(shown, /4\/4 proxies in sync/);
    } finally {
      await rm(broken);
    }
    await eventually(
      "the rejection cleared",
      async () => (await zmeshCli(["status", "--name", MESH])).stdout,
      (out) => !out.includes("REJECTED"),
      3_000,
    );
    // The mTLS column follows the PeerAuthentications in force.
    const file = join(dir, "..", `zmops-pa-${process.pid}.yaml`);
    await writeFile(
      file,
      "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: payments-metrics, namespace: shop}\nspec: {selector: {matchLabels: {app: payments}}, portLevelMtls: {8080: {mode: PERMISSIVE}}}\n",
    );
    try {
      await applyResources(state, [file]);
      const row = (await meshStatus(MESH)).workloads.find((w) => w.workload === "shop/payments");
      assert.equal(row?.mtls, "PERMISSIVE");
      await deleteResources(state, [file]);
      assert.equal(
        (await meshStatus(MESH)).workloads.find((w) => w.workload === "shop/payments")?.mtls,
        "STRICT",
      );
    } finally {
      await rm(file, { force: true });
    }
  });

  it("get lists and shows resources from the store", async () => {
    const policies = await zmeshCli(["get", "policies", "--name", MESH]);
    assert.equal(policies.code, 0, policies.stderr);
    assert.match(policies.stdout, /^NAMESPACE\s+NAME\s+ACTION\s+SELECTOR\s+RULES$/m);
    assert.match(policies.stdout, /^shop\s+payments-from-orders\s+ALLOW\s+app=payments\s+1$/m);
    const svc = JSON.parse(
      (await zmeshCli(["get", "svc", "catalog", "-o", "json", "--name", MESH])).stdout,
    ) as {
      spec: { clusterIP: string };
    };
    assert.equal(svc.spec.clusterIP, state.services.find((s) => s.name === "catalog")?.vip);
    const yaml = await zmeshCli([
      "get",
      "authorizationpolicy",
      "shop/catalog-readers",
      "-o",
      "yaml",
      "--name",
      MESH,
    ]);
    assert.match(yaml.stdout, /kind: AuthorizationPolicy\n/);
    assert.match(yaml.stdout, /name: catalog-readers/);
    const all = await zmeshCli(["get", "all", "--name", MESH]);
    for (const k of ["Workload:", "Service:", "AuthorizationPolicy:", "WorkloadEntry:"])
      assert.ok(all.stdout.includes(k), k);
    const logs = await zmeshCli(["logs", "payments", "--proxy", "--tail", "3", "--name", MESH]);
    assert.equal(logs.stdout.trim().split("\n").length, 3);
  });

  it("a killed app and a killed proxy are restarted; traffic works again; restarts are counted", async () => {
    const catalog = findInstance(await loadState(MESH), "catalog");
    process.kill(catalog.appPid, "SIGKILL");
    await eventually(
      "the catalog app back",
      () => status(state, "frontend", "GET", "http://catalog/items"),
      (s) => s === "200",
    );
    const payments = findInstance(await loadState(MESH), "payments");
    process.kill(payments.proxyPid, "SIGKILL");
    await eventually(
      "the chain through payments back",
      async () =>
        (await exec(state, "frontend", ["curl", "-s", "--max-time", "3", "http://localhost:8080/"])).stdout,
      (body) => body.includes('"charge":200'),
    );
    const p = await procs(MESH);
    assert.equal(p["shop/catalog:app"]?.restarts, 1);
    assert.equal(p["shop/payments:proxy"]?.restarts, 1);
    assert.notEqual(p["shop/payments:proxy"]?.pid, payments.proxyPid);
    assert.equal(p["shop/payments:proxy"]?.lastExit?.signal, "SIGKILL");
    const s = await meshStatus(MESH);
    const row = (w: string) => s.workloads.find((x) => x.workload === `shop/${w}`)!;
    assert.deepEqual(row("catalog").restarts, { proxy: 0, app: 1 });
    assert.deepEqual(row("payments").restarts, { proxy: 1, app: 0 });
    // Still denied what the policies deny, through the new proxy.
    assert.equal(await status(state, "frontend", "POST", "http://payments/charge"), "403");
  });

  it("the control plane killed under traffic: allowed calls keep working, denied stay denied, no plaintext; proxies resync", async () => {
    await settled(MESH);
    const bundle = (await controlPlaneAdmin(state, "GET", "/bundle")).body;
    await addUnmeshed(state, "intruder");
    const stopCapture = await startCapture(state);
    const p0 = await procs(MESH);
    const supervisor = (await readProcesses(state.stateDir))!.supervisor.pid;
    const loop = (what: string, method: string, url: string) =>
      exec(
        state,
        "frontend",
        [
          "sh",
          "-c",
          `for i in $(seq 40); do curl -s -o /dev/null -w '%{http_code}\\n' --max-time 3 -X ${method} ${url}; sleep 0.1; done`,
        ],
        { timeoutMs: 60_000 },
      ).then((r) => ({ what, codes: r.stdout.trim().split("\n") }));
    const loops = [
      loop("allowed", "GET", "http://catalog/items"),
      loop("denied", "POST", "http://payments/charge"),
    ];
    // Hold the supervisor so the control plane stays down for a while, then let it restart it.
    process.kill(supervisor, "SIGSTOP");
    try {
      process.kill(p0["controlplane"]!.pid, "SIGKILL");
      await new Promise((r) => setTimeout(r, 2_000));
      assert.equal(await status(state, "frontend", "GET", "http://catalog/items"), "200");
      assert.equal(await status(state, "frontend", "POST", "http://payments/charge"), "403");
    } finally {
      process.kill(supervisor, "SIGCONT");
    }
    const results = await Promise.all(loops);
    const payments = findInstance(state, "payments");
    await exec(state, "intruder", [
      "curl",
      "-s",
      "--max-time",
      "2",
      "-X",
      "POST",
      `http://${payments.address}:8080/charge?probe=wire`,
    ]);
    const report = await stopCapture();
    assert.deepEqual([...new Set(results[0]!.codes)], ["200"], "allowed calls kept working");
    assert.deepEqual([...new Set(results[1]!.codes)], ["403"], "denied calls stayed denied");
    assert.ok(
      report.tlsRecords > 0 && report.plaintextHttp.length > 0,
      "the capture saw TLS and the control probe",
    );
    assert.deepEqual(
      report.plaintextHttp.filter((l) => !l.includes("probe=wire")),
      [],
      "no plaintext between workloads",
    );
    const answer = await eventually(
      "every proxy back in sync with the new control plane",
      async () => (await meshStatus(MESH)).controlPlane.answer,
      (a) => a !== undefined && a.proxies.length === 4 && a.proxies.every((x) => x.inSync),
    );
    assert.notEqual(answer!.pid, p0["controlplane"]!.pid);
    assert.equal((await procs(MESH))["controlplane"]?.restarts, 1);
    assert.equal(
      (await controlPlaneAdmin(state, "GET", "/bundle")).body,
      bundle,
      "the CA survived the restart",
    );
    // And it still takes changes.
    const file = join(dir, "..", `zmops-allow2-${process.pid}.yaml`);
    await writeFile(file, ALLOW_FRONTEND_TO_PAYMENTS);
    try {
      await applyResources(state, [file]);
      await eventually(
        "allowed after the restart",
        () => status(state, "frontend", "POST", "http://payments/charge"),
        (s) => s === "200",
        3_000,
      );
      await deleteResources(state, [file]);
    } finally {
      await rm(file, { force: true });
    }
  });

  it("bad input to every command is one sentence with a code, and changes nothing", async () => {
    await settled(MESH);
    const before = { procs: await procs(MESH), store: (await meshStatus(MESH)).controlPlane.answer!.config };
    const bad = join(dir, "..", `zmops-bad-${process.pid}`);
    await cp(dir, bad, { recursive: true });
    await writeFile(
      join(bad, "broken-policy.yaml"),
      "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: broken, namespace: shop}\nspec: {action: MAYBE}\n",
    );
    const badPolicy = join(bad, "broken-policy.yaml");
    const changedWorkload = join(bad, "workloads2.yaml");
    await writeFile(
      changedWorkload,
      (await readFile(join(dir, "workloads.yaml"), "utf8")).replace(
        "serviceAccount: payments",
        "serviceAccount: Not A Label",
      ),
    );
    const missing = join(bad, "nope.yaml");
    const absent = join(bad, "absent-policy.yaml");
    await writeFile(absent, ALLOW_FRONTEND_TO_PAYMENTS.replace("payments-from-frontend", "never-applied"));
    const cases: [string[], RegExp, string][] = [
      [["up", missing], /nope\.yaml: no such file or directory/, "ZMESH_CONFIG_PARSE"],
      [["up", SHOP_EXAMPLE, "--name", MESH], /already up from/, "ZMESH_USAGE"],
      [["up", dir, "--name", "Bad!"], /mesh name "Bad!" is not valid/, "ZMESH_USAGE"],
      [["down", "--name", "Bad!"], /is not valid/, "ZMESH_USAGE"],
      [["exec", "--name", MESH, "nobody", "--", "true"], /no workload "nobody"/, "ZMESH_WORKLOAD_NOT_FOUND"],
      [
        ["exec", "--name", "nomesh", "frontend", "--", "true"],
        /no mesh named "nomesh"/,
        "ZMESH_MESH_NOT_FOUND",
      ],
      [["status", "--name", MESH, "-o", "xml"], /-o xml is not a format/, "ZMESH_USAGE"],
      [["status", "--name", "nomesh"], /no mesh named "nomesh"/, "ZMESH_MESH_NOT_FOUND"],
      [
        ["apply", "--name", MESH, "-f", badPolicy],
        /broken-policy\.yaml:\d+: AuthorizationPolicy shop\/broken: spec\.action/,
        "ZMESH_CONFIG_INVALID",
      ],
      [
        ["apply", "--name", MESH, "-f", changedWorkload],
        /Workload shop\/payments: spec\.serviceAccount: must be a DNS label/,
        "ZMESH_CONFIG_INVALID",
      ],
      [["apply", "--name", MESH, "-f", missing], /no such file or directory/, "ZMESH_CONFIG_PARSE"],
      [
        ["delete", "--name", MESH, "-f", absent],
        /never-applied is not in mesh zmops; nothing was deleted/,
        "ZMESH_RESOURCE_NOT_FOUND",
      ],
      [
        ["delete", "--name", MESH, "-f", join(dir, "workloads.yaml")],
        /would leave mesh zmops without Workloads; nothing was changed/,
        "ZMESH_USAGE",
      ],
      [["get", "gizmos", "--name", MESH], /"gizmos" is not a kind/, "ZMESH_USAGE"],
      [
        ["get", "policies", "nope", "--name", MESH],
        /no AuthorizationPolicy named "nope"/,
        "ZMESH_RESOURCE_NOT_FOUND",
      ],
      [["get", "policies", "-o", "xml", "--name", MESH], /-o xml is not a format/, "ZMESH_USAGE"],
      [["logs", "nobody", "--name", MESH], /no workload "nobody"/, "ZMESH_WORKLOAD_NOT_FOUND"],
      [["logs", "payments", "--tail", "x", "--name", MESH], /--tail x is not a number/, "ZMESH_USAGE"],
    ];
    try {
      for (const [args, msg, code] of cases) {
        const r = await zmeshCli(args);
        const what = `zmesh ${args.join(" ")}`;
        assert.equal(r.code, 1, `${what}: exit ${r.code}\n${r.stdout}${r.stderr}`);
        assert.equal(r.stdout, "", `${what}: nothing on stdout`);
        assert.equal(r.stderr.trim().split("\n").length, 1, `${what}: one line\n${r.stderr}`);
        assert.match(r.stderr, /^zmesh: .+ \[ZMESH_[A-Z_]+\]\n$/, what);
        assert.match(r.stderr, msg, what);
        assert.ok(r.stderr.includes(`[${code}]`), `${what}: ${r.stderr}`);
      }
      const asNobody = await zmeshCli(["status", "--name", MESH], { asUid: 65534 });
      assert.match(asNobody.stderr, /^zmesh: .*needs root.*\[ZMESH_NOT_ROOT\]\n$/);
      for (const cmd of [
        ["up", dir],
        ["down"],
        ["apply", "-f", badPolicy],
        ["delete", "-f", absent],
        ["get", "all"],
        ["logs", "x"],
        ["exec", "x", "--", "true"],
      ]) {
        const r = await zmeshCli([...cmd, "--name", MESH], { asUid: 65534 });
        assert.match(r.stderr, /\[ZMESH_NOT_ROOT\]/, cmd.join(" "));
      }
    } finally {
      await rm(bad, { recursive: true, force: true });
    }
    const now = { procs: await procs(MESH), store: (await meshStatus(MESH)).controlPlane.answer!.config };
    assert.deepEqual(now.store, before.store, "the control plane's config is as it was");
    assert.deepEqual(
      Object.values(now.procs).map((r) => r.pid),
      Object.values(before.procs).map((r) => r.pid),
      "no process was touched",
    );
  });

  it("down after kill -9 of every zmesh process leaves nothing behind", async () => {
    const s = await loadState(MESH);
    const netns = s.instances.map((i) => i.netns);
    const apps = s.instances.map((i) => i.appPid);
    const pids = zmeshPids(MESH);
    assert.ok(pids.length >= 6, `supervisor, control plane and proxies: ${pids.length}`);
    for (const p of pids) process.kill(p, "SIGKILL");
    await new Promise((r) => setTimeout(r, 200));
    await down(MESH, { purge: true });
    assert.deepEqual(await leftovers(MESH), []);
    assert.deepEqual(zmeshPids(MESH), []);
    assert.deepEqual(await listNamespaces(MESH), []);
    for (const p of [...pids, ...apps]) assert.equal(existsSync(`/proc/${p}`), false, `pid ${p} still runs`);
    for (const ns of netns) assert.equal(existsSync(`/etc/netns/${ns}`), false, ns);
    const etc = existsSync("/etc/netns") ? readdirSync("/etc/netns") : [];
    assert.deepEqual(
      etc.filter((n) => n.startsWith(`zm-${MESH}-`)),
      [],
    );
    assert.equal(existsSync(join(stateRoot(), MESH)), false);
  });
});
