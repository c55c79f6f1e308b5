// The mesh certificate authority: a root (made here, 10 years, or brought by the user), an
// intermediate that signs every workload SVID, the trust bundle, root rotation in three steps, and
// a store whose private keys are sealed under a key-encryption key. Leaves are signed only for the
// identity the caller proved.

import { createHash, createPrivateKey, KeyObject, X509Certificate as NodeX509 } from "node:crypto";
import { ZmeshError } from "../errors/index.js";
import { EC_P256, generateP256KeyPair, privateKeyPem, readCsr } from "./csr.js";
import { CsrError, LeafSigner, randomSerial } from "./leaf.js";
import { decodePem, encodePem } from "./pem.js";
import { type Sealed, seal, unseal } from "./sealed.js";
import { DEFAULT_TRUST_DOMAIN, parseSpiffeId, trustDomainRule } from "./spiffe-id.js";
import { subtle, type X509Cert, x509 } from "./x509.js";

export interface IssuedSvid {
  /** Leaf first, then the intermediate; the root is not included (it is in the trust bundle). */
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
export const INTERMEDIATE_NAME = "O=zmesh, CN=zmesh intermediate CA";
export const LEAF_NAME = "O=zmesh";
const ROOT_YEARS = 10;
const INTERMEDIATE_YEARS = 1;
/** Leaves start this long before issue, so peers whose clocks are a little behind accept them. */
export const CLOCK_SKEW_SECONDS = 60;
const DEFAULT_TTL_SECONDS = 24 * 3600;
const MAX_TTL_SECONDS = 7 * 24 * 3600;

/** One root and the intermediate under it that signs leaves. */
interface Generation {
  rootPem: string;
  /** Absent for a root the user brought without its key: such a root cannot make intermediates. */
  rootKey?: KeyObject;
  intermediatePem: string;
  intermediateKey: KeyObject;
  intermediateNotAfter: number;
  signer: LeafSigner;
  /** Short SHA-256 of the intermediate: proxies renew when the issuer id they hold differs. */
  id: string;
}

/** The CA store as written to disk: certificates in PEM, keys sealed. */
export interface CaStore {
  version: 1;
  trustDomain: string;
  trusted: string[];
  active: StoredGeneration;
  pending?: StoredGeneration;
  retiring?: string[];
}
interface StoredGeneration {
  rootPem: string;
  rootKey?: Sealed;
  intermediatePem: string;
  intermediateKey: Sealed;
}

export type RotationPhase = "steady" | "overlap" | "activated";

/** 16 random bytes with the top bit cleared: a positive 128-bit INTEGER (RFC 5280 4.1.2.2). */
export function randomSerialHex(): string {
  return randomSerial().toString("hex");
}

function checkTtlOption(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new RangeError(
      `CertificateAuthority option ${name} must be a positive whole number of seconds, not ${value}.`,
    );
  }
  return value;
}

function pemOf(c: X509Cert): string {
  return encodePem("CERTIFICATE", new Uint8Array(c.rawData));
}

function derOf(pem: string, what: string): Uint8Array<ArrayBuffer> {
  const blocks = decodePem(pem);
  if (typeof blocks === "string" || blocks.length !== 1 || blocks[0]!.label !== "CERTIFICATE") {
    throw new ZmeshError("ZMESH_CA_STORE", `the ${what} must be exactly one PEM CERTIFICATE block`);
  }
  return blocks[0]!.der;
}

async function makeRoot(start: Date): Promise<{ cert: X509Cert; keys: CryptoKeyPair }> {
  const keys = (await subtle.generateKey(EC_P256, true, ["sign", "verify"])) as CryptoKeyPair;
  const notAfter = new Date(start.getTime());
  notAfter.setUTCFullYear(notAfter.getUTCFullYear() + ROOT_YEARS);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerialHex(),
    name: ROOT_NAME,
    notBefore: new Date(start.getTime() - CLOCK_SKEW_SECONDS * 1000),
    notAfter,
    signingAlgorithm: EC_P256,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { cert, keys };
}

