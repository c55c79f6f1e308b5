// Outbound resilience: an endpoint that refuses connections costs idempotent requests nothing
// (retried once on another endpoint) and is ejected after a few failures.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { Sidecar } from "../src/proxy/index.js";
import {
  app,
  call,
  controlPlane,
  entryYaml,
  freePort,
  type MeshFixture,
  proxy,
  serviceYaml,
} from "./harness/index.js";

describe("retries and ejection", { timeout: 30_000 }, () => {
  let mesh: MeshFixture;
  let client: Sidecar;
  let backend: Awaited<ReturnType<typeof app>>;
  const vip = { address: "198.19.0.60", port: 80 };

  before(async () => {
    backend = await app("backend");
    const inbound = await freePort();
    // Two endpoints: 127.0.0.1 has the backend's sidecar, 127.0.0.2 has nothing on that port.
    mesh = await controlPlane(
      entryYaml("client") +
        entryYaml("backend-live", { app: "backend", sa: "backend" }) +
        entryYaml("backend-dead", { app: "backend", sa: "backend", address: "127.0.0.2" }) +
        serviceYaml("backend", vip.address, [[80, inbound]]),
      [
        { namespace: "shop", name: "client" },
        { namespace: "shop", name: "backend-live" },
      ],
    );
    client = await proxy(mesh, "shop/client", { inboundPort: await freePort() });
    await proxy(mesh, "shop/backend-live", { inboundPort: inbound, appPort: backend.port });
  });
  after(async () => {
    await mesh.close();
    backend.server.close();
  });

  it("every GET succeeds although one endpoint of two refuses connections", async () => {
    for (let i = 0; i < 30; i++)
      assert.equal((await call(mesh, client, vip, { path: `/r${i}` })).status, 200, `request ${i}`);
  });

  it("a POST with a body is not retried: it may fail, but it never reaches the app twice", async () => {
    const before = backend.seen.length;
    let ok = 0;
    for (let i = 0; i < 10; i++) {
      const r = await call(mesh, client, vip, { method: "POST", path: "/charge", body: "x" });
      if (r.status === 200) ok++;
      else assert.equal(r.headers["x-zmesh-flag"], "UPSTREAM_FAILURE");
    }
    assert.equal(backend.seen.length - before, ok);
  });
});
