// Keys at rest: CA private keys are only ever written sealed with AES-256-GCM under a key-encryption
// key (KEK) that comes from a file or an environment variable, the seam where a KMS plugs in.

import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { ZmeshError } from "../errors/index.js";

export interface Sealed {
  alg: "A256GCM";
  iv: string;
  tag: string;
  data: string;
}

export function seal(plaintext: Buffer, kek: Buffer, purpose: string): Sealed {
  const iv = randomBytes(12);
  const c = createCipheriv("aes-256-gcm", kek, iv);
  c.setAAD(Buffer.from(`zmesh:${purpose}`));
  const data = Buffer.concat([c.update(plaintext), c.final()]);
  return {
    alg: "A256GCM",
    iv: iv.toString("base64"),
    tag: c.getAuthTag().toString("base64"),
    data: data.toString("base64"),
  };
}

export function unseal(s: Sealed, kek: Buffer, purpose: string): Buffer {
  if (s?.alg !== "A256GCM")
    throw new ZmeshError("ZMESH_CA_STORE", `the sealed ${purpose} uses an unknown algorithm`);
  try {
    const d = createDecipheriv("aes-256-gcm", kek, Buffer.from(s.iv, "base64"));
    d.setAAD(Buffer.from(`zmesh:${purpose}`));
    d.setAuthTag(Buffer.from(s.tag, "base64"));
    return Buffer.concat([d.update(Buffer.from(s.data, "base64")), d.final()]);
  } catch (e) {
    throw new ZmeshError(
      "ZMESH_CA_STORE",
      `the ${purpose} cannot be decrypted with this key-encryption key; use the KEK the CA was saved with`,
      { cause: e },
    );
  }
}

/** A KEK is 32 bytes, given as 44 base64 characters (or 64 hex) in a file or in an env variable. */
export function parseKek(text: string, where: string): Buffer {
  const t = text.trim();
  const k = /^[0-9a-f]{64}$/i.test(t) ? Buffer.from(t, "hex") : Buffer.from(t, "base64");
  if (k.length !== 32) {
    throw new ZmeshError(
      "ZMESH_CA_STORE",
      `${where} does not hold a 256-bit key-encryption key; write 32 random bytes as base64 there, e.g. \`openssl rand -base64 32\``,
    );
  }
  return k;
}

export function readKekFile(file: string): Buffer {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch {
    throw new ZmeshError(
      "ZMESH_CA_STORE",
      `key-encryption key file ${file} cannot be read; create it with \`openssl rand -base64 32 > ${file}\``,
    );
  }
  return parseKek(text, file);
}

export function newKek(): string {
  return randomBytes(32).toString("base64");
}
