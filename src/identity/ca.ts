// The mesh certificate authority: an in-memory self-signed root that signs X509-SVID leaves, only for the
// identity the caller proved. Its private key never leaves this object (a non-extractable CryptoKey).

import { webcrypto } from "node:crypto";
import { ZmeshError } from "../errors/index.js";
import { EC_P256, generateP256KeyPair, privateKeyPem, readCsr } from "./csr.js";
import { encodePem } from "./pem.js";
import { DEFAULT_TRUST_DOMAIN, parseSpiffeId, trustDomainRule } from "./spiffe-id.js";
import { OID_CLIENT_AUTH, OID_SERVER_AUTH } from "./svid.js";
import { subtle, x509 } from "./x509.js";

export interface IssuedSvid {
  /** Leaf first; the root is not included (it is in the trust bundle). */
  chainPem: string[];
  notBefore: Date;
  notAfter: Date;
  /** Lower-case hex, without leading zero bytes. */
  serial: string;
  spiffeId: string;
}

export interface CertificateAuthorityOptions {
  trustDomain?: string;
  /** Lifetime of an SVID when the caller names none; default 24 h. */
  defaultTtlSeconds?: number;
  /** Longest lifetime the CA signs; default 7 days. */
  maxTtlSeconds?: number;
  now?: () => Date;
}

export const ROOT_NAME = "O=zmesh, CN=zmesh root CA";
export const LEAF_NAME = "O=zmesh";
const ROOT_YEARS = 10;
/** Leaves start this long before issue, so peers whose clocks are a little behind accept them. */
export const CLOCK_SKEW_SECONDS = 60;
const DEFAULT_TTL_SECONDS = 24 * 3600;
const MAX_TTL_SECONDS = 7 * 24 * 3600;

// The same for every leaf, so built once (the library's encoders are slow enough to matter here).
const LEAF_SUBJECT = new x509.Name(LEAF_NAME);
const LEAF_BASIC_CONSTRAINTS = new x509.BasicConstraintsExtension(false, undefined, true);
const LEAF_KEY_USAGE = new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true);
const LEAF_EXT_KEY_USAGE = new x509.ExtendedKeyUsageExtension([OID_SERVER_AUTH, OID_CLIENT_AUTH], false);

/** 16 random bytes with the top bit cleared: a positive 128-bit INTEGER (RFC 5280 4.1.2.2). */
export function randomSerialHex(): string {
  const bytes = webcrypto.getRandomValues(new Uint8Array(16));
  bytes[0] = (bytes[0] ?? 0) & 0x7f;
  return Buffer.from(bytes).toString("hex");
}

function checkTtlOption(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new RangeError(
      `CertificateAuthority option ${name} must be a positive whole number of seconds, not ${value}.`,
    );
  }
  return value;
}

export class CertificateAuthority {
  readonly trustDomain: string;
  readonly #signingKey: CryptoKey;
  readonly #roots: x509.X509Certificate[];
  readonly #authorityKeyId: x509.AuthorityKeyIdentifierExtension;
  readonly #issuer: x509.Name;
  readonly #defaultTtl: number;
  readonly #maxTtl: number;
  readonly #now: () => Date;

  private constructor(
    trustDomain: string,
    signingKey: CryptoKey,
    root: x509.X509Certificate,
    authorityKeyId: string,
    defaultTtl: number,
    maxTtl: number,
    now: () => Date,
  ) {
    this.trustDomain = trustDomain;
    this.#signingKey = signingKey;
    this.#roots = [root];
    this.#authorityKeyId = new x509.AuthorityKeyIdentifierExtension(authorityKeyId, false);
    this.#issuer = root.subjectName;
    this.#defaultTtl = defaultTtl;
    this.#maxTtl = maxTtl;
    this.#now = now;
  }

