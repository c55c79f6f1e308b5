// The CA's hot path in plain DER: reading an untrusted CSR (structure, P-256 key, URI SANs, its
// self-signature) and writing an X509-SVID leaf signed by the issuing CA's key with Node's crypto.
// See der.ts for why this is not @peculiar/x509; tests check the output with openssl and the library.

import { createHash, createPublicKey, type KeyObject, randomFillSync, sign, verify } from "node:crypto";
import {
  BIT_STRING,
  BOOLEAN,
  children,
  content,
  DerError,
  INTEGER,
  OCTET_STRING,
  oid,
  raw,
  readTlv,
  SEQUENCE,
  SET,
  type Tlv,
  time,
  tlv,
  UTF8_STRING,
} from "./der.js";

const OID_EC_PUBLIC_KEY = oid("1.2.840.10045.2.1");
const OID_P256 = oid("1.2.840.10045.3.1.7");
const OID_EXTENSION_REQUEST = oid("1.2.840.113549.1.9.14");
const OID_SAN = oid("2.5.29.17");
const OID_SKI = oid("2.5.29.14");
const SIGNATURE_HASH = new Map<string, string>([
  [oid("1.2.840.10045.4.3.2").toString("hex"), "sha256"],
  [oid("1.2.840.10045.4.3.3").toString("hex"), "sha384"],
  [oid("1.2.840.10045.4.3.4").toString("hex"), "sha512"],
]);
const ECDSA_SHA256 = tlv(SEQUENCE, oid("1.2.840.10045.4.3.2"));
const URI_TAG = 0x86; // GeneralName uniformResourceIdentifier [6] IMPLICIT IA5String

export interface ParsedCsr {
  /** The SubjectPublicKeyInfo, verbatim: it goes into the certificate as is. */
  spki: Buffer;
  uris: string[];
  /** SAN entries that are not URIs (DNS names, IPs, ...). */
  others: number;
}

/** Thrown with a reason a person can read; the CA wraps it into ZMESH_CSR_INVALID. */
export class CsrError extends Error {}

function expect(cond: boolean, why: string): asserts cond {
  if (!cond) throw new CsrError(why);
}

function sanNamesOf(buf: Uint8Array, octet: Tlv, out: { uris: string[]; others: number }): void {
  const names = readTlv(buf, octet.start, octet.end);
  expect(names.tag === SEQUENCE && names.end === octet.end, "its subjectAltName is not a sequence of names");
  for (const n of children(buf, names)) {
    if (n.tag === URI_TAG) out.uris.push(content(buf, n).toString("latin1"));
    else out.others++;
  }
}

/**
 * The CSR's public key as a KeyObject. An uncompressed P-256 point goes in as a JWK, which Node
 * imports in half the time of DER SPKI (OpenSSL 3's decoder framework is the cost); both check
 * that the point is on the curve.
 */
function publicKeyOf(der: Uint8Array, keyBits: Tlv, spki: Buffer): KeyObject {
  const point = Buffer.from(der.buffer, der.byteOffset + keyBits.start + 1, keyBits.end - keyBits.start - 1);
  if (der[keyBits.start] === 0 && point.length === 65 && point[0] === 0x04) {
    const x = point.subarray(1, 33).toString("base64url");
    const y = point.subarray(33).toString("base64url");
    return createPublicKey({ key: { kty: "EC", crv: "P-256", x, y }, format: "jwk" });
  }
  return createPublicKey({ key: spki, format: "der", type: "spki" });
}

