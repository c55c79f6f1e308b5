// TLS session resumption between sidecars, against a real TLS 1.3 server with SVIDs from a real CA.
// What must hold: a second dial to the same destination resumes; a different expected identity
// set, trust bundle or own certificate starts afresh; the secure-naming check still runs (and
// refuses) when a cached session is offered and when the service's identities changed since; a
// session is not offered after the server certificate its full handshake verified has expired;
// the server still sees the client's SPIFFE ID and its verified chain on a resumed connection.
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { createServer, type Server, type TLSSocket } from "node:tls";
import { CertificateAuthority, peerSpiffeId } from "../identity/index.js";
import { dialMtls } from "./dial.js";
import { SessionCache } from "./sessions.js";
import type { Certificate } from "./state.js";

const ID = (sa: string) => `spiffe://cluster.local/ns/shop/sa/${sa}`;

interface Seen {
  reused: boolean;
  authorized: boolean;
  id: string;
}

let ca: CertificateAuthority;
let other: CertificateAuthority;
const certs: Record<string, Certificate> = {};

async function svid(sa: string): Promise<Certificate> {
  const { keyPem, svid } = await ca.issue(ID(sa));
  return { keyPem, chainPem: svid.chainPem, spiffeId: svid.spiffeId } as Certificate;
}

/** A server like the inbound sidecar: mutual TLS 1.3, writes "hi" so tickets reach the client. */
async function server(sa: string, port = 0): Promise<{ srv: Server; port: number; seen: Seen[] }> {
  const seen: Seen[] = [];
  const c = certs[sa]!;
  const srv = createServer(
    {
      key: c.keyPem,
      cert: c.chainPem.join(""),
      ca: ca.trustBundlePem(),
      requestCert: true,
      rejectUnauthorized: false,
      minVersion: "TLSv1.3",
    },
    (s: TLSSocket) => {
      seen.push({
        reused: s.isSessionReused(),
        authorized: s.authorized,
        id: peerSpiffeId(s.getPeerX509Certificate()),
      });
      s.on("error", () => {});
      s.end("hi");
    },
  );
  await new Promise<void>((r) => srv.listen(port, "127.0.0.1", r));
  return { srv, port: (srv.address() as AddressInfo).port, seen };
}

function dial(
  sessions: SessionCache,
  port: number,
  allowed: Set<string>,
  opts: { cert?: Certificate; bundle?: string } = {},
): Promise<{ sock?: TLSSocket; err?: Error; reused: boolean }> {
  const state = { cert: opts.cert ?? certs["frontend"], trustBundlePem: opts.bundle ?? ca.trustBundlePem() };
  const route = () => ({ allowed, service: { name: "catalog", namespace: "shop" } }) as never;
  return new Promise((resolve) => {
    dialMtls(state, sessions, "127.0.0.1", port, ["tcp"], route, (err, sock) => {
      if (err || !sock) return resolve({ err: err ?? new Error("no socket"), reused: false });
      const reused = sock.isSessionReused();
      // Read to the end so the session tickets that follow the handshake arrive.
      sock.on("data", () => {});
      sock.on("end", () => resolve({ sock, reused }));
      sock.on("error", () => resolve({ sock, reused }));
    });
  });
}

