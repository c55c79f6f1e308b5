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

const uris = new Map<string, string>();

/**
 * The SPIFFE ID of a principal (`spiffe://` + principal), remembered: the access line and the
 * metric labels name it on every request, and a string built per request is a new string to
 * flatten, scan and hash each time.
 */
export function spiffeUriOf(principal: string): string {
  let u = uris.get(principal);
  if (u === undefined) {
    u = `spiffe://${principal}`;
    if (uris.size >= 10_000) uris.clear();
    uris.set(principal, u);
  }
  return u;
}

/** A workload's side of a record (principal, name, namespace). */
export interface WorkloadPeer {
  principal: string;
  workload: string;
  namespace: string;
}

const workloadPeers = new WeakMap<object, WorkloadPeer>();

/**
 * The record side of a workload as the config names it (our own, or an endpoint), made once per
 * config object rather than per request: a new config brings new objects, so none goes stale.
 */
export function workloadPeer(w: { spiffeId: string; name: string; namespace: string }): WorkloadPeer {
  let p = workloadPeers.get(w);
  if (p === undefined) {
    p = { principal: principalOf(w.spiffeId), workload: w.name, namespace: w.namespace };
    workloadPeers.set(w, p);
  }
  return p;
}
