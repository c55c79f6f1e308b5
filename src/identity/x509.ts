// The one place that loads @peculiar/x509, and only when first used: the CA and the SVID checks
// need it, the proxy does not (its CSR is written in ./csr.ts with the DER writer), and loading it
// with reflect-metadata and tsyringe costs a process ~19 MB. Its DI container needs the Reflect
// metadata API loaded first, and the library must use Node's WebCrypto. Other identity files
// import the library from here, never directly.

import { webcrypto } from "node:crypto";
import { createRequire } from "node:module";
import type * as X509Lib from "@peculiar/x509";

export type { Extension as X509Extension, X509Certificate as X509Cert } from "@peculiar/x509";

type Lib = typeof X509Lib;
let lib: Lib | undefined;

function load(): Lib {
  if (!lib) {
    const require = createRequire(import.meta.url);
    require("reflect-metadata");
    const loaded = require("@peculiar/x509") as Lib;
    loaded.cryptoProvider.set(webcrypto as Crypto);
    lib = loaded;
  }
  return lib;
}

/** The library's namespace; the first property read loads it. */
export const x509: Lib = new Proxy({} as Lib, {
  get: (_t, key) => load()[key as keyof Lib],
});

export const subtle: SubtleCrypto = (webcrypto as Crypto).subtle;