/** Parses a DER PKCS#10 request and verifies its signature with its own key. */
export function parseCsrDer(der: Uint8Array): ParsedCsr {
  try {
    const top = readTlv(der, 0);
    expect(top.tag === SEQUENCE && top.end === der.length, "it is not one DER sequence");
    const [info, alg, sig, ...extra] = children(der, top);
    expect(
      info !== undefined && alg !== undefined && sig !== undefined && extra.length === 0,
      "it does not have 3 parts",
    );
    const [version, subject, spki, attributes, ...more] = children(der, info);
    expect(
      version?.tag === INTEGER && subject?.tag === SEQUENCE && spki?.tag === SEQUENCE,
      "its request info is malformed",
    );
    expect(more.length === 0, "its request info has extra fields");
    const [keyAlg, keyBits] = children(der, spki);
    expect(keyAlg?.tag === SEQUENCE && keyBits?.tag === BIT_STRING, "its public key is malformed");
    const [algOid, curve] = children(der, keyAlg);
    expect(
      algOid !== undefined &&
        curve !== undefined &&
        raw(der, algOid).equals(OID_EC_PUBLIC_KEY) &&
        raw(der, curve).equals(OID_P256),
      "it is for a key that is not ECDSA P-256",
    );
    const out: ParsedCsr = { spki: Buffer.from(raw(der, spki)), uris: [], others: 0 };
    let sans = 0;
    if (attributes !== undefined) {
      expect(attributes.tag === 0xa0, "its attributes are malformed");
      for (const attr of children(der, attributes)) {
        const [type, values] = children(der, attr);
        if (type === undefined || values?.tag !== SET || !raw(der, type).equals(OID_EXTENSION_REQUEST))
          continue;
        for (const exts of children(der, values)) {
          for (const ext of children(der, exts)) {
            const parts = children(der, ext);
            const id = parts[0];
            const value = parts[parts.length - 1];
            expect(id !== undefined && value?.tag === OCTET_STRING, "an extension is malformed");
            if (parts.length === 3) expect(parts[1]!.tag === BOOLEAN, "an extension is malformed");
            if (raw(der, id).equals(OID_SAN)) {
              sans++;
              sanNamesOf(der, value, out);
            }
          }
        }
      }
    }
    expect(sans <= 1, "it has more than one subjectAltName extension");
    const [sigAlg] = children(der, alg);
    const hash = sigAlg ? SIGNATURE_HASH.get(raw(der, sigAlg).toString("hex")) : undefined;
    expect(hash !== undefined, "it is not signed with ECDSA and SHA-256, SHA-384 or SHA-512");
    expect(sig.tag === BIT_STRING && der[sig.start] === 0, "its signature is malformed");
    const signature = Buffer.from(der.buffer, der.byteOffset + sig.start + 1, sig.end - sig.start - 1);
    let ok = false;
    try {
      ok = verify(hash, raw(der, info), publicKeyOf(der, keyBits, out.spki), signature);
    } catch {
      ok = false;
    }
    expect(ok, "has a signature that does not verify with its own public key");
    return out;
  } catch (e) {
    if (e instanceof DerError) throw new CsrError(`it is not valid DER (${e.message})`);
    throw e;
  }
}

/** A positive 128-bit serial, minimally encoded as the content of an INTEGER. */
export function randomSerial(): Buffer {
  const b = randomFillSync(Buffer.alloc(16));
  b[0] = b[0]! & 0x7f;
  let i = 0;
  while (i < b.length - 1 && b[i] === 0 && b[i + 1]! < 0x80) i++;
  return b.subarray(i);
}

const LEAF_SUBJECT = tlv(
  SEQUENCE,
  tlv(SET, tlv(SEQUENCE, oid("2.5.4.10"), tlv(UTF8_STRING, Buffer.from("zmesh")))),
);
const VERSION_3 = Buffer.from("a003020102", "hex");
const CRITICAL = tlv(BOOLEAN, Buffer.from([0xff]));
const LEAF_BASIC_CONSTRAINTS = tlv(SEQUENCE, oid("2.5.29.19"), CRITICAL, tlv(OCTET_STRING, tlv(SEQUENCE)));
// keyUsage digitalSignature only: BIT STRING with 7 unused bits, 0x80.
const LEAF_KEY_USAGE = tlv(
  SEQUENCE,
  oid("2.5.29.15"),
  CRITICAL,
  tlv(OCTET_STRING, tlv(BIT_STRING, Buffer.from([0x07, 0x80]))),
);
const LEAF_EXT_KEY_USAGE = tlv(
  SEQUENCE,
  oid("2.5.29.37"),
  tlv(OCTET_STRING, tlv(SEQUENCE, oid("1.3.6.1.5.5.7.3.1"), oid("1.3.6.1.5.5.7.3.2"))),
);

export interface LeafRequest {
  spki: Buffer;
  uri: string;
  serial: Buffer;
  notBefore: Date;
  notAfter: Date;
}

