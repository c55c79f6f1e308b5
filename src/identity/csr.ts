// Certificate signing requests: a workload makes one for its own key (generateCsr), and the CA reads
// untrusted ones (readCsr), which must be clean PEM, signed by their key, and use ECDSA P-256.

import { generateKeyPair, KeyObject, sign, webcrypto } from "node:crypto";
import { ZmeshError } from "../errors/index.js";
import { BIT_STRING, BOOLEAN, INTEGER, OCTET_STRING, oid, SEQUENCE, SET, tlv } from "./der.js";
import { CsrError, type ParsedCsr, parseCsrDer } from "./leaf.js";
import { decodePem, encodePem } from "./pem.js";
import { parseSpiffeId } from "./spiffe-id.js";

const subtle = (webcrypto as Crypto).subtle;

export interface Csr {
  /** PKCS#8 PEM of the new private key. */
  keyPem: string;
  csrPem: string;
}

export const EC_P256: EcKeyGenParams & EcdsaParams = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };

/** A CSR larger than this is refused before parsing; a P-256 CSR with one URI SAN is ~400 bytes. */
export const MAX_CSR_PEM_CHARS = 16 * 1024;

/** A new extractable ECDSA P-256 key pair (extractable so the workload can hand it to TLS). */
export function generateP256KeyPair(): Promise<CryptoKeyPair> {
  return subtle.generateKey(EC_P256, true, ["sign", "verify"]);
}

export function privateKeyPem(key: CryptoKey): string {
  return KeyObject.from(key).export({ type: "pkcs8", format: "pem" }).toString();
}

/**
 * A new ECDSA P-256 key and a CSR for it whose only content is the URI SAN (empty subject), written
 * with the DER writer of ./der.ts (PKCS#10, RFC 2986) so that a proxy never loads @peculiar/x509.
 */
export async function generateCsr(spiffeUri: string): Promise<Csr> {
  const uri = parseSpiffeId(spiffeUri).uri;
  const { publicKey, privateKey } = await new Promise<{ publicKey: KeyObject; privateKey: KeyObject }>(
    (resolve, reject) =>
      generateKeyPair("ec", { namedCurve: "P-256" }, (e, pub, priv) =>
        e ? reject(e) : resolve({ publicKey: pub, privateKey: priv }),
      ),
  );
  const spki = publicKey.export({ type: "spki", format: "der" });
  // GeneralNames with one uniformResourceIdentifier ([6] IA5String).
  const names = tlv(SEQUENCE, tlv(0x86, Buffer.from(uri, "latin1")));
  // An empty subject makes the SAN the whole identity, so it is marked critical (RFC 5280 4.2.1.6).
  const san = tlv(SEQUENCE, oid("2.5.29.17"), tlv(BOOLEAN, Buffer.from([0xff])), tlv(OCTET_STRING, names));
  const extensionRequest = tlv(SEQUENCE, oid("1.2.840.113549.1.9.14"), tlv(SET, tlv(SEQUENCE, san)));
  const info = tlv(
    SEQUENCE,
    tlv(INTEGER, Buffer.from([0])),
    tlv(SEQUENCE),
    spki,
    tlv(0xa0, extensionRequest),
  );
  const signature = sign("sha256", info, { key: privateKey, dsaEncoding: "der" });
  const der = tlv(
    SEQUENCE,
    info,
    tlv(SEQUENCE, oid("1.2.840.10045.4.3.2")), // ecdsa-with-SHA256
    tlv(BIT_STRING, Buffer.from([0]), signature),
  );
  return {
    keyPem: privateKey.export({ type: "pkcs8", format: "pem" }).toString(),
    csrPem: encodePem("CERTIFICATE REQUEST", new Uint8Array(der)),
  };
}

function invalid(what: string, cause?: unknown): ZmeshError {
  return new ZmeshError(
    "ZMESH_CSR_INVALID",
    `The certificate signing request ${what}; send a PEM PKCS#10 CSR for an ECDSA P-256 key, as generateCsr makes.`,
    cause === undefined ? undefined : { cause },
  );
}

/** Parses an untrusted CSR and verifies its self-signature; throws ZMESH_CSR_INVALID. */
export function readCsr(csrPem: string): ParsedCsr {
  if (typeof csrPem !== "string") throw invalid("is not a string");
  if (csrPem.length > MAX_CSR_PEM_CHARS) throw invalid(`is longer than ${MAX_CSR_PEM_CHARS} characters`);
  const blocks = decodePem(csrPem);
  if (typeof blocks === "string") throw invalid(`is not PEM (${blocks})`);
  const block = blocks[0];
  if (blocks.length !== 1 || block === undefined || !/^(NEW )?CERTIFICATE REQUEST$/.test(block.label)) {
    throw invalid("must be exactly one CERTIFICATE REQUEST PEM block");
  }
  try {
    return parseCsrDer(block.der);
  } catch (e) {
    if (e instanceof CsrError)
      throw invalid(
        e.message.replace(/^(it |has )/, (m) => (m === "has " ? "has " : "")),
        e,
      );
    throw invalid(`cannot be decoded (${e instanceof Error ? e.message : String(e)})`, e);
  }
}
