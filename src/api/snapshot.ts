// The per-proxy configuration snapshot the control plane pushes: the type both ends share and
// the validator the proxy runs before applying a push (a bad push is NACKed, the last good stays).
// Services are most of a snapshot's bytes and change rarely: a push whose services did not change
// since the proxy's last good snapshot omits them and names the version it keeps (`servicesVersion`).

import {
  type PeerAuthRef,
  type PolicyRef,
  type RequestAuthRef,
  validateAuthorizationPolicySpec,
  validatePeerAuthenticationSpec,
  validateRequestAuthenticationSpec,
} from "../policy/index.js";

export type OutboundMode = "REGISTRY_ONLY" | "ALLOW_ANY";

export interface SnapshotEndpoint {
  address: string;
  /** Name of the workload behind this address (telemetry labels). */
  workload: string;
  /** SPIFFE URI of the instance behind this address. */
  spiffeId: string;
}

export interface SnapshotService {
  name: string;
  namespace: string;
  vip: string;
  /** Names that resolve to the VIP inside workloads: svc, svc.ns, svc.ns.svc.cluster.local. */
  hostnames: string[];
  ports: { port: number; targetPort: number; protocol: "http" | "http2" | "tcp" | "auto" }[];
  endpoints: SnapshotEndpoint[];
  /** Secure naming: the SPIFFE URIs a server of this service may present. */
  allowedIds: string[];
}

export interface ProxySnapshot {
  version: string;
  trustDomain: string;
  rootNamespace: string;
  /** Every root the proxy must trust (PEM); during a root rotation, two. */
  trustBundlePem: string;
  /** The CA's current issuer; a proxy whose certificate comes from another renews at once. */
  issuerId: string;
  workload: {
    name: string;
    namespace: string;
    serviceAccount: string;
    spiffeId: string;
    address: string;
    labels: Record<string, string>;
  };
  /** The AuthorizationPolicies that apply to this workload, already selected. */
  policies: PolicyRef[];
  /** PeerAuthentications of the workload's namespace and the root namespace (the proxy resolves per port). */
  peerAuthentications: PeerAuthRef[];
  /** The RequestAuthentications that select this workload. */
  requestAuthentications: RequestAuthRef[];
  /**
   * Where the workload may connect outside the mesh, resolved from Istio Sidecars: REGISTRY_ONLY
   * (only services of the mesh) or ALLOW_ANY (also plain TCP to other addresses); `source` names
   * the Sidecar that decided ("namespace/name"), or "default". Absent in a push: REGISTRY_ONLY.
   */
  outboundTrafficPolicy?: { mode: OutboundMode; source: string };
  /** Digest of `services`; a push without `services` means "keep the list of this version". */
  servicesVersion: string;
  services: SnapshotService[];
}

/** What a proxy holds from its last good snapshot, to complete a push that omits services. */
export interface HeldServices {
  servicesVersion: string;
  services: SnapshotService[];
}

function fail(path: string, what: string): never {
  throw new Error(`snapshot ${path}: ${what}`);
}

function str(v: unknown, path: string): string {
  if (typeof v !== "string") fail(path, "must be a string");
  return v;
}

function arr(v: unknown, path: string): unknown[] {
  if (!Array.isArray(v)) fail(path, "must be a list");
  return v;
}

function obj(v: unknown, path: string): Record<string, unknown> {
  if (typeof v !== "object" || v === null || Array.isArray(v)) fail(path, "must be an object");
  return v as Record<string, unknown>;
}

/** Start of the NACK reason for a push that omits services the proxy does not hold. */
export const SERVICES_NOT_HELD = "snapshot services: omitted";

/**
 * Parses and checks a pushed snapshot; throws an Error whose message is the NACK reason. A push
 * without `services` takes them from `held` (the last good snapshot) when its servicesVersion
 * is the one held, and is refused otherwise.
 */
export function parseSnapshot(json: string, held?: HeldServices): ProxySnapshot {
  let raw: unknown;
  try {
    raw = JSON.parse(json);
  } catch (e) {
    fail("", `is not JSON (${(e as Error).message})`);
  }
  const s = obj(raw, "");
  str(s["version"], "version");
  str(s["trustDomain"], "trustDomain");
  str(s["rootNamespace"], "rootNamespace");
  if (!str(s["trustBundlePem"], "trustBundlePem").includes("-----BEGIN CERTIFICATE-----"))
    fail("trustBundlePem", "must hold at least one PEM certificate");
  str(s["issuerId"], "issuerId");
  const w = obj(s["workload"], "workload");
  for (const k of ["name", "namespace", "serviceAccount", "spiffeId", "address"]) str(w[k], `workload.${k}`);
  arr(s["policies"], "policies").forEach((p, i) => {
    const po = obj(p, `policies[${i}]`);
    str(po["name"], `policies[${i}].name`);
    str(po["namespace"], `policies[${i}].namespace`);
    const r = validateAuthorizationPolicySpec(po["spec"]);
    if (r.issues.length > 0) fail(`policies[${i}].spec`, `${r.issues[0]!.path}: ${r.issues[0]!.message}`);
  });
  for (const [key, validate] of [
    ["peerAuthentications", validatePeerAuthenticationSpec],
    ["requestAuthentications", validateRequestAuthenticationSpec],
  ] as const) {
    arr(s[key], key).forEach((p, i) => {
      const r = validate(obj(p, `${key}[${i}]`)["spec"]);
      if (r.issues.length > 0) fail(`${key}[${i}].spec`, `${r.issues[0]!.path}: ${r.issues[0]!.message}`);
    });
  }
  if (s["outboundTrafficPolicy"] !== undefined) {
    const o = obj(s["outboundTrafficPolicy"], "outboundTrafficPolicy");
    if (o["mode"] !== "REGISTRY_ONLY" && o["mode"] !== "ALLOW_ANY")
      fail("outboundTrafficPolicy.mode", "must be REGISTRY_ONLY or ALLOW_ANY");
    str(o["source"], "outboundTrafficPolicy.source");
  }
  const servicesVersion = str(s["servicesVersion"], "servicesVersion");
  if (s["services"] === undefined) {
    if (held?.servicesVersion !== servicesVersion)
      throw new Error(
        `${SERVICES_NOT_HELD}, but this proxy holds services version ${held?.servicesVersion || "none"}, not ${servicesVersion}; the control plane resends them`,
      );
    s["services"] = held.services;
    return s as unknown as ProxySnapshot;
  }
  arr(s["services"], "services").forEach((sv, i) => {
    const so = obj(sv, `services[${i}]`);
    str(so["vip"], `services[${i}].vip`);
    for (const [j, p] of arr(so["ports"], `services[${i}].ports`).entries()) {
      const po = obj(p, `services[${i}].ports[${j}]`);
      if (typeof po["port"] !== "number" || typeof po["targetPort"] !== "number")
        fail(`services[${i}].ports[${j}]`, "port and targetPort must be numbers");
    }
    arr(so["endpoints"], `services[${i}].endpoints`);
    arr(so["allowedIds"], `services[${i}].allowedIds`);
  });
  return s as unknown as ProxySnapshot;
}
