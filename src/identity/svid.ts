// Reads X509-SVIDs: the SPIFFE ID of a peer certificate (on every TLS connection, so cached) and a
// check of the leaf rules of the X509-SVID standard that tests and the CA use on what it issues.

import type { X509Certificate as NodeX509Certificate } from "node:crypto";
import { isZmeshError, ZmeshError } from "../errors/index.js";
import { certificateUris } from "./leaf.js";
import { decodePem, plainBytes } from "./pem.js";
import { parseSpiffeId } from "./spiffe-id.js";
import { type X509Cert, type X509Extension, x509 } from "./x509.js";

export const OID_SUBJECT_ALT_NAME = "2.5.29.17";
export const OID_BASIC_CONSTRAINTS = "2.5.29.19";
export const OID_KEY_USAGE = "2.5.29.15";
export const OID_EXT_KEY_USAGE = "2.5.29.37";
export const OID_SERVER_AUTH = "1.3.6.1.5.5.7.3.1";
export const OID_CLIENT_AUTH = "1.3.6.1.5.5.7.3.2";

/** The SAN extension(s) of a certificate or CSR, split into URI names and the count of other names. */
export interface SanNames {
  extensions: number;
  uris: string[];
  others: number;
}

/** Reads the SANs from extensions; throws the library's error when a SAN cannot be decoded. */
export function sanNames(extensions: readonly X509Extension[]): SanNames {
  const out: SanNames = { extensions: 0, uris: [], others: 0 };
  for (const ext of extensions) {
    if (ext.type !== OID_SUBJECT_ALT_NAME) continue;
    out.extensions++;
    const san =
      ext instanceof x509.SubjectAlternativeNameExtension
        ? ext
        : new x509.SubjectAlternativeNameExtension(ext.rawData);
    for (const name of san.names.items) {
      if (name.type === "url") out.uris.push(name.value);
      else out.others++;
    }
  }
  return out;
}

function parseCertificate(pemOrDer: string | Uint8Array): X509Cert {
  if (typeof pemOrDer !== "string") return new x509.X509Certificate(plainBytes(pemOrDer));
  const blocks = decodePem(pemOrDer);
  if (typeof blocks === "string") throw new Error(`the PEM text is not clean: ${blocks}`);
  const first = blocks[0];
  if (blocks.length !== 1 || first === undefined || first.label !== "CERTIFICATE") {
    throw new Error("the PEM text must hold exactly one CERTIFICATE block");
  }
  return new x509.X509Certificate(first.der);
}

