// svidLeafViolations and spiffeIdFromCertDer on certificates built to break one rule each (with
// @peculiar/x509 directly, since the CA never makes them), and the bound on the peer-ID cache.

import assert from "node:assert/strict";
import { webcrypto } from "node:crypto";
import { before, describe, test } from "node:test";
import fc from "fast-check";
import { isZmeshError } from "../errors/index.js";
import { CertificateAuthority, spiffeIdFromCertDer, svidLeafViolations } from "./index.js";
import { decodePem } from "./pem.js";
import { clearSpiffeIdCache } from "./svid.js";
import { type X509Extension, x509 } from "./x509.js";

const ORDERS = "spiffe://cluster.local/ns/shop/sa/orders";
const SERVER_AUTH = "1.3.6.1.5.5.7.3.1";
const CLIENT_AUTH = "1.3.6.1.5.5.7.3.2";
const { digitalSignature, keyCertSign, keyEncipherment } = x509.KeyUsageFlags;

interface LeafSpec {
  ca?: boolean | null; // null: no basicConstraints at all
  uris?: string[];
  eku?: string[] | null;
  ku?: number | null;
  kuCritical?: boolean;
  curve?: "P-256" | "P-384";
}

/** A self-signed certificate shaped like a leaf SVID except where `spec` says otherwise. */
async function leaf(spec: LeafSpec = {}): Promise<Uint8Array<ArrayBuffer>> {
  const curve = spec.curve ?? "P-256";
  const alg = { name: "ECDSA", namedCurve: curve, hash: "SHA-256" };
  const keys = (await webcrypto.subtle.generateKey(alg, false, ["sign", "verify"])) as CryptoKeyPair;
  const extensions: X509Extension[] = [];
  if (spec.ca !== null)
    extensions.push(new x509.BasicConstraintsExtension(spec.ca ?? false, undefined, true));
  if (spec.ku !== null)
    extensions.push(new x509.KeyUsagesExtension(spec.ku ?? digitalSignature, spec.kuCritical ?? true));
  if (spec.eku !== null)
    extensions.push(new x509.ExtendedKeyUsageExtension(spec.eku ?? [SERVER_AUTH, CLIENT_AUTH]));
  const uris = spec.uris ?? [ORDERS];
  if (uris.length) {
    extensions.push(
      new x509.SubjectAlternativeNameExtension(uris.map((value) => ({ type: "url" as const, value }))),
    );
  }
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    name: "O=test",
    keys,
    signingAlgorithm: alg,
    extensions,
  });
  return new Uint8Array(cert.rawData);
}

describe("svidLeafViolations", () => {
  test("a well-formed leaf breaks no rule, as DER or PEM", async () => {
    const der = await leaf();
    assert.deepEqual(svidLeafViolations(der), []);
    assert.deepEqual(svidLeafViolations(new x509.X509Certificate(der).toString("pem")), []);
  });

  test("finds cA=true", async () => {
    assert.deepEqual(svidLeafViolations(await leaf({ ca: true })), [
      "basicConstraints has cA=true; a leaf SVID must have cA=false",
    ]);
    assert.deepEqual(svidLeafViolations(await leaf({ ca: null })), [
      "basicConstraints is missing; a leaf SVID must state cA=false",
    ]);
  });

  test("finds two URI SANs, none, and one that is not a SPIFFE ID", async () => {
    assert.deepEqual(
      svidLeafViolations(await leaf({ uris: [ORDERS, "spiffe://cluster.local/ns/shop/sa/x"] })),
      ["it has 2 URI SANs; an X509-SVID has exactly one"],
    );
    assert.deepEqual(svidLeafViolations(await leaf({ uris: [] })), [
      "it has 0 URI SANs; an X509-SVID has exactly one",
    ]);
    const [v, ...rest] = svidLeafViolations(await leaf({ uris: ["https://cluster.local/ns/shop"] }));
    assert.match(v ?? "", /^its URI SAN is not a SPIFFE ID: .*scheme/);
    assert.deepEqual(rest, []);
  });

  test("finds a missing clientAuth or serverAuth", async () => {
    assert.deepEqual(svidLeafViolations(await leaf({ eku: [SERVER_AUTH] })), [
      "extKeyUsage lacks clientAuth",
    ]);
    assert.deepEqual(svidLeafViolations(await leaf({ eku: [CLIENT_AUTH] })), [
      "extKeyUsage lacks serverAuth",
    ]);
    assert.deepEqual(svidLeafViolations(await leaf({ eku: null })), [
      "extKeyUsage is missing; a leaf SVID must have serverAuth and clientAuth",
    ]);
  });

  test("finds keyUsage that is not critical, lacks digitalSignature or may sign certificates", async () => {
    assert.deepEqual(svidLeafViolations(await leaf({ kuCritical: false })), ["keyUsage is not critical"]);
    assert.deepEqual(svidLeafViolations(await leaf({ ku: keyEncipherment })), [
      "keyUsage lacks digitalSignature",
    ]);
    assert.deepEqual(svidLeafViolations(await leaf({ ku: digitalSignature | keyCertSign })), [
      "keyUsage has keyCertSign",
    ]);
    assert.equal(svidLeafViolations(await leaf({ ku: null })).length, 1);
  });

  test("finds a key that is not ECDSA P-256", async () => {
    assert.deepEqual(svidLeafViolations(await leaf({ curve: "P-384" })), [
      "the key is ECDSA P-384, not ECDSA P-256",
    ]);
  });

  test("reports garbage as one unparseable-certificate violation instead of throwing", () => {
    for (const bad of [
      "",
      "hello",
      "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
      new Uint8Array([48, 3, 1, 1, 0]),
    ]) {
      const v = svidLeafViolations(bad);
      assert.equal(v.length, 1, String(v));
      assert.match(v[0] ?? "", /cannot be parsed/);
    }
  });
});

