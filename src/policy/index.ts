// Public face of the policy engine: Istio AuthorizationPolicy validation, selection, compilation
// and evaluation, plus request-path normalization. Pure: no I/O, no clock, no sockets.

export {
  type CompiledPolicies,
  compilePolicies,
  evaluate,
  tcpWarnings,
} from "./compile.js";
export { type NormalizeOptions, type NormalizeResult, normalizePath } from "./path.js";
export { selectorMatches, selectPolicies } from "./select.js";
export type {
  Action,
  AuthorizationPolicySpec,
  Condition,
  Decision,
  Issue,
  Operation,
  PolicyRef,
  RequestAttributes,
  Rule,
  RuleFrom,
  RuleTo,
  Source,
  WorkloadSelector,
} from "./types.js";
export { formatIssue, validateAuthorizationPolicySpec } from "./validate.js";
