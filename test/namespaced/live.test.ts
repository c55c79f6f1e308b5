// Workloads and Services changed on a running mesh, end to end as root (mesh "zmlive", the shop
// copied to a scratch directory): `zmesh apply -f` of a new Workload and Service starts its
// namespace, proxy and app, and the others reach it by name over mTLS; a Service change reaches
// proxies and name resolution; `zmesh delete -f` stops and removes a Workload, and a deleted
// Service stops resolving; bad input is one sentence that changes nothing; a run-to-completion
// Workload (restartPolicy) completes: its proxy exits, nothing restarts; `down` leaves nothing.
// Skips, visibly, when not root.

import assert from "node:assert/strict";
import { cp, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  alive,
  down,
  exec,
  leftovers,
  listNamespaces,
  loadState,
  type MeshState,
  meshStatus,
  readProcesses,
  stateRoot,
} from "../../src/runtime/index.js";
import {
  downScratchShop,
  eventually,
  NEEDS_ROOT,
  SHOP_EXAMPLE,
  upScratchShop,
  zmeshCli,
} from "../harness/netns.js";

const MESH = "zmlive";

const INVENTORY = `apiVersion: zmesh.dev/v1
kind: Workload
metadata: { name: inventory, namespace: shop, labels: { app: inventory } }
spec:
  serviceAccount: inventory
  command: ["node", "app.js"]
  ports: [{ containerPort: 8080, name: http }]
---
apiVersion: v1
kind: Service
metadata: { name: inventory, namespace: shop }
spec:
  selector: { app: inventory }
  ports: [{ name: http, port: 80, targetPort: 8080 }]
`;

const INVENTORY_SERVICE_81 = `apiVersion: v1
kind: Service
metadata: { name: inventory, namespace: shop }
spec:
  selector: { app: inventory }
  ports: [{ name: http, port: 81, targetPort: 8080 }]
`;

/** curl from a workload: the HTTP code, or "000" with curl's exit code when it got no answer. */
async function curl(state: MeshState, from: string, url: string): Promise<string> {
  const r = await exec(
    state,
    from,
    ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3", url],
    { timeoutMs: 10_000 },
  );
  return r.code === 0 ? r.stdout.trim() : `${r.stdout.trim()} exit ${r.code}`;
}

const procs = async () => (await readProcesses(join(stateRoot(), MESH)))!.procs;

