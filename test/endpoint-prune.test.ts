// Per-endpoint state of the outbound across a config that removes endpoints, end to end, in one
// process: a real control plane, a client and a server sidecar on loopback, for HTTP/1.1 and
// HTTP/2. Service `backend` selects the server (its sidecar is reached through a relay that counts
// the connections arriving at the server side) and a ghost at 127.0.0.2 where nothing listens (so
// the client's balancer holds its connect failures). A new config stops selecting either, as when
// pods go away. The client's outbound must then close its pooled connections to the server (an
// idle one at once; a busy one once the request in flight on it has completed, which it does),
// and hold nothing for either endpoint any more: HTTP/1.1 pools, HTTP/2 routes and sessions,
// balancer failures. When the endpoints come back, requests are served over new connections. A
// config that removes only the ghost (a replica: same service account) keeps the server's pooled
// connection and forgets only the ghost's failure.
import assert from "node:assert/strict";
import type { ServerResponse } from "node:http";
import { createServer as createHttpServer } from "node:http";
import { type ClientHttp2Session, createServer as createH2Server, type ServerHttp2Stream } from "node:http2";
import { connect, createServer, type Socket } from "node:net";
import { after, before, describe, it } from "node:test";
import type { Sidecar } from "../src/proxy/index.js";
import { h2Request, h2Session } from "./harness/h2.js";
import {
  call,
  controlPlane,
  entryYaml,
  freePort,
  type MeshFixture,
  proxy,
  routeApplied,
  serviceYaml,
} from "./harness/index.js";
import { eventually } from "./harness/wait.js";

/** Client and server on 127.0.0.1, a ghost on 127.0.0.2, labelled `app: <app>` (the ghost: `ghostApp`). */
function meshYaml(vip: string, target: number, portName: string, app: App, ghostApp: App = app): string {
  return (
    entryYaml("client") +
    entryYaml("server", { app }) +
    // A replica of the server (same service account): removing it leaves the identities the
    // Service may run as unchanged, so the server's pooled connections stay valid.
    entryYaml("ghost", { app: ghostApp, address: "127.0.0.2", sa: "server" }) +
    serviceYaml("backend", vip, [[80, target, portName]])
  );
}
type App = "backend" | "gone";