/** An intermediate (pathLen 0) signed by the root; it never outlives the root. */
async function makeIntermediate(
  rootPem: string,
  rootKey: KeyObject,
  start: Date,
): Promise<{ pem: string; key: KeyObject }> {
  const root = new x509.X509Certificate(derOf(rootPem, "root certificate"));
  const keys = (await subtle.generateKey(EC_P256, true, ["sign", "verify"])) as CryptoKeyPair;
  const notAfter = new Date(start.getTime());
  notAfter.setUTCFullYear(notAfter.getUTCFullYear() + INTERMEDIATE_YEARS);
  const rootSki = root.getExtension(x509.SubjectKeyIdentifierExtension);
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerialHex(),
    subject: INTERMEDIATE_NAME,
    issuer: root.subjectName,
    notBefore: new Date(start.getTime() - CLOCK_SKEW_SECONDS * 1000),
    notAfter: new Date(Math.min(notAfter.getTime(), root.notAfter.getTime())),
    publicKey: keys.publicKey,
    signingKey: await subtle.importKey(
      "pkcs8",
      rootKey.export({ type: "pkcs8", format: "der" }),
      EC_P256,
      false,
      ["sign"],
    ),
    signingAlgorithm: EC_P256,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      ...(rootSki ? [new x509.AuthorityKeyIdentifierExtension(rootSki.keyId, false)] : []),
    ],
  });
  return { pem: pemOf(cert), key: KeyObject.from(keys.privateKey) };
}

function generation(
  rootPem: string,
  rootKey: KeyObject | undefined,
  intermediatePem: string,
  intermediateKey: KeyObject,
): Generation {
  const der = derOf(intermediatePem, "intermediate certificate");
  const node = new NodeX509(Buffer.from(der));
  if (!node.ca)
    throw new ZmeshError(
      "ZMESH_CA_STORE",
      "the intermediate certificate is not a CA (basicConstraints cA=false)",
    );
  if (!node.checkPrivateKey(intermediateKey)) {
    throw new ZmeshError("ZMESH_CA_STORE", "the intermediate's private key does not match its certificate");
  }
  const root = new NodeX509(Buffer.from(derOf(rootPem, "root certificate")));
  if (!node.checkIssued(root) || !node.verify(root.publicKey)) {
    throw new ZmeshError(
      "ZMESH_CA_STORE",
      "the intermediate certificate is not signed by the root certificate given",
    );
  }
  if (rootKey && !root.checkPrivateKey(rootKey)) {
    throw new ZmeshError("ZMESH_CA_STORE", "the root's private key does not match the root certificate");
  }
  return {
    rootPem,
    ...(rootKey ? { rootKey } : {}),
    intermediatePem,
    intermediateKey,
    intermediateNotAfter: new Date(node.validTo).getTime(),
    signer: new LeafSigner(der, intermediateKey),
    id: issuerIdOf(intermediatePem),
  };
}

/** Identifies an issuing certificate: the first 16 hex digits of the SHA-256 of its DER. */
export function issuerIdOf(issuerPem: string): string {
  return createHash("sha256").update(derOf(issuerPem, "issuer certificate")).digest("hex").slice(0, 16);
}

async function newGeneration(start: Date): Promise<Generation> {
  const root = await makeRoot(start);
  const rootPem = pemOf(root.cert);
  const rootKey = KeyObject.from(root.keys.privateKey);
  const inter = await makeIntermediate(rootPem, rootKey, start);
  return generation(rootPem, rootKey, inter.pem, inter.key);
}

function keyFromPem(pem: string, what: string): KeyObject {
  try {
    return createPrivateKey(pem);
  } catch (e) {
    throw new ZmeshError("ZMESH_CA_STORE", `the ${what} is not a PEM private key (${(e as Error).message})`, {
      cause: e,
    });
  }
}

export class CertificateAuthority {
  readonly trustDomain: string;
  #active: Generation;
  #pending: Generation | undefined;
  /** Roots in the trust bundle, in order (the active one first once activated). */
  #trusted: string[];
  /** Roots that stay trusted until retireOldRoots() (after activation). */
  #retiring: string[] = [];
  readonly #defaultTtl: number;
  readonly #maxTtl: number;
  readonly #now: () => Date;

  private constructor(
    trustDomain: string,
    active: Generation,
    trusted: string[],
    opts: CertificateAuthorityOptions,
  ) {
    this.trustDomain = trustDomain;
    this.#active = active;
    this.#trusted = trusted;
    this.#maxTtl = checkTtlOption("maxTtlSeconds", opts.maxTtlSeconds ?? MAX_TTL_SECONDS);
    this.#defaultTtl = checkTtlOption(
      "defaultTtlSeconds",
      opts.defaultTtlSeconds ?? Math.min(DEFAULT_TTL_SECONDS, this.#maxTtl),
    );
    if (this.#defaultTtl > this.#maxTtl) {
      throw new RangeError(
        `CertificateAuthority option defaultTtlSeconds (${this.#defaultTtl}) must not exceed maxTtlSeconds (${this.#maxTtl}).`,
      );
    }
    this.#now = opts.now ?? (() => new Date());
  }

