// The data model of the policy engine: Istio's security.istio.io AuthorizationPolicy,
// PeerAuthentication and RequestAuthentication as zmesh reads them, the request attributes they
// are judged on, and the decisions they return. Types only.

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
  /** "<iss>/<sub>" of a JWT verified by RequestAuthentication (HTTP only). */
  requestPrincipals?: string[];
  notRequestPrincipals?: string[];
  /** The original client address (`RequestAttributes.remoteIp`). */
  remoteIpBlocks?: string[];
  notRemoteIpBlocks?: string[];
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

/** What a verified JWT says about the request (see authenticateJwt); absent without a valid token. */
export interface RequestAuth {
  /** "<iss>/<sub>". */
  principal?: string;
  /** The `aud` claim as a list. */
  audiences?: string[];
  /** The `azp` claim. */
  presenter?: string;
  /** The whole payload. */
  claims?: Record<string, unknown>;
}

export interface RequestAttributes {
  /** Peer identity without scheme, e.g. "cluster.local/ns/shop/sa/frontend"; undefined if plaintext. */
  principal?: string;
  /** Source namespace (derived from the principal by the caller). */
  namespace?: string;
  /** Address of the peer of the connection. */
  sourceIp?: string;
  /** Original client address (remoteIpBlocks, remote.ip); the proxy sets it equal to sourceIp for now. */
  remoteIp?: string;
  /** Address the connection was sent to (destination.ip). */
  destinationIp?: string;
  /** TLS server name the client asked for (connection.sni). */
  sni?: string;
  destinationPort: number;
  /** Set from a JWT verified by RequestAuthentication (HTTP only). */
  auth?: RequestAuth;
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

/** Istio PeerAuthentication `mtls.mode`; UNSET inherits from the parent scope. */
export type MtlsMode = "STRICT" | "PERMISSIVE" | "DISABLE" | "UNSET";

export interface PeerAuthenticationSpec {
  selector?: WorkloadSelector;
  /** Absent means UNSET. */
  mtls?: { mode?: MtlsMode };
  /** Keyed by the workload's port number ("8080"), not the Service port; only with a selector. */
  portLevelMtls?: Record<string, { mode?: MtlsMode }>;
}

export interface PeerAuthRef {
  namespace: string;
  name: string;
  spec: PeerAuthenticationSpec;
}

/** The mode that applies to one workload port, and the PeerAuthentication ("ns/name") that decided it. */
export interface MtlsResolution {
  mode: "STRICT" | "PERMISSIVE" | "DISABLE";
  /** Absent when no PeerAuthentication decided (zmesh's default, STRICT). */
  source?: string;
}

/** Istio `JWTHeader`: a header that carries the token, and the prefix before it (e.g. "Bearer "). */
export interface JwtHeaderLocation {
  name: string;
  prefix?: string;
}

/** Istio `ClaimToHeader`. */
export interface ClaimToHeader {
  header: string;
  claim: string;
}

/** Istio `JWTRule`, as far as zmesh implements it (keys inline in `jwks`; no jwksUri). */
export interface JwtRule {
  issuer: string;
  audiences?: string[];
  /** A JSON Web Key Set, as a JSON string, of public keys. */
  jwks?: string;
  fromHeaders?: JwtHeaderLocation[];
  fromParams?: string[];
  forwardOriginalToken?: boolean;
  outputClaimToHeaders?: ClaimToHeader[];
}

export interface RequestAuthenticationSpec {
  selector?: WorkloadSelector;
  jwtRules?: JwtRule[];
}

export interface RequestAuthRef {
  namespace: string;
  name: string;
  spec: RequestAuthenticationSpec;
}

/** The outcome of authenticateJwt. A missing token is ok without principal; an invalid one is not ok. */
export type JwtAuthResult =
  | {
      ok: true;
      /** "<iss>/<sub>" when a token was verified and has both claims. */
      principal?: string;
      claims?: Record<string, unknown>;
      audiences?: string[];
      presenter?: string;
      /** "ns/name" of the RequestAuthentication whose rule verified the token. */
      policy?: string;
      /** Headers to set on the request before authorization and forwarding (outputClaimToHeaders). */
      headersToSet: Record<string, string>;
      /** Lower-case header names to remove (the token unless forwardOriginalToken, spoofed claim headers). */
      headersToRemove: string[];
    }
  | {
      ok: false;
      /** One sentence for logs; never shown to the caller (the proxy answers 401). */
      reason: string;
      /** "ns/name" of the RequestAuthentication that rejected the token, when one did. */
      policy?: string;
    };
