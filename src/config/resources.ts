// The resource kinds zmesh reads, in Kubernetes shape, and their validation into typed values.
// Field paths in issues are relative to the resource ("spec.ports[0].port") so messages can
// name file, resource and field together.

import {
  type AuthorizationPolicySpec,
  type Issue,
  type PeerAuthenticationSpec,
  type RequestAuthenticationSpec,
  validateAuthorizationPolicySpec,
  validatePeerAuthenticationSpec,
  validateRequestAuthenticationSpec,
} from "../policy/index.js";

export interface Meta {
  name: string;
  namespace: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
}

export interface Source {
  file: string;
  /** 0-based index of the YAML document in the file. */
  doc: number;
}

export interface WorkloadPort {
  name?: string;
  containerPort: number;
}

export interface Workload {
  kind: "Workload";
  meta: Meta;
  serviceAccount: string;
  command: string[];
  env: Record<string, string>;
  ports: WorkloadPort[];
  replicas: number;
  runAsUser?: number;
  /** When the app is restarted after it exits, as a Kubernetes pod's; absent means Always. */
  restartPolicy?: "Always" | "OnFailure" | "Never";
  source: Source;
}

export interface ServicePort {
  name?: string;
  port: number;
  targetPort: number;
  /**
   * "auto": nothing names it; the proxy tells HTTP/1.1, HTTP/2 (h2c) and TCP apart by the first bytes.
   * "http2": HTTP/2 with prior knowledge (h2c) from the app, which covers gRPC.
   */
  protocol: "http" | "http2" | "tcp" | "auto";
}

export interface Service {
  kind: "Service";
  meta: Meta;
  selector: Record<string, string>;
  ports: ServicePort[];
  clusterIP?: string;
  source: Source;
}

/** A running instance of a workload with its address (Istio's WorkloadEntry); the runtime writes these. */
export interface WorkloadEntry {
  kind: "WorkloadEntry";
  meta: Meta;
  address: string;
  serviceAccount: string;
  labels: Record<string, string>;
  source: Source;
}

export interface AuthorizationPolicy {
  kind: "AuthorizationPolicy";
  meta: Meta;
  spec: AuthorizationPolicySpec;
  dryRun: boolean;
  source: Source;
}

/** Istio PeerAuthentication: which mTLS mode a workload's ports accept. */
export interface PeerAuthentication {
  kind: "PeerAuthentication";
  meta: Meta;
  spec: PeerAuthenticationSpec;
  source: Source;
}

/** Istio RequestAuthentication: which JWTs a workload accepts. */
export interface RequestAuthentication {
  kind: "RequestAuthentication";
  meta: Meta;
  spec: RequestAuthenticationSpec;
  source: Source;
}

/**
 * Istio Sidecar, the one part zmesh implements: where a workload may connect outside the mesh
 * (`spec.outboundTrafficPolicy.mode`), for the workloads `spec.workloadSelector.labels` picks.
 */
export interface Sidecar {
  kind: "Sidecar";
  meta: Meta;
  /** Absent: every workload of the namespace (or of the mesh, in the root namespace). */
  selector?: Record<string, string>;
  /** Absent: the next Sidecar in precedence decides. */
  outboundMode?: "REGISTRY_ONLY" | "ALLOW_ANY";
  source: Source;
}

export type Resource =
  | Workload
  | Sidecar
  | Service
  | WorkloadEntry
  | AuthorizationPolicy
  | PeerAuthentication
  | RequestAuthentication;

