// Destinations outside the mesh, and resumption between sidecars, in one process: a real control
// plane and real proxies on loopback. "Outside" is a TCP echo server on 127.0.0.2, an address no
// Service or workload has (the harness's workloads all live on 127.0.0.1).
//
// Istio Sidecar precedence under test: a Sidecar of the workload's namespace whose selector matches
// it > its namespace's Sidecar without selector > the root namespace's (zmesh-system) > zmesh's
// default REGISTRY_ONLY.
import assert from "node:assert/strict";
import { createServer, type Server } from "node:net";
import { after, before, describe, it } from "node:test";
import type { Sidecar } from "../src/proxy/index.js";
import {
  call,
  controlPlane,
  entryYaml,
  freePort,
  logLines,
  type MeshFixture,
  openTcp,
  proxy,
} from "./harness/index.js";

const OUTSIDE_HOST = "127.0.0.2";

function sidecarYaml(name: string, namespace: string, mode: string, selector?: string): string {
  const sel = selector ? `  workloadSelector: { labels: { app: ${selector} } }\n` : "";
  return `apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: { name: ${name}, namespace: ${namespace} }
spec:
${sel}  outboundTrafficPolicy: { mode: ${mode} }
---
`;
}

function meshYaml(echoPort: number, extra = "", echoClients = ["frontend"]): string {
  const principals = echoClients.map((c) => `"cluster.local/ns/shop/sa/${c}"`).join(", ");
  return `${entryYaml("frontend")}${entryYaml("echo")}${entryYaml("orders")}apiVersion: v1
kind: Service
metadata: { name: echo, namespace: shop }
spec:
  selector: { app: echo }
  clusterIP: 198.19.0.20
  ports: [{ name: tcp-echo, port: 7, targetPort: ${echoPort} }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: echo-from-frontend, namespace: shop }
spec:
  selector: { matchLabels: { app: echo } }
  rules: [{ from: [{ source: { principals: [${principals}] } }] }]
---
${extra}`;
}

async function echoServer(host: string): Promise<{ server: Server; port: number; accepted: () => number }> {
  let n = 0;
  const server = createServer((s) => {
    n++;
    s.on("error", () => {});
    s.pipe(s);
  });
  await new Promise<void>((r) => server.listen(0, host, r));
  return { server, port: (server.address() as { port: number }).port, accepted: () => n };
}

/** openTcp, again when the random local port it picked is still taken. */
async function tcp(...a: Parameters<typeof openTcp>): ReturnType<typeof openTcp> {
  for (let i = 0; ; i++) {
    try {
      return await openTcp(...a);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EADDRINUSE" || i >= 5) throw e;
    }
  }
}

function lastLog(pred: (l: Record<string, unknown>) => boolean): Record<string, unknown> | undefined {
  for (let i = logLines.length - 1; i >= 0; i--) if (pred(logLines[i]!)) return logLines[i];
  return undefined;
}

async function until(fn: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 200 && !fn(); i++) await new Promise((r) => setTimeout(r, 25));
  assert.ok(fn(), `timed out waiting for ${what}`);
}

