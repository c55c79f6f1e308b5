// Identity across the parts: SVIDs the proxies refuse at the TLS level (each with its reason in
// the proxy's log), root rotation under traffic with no failed request, and a CA that survives a
// control-plane restart through its sealed store.
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { connect as tlsConnect } from "node:tls";
import { ControlPlane } from "../src/controlplane/index.js";
import { CertificateAuthority, newKek, parseKek } from "../src/identity/index.js";
import type { Sidecar } from "../src/proxy/index.js";
import { loopbackOptions } from "./harness/cp.js";
import {
  app,
  call,
  captured,
  controlPlane,
  entryYaml,
  freePort,
  logLines,
  type MeshFixture,
  proxy,
  serviceYaml,
} from "./harness/index.js";
import { testHierarchy } from "./harness/pki.js";

const FRONTEND = "spiffe://cluster.local/ns/shop/sa/frontend";

function meshYaml(catalogPort: number): string {
  return `${entryYaml("frontend")}${entryYaml("catalog")}${serviceYaml("catalog", "198.19.0.10", [[80, catalogPort]])}`;
}

/** Connects to a proxy's inbound port with the given client certificate; resolves what happened. */
function present(port: number, creds: { key: string; cert: string }): Promise<"refused" | string> {
  return new Promise((resolve) => {
    const s = tlsConnect({
      host: "127.0.0.1",
      port,
      ...creds,
      rejectUnauthorized: false,
      minVersion: "TLSv1.3",
    });
    let data = "";
    s.on("secureConnect", () => s.write("GET /items HTTP/1.1\r\nhost: catalog\r\nconnection: close\r\n\r\n"));
    s.on("data", (d: Buffer) => {
      data += d.toString();
    });
    s.on("error", () => resolve(data || "refused"));
    s.on("close", () => resolve(data || "refused"));
  });
}

function refusalLogged(since: number): string {
  return logLines
    .slice(since)
    .filter((l) => String(l["msg"]).startsWith("inbound connection refused"))
    .map((l) => String(l["err"]))
    .join(" | ");
}

describe("SVIDs the proxies refuse, each with its reason", { timeout: 30_000 }, () => {
  let mesh: MeshFixture;
  let inbound: number;
  let hierarchy: Awaited<ReturnType<typeof testHierarchy>>;
  let catalogApp: Awaited<ReturnType<typeof app>>;

  before(async () => {
    hierarchy = await testHierarchy();
    catalogApp = await app("catalog");
    inbound = await freePort();
    mesh = await controlPlane(meshYaml(inbound), [{ namespace: "shop", name: "catalog" }], {
      ca: hierarchy.ca,
    });
    await proxy(mesh, "shop/catalog", { inboundPort: inbound, appPort: catalogApp.port });
  });
  after(async () => {
    await mesh.close();
    catalogApp.server.close();
  });

  it("a well-formed SVID from the mesh CA gets through (the control for the cases below)", async () => {
    const r = await present(inbound, await hierarchy.leaf({ uris: [FRONTEND] }));
    assert.match(r, /^HTTP\/1\.1 200/);
  });

  it("a client certificate from another CA", async () => {
    const other = await CertificateAuthority.create();
    const { keyPem, svid } = await other.issue(FRONTEND);
    const since = logLines.length;
    assert.equal(await present(inbound, { key: keyPem, cert: svid.chainPem.join("") }), "refused");
    assert.match(refusalLogged(since), /certificate|issuer|verify/i);
  });

  it("an expired certificate", async () => {
    const since = logLines.length;
    const expired = await hierarchy.leaf({
      uris: [FRONTEND],
      notBefore: new Date(Date.now() - 7200_000),
      notAfter: new Date(Date.now() - 3600_000),
    });
    assert.equal(await present(inbound, expired), "refused");
    assert.match(refusalLogged(since), /expired/i);
  });

  it("a leaf with CA:true, even one the mesh's intermediate signed", async () => {
    const since = logLines.length;
    assert.equal(await present(inbound, await hierarchy.leaf({ uris: [FRONTEND], ca: true })), "refused");
    assert.match(refusalLogged(since), /cA=true/);
  });

  it("a leaf with two URI SANs", async () => {
    const since = logLines.length;
    const two = await hierarchy.leaf({ uris: [FRONTEND, "spiffe://cluster.local/ns/shop/sa/orders"] });
    assert.equal(await present(inbound, two), "refused");
    assert.match(refusalLogged(since), /2 URI SANs/);
  });

  it("none of the refused connections reached the app", () => {
    assert.equal(catalogApp.seen.length, 1);
  });
});

