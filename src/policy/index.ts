// Public face of the policy engine: Istio AuthorizationPolicy validation, selection, compilation
// and evaluation; PeerAuthentication (mTLS mode per workload port); RequestAuthentication (JWT);
// request-path normalization. Pure: no I/O, no clock (callers pass `now`), no sockets.

export {
  type CompiledPolicies,
  compilePolicies,
  evaluate,
  tcpWarnings,
} from "./compile.js";
export { authenticateJwt, JWT_ALGORITHMS, preloadJwt, validateRequestAuthenticationSpec } from "./jwt.js";
export { type NormalizeOptions, type NormalizeResult, normalizePath } from "./path.js";
export { DEFAULT_MTLS_MODE, resolveMtlsMode, validatePeerAuthenticationSpec } from "./peerauth.js";
export { selectorMatches, selectPolicies } from "./select.js";
export type {
  Action,
  AuthorizationPolicySpec,
  ClaimToHeader,
  Condition,
  Decision,
  Issue,
  JwtAuthResult,
  JwtHeaderLocation,
  JwtRule,
  MtlsMode,
  MtlsResolution,
  Operation,
  PeerAuthenticationSpec,
  PeerAuthRef,
  PolicyRef,
  RequestAttributes,
  RequestAuth,
  RequestAuthenticationSpec,
  RequestAuthRef,
  Rule,
  RuleFrom,
  RuleTo,
  Source,
  WorkloadSelector,
} from "./types.js";
export { formatIssue, validateAuthorizationPolicySpec } from "./validate.js";