describe("TLS session resumption between sidecars", { timeout: 30_000 }, () => {
  let catalog: Awaited<ReturnType<typeof server>>;
  const onlyCatalog = new Set([ID("catalog")]);

  before(async () => {
    ca = await CertificateAuthority.create();
    other = await CertificateAuthority.create();
    for (const sa of ["frontend", "catalog", "payments"]) certs[sa] = await svid(sa);
    catalog = await server("catalog");
  });
  after(() => catalog.srv.close());

  it("a second connection to the same destination resumes, and both ends still see the peer's identity", async () => {
    const sessions = new SessionCache();
    const first = await dial(sessions, catalog.port, onlyCatalog);
    assert.equal(first.reused, false);
    assert.ok(sessions.size > 0, "the first connection left a session ticket");
    const second = await dial(sessions, catalog.port, onlyCatalog);
    assert.equal(second.err, undefined);
    assert.equal(second.reused, true);
    const key = sessions.key(
      `127.0.0.1:${catalog.port}`,
      onlyCatalog,
      ca.trustBundlePem(),
      certs["frontend"]!,
    );
    assert.equal(
      sessions.get(key)?.peer,
      ID("catalog"),
      "the session keeps the identity its full handshake proved",
    );
    const s = catalog.seen.at(-1)!;
    assert.deepEqual(s, { reused: true, authorized: true, id: ID("frontend") });
    assert.deepEqual([sessions.full, sessions.resumed], [1, 1]);
  });

  it("a different expected identity set, trust bundle or own certificate does not resume", async () => {
    const sessions = new SessionCache();
    await dial(sessions, catalog.port, onlyCatalog);
    const wider = await dial(sessions, catalog.port, new Set([ID("catalog"), ID("payments")]));
    assert.equal(wider.reused, false);
    // A root rotation: the bundle now holds a second root.
    const rotated = await dial(sessions, catalog.port, onlyCatalog, {
      bundle: ca.trustBundlePem() + other.trustBundlePem(),
    });
    assert.equal(rotated.err, undefined);
    assert.equal(rotated.reused, false);
    const renewed = await dial(sessions, catalog.port, onlyCatalog, { cert: await svid("frontend") });
    assert.equal(renewed.reused, false);
    // The original key still resumes: the cache holds each key's newest session.
    const again = await dial(sessions, catalog.port, onlyCatalog);
    assert.equal(again.reused, true);
  });

  it("secure naming still refuses a wrong identity when a cached session is offered, and forgets it", async () => {
    const sessions = new SessionCache();
    const a = await server("catalog");
    assert.equal((await dial(sessions, a.port, onlyCatalog)).reused, false);
    assert.equal(sessions.size, 1);
    // The address is taken over by another workload (another identity, its own ticket keys).
    await new Promise((r) => a.srv.close(r));
    const b = await server("payments", a.port);
    try {
      const r = await dial(sessions, b.port, onlyCatalog);

      assert.equal((r.err as { code?: string } | undefined)?.code, "ZMESH_SECURE_NAMING");
      assert.equal(sessions.size, 0, "a session that led to a refusal is dropped");
      assert.deepEqual([sessions.full, sessions.resumed], [2, 0], "another server cannot resume it");
    } finally {
      b.srv.close();
    }
  });

  /** A cache holding the session of one full handshake with the catalog, its key and the entry. */
  async function cachedSession() {
    const sessions = new SessionCache();
    await dial(sessions, catalog.port, onlyCatalog);
    const key = sessions.key(
      `127.0.0.1:${catalog.port}`,
      onlyCatalog,
      ca.trustBundlePem(),
      certs["frontend"]!,
    );
    return { sessions, key, real: sessions.get(key)! };
  }

  it("a resumed connection is checked with the identity its session proved, and refused if not allowed", async () => {
    const { sessions, key, real } = await cachedSession();
    assert.equal(real.peer, ID("catalog"));
    // Tamper: the same ticket (the server will resume it) recorded as proving another identity.
    sessions.set(key, { ...real, peer: ID("payments") });
    const r = await dial(sessions, catalog.port, onlyCatalog);
    assert.equal((r.err as { code?: string } | undefined)?.code, "ZMESH_SECURE_NAMING");
    assert.equal(sessions.resumed, 1, "the server did resume it: the check ran on a resumed session");
    assert.equal(sessions.get(key), undefined);
  });

  it("a session is not offered once the certificate its full handshake verified has expired", async () => {
    const { sessions, key, real } = await cachedSession();
    const serverCert = new X509Certificate(certs["catalog"]!.chainPem[0]!);
    assert.equal(
      real.notAfter,
      Date.parse(serverCert.validTo),
      "the entry keeps the server certificate's expiry",
    );
    // The same ticket, recorded as if that certificate had expired a second ago (the server would resume it).
    sessions.set(key, { ...real, notAfter: Date.now() - 1_000 });
    const r = await dial(sessions, catalog.port, onlyCatalog);
    assert.equal(r.err, undefined);
    assert.equal(r.reused, false, "a full handshake checks the server's certificate again");
    assert.deepEqual([sessions.full, sessions.resumed], [2, 0]);
    assert.ok(sessions.get(key)!.notAfter > Date.now(), "the new session replaces the expired one");
  });

  it("the cache is bounded and keeps the most recently used entries", () => {
    const c = new SessionCache(2);
    const t = (n: string) => ({ ticket: Buffer.from(n), peer: ID("catalog"), notAfter: Date.now() + 60_000 });
    c.set("a", t("1"));
    c.set("b", t("2"));
    c.get("a");
    c.set("c", t("3"));
    assert.equal(c.size, 2);
    assert.equal(c.get("b"), undefined);
    assert.deepEqual(c.get("a"), t("1"));
    c.set("a", t("4"));
    assert.deepEqual(c.get("a"), t("4"), "the newest ticket replaces the older one");
  });
});
