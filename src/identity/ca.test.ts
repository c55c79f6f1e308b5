// The CA against an independent judge (the openssl CLI), and its refusals: another identity, a broken
// or foreign CSR, a lifetime above the maximum. These guard the one place that mints identities.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createPrivateKey, X509Certificate as NodeX509, webcrypto } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import fc from "fast-check";
import { isZmeshError } from "../errors/index.js";
import { CertificateAuthority, generateCsr, svidLeafViolations, workloadId } from "./index.js";
import { decodePem, encodePem } from "./pem.js";
import { x509 } from "./x509.js";

const ORDERS = "spiffe://cluster.local/ns/shop/sa/orders";
const FRONTEND = "spiffe://cluster.local/ns/shop/sa/frontend";

let dir: string;
let ca: CertificateAuthority;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "zmesh-identity-"));
  ca = await CertificateAuthority.create();
});
after(() => rmSync(dir, { recursive: true, force: true }));

function openssl(...args: string[]): string {
  return execFileSync("openssl", args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

function write(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

function derOf(pem: string): Uint8Array<ArrayBuffer> {
  const blocks = decodePem(pem);
  assert.ok(typeof blocks !== "string" && blocks[0] !== undefined, String(blocks));
  return blocks[0].der;
}

/** A CSR made with @peculiar/x509 directly, to ask for what generateCsr never would. */
async function customCsr(opts: {
  names: { type: "url" | "dns"; value: string }[];
  curve?: "P-256" | "P-384";
}): Promise<string> {
  const curve = opts.curve ?? "P-256";
  const alg = { name: "ECDSA", namedCurve: curve, hash: curve === "P-256" ? "SHA-256" : "SHA-384" };
  const keys = (await webcrypto.subtle.generateKey(alg, false, ["sign", "verify"])) as CryptoKeyPair;
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    keys,
    signingAlgorithm: alg,
    extensions: opts.names.length ? [new x509.SubjectAlternativeNameExtension(opts.names, true)] : [],
  });
  return encodePem("CERTIFICATE REQUEST", new Uint8Array(csr.rawData));
}

async function rejects(p: Promise<unknown>, code: string, message?: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(isZmeshError(e), `expected a ZmeshError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (message) assert.match(e.message, message);
    return true;
  });
}

describe("an issued SVID, judged by openssl", () => {
  test("chains to the trust bundle and has the X509-SVID leaf shape", async () => {
    const csr = await generateCsr(workloadId("cluster.local", "shop", "orders"));
    const svid = await ca.signCsr(csr.csrPem, ORDERS);
    // Leaf first, then the intermediate that signed it; the root is only in the trust bundle.
    assert.equal(svid.chainPem.length, 2);
    const leaf = svid.chainPem[0] ?? "";
    const bundle = write("bundle.pem", ca.trustBundlePem());
    const leafFile = write("leaf.pem", leaf);
    const inter = write("intermediate.pem", svid.chainPem[1] ?? "");

    assert.equal(
      openssl("verify", "-CAfile", bundle, "-untrusted", inter, leafFile).trim(),
      `${leafFile}: OK`,
    );
    // Without the intermediate the leaf does not chain: it is not signed by the root itself.
    assert.throws(() => openssl("verify", "-CAfile", bundle, leafFile));
    // The purpose checks use the extKeyUsage: the leaf must serve as both TLS server and TLS client.
    assert.match(
      openssl("verify", "-purpose", "sslserver", "-CAfile", bundle, "-untrusted", inter, leafFile),
      /: OK/,
    );
    assert.match(
      openssl("verify", "-purpose", "sslclient", "-CAfile", bundle, "-untrusted", inter, leafFile),
      /: OK/,
    );
    const interText = openssl("x509", "-noout", "-text", "-in", inter);
    assert.match(interText, /CA:TRUE, pathlen:0/);
    assert.match(interText, /Certificate Sign, CRL Sign/);

    const text = openssl("x509", "-noout", "-text", "-in", leafFile);
    for (const want of [
      `URI:${ORDERS}`,
      "CA:FALSE",
      "Digital Signature",
      "TLS Web Server Authentication, TLS Web Client Authentication",
      "prime256v1",
      "X509v3 Subject Key Identifier",
      "X509v3 Authority Key Identifier",
    ]) {
      assert.ok(text.includes(want), `openssl text lacks ${want}:\n${text}`);
    }
    assert.match(text, /X509v3 Basic Constraints: critical/);
    assert.match(text, /X509v3 Key Usage: critical\s+Digital Signature\s*\n/);
    assert.deepEqual(svidLeafViolations(leaf), []);
    assert.deepEqual(svidLeafViolations(derOf(leaf)), []);
    assert.equal(svid.spiffeId, ORDERS);

    // The key the workload generated is the key the certificate certifies.
    const nodeCert = new NodeX509(leaf);
    assert.ok(nodeCert.checkPrivateKey(createPrivateKey(csr.keyPem)));
    assert.equal(svid.serial.toUpperCase(), nodeCert.serialNumber.replace(/^(00)+/, ""));
    assert.equal(svid.notBefore.getTime(), new Date(nodeCert.validFrom).getTime());
    assert.equal(svid.notAfter.getTime(), new Date(nodeCert.validTo).getTime());
  });

  test("the root is a 10-year P-256 CA limited to signing certificates and CRLs", () => {
    const bundle = ca.trustBundlePem();
    assert.equal((bundle.match(/BEGIN CERTIFICATE/g) ?? []).length, 1);
    const text = openssl("x509", "-noout", "-text", "-in", write("root.pem", bundle));
    assert.match(text, /Subject: O = zmesh, CN = zmesh root CA/);
    assert.match(text, /X509v3 Basic Constraints: critical\s+CA:TRUE/);
    assert.match(text, /X509v3 Key Usage: critical\s+Certificate Sign, CRL Sign\s*\n/);
    assert.match(text, /prime256v1/);
    const root = new x509.X509Certificate(derOf(bundle));
    const years = (root.notAfter.getTime() - root.notBefore.getTime()) / (365.25 * 86400_000);
    assert.ok(Math.abs(years - 10) < 0.01, `root lives ${years} years`);
  });

  test("generateCsr makes a CSR openssl verifies, with exactly the URI SAN and a PKCS#8 key", async () => {
    const csr = await generateCsr(FRONTEND);
    assert.match(csr.keyPem, /^-----BEGIN PRIVATE KEY-----\n/);
    assert.equal(createPrivateKey(csr.keyPem).asymmetricKeyDetails?.namedCurve, "prime256v1");
    const file = write("req.pem", csr.csrPem);
    const text = execFileSync("openssl", ["req", "-noout", "-text", "-verify", "-in", file], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
    });
    assert.match(
      text,
      /Subject Alternative Name: critical\s+URI:spiffe:\/\/cluster\.local\/ns\/shop\/sa\/frontend\s*\n/,
    );
    await assert.rejects(generateCsr("spiffe://cluster.local/ns//sa/x"), { code: "ZMESH_SPIFFE_ID" });
  });

  test("50 serial numbers are distinct positive 128-bit integers", async () => {
    const serials = new Set<string>();
    let longest = 0;
    for (let i = 0; i < 50; i++) {
      const { svid } = await ca.issue(FRONTEND);
      assert.match(svid.serial, /^[0-9a-f]{1,32}$/);
      const n = BigInt(`0x${svid.serial}`);
      assert.ok(n > 0n && n < 1n << 127n, svid.serial);
      longest = Math.max(longest, svid.serial.length);
      serials.add(svid.serial);
    }
    assert.equal(serials.size, 50);
    // 16 random bytes with only the sign bit cleared: some serial uses all 16 bytes.
    assert.equal(longest, 32);
  });

  test("issue returns a PKCS#8 key that matches its SVID", async () => {
    const { keyPem, svid } = await ca.issue(ORDERS, 600);
    const cert = new NodeX509(svid.chainPem[0] ?? "");
    assert.ok(cert.checkPrivateKey(createPrivateKey(keyPem)));
    assert.deepEqual(svidLeafViolations(svid.chainPem[0] ?? ""), []);
  });
});

describe("validity", () => {
  test("notBefore is now - 60 s and notAfter is now + ttl, default 24 h", async () => {
    const now = new Date("2030-01-02T03:04:05.678Z");
    const fixed = await CertificateAuthority.create({ now: () => now });
    const t = Math.floor(now.getTime() / 1000) * 1000; // certificates keep whole seconds
    const short = await fixed.issue(ORDERS, 3600);
    assert.equal(short.svid.notBefore.getTime(), t - 60_000);
    assert.equal(short.svid.notAfter.getTime(), t + 3600_000);
    const byDefault = await fixed.signCsr((await generateCsr(ORDERS)).csrPem, ORDERS);
    assert.equal(byDefault.notAfter.getTime(), t + 86400_000);
  });

  test("a lifetime above the maximum is refused, saying the maximum", async () => {
    const small = await CertificateAuthority.create({ maxTtlSeconds: 3600, defaultTtlSeconds: 600 });
    const csr = await generateCsr(ORDERS);
    await rejects(small.signCsr(csr.csrPem, ORDERS, 3601), "ZMESH_CSR_INVALID", /maximum of 3600 seconds/);
    await rejects(small.issue(ORDERS, 3601), "ZMESH_CSR_INVALID", /maximum of 3600 seconds/);
    await rejects(
      ca.signCsr(csr.csrPem, ORDERS, 7 * 86400 + 1),
      "ZMESH_CSR_INVALID",
      /maximum of 604800 seconds/,
    );
    for (const ttl of [0, -1, 1.5, Number.NaN]) {
      await rejects(ca.signCsr(csr.csrPem, ORDERS, ttl), "ZMESH_CSR_INVALID");
    }
    assert.equal((await small.signCsr(csr.csrPem, ORDERS, 3600)).spiffeId, ORDERS);
  });

  test("bad options are refused when the CA is made", async () => {
    await assert.rejects(CertificateAuthority.create({ trustDomain: "Cluster.local" }), {
      code: "ZMESH_SPIFFE_ID",
    });
    await assert.rejects(
      CertificateAuthority.create({ maxTtlSeconds: 60, defaultTtlSeconds: 120 }),
      RangeError,
    );
    await assert.rejects(CertificateAuthority.create({ maxTtlSeconds: 0 }), RangeError);
  });
});

describe("signCsr refuses", () => {
  test("a CSR for another identity", async () => {
    const csr = await generateCsr(FRONTEND);
    await rejects(
      ca.signCsr(csr.csrPem, ORDERS),
      "ZMESH_CSR_IDENTITY",
      /asks for "spiffe:\/\/cluster\.local\/ns\/shop\/sa\/frontend" but the caller proved spiffe:\/\/cluster\.local\/ns\/shop\/sa\/orders/,
    );
  });

  test("an identity outside the CA's trust domain, even when the CSR matches it", async () => {
    const other = "spiffe://example.org/ns/shop/sa/orders";
    const csr = await generateCsr(other);
    await rejects(ca.signCsr(csr.csrPem, other), "ZMESH_CSR_IDENTITY", /outside trust domain cluster\.local/);
    await rejects(ca.issue(other), "ZMESH_CSR_IDENTITY");
  });

  test("an expected identity that is not a SPIFFE ID", async () => {
    const csr = await generateCsr(ORDERS);
    await rejects(ca.signCsr(csr.csrPem, "spiffe://cluster.local/ns/shop/sa/orders/"), "ZMESH_SPIFFE_ID");
  });

  test("a CSR with no URI SAN, two URI SANs, or extra DNS names", async () => {
    await rejects(ca.signCsr(await customCsr({ names: [] }), ORDERS), "ZMESH_CSR_IDENTITY", /0 URI SANs/);
    const two = await customCsr({
      names: [
        { type: "url", value: ORDERS },
        { type: "url", value: FRONTEND },
      ],
    });
    await rejects(ca.signCsr(two, ORDERS), "ZMESH_CSR_IDENTITY", /2 URI SANs/);
    const dns = await customCsr({
      names: [
        { type: "url", value: ORDERS },
        { type: "dns", value: "orders.shop.svc" },
      ],
    });
    await rejects(ca.signCsr(dns, ORDERS), "ZMESH_CSR_IDENTITY", /besides/);
  });

  test("a CSR whose signature does not verify", async () => {
    const csr = await generateCsr(ORDERS);
    const der = Buffer.from(derOf(csr.csrPem));
    // The last byte is inside the ECDSA signature's s value; flipping it keeps the DER well-formed.
    der[der.length - 1] = (der[der.length - 1] ?? 0) ^ 0x01;
    await rejects(
      ca.signCsr(encodePem("CERTIFICATE REQUEST", der), ORDERS),
      "ZMESH_CSR_INVALID",
      /does not verify/,
    );
  });

  test("a CSR for a key that is not ECDSA P-256", async () => {
    const csr = await customCsr({ names: [{ type: "url", value: ORDERS }], curve: "P-384" });
    await rejects(ca.signCsr(csr, ORDERS), "ZMESH_CSR_INVALID", /not ECDSA P-256/);
  });

  test("garbage instead of a PEM CSR", async () => {
    const good = (await generateCsr(ORDERS)).csrPem;
    const certPem = ca.trustBundlePem();
    for (const garbage of [
      "",
      "hello",
      "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA", // bare base64, which a lenient parser would guess at
      Buffer.from(derOf(good)).toString("hex"),
      certPem, // a certificate, not a request
      good + good, // two requests
      `junk\n${good}`,
      "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
      "-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----\n",
      good.replace("END CERTIFICATE REQUEST", "END CERTIFICATE"),
      good.replace(/\n[A-Za-z0-9+/]{10}/, "\nAAAAAAAAAA"),
      `-----BEGIN CERTIFICATE REQUEST-----\n${"A".repeat(20000)}\n-----END CERTIFICATE REQUEST-----\n`,
    ]) {
      await rejects(ca.signCsr(garbage, ORDERS), "ZMESH_CSR_INVALID");
    }
    await rejects(ca.signCsr(42 as unknown as string, ORDERS), "ZMESH_CSR_INVALID");
  });
});

describe("signCsr on untrusted bytes (property)", () => {
  test("a CSR with bytes changed, cut or appended is refused with a CSR error, never another error", async () => {
    const good = Buffer.from(derOf((await generateCsr(ORDERS)).csrPem));
    const edit = fc.oneof(
      fc.record({ kind: fc.constant("flip" as const), at: fc.nat(), mask: fc.integer({ min: 1, max: 255 }) }),
      fc.record({ kind: fc.constant("cut" as const), at: fc.nat(), mask: fc.constant(0) }),
      fc.record({
        kind: fc.constant("append" as const),
        at: fc.nat({ max: 40 }),
        mask: fc.integer({ min: 0, max: 255 }),
      }),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(edit, { minLength: 1, maxLength: 3 }), async (edits) => {
        let der = Buffer.from(good);
        for (const e of edits) {
          const at = e.at % der.length;
          if (e.kind === "flip") der[at] = (der[at] ?? 0) ^ e.mask;
          else if (e.kind === "cut") der = der.subarray(0, at);
          else der = Buffer.concat([der, Buffer.alloc(e.at + 1, e.mask)]);
        }
        try {
          await ca.signCsr(encodePem("CERTIFICATE REQUEST", der), ORDERS);
        } catch (e) {
          if (!isZmeshError(e, "ZMESH_CSR_INVALID") && !isZmeshError(e, "ZMESH_CSR_IDENTITY")) throw e;
        }
      }),
      { numRuns: 300 },
    );
  });
});
