// Secure naming across a config change, end to end, in one process: a real control plane, a
// client and a server sidecar on loopback, for HTTP/1.1 and HTTP/2. The client's outbound pools
// its mutual-TLS connection (HTTP/2: its session) to the server, and secure naming checks the
// server's identity only when that connection is dialled. A new config then makes the Service
// select another workload at the same address and port (an address reused by a workload of
// another service account): the server sidecar's identity is no longer one the Service may run as.
// The next request must not ride the pooled connection checked against the old set: it is refused
// with SECURE_NAMING (503), and once the set holds the server again, requests are served.
import assert from "node:assert/strict";
import { type ClientHttp2Session, createServer as createH2Server, type Http2Server } from "node:http2";
import { after, before, describe, it } from "node:test";
import type { Sidecar } from "../src/proxy/index.js";
import { h2Request, h2Session } from "./harness/h2.js";
import {
  app,
  call,
  controlPlane,
  freePort,
  type MeshFixture,
  type OutboundRoute,
  proxy,
  routeApplied,
} from "./harness/index.js";

const ID = (sa: string) => `spiffe://cluster.local/ns/shop/sa/${sa}`;

/** A WorkloadEntry on 127.0.0.1 with its own service account, labelled `app` and `team: shop`. */
function entry(name: string): string {
  return `apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: ${name}, namespace: shop, labels: { app: ${name}, team: shop } }
spec: { address: 127.0.0.1, serviceAccount: ${name}, labels: { app: ${name}, team: shop } }
---
`;
}

/**
 * shop/client, shop/server (its sidecar runs) and shop/decoy (no sidecar; same address as the
 * server, another service account); Service `server` at `vip`:80 selects by `selector`. `extra`
 * adds resources.
 */
function meshYaml(vip: string, inbound: number, portName: string, selector: string, extra = ""): string {
  return `${entry("client")}${entry("server")}${entry("decoy")}apiVersion: v1
kind: Service
metadata: { name: server, namespace: shop }
spec:
  selector: { ${selector} }
  clusterIP: ${vip}
  ports:
    - { name: ${portName}, port: 80, targetPort: ${inbound} }
---
${extra}`;
}

/** Another Service (nothing calls it): a config with new routes but the same identities for `server`. */
const OTHER_SERVICE = `apiVersion: v1
kind: Service
metadata: { name: other, namespace: shop }
spec:
  selector: { app: client }
  clusterIP: 198.19.0.79
  ports:
    - { name: http, port: 80, targetPort: 9 }
---
`;

/** A route whose allowed identities are exactly `want`. */
const sameAs =
  (want: string[]) =>
  ({ allowed }: OutboundRoute) =>
    allowed.size === want.length && want.every((x) => allowed.has(x));

/** Outbound mutual-TLS dials of the client sidecar so far (full and resumed handshakes). */
const dials = (client: Sidecar) => client.tlsHandshakes.full + client.tlsHandshakes.resumed;

interface Answer {
  status: number;
  flag: string | undefined;
}

/**
 * The scenario, for one protocol: `send` makes one request through the client sidecar, `served`
 * counts the requests the server app got.
 */
