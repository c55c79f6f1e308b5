// Attack suite, resilience (as root, mesh "zmres", the shop in real network namespaces): taking
// parts of the mesh down must never open it. With the control plane killed under traffic, allowed
// calls keep working, denied ones stay denied and strangers get nothing; with a sidecar killed,
// its workload's traffic fails closed both ways (nothing reaches the app, nothing leaves in
// plaintext) until the supervisor brings it back, then resumes. Skips, visibly, when not root.
import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import {
  appLog,
  exec,
  findInstance,
  loadState,
  type MeshState,
  readProcesses,
  startCapture,
  stateRoot,
} from "../../src/runtime/index.js";
import { NEEDS_ROOT, shopWithIntruder } from "../harness/netns.js";

const MESH = "zmres";

async function code(state: MeshState, who: string, method: string, url: string): Promise<string> {
  const r = await exec(
    state,
    who,
    ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", "-X", method, url],
    { timeoutMs: 10_000 },
  );
  return r.stdout.trim();
}

/** `count` calls, one every 100 ms, from inside a workload; resolves their status codes. */
function loop(state: MeshState, who: string, method: string, url: string, count: number): Promise<string[]> {
  return exec(
    state,
    who,
    [
      "sh",
      "-c",
      `for i in $(seq ${count}); do curl -s -o /dev/null -w '%{http_code}\\n' --max-time 2 -X ${method} '${url}'; sleep 0.1; done`,
    ],
    { timeoutMs: 120_000 },
  ).then((r) => r.stdout.trim().split("\n"));
}

async function eventually(what: string, f: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await f().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`${what}: not within ${timeoutMs} ms`);
}

async function supervisorPid(): Promise<number> {
  return (await readProcesses(join(stateRoot(), MESH)))!.supervisor.pid;
}

describe("attack: killing parts of the mesh does not open it", {
  skip: NEEDS_ROOT,
  timeout: 240_000,
}, () => {
  const shop = shopWithIntruder(MESH);

  it("the control plane killed under traffic: allowed stays allowed, denied stays denied, strangers get nothing", async () => {
    const payments = findInstance(shop.state, "payments");
    const procs = (await readProcesses(join(stateRoot(), MESH)))!.procs;
    const supervisor = await supervisorPid();
    const allowed = loop(shop.state, "frontend", "GET", "http://catalog/items", 30);
    const denied = loop(shop.state, "frontend", "POST", "http://payments/charge?probe=cp-down", 30);
    const stranger = loop(
      shop.state,
      "intruder",
      "POST",
      `http://${payments.address}:8080/charge?probe=cp-down-stranger`,
      15,
    );
    // Hold the supervisor so that the control plane stays down while the loops run.
    process.kill(supervisor, "SIGSTOP");
    try {
      process.kill(procs["controlplane"]!.pid, "SIGKILL");
      await new Promise((r) => setTimeout(r, 2_500));
    } finally {
      process.kill(supervisor, "SIGCONT");
    }
    const [a, d, s] = await Promise.all([allowed, denied, stranger]);
    assert.deepEqual([...new Set(a)], ["200"], "allowed calls failed while the control plane was down");
    assert.deepEqual([...new Set(d)], ["403"], "a denied call got through while the control plane was down");
    assert.deepEqual([...new Set(s)], ["000"], "a stranger got an answer");
    assert.doesNotMatch(await appLog(shop.state, "payments"), /probe=cp-down/);
    await eventually(
      "the control plane back",
      async () => (await code(shop.state, "frontend", "GET", "http://catalog/items")) === "200",
    );
  });

  it("a destination's sidecar killed: calls to it fail closed, strangers and the caller never reach the app, then it resumes", async () => {
    const catalog = findInstance(await loadState(MESH), "catalog");
    const supervisor = await supervisorPid();
    const capture = await startCapture(shop.state, [shop.state.unmeshed[0]!.address]);
    process.kill(supervisor, "SIGSTOP");
    let during: string[] = [];
    let stranger = "";
    try {
      process.kill(catalog.proxyPid, "SIGKILL");
      await new Promise((r) => setTimeout(r, 300));
      during = await loop(shop.state, "frontend", "GET", "http://catalog/items?probe=proxy-down", 8);
      stranger = await code(
        shop.state,
        "intruder",
        "GET",
        `http://${catalog.address}:8080/items?probe=proxy-down-stranger`,
      );
    } finally {
      process.kill(supervisor, "SIGCONT");
    }
    assert.ok(!during.includes("200"), `a call reached catalog without its sidecar: ${during}`);
    assert.equal(stranger, "000");
    assert.doesNotMatch(await appLog(shop.state, "catalog"), /probe=proxy-down/);
    const report = await capture();
    assert.deepEqual(report.plaintextHttp, [], "plaintext on the wire while the sidecar was down");
    await eventually(
      "catalog served again",
      async () => (await code(shop.state, "frontend", "GET", "http://catalog/items")) === "200",
    );
    assert.equal(
      await code(shop.state, "frontend", "POST", "http://payments/charge"),
      "403",
      "still enforced",
    );
  });

  it("a caller's own sidecar killed: its app's calls fail closed instead of leaving in plaintext, then resume", async () => {
    const frontend = findInstance(await loadState(MESH), "frontend");
    const supervisor = await supervisorPid();
    const capture = await startCapture(shop.state);
    process.kill(supervisor, "SIGSTOP");
    let during: string[] = [];
    try {
      process.kill(frontend.proxyPid, "SIGKILL");
      await new Promise((r) => setTimeout(r, 300));
      during = await loop(shop.state, "frontend", "POST", "http://payments/charge?probe=own-proxy-down", 6);
      const payments = findInstance(shop.state, "payments");
      during.push(
        await code(
          shop.state,
          "frontend",
          "POST",
          `http://${payments.address}:8080/charge?probe=own-proxy-down`,
        ),
      );
    } finally {
      process.kill(supervisor, "SIGCONT");
    }
    assert.deepEqual([...new Set(during)], ["000"], `calls without a sidecar: ${during}`);
    const report = await capture();
    assert.deepEqual(report.plaintextHttp, [], "the app's calls left in plaintext");
    assert.doesNotMatch(await appLog(shop.state, "payments"), /probe=own-proxy-down/);
    await eventually(
      "frontend's calls resume",
      async () => (await code(shop.state, "frontend", "GET", "http://catalog/items")) === "200",
    );
    assert.equal(
      await code(shop.state, "frontend", "POST", "http://payments/charge"),
      "403",
      "and are still enforced",
    );
  });
});