function reason(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

const CACHE_LIMIT = 1000;
const idCache = new Map<string, string>();

/**
 * The one SPIFFE ID of a DER certificate, as from a TLS peer. Results are cached by the exact bytes
 * (bounded, least recently used first out), because this runs on every connection.
 */
export function spiffeIdFromCertDer(der: Uint8Array): string {
  const bytes = Buffer.isBuffer(der) ? der : Buffer.from(der.buffer, der.byteOffset, der.byteLength);
  const key = bytes.toString("latin1");
  const hit = idCache.get(key);
  if (hit !== undefined) {
    idCache.delete(key);
    idCache.set(key, hit);
    return hit;
  }
  let uris: string[];
  try {
    uris = certificateUris(bytes).uris;
  } catch (e) {
    throw new ZmeshError(
      "ZMESH_SVID_INVALID",
      `The peer certificate could not be decoded (${reason(e)}); present an X509-SVID issued by the mesh CA.`,
      { cause: e },
    );
  }
  if (uris.length !== 1) {
    throw new ZmeshError(
      "ZMESH_SVID_INVALID",
      `The peer certificate has ${uris.length} URI SANs where an X509-SVID has exactly one; present an SVID issued by the mesh CA.`,
    );
  }
  const uri = uris[0] ?? "";
  try {
    parseSpiffeId(uri);
  } catch (e) {
    const why = isZmeshError(e) ? e.message.replace(/\.$/, "") : reason(e);
    throw new ZmeshError(
      "ZMESH_SVID_INVALID",
      `The peer certificate's URI SAN is not a SPIFFE ID (${why}); present an SVID issued by the mesh CA.`,
      { cause: e },
    );
  }
  if (idCache.size >= CACHE_LIMIT) {
    const oldest = idCache.keys().next();
    if (!oldest.done) idCache.delete(oldest.value);
  }
  idCache.set(key, uri);
  return uri;
}

/** For tests: empties the cache of spiffeIdFromCertDer and reports its size before. */
export function clearSpiffeIdCache(): number {
  const n = idCache.size;
  idCache.clear();
  return n;
}

/**
 * The X509-SVID leaf rules this certificate breaks (empty when none): one URI SAN that is a SPIFFE ID;
 * basicConstraints cA=false; keyUsage critical, digitalSignature, no keyCertSign/cRLSign; extKeyUsage
 * serverAuth and clientAuth; an ECDSA P-256 key.
 */
export function svidLeafViolations(pemOrDer: string | Uint8Array): string[] {
  let cert: X509Cert;
  try {
    cert = parseCertificate(pemOrDer);
  } catch (e) {
    return [`the certificate cannot be parsed: ${reason(e)}`];
  }
  const out: string[] = [];
  let extensions: readonly X509Extension[];
  try {
    extensions = cert.extensions;
  } catch (e) {
    return [`the certificate's extensions cannot be parsed: ${reason(e)}`];
  }

  const seen = new Set<string>();
  for (const ext of extensions) {
    if (seen.has(ext.type)) out.push(`extension ${ext.type} appears more than once`);
    seen.add(ext.type);
  }

  try {
    const { uris } = sanNames(extensions);
    if (uris.length !== 1) out.push(`it has ${uris.length} URI SANs; an X509-SVID has exactly one`);
    else {
      try {
        parseSpiffeId(uris[0] ?? "");
      } catch (e) {
        out.push(`its URI SAN is not a SPIFFE ID: ${reason(e)}`);
      }
    }
  } catch (e) {
    out.push(`its subjectAltName cannot be parsed: ${reason(e)}`);
  }

  try {
    const bc = cert.getExtension(x509.BasicConstraintsExtension);
    if (bc === null) out.push("basicConstraints is missing; a leaf SVID must state cA=false");
    else if (bc.ca) out.push("basicConstraints has cA=true; a leaf SVID must have cA=false");
  } catch (e) {
    out.push(`basicConstraints cannot be parsed: ${reason(e)}`);
  }

  try {
    const ku = cert.getExtension(x509.KeyUsagesExtension);
    if (ku === null)
      out.push("keyUsage is missing; a leaf SVID must have a critical keyUsage with digitalSignature");
    else {
      if (!ku.critical) out.push("keyUsage is not critical");
      if ((ku.usages & x509.KeyUsageFlags.digitalSignature) === 0)
        out.push("keyUsage lacks digitalSignature");
      if ((ku.usages & x509.KeyUsageFlags.keyCertSign) !== 0) out.push("keyUsage has keyCertSign");
      if ((ku.usages & x509.KeyUsageFlags.cRLSign) !== 0) out.push("keyUsage has cRLSign");
    }
  } catch (e) {
    out.push(`keyUsage cannot be parsed: ${reason(e)}`);
  }

  try {
    const eku = cert.getExtension(x509.ExtendedKeyUsageExtension);
    if (eku === null) out.push("extKeyUsage is missing; a leaf SVID must have serverAuth and clientAuth");
    else {
      const usages = eku.usages.map(String);
      if (!usages.includes(OID_SERVER_AUTH)) out.push("extKeyUsage lacks serverAuth");
      if (!usages.includes(OID_CLIENT_AUTH)) out.push("extKeyUsage lacks clientAuth");
    }
  } catch (e) {
    out.push(`extKeyUsage cannot be parsed: ${reason(e)}`);
  }

  try {
    const alg = cert.publicKey.algorithm as { name?: string; namedCurve?: string };
    if (alg.name !== "ECDSA" || alg.namedCurve !== "P-256") {
      const what = alg.namedCurve === undefined ? String(alg.name) : `${alg.name} ${alg.namedCurve}`;
      out.push(`the key is ${what}, not ECDSA P-256`);
    }
  } catch (e) {
    out.push(`the public key cannot be parsed: ${reason(e)}`);
  }
  return out;
}

/**
 * The SPIFFE ID of a TLS peer whose chain Node has already verified: the certificate must be a
 * leaf (a CA certificate is never an SVID, even one the mesh CA signed) with exactly one URI SAN.
 */
export function peerSpiffeId(cert: NodeX509Certificate | undefined): string {
  if (!cert) {
    throw new ZmeshError(
      "ZMESH_SVID_INVALID",
      "The peer presented no certificate; present an X509-SVID issued by the mesh CA.",
    );
  }
  if (cert.ca) {
    throw new ZmeshError(
      "ZMESH_SVID_INVALID",
      "The peer certificate is a CA certificate (cA=true); an X509-SVID leaf must have cA=false.",
    );
  }
  return spiffeIdFromCertDer(cert.raw);
}