describe("Workloads and Services changed live", {
  skip: NEEDS_ROOT,
}, () => {
  let dir: string;
  let state: MeshState;

  before(async () => {
    ({ dir, state } = await upScratchShop(MESH, "zmesh-live-"));
  });

  after(async () => {
    await downScratchShop(dir, MESH);
  });

  it("apply of a new Workload and Service starts it; the others reach it by every name, over mTLS", async () => {
    const file = join(dir, "..", `zmlive-inventory-${process.pid}.yaml`);
    await writeFile(file, INVENTORY);
    try {
      const r = await zmeshCli(["apply", "--name", MESH, "-f", file]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /Workload shop\/inventory created/);
      assert.match(r.stdout, /Service shop\/inventory created/);
      assert.match(r.stdout, /instance shop\/inventory running/);
    } finally {
      await rm(file, { force: true });
    }
    state = await loadState(MESH);
    const inv = state.instances.find((i) => i.name === "inventory");
    assert.ok(inv, "the instance is in the mesh's layout");
    assert.ok((await listNamespaces(MESH)).includes(inv.netns), "its namespace exists");
    const p = await procs();
    assert.ok(p["shop/inventory:proxy"]?.ready && p["shop/inventory:app"]?.ready, "proxy and app run");
    // The app answers 404 to a path it has no route for: an answer from the app itself.
    for (const name of ["inventory", "inventory.shop", "inventory.shop.svc.cluster.local"])
      assert.equal(await curl(state, "catalog", `http://${name}/x`), "404", name);
    const log = await readFile(join(state.stateDir, "logs", "shop.inventory.app.log"), "utf8");
    assert.match(
      log,
      /By=spiffe:\/\/cluster\.local\/ns\/shop\/sa\/inventory.*URI=spiffe:\/\/cluster\.local\/ns\/shop\/sa\/catalog/,
    );
    // And it calls the others by name like any workload (catalog allows only frontend and orders).
    assert.equal(await curl(state, "inventory", "http://catalog/items"), "403");
    const s = await meshStatus(MESH);
    assert.ok(s.controlPlane.answer?.proxies.some((x) => x.proxy === "shop/inventory" && x.inSync));
  });

  it("a Service change reaches the proxies and keeps its VIP", async () => {
    const vip = state.services.find((s) => s.name === "inventory")!.vip;
    const file = join(dir, "..", `zmlive-svc-${process.pid}.yaml`);
    await writeFile(file, INVENTORY_SERVICE_81);
    try {
      const r = await zmeshCli(["apply", "--name", MESH, "-f", file]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /Service shop\/inventory configured/);
    } finally {
      await rm(file, { force: true });
    }
    state = await loadState(MESH);
    assert.equal(state.services.find((s) => s.name === "inventory")!.vip, vip);
    assert.equal(await curl(state, "catalog", "http://inventory:81/x"), "404");
    assert.notEqual(await curl(state, "catalog", "http://inventory:80/x"), "404", "port 80 is gone");
  });

  it("a changed Workload is replaced: with replicas 2, two new instances serve and the old one is gone", async () => {
    const old = state.instances.find((i) => i.name === "inventory")!;
    const file = join(dir, "..", `zmlive-replicas-${process.pid}.yaml`);
    await writeFile(
      file,
      INVENTORY.split("---")[0]!.replace(
        "serviceAccount: inventory",
        "serviceAccount: inventory\n  replicas: 2",
      ),
    );
    try {
      const r = await zmeshCli(["apply", "--name", MESH, "-f", file]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /Workload shop\/inventory configured/);
      assert.match(r.stdout, /instance shop\/inventory stopped and removed/);
      assert.match(r.stdout, /instance shop\/inventory-0 running/);
      assert.match(r.stdout, /instance shop\/inventory-1 running/);
    } finally {
      await rm(file, { force: true });
    }
    state = await loadState(MESH);
    assert.deepEqual(
      state.instances.filter((i) => i.workload === "inventory").map((i) => i.name),
      ["inventory-0", "inventory-1"],
    );
    assert.ok(![old.proxyPid, old.appPid].some((p) => alive(p)), "the old instance's processes are gone");
    assert.ok(!(await listNamespaces(MESH)).includes(old.netns));
    // Both endpoints answer through the one VIP (the balancer spreads calls over them).
    const seen = new Set<string>();
    for (let n = 0; n < 12 && seen.size < 2; n++) {
      assert.equal(await curl(state, "catalog", "http://inventory:81/x"), "404");
      for (const i of ["inventory-0", "inventory-1"]) {
        const log = await readFile(join(state.stateDir, "logs", `shop.${i}.app.log`), "utf8").catch(() => "");
        if (log.includes('"path":"/x"')) seen.add(i);
      }
    }
    assert.equal(seen.size, 2, `requests reached ${[...seen].join(", ")}`);
  });

  it("bad input is one sentence and changes nothing", async () => {
    const before = {
      procs: await procs(),
      digest: (await meshStatus(MESH)).controlPlane.answer!.config.digest,
    };
    const bad = join(dir, "..", `zmlive-bad-${process.pid}`);
    await rm(bad, { recursive: true, force: true });
    await cp(SHOP_EXAMPLE, bad, { recursive: true });
    const badPolicy = join(bad, "restart.yaml");
    await writeFile(
      badPolicy,
      INVENTORY.split("---")[0]!
        .replace("name: inventory,", "name: extra,")
        .replace("serviceAccount: inventory", "serviceAccount: inventory\n  restartPolicy: Sometimes"),
    );
    const absent = join(bad, "absent.yaml");
    await writeFile(absent, INVENTORY.split("---")[0]!.replace("name: inventory,", "name: ghost,"));
    const entry = join(bad, "entry.yaml");
    await writeFile(
      entry,
      "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: e, namespace: shop}\nspec: {address: 198.18.0.99, serviceAccount: e}\n",
    );
    const cases: [string[], RegExp, string][] = [
      [
        ["apply", "--name", MESH, "-f", badPolicy],
        /spec\.restartPolicy: must be Always/,
        "ZMESH_CONFIG_INVALID",
      ],
      [
        ["delete", "--name", MESH, "-f", absent],
        /Workload shop\/ghost is not in mesh zmlive/,
        "ZMESH_RESOURCE_NOT_FOUND",
      ],
      [
        ["apply", "--name", MESH, "-f", entry],
        /apply a zmesh\.dev\/v1 Workload instead/,
        "ZMESH_LIVE_UNSUPPORTED",
      ],
    ];
    try {
      for (const [args, msg, code] of cases) {
        const r = await zmeshCli(args);
        const what = `zmesh ${args.join(" ")}`;
        assert.equal(r.code, 1, `${what}: exit ${r.code}\n${r.stdout}${r.stderr}`);
        assert.equal(r.stdout, "", what);
        assert.equal(r.stderr.trim().split("\n").length, 1, `${what}: one line\n${r.stderr}`);
        assert.match(r.stderr, msg, what);
        assert.ok(r.stderr.includes(`[${code}`), `${what}: ${r.stderr}`);
      }
      // Deleting every Workload would leave an empty mesh: refused as a whole.
      await writeFile(
        join(bad, "all.yaml"),
        `${await readFile(join(SHOP_EXAMPLE, "workloads.yaml"), "utf8")}---\n${INVENTORY.split("---")[0]}`,
      );
      const r = await zmeshCli(["delete", "--name", MESH, "-f", join(bad, "all.yaml")]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /would leave mesh zmlive without Workloads; nothing was changed/);
    } finally {
      await rm(bad, { recursive: true, force: true });
    }
    const now = { procs: await procs(), digest: (await meshStatus(MESH)).controlPlane.answer!.config.digest };
    assert.equal(now.digest, before.digest, "the control plane's config is as it was");
    assert.deepEqual(
      Object.entries(now.procs).map(([k, r]) => [k, r.pid]),
      Object.entries(before.procs).map(([k, r]) => [k, r.pid]),
      "no process was touched",
    );
  });

  it("delete of the Workload stops and removes it; delete of its Service stops the name resolving", async () => {
    const invs = state.instances.filter((i) => i.workload === "inventory");
    assert.equal(invs.length, 2);
    const pids = invs.flatMap((i) => [i.proxyPid, i.appPid]);
    assert.ok(pids.every((p) => p > 0 && alive(p)));
    const file = join(dir, "..", `zmlive-del-${process.pid}.yaml`);
    await writeFile(file, INVENTORY.split("---")[0]!);
    try {
      const r = await zmeshCli(["delete", "--name", MESH, "-f", file]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /Workload shop\/inventory deleted/);
      assert.match(r.stdout, /instance shop\/inventory-1 stopped and removed/);
    } finally {
      await rm(file, { force: true });
    }
    state = await loadState(MESH);
    assert.equal(
      state.instances.find((i) => i.workload === "inventory"),
      undefined,
    );
    const left = await listNamespaces(MESH);
    assert.ok(
      invs.every((i) => !left.includes(i.netns)),
      "their namespaces are gone",
    );
    assert.ok(
      pids.every((p) => !alive(p)),
      "its processes are gone",
    );
    assert.equal((await procs())["shop/inventory-0:proxy"], undefined);
    // The Service is still there, without endpoints: the caller's proxy answers, not an app.
    assert.notEqual(await curl(state, "catalog", "http://inventory:81/x"), "404");
    await writeFile(file, INVENTORY_SERVICE_81);
    try {
      const r = await zmeshCli(["delete", "--name", MESH, "-f", file]);
      assert.equal(r.code, 0, r.stderr);
    } finally {
      await rm(file, { force: true });
    }
    // curl exit 6: could not resolve host. The hosts file of a running namespace changed in place.
    assert.match(await curl(state, "catalog", "http://inventory:81/x"), /exit 6$/);
    // The rest of the shop still works.
    assert.equal(await curl(state, "frontend", "http://catalog/items"), "200");
  });

  it("a run-to-completion Workload completes: its proxy exits, and nothing is restarted", async () => {
    const file = join(dir, "..", `zmlive-job-${process.pid}.yaml`);
    await writeFile(
      file,
      `apiVersion: zmesh.dev/v1
kind: Workload
metadata: { name: job, namespace: batch }
spec:
  serviceAccount: job
  restartPolicy: OnFailure
  command: ["node", "-e", "setTimeout(() => process.exit(0), 1500)"]
`,
    );
    try {
      const r = await zmeshCli(["apply", "--name", MESH, "-f", file]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /instance batch\/job running/);
    } finally {
      await rm(file, { force: true });
    }
    const p = await eventually(
      "the job completed and its proxy stopped",
      procs,
      (x) => x["batch/job:app"]?.completed !== undefined && x["batch/job:proxy"]?.pid === 0,
    );
    assert.equal(p["batch/job:app"]!.completed!.code, 0);
    await new Promise((r) => setTimeout(r, 2_500)); // longer than the first restart backoff
    const later = await procs();
    assert.equal(later["batch/job:app"]!.pid, 0, "the app was not started again");
    assert.equal(later["batch/job:proxy"]!.pid, 0, "nor was its proxy");
    assert.equal(later["batch/job:app"]!.restarts, 0);
    const w = (await meshStatus(MESH)).workloads.find((x) => x.workload === "batch/job")!;
    assert.deepEqual(w.completed?.code, 0);
    const text = await zmeshCli(["status", "--name", MESH]);
    assert.match(text.stdout, /batch\/job .*\(completed, exit 0\)/);
  });

  it("down removes the live-added namespaces too", async () => {
    await down(MESH);
    assert.deepEqual(await leftovers(MESH), []);
    assert.deepEqual(await listNamespaces(MESH), []);
  });
});