/** Signs leaves for one issuing certificate; built once per issuer, then ~0.2 ms a leaf. */
export class LeafSigner {
  private readonly issuerName: Buffer;
  private readonly authorityKeyId: Buffer;

  constructor(
    issuerCertDer: Uint8Array,
    private readonly key: KeyObject,
  ) {
    const cert = readTlv(issuerCertDer, 0);
    const [tbs] = children(issuerCertDer, cert);
    if (!tbs) throw new DerError("issuer certificate has no TBSCertificate");
    const fields = children(issuerCertDer, tbs);
    const base = fields[0]?.tag === 0xa0 ? 1 : 0;
    const subject = fields[base + 4];
    if (!subject) throw new DerError("issuer certificate has no subject");
    this.issuerName = Buffer.from(raw(issuerCertDer, subject));
    let ski: Buffer | undefined;
    const exts = fields.find((f) => f.tag === 0xa3);
    if (exts) {
      const [list] = children(issuerCertDer, exts);
      for (const ext of list ? children(issuerCertDer, list) : []) {
        const parts = children(issuerCertDer, ext);
        if (parts[0] && raw(issuerCertDer, parts[0]).equals(OID_SKI)) {
          const octet = parts[parts.length - 1]!;
          ski = Buffer.from(content(issuerCertDer, readTlv(issuerCertDer, octet.start, octet.end)));
        }
      }
    }
    if (!ski) throw new DerError("issuer certificate has no subjectKeyIdentifier");
    this.authorityKeyId = tlv(SEQUENCE, oid("2.5.29.35"), tlv(OCTET_STRING, tlv(SEQUENCE, tlv(0x80, ski))));
  }

  sign(req: LeafRequest): Buffer {
    const spki = readTlv(req.spki, 0);
    const keyBits = children(req.spki, spki)[1]!;
    const keyId = createHash("sha1")
      .update(
        Buffer.from(
          req.spki.buffer,
          req.spki.byteOffset + keyBits.start + 1,
          keyBits.end - keyBits.start - 1,
        ),
      )
      .digest();
    const extensions = tlv(
      0xa3,
      tlv(
        SEQUENCE,
        LEAF_BASIC_CONSTRAINTS,
        LEAF_KEY_USAGE,
        LEAF_EXT_KEY_USAGE,
        // The subject is not empty, so the SAN is not critical (RFC 5280 4.2.1.6).
        tlv(
          SEQUENCE,
          OID_SAN,
          tlv(OCTET_STRING, tlv(SEQUENCE, tlv(URI_TAG, Buffer.from(req.uri, "latin1")))),
        ),
        tlv(SEQUENCE, OID_SKI, tlv(OCTET_STRING, tlv(OCTET_STRING, keyId))),
        this.authorityKeyId,
      ),
    );
    const tbs = tlv(
      SEQUENCE,
      VERSION_3,
      tlv(INTEGER, req.serial),
      ECDSA_SHA256,
      this.issuerName,
      tlv(SEQUENCE, time(req.notBefore), time(req.notAfter)),
      LEAF_SUBJECT,
      req.spki,
      extensions,
    );
    const signature = sign("sha256", tbs, this.key);
    return tlv(SEQUENCE, tbs, ECDSA_SHA256, tlv(BIT_STRING, Buffer.from([0]), signature));
  }
}

/** The URI SANs of a DER certificate (for a peer's SPIFFE ID on every connection). */
export function certificateUris(der: Uint8Array): { uris: string[]; others: number } {
  const cert = readTlv(der, 0);
  const [tbs] = children(der, cert);
  if (!tbs) throw new DerError("no TBSCertificate");
  const out = { uris: [] as string[], others: 0 };
  const exts = children(der, tbs).find((f) => f.tag === 0xa3);
  if (!exts) return out;
  const [list] = children(der, exts);
  let sans = 0;
  for (const ext of list ? children(der, list) : []) {
    const parts = children(der, ext);
    if (parts[0] && raw(der, parts[0]).equals(OID_SAN)) {
      sans++;
      sanNamesOf(der, parts[parts.length - 1]!, out);
    }
  }
  if (sans > 1) throw new DerError("more than one subjectAltName extension");
  return out;
}
