// Attack suite, bypass (as root, mesh "zmatk", the shop in real network namespaces): ways around
// the sidecars. The app port from another namespace, the pod IP instead of the VIP, ports no
// Service declares, the app's uid trying to become the proxy's (1337) or to change the network,
// IPv6 (which iptables capture does not see), UDP, and loopback tricks inside the workload (the
// proxy's own listeners dialled directly). Each must be stopped. Skips, visibly, when not root.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import {
  appLog,
  applyResources,
  deleteResources,
  exec,
  findInstance,
  loadState,
  type MeshState,
  proxyAdmin,
} from "../../src/runtime/index.js";
import { curlIn, NEEDS_ROOT, shopWithIntruder } from "../harness/netns.js";

const MESH = "zmatk";

/** Runs a small node script inside a workload as its app's uid. */
function node(state: MeshState, who: string, script: string) {
  return exec(state, who, ["node", "-e", script], { timeoutMs: 15_000 });
}

/** A TCP/UDP listener an attacker starts inside a workload (as the app's uid), counting what it receives. */
function listener(state: MeshState, who: string, kind: "tcp" | "udp" | "tcp6", port: number, ms: number) {
  const script =
    kind === "udp"
      ? `const s=require("dgram").createSocket("udp4");let n=0;s.on("message",()=>n++);s.bind(${port});setTimeout(()=>{console.log("got "+n);process.exit(0)},${ms})`
      : `let n=0;const s=require("net").createServer(c=>{n++;c.on("data",()=>{});c.on("error",()=>{})});s.on("error",e=>{console.log("listen error "+e.code);process.exit(0)});s.listen(${port},"${kind === "tcp6" ? "::" : "0.0.0.0"}");setTimeout(()=>{console.log("got "+n);process.exit(0)},${ms})`;
  return node(state, who, script);
}

/** fe80:: address derived from an interface's MAC (EUI-64), as the kernel would assign it. */
function linkLocal(netns: string): string {
  const out = execFileSync("ip", ["-n", netns, "link", "show", "eth0"], { encoding: "utf8" });
  const mac = /link\/ether ([0-9a-f:]{17})/
    .exec(out)![1]!
    .split(":")
    .map((h) => Number.parseInt(h, 16));
  const b = [mac[0]! ^ 2, mac[1]!, mac[2]!, 0xff, 0xfe, mac[3]!, mac[4]!, mac[5]!];
  const groups = [0, 2, 4, 6].map((i) => ((b[i]! << 8) | b[i + 1]!).toString(16));
  return `fe80::${groups.join(":")}`;
}

