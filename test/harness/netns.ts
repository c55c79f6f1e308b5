// The namespaced tier's shared setup (tests that run the real runtime as root: network namespaces,
// iptables capture, supervised processes): whether this process may run them, the skip reason
// shown when it may not, the example shop they bring up, and the one mesh-plus-intruder fixture
// the attack files share (the shop up under a mesh name of the file's own, an unmeshed namespace
// "intruder" beside it, everything purged after).

import { after, before } from "node:test";
import { addUnmeshed, down, type MeshState, up } from "../../src/runtime/index.js";

export const AS_ROOT = process.getuid?.() === 0;
/** The describe `skip` option of a namespaced suite: false as root, else the visible reason. */
export const NEEDS_ROOT: false | string = AS_ROOT
  ? false
  : "needs root (network namespaces, iptables): run as root, as CI does";
export const SHOP_EXAMPLE = new URL("../../../examples/shop", import.meta.url).pathname;

/**
 * Registers the enclosing suite's before/after hooks: `up` of the example shop as mesh `name`, an
 * unmeshed namespace "intruder", and `down --purge` after. `state` is set once before() has run.
 */
export function shopWithIntruder(name: string): { state: MeshState } {
  const shop = { state: undefined as unknown as MeshState };
  before(async () => {
    shop.state = await up(SHOP_EXAMPLE, { name });
    await addUnmeshed(shop.state, "intruder");
  });
  after(async () => {
    if (shop.state) await down(name, { quiet: true, purge: true });
  });
  return shop;
}
