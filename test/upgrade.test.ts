// HTTP/1.1 upgrades (WebSocket-style) through both sidecars: authorized like a request at the
// destination, then bytes flow both ways; a denied upgrade gets 403 and never reaches the app.
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import { after, before, describe, it } from "node:test";
import type { Sidecar } from "../src/proxy/index.js";
import { clientServerMesh, logLines, type MeshFixture, openTcp } from "./harness/index.js";

describe("upgrades through the mesh", { timeout: 30_000 }, () => {
  let mesh: MeshFixture;
  let client: Sidecar;
  let server: Server;
  let upgrades = 0;
  const vip = { address: "198.19.0.40", port: 80 };

  before(async () => {
    server = createServer((_q, r) => r.end("plain"));
    server.on("upgrade", (req, sock) => {
      upgrades++;
      sock.write(
        `HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\nx-path: ${req.url}\r\n\r\n`,
      );
      sock.pipe(sock);
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const appPort = (server.address() as { port: number }).port;
    ({ mesh, client } = await clientServerMesh({
      server: "chat",
      vip: vip.address,
      appPort,
      yaml: `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: chat, namespace: shop }
spec:
  selector: { matchLabels: { app: chat } }
  rules: [{ to: [{ operation: { paths: ["/ws"] } }] }]
`,
    }));
  });
  after(async () => {
    await mesh.close();
    server.close();
  });

  it("an allowed upgrade switches protocols and echoes both ways", async () => {
    const c = await openTcp(mesh, client, vip);
    c.write("GET /./ws HTTP/1.1\r\nhost: chat\r\nconnection: Upgrade\r\nupgrade: echo\r\n\r\n");
    const head = await c.read(/\r\n\r\n/);
    assert.match(head, /^HTTP\/1\.1 101/);
    assert.match(head, /x-path: \/ws\r\n/, "the app receives the normalized path");
    c.write("hello over the mesh\n");
    assert.equal(await c.read(/\n/), "hello over the mesh\n");
    c.close();
  });

  it("a denied upgrade gets 403 and the app never sees it", async () => {
    const before = upgrades;
    const c = await openTcp(mesh, client, vip);
    c.write(
      "GET /admin HTTP/1.1\r\nhost: chat\r\nx-request-id: ws-denied-1\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
    );
    const answer = await c.closed;
    assert.match(answer, /^HTTP\/1\.1 403/);
    assert.match(
      answer,
      /\r\n\r\nRBAC: access denied \(request id ws-denied-1\)\n$/,
      "the body names the request id",
    );
    assert.equal(upgrades, before);
    // The sidecar's line says what `zmesh why` needs: who, what, the decision and its status.
    const line = logLines.find((l) => l["msg"] === "access" && l["requestId"] === "ws-denied-1");
    assert.equal(line?.["method"], "GET");
    assert.equal(line?.["status"], 403);
    assert.equal(line?.["flag"], "RBAC_DENIED");
    assert.equal(line?.["decision"], "deny");
    assert.equal(line?.["source"], "spiffe://cluster.local/ns/shop/sa/client");
    assert.equal(line?.["destination"], "spiffe://cluster.local/ns/shop/sa/chat");
  });
});