const SECURITY = ["security.istio.io/v1", "security.istio.io/v1beta1"];
const KINDS: Record<string, string[]> = {
  Workload: ["zmesh.dev/v1"],
  Service: ["v1"],
  WorkloadEntry: ["networking.istio.io/v1", "networking.istio.io/v1beta1"],
  AuthorizationPolicy: SECURITY,
  PeerAuthentication: SECURITY,
  RequestAuthentication: SECURITY,
  Sidecar: ["networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"],
};
const UNSUPPORTED_KINDS = new Set(["Deployment", "Pod"]);

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const LABEL_KEY = /^([a-z0-9]([-a-z0-9.]*[a-z0-9])?\/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;
const LABEL_VALUE = /^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$/;
const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

type Issues = Issue[];

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function invalid(issues: Issues, path: string, message: string): void {
  issues.push({ path, message, code: "ZMESH_CONFIG_INVALID" });
}

function onlyFields(issues: Issues, obj: Record<string, unknown>, path: string, allowed: string[]): void {
  for (const k of Object.keys(obj)) {
    if (!allowed.includes(k)) {
      invalid(
        issues,
        `${path}.${k}`,
        `unknown field "${k}"; the fields allowed here are ${allowed.join(", ")}`,
      );
    }
  }
}

function stringMap(
  issues: Issues,
  v: unknown,
  path: string,
  keyRe: RegExp,
  valueRe: RegExp,
): Record<string, string> {
  if (v === undefined || v === null) return {};
  if (!isObject(v)) {
    invalid(issues, path, "must be a map of strings, e.g. {app: orders}");
    return {};
  }
  const out: Record<string, string> = {};
  for (const [k, val] of Object.entries(v)) {
    if (!keyRe.test(k)) invalid(issues, `${path}.${k}`, `"${k}" is not a valid key`);
    else if (typeof val !== "string" || !valueRe.test(val))
      invalid(issues, `${path}.${k}`, `must be a string of letters, digits, '-', '_' or '.' (quote numbers)`);
    else out[k] = val;
  }
  return out;
}

function port(issues: Issues, v: unknown, path: string): number {
  if (typeof v === "number" && Number.isInteger(v) && v >= 1 && v <= 65535) return v;
  invalid(issues, path, `must be a port number from 1 to 65535, not ${JSON.stringify(v)}`);
  return 0;
}

function readMeta(issues: Issues, raw: Record<string, unknown>, namespaced: boolean): Meta {
  const m = raw["metadata"];
  const meta: Meta = { name: "", namespace: "default", labels: {}, annotations: {} };
  if (!isObject(m)) {
    invalid(issues, "metadata", "is required, with at least metadata.name");
    return meta;
  }
  if (typeof m["name"] !== "string" || !DNS_LABEL.test(m["name"]) || m["name"].length > 63) {
    invalid(
      issues,
      "metadata.name",
      "must be a DNS label: lower-case letters, digits and '-', at most 63 chars",
    );
  } else meta.name = m["name"];
  if (namespaced && m["namespace"] !== undefined) {
    if (typeof m["namespace"] !== "string" || !DNS_LABEL.test(m["namespace"]))
      invalid(issues, "metadata.namespace", "must be a DNS label: lower-case letters, digits and '-'");
    else meta.namespace = m["namespace"];
  }
  meta.labels = stringMap(issues, m["labels"], "metadata.labels", LABEL_KEY, LABEL_VALUE);
  meta.annotations = stringMap(issues, m["annotations"], "metadata.annotations", LABEL_KEY, /^[\s\S]*$/);
  return meta;
}

function readWorkload(issues: Issues, raw: Record<string, unknown>, meta: Meta, source: Source): Workload {
  const spec = isObject(raw["spec"]) ? raw["spec"] : {};
  if (!isObject(raw["spec"])) invalid(issues, "spec", "is required and must hold at least spec.command");
  onlyFields(issues, spec, "spec", [
    "serviceAccount",
    "command",
    "env",
    "ports",
    "replicas",
    "runAsUser",
    "restartPolicy",
  ]);
  const w: Workload = {
    kind: "Workload",
    meta,
    serviceAccount: "default",
    command: [],
    env: {},
    ports: [],
    replicas: 1,
    source,
  };
  if (spec["serviceAccount"] !== undefined) {
    if (typeof spec["serviceAccount"] !== "string" || !DNS_LABEL.test(spec["serviceAccount"]))
      invalid(issues, "spec.serviceAccount", "must be a DNS label such as orders");
    else w.serviceAccount = spec["serviceAccount"];
  }
  const cmd = spec["command"];
  if (!Array.isArray(cmd) || cmd.length === 0 || !cmd.every((c) => typeof c === "string" && c !== "")) {
    invalid(issues, "spec.command", 'must be a non-empty list of strings, e.g. ["node", "app.js"]');
  } else w.command = cmd as string[];
  const env = spec["env"];
  if (Array.isArray(env)) {
    env.forEach((e, i) => {
      if (!isObject(e) || typeof e["name"] !== "string" || typeof (e["value"] ?? "") !== "string")
        invalid(issues, `spec.env[${i}]`, 'must be {name: NAME, value: "text"}');
      else w.env[e["name"]] = String(e["value"] ?? "");
    });
  } else if (env !== undefined) invalid(issues, "spec.env", "must be a list of {name, value}");
  const ports = spec["ports"];
  if (Array.isArray(ports)) {
    ports.forEach((p, i) => {
      if (!isObject(p)) return invalid(issues, `spec.ports[${i}]`, "must be {containerPort: N, name?: text}");
      onlyFields(issues, p, `spec.ports[${i}]`, ["containerPort", "name"]);
      const wp: WorkloadPort = {
        containerPort: port(issues, p["containerPort"], `spec.ports[${i}].containerPort`),
      };
      if (typeof p["name"] === "string") wp.name = p["name"];
      w.ports.push(wp);
    });
  } else if (ports !== undefined) invalid(issues, "spec.ports", "must be a list of {containerPort: N}");
  const replicas = spec["replicas"];
  if (replicas !== undefined) {
    if (typeof replicas !== "number" || !Number.isInteger(replicas) || replicas < 0 || replicas > 50)
      invalid(issues, "spec.replicas", "must be an integer from 0 to 50");
    else w.replicas = replicas;
  }
  const uid = spec["runAsUser"];
  if (uid !== undefined) {
    if (typeof uid !== "number" || !Number.isInteger(uid) || uid < 1 || uid === 1337 || uid > 65534)
      invalid(issues, "spec.runAsUser", "must be a uid from 1 to 65534 other than 0 and 1337 (the proxy's)");
    else w.runAsUser = uid;
  }
  const restart = spec["restartPolicy"];
  if (restart !== undefined) {
    if (restart !== "Always" && restart !== "OnFailure" && restart !== "Never")
      invalid(issues, "spec.restartPolicy", "must be Always (the default), OnFailure or Never");
    else w.restartPolicy = restart;
  }
  return w;
}

/**
 * The protocol of a Service port, as Kubernetes users write it: `appProtocol`, else the port name's
 * prefix before "-" (Istio's convention). Ports that name nothing are detected from the first bytes.
 * gRPC is HTTP/2 on the wire (the proxy tells it apart per request by its content-type); gRPC-Web
 * travels over HTTP/1.1 or HTTP/2 (the browser picks), so its ports are detected like unnamed ones.
 */
function protocolOf(name: string | undefined, appProtocol: unknown): ServicePort["protocol"] {
  const lower = (name ?? "").toLowerCase();
  // "grpc-web" is the one protocol name with a hyphen (as Istio reads port names too).
  const fromName = lower.startsWith("grpc-web") ? "grpc-web" : lower.split("-")[0]!;
  const p = typeof appProtocol === "string" ? appProtocol.toLowerCase() : fromName;
  if (p === "http") return "http";
  if (["tcp", "tls", "https", "mongo", "mysql", "redis"].includes(p)) return "tcp";
  if (["http2", "grpc", "h2c", "kubernetes.io/h2c"].includes(p)) return "http2";
  return "auto";
}

function readService(issues: Issues, raw: Record<string, unknown>, meta: Meta, source: Source): Service {
  const spec = isObject(raw["spec"]) ? raw["spec"] : {};
  if (!isObject(raw["spec"])) invalid(issues, "spec", "is required, with spec.selector and spec.ports");
  onlyFields(issues, spec, "spec", ["selector", "ports", "clusterIP", "type"]);
  const s: Service = {
    kind: "Service",
    meta,
    selector: stringMap(issues, spec["selector"], "spec.selector", LABEL_KEY, LABEL_VALUE),
    ports: [],
    source,
  };
  if (spec["type"] !== undefined && spec["type"] !== "ClusterIP")
    issues.push({
      path: "spec.type",
      message: "only ClusterIP services are supported",
      code: "ZMESH_CONFIG_UNSUPPORTED",
    });
  if (Object.keys(s.selector).length === 0)
    invalid(issues, "spec.selector", "is required: the labels of the workloads behind this service");
  const ports = spec["ports"];
  if (!Array.isArray(ports) || ports.length === 0)
    invalid(issues, "spec.ports", "must list at least one {port: N}");
  else
    ports.forEach((p, i) => {
      const path = `spec.ports[${i}]`;
      if (!isObject(p)) return invalid(issues, path, "must be {port: N, targetPort?: N, name?: text}");
      onlyFields(issues, p, path, ["name", "port", "targetPort", "protocol", "appProtocol"]);
      if (p["protocol"] !== undefined && p["protocol"] !== "TCP")
        issues.push({
          path: `${path}.protocol`,
          message: "only TCP is supported",
          code: "ZMESH_CONFIG_UNSUPPORTED",
        });
      const num = port(issues, p["port"], `${path}.port`);
      const target =
        p["targetPort"] === undefined ? num : port(issues, p["targetPort"], `${path}.targetPort`);
      const name = typeof p["name"] === "string" ? p["name"] : undefined;
      const protocol = protocolOf(name, p["appProtocol"]);
      const sp: ServicePort = { port: num, targetPort: target, protocol };
      if (name !== undefined) sp.name = name;
      s.ports.push(sp);
    });
  if (spec["clusterIP"] !== undefined) {
    if (typeof spec["clusterIP"] !== "string" || !IPV4.test(spec["clusterIP"]))
      invalid(issues, "spec.clusterIP", "must be an IPv4 address in 198.19.0.0/16");
    else s.clusterIP = spec["clusterIP"];
  }
  return s;
}

function readWorkloadEntry(
  issues: Issues,
  raw: Record<string, unknown>,
  meta: Meta,
  source: Source,
): WorkloadEntry {
  const spec = isObject(raw["spec"]) ? raw["spec"] : {};
  onlyFields(issues, spec, "spec", ["address", "serviceAccount", "labels"]);
  const e: WorkloadEntry = {
    kind: "WorkloadEntry",
    meta,
    address: "",
    serviceAccount: "default",
    labels: stringMap(issues, spec["labels"], "spec.labels", LABEL_KEY, LABEL_VALUE),
    source,
  };
  if (typeof spec["address"] !== "string" || !IPV4.test(spec["address"]))
    invalid(issues, "spec.address", "must be an IPv4 address");
  else e.address = spec["address"];
  if (typeof spec["serviceAccount"] === "string" && DNS_LABEL.test(spec["serviceAccount"]))
    e.serviceAccount = spec["serviceAccount"];
  else if (spec["serviceAccount"] !== undefined)
    invalid(issues, "spec.serviceAccount", "must be a DNS label");
  return e;
}

function readPolicy(
  issues: Issues,
  raw: Record<string, unknown>,
  meta: Meta,
  source: Source,
): AuthorizationPolicy {
  const result = validateAuthorizationPolicySpec(raw["spec"] ?? {});
  for (const i of result.issues) issues.push(i);
  return {
    kind: "AuthorizationPolicy",
    meta,
    spec: result.value ?? {},
    dryRun: meta.annotations["istio.io/dry-run"] === "true",
    source,
  };
}

function readPeerAuthentication(
  issues: Issues,
  raw: Record<string, unknown>,
  meta: Meta,
  source: Source,
): PeerAuthentication {
  const result = validatePeerAuthenticationSpec(raw["spec"] ?? {});
  for (const i of result.issues) issues.push(i);
  return { kind: "PeerAuthentication", meta, spec: result.value ?? {}, source };
}

function readRequestAuthentication(
  issues: Issues,
  raw: Record<string, unknown>,
  meta: Meta,
  source: Source,
): RequestAuthentication {
  const result = validateRequestAuthenticationSpec(raw["spec"] ?? {});
  for (const i of result.issues) issues.push(i);
  return { kind: "RequestAuthentication", meta, spec: result.value ?? {}, source };
}

/** Istio Sidecar fields zmesh does not implement: refused with the reason, never ignored. */
const SIDECAR_UNSUPPORTED: Record<string, string> = {
  egress:
    "egress listeners (which services this workload sees) are not implemented; every workload sees every Service",
  ingress: "ingress listeners are not implemented; the inbound side follows the Service and Workload ports",
  inboundConnectionPool: "inbound connection pool settings are not implemented",
};

function readSidecar(issues: Issues, raw: Record<string, unknown>, meta: Meta, source: Source): Sidecar {
  const spec = isObject(raw["spec"]) ? raw["spec"] : {};
  if (raw["spec"] !== undefined && !isObject(raw["spec"]))
    invalid(issues, "spec", "must be a map, e.g. {outboundTrafficPolicy: {mode: ALLOW_ANY}}");
  const sc: Sidecar = { kind: "Sidecar", meta, source };
  for (const k of Object.keys(spec)) {
    if (k === "workloadSelector" || k === "outboundTrafficPolicy") continue;
    issues.push({
      path: `spec.${k}`,
      message: `${SIDECAR_UNSUPPORTED[k] ?? `Sidecar field ${k} is not implemented`}; zmesh reads only spec.workloadSelector.labels and spec.outboundTrafficPolicy.mode, so remove spec.${k}`,
      code: "ZMESH_CONFIG_UNSUPPORTED",
    });
  }
  const sel = spec["workloadSelector"];
  if (sel !== undefined) {
    if (!isObject(sel)) invalid(issues, "spec.workloadSelector", "must be {labels: {app: orders}}");
    else {
      onlyFields(issues, sel, "spec.workloadSelector", ["labels"]);
      sc.selector = stringMap(issues, sel["labels"], "spec.workloadSelector.labels", LABEL_KEY, LABEL_VALUE);
      if (Object.keys(sc.selector).length === 0)
        invalid(
          issues,
          "spec.workloadSelector.labels",
          "must name at least one label; leave out spec.workloadSelector to cover the whole namespace",
        );
    }
  }
  const otp = spec["outboundTrafficPolicy"];
  if (otp !== undefined) {
    if (!isObject(otp))
      invalid(issues, "spec.outboundTrafficPolicy", "must be {mode: REGISTRY_ONLY} or {mode: ALLOW_ANY}");
    else {
      for (const k of Object.keys(otp)) {
        if (k === "mode") continue;
        issues.push({
          path: `spec.outboundTrafficPolicy.${k}`,
          message: `outboundTrafficPolicy.${k} is not implemented (ALLOW_ANY passes traffic straight to its original destination); remove it`,
          code: "ZMESH_CONFIG_UNSUPPORTED",
        });
      }
      const mode = otp["mode"];
      if (mode === "REGISTRY_ONLY" || mode === "ALLOW_ANY") sc.outboundMode = mode;
      else if (mode !== undefined)
        invalid(
          issues,
          "spec.outboundTrafficPolicy.mode",
          `must be REGISTRY_ONLY (only services of the mesh) or ALLOW_ANY (also addresses outside it), not ${JSON.stringify(mode)}`,
        );
    }
  }
  return sc;
}

/** Validates one parsed YAML document into a resource; issues carry paths relative to it. */
export function readResource(raw: unknown, source: Source): { resource?: Resource; issues: Issue[] } {
  const issues: Issue[] = [];
  if (!isObject(raw)) {
    invalid(issues, "", "a resource must be a map with apiVersion, kind, metadata and spec");
    return { issues };
  }
  onlyFields(issues, raw, "", ["apiVersion", "kind", "metadata", "spec", "status"]);
  const kind = raw["kind"];
  const apiVersion = raw["apiVersion"];
  if (typeof kind !== "string" || kind === "") {
    invalid(issues, "kind", `is required (${Object.keys(KINDS).join(", ")})`);
    return { issues };
  }
  const versions = KINDS[kind];
  if (!versions) {
    const code = UNSUPPORTED_KINDS.has(kind) ? "ZMESH_CONFIG_UNSUPPORTED" : "ZMESH_CONFIG_INVALID";
    issues.push({
      path: "kind",
      message: `kind ${kind} is not supported; zmesh reads ${Object.keys(KINDS).join(", ")}`,
      code,
    });
    return { issues };
  }
  if (typeof apiVersion !== "string" || !versions.includes(apiVersion)) {
    invalid(
      issues,
      "apiVersion",
      `${kind} needs apiVersion ${versions.join(" or ")}, not ${JSON.stringify(apiVersion)}`,
    );
    return { issues };
  }
  const meta = readMeta(issues, raw, true);
  let resource: Resource;
  if (kind === "Workload") resource = readWorkload(issues, raw, meta, source);
  else if (kind === "Service") resource = readService(issues, raw, meta, source);
  else if (kind === "WorkloadEntry") resource = readWorkloadEntry(issues, raw, meta, source);
  else if (kind === "PeerAuthentication") resource = readPeerAuthentication(issues, raw, meta, source);
  else if (kind === "RequestAuthentication") resource = readRequestAuthentication(issues, raw, meta, source);
  else if (kind === "Sidecar") resource = readSidecar(issues, raw, meta, source);
  else resource = readPolicy(issues, raw, meta, source);
  return { resource, issues: issues.map((i) => ({ ...i, path: i.path.replace(/^\./, "") })) };
}
