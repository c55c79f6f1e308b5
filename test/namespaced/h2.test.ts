// HTTP/2 end to end as root (mesh "zmh2"): a caller and a greeter in network namespaces with
// iptables capture and real sidecar processes; curl inside the caller speaks h2c with prior
// knowledge to the greeter's Service name (a grpc- port), the sidecars speak h2 over mutual TLS,
// each stream is authorized at the greeter (200 for the allowed method path, 403 for plain HTTP/2
// and grpc-status 7 for gRPC on a denied one). Skips, visibly, when not root.
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { down, exec, type MeshState, proxyLog, up } from "../../src/runtime/index.js";
import { NEEDS_ROOT } from "../harness/netns.js";

const MESH = "zmh2";

const APP = `// greeter: an h2c server (node:http2, prior knowledge) that answers with what it saw and a
// trailer counting the request's bytes; caller: idle (the test runs curl in its namespace).
import { createServer } from "node:http2";
if (process.env.ZMESH_WORKLOAD === "greeter") {
  const server = createServer();
  server.on("stream", (s, h) => {
    let n = 0;
    s.on("data", (c) => { n += c.length; });
    s.on("end", () => {
      s.respond({ ":status": 200, "content-type": "text/plain" }, { waitForTrailers: true });
      s.on("wantTrailers", () => s.sendTrailers({ "x-bytes": String(n) }));
      s.end("greeter saw " + h[":method"] + " " + h[":path"] + " from " + (h["x-forwarded-client-cert"] ?? "").split("URI=")[1]);
    });
  });
  server.listen(50051, "0.0.0.0");
} else setInterval(() => {}, 1 << 30);
`;

const YAML = `apiVersion: zmesh.dev/v1
kind: Workload
metadata: { name: greeter, namespace: hello, labels: { app: greeter } }
spec:
  serviceAccount: greeter
  command: ["node", "app.mjs"]
  ports: [{ containerPort: 50051, name: grpc }]
---
apiVersion: zmesh.dev/v1
kind: Workload
metadata: { name: caller, namespace: hello, labels: { app: caller } }
spec:
  serviceAccount: caller
  command: ["node", "app.mjs"]
---
apiVersion: v1
kind: Service
metadata: { name: greeter, namespace: hello }
spec:
  selector: { app: greeter }
  ports: [{ name: grpc-greeter, port: 50051, targetPort: 50051 }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: greeter-hello-only, namespace: hello }
spec:
  selector: { matchLabels: { app: greeter } }
  rules:
    - from: [{ source: { principals: ["cluster.local/ns/hello/sa/caller"] } }]
      to: [{ operation: { methods: ["POST"], paths: ["/greet.Greeter/Hello"] } }]
`;

async function curl(state: MeshState, args: string[]): Promise<{ code: number; out: string }> {
  const r = await exec(
    state,
    "caller",
    ["curl", "-sS", "--http2-prior-knowledge", "--max-time", "5", ...args],
    {
      timeoutMs: 15_000,
    },
  );
  return { code: r.code ?? 0, out: r.stdout };
}

describe("HTTP/2 in network namespaces", {
  skip: NEEDS_ROOT,
}, () => {
  let state: MeshState;
  let dir: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "zmesh-h2-"));
    await writeFile(join(dir, "app.mjs"), APP);
    await writeFile(join(dir, "mesh.yaml"), YAML);
    state = await up(dir, { name: MESH });
  });

  after(async () => {
    if (state) await down(MESH, { quiet: true, purge: true });
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("an allowed method path: 200 over HTTP/2 end to end, the caller's identity and the app's trailer arrive", async () => {
    let r = { code: -1, out: "" };
    // The greeter's app may still be starting: a bounded wait for its first answer.
    for (let i = 0; i < 40; i++) {
      r = await curl(state, [
        "-X",
        "POST",
        "--data-binary",
        "hello",
        "-D",
        "-",
        "-w",
        "\\n%{http_version}",
        "http://greeter:50051/greet.Greeter/Hello",
      ]);
      if (/^HTTP\/2 200/m.test(r.out)) break;
      await new Promise((res) => setTimeout(res, 250));
    }
    assert.match(r.out, /^HTTP\/2 200/m, r.out);
    assert.match(
      r.out,
      /greeter saw POST \/greet\.Greeter\/Hello from spiffe:\/\/cluster\.local\/ns\/hello\/sa\/caller/,
    );
    assert.match(r.out, /x-bytes: 5\r?$/m, "the app's trailer (the 5 bytes it read)");
    assert.match(r.out, /\n2$/);
  });

  it("a denied method path: 403 for plain HTTP/2, grpc-status 7 for gRPC, and an access-log line per stream", async () => {
    const id = `h2-deny-${process.pid}`;
    const plain = await curl(state, [
      "-X",
      "POST",
      "-o",
      "/dev/null",
      "-w",
      "%{http_code}",
      "http://greeter:50051/greet.Greeter/Admin",
    ]);
    assert.equal(plain.out, "403");
    const g = await curl(state, [
      "-X",
      "POST",
      "-H",
      "content-type: application/grpc",
      "-H",
      `x-request-id: ${id}`,
      "--data-binary",
      "",
      "-D",
      "-",
      "-o",
      "/dev/null",
      "http://greeter:50051/greet.Greeter/Admin",
    ]);
    assert.match(g.out, /^HTTP\/2 200/m, g.out);
    assert.match(g.out, /^grpc-status: 7\r?$/m, g.out);
    let e: Awaited<ReturnType<typeof proxyLog>>[number] | undefined;
    for (let i = 0; i < 40 && !e; i++) {
      e = (await proxyLog(state, "greeter")).find((x) => x.msg === "access" && x.requestId === id);
      if (!e) await new Promise((res) => setTimeout(res, 50));
    }
    assert.equal(e?.decision, "deny");
    assert.equal(e?.source, "spiffe://cluster.local/ns/hello/sa/caller");
    assert.equal(e?.path, "/greet.Greeter/Admin");
  });
});