  /** A new CA with a new self-signed ECDSA P-256 root valid for 10 years. */
  static async create(opts: CertificateAuthorityOptions = {}): Promise<CertificateAuthority> {
    const trustDomain = opts.trustDomain ?? DEFAULT_TRUST_DOMAIN;
    const tdRule = trustDomainRule(trustDomain);
    if (tdRule !== undefined) {
      throw new ZmeshError(
        "ZMESH_SPIFFE_ID",
        `The CA trust domain ${JSON.stringify(trustDomain)} is not valid: ${tdRule}.`,
      );
    }
    const maxTtl = checkTtlOption("maxTtlSeconds", opts.maxTtlSeconds ?? MAX_TTL_SECONDS);
    const defaultTtl = checkTtlOption(
      "defaultTtlSeconds",
      opts.defaultTtlSeconds ?? Math.min(DEFAULT_TTL_SECONDS, maxTtl),
    );
    if (defaultTtl > maxTtl) {
      throw new RangeError(
        `CertificateAuthority option defaultTtlSeconds (${defaultTtl}) must not exceed maxTtlSeconds (${maxTtl}).`,
      );
    }
    const now = opts.now ?? (() => new Date());

    // Non-extractable: the root private key can sign but can never be exported or logged.
    const keys = (await subtle.generateKey(EC_P256, false, ["sign", "verify"])) as CryptoKeyPair;
    const ski = await x509.SubjectKeyIdentifierExtension.create(keys.publicKey);
    const start = now();
    const notAfter = new Date(start.getTime());
    notAfter.setUTCFullYear(notAfter.getUTCFullYear() + ROOT_YEARS);
    const root = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: randomSerialHex(),
      name: ROOT_NAME,
      notBefore: new Date(start.getTime() - CLOCK_SKEW_SECONDS * 1000),
      notAfter,
      signingAlgorithm: EC_P256,
      keys,
      extensions: [
        new x509.BasicConstraintsExtension(true, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        ski,
      ],
    });
    return new CertificateAuthority(trustDomain, keys.privateKey, root, ski.keyId, defaultTtl, maxTtl, now);
  }

  /** Every root this CA's SVIDs may chain to, as concatenated PEM. */
  trustBundlePem(): string {
    return this.#roots.map((c) => encodePem("CERTIFICATE", new Uint8Array(c.rawData))).join("");
  }

  /**
   * Signs a CSR into an X509-SVID only if the CSR's single URI SAN equals expectedSpiffeUri (the identity
   * the caller proved); otherwise throws ZMESH_CSR_IDENTITY. Verifies the CSR signature (ZMESH_CSR_INVALID).
   */
  async signCsr(csrPem: string, expectedSpiffeUri: string, ttlSeconds?: number): Promise<IssuedSvid> {
    const expected = this.#checkIdentity(expectedSpiffeUri);
    const ttl = this.#checkTtl(ttlSeconds);
    const { publicKey, san } = await readCsr(csrPem);
    const uri = san.uris[0];
    if (san.uris.length !== 1 || uri === undefined) {
      throw new ZmeshError(
        "ZMESH_CSR_IDENTITY",
        `The CSR has ${san.uris.length} URI SANs; it must carry exactly one, ${expected}.`,
      );
    }
    if (uri !== expected) {
      throw new ZmeshError(
        "ZMESH_CSR_IDENTITY",
        `The CSR asks for ${JSON.stringify(uri.length > 200 ? `${uri.slice(0, 197)}...` : uri)} but the caller proved ${expected}; request a certificate only for your own identity.`,
      );
    }
    if (san.others > 0) {
      throw new ZmeshError(
        "ZMESH_CSR_IDENTITY",
        `The CSR asks for ${san.others} names besides ${expected}; an SVID carries only the SPIFFE ID, so leave them out.`,
      );
    }
    return this.#signLeaf(publicKey, expected, ttl);
  }

  /** Convenience for the control plane's own serving cert: key + SVID for a URI, generated in process. */
  async issue(spiffeUri: string, ttlSeconds?: number): Promise<{ keyPem: string; svid: IssuedSvid }> {
    const uri = this.#checkIdentity(spiffeUri);
    const ttl = this.#checkTtl(ttlSeconds);
    const keys = await generateP256KeyPair();
    const svid = await this.#signLeaf(keys.publicKey, uri, ttl);
    return { keyPem: privateKeyPem(keys.privateKey), svid };
  }

  #checkIdentity(spiffeUri: string): string {
    const id = parseSpiffeId(spiffeUri);
    if (id.trustDomain !== this.trustDomain) {
      throw new ZmeshError(
        "ZMESH_CSR_IDENTITY",
        `The identity ${id.uri} is outside trust domain ${this.trustDomain} of this CA; ask for an ID under spiffe://${this.trustDomain}/.`,
      );
    }
    return id.uri;
  }

  #checkTtl(ttlSeconds: number | undefined): number {
    const ttl = ttlSeconds ?? this.#defaultTtl;
    if (!Number.isSafeInteger(ttl) || ttl <= 0) {
      throw new ZmeshError(
        "ZMESH_CSR_INVALID",
        `The requested lifetime ${ttl} is not a positive whole number of seconds; ask for 1 to ${this.#maxTtl} seconds.`,
      );
    }
    if (ttl > this.#maxTtl) {
      throw new ZmeshError(
        "ZMESH_CSR_INVALID",
        `The requested lifetime of ${ttl} seconds exceeds the maximum of ${this.#maxTtl} seconds; ask for at most ${this.#maxTtl}.`,
      );
    }
    return ttl;
  }

  async #signLeaf(publicKey: x509.PublicKey | CryptoKey, uri: string, ttl: number): Promise<IssuedSvid> {
    const now = this.#now().getTime();
    const root = this.#roots[0];
    // A leaf never outlives the root that signs it.
    const notAfter = Math.min(
      now + ttl * 1000,
      root === undefined ? Number.POSITIVE_INFINITY : root.notAfter.getTime(),
    );
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: randomSerialHex(),
      subject: LEAF_SUBJECT,
      issuer: this.#issuer,
      notBefore: new Date(now - CLOCK_SKEW_SECONDS * 1000),
      notAfter: new Date(notAfter),
      publicKey,
      signingKey: this.#signingKey,
      signingAlgorithm: EC_P256,
      extensions: [
        LEAF_BASIC_CONSTRAINTS,
        LEAF_KEY_USAGE,
        LEAF_EXT_KEY_USAGE,
        // The subject is not empty, so the SAN is not critical (RFC 5280 4.2.1.6).
        new x509.SubjectAlternativeNameExtension([{ type: "url", value: uri }], false),
        await x509.SubjectKeyIdentifierExtension.create(publicKey),
        this.#authorityKeyId,
      ],
    });
    return {
      chainPem: [encodePem("CERTIFICATE", new Uint8Array(cert.rawData))],
      notBefore: cert.notBefore,
      notAfter: cert.notAfter,
      serial: cert.serialNumber,
      spiffeId: uri,
    };
  }
}
