// config: loads and validates mesh resources (YAML files now, the Kubernetes API later) and
// holds the typed process settings. Errors name file, resource and field path.
export {
  assemble,
  ConfigError,
  type ConfigProblem,
  formatProblem,
  loadConfig,
  type MeshConfig,
  parseYaml,
  resourceFiles,
} from "./load.js";
export type {
  AuthorizationPolicy,
  Meta,
  PeerAuthentication,
  RequestAuthentication,
  Resource,
  Service,
  ServicePort,
  Sidecar,
  Source,
  Workload,
  WorkloadEntry,
  WorkloadPort,
} from "./resources.js";
export * from "./settings.js";