describe("attack: bypassing the sidecars in network namespaces", {
  skip: NEEDS_ROOT,
  timeout: 240_000,
}, () => {
  const shop = shopWithIntruder(MESH);

  it("the app port called directly from an unmeshed namespace, plaintext and TLS: no answer, the app never sees it", async () => {
    const payments = findInstance(shop.state, "payments");
    const plain = await curlIn(shop.state, "intruder", [
      "-X",
      "POST",
      `http://${payments.address}:8080/charge?probe=bypass-plain`,
    ]);
    assert.equal(plain.status, "000");
    const tls = await curlIn(shop.state, "intruder", [
      "-k",
      "-X",
      "POST",
      `https://${payments.address}:8080/charge?probe=bypass-tls`,
    ]);
    assert.equal(tls.status, "000");
    const inbound = await curlIn(shop.state, "intruder", [
      "-X",
      "POST",
      `http://${payments.address}:15006/charge?probe=bypass-15006`,
    ]);
    assert.equal(inbound.status, "000");
    assert.doesNotMatch(await appLog(shop.state, "payments"), /probe=bypass/);
  });

  it("the pod IP instead of the VIP, from a meshed workload: captured by its own sidecar, which has no route", async () => {
    const payments = findInstance(shop.state, "payments");
    const r = await curlIn(shop.state, "frontend", [
      "-X",
      "POST",
      `http://${payments.address}:8080/charge?probe=podip`,
    ]);
    assert.equal(r.status, "502");
    assert.match(r.body, /no service of the mesh at this address/, "the answer came from the mesh: captured");
    assert.doesNotMatch(await appLog(shop.state, "payments"), /probe=podip/);
  });

  it("ports no Service declares: nothing listening is reached, and an attacker's own listener gets nothing", async () => {
    const payments = findInstance(shop.state, "payments");
    // The attacker controls payments' uid and opens a port no Service declares.
    const listening = listener(shop.state, "payments", "tcp", 9099, 4_000);
    await new Promise((r) => setTimeout(r, 800));
    for (const url of [
      `http://${payments.address}:9099/`,
      `http://${payments.address}:9999/`,
      "http://payments:81/",
      "http://payments:9099/",
    ]) {
      const fromMesh = await curlIn(shop.state, "frontend", [url]);
      assert.notEqual(fromMesh.status, "200", `frontend ${url}`);
    }
    const fromOutside = await curlIn(shop.state, "intruder", [`http://${payments.address}:9099/`]);
    assert.equal(fromOutside.status, "000");
    assert.equal((await listening).stdout.trim(), "got 0", "a connection reached the undeclared port");
  });

  it("the app's uid cannot become 1337 nor change the network, and its traffic is captured", async () => {
    const asProxy = await exec(shop.state, "frontend", [
      "setpriv",
      "--reuid=1337",
      "--regid=1337",
      "--clear-groups",
      "id",
    ]);
    assert.notEqual(asProxy.code, 0);
    assert.match(asProxy.stderr, /not permitted/);
    for (const cmd of [
      ["iptables", "-t", "nat", "-F"],
      ["ip", "route", "add", "198.18.250.0/24", "dev", "lo"],
      ["ip", "addr", "add", "198.18.250.9/32", "dev", "lo"],
      ["ip", "link", "set", "eth0", "down"],
    ]) {
      const r = await exec(shop.state, "frontend", cmd);
      assert.notEqual(r.code, 0, `${cmd.join(" ")} succeeded as the app`);
    }
    const id = await exec(shop.state, "frontend", ["id", "-u"]);
    assert.equal(id.stdout.trim(), String(findInstance(shop.state, "frontend").appUid));
    assert.notEqual(id.stdout.trim(), "1337");
    // Its TCP is captured: a raw connect to the payments pod, not a curl, still meets the mesh.
    const payments = findInstance(shop.state, "payments");
    const raw = await node(
      shop.state,
      "frontend",
      `const s=require("net").connect(8080,"${payments.address}",()=>s.write("POST /charge?probe=raw HTTP/1.1\\r\\nhost: x\\r\\nconnection: close\\r\\ncontent-length: 0\\r\\n\\r\\n"));let d="";s.on("data",c=>d+=c);s.on("close",()=>{console.log(d.split("\\r\\n")[0]);process.exit(0)});s.on("error",e=>{console.log(e.code);process.exit(0)})`,
    );
    assert.match(
      raw.stdout,
      /^HTTP\/1\.1 502/,
      "the frontend's sidecar answered: the connection was captured",
    );
    assert.doesNotMatch(await appLog(shop.state, "payments"), /probe=raw/);
  });

  it("IPv6: no address but loopback in any namespace, ip6tables drops the rest, and a link-local connection fails", async () => {
    // An app listening on :: (Node's default) must not be reachable around the inbound over IPv6.
    const payments = findInstance(shop.state, "payments");
    const listening = listener(shop.state, "payments", "tcp6", 9098, 4_000);
    await new Promise((r) => setTimeout(r, 800));
    const target = `${linkLocal(payments.netns)}%eth0`;
    for (const who of ["frontend", "intruder"]) {
      const r = await node(
        shop.state,
        who,
        `const s=require("net").connect({host:"${target}",port:9098,family:6},()=>{console.log("connected");process.exit(0)});s.on("error",e=>{console.log(e.code);process.exit(0)});setTimeout(()=>{console.log("timeout");process.exit(0)},2000)`,
      );
      assert.notEqual(r.stdout.trim(), "connected", `${who} reached payments over IPv6`);
    }
    assert.equal((await listening).stdout.trim(), "got 0");
    const names = [...shop.state.instances.map((i) => i.netns), ...shop.state.unmeshed.map((u) => u.netns)];
    for (const ns of names) {
      const addrs = execFileSync("ip", ["-n", ns, "-6", "addr"], { encoding: "utf8" });
      assert.doesNotMatch(addrs, /scope (link|global)/, `${ns} has IPv6 beyond loopback:\n${addrs}`);
    }
    for (const i of shop.state.instances) {
      const rules = execFileSync("ip", ["netns", "exec", i.netns, "ip6tables", "-S"], { encoding: "utf8" });
      assert.match(rules, /-P OUTPUT DROP/);
      assert.match(rules, /-P INPUT DROP/);
    }
    const bridge = execFileSync("ip", ["-6", "addr", "show", "dev", shop.state.net.bridge], {
      encoding: "utf8",
    });
    assert.doesNotMatch(bridge, /inet6/, "the host's bridge answers IPv6");
  });

  it("UDP around the sidecar: dropped (nothing captures it, so nothing may leave)", async () => {
    const payments = findInstance(shop.state, "payments");
    const listening = listener(shop.state, "payments", "udp", 9097, 3_000);
    await new Promise((r) => setTimeout(r, 800));
    const r = await node(
      shop.state,
      "frontend",
      `const s=require("dgram").createSocket("udp4");let e=0;const send=i=>s.send("probe","9097","${payments.address}",err=>{if(err)e++;if(i<4)send(i+1);else setTimeout(()=>{console.log("errors "+e);process.exit(0)},200)});send(0)`,
    );
    assert.match(r.stdout, /errors/);
    assert.equal((await listening).stdout.trim(), "got 0", "UDP from the app reached another pod");
  });

  it("loopback tricks: the app dials its proxy's admin, outbound and inbound listeners directly and is refused", async () => {
    assert.equal(
      (await proxyAdmin(shop.state, "frontend", "/ready")).status,
      200,
      "the control: root reaches the admin",
    );
    const quit = await curlIn(shop.state, "frontend", ["-X", "POST", "http://127.0.0.1:15000/quitquitquit"]);
    assert.equal(quit.status, "000", "the app could reach its proxy's admin");
    const drain = await curlIn(shop.state, "frontend", ["-X", "POST", "http://127.0.0.1:15000/drain"]);
    assert.equal(drain.status, "000");
    for (const port of [15001, 15006]) {
      const r = await curlIn(shop.state, "frontend", [
        "-H",
        "host: payments",
        "-X",
        "POST",
        `http://127.0.0.1:${port}/charge?probe=loop`,
      ]);
      assert.equal(r.status, "000", `127.0.0.1:${port}`);
    }
    for (const addr of ["127.0.0.2", "127.255.255.254"]) {
      const r = await curlIn(shop.state, "frontend", ["-X", "POST", `http://${addr}:15000/quitquitquit`]);
      assert.equal(r.status, "000", `${addr}:15000`);
    }
    assert.doesNotMatch(await appLog(shop.state, "payments"), /probe=loop/);
    // Still served, still enforced, by a proxy that is still running.
    assert.equal((await proxyAdmin(shop.state, "frontend", "/ready")).status, 200);
    assert.equal((await curlIn(shop.state, "frontend", ["http://catalog/items"])).status, "200");
    assert.equal(
      (await curlIn(shop.state, "frontend", ["-X", "POST", "http://payments/charge"])).status,
      "403",
    );
    // The app's own port on loopback is its own business: still reachable (the control).
    assert.equal((await curlIn(shop.state, "frontend", ["http://127.0.0.1:8080/"])).status, "200");
  });

  it("the app's uid cannot steal a bootstrap token, the CA store or its proxy's key from memory", async () => {
    const live = await loadState(MESH);
    const frontend = findInstance(live, "frontend");
    const targets = [
      join(shop.state.stateDir, "secrets", "tokens.json"),
      join(shop.state.stateDir, "secrets", "payments.shop.token"),
      join(shop.state.stateDir, "secrets", "frontend.shop.token"),
      `/proc/${frontend.proxyPid}/environ`,
      `/proc/${frontend.proxyPid}/mem`,
      `/proc/${frontend.proxyPid}/maps`,
      `/proc/${live.controlPlane.pid}/environ`,
      live.controlPlane.caStore,
      live.controlPlane.kekFile,
    ];
    for (const file of targets) {
      const r = await exec(shop.state, "frontend", ["head", "-c", "64", file]);
      assert.notEqual(r.code, 0, `the app read ${file}`);
      assert.equal(r.stdout, "", `the app read ${file}`);
    }
    const cmdline = await exec(shop.state, "frontend", ["cat", `/proc/${frontend.proxyPid}/cmdline`]);
    const token = (
      await readFile(join(shop.state.stateDir, "secrets", "frontend.shop.token"), "utf8")
    ).trim();
    assert.ok(cmdline.stdout.includes("--token-file"), "the control: the app can read the command line");
    assert.ok(!cmdline.stdout.includes(token), "the bootstrap token is on the proxy's command line");
  });

  it("the health and metrics ports, which capture leaves open, do not lead to the app", async () => {
    const payments = findInstance(shop.state, "payments");
    for (const port of [15020, 15021]) {
      const r = await curlIn(shop.state, "intruder", [
        "-X",
        "POST",
        `http://${payments.address}:${port}/charge?probe=side-port`,
      ]);
      assert.notEqual(r.status, "200", `${port}`);
    }
    assert.doesNotMatch(await appLog(shop.state, "payments"), /probe=side-port/);
  });
  it("under PERMISSIVE with an allow-all policy, a stranger cannot reach the proxy's own ports through the inbound", async () => {
    const dir = await mkdtemp(join(tmpdir(), "zmatk-"));
    const file = join(dir, "permissive.yaml");
    await writeFile(
      file,
      `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: catalog-permissive, namespace: shop }
spec:
  selector: { matchLabels: { app: catalog } }
  mtls: { mode: PERMISSIVE }
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: catalog-public, namespace: shop }
spec:
  selector: { matchLabels: { app: catalog } }
  rules: [{}]
`,
    );
    try {
      await applyResources(shop.state, [file]);
      const catalog = findInstance(await loadState(MESH), "catalog");
      const at = (port: number, path: string) => `http://${catalog.address}:${port}${path}`;
      let control = "";
      for (let i = 0; i < 20 && control !== "200"; i++) {
        control = (await curlIn(shop.state, "intruder", [at(8080, "/items")])).status;
        if (control !== "200") await new Promise((r) => setTimeout(r, 100));
      }
      assert.equal(control, "200", "the control: PERMISSIVE lets the stranger reach the app port");
      for (const [port, method, path] of [
        [15000, "GET", "/config_dump"],
        [15000, "POST", "/logging?level=trace"],
        [15000, "POST", "/quitquitquit"],
        [15001, "GET", "/items"],
        [15006, "GET", "/items"],
      ] as const) {
        const r = await curlIn(shop.state, "intruder", ["-X", method, at(port, path)]);
        assert.notEqual(r.status, "200", `${port} ${method} ${path}: ${r.body.slice(0, 80)}`);
      }
      const after = findInstance(await loadState(MESH), "catalog");
      assert.equal(after.proxyPid, catalog.proxyPid, "the stranger made the proxy quit");
      assert.equal((await proxyAdmin(shop.state, "catalog", "/ready")).status, 200);
    } finally {
      await deleteResources(shop.state, [file]);
      await rm(dir, { recursive: true, force: true });
    }
  });
});
