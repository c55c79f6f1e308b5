// End to end, as root: the shop example in real network namespaces with iptables capture,
// real sidecar processes and the control plane. Skips, visibly, when not root.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { playStory } from "../../src/cli/commands/demo.js";
import {
  addUnmeshed,
  appLog,
  controlPlaneAdmin,
  dataDir,
  down,
  exec,
  findInstance,
  leftovers,
  type MeshState,
  proxyAdmin,
  proxyLog,
  startCapture,
  stateRoot,
  up,
  zmeshPids,
} from "../../src/runtime/index.js";
import { curlIn, eventually, NEEDS_ROOT, SHOP_EXAMPLE, zmeshCli } from "../harness/netns.js";

const MESH = "zmtest";

describe("the shop in network namespaces", {
  skip: NEEDS_ROOT,
}, () => {
  let state: MeshState;

  before(async () => {
    state = await up(SHOP_EXAMPLE, { name: MESH });
  });

  after(async () => {
    if (state) await down(MESH, { quiet: true, purge: true });
  });

  it("an allowed call succeeds: frontend GETs the catalog through both sidecars", async () => {
    const id = `allowed-${process.pid}`;
    const r = await curlIn(state, "frontend", ["-H", `x-request-id: ${id}`, "http://catalog/items"]);
    assert.equal(r.status, "200");
    assert.match(r.body, /"tea"/);
    // The access log is written asynchronously: find this request's line by its id.
    let e: Awaited<ReturnType<typeof proxyLog>>[number] | undefined;
    for (let i = 0; i < 20 && !e; i++) {
      e = (await proxyLog(state, "catalog")).find((x) => x.msg === "access" && x.requestId === id);
      if (!e) await new Promise((res) => setTimeout(res, 50));
    }
    assert.equal(e?.source, "spiffe://cluster.local/ns/shop/sa/frontend");
    assert.equal(e?.decision, "allow");
    assert.equal(e?.policy, "shop/catalog-readers");
  });

  it("service names resolve in every form inside a workload", async () => {
    for (const host of ["catalog", "catalog.shop", "catalog.shop.svc.cluster.local"]) {
      assert.equal((await curlIn(state, "frontend", [`http://${host}/items`])).status, "200", host);
    }
  });

  it("a call the policies do not allow (frontend -> payments) gets 403 and the app never sees it", async () => {
    const r = await curlIn(state, "frontend", ["-X", "POST", "http://payments/charge?probe=lateral-1"]);
    assert.equal(r.status, "403");
    assert.match(r.body, /RBAC: access denied/);
    assert.doesNotMatch(await appLog(state, "payments"), /lateral-1/);
  });

  it("zmesh why, given the id a denial names, says which sidecar refused it and why", async () => {
    const r = await curlIn(state, "frontend", ["-X", "POST", "http://payments/charge?probe=why-1"]);
    assert.equal(r.status, "403");
    const id = /\(request id ([^)\s]+)\)/.exec(r.body)?.[1];
    assert.ok(id, `the denial names its request id: ${r.body}`);
    // The access lines are written in blocks: wait (3 s at most) for both sidecars' lines.
    const why = await eventually(
      "zmesh why reports both sidecars",
      () => zmeshCli(["why", id, "--name", MESH]),
      (w) => w.stdout.includes(" outbound ") && w.stdout.includes(" inbound "),
      3_000,
    );
    assert.equal(why.code, 0, why.stderr);
    const lines = why.stdout.trim().split("\n");
    assert.match(
      lines[0]!,
      /^request \S+: POST \/charge\?probe=why-1: refused by the sidecar of shop\/payments \(inbound\)$/,
    );
    assert.match(lines[1]!, /^ {2}shop\/frontend outbound 403: sent to payments\.shop\.svc\.cluster\.local$/);
    assert.match(
      lines[2]!,
      /^ {2}shop\/payments inbound 403: DENIED, from shop\/frontend \(spiffe:\/\/cluster\.local\/ns\/shop\/sa\/frontend\) over mutual TLS$/,
    );
    assert.match(lines[3]!, /^ {6}why: denied: no ALLOW policy matched/);
    const json = await zmeshCli(["why", id, "--name", MESH, "-o", "json"]);
    type Side = { entry: { status?: number; decision?: string } } | undefined;
    const { exchanges } = JSON.parse(json.stdout) as { exchanges: { outbound: Side; inbound: Side }[] };
    assert.deepEqual(
      exchanges.map((x) => [x.outbound?.entry.status, x.inbound?.entry.decision]),
      [[403, "deny"]],
    );
    const unknown = await zmeshCli(["why", "no-such-request", "--name", MESH]);
    assert.equal(unknown.code, 1);
    assert.match(
      unknown.stderr,
      /no sidecar of mesh zmtest logged request id "no-such-request".*\[ZMESH_REQUEST_NOT_FOUND\]/,
    );
  });

  it("the whole chain works: frontend -> orders -> payments", async () => {
    const r = await curlIn(state, "frontend", ["http://localhost:8080/"]);
    assert.equal(r.status, "200");
    assert.deepEqual(JSON.parse(r.body).orderBody, { order: "created", charge: 200 });
  });

  it("a plaintext connection from an unmeshed namespace to an app port does not reach the app", async () => {
    const intruder = await addUnmeshed(state, "intruder");
    const payments = findInstance(state, "payments");
    const r = await curlIn(state, "intruder", [
      "-X",
      "POST",
      `http://${payments.address}:8080/charge?probe=intruder-1`,
    ]);
    assert.equal(r.status, "000", "no HTTP response at all");
    assert.doesNotMatch(await appLog(state, "payments"), /intruder-1/);
    assert.ok(intruder.address.startsWith("198.18."));
  });

  it("the bytes crossing the bridge are TLS, with no plaintext HTTP in a capture", async () => {
    const stop = await startCapture(state);
    for (let i = 0; i < 3; i++)
      assert.equal((await curlIn(state, "frontend", ["http://localhost:8080/"])).status, "200");
    // The detector must see plaintext when there is some: the intruder's probe is the control.
    const payments = findInstance(state, "payments");
    await curlIn(state, "intruder", ["-X", "POST", `http://${payments.address}:8080/charge?probe=wire`]);
    const report = await stop((seen) => seen.plaintextHttp.some((l) => l.includes("probe=wire")));
    assert.ok(
      report.tlsRecords >= 6,
      `expected TLS records, saw ${report.tlsRecords} in ${report.packets} packets`,
    );
    assert.ok(
      report.plaintextHttp.length > 0,
      "the intruder's plaintext probe was not seen: the capture is blind",
    );
    assert.deepEqual(
      report.plaintextHttp.filter((l) => !l.includes("probe=wire")),
      [],
      "plaintext HTTP between meshed workloads",
    );
  });

  it("the demo story stops every attack and lets normal traffic through", async () => {
    const lines: string[] = [];
    const outcomes = await playStory(state, (l) => lines.push(l));
    const normal = outcomes.filter((o) => o.attempt.what === "normal traffic");
    const attacks = outcomes.filter((o) => o.attempt.what !== "normal traffic");
    assert.equal(normal.length, 3);
    assert.ok(
      normal.every((o) => o.allowed),
      lines.join("\n"),
    );
    assert.ok(attacks.length >= 6);
    assert.ok(
      attacks.every((o) => !o.allowed),
      lines.join("\n"),
    );
    assert.ok(
      attacks.every((o) => o.explanation !== ""),
      "every stop is explained",
    );
    assert.ok(
      lines.some((l) => l.includes("no plaintext HTTP")),
      lines.join("\n"),
    );
  });

  it("openssl verifies a workload's chain against the mesh trust bundle and shows its SPIFFE ID", async () => {
    const certs = JSON.parse((await proxyAdmin(state, "payments", "/certs")).body) as { chainPem: string[] };
    const bundle = (await controlPlaneAdmin(state, "GET", "/bundle")).body;
    const dir = await mkdtemp(join(tmpdir(), "zmesh-chain-"));
    try {
      await writeFile(join(dir, "leaf.pem"), certs.chainPem[0]!);
      await writeFile(join(dir, "chain.pem"), certs.chainPem.slice(1).join(""));
      await writeFile(join(dir, "bundle.pem"), bundle);
      const openssl = (...a: string[]) => execFileSync("openssl", a, { encoding: "utf8", cwd: dir });
      assert.equal(
        openssl("verify", "-CAfile", "bundle.pem", "-untrusted", "chain.pem", "leaf.pem").trim(),
        "leaf.pem: OK",
      );
      assert.match(
        openssl("x509", "-noout", "-ext", "subjectAltName", "-in", "leaf.pem"),
        /URI:spiffe:\/\/cluster\.local\/ns\/shop\/sa\/payments/,
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("a root rotation under traffic fails no request", async () => {
    const loop = exec(
      state,
      "frontend",
      [
        "sh",
        "-c",
        "for i in $(seq 150); do curl -s -o /dev/null -w '%{http_code}\\n' --max-time 3 http://localhost:8080/; done",
      ],
      { timeoutMs: 60_000 },
    );
    await new Promise((r) => setTimeout(r, 500));
    const rotation = await controlPlaneAdmin(state, "POST", "/ca/rotate?overlapSeconds=1");
    const codes = (await loop).stdout.trim().split("\n");
    assert.match(rotation.body, /root rotation complete/, rotation.body);
    assert.equal(codes.length, 150);
    assert.deepEqual([...new Set(codes)], ["200"]);
    const bundle = (await controlPlaneAdmin(state, "GET", "/bundle")).body;
    assert.equal(bundle.match(/BEGIN CERTIFICATE/g)?.length, 1);
  });

  it("up with a broken resource changes nothing on the host", async () => {
    const dir = await mkdtemp(join(tmpdir(), "zmesh-bad-"));
    try {
      await writeFile(
        join(dir, "w.yaml"),
        "apiVersion: zmesh.dev/v1\nkind: Workload\nmetadata: {name: w}\nspec: {command: []}\n",
      );
      await assert.rejects(up(dir, { name: "zmbad" }), /spec\.command/);
      assert.deepEqual(await leftovers("zmbad"), []);
      assert.equal(existsSync(join(stateRoot(), "zmbad")), false);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("after zmesh down no namespace, interface, iptables rule, process or file of the mesh is left", async () => {
    const netnsList = state.instances.map((i) => i.netns);
    await down(MESH, { purge: true });
    assert.deepEqual(await leftovers(MESH), []);
    assert.equal(existsSync(dataDir(MESH)), false, "the CA store is purged too");
    assert.deepEqual(zmeshPids(MESH), []);
    for (const i of state.instances) {
      for (const pid of [i.proxyPid, i.appPid])
        assert.equal(existsSync(`/proc/${pid}`), false, `pid ${pid} still runs`);
    }
    assert.equal(existsSync(`/proc/${state.controlPlane.pid}`), false);
    for (const ns of netnsList) assert.equal(existsSync(`/etc/netns/${ns}`), false);
    assert.equal(existsSync(state.stateDir), false);
  });
});
