// Attestation: maps the credential a caller presents to the workload instance it proves.
// Locally it is a bootstrap token the runtime minted for one instance (stored only as a
// SHA-256 digest); a Kubernetes TokenReview attestor can implement the same interface later.
// The token file is read once into a digest -> instance map and read again only when its
// inode, size or mtime changes: a reconnect storm of thousands of proxies costs one stat each,
// not one file read and a scan of the table each. The lookup key is the SHA-256 of the token,
// so the timing of the map lookup says nothing usable about a token; the matched digest is then
// compared in constant time.

import { createHash, timingSafeEqual } from "node:crypto";
import { readFile, stat } from "node:fs/promises";

export interface Attested {
  /** The WorkloadEntry (namespace/name) the credential is bound to. */
  namespace: string;
  entry: string;
}

export interface Attestor {
  attest(credential: string): Promise<Attested | undefined>;
}

interface Table {
  /** inode, size and mtime of the file this table was read from. */
  key: string;
  byDigest: Map<string, { digest: Buffer; who: Attested }>;
}

/** Token file format: {"<sha256 hex of token>": {"namespace": "...", "entry": "..."}}. */
export class TokenFileAttestor implements Attestor {
  private table: Table | undefined;
  /** The read in progress, shared by every caller that finds the file changed meanwhile. */
  private loading: { key: string; table: Promise<Table | undefined> } | undefined;

  constructor(private readonly file: string) {}

  async attest(credential: string): Promise<Attested | undefined> {
    const token = credential.replace(/^Bearer\s+/i, "");
    if (token.length < 16) return undefined;
    const digest = createHash("sha256").update(token).digest();
    const table = await this.current();
    const found = table?.byDigest.get(digest.toString("hex"));
    if (!found || !timingSafeEqual(found.digest, digest)) return undefined;
    return found.who;
  }

  /** The table for the file as it is now; undefined when it cannot be read or parsed. */
  private async current(): Promise<Table | undefined> {
    let key: string;
    try {
      const s = await stat(this.file, { bigint: true });
      key = `${s.ino}:${s.size}:${s.mtimeNs}:${s.ctimeNs}`;
    } catch {
      return undefined;
    }
    if (this.table?.key === key) return this.table;
    if (this.loading?.key !== key) {
      const loading = {
        key,
        table: this.load(key).finally(() => {
          if (this.loading === loading) this.loading = undefined;
        }),
      };
      this.loading = loading;
    }
    return this.loading.table;
  }

  private async load(key: string): Promise<Table | undefined> {
    let raw: Record<string, Attested>;
    try {
      raw = JSON.parse(await readFile(this.file, "utf8")) as Record<string, Attested>;
    } catch {
      return undefined;
    }
    const byDigest = new Map<string, { digest: Buffer; who: Attested }>();
    for (const [hex, who] of Object.entries(raw)) {
      const digest = Buffer.from(hex, "hex");
      if (digest.length !== 32 || typeof who?.namespace !== "string" || typeof who.entry !== "string")
        continue;
      byDigest.set(digest.toString("hex"), { digest, who: { namespace: who.namespace, entry: who.entry } });
    }
    this.table = { key, byDigest };
    return this.table;
  }
}

export function tokenDigest(token: string): string {
  return createHash("sha256").update(token).digest("hex");
}
