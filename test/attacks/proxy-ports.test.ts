// Attack suite, bypass in process: a connection whose original destination is one of the proxy's
// own ports (admin 15000, outbound 15001, inbound 15006) must not be forwarded by the inbound to
// that listener on loopback, where a stranger could quit the proxy or make it loop. The namespaced
// twin (PERMISSIVE, a stranger on the bridge) is in bypass.test.ts; this one needs no root.
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { connect as tlsConnect } from "node:tls";
import {
  controlPlane,
  entryYaml,
  freePort,
  logLines,
  type MeshFixture,
  proxy,
  serviceYaml,
} from "../harness/index.js";
import { CATALOG_VIP, FRONTEND_ID } from "./lib.js";

/** The catalog open to every caller: what this file probes is the proxy, not the policy. */
const ALLOW_ALL = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: allow-all, namespace: shop }
spec:
  selector: { matchLabels: { app: catalog } }
  rules: [{}]
`;

describe("attack: the proxy's own ports through its inbound", { timeout: 30_000 }, () => {
  let mesh: MeshFixture;
  const inbound: Record<number, number> = {};
  let creds: { key: string; cert: string };

  before(async () => {
    const yaml = `${entryYaml("frontend")}${entryYaml("catalog")}${serviceYaml("catalog", CATALOG_VIP.address, [[80, 8080]])}${ALLOW_ALL}`;
    mesh = await controlPlane(yaml, [{ namespace: "shop", name: "catalog" }]);
    // As if iptables had redirected a connection to <pod>:15000 (or 15001, 15006) to the inbound.
    for (const port of [15000, 15001, 15006]) {
      inbound[port] = await freePort();
      await proxy(mesh, "shop/catalog", { inboundPort: inbound[port]!, appPort: port });
    }
    const { keyPem, svid } = await mesh.cp.ca.issue(FRONTEND_ID);
    creds = { key: keyPem, cert: svid.chainPem.join("") };
  });
  after(() => mesh.close());

  for (const port of [15000, 15001, 15006]) {
    it(`an allowed mTLS peer asking for original port ${port} is refused before anything is forwarded`, async () => {
      const since = logLines.length;
      const answer = await new Promise<string>((resolve) => {
        const s = tlsConnect({
          host: "127.0.0.1",
          port: inbound[port]!,
          ...creds,
          rejectUnauthorized: false,
        });
        let data = "";
        s.on("secureConnect", () =>
          s.write("POST /quitquitquit HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"),
        );
        s.on("data", (d: Buffer) => {
          data += d.toString("latin1");
        });
        s.on("error", () => resolve(data));
        s.on("close", () => resolve(data));
        setTimeout(() => s.destroy(), 3_000).unref();
      });
      assert.equal(answer, "", `the inbound answered: ${answer.slice(0, 60)}`);
      assert.ok(
        logLines
          .slice(since)
          .some((l) => l["msg"] === "inbound connection to a proxy port refused" && l["port"] === port),
        "the refusal is logged with the port",
      );
    });
  }
});

// Attack suite, bypass in process: an app port bound to loopback only is private to the workload.
// The inbound forwards to the workload's own address (as Istio does since 1.10), never to
// 127.0.0.1, so even a caller a policy lets in cannot reach it through the mesh.
describe("attack: a loopback-only app port through the inbound", { timeout: 30_000 }, () => {
  let mesh: MeshFixture;
  const servers: Server[] = [];
  const hits = { private: 0, public: 0 };
  const inbound: Record<"private" | "public", number> = { private: 0, public: 0 };
  let creds: { key: string; cert: string };

  before(async () => {
    // The workload's address is 127.0.0.2 (all of 127/8 is loopback on Linux).
    const yaml = `${entryYaml("frontend")}${entryYaml("catalog", { address: "127.0.0.2" })}${serviceYaml("catalog", CATALOG_VIP.address, [[80, 8080]])}${ALLOW_ALL}`;
    mesh = await controlPlane(yaml, [{ namespace: "shop", name: "catalog" }]);
    for (const kind of ["private", "public"] as const) {
      const server = createServer((_req, res) => {
        hits[kind]++;
        res.end(kind);
      });
      // The private app listens on 127.0.0.1 only; the public one on every address.
      await new Promise<void>((r) => server.listen(0, kind === "private" ? "127.0.0.1" : "0.0.0.0", r));
      servers.push(server);
      inbound[kind] = await freePort();
      const appPort = (server.address() as AddressInfo).port;
      await proxy(mesh, "shop/catalog", { inboundPort: inbound[kind], appPort });
    }
    const { keyPem, svid } = await mesh.cp.ca.issue(FRONTEND_ID);
    creds = { key: keyPem, cert: svid.chainPem.join("") };
  });
  after(async () => {
    for (const s of servers) s.close();
    await mesh.close();
  });

  const get = (port: number) =>
    new Promise<string>((resolve) => {
      const s = tlsConnect({ host: "127.0.0.1", port, ...creds, rejectUnauthorized: false });
      let data = "";
      s.on("secureConnect", () => s.write("GET / HTTP/1.1\r\nhost: catalog\r\nconnection: close\r\n\r\n"));
      s.on("data", (d: Buffer) => {
        data += d.toString("latin1");
      });
      s.on("error", () => resolve(data));
      s.on("close", () => resolve(data));
      setTimeout(() => s.destroy(), 5_000).unref();
    });

  it("an allowed peer reaches an app port open on the workload's address (control)", async () => {
    const answer = await get(inbound.public);
    assert.match(answer, /^HTTP\/1\.1 200 /);
    assert.equal(hits.public, 1);
  });

  it("an allowed peer does not reach an app port bound to 127.0.0.1 only", async () => {
    const answer = await get(inbound.private);
    assert.match(answer, /^HTTP\/1\.1 503 /, `the inbound answered: ${answer.slice(0, 60)}`);
    assert.equal(hits.private, 0, "the loopback-only app saw the request");
  });
});
