// Opaque TCP through the mesh, in process: a server-first protocol (the server greets before the
// client says anything) must not stall, bytes pass unchanged both ways over mutual TLS, a denied
// connection is closed, and the connection counters move.
import assert from "node:assert/strict";
import { createServer, type Server } from "node:net";
import { after, before, describe, it } from "node:test";
import type { Sidecar } from "../src/proxy/index.js";
import {
  controlPlane,
  entryYaml,
  freePort,
  type MeshFixture,
  openTcp,
  proxy,
  serviceYaml,
} from "./harness/index.js";

function yaml(dbPort: number, autoPort: number): string {
  return `${entryYaml("app")}${entryYaml("stranger")}${entryYaml("db")}${serviceYaml("db", "198.19.0.20", [
    [5432, dbPort, "tcp-db"],
    [7000, autoPort, "legacy"],
  ])}
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: db-from-app, namespace: shop }
spec:
  selector: { matchLabels: { app: db } }
  rules:
    - from: [{ source: { principals: ["cluster.local/ns/shop/sa/app"] } }]
`;
}

/** A server-first echo: says "HELLO <name>\\n" at once, then echoes what it gets. */
async function greeter(name: string): Promise<{ server: Server; port: number }> {
  const server = createServer((s) => {
    s.write(`HELLO ${name}\n`);
    s.pipe(s);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { server, port: (server.address() as { port: number }).port };
}

describe("opaque TCP through the mesh", { timeout: 30_000 }, () => {
  let mesh: MeshFixture;
  let app: Sidecar;
  let db: Awaited<ReturnType<typeof greeter>>;

  before(async () => {
    db = await greeter("db");
    const dbInbound = await freePort();
    mesh = await controlPlane(yaml(dbInbound, dbInbound), [
      { namespace: "shop", name: "app" },
      { namespace: "shop", name: "db" },
      { namespace: "shop", name: "stranger" },
    ]);
    app = await proxy(mesh, "shop/app", { inboundPort: await freePort() });
    await proxy(mesh, "shop/db", { inboundPort: dbInbound, appPort: db.port });
  });
  after(async () => {
    await mesh.close();
    db.server.close();
  });

  it("a server-first protocol on a tcp- port greets at once and echoes", async () => {
    const c = await openTcp(mesh, app, { address: "198.19.0.20", port: 5432 });
    assert.equal(await c.read(/\n/), "HELLO db\n");
    c.write("ping\n");
    assert.equal(await c.read(/ping\n/), "ping\n");
    c.close();
  });

  it("on a port of unknown protocol, a silent client still gets the greeting (detection gives up, TCP)", async () => {
    const c = await openTcp(mesh, app, { address: "198.19.0.20", port: 7000 });
    assert.equal(await c.read(/\n/), "HELLO db\n");
    c.close();
  });

  it("a connection from an identity the policy does not allow is closed before any byte", async () => {
    const stranger = await proxy(mesh, "shop/stranger", { inboundPort: await freePort() });
    const c = await openTcp(mesh, stranger, { address: "198.19.0.20", port: 5432 });
    assert.equal(await c.closed, "");
  });

  it("the TCP counters carry Istio's names", async () => {
    await new Promise((r) => setTimeout(r, 50));
    const text = await (await fetch(`http://127.0.0.1:${app.ports.metrics}/stats/prometheus`)).text();
    assert.match(
      text,
      /istio_tcp_connections_opened_total\{[^}]*destination_service="db\.shop\.svc\.cluster\.local"/,
    );
    assert.match(text, /istio_tcp_connections_closed_total\{[^}]*connection_security_policy="mutual_tls"/);
    assert.match(text, /istio_tcp_received_bytes_total\{[^}]*\} [1-9]/);
    assert.match(text, /istio_tcp_sent_bytes_total\{[^}]*\} [1-9]/);
  });
});
