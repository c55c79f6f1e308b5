// Where the mesh CA lives between control-plane runs: one JSON file (mode 0600, written
// atomically) whose private keys are sealed under the key-encryption key. Without a store the CA
// is made in memory and lost on restart (tests).

import { randomBytes } from "node:crypto";
import { chmod, mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { dirname } from "node:path";
import { ZmeshError } from "../errors/index.js";
import { type CaStore, CertificateAuthority, type CertificateAuthorityOptions } from "../identity/index.js";

export interface CaStoreOptions extends CertificateAuthorityOptions {
  file?: string;
  kek?: Buffer;
}

export async function readCaStore(file: string): Promise<CaStore | undefined> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new ZmeshError("ZMESH_CA_STORE", `the CA store ${file} cannot be read (${(e as Error).message})`);
  }
  try {
    return JSON.parse(text) as CaStore;
  } catch {
    throw new ZmeshError(
      "ZMESH_CA_STORE",
      `the CA store ${file} is not JSON; restore it from a backup or move it away and run zmesh ca init`,
    );
  }
}

export async function writeCaStore(file: string, ca: CertificateAuthority, kek: Buffer): Promise<void> {
  await mkdir(dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${randomBytes(4).toString("hex")}.tmp`;
  await writeFile(tmp, `${JSON.stringify(ca.toStore(kek), null, 2)}\n`, { mode: 0o600 });
  await chmod(tmp, 0o600);
  await rename(tmp, file);
}

/** Opens the CA from its store, or makes a new one (and stores it when a file is given). */
export async function openCa(opts: CaStoreOptions): Promise<CertificateAuthority> {
  const { file, kek, ...caOpts } = opts;
  if (file && !kek) {
    throw new ZmeshError(
      "ZMESH_CA_STORE",
      `the CA store ${file} needs a key-encryption key: pass --kek-file or set ZMESH_CA_KEK`,
    );
  }
  const stored = file ? await readCaStore(file) : undefined;
  if (stored) {
    const ca = CertificateAuthority.fromStore(stored, kek!, caOpts);
    if (opts.trustDomain && ca.trustDomain !== opts.trustDomain) {
      throw new ZmeshError(
        "ZMESH_CA_STORE",
        `the CA store ${file} is for trust domain ${ca.trustDomain}, not ${opts.trustDomain}; use a store of that domain`,
      );
    }
    return ca;
  }
  const ca = await CertificateAuthority.create(caOpts);
  if (file) await writeCaStore(file, ca, kek!);
  return ca;
}
