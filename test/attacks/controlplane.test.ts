// Attack suite, control plane: a workload asking for another's certificate or config, calls
// without a valid credential, the admin socket from an unprivileged uid, and malformed config
// pushed live (bad YAML, an alias bomb, invalid policies). Each is refused; the control plane does
// not crash, and the proxies keep enforcing the last good config (denied stays denied).
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import * as grpc from "@grpc/grpc-js";
import { MeshCAClient, MeshConfigClient, meshCAService, meshConfigService } from "../../src/api/index.js";
import { ControlPlane, TokenFileAttestor } from "../../src/controlplane/index.js";
import { CertificateAuthority, generateCsr } from "../../src/identity/index.js";
import { Sidecar } from "../../src/proxy/index.js";
import { call, captured, freePort, quiet } from "../harness/index.js";
import { type AttackMesh, attackMesh, CATALOG_POLICIES, CATALOG_VIP } from "./lib.js";

const ROOT = process.getuid?.() === 0;

function channel(m: AttackMesh, token: string | undefined, tlsCreds?: { key: string; cert: string }) {
  const ssl = grpc.credentials.createSsl(
    Buffer.from(m.mesh.cp.ca.trustBundlePem()),
    tlsCreds ? Buffer.from(tlsCreds.key) : null,
    tlsCreds ? Buffer.from(tlsCreds.cert) : null,
    { checkServerIdentity: () => undefined },
  );
  const creds =
    token === undefined
      ? ssl
      : grpc.credentials.combineChannelCredentials(
          ssl,
          grpc.credentials.createFromMetadataGenerator((_p, cb) => {
            const md = new grpc.Metadata();
            md.set("authorization", `Bearer ${token}`);
            cb(null, md);
          }),
        );
  return {
    target: `127.0.0.1:${m.mesh.cp.port}`,
    creds,
    opts: { "grpc.ssl_target_name_override": "zmesh-controlplane" },
  };
}

function sign(
  m: AttackMesh,
  token: string | undefined,
  csrPem: string,
  tlsCreds?: { key: string; cert: string },
) {
  const ch = channel(m, token, tlsCreds);
  const Client = MeshCAClient();
  const client = new Client(ch.target, ch.creds, ch.opts);
  return new Promise<{ err: grpc.ServiceError | null; chain?: string[] }>((resolve) => {
    (
      client as unknown as {
        Sign: (r: unknown, cb: (e: grpc.ServiceError | null, r?: { certChainPem: string[] }) => void) => void;
      }
    ).Sign({ csrPem, ttlSeconds: 0 }, (err, r) => {
      client.close();
      resolve({ err, ...(r ? { chain: r.certChainPem } : {}) });
    });
  });
}

/** Opens MeshConfig.Stream and resolves the first push (or the error that ended the stream). */
function firstPush(
  m: AttackMesh,
  token: string | undefined,
  hello: Record<string, string>,
  tlsCreds?: { key: string; cert: string },
) {
  const ch = channel(m, token, tlsCreds);
  const Client = MeshConfigClient();
  const client = new Client(ch.target, ch.creds, ch.opts);
  return new Promise<{
    err?: grpc.ServiceError;
    snapshot?: { workload: { spiffeId: string; name: string } };
  }>((resolve) => {
    const stream = (
      client as unknown as { Stream: () => grpc.ClientDuplexStream<unknown, { snapshotJson: string }> }
    ).Stream();
    const t = setTimeout(() => {
      stream.cancel();
      client.close();
      resolve({});
    }, 5_000);
    stream.on("data", (p: { snapshotJson: string }) => {
      clearTimeout(t);
      stream.cancel();
      client.close();
      resolve({ snapshot: JSON.parse(p.snapshotJson) });
    });
    stream.on("error", (err: grpc.ServiceError) => {
      clearTimeout(t);
      client.close();
      resolve({ err });
    });
    stream.write({ version: "", nonce: "", error: "", ...hello });
  });
}

