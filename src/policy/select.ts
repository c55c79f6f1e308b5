// Which policies apply to a workload: Istio's attachment rules (same namespace, or the root
// namespace for the whole mesh), decided by workload selector labels. Serves AuthorizationPolicy
// and RequestAuthentication alike; PeerAuthentication has its own precedence (resolveMtlsMode).

import type { PolicyRef, WorkloadSelector } from "./types.js";

/** Every selector label must be present with the same value; no selector (or no labels) selects all. */
export function selectorMatches(
  selector: WorkloadSelector | undefined,
  labels: Record<string, string>,
): boolean {
  const want = selector?.matchLabels;
  if (want === undefined) return true;
  for (const k of Object.keys(want)) {
    if (!Object.hasOwn(labels, k) || labels[k] !== want[k]) return false;
  }
  return true;
}

/**
 * Policies that apply to a workload: same namespace (selector matches labels, or no selector), plus
 * root-namespace policies (selector matched against labels in any namespace; no selector = whole mesh).
 * Keeps the input order. Works for any resource with a namespace and a spec.selector.
 */
export function selectPolicies<
  T extends { namespace: string; spec: { selector?: WorkloadSelector } } = PolicyRef,
>(
  all: readonly T[],
  workload: { namespace: string; labels: Record<string, string> },
  rootNamespace: string,
): T[] {
  const out: T[] = [];
  for (const p of all) {
    if (p.namespace !== workload.namespace && p.namespace !== rootNamespace) continue;
    if (selectorMatches(p.spec.selector, workload.labels)) out.push(p);
  }
  return out;
}