function scenario(
  protocol: string,
  vip: string,
  portName: string,
  setup: (mesh: MeshFixture) => Promise<{
    appPort: number;
    served: () => number;
    send: (client: Sidecar) => Promise<Answer>;
    close: () => Promise<void>;
  }>,
): void {
  describe(`secure naming after a change of the allowed identities (${protocol})`, () => {
    let mesh: MeshFixture;
    let client: Sidecar;
    let inbound: number;
    let fixture: Awaited<ReturnType<typeof setup>>;
    const dst = { address: vip, port: 80 };
    const apply = async (selector: string, extra = "") => {
      await mesh.writeConfig(meshYaml(vip, inbound, portName, selector, extra));
      assert.equal(await mesh.cp.reload(), true);
    };

    before(async () => {
      inbound = await freePort();
      mesh = await controlPlane(meshYaml(vip, inbound, portName, "app: server"), [
        { namespace: "shop", name: "client" },
        { namespace: "shop", name: "server" },
      ]);
      fixture = await setup(mesh);
      client = await proxy(mesh, "shop/client", { inboundPort: await freePort() });
      await proxy(mesh, "shop/server", { inboundPort: inbound, appPort: fixture.appPort });
      await routeApplied(client, dst, sameAs([ID("server")]));
    });

    after(async () => {
      await mesh.close();
      await fixture.close();
    });

    it("a pooled connection checked against the old set serves no request; a set holding the server again does", async () => {
      // Served, and the second request rides the pooled connection (no new dial).
      assert.deepEqual(await fixture.send(client), { status: 200, flag: undefined });
      const pooled = dials(client);
      assert.deepEqual(await fixture.send(client), { status: 200, flag: undefined });
      assert.equal(dials(client), pooled, "the second request reused the pooled connection");

      // A config with new routes but the same identities for the service: still pooled.
      await apply("app: server", OTHER_SERVICE);
      await routeApplied(client, { address: "198.19.0.79", port: 80 }, () => true);
      assert.deepEqual(await fixture.send(client), { status: 200, flag: undefined });
      assert.equal(dials(client), pooled, "an unchanged set keeps the pooled connection");

      // The Service now selects the decoy: the server sidecar's identity is no longer allowed.
      await apply("app: decoy");
      await routeApplied(client, dst, sameAs([ID("decoy")]));
      const served = fixture.served();
      assert.deepEqual(await fixture.send(client), { status: 503, flag: "SECURE_NAMING" });
      assert.equal(fixture.served(), served, "the request did not reach the server's app");
      assert.ok(dials(client) > pooled, "the refused request dialled anew");

      // Back to the server: served again, over a new connection that is then pooled.
      await apply("app: server");
      await routeApplied(client, dst, sameAs([ID("server")]));
      const beforeBack = dials(client);
      assert.deepEqual(await fixture.send(client), { status: 200, flag: undefined });
      assert.equal(dials(client), beforeBack + 1);
      assert.deepEqual(await fixture.send(client), { status: 200, flag: undefined });
      assert.equal(dials(client), beforeBack + 1, "pooled again");

      // A changed set that still holds the server: a new connection, and served.
      await apply("team: shop");
      await routeApplied(client, dst, sameAs([ID("client"), ID("decoy"), ID("server")]));
      assert.deepEqual(await fixture.send(client), { status: 200, flag: undefined });
      assert.equal(dials(client), beforeBack + 2, "the connection checked against the old set was retired");
      assert.equal(fixture.served(), served + 3);
    });
  });
}

scenario("HTTP/1.1", "198.19.0.71", "http", async (mesh) => {
  const a = await app("server");
  return {
    appPort: a.port,
    served: () => a.seen.length,
    send: async (client) => {
      const r = await call(mesh, client, { address: "198.19.0.71", port: 80 });
      return { status: r.status, flag: r.headers["x-zmesh-flag"] };
    },
    close: () => new Promise((r) => a.server.close(() => r())),
  };
});

scenario("HTTP/2", "198.19.0.72", "http2-server", async (mesh) => {
  let seen = 0;
  const server: Http2Server = createH2Server();
  server.on("stream", (s) => {
    seen++;
    s.on("error", () => {});
    s.respond({ ":status": 200 });
    s.end("server");
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  let session: ClientHttp2Session | undefined;
  return {
    appPort: (server.address() as { port: number }).port,
    served: () => seen,
    send: async (client) => {
      // One app session throughout: each request is a new stream on it.
      session ??= await h2Session(mesh, client, { address: "198.19.0.72", port: 80 });
      const r = await h2Request(session, { ":method": "GET", ":path": "/" });
      const flag = r.headers["x-zmesh-flag"];
      return { status: Number(r.headers[":status"]), flag: typeof flag === "string" ? flag : undefined };
    },
    close: async () => {
      session?.close();
      await new Promise((r) => server.close(() => r(undefined)));
    },
  };
});