  private static checkTrustDomain(opts: CertificateAuthorityOptions): string {
    const trustDomain = opts.trustDomain ?? DEFAULT_TRUST_DOMAIN;
    const tdRule = trustDomainRule(trustDomain);
    if (tdRule !== undefined) {
      throw new ZmeshError(
        "ZMESH_SPIFFE_ID",
        `The CA trust domain ${JSON.stringify(trustDomain)} is not valid: ${tdRule}.`,
      );
    }
    return trustDomain;
  }

  /** A new CA: a self-signed ECDSA P-256 root valid for 10 years and an intermediate under it. */
  static async create(opts: CertificateAuthorityOptions = {}): Promise<CertificateAuthority> {
    const td = CertificateAuthority.checkTrustDomain(opts);
    const g = await newGeneration((opts.now ?? (() => new Date()))());
    return new CertificateAuthority(td, g, [g.rootPem], opts);
  }

  /**
   * A CA from material the user brings: a root certificate and either the root's key (zmesh makes
   * the intermediate) or an intermediate certificate and its key (the root key stays with the user).
   */
  static async import(
    material: { rootPem: string; rootKeyPem?: string; intermediatePem?: string; intermediateKeyPem?: string },
    opts: CertificateAuthorityOptions = {},
  ): Promise<CertificateAuthority> {
    const td = CertificateAuthority.checkTrustDomain(opts);
    const root = new NodeX509(Buffer.from(derOf(material.rootPem, "root certificate")));
    if (!root.ca)
      throw new ZmeshError("ZMESH_CA_STORE", "the root certificate is not a CA (basicConstraints cA=false)");
    const rootKey = material.rootKeyPem ? keyFromPem(material.rootKeyPem, "root key") : undefined;
    let g: Generation;
    if (material.intermediatePem && material.intermediateKeyPem) {
      g = generation(
        material.rootPem,
        rootKey,
        material.intermediatePem,
        keyFromPem(material.intermediateKeyPem, "intermediate key"),
      );
    } else if (rootKey) {
      const inter = await makeIntermediate(material.rootPem, rootKey, (opts.now ?? (() => new Date()))());
      g = generation(material.rootPem, rootKey, inter.pem, inter.key);
    } else {
      throw new ZmeshError(
        "ZMESH_CA_STORE",
        "importing a CA needs the root's key, or an intermediate certificate and its key; pass --root-key, or --cert and --key",
      );
    }
    return new CertificateAuthority(td, g, [material.rootPem], opts);
  }

  /** Every root this CA's SVIDs may chain to, as concatenated PEM. */
  trustBundlePem(): string {
    return this.#trusted.join("");
  }

  /** Identifies the intermediate that signs now; it changes when a rotation activates a new root. */
  issuerId(): string {
    return this.#active.id;
  }

