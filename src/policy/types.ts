// The data model of the policy engine: Istio's security.istio.io AuthorizationPolicy as zmesh
// reads it, the request attributes it is judged on, and the decision it returns. Types only.

export type Action = "ALLOW" | "DENY" | "AUDIT";

/** A problem found in a resource. `path` is relative to the resource, e.g. "spec.rules[0].to[0]". */
export interface Issue {
  path: string;
  message: string;
  code: "ZMESH_CONFIG_INVALID" | "ZMESH_CONFIG_UNSUPPORTED";
}

export interface WorkloadSelector {
  matchLabels?: Record<string, string>;
}

/** Istio `Source`: who sends the request. Fields AND; the values of one field OR. */
export interface Source {
  principals?: string[];
  notPrincipals?: string[];
  namespaces?: string[];
  notNamespaces?: string[];
  ipBlocks?: string[];
  notIpBlocks?: string[];
}

/** Istio `Operation`: what the request does. Fields AND; the values of one field OR. */
export interface Operation {
  hosts?: string[];
  notHosts?: string[];
  ports?: string[];
  notPorts?: string[];
  methods?: string[];
  notMethods?: string[];
  paths?: string[];
  notPaths?: string[];
}

/** Istio `Condition`: one `when` entry. */
export interface Condition {
  key: string;
  values?: string[];
  notValues?: string[];
}

/** Istio `Rule.From`. */
export interface RuleFrom {
  source: Source;
}

/** Istio `Rule.To`. */
export interface RuleTo {
  operation: Operation;
}

/** Istio `Rule`: from-part AND to-part AND every condition. */
export interface Rule {
  from?: RuleFrom[];
  to?: RuleTo[];
  when?: Condition[];
}

export interface AuthorizationPolicySpec {
  selector?: WorkloadSelector;
  /** Absent means ALLOW. */
  action?: Action;
  rules?: Rule[];
}

/** A validated policy with its identity; `dryRun` comes from the `istio.io/dry-run` annotation. */
export interface PolicyRef {
  namespace: string;
  name: string;
  spec: AuthorizationPolicySpec;
  dryRun?: boolean;
}

export interface RequestAttributes {
  /** Peer identity without scheme, e.g. "cluster.local/ns/shop/sa/frontend"; undefined if plaintext. */
  principal?: string;
  /** Source namespace (derived from the principal by the caller). */
  namespace?: string;
  sourceIp?: string;
  destinationPort: number;
  /** Absent for a plain TCP connection. */
  http?: {
    method: string;
    /** Already normalized (see normalizePath), without the query. */
    path: string;
    host: string;
    /** Lower-case names. */
    headers: Record<string, string | undefined>;
  };
}

export interface Decision {
  allowed: boolean;
  /** "namespace/name" of the deciding policy, when one decided. */
  policy?: string;
  /** Action of that policy. */
  action?: Action;
  /** Index of the matching rule. */
  rule?: number;
  /** One plain sentence for people. */
  reason: string;
  /** AUDIT policies that matched. */
  audits?: string[];
  /** Dry-run policies' verdicts (not enforced). */
  dryRun?: { policy: string; wouldAllow: boolean }[];
}
