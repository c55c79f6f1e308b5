// Test PKI: a root and intermediate whose keys the test holds, so that tests can sign leaves the
// mesh CA never would (expired, CA:true, two URI SANs, another root with the same names). Shared by
// the identity tests and the attack suite.
import { webcrypto } from "node:crypto";
import { CertificateAuthority } from "../../src/identity/index.js";
import { type X509Cert, x509 } from "../../src/identity/x509.js";

const alg = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" } as const;
export const pem = (c: X509Cert) => `${c.toString("pem").trim()}\n`;

/** A root and intermediate whose keys the test holds, so it can sign leaves the CA never would. */
export async function testHierarchy() {
  const rootKeys = await webcrypto.subtle.generateKey(alg, true, ["sign", "verify"]);
  const root = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: "01",
    name: "CN=test root",
    notBefore: new Date(Date.now() - 3600_000),
    notAfter: new Date(Date.now() + 365 * 86400_000),
    keys: rootKeys,
    signingAlgorithm: alg,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true),
      await x509.SubjectKeyIdentifierExtension.create(rootKeys.publicKey),
    ],
  });
  const interKeys = await webcrypto.subtle.generateKey(alg, true, ["sign", "verify"]);
  const inter = await x509.X509CertificateGenerator.create({
    serialNumber: "02",
    subject: "CN=test intermediate",
    issuer: root.subject,
    notBefore: new Date(Date.now() - 3600_000),
    notAfter: new Date(Date.now() + 300 * 86400_000),
    publicKey: interKeys.publicKey,
    signingKey: rootKeys.privateKey,
    signingAlgorithm: alg,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true),
      await x509.SubjectKeyIdentifierExtension.create(interKeys.publicKey),
    ],
  });
  const keyPem = async (k: CryptoKey) =>
    x509.PemConverter.encode(await webcrypto.subtle.exportKey("pkcs8", k), "PRIVATE KEY");
  /** A leaf signed by the intermediate, shaped by `opts` (the test's bad SVIDs). */
  async function leaf(opts: { uris: string[]; ca?: boolean; notAfter?: Date; notBefore?: Date }) {
    const keys = await webcrypto.subtle.generateKey(alg, true, ["sign", "verify"]);
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: Math.floor(Math.random() * 1e9).toString(16),
      subject: "O=zmesh",
      issuer: inter.subject,
      notBefore: opts.notBefore ?? new Date(Date.now() - 60_000),
      notAfter: opts.notAfter ?? new Date(Date.now() + 3600_000),
      publicKey: keys.publicKey,
      signingKey: interKeys.privateKey,
      signingAlgorithm: alg,
      extensions: [
        new x509.BasicConstraintsExtension(opts.ca === true, undefined, true),
        new x509.KeyUsagesExtension(
          x509.KeyUsageFlags.digitalSignature | (opts.ca ? x509.KeyUsageFlags.keyCertSign : 0),
          true,
        ),
        new x509.ExtendedKeyUsageExtension(["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"]),
        new x509.SubjectAlternativeNameExtension(opts.uris.map((value) => ({ type: "url" as const, value }))),
      ],
    });
    return { key: await keyPem(keys.privateKey), cert: `${pem(cert)}${pem(inter)}` };
  }
  const ca = await CertificateAuthority.import({
    rootPem: pem(root),
    intermediatePem: pem(inter),
    intermediateKeyPem: await keyPem(interKeys.privateKey),
  });
  return { ca, leaf, rootPem: pem(root) };
}
