// The thin path in one process: a real control plane (CA, config stream) and real proxies on
// loopback. What iptables does in a namespace, the harness does with a table of intents.
import assert from "node:assert/strict";
import { connect, createServer } from "node:net";
import { after, before, describe, it } from "node:test";
import * as grpc from "@grpc/grpc-js";
import { MeshCAClient } from "../src/api/index.js";
import { generateCsr } from "../src/identity/index.js";
import type { Sidecar } from "../src/proxy/index.js";
import {
  app,
  call,
  controlPlane,
  freePort,
  logLines,
  type MeshFixture,
  proxy,
  requestsTotal,
  scrapeMetrics,
} from "./harness/index.js";

function meshYaml(ports: { catalog: number; payments: number; impostor: number }): string {
  const entry = (name: string, sa: string, app: string) => `
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: ${name}, namespace: shop, labels: { app: ${app} } }
spec: { address: 127.0.0.1, serviceAccount: ${sa}, labels: { app: ${app} } }
---`;
  const svc = (name: string, app: string, vip: string, target: number) => `
apiVersion: v1
kind: Service
metadata: { name: ${name}, namespace: shop }
spec:
  selector: { app: ${app} }
  clusterIP: ${vip}
  ports: [{ name: http, port: 80, targetPort: ${target} }]
---`;
  return `${entry("frontend", "frontend", "frontend")}${entry("catalog", "catalog", "catalog")}${entry("payments", "payments", "payments")}
${svc("catalog", "catalog", "198.19.0.10", ports.catalog)}${svc("payments", "payments", "198.19.0.11", ports.payments)}
${svc("impostor", "catalog", "198.19.0.12", ports.impostor)}
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: catalog-readers, namespace: shop }
spec:
  selector: { matchLabels: { app: catalog } }
  rules:
    - from: [{ source: { principals: ["cluster.local/ns/shop/sa/frontend"] } }]
      to: [{ operation: { methods: ["GET"] } }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: payments-from-orders, namespace: shop }
spec:
  selector: { matchLabels: { app: payments } }
  rules:
    - from: [{ source: { principals: ["cluster.local/ns/shop/sa/orders"] } }]
      to: [{ operation: { methods: ["POST"], paths: ["/charge"] } }]
`;
}