  rotationPhase(): RotationPhase {
    if (this.#pending) return "overlap";
    return this.#retiring.length > 0 ? "activated" : "steady";
  }

  /** Rotation step 1: a new root and intermediate; both roots are trusted, the old one still issues. */
  async beginRootRotation(): Promise<void> {
    if (this.rotationPhase() !== "steady")
      throw new ZmeshError(
        "ZMESH_CA_STORE",
        `a root rotation is already under way (${this.rotationPhase()})`,
      );
    this.#pending = await newGeneration(this.#now());
    this.#trusted = [...this.#trusted, this.#pending.rootPem];
  }

  /** Rotation step 2: issuance moves to the new root; the old root stays trusted. */
  activatePendingRoot(): void {
    const next = this.#pending;
    if (!next) throw new ZmeshError("ZMESH_CA_STORE", "no root rotation is under way; begin one first");
    this.#retiring = this.#trusted.filter((r) => r !== next.rootPem);
    this.#trusted = [next.rootPem, ...this.#retiring];
    this.#active = next;
    this.#pending = undefined;
  }

  /** Rotation step 3: only the active root stays in the trust bundle. */
  retireOldRoots(): void {
    if (this.rotationPhase() !== "activated")
      throw new ZmeshError("ZMESH_CA_STORE", "nothing to retire: activate the new root first");
    this.#trusted = [this.#active.rootPem];
    this.#retiring = [];
  }

  /** Signs a CSR into an X509-SVID only for the identity the caller proved (ZMESH_CSR_IDENTITY otherwise). */
  async signCsr(csrPem: string, expectedSpiffeUri: string, ttlSeconds?: number): Promise<IssuedSvid> {
    const expected = this.#checkIdentity(expectedSpiffeUri);
    const ttl = this.#checkTtl(ttlSeconds);
    const { spki, uris, others } = readCsr(csrPem);
    const uri = uris[0];
    if (uris.length !== 1 || uri === undefined) {
      throw new ZmeshError(
        "ZMESH_CSR_IDENTITY",
        `The CSR has ${uris.length} URI SANs; it must carry exactly one, ${expected}.`,
      );
    }
    if (uri !== expected) {
      throw new ZmeshError(
        "ZMESH_CSR_IDENTITY",
        `The CSR asks for ${JSON.stringify(uri.length > 200 ? `${uri.slice(0, 197)}...` : uri)} but the caller proved ${expected}; request a certificate only for your own identity.`,
      );
    }
    if (others > 0) {
      throw new ZmeshError(
        "ZMESH_CSR_IDENTITY",
        `The CSR asks for ${others} names besides ${expected}; an SVID carries only the SPIFFE ID, so leave them out.`,
      );
    }
    return this.#signLeaf(spki, expected, ttl);
  }

  /** Convenience for the control plane's own serving cert: key + SVID for a URI, generated in process. */
  async issue(spiffeUri: string, ttlSeconds?: number): Promise<{ keyPem: string; svid: IssuedSvid }> {
    const uri = this.#checkIdentity(spiffeUri);
    const ttl = this.#checkTtl(ttlSeconds);
    const keys = await generateP256KeyPair();
    const spki = Buffer.from(await subtle.exportKey("spki", keys.publicKey));
    return { keyPem: privateKeyPem(keys.privateKey), svid: this.#signLeaf(spki, uri, ttl) };
  }

  /** The store to write to disk; every private key is sealed under `kek`. */
  toStore(kek: Buffer): CaStore {
    const stored = (g: Generation): StoredGeneration => ({
      rootPem: g.rootPem,
      ...(g.rootKey
        ? { rootKey: seal(g.rootKey.export({ type: "pkcs8", format: "der" }), kek, "root key") }
        : {}),
      intermediatePem: g.intermediatePem,
      intermediateKey: seal(
        g.intermediateKey.export({ type: "pkcs8", format: "der" }),
        kek,
        "intermediate key",
      ),
    });
    return {
      version: 1,
      trustDomain: this.trustDomain,
      trusted: [...this.#trusted],
      active: stored(this.#active),
      ...(this.#pending ? { pending: stored(this.#pending) } : {}),
      ...(this.#retiring.length > 0 ? { retiring: [...this.#retiring] } : {}),
    };
  }

  /** A CA from its store; throws ZMESH_CA_STORE if the KEK is wrong or the store is damaged. */
  static fromStore(
    store: CaStore,
    kek: Buffer,
    opts: Omit<CertificateAuthorityOptions, "trustDomain"> = {},
  ): CertificateAuthority {
    if (store?.version !== 1 || !store.active || !Array.isArray(store.trusted)) {
      throw new ZmeshError(
        "ZMESH_CA_STORE",
        "the CA store is not a zmesh CA store (version 1); restore it from a backup or run zmesh ca init",
      );
    }
    const key = (s: Sealed, purpose: string) =>
      createPrivateKey({ key: unseal(s, kek, purpose), format: "der", type: "pkcs8" });
    const load = (g: StoredGeneration) =>
      generation(
        g.rootPem,
        g.rootKey ? key(g.rootKey, "root key") : undefined,
        g.intermediatePem,
        key(g.intermediateKey, "intermediate key"),
      );
    const ca = new CertificateAuthority(store.trustDomain, load(store.active), store.trusted, {
      ...opts,
      trustDomain: store.trustDomain,
    });
    if (store.pending) ca.#pending = load(store.pending);
    ca.#retiring = store.retiring ?? [];
    return ca;
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

  #signLeaf(spki: Buffer, uri: string, ttl: number): IssuedSvid {
    const now = this.#now().getTime();
    const g = this.#active;
    // Whole seconds, as encoded; a leaf never outlives the intermediate that signs it.
    const notBefore = new Date(Math.floor(now / 1000) * 1000 - CLOCK_SKEW_SECONDS * 1000);
    const notAfter = new Date(Math.floor(Math.min(now + ttl * 1000, g.intermediateNotAfter) / 1000) * 1000);
    const serial = randomSerial();
    const der = g.signer.sign({ spki, uri, serial, notBefore, notAfter });
    return {
      chainPem: [encodePem("CERTIFICATE", der), g.intermediatePem],
      notBefore,
      notAfter,
      serial: serial.toString("hex").replace(/^(00)+(?=.)/, ""),
      spiffeId: uri,
    };
  }
}

export { CsrError };