describe("attack: the control plane", { timeout: 60_000 }, () => {
  let m: AttackMesh;
  before(async () => {
    m = await attackMesh();
  });
  after(() => m.close());

  it("a CSR for another workload's identity, with the caller's own token, is PERMISSION_DENIED", async () => {
    for (const id of [
      "spiffe://cluster.local/ns/shop/sa/catalog",
      "spiffe://cluster.local/ns/zmesh-system/sa/zmesh-controlplane",
      "spiffe://cluster.local/ns/shop/sa/frontend/../catalog",
    ]) {
      const csr = await generateCsr(id).catch(() => undefined);
      if (!csr) continue; // the CSR library itself refuses to write it: nothing to send
      const r = await sign(m, m.mesh.tokens.get("shop/frontend"), csr.csrPem);
      assert.equal(r.err?.code, grpc.status.PERMISSION_DENIED, id);
      assert.equal(r.chain, undefined);
    }
  });

  it("a CSR for one's own identity presented over the other workload's SVID still yields only one's own identity", async () => {
    const { keyPem, svid } = await m.mesh.cp.ca.issue("spiffe://cluster.local/ns/shop/sa/catalog");
    const csr = await generateCsr("spiffe://cluster.local/ns/shop/sa/catalog");
    const r = await sign(m, m.mesh.tokens.get("shop/frontend"), csr.csrPem, {
      key: keyPem,
      cert: svid.chainPem.join(""),
    });
    assert.equal(
      r.err?.code,
      grpc.status.PERMISSION_DENIED,
      "the TLS client certificate does not choose the identity",
    );
  });

  for (const [what, token] of [
    ["no credential at all", undefined],
    ["an empty token", ""],
    ["a made-up token", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"],
    ["a token's digest instead of the token", "x".repeat(64)],
    ["a 64 KiB token", "A".repeat(65_536)],
  ] as const) {
    it(`MeshCA.Sign and MeshConfig.Stream with ${what} are UNAUTHENTICATED`, async () => {
      const csr = await generateCsr("spiffe://cluster.local/ns/shop/sa/frontend");
      const s = await sign(m, token, csr.csrPem);
      assert.ok(s.err, `${what}: signed`);
      assert.ok(
        [grpc.status.UNAUTHENTICATED, grpc.status.RESOURCE_EXHAUSTED, grpc.status.INTERNAL].includes(
          s.err!.code,
        ),
        `${what}: ${s.err!.code} ${s.err!.details}`,
      );
      const c = await firstPush(m, token, {});
      assert.equal(c.snapshot, undefined, `${what}: got a config`);
      assert.ok(c.err, `${what}: the stream stayed open without a credential`);
    });
  }

  it("a valid SVID without a token does not authenticate a call", async () => {
    const { keyPem, svid } = await m.mesh.cp.ca.issue("spiffe://cluster.local/ns/shop/sa/catalog");
    const c = await firstPush(m, undefined, {}, { key: keyPem, cert: svid.chainPem.join("") });
    assert.equal(c.err?.code, grpc.status.UNAUTHENTICATED);
  });

  it("MeshConfig.Stream with the frontend's token only ever returns the frontend's config, whatever the caller claims", async () => {
    const { keyPem, svid } = await m.mesh.cp.ca.issue("spiffe://cluster.local/ns/shop/sa/catalog");
    for (const [hello, tls] of [
      [{}, undefined],
      [{ version: "catalog", nonce: "" }, undefined],
      [{ error: "node shop/catalog" }, { key: keyPem, cert: svid.chainPem.join("") }],
    ] as const) {
      const c = await firstPush(m, m.mesh.tokens.get("shop/frontend"), hello, tls);
      assert.equal(c.snapshot?.workload.spiffeId, "spiffe://cluster.local/ns/shop/sa/frontend");
    }
  });

  it("the admin socket is not reachable by another uid", {
    skip: ROOT ? false : "needs root to run a client as another uid",
  }, async () => {
    const dir = await mkdtemp(join(tmpdir(), "zmesh-atk-admin-"));
    await chmod(dir, 0o755); // only the socket's own mode protects it
    const socket = join(dir, "admin.sock");
    const cp = await ControlPlane.start({
      configPaths: [join(m.mesh.dir, "mesh.yaml")],
      listen: "127.0.0.1:0",
      attestor: new TokenFileAttestor(join(m.mesh.dir, "tokens.json")),
      trustDomain: "cluster.local",
      rootNamespace: "zmesh-system",
      watch: false,
      log: captured,
      adminSocket: socket,
    });
    try {
      // Asynchronously: the control plane answering runs in this very process.
      const curl = (asApp: boolean, path: string, method = "GET") =>
        new Promise<string>((resolve) =>
          execFile(
            asApp ? "setpriv" : "curl",
            [
              ...(asApp ? ["--reuid=1001", "--regid=1001", "--clear-groups", "curl"] : []),
              "-s",
              "-o",
              "/dev/null",
              "-w",
              "%{http_code}",
              "-X",
              method,
              "--max-time",
              "3",
              "--unix-socket",
              socket,
              `http://cp${path}`,
            ],
            { encoding: "utf8" },
            (_e, stdout) => resolve(stdout),
          ),
        );
      assert.equal(await curl(false, "/bundle"), "200", "the control: root reaches it");
      assert.equal(await curl(true, "/bundle"), "000");
      assert.equal(await curl(true, "/ca/rotate?overlapSeconds=1", "POST"), "000");
    } finally {
      await cp.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  const base = () => `${m.mesh.cp.port}`; // keeps the fixture in scope for the cases below
  const BAD: [string, string][] = [
    ["YAML that does not parse", "apiVersion: v1\nkind: [unclosed\n  : : :\n"],
    [
      "a YAML alias bomb",
      `a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n`,
    ],
    [
      "a policy with an unknown action",
      "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: shop}\nspec: {action: MAYBE}\n",
    ],
    [
      "a policy with a field zmesh does not implement",
      "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: shop}\nspec:\n  rules: [{to: [{operation: {pathz: ['/x']}}]}]\n",
    ],
    [
      "an ALLOW-all slipped in with a bad selector",
      "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: shop}\nspec:\n  selector: {matchLabels: 7}\n  action: ALLOW\n  rules: [{}]\n",
    ],
    [
      "a DENY policy removed by a duplicate name",
      "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-admin, namespace: shop}\nspec: {action: ALLOW, rules: [{}]}\n",
    ],
    [
      "a PeerAuthentication with an unknown mode",
      "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: bad, namespace: shop}\nspec: {mtls: {mode: OFF}}\n",
    ],
    ["a document that is not a mapping", "- just\n- a list\n"],
  ];
  for (const [what, doc] of BAD) {
    it(`malformed config pushed live (${what}): rejected, no crash, the last good config still enforced`, async () => {
      assert.ok(base());
      const good = (await import("node:fs/promises")).readFile(join(m.mesh.dir, "mesh.yaml"), "utf8");
      const text = await good;
      assert.match(text, /deny-admin/);
      try {
        await m.mesh.writeConfig(`${text}\n---\n${doc}`);
        const started = Date.now();
        assert.equal(await m.mesh.cp.reload(), false, `${what} was accepted`);
        assert.ok(Date.now() - started < 5_000, "the reload took too long");
        assert.equal((await call(m.mesh, m.frontend, CATALOG_VIP, { path: "/admin" })).status, 403);
        assert.equal((await call(m.mesh, m.frontend, CATALOG_VIP, { path: "/items" })).status, 200);
        const csr = await generateCsr("spiffe://cluster.local/ns/shop/sa/frontend");
        assert.equal(
          (await sign(m, m.mesh.tokens.get("shop/frontend"), csr.csrPem)).err,
          null,
          "the CA still signs",
        );
      } finally {
        await m.mesh.writeConfig(text);
      }
    });
  }

  it("the last good config is the one in force: its DENY policy is named in the proxy's snapshot", () => {
    assert.ok(CATALOG_POLICIES.includes("deny-admin"));
    const names = (m.catalog.state.snapshot?.policies ?? []).map((p) => p.name);
    assert.ok(names.includes("deny-admin"), JSON.stringify(names));
  });
  /** A rogue control plane: a real gRPC server with the mesh's API, recording every credential sent to it. */
  /** The frontend's proxy (its real bootstrap token, the mesh's trust bundle) told to use the control plane on `port`. */
  async function frontendProxy(port: number): Promise<Sidecar> {
    return new Sidecar({
      controlPlane: `127.0.0.1:${port}`,
      trustBundlePem: m.mesh.cp.ca.trustBundlePem(),
      credential: m.mesh.tokens.get("shop/frontend")!,
      controlPlaneId: "spiffe://cluster.local/ns/zmesh-system/sa/zmesh-controlplane",
      inbound: { host: "127.0.0.1", port: await freePort() },
      outbound: { host: "127.0.0.1", port: 0 },
      admin: { host: "127.0.0.1", port: 0 },
      health: { host: "127.0.0.1", port: 0 },
      metrics: { host: "127.0.0.1", port: 0 },
      originalDst: () => ({ address: "127.0.0.1", port: 1 }),
      log: quiet,
    });
  }

  async function rogue(creds: { key: string; cert: string }) {
    const seen: string[] = [];
    const server = new grpc.Server();
    const record = (md: grpc.Metadata) => seen.push(String(md.get("authorization")[0] ?? "(none)"));
    server.addService(meshCAService(), {
      Sign: (c: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) => {
        record(c.metadata);
        cb({ code: grpc.status.UNAVAILABLE });
      },
    });
    server.addService(meshConfigService(), {
      Stream: (c: grpc.ServerDuplexStream<unknown, unknown>) => {
        record(c.metadata);
      },
    });
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync(
        "127.0.0.1:0",
        grpc.ServerCredentials.createSsl(null, [
          { private_key: Buffer.from(creds.key), cert_chain: Buffer.from(creds.cert) },
        ]),
        (e, p) => (e ? reject(e) : resolve(p)),
      ),
    );
    return { port, seen, close: () => new Promise<void>((r) => server.tryShutdown(() => r())) };
  }

  it("the control for the rogue cases: a server with the real control plane identity does receive the proxy's credential", async () => {
    const { keyPem, svid } = await m.mesh.cp.ca.issue(
      "spiffe://cluster.local/ns/zmesh-system/sa/zmesh-controlplane",
    );
    const r = await rogue({ key: keyPem, cert: svid.chainPem.join("") });
    const p = await frontendProxy(r.port);
    try {
      await p.start();
      for (let i = 0; i < 30 && r.seen.length === 0; i++) await new Promise((res) => setTimeout(res, 100));
      assert.ok(
        r.seen.length > 0,
        "the rogue server records nothing even when trusted: the cases below would prove nothing",
      );
    } finally {
      await p.close();
      await r.close();
    }
  });

  for (const [what, make] of [
    [
      "the control plane's SPIFFE ID from another CA",
      async () => {
        const other = await CertificateAuthority.create();
        const { keyPem, svid } = await other.issue(
          "spiffe://cluster.local/ns/zmesh-system/sa/zmesh-controlplane",
        );
        return { key: keyPem, cert: svid.chainPem.join("") };
      },
    ],
    [
      "a real mesh SVID of a workload (a compromised workload posing as the control plane)",
      async () => {
        const { keyPem, svid } = await m.mesh.cp.ca.issue("spiffe://cluster.local/ns/shop/sa/catalog");
        return { key: keyPem, cert: svid.chainPem.join("") };
      },
    ],
  ] as const) {
    it(`a rogue control plane with ${what}: the proxy sends it no credential and never takes traffic`, async () => {
      const r = await rogue(await make());
      const p = await frontendProxy(r.port);
      try {
        await p.start();
        await new Promise((res) => setTimeout(res, 1_500));
        assert.deepEqual(r.seen, [], "the proxy sent its bootstrap token to the rogue control plane");
        assert.equal(p.state.ready, false);
        assert.equal(p.state.cert, undefined);
      } finally {
        await p.close();
        await r.close();
      }
    });
  }
});