describe("outbound traffic policy and TLS resumption, in process", { timeout: 60_000 }, () => {
  let mesh: MeshFixture;
  let frontend: Sidecar;
  let orders: Sidecar;
  let outside: Awaited<ReturnType<typeof echoServer>>;
  let appEcho: Awaited<ReturnType<typeof echoServer>>;
  let echoPort: number;
  const outsideDst = () => ({ address: OUTSIDE_HOST, port: outside.port });

  /** Replaces the Sidecars of the mesh and waits until frontend's proxy holds `mode`. */
  async function setSidecars(extra: string, want: "ALLOW_ANY" | "REGISTRY_ONLY"): Promise<void> {
    await mesh.writeConfig(meshYaml(echoPort, extra));
    assert.equal(await mesh.cp.reload(), true);
    await until(
      () => frontend.state.outboundMode === want && orders.state.snapshot !== undefined,
      `frontend's outbound mode ${want}`,
    );
  }

  before(async () => {
    outside = await echoServer(OUTSIDE_HOST);
    appEcho = await echoServer("127.0.0.1");
    echoPort = await freePort();
    mesh = await controlPlane(meshYaml(echoPort), [
      { namespace: "shop", name: "frontend" },
      { namespace: "shop", name: "echo" },
      { namespace: "shop", name: "orders" },
    ]);
    frontend = await proxy(mesh, "shop/frontend", { inboundPort: await freePort() });
    orders = await proxy(mesh, "shop/orders", { inboundPort: await freePort() });
    await proxy(mesh, "shop/echo", { inboundPort: echoPort, appPort: appEcho.port });
  });

  after(async () => {
    await mesh.close();
    outside.server.close();
    appEcho.server.close();
  });

  it("by default (REGISTRY_ONLY) a connection outside the mesh is closed, logged as BlackHoleCluster", async () => {
    assert.equal(frontend.state.outboundMode, "REGISTRY_ONLY");
    const before = outside.accepted();
    const c = await tcp(mesh, frontend, outsideDst());
    c.write("ping\n");
    assert.equal(await c.closed, "");
    assert.equal(outside.accepted(), before);
    const line = lastLog((l) => l["service"] === "BlackHoleCluster");
    assert.ok(line, "an access-log line for the blocked connection");
    assert.equal(line["flag"], "NO_ROUTE");
    assert.equal(line["upstream"], `${OUTSIDE_HOST}:${outside.port}`);
    const http = await call(mesh, frontend, outsideDst());
    assert.equal(http.status, 502);
    assert.equal(http.headers["x-zmesh-flag"], "NO_ROUTE");
  });

  it("under ALLOW_ANY (root namespace Sidecar) it passes through as plain TCP, logged as PassthroughCluster", async () => {
    await setSidecars(sidecarYaml("default", "zmesh-system", "ALLOW_ANY"), "ALLOW_ANY");
    const c = await tcp(mesh, frontend, outsideDst());
    c.write("hello outside\n");
    assert.equal(await c.read(/\n/), "hello outside\n");
    c.close();
    await until(
      () => logLines.some((l) => l["service"] === "PassthroughCluster" && l["sentBytes"] === 14),
      "the PassthroughCluster access-log line",
    );
    const line = lastLog((l) => l["service"] === "PassthroughCluster")!;
    assert.equal(line["mtls"], false);
    assert.equal(line["upstream"], `${OUTSIDE_HOST}:${outside.port}`);
    assert.equal(line["source"], "spiffe://cluster.local/ns/shop/sa/frontend");
    const metrics = await frontend.telemetry.registry.metrics();
    assert.match(
      metrics,
      /istio_tcp_connections_closed_total\{[^}]*destination_service="PassthroughCluster"[^}]*connection_security_policy="none"/,
    );
    // HTTP goes through as bytes too: the echo server sends the request back, no 502 from the proxy.
    const h = await tcp(mesh, frontend, outsideDst());
    h.write("GET /x HTTP/1.1\r\nhost: outside\r\n\r\n");
    assert.equal(await h.read(/\r\n\r\n/), "GET /x HTTP/1.1\r\nhost: outside\r\n\r\n");
    h.close();
  });

  it("never passes a mesh address through in plaintext, even under ALLOW_ANY", async () => {
    assert.equal(frontend.state.outboundMode, "ALLOW_ANY");
    // A VIP address with no service on that port, an unknown VIP, an endpoint's own address.
    for (const dst of [
      { address: "198.19.0.20", port: 9 },
      { address: "198.19.9.9", port: 80 },
      { address: "127.0.0.1", port: appEcho.port },
    ]) {
      const before = appEcho.accepted();
      const c = await tcp(mesh, frontend, dst);
      c.write("plaintext\n");
      assert.equal(await c.closed, "", `${dst.address}:${dst.port} was closed`);
      assert.equal(appEcho.accepted(), before);
    }
  });

  it("precedence: namespace Sidecar over root, selector Sidecar over namespace", async () => {
    // The namespace says REGISTRY_ONLY: it wins over the root's ALLOW_ANY for every workload of shop.
    await setSidecars(
      sidecarYaml("default", "zmesh-system", "ALLOW_ANY") + sidecarYaml("default", "shop", "REGISTRY_ONLY"),
      "REGISTRY_ONLY",
    );
    assert.equal(orders.state.outboundMode, "REGISTRY_ONLY");
    assert.equal(await (await tcp(mesh, frontend, outsideDst())).closed, "");
    // A Sidecar selecting frontend wins over its namespace's; orders keeps the namespace's.
    await setSidecars(
      sidecarYaml("default", "zmesh-system", "ALLOW_ANY") +
        sidecarYaml("default", "shop", "REGISTRY_ONLY") +
        sidecarYaml("frontend-out", "shop", "ALLOW_ANY", "frontend"),
      "ALLOW_ANY",
    );
    assert.equal(frontend.state.snapshot?.outboundTrafficPolicy?.source, "shop/frontend-out");
    assert.equal(orders.state.outboundMode, "REGISTRY_ONLY");
    const c = await tcp(mesh, frontend, outsideDst());
    c.write("x\n");
    assert.equal(await c.read(/\n/), "x\n");
    c.close();
    const o = await tcp(mesh, orders, outsideDst());
    o.write("x\n");
    assert.equal(await o.closed, "");
  });

  it("a second mTLS connection to the same destination resumes, and the inbound still authorizes by the client's identity", async () => {
    const dst = { address: "198.19.0.20", port: 7 };
    const before = frontend.tlsHandshakes;
    for (let i = 0; i < 3; i++) {
      const c = await tcp(mesh, frontend, dst);
      c.write(`hello ${i}\n`);
      assert.equal(await c.read(/\n/), `hello ${i}\n`);
      c.close();
      await new Promise((r) => setTimeout(r, 20)); // the ticket arrives just after the handshake
    }
    const after = frontend.tlsHandshakes;
    assert.ok(after.resumed - before.resumed >= 2, `resumed ${after.resumed - before.resumed} of 3`);
    // orders may connect, and keeps a session; then the policy stops admitting it: its next
    // connection resumes, and the inbound denies it by the identity the resumed session carries.
    const sidecars = sidecarYaml("default", "zmesh-system", "ALLOW_ANY");
    await mesh.writeConfig(meshYaml(echoPort, sidecars, ["frontend", "orders"]));
    assert.equal(await mesh.cp.reload(), true);
    await until(() => mesh.proxies[2]!.state.policies !== undefined, "echo's policies");
    let ok = "";
    for (let i = 0; i < 100 && ok !== "yes\n"; i++) {
      const o = await tcp(mesh, orders, dst);
      o.write("yes\n");
      ok = await o.read(/\n/).catch(() => "");
      o.close();
      if (ok !== "yes\n") await new Promise((r) => setTimeout(r, 25));
    }
    assert.equal(ok, "yes\n", "orders is admitted once the policy lists it");
    await new Promise((r) => setTimeout(r, 50));
    await mesh.writeConfig(meshYaml(echoPort, sidecars, ["frontend"]));
    assert.equal(await mesh.cp.reload(), true);
    let closed = "";
    for (let i = 0; i < 20 && closed !== ""; i++) {
      const o = await tcp(mesh, orders, dst);
      o.write("no\n");
      closed = await o.closed;
      if (closed !== "") await new Promise((r) => setTimeout(r, 25));
    }
    assert.equal(closed, "", "orders is refused once the policy no longer lists it");
    const resumed = orders.tlsHandshakes.resumed;
    const o = await tcp(mesh, orders, dst);
    o.write("no\n");
    assert.equal(await o.closed, "");
    assert.ok(orders.tlsHandshakes.resumed > resumed, "the refused connection was a resumed one");
    const denied = lastLog(
      (l) => l["direction"] === "inbound" && l["decision"] === "deny" && l["protocol"] === "tcp",
    );
    assert.equal(denied?.["source"], "spiffe://cluster.local/ns/shop/sa/orders");
  });

  it("a server whose SVID was renewed issues under new ticket keys: the next connection is a full handshake", async () => {
    const dst = { address: "198.19.0.20", port: 7 };
    const once = async (text: string) => {
      const c = await tcp(mesh, frontend, dst);
      c.write(text);
      assert.equal(await c.read(/\n/), text);
      c.close();
      await new Promise((r) => setTimeout(r, 20));
    };
    await once("warm\n");
    const before = frontend.tlsHandshakes;
    await once("resumed\n");
    assert.equal(frontend.tlsHandshakes.resumed, before.resumed + 1);
    await mesh.proxies[2]!.renew(); // the echo sidecar
    const renewed = frontend.tlsHandshakes;
    await once("after renewal\n");
    assert.deepEqual(frontend.tlsHandshakes, { resumed: renewed.resumed, full: renewed.full + 1 });
    await once("resumed again\n");
    assert.equal(frontend.tlsHandshakes.resumed, renewed.resumed + 1);
  });
});
