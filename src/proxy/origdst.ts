// Reads a captured connection's original destination through the native addon
// (native/original_dst.c): Node has no getsockopt(SO_ORIGINAL_DST).

import { createRequire } from "node:module";
import type { Socket } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export interface Destination {
  address: string;
  port: number;
}

export type OriginalDst = (socket: Socket) => Destination;

interface Addon {
  originalDst(fd: number): { address: string; port: number; family: number };
}

let addon: Addon | undefined;

/** Loads the addon now (before the proxy drops root, and so a missing build fails at start). */
export function loadAddon(): void {
  if (addon) return;
  const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
  const require = createRequire(import.meta.url);
  try {
    addon = require(join(root, "native", "build", "Release", "original_dst.node")) as Addon;
  } catch (e) {
    throw new Error(
      `the native addon native/build/Release/original_dst.node is missing or broken (${(e as Error).message}); run ./scripts/setup.sh`,
    );
  }
}

/** SO_ORIGINAL_DST of a socket captured by iptables REDIRECT. */
export const originalDst: OriginalDst = (socket) => {
  loadAddon();
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== "number" || fd < 0) throw new Error("socket has no file descriptor");
  const d = addon!.originalDst(fd);
  return { address: d.address, port: d.port };
};
