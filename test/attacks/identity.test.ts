// Attack suite, identity: every way to get into a workload (or to pose as one) without the right
// SVID, against real sidecars with mutual TLS. Inbound: plaintext to STRICT, a certificate from
// another CA, expired, CA:true, two URI SANs, a copied certificate without its key, look-alike
// SPIFFE IDs. Outbound: a server with an identity the service may not run as (secure naming) and a
// man in the middle presenting the right SPIFFE ID under another root (a swapped trust bundle).
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { connect } from "node:net";
import { after, before, describe, it } from "node:test";
import { createServer as createTlsServer, type Server as TlsServer, connect as tlsConnect } from "node:tls";
import { CertificateAuthority } from "../../src/identity/index.js";
import type { Sidecar } from "../../src/proxy/index.js";
import {
  app,
  call,
  controlPlane,
  entryYaml,
  freePort,
  type MeshFixture,
  proxy,
  serviceYaml,
} from "../harness/index.js";
import { testHierarchy } from "../harness/pki.js";

const FRONTEND = "spiffe://cluster.local/ns/shop/sa/frontend";
const CATALOG = "spiffe://cluster.local/ns/shop/sa/catalog";

/** Connects to an inbound with the given TLS client options; resolves the app's answer or "refused". */
async function present(port: number, opts: Record<string, unknown>): Promise<string> {
  return (await presentForSession(port, opts)).answer;
}

/** Like `present`, also reporting whether the session was resumed and the session it was given. */
function presentForSession(
  port: number,
  opts: Record<string, unknown>,
): Promise<{ answer: string; reused: boolean; session: Buffer | undefined }> {
  return new Promise((resolve) => {
    let s: ReturnType<typeof tlsConnect>;
    try {
      s = tlsConnect({ host: "127.0.0.1", port, rejectUnauthorized: false, minVersion: "TLSv1.3", ...opts });
    } catch (e) {
      resolve({
        answer: `refused by the TLS stack: ${(e as Error).message}`,
        reused: false,
        session: undefined,
      });
      return;
    }
    let data = "";
    let reused = false;
    let session: Buffer | undefined;
    const done = () => resolve({ answer: data || "refused", reused, session });
    s.on("session", (b: Buffer) => {
      session = b;
    });
    s.on("secureConnect", () => {
      reused = s.isSessionReused();
      s.write("GET /items HTTP/1.1\r\nhost: catalog\r\nconnection: close\r\n\r\n");
    });
    s.on("data", (d: Buffer) => {
      data += d.toString();
    });
    s.on("error", done);
    s.on("close", done);
    setTimeout(() => s.destroy(), 3_000).unref();
  });
}

/** A TLS server an attacker runs: records every byte it manages to decrypt. */
async function attackerServer(creds: { key: string; cert: string }): Promise<{
  port: number;
  received: string[];
  server: TlsServer;
}> {
  const received: string[] = [];
  const server = createTlsServer({ ...creds, requestCert: true, rejectUnauthorized: false }, (s) => {
    s.on("data", (d: Buffer) => {
      received.push(d.toString("latin1"));
      s.end("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\npwned");
    });
    s.on("error", () => {});
  });
  server.on("tlsClientError", () => {});
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { port: (server.address() as { port: number }).port, received, server };
}

