// The one place that loads @peculiar/x509: its DI container needs the Reflect metadata API loaded
// first, and the library must use Node's WebCrypto. Other identity files import the library from here, never directly.

import "reflect-metadata";
import { webcrypto } from "node:crypto";
import * as x509 from "@peculiar/x509";

x509.cryptoProvider.set(webcrypto as Crypto);

export { x509 };
export const subtle: SubtleCrypto = (webcrypto as Crypto).subtle;
