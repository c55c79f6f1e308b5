// End to end, as root: a meshed workload reaches an unmeshed one (a namespace on the bridge with no
// sidecar, no Service) only once an Istio Sidecar sets ALLOW_ANY; by default (REGISTRY_ONLY) its
// own proxy closes the connection. Mesh "zmegress". Skips, visibly, when not root.
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  addUnmeshed,
  applyResources,
  deleteResources,
  down,
  exec,
  type MeshState,
  proxyLog,
  up,
} from "../../src/runtime/index.js";
import { NEEDS_ROOT } from "../harness/netns.js";

const MESH = "zmegress";

const WORKLOADS = `apiVersion: zmesh.dev/v1
kind: Workload
metadata: { name: client, namespace: shop, labels: { app: client } }
spec:
  serviceAccount: client
  command: ["node", "-e", "setInterval(() => {}, 60000)"]
`;

const ALLOW_ANY = `apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: { name: default, namespace: zmesh-system }
spec:
  outboundTrafficPolicy: { mode: ALLOW_ANY }
`;

describe("outbound traffic policy in network namespaces", {
  skip: NEEDS_ROOT,
}, () => {
  let state: MeshState;
  let dir: string;
  let outside: { address: string };
  let server: Promise<unknown>;

  async function curl(url: string): Promise<string> {
    const r = await exec(state, "client", ["curl", "-s", "--max-time", "3", "-w", "\n%{http_code}", url], {
      timeoutMs: 10_000,
    });
    return r.stdout;
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "zmegress-"));
    await writeFile(join(dir, "workloads.yaml"), WORKLOADS);
    await writeFile(`${dir}-extra.yaml`, ALLOW_ANY);
    state = await up(dir, { name: MESH });
    outside = await addUnmeshed(state, "outside");
    // An HTTP server in the unmeshed namespace, for the length of the test (killed by exec's timeout).
    server = exec(
      state,
      "outside",
      ["node", "-e", "require('http').createServer((q, r) => r.end('outside says hi')).listen(9000)"],
      { timeoutMs: 120_000 },
    );
    await new Promise((r) => setTimeout(r, 500));
  });

  after(async () => {
    if (state) await down(MESH, { quiet: true, purge: true });
    await server?.catch(() => {});
    await rm(dir, { recursive: true, force: true });
    await rm(`${dir}-extra.yaml`, { force: true });
  });

  it("REGISTRY_ONLY (zmesh's default): the client's own proxy closes the connection", async () => {
    // HTTP gets the proxy's own 502 (flag NO_ROUTE); the server never answers.
    const out = await curl(`http://${outside.address}:9000/`);
    assert.match(out, /^no service of the mesh at this address .*\n502$/s, out);
    let line: Record<string, unknown> | undefined;
    for (let i = 0; i < 20 && !line; i++) {
      line = (await proxyLog(state, "client")).find(
        (l) =>
          l.msg === "access" && (l as unknown as Record<string, unknown>)["service"] === "BlackHoleCluster",
      ) as unknown as Record<string, unknown> | undefined;
      if (!line) await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(line?.["upstream"], `${outside.address}:9000`);
  });

  it("ALLOW_ANY applied live: the same call reaches the unmeshed server, as PassthroughCluster", async () => {
    await applyResources(state, [`${dir}-extra.yaml`]);
    let out = "";
    for (let i = 0; i < 20 && !out.endsWith("\n200"); i++) {
      out = await curl(`http://${outside.address}:9000/`);
      if (!out.endsWith("\n200")) await new Promise((r) => setTimeout(r, 200));
    }
    assert.equal(out, "outside says hi\n200");
    let seen = false;
    for (let i = 0; i < 30 && !seen; i++) {
      seen = (await proxyLog(state, "client")).some(
        (l) => (l as unknown as Record<string, unknown>)["service"] === "PassthroughCluster",
      );
      if (!seen) await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(seen, "a PassthroughCluster access-log line");
    // Back to the default: blocked again.
    await deleteResources(state, [`${dir}-extra.yaml`]);
    for (let i = 0; i < 20 && !out.endsWith("\n502"); i++) {
      out = await curl(`http://${outside.address}:9000/`);
      if (!out.endsWith("\n502")) await new Promise((r) => setTimeout(r, 200));
    }
    assert.match(out, /\n502$/);
  });
});