describe("root rotation under traffic", { timeout: 60_000 }, () => {
  let mesh: MeshFixture;
  let frontend: Sidecar;
  let catalog: Sidecar;
  let catalogApp: Awaited<ReturnType<typeof app>>;

  before(async () => {
    catalogApp = await app("catalog");
    const inbound = await freePort();
    mesh = await controlPlane(meshYaml(inbound), [
      { namespace: "shop", name: "frontend" },
      { namespace: "shop", name: "catalog" },
    ]);
    frontend = await proxy(mesh, "shop/frontend", { inboundPort: await freePort(), certTtlSeconds: 4 });
    catalog = await proxy(mesh, "shop/catalog", {
      inboundPort: inbound,
      appPort: catalogApp.port,
      certTtlSeconds: 4,
    });
  });
  after(async () => {
    await mesh.close();
    catalogApp.server.close();
  });

  it("several workload rotations and one root rotation: zero failed requests", async () => {
    const oldBundle = mesh.cp.ca.trustBundlePem();
    const oldIssuer = mesh.cp.ca.issuerId();
    const serials = new Set<string>();
    let stop = false;
    let ok = 0;
    const failures: string[] = [];
    // New connections each time (connection: close), so every request does a fresh mTLS handshake.
    const traffic = (async () => {
      const deadline = Date.now() + 20_000;
      while (!stop && Date.now() < deadline && ok + failures.length < 5_000) {
        const r = await call(mesh, frontend, { address: "198.19.0.10", port: 80 }, { path: "/items" });
        if (r.status === 200) ok++;
        else failures.push(`${r.status} ${r.headers["x-zmesh-flag"] ?? ""} ${r.body.slice(0, 80)}`);
        serials.add(catalog.state.cert!.serial);
        await new Promise((res) => setTimeout(res, 5));
      }
    })();
    await new Promise((r) => setTimeout(r, 2_500)); // at least one workload renewal (4 s lifetime)
    const lines: string[] = [];
    const done = await mesh.cp.rotateRoot((l) => lines.push(l), { overlapMs: 500, timeoutMs: 10_000 });
    await new Promise((r) => setTimeout(r, 2_500)); // traffic on the new root, renewals again
    stop = true;
    await traffic;
    assert.equal(done, true, lines.join("\n"));
    assert.deepEqual(failures, []);
    assert.ok(ok > 50, `only ${ok} requests went through`);
    assert.ok(serials.size >= 3, `catalog renewed ${serials.size - 1} times`);
    const newBundle = mesh.cp.ca.trustBundlePem();
    assert.notEqual(newBundle, oldBundle);
    assert.equal(newBundle.match(/BEGIN CERTIFICATE/g)?.length, 1);
    assert.notEqual(mesh.cp.ca.issuerId(), oldIssuer);
    for (const p of [frontend, catalog]) {
      assert.equal(p.state.cert!.issuerId, mesh.cp.ca.issuerId());
      assert.equal(p.state.trustBundlePem, newBundle);
    }
  });
});

describe("the CA store", () => {
  it("a restarted control plane keeps its root: the store is sealed, 0600, and useless without the KEK", async () => {
    const dir = await mkdtemp(join(tmpdir(), "zmesh-ca-"));
    try {
      const kek = parseKek(newKek(), "test");
      const store = join(dir, "ca.json");
      await writeFile(join(dir, "mesh.yaml"), meshYaml(1));
      await writeFile(join(dir, "tokens.json"), "{}");
      const start = () => ControlPlane.start({ ...loopbackOptions(dir, captured), caStore: store, kek });
      const first = await start();
      const bundle = first.ca.trustBundlePem();
      await first.close();
      assert.equal((await stat(store)).mode & 0o777, 0o600);
      const text = await readFile(store, "utf8");
      assert.doesNotMatch(text, /PRIVATE KEY/);
      const second = await start();
      assert.equal(second.ca.trustBundlePem(), bundle);
      await second.close();
      await assert.rejects(
        ControlPlane.start({
          ...loopbackOptions(dir, captured),
          caStore: store,
          kek: parseKek(newKek(), "other"),
        }),
        /cannot be decrypted with this key-encryption key/,
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
