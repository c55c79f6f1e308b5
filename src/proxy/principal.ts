// Principals of SPIFFE IDs (cluster.local/ns/x/sa/y), remembered: the same few IDs come by on
// every request, and parsing one each time showed in the profile.

import { principalOf as parsePrincipal } from "../identity/index.js";

const principals = new Map<string, string>();

export function principalOf(spiffeId: string): string {
  let p = principals.get(spiffeId);
  if (p === undefined) {
    p = parsePrincipal(spiffeId);
    if (principals.size >= 10_000) principals.clear();
    principals.set(spiffeId, p);
  }
  return p;
}