describe("attack: identity", { timeout: 60_000 }, () => {
  let mesh: MeshFixture;
  let frontend: Sidecar;
  let catalog: Sidecar;
  let inbound: number;
  let hierarchy: Awaited<ReturnType<typeof testHierarchy>>;
  let target: Awaited<ReturnType<typeof app>>;
  let naming: Awaited<ReturnType<typeof attackerServer>>;
  let mitm: Awaited<ReturnType<typeof attackerServer>>;
  let mitmWithRoot: Awaited<ReturnType<typeof attackerServer>>;
  /** The same workload behind a PERMISSIVE port (plaintext or mTLS, told apart by the first byte). */
  let permissive: Awaited<ReturnType<typeof app>>;
  let permissiveInbound: number;

  before(async () => {
    hierarchy = await testHierarchy();
    // Another root and intermediate with the very same names, and the right SPIFFE ID on the leaf.
    const lookalike = await testHierarchy();
    const forged = await lookalike.leaf({ uris: [CATALOG] });
    mitm = await attackerServer(forged);
    mitmWithRoot = await attackerServer({ key: forged.key, cert: `${forged.cert}${lookalike.rootPem}` });
    // A real mesh SVID, but for payments: a compromised workload posing as catalog.
    naming = await attackerServer(
      await hierarchy.leaf({ uris: ["spiffe://cluster.local/ns/shop/sa/payments"] }),
    );
    target = await app("catalog");
    permissive = await app("catalog-permissive");
    permissiveInbound = await freePort();
    inbound = await freePort();
    const yaml = `${entryYaml("frontend")}${entryYaml("catalog")}${serviceYaml("catalog", "198.19.0.10", [[80, inbound]])}${serviceYaml("catalog-naming", "198.19.0.11", [[80, naming.port]], "catalog")}${serviceYaml("catalog-mitm", "198.19.0.12", [[80, mitm.port]], "catalog")}${serviceYaml("catalog-mitm-root", "198.19.0.13", [[80, mitmWithRoot.port]], "catalog")}
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: catalog, namespace: shop }
spec:
  selector: { matchLabels: { app: catalog } }
  mtls: { mode: STRICT }
  portLevelMtls:
    "${permissive.port}": { mode: PERMISSIVE }
`;
    mesh = await controlPlane(
      yaml,
      [
        { namespace: "shop", name: "frontend" },
        { namespace: "shop", name: "catalog" },
      ],
      { ca: hierarchy.ca },
    );
    frontend = await proxy(mesh, "shop/frontend", { inboundPort: await freePort() });
    catalog = await proxy(mesh, "shop/catalog", { inboundPort: inbound, appPort: target.port });
    await proxy(mesh, "shop/catalog", { inboundPort: permissiveInbound, appPort: permissive.port });
  });
  after(async () => {
    await mesh.close();
    target.server.close();
    permissive.server.close();
    for (const s of [naming, mitm, mitmWithRoot]) s.server.close();
  });

  it("the control: a well-formed SVID from the mesh CA gets a 200", async () => {
    assert.match(await present(inbound, await hierarchy.leaf({ uris: [FRONTEND] })), /^HTTP\/1\.1 200/);
  });

  it("plaintext HTTP to a STRICT port gets no HTTP answer", async () => {
    const answer = await new Promise<string>((resolve) => {
      const s = connect({ host: "127.0.0.1", port: inbound }, () =>
        s.write("GET /items HTTP/1.1\r\nhost: catalog\r\n\r\n"),
      );
      let data = "";
      s.on("data", (d: Buffer) => {
        data += d.toString("latin1");
      });
      s.on("error", () => resolve(data));
      s.on("close", () => resolve(data));
      setTimeout(() => s.destroy(), 3_000).unref();
    });
    assert.doesNotMatch(answer, /HTTP\/1\.1/);
  });

  it("TLS without a client certificate is refused", async () => {
    assert.match(await present(inbound, {}), /^refused/);
  });

  it("a client certificate from another CA is refused", async () => {
    const other = await CertificateAuthority.create();
    const { keyPem, svid } = await other.issue(FRONTEND);
    assert.match(await present(inbound, { key: keyPem, cert: svid.chainPem.join("") }), /^refused/);
  });

  it("a chain from a look-alike root (same names, other keys) is refused, even with that root appended", async () => {
    const lookalike = await testHierarchy();
    const leaf = await lookalike.leaf({ uris: [FRONTEND] });
    assert.match(await present(inbound, leaf), /^refused/);
    assert.match(
      await present(inbound, { key: leaf.key, cert: `${leaf.cert}${lookalike.rootPem}` }),
      /^refused/,
    );
  });

  it("an expired certificate is refused", async () => {
    const expired = await hierarchy.leaf({
      uris: [FRONTEND],
      notBefore: new Date(Date.now() - 7200_000),
      notAfter: new Date(Date.now() - 3600_000),
    });
    assert.match(await present(inbound, expired), /^refused/);
  });

  it("a client certificate that expired after its first handshake cannot ride a resumed session", async () => {
    // OpenSSL keeps a session's verification result; a ticket is good for 300 s.
    const shortLived = await hierarchy.leaf({ uris: [FRONTEND], notAfter: new Date(Date.now() + 5_000) });
    // The certificate's own date (X.509 keeps whole seconds).
    const notAfter = new Date(new X509Certificate(shortLived.cert).validTo);
    const first = await presentForSession(inbound, shortLived);
    assert.match(first.answer, /^HTTP\/1\.1 200/, "the certificate works while it is valid");
    assert.ok(first.session, "the inbound issued a session ticket");
    await new Promise((r) => setTimeout(r, notAfter.getTime() - Date.now() + 1_500));
    const resumed = await presentForSession(inbound, { ...shortLived, session: first.session });
    assert.equal(
      resumed.reused,
      true,
      "the client resumed the session (otherwise OpenSSL would refuse it anyway)",
    );
    assert.match(resumed.answer, /^refused/);
  });

  it("a certificate not valid yet is refused", async () => {
    const early = await hierarchy.leaf({
      uris: [FRONTEND],
      notBefore: new Date(Date.now() + 3600_000),
      notAfter: new Date(Date.now() + 7200_000),
    });
    assert.match(await present(inbound, early), /^refused/);
  });

  it("a leaf with CA:true (signed by the mesh's own intermediate) is refused", async () => {
    assert.match(await present(inbound, await hierarchy.leaf({ uris: [FRONTEND], ca: true })), /^refused/);
  });

  it("a leaf with two URI SANs is refused", async () => {
    const two = await hierarchy.leaf({ uris: [FRONTEND, "spiffe://cluster.local/ns/shop/sa/orders"] });
    assert.match(await present(inbound, two), /^refused/);
  });

  it("a copied certificate without its key: no TLS stack will present it, and without it the peer is refused", async () => {
    // The attacker has the frontend's public chain (as served by /certs or seen on the wire).
    const copied = frontend.state.cert!.chainPem.join("");
    const { key: attackerKey } = await hierarchy.leaf({ uris: ["spiffe://cluster.local/ns/shop/sa/x"] });
    const withOwnKey = await present(inbound, { key: attackerKey, cert: copied });
    assert.match(withOwnKey, /^refused/);
    const certOnly = await present(inbound, { cert: copied });
    assert.match(certOnly, /^refused/);
  });

  for (const [what, uri] of [
    ["another trust domain", "spiffe://evil.local/ns/shop/sa/frontend"],
    ["an upper-case trust domain", "spiffe://CLUSTER.local/ns/shop/sa/frontend"],
    ["a dot segment", "spiffe://cluster.local/ns/shop/sa/x/../frontend"],
    ["a percent-encoded slash", "spiffe://cluster.local/ns/shop/sa%2Ffrontend"],
    ["a trailing slash", "spiffe://cluster.local/ns/shop/sa/frontend/"],
    ["a query", "spiffe://cluster.local/ns/shop/sa/frontend?x=1"],
    ["userinfo", "spiffe://frontend@cluster.local/ns/shop/sa/frontend"],
    ["a port", "spiffe://cluster.local:443/ns/shop/sa/frontend"],
    ["another scheme", "https://cluster.local/ns/shop/sa/frontend"],
  ] as const) {
    it(`a SPIFFE ID that only looks like the frontend's (${what}) is refused or gets no access`, async () => {
      // The catalog admits only the frontend in this mesh's policies? None here: any mesh peer may
      // call; so the check is that the look-alike is refused at the TLS level or named as itself.
      const before = target.seen.length;
      const r = await present(inbound, await hierarchy.leaf({ uris: [uri] }));
      if (r.startsWith("HTTP/1.1 200")) {
        const xfcc = String(target.seen.at(-1)?.headers["x-forwarded-client-cert"]);
        assert.doesNotMatch(
          xfcc,
          /URI=spiffe:\/\/cluster\.local\/ns\/shop\/sa\/frontend$/,
          `${what}: ${xfcc}`,
        );
        assert.equal(target.seen.length, before + 1);
      } else assert.match(r, /^refused|^HTTP\/1\.1 40[03]/, `${what}: ${r.slice(0, 80)}`);
    });
  }

  it("PERMISSIVE does not fall back to plaintext for a failed handshake: another CA, an expired leaf, no certificate", async () => {
    const other = await CertificateAuthority.create();
    const { keyPem, svid } = await other.issue(FRONTEND);
    const expired = await hierarchy.leaf({
      uris: [FRONTEND],
      notBefore: new Date(Date.now() - 7200_000),
      notAfter: new Date(Date.now() - 3600_000),
    });
    const before = permissive.seen.length;
    assert.match(
      await present(permissiveInbound, await hierarchy.leaf({ uris: [FRONTEND] })),
      /^HTTP\/1\.1 200/,
      "the control",
    );
    for (const creds of [{ key: keyPem, cert: svid.chainPem.join("") }, expired, {}]) {
      assert.match(await present(permissiveInbound, creds), /^refused/);
    }
    assert.equal(permissive.seen.length, before + 1, "only the control reached the app");
    assert.match(String(permissive.seen.at(-1)?.headers["x-forwarded-client-cert"]), /sa\/frontend$/);
  });

  it("secure naming: a server with a valid mesh SVID the service may not run as gets no request", async () => {
    const r = await call(mesh, frontend, { address: "198.19.0.11", port: 80 }, { path: "/secret?token=1" });
    assert.equal(r.status, 503);
    assert.equal(r.headers["x-zmesh-flag"], "SECURE_NAMING");
    assert.deepEqual(naming.received, [], "the impostor read the request");
  });

  it("a man in the middle with the right SPIFFE ID under another root (a swapped trust bundle) gets no request", async () => {
    for (const [vip, srv] of [
      ["198.19.0.12", mitm],
      ["198.19.0.13", mitmWithRoot],
    ] as const) {
      const r = await call(mesh, frontend, { address: vip, port: 80 }, { path: "/secret?token=1" });
      assert.ok(r.status >= 502 && r.status <= 503, `${vip}: ${r.status} ${r.body}`);
      assert.doesNotMatch(r.body, /pwned/);
      assert.deepEqual(srv.received, [], "the man in the middle read the request");
    }
  });

  it("none of the refused attempts reached the app; the real catalog still serves the frontend", async () => {
    const r = await call(mesh, frontend, { address: "198.19.0.10", port: 80 }, { path: "/items" });
    assert.equal(r.status, 200);
    assert.equal(catalog.state.ready, true);
  });
});
