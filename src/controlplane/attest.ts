// Attestation: maps the credential a caller presents to the workload instance it proves.
// Locally it is a bootstrap token the runtime minted for one instance (stored only as a
// SHA-256 digest); a Kubernetes TokenReview attestor can implement the same interface later.

import { createHash, timingSafeEqual } from "node:crypto";
import { readFile } from "node:fs/promises";

export interface Attested {
  /** The WorkloadEntry (namespace/name) the credential is bound to. */
  namespace: string;
  entry: string;
}

export interface Attestor {
  attest(credential: string): Promise<Attested | undefined>;
}

/** Token file format: {"<sha256 hex of token>": {"namespace": "...", "entry": "..."}}. */
export class TokenFileAttestor implements Attestor {
  constructor(private readonly file: string) {}

  async attest(credential: string): Promise<Attested | undefined> {
    const token = credential.replace(/^Bearer\s+/i, "");
    if (token.length < 16) return undefined;
    const digest = createHash("sha256").update(token).digest();
    let table: Record<string, Attested>;
    try {
      table = JSON.parse(await readFile(this.file, "utf8")) as Record<string, Attested>;
    } catch {
      return undefined;
    }
    for (const [hex, who] of Object.entries(table)) {
      const known = Buffer.from(hex, "hex");
      if (known.length === digest.length && timingSafeEqual(known, digest)) return who;
    }
    return undefined;
  }
}

export function tokenDigest(token: string): string {
  return createHash("sha256").update(token).digest("hex");
}