/** A TCP relay to `to` on loopback that counts the connections it carries (the server side's view). */
async function relay(to: number) {
  const open = new Set<Socket>();
  let accepted = 0;
  const server = createServer((s) => {
    accepted++;
    open.add(s);
    const up = connect({ host: "127.0.0.1", port: to });
    s.pipe(up);
    up.pipe(s);
    const end = () => {
      s.destroy();
      up.destroy();
    };
    s.on("error", end);
    up.on("error", end);
    up.on("close", end);
    s.on("close", () => {
      open.delete(s);
      end();
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    port: (server.address() as { port: number }).port,
    open: () => open.size,
    accepted: () => accepted,
    close: () => {
      for (const s of open) s.destroy();
      server.close();
    },
  };
}

const count = (f: () => number) => async () => f();

interface Fixture {
  appPort: number;
  /** One fast request through the client sidecar: its status. */
  send: (client: Sidecar) => Promise<number>;
  /** Starts a request the app answers only on `release()`; resolves with status and body. */
  slow: (client: Sidecar) => Promise<{ status: number; body: string }>;
  /** Slow requests the app holds now. */
  holding: () => number;
  release: () => void;
  close: () => Promise<void>;
}

function scenario(
  protocol: string,
  vip: string,
  portName: string,
  setup: (mesh: MeshFixture) => Promise<Fixture>,
) {
  describe(`state of endpoints gone from the config (${protocol})`, () => {
    let mesh: MeshFixture;
    let client: Sidecar;
    let fixture: Fixture;
    let counter: Awaited<ReturnType<typeof relay>>;
    const dst = { address: vip, port: 80 };
    const apply = async (app: App, ghostApp: App = app) => {
      await mesh.writeConfig(meshYaml(vip, counter.port, portName, app, ghostApp));
      assert.equal(await mesh.cp.reload(), true);
    };

    before(async () => {
      const inbound = await freePort();
      counter = await relay(inbound);
      mesh = await controlPlane(meshYaml(vip, counter.port, portName, "backend"), [
        { namespace: "shop", name: "client" },
        { namespace: "shop", name: "server" },
      ]);
      fixture = await setup(mesh);
      client = await proxy(mesh, "shop/client", { inboundPort: await freePort() });
      await proxy(mesh, "shop/server", { inboundPort: inbound, appPort: fixture.appPort });
      await routeApplied(client, dst, (r) => r.service.endpoints.length === 2);
    });

    after(async () => {
      await mesh.close();
      await fixture.close();
      counter.close();
    });

    /**
     * Requests until the ghost was picked at least once: its connect failure is retried on the
     * server (nothing was sent), and the balancer holds the failure. Bounded: each pick is 1 in 2.
     */
    async function ghostFailureHeld(): Promise<void> {
      for (let i = 0; i < 40 && client.outboundHeld.balancer === 0; i++)
        assert.equal(await fixture.send(client), 200);
      assert.equal(client.outboundHeld.balancer, 1, "the ghost's connect failure is held");
    }

    it("closes the pooled connections to removed endpoints (busy ones after their request, which completes) and forgets them", async () => {
      await ghostFailureHeld();

      // A request in flight on a pooled connection; for HTTP/1.1 another request then needs (and
      // leaves idle) a second connection, as HTTP/2 multiplexes both on one session.
      const slow = fixture.slow(client);
      await eventually("the app holds the slow request", count(fixture.holding), (n) => n === 1, 5_000);
      assert.equal(await fixture.send(client), 200);
      const busyAndIdle = protocol === "HTTP/1.1" ? 2 : 1;
      assert.equal(counter.open(), busyAndIdle, "connections to the server side before the change");
      const held = client.outboundHeld;
      assert.ok(protocol === "HTTP/1.1" ? held.pools >= 1 : held.h2Routes >= 1 && held.h2Sessions >= 1);

      // The Service stops selecting both endpoints.
      await apply("gone");
      await routeApplied(client, dst, (r) => r.service.endpoints.length === 0);
      assert.deepEqual(
        client.outboundHeld,
        { pools: 0, h2Routes: 0, h2Sessions: 0, balancer: 0 },
        "nothing is held for the removed endpoints",
      );
      // The idle HTTP/1.1 connection closes now; the busy one (the HTTP/2 session) stays open for
      // the request in flight.
      await eventually("the idle connection closes", count(counter.open), (n) => n === 1, 5_000);
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(counter.open(), 1, "the connection carrying the request in flight stays open");
      fixture.release();
      assert.deepEqual(await slow, { status: 200, body: "slow" }, "the request in flight completed");
      await eventually("the busy connection closes after it", count(counter.open), (n) => n === 0, 5_000);
      assert.equal(fixture.holding(), 0);

      // The endpoints come back: served over a new connection (a new pool, dialled and checked anew).
      const accepted = counter.accepted();
      await apply("backend");
      await routeApplied(client, dst, (r) => r.service.endpoints.length === 2);
      assert.equal(await fixture.send(client), 200);
      assert.equal(counter.accepted(), accepted + 1);
    });

    it("a config that removes one endpoint keeps the other's pooled connection and forgets only the removed one's failure", async () => {
      await ghostFailureHeld();
      assert.equal(await fixture.send(client), 200);
      const accepted = counter.accepted();

      await apply("backend", "gone"); // the ghost goes, the server stays
      await routeApplied(client, dst, (r) => r.service.endpoints.length === 1);
      const held = client.outboundHeld;
      assert.equal(held.balancer, 0, "the removed endpoint's failure is forgotten");
      assert.ok(protocol === "HTTP/1.1" ? held.pools === 1 : held.h2Routes === 1 && held.h2Sessions === 1);
      assert.equal(await fixture.send(client), 200);
      assert.equal(counter.accepted(), accepted, "the server's pooled connection was kept and reused");
    });
  });
}

scenario("HTTP/1.1", "198.19.0.83", "http", async (mesh) => {
  const held: ServerResponse[] = [];
  const server = createHttpServer((req, res) => {
    req.resume();
    if (req.url === "/slow") held.push(res);
    else res.end("fast");
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const dst = { address: "198.19.0.83", port: 80 };
  return {
    appPort: (server.address() as { port: number }).port,
    send: async (client) => (await call(mesh, client, dst)).status,
    slow: async (client) => {
      const r = await call(mesh, client, dst, { path: "/slow" });
      return { status: r.status, body: r.body };
    },
    holding: () => held.length,
    release: () => {
      for (const res of held.splice(0)) res.end("slow");
    },
    close: async () => {
      server.closeAllConnections();
      await new Promise((r) => server.close(() => r(undefined)));
    },
  };
});

scenario("HTTP/2", "198.19.0.84", "http2-backend", async (mesh) => {
  const held: ServerHttp2Stream[] = [];
  const server = createH2Server();
  server.on("stream", (s, h) => {
    s.on("error", () => {});
    s.respond({ ":status": 200 });
    if (h[":path"] === "/slow") held.push(s);
    else s.end("fast");
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  let session: ClientHttp2Session | undefined;
  const request = async (client: Sidecar, path: string) => {
    // One app session throughout: each request is a new stream on it.
    session ??= await h2Session(mesh, client, { address: "198.19.0.84", port: 80 });
    const r = await h2Request(session, { ":method": "GET", ":path": path });
    return { status: Number(r.headers[":status"]), body: r.body.toString() };
  };
  return {
    appPort: (server.address() as { port: number }).port,
    send: async (client) => (await request(client, "/")).status,
    slow: (client) => request(client, "/slow"),
    holding: () => held.length,
    release: () => {
      for (const s of held.splice(0)) s.end("slow");
    },
    close: async () => {
      session?.close();
      await new Promise((r) => server.close(() => r(undefined)));
    },
  };
});