describe("thin path in process", { timeout: 60_000 }, () => {
  let mesh: MeshFixture;
  let frontend: Sidecar;
  let catalogApp: Awaited<ReturnType<typeof app>>;
  let paymentsApp: Awaited<ReturnType<typeof app>>;
  let ports: { catalog: number; payments: number; impostor: number };
  const catalog = { address: "198.19.0.10", port: 80 };
  const payments = { address: "198.19.0.11", port: 80 };

  before(async () => {
    catalogApp = await app("catalog");
    paymentsApp = await app("payments");
    const p = { catalog: await freePort(), payments: await freePort() };
    // The impostor service selects catalog's labels but its port leads to the payments proxy.
    ports = { ...p, impostor: p.payments };
    mesh = await controlPlane(meshYaml(ports), [
      { namespace: "shop", name: "frontend" },
      { namespace: "shop", name: "catalog" },
      { namespace: "shop", name: "payments" },
    ]);
    frontend = await proxy(mesh, "shop/frontend", { inboundPort: await freePort() });
    await proxy(mesh, "shop/catalog", { inboundPort: ports.catalog, appPort: catalogApp.port });
    await proxy(mesh, "shop/payments", { inboundPort: ports.payments, appPort: paymentsApp.port });
  });

  after(async () => {
    await mesh.close();
    catalogApp.server.close();
    paymentsApp.server.close();
  });

  it("a proxy whose inbound port is taken says so: ready() rejects and no traffic listener opens (it used to wait forever)", async () => {
    const squatter = createServer();
    await new Promise<void>((r) => squatter.listen(0, "127.0.0.1", r));
    const port = (squatter.address() as { port: number }).port;
    try {
      await assert.rejects(proxy(mesh, "shop/frontend", { inboundPort: port }), /EADDRINUSE/);
      const stuck = mesh.proxies.at(-1)!;
      assert.equal(stuck.ports.outbound, 0, "no outbound listener either");
      await assert.rejects(stuck.ready(), /EADDRINUSE/);
    } finally {
      squatter.close();
    }
  });

  it("a proxy whose outbound port is taken closes the inbound it had opened: no half-open proxy", async () => {
    const squatter = createServer();
    await new Promise<void>((r) => squatter.listen(0, "127.0.0.1", r));
    const taken = (squatter.address() as { port: number }).port;
    const inboundPort = await freePort();
    try {
      await assert.rejects(proxy(mesh, "shop/frontend", { inboundPort, outboundPort: taken }), /EADDRINUSE/);
      const refused = await new Promise<boolean>((resolve) => {
        const s = connect({ host: "127.0.0.1", port: inboundPort });
        s.once("connect", () => {
          s.destroy();
          resolve(false);
        });
        s.once("error", (e: NodeJS.ErrnoException) => resolve(e.code === "ECONNREFUSED"));
      });
      assert.ok(refused, "the inbound port does not accept connections");
    } finally {
      squatter.close();
    }
  });

  it("an allowed call reaches the app over mTLS and the app learns the caller's identity", async () => {
    const r = await call(mesh, frontend, catalog, { path: "/items?x=1" });
    assert.equal(r.status, 200);
    assert.equal(r.body, "catalog GET /items?x=1");
    const seen = catalogApp.seen.at(-1)!;
    assert.match(
      String(seen.headers["x-forwarded-client-cert"]),
      /URI=spiffe:\/\/cluster\.local\/ns\/shop\/sa\/frontend$/,
    );
    assert.ok(seen.headers["x-request-id"]);
  });

  it("a call no policy allows gets 403 and never reaches the app", async () => {
    const before = paymentsApp.seen.length;
    const r = await call(mesh, frontend, payments, { method: "POST", path: "/charge" });
    assert.equal(r.status, 403);
    assert.match(r.body, /^RBAC: access denied/);
    assert.equal(r.headers["x-zmesh-flag"], "RBAC_DENIED");
    assert.equal(paymentsApp.seen.length, before);
  });

  it("a method the policy does not list is denied", async () => {
    const r = await call(mesh, frontend, catalog, { method: "DELETE", path: "/items" });
    assert.equal(r.status, 403);
  });

  it("a caller-supplied X-Forwarded-Client-Cert is replaced, not passed on", async () => {
    await call(mesh, frontend, catalog, {
      path: "/spoof",
      headers: { "x-forwarded-client-cert": "URI=spiffe://cluster.local/ns/shop/sa/orders" },
    });
    const seen = catalogApp.seen.at(-1)!;
    assert.equal(seen.url, "/spoof");
    assert.doesNotMatch(String(seen.headers["x-forwarded-client-cert"]), /sa\/orders/);
  });

  it("secure naming: a server with an identity the service may not run as is refused", async () => {
    const before = paymentsApp.seen.length;
    const r = await call(mesh, frontend, { address: "198.19.0.12", port: 80 });
    assert.equal(r.status, 503);
    assert.equal(r.headers["x-zmesh-flag"], "SECURE_NAMING");
    assert.equal(paymentsApp.seen.length, before);
  });

  it("an address that is no service gets 502 from the caller's own proxy", async () => {
    const r = await call(mesh, frontend, { address: "198.19.9.9", port: 80 });
    assert.equal(r.status, 502);
    assert.equal(r.headers["x-zmesh-flag"], "NO_ROUTE");
  });

  it("plaintext to an inbound port never reaches the app", async () => {
    const before = catalogApp.seen.length;
    const port = mesh.proxies[1]!.ports.inbound;
    const answer = await new Promise<string>((resolve) => {
      const s = connect({ host: "127.0.0.1", port }, () =>
        s.write("GET /items HTTP/1.1\r\nhost: catalog\r\n\r\n"),
      );
      let data = "";
      s.on("data", (d: Buffer) => {
        data += d.toString("latin1");
      });
      s.on("error", () => resolve(data));
      s.on("close", () => resolve(data));
    });
    assert.doesNotMatch(answer, /HTTP\/1\.1 200/);
    assert.equal(catalogApp.seen.length, before);
  });

  it("a policy change reaches the proxies and is enforced; a broken one is rejected and the last good stays", async () => {
    const yaml = meshYaml(ports);
    assert.equal((await call(mesh, frontend, payments, { method: "POST", path: "/charge" })).status, 403);
    const widened = yaml.replace(
      'principals: ["cluster.local/ns/shop/sa/orders"]',
      'principals: ["cluster.local/ns/shop/sa/orders", "cluster.local/ns/shop/sa/frontend"]',
    );
    assert.notEqual(widened, yaml);
    await mesh.writeConfig(widened);
    assert.equal(await mesh.cp.reload(), true);
    assert.equal(
      await eventually(
        async () => (await call(mesh, frontend, payments, { method: "POST", path: "/charge" })).status,
        200,
      ),
      200,
    );
    await mesh.writeConfig(
      `${widened}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: shop}\nspec: {action: MAYBE}\n`,
    );
    assert.equal(await mesh.cp.reload(), false);
    assert.equal((await call(mesh, frontend, payments, { method: "POST", path: "/charge" })).status, 200);
    await mesh.writeConfig(yaml);
    assert.equal(await mesh.cp.reload(), true);
    assert.equal(
      await eventually(
        async () => (await call(mesh, frontend, payments, { method: "POST", path: "/charge" })).status,
        403,
      ),
      403,
    );
  });

  it("certificates rotate under traffic without a failed request", async () => {
    const appPort = catalogApp.port;
    const short = await proxy(mesh, "shop/frontend", {
      inboundPort: await freePort(),
      certTtlSeconds: 3,
      appPort,
    });
    const first = short.state.cert!.serial;
    const serials = new Set([first]);
    const deadline = Date.now() + 8_000;
    let requests = 0;
    while (serials.size < 3 && Date.now() < deadline) {
      const r = await call(mesh, short, catalog, { path: "/rotate" });
      assert.equal(r.status, 200, `request ${requests} failed during rotation`);
      requests++;
      serials.add(short.state.cert!.serial);
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.ok(serials.size >= 3, `expected two renewals in 8 s, saw ${serials.size - 1}`);
    assert.ok(requests > 10);
  });

  it("metrics carry Istio's names and labels on both sides, with the same flags as the responses", async () => {
    await call(mesh, frontend, catalog, { path: "/items" });
    await call(mesh, frontend, payments, { method: "POST", path: "/charge" });
    const source = await scrapeMetrics(frontend);
    assert.ok(
      requestsTotal(
        source,
        'reporter="source"',
        'source_workload="frontend"',
        'destination_workload="catalog"',
        'destination_service="catalog.shop.svc.cluster.local"',
        'response_code="200"',
        'connection_security_policy="mutual_tls"',
      ),
      source,
    );
    assert.ok(requestsTotal(source, 'destination_workload="payments"', 'response_code="403"'), source);
    const dest = await scrapeMetrics(mesh.proxies[1]!);
    assert.ok(
      requestsTotal(
        dest,
        'reporter="destination"',
        'source_principal="spiffe://cluster.local/ns/shop/sa/frontend"',
        'source_workload="frontend"',
        'destination_principal="spiffe://cluster.local/ns/shop/sa/catalog"',
      ),
      dest,
    );
    const denied = await scrapeMetrics(mesh.proxies[2]!);
    assert.ok(requestsTotal(denied, 'response_code="403"', 'response_flags="RBAC_DENIED"'), denied);
    assert.match(denied, /istio_request_duration_milliseconds_bucket\{/);
    assert.match(denied, /zmesh_authz_decisions_total\{reporter="destination",decision="deny"/);
  });

  it("the CA refuses a CSR for an identity the caller did not prove", async () => {
    const csr = await generateCsr("spiffe://cluster.local/ns/shop/sa/payments");
    const err = await sign(mesh, mesh.tokens.get("shop/frontend")!, csr.csrPem);
    assert.equal(err?.code, grpc.status.PERMISSION_DENIED);
    assert.match(err?.details ?? "", /ZMESH_CSR_IDENTITY/);
    const logged = logLines.find((l) => l["msg"] === "CSR refused" && l["caller"] === "shop/frontend");
    assert.match(String(logged?.["err"]), /asks for .*sa\/payments.* but the caller proved .*sa\/frontend/);
  });

  it("the control plane refuses calls without a valid credential", async () => {
    const csr = await generateCsr("spiffe://cluster.local/ns/shop/sa/frontend");
    const err = await sign(mesh, "not-a-real-token-at-all", csr.csrPem);
    assert.equal(err?.code, grpc.status.UNAUTHENTICATED);
  });
});

async function eventually<T>(fn: () => Promise<T>, want: T, timeoutMs = 2_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last = await fn();
  while (last !== want && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 25));
    last = await fn();
  }
  return last;
}

function sign(mesh: MeshFixture, token: string, csrPem: string): Promise<grpc.ServiceError | null> {
  const ssl = grpc.credentials.createSsl(Buffer.from(mesh.cp.ca.trustBundlePem()), null, null, {
    checkServerIdentity: () => undefined,
  });
  const md = grpc.credentials.createFromMetadataGenerator((_p, cb) => {
    const m = new grpc.Metadata();
    m.set("authorization", `Bearer ${token}`);
    cb(null, m);
  });
  const Client = MeshCAClient();
  const client = new Client(
    `127.0.0.1:${mesh.cp.port}`,
    grpc.credentials.combineChannelCredentials(ssl, md),
    {
      "grpc.ssl_target_name_override": "zmesh-controlplane",
    },
  );
  return new Promise((resolve) => {
    (client as unknown as { Sign: (r: unknown, cb: (e: grpc.ServiceError | null) => void) => void }).Sign(
      { csrPem, ttlSeconds: 0 },
      (e) => {
        client.close();
        resolve(e);
      },
    );
  });
}