describe("spiffeIdFromCertDer", () => {
  let issued: Uint8Array<ArrayBuffer>;
  before(async () => {
    const ca = await CertificateAuthority.create();
    const { svid } = await ca.issue(ORDERS);
    const blocks = decodePem(svid.chainPem[0] ?? "");
    assert.ok(typeof blocks !== "string" && blocks[0]);
    issued = blocks[0].der;
  });

  test("reads the one SPIFFE ID, also from a Buffer that is a view into a larger buffer", () => {
    clearSpiffeIdCache();
    assert.equal(spiffeIdFromCertDer(issued), ORDERS);
    assert.equal(spiffeIdFromCertDer(issued), ORDERS); // from the cache
    const pool = Buffer.alloc(issued.length + 100, 0xff);
    pool.set(issued, 37);
    assert.equal(spiffeIdFromCertDer(pool.subarray(37, 37 + issued.length)), ORDERS);
  });

  test("throws ZMESH_SVID_INVALID for zero or two URI SANs, a non-SPIFFE URI and garbage", async () => {
    for (const der of [
      await leaf({ uris: [] }),
      await leaf({ uris: [ORDERS, ORDERS] }),
      await leaf({ uris: ["spiffe://Cluster.local/ns/a/sa/b"] }),
      new Uint8Array([1, 2, 3]),
      new Uint8Array(0),
    ]) {
      assert.throws(() => spiffeIdFromCertDer(der), { name: "ZmeshError", code: "ZMESH_SVID_INVALID" });
    }
  });

  test("on changed bytes it returns the one ID or throws ZMESH_SVID_INVALID, never another error", () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { minLength: 1, maxLength: 4 }),
        (flips) => {
          const der = Uint8Array.from(issued);
          for (const [at, mask] of flips) der[at % der.length] = (der[at % der.length] ?? 0) ^ mask;
          try {
            // A flip inside the URI can still leave a valid SPIFFE ID; anything returned must be one.
            assert.match(spiffeIdFromCertDer(der), /^spiffe:\/\/[a-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/);
          } catch (e) {
            if (!isZmeshError(e, "ZMESH_SVID_INVALID")) throw e;
          }
          assert.ok(svidLeafViolations(der).length >= 0); // never throws either
        },
      ),
      { numRuns: 300 },
    );
    clearSpiffeIdCache();
  });

  test("the cache holds at most 1000 certificates", () => {
    clearSpiffeIdCache();
    // Certificates differing only in the last signature byte: distinct bytes, same SAN (signatures are
    // not checked here; the TLS stack did that before).
    for (let i = 0; i < 1100; i++) {
      const variant = Uint8Array.from(issued);
      variant[variant.length - 1] = i & 0xff;
      variant[variant.length - 2] = i >> 8;
      assert.equal(spiffeIdFromCertDer(variant), ORDERS);
    }
    assert.equal(clearSpiffeIdCache(), 1000);
  });
});
