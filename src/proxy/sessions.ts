// TLS client sessions between sidecars, kept so that a new connection to the same destination
// resumes instead of doing a full handshake (about half the CPU). A resumed session skips the
// certificate checks, so the key holds everything the original full handshake proved against:
// the destination, the identities it was expected to hold, the trust bundle that verified its
// chain and our own certificate (a renewed SVID starts afresh). On a resumed TLS 1.3 connection
// Node's client has no peer certificate (measured on Node 20: getPeerX509Certificate() is
// undefined), so each entry keeps the SPIFFE ID its full handshake verified: resuming proves the
// server holds that session's secret, and secure naming checks that ID against the service as it
// is now. OpenSSL does not check the certificate's dates again on resumption either, so an entry
// also keeps when that certificate expires and is not offered after it. Bounded LRU; the newest
// ticket of a key replaces the older.

import { createHash } from "node:crypto";

const MAX_ENTRIES = 1_000;

export interface CachedSession {
  /** The TLS session (a TLS 1.3 ticket) as Node gives it in the "session" event. */
  ticket: Buffer;
  /** The SPIFFE ID the server proved by certificate in the full handshake that began the session. */
  peer: string;
  /** When that certificate expires (ms since the epoch): the session is not offered after it. */
  notAfter: number;
}

export class SessionCache {
  private readonly map = new Map<string, CachedSession>();
  private readonly digests = new WeakMap<object, string>();
  private bundleText: string | undefined;
  private bundleDigest = "";

  /** Handshakes so far, resumed and full (admin, tests, bench). */
  resumed = 0;
  full = 0;

  constructor(private readonly max = MAX_ENTRIES) {}

  /** The cache key of one dial; `allowed` is the sorted-or-not set of SPIFFE IDs the service may run as. */
  key(
    destination: string,
    allowed: ReadonlySet<string>,
    bundlePem: string,
    cert: { chainPem: string[] },
  ): string {
    if (bundlePem !== this.bundleText) {
      this.bundleText = bundlePem;
      this.bundleDigest = digest(bundlePem);
    }
    let ids = this.digests.get(allowed);
    if (ids === undefined) {
      ids = digest([...allowed].sort().join("\n"));
      this.digests.set(allowed, ids);
    }
    let mine = this.digests.get(cert);
    if (mine === undefined) {
      mine = digest(cert.chainPem[0] ?? "");
      this.digests.set(cert, mine);
    }
    return `${destination}|${ids}|${this.bundleDigest}|${mine}`;
  }

  /** The session of `key` to offer now; one whose server certificate has expired is dropped. */
  get(key: string, now = Date.now()): CachedSession | undefined {
    const s = this.map.get(key);
    if (s === undefined) return undefined;
    if (!(now < s.notAfter)) {
      // Expired, or no date known (NaN): not offered.
      this.map.delete(key);
      return undefined;
    }
    this.map.delete(key); // refresh its place in the LRU order
    this.map.set(key, s);
    return s;
  }

  set(key: string, session: CachedSession): void {
    this.map.delete(key);
    this.map.set(key, session);
    if (this.map.size > this.max) this.map.delete(this.map.keys().next().value!);
  }

  /** Drops a session that failed (a refused identity, a failed handshake): it must not be tried again. */
  delete(key: string): void {
    this.map.delete(key);
  }

  get size(): number {
    return this.map.size;
  }
}

function digest(text: string): string {
  return createHash("sha256").update(text).digest("base64url").slice(0, 22);
}
