// Graceful drain: a request in flight when the drain starts completes; new connections are refused.
// (Idle HTTP/1.1 connections at a drain: src/proxy/http1/drain.test.ts.)
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { after, before, describe, it } from "node:test";
import type { Sidecar } from "../src/proxy/index.js";
import { call, clientServerMesh, type MeshFixture } from "./harness/index.js";

/** A client sidecar calling `vip`, served by the app `handler` behind its own sidecar. */
async function meshWith(vip: { address: string; port: number }, handler: Parameters<typeof createServer>[1]) {
  const server = createServer(handler);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { mesh, client } = await clientServerMesh({
    server: "app",
    vip: vip.address,
    appPort: (server.address() as { port: number }).port,
  });
  return {
    mesh,
    client,
    close: async () => {
      await mesh.close();
      server.close();
    },
  };
}

describe("drain", { timeout: 30_000 }, () => {
  let mesh: MeshFixture;
  let client: Sidecar;
  let close: () => Promise<void>;
  const vip = { address: "198.19.0.50", port: 80 };

  before(async () => {
    ({ mesh, client, close } = await meshWith(vip, (_q, r) => setTimeout(() => r.end("slow but sure"), 400)));
  });
  after(() => close());

  it("finishes requests in flight, then takes no new connections", async () => {
    const inflight = call(mesh, client, vip, { path: "/" });
    await new Promise((r) => setTimeout(r, 100));
    const drained = client.drain(3_000);
    const r = await inflight;
    assert.equal(r.status, 200);
    assert.equal(r.body, "slow but sure");
    await drained;
    assert.equal(client.state.inflight, 0);
    await assert.rejects(call(mesh, client, vip, { path: "/" }), /ECONNREFUSED/);
  });
});
