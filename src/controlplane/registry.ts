// The registry: turns a validated MeshConfig into what each proxy needs (its policies, the
// services it can call with their endpoints and allowed identities). Pure and deterministic.

import { createHash } from "node:crypto";
import type { OutboundMode, ProxySnapshot, SnapshotService } from "../api/index.js";
import type { MeshConfig, Sidecar, WorkloadEntry } from "../config/index.js";
import { workloadId } from "../identity/index.js";
import { selectPolicies } from "../policy/index.js";

export interface RegistryOptions {
  trustDomain: string;
  rootNamespace: string;
}

function matches(selector: Record<string, string>, labels: Record<string, string>): boolean {
  for (const [k, v] of Object.entries(selector)) if (labels[k] !== v) return false;
  return true;
}

/**
 * The outbound traffic policy of a workload, in Istio's order: a Sidecar of its namespace whose
 * selector matches it, else its namespace's Sidecar without selector, else the root namespace's
 * Sidecar without selector, else zmesh's default REGISTRY_ONLY (Istio's is ALLOW_ANY: zmesh is
 * zero-trust by default). Sidecars that set no mode are skipped; ties go to the oldest name.
 */
export function resolveOutboundMode(
  sidecars: readonly Sidecar[],
  workload: { namespace: string; labels: Record<string, string> },
  rootNamespace: string,
): { mode: OutboundMode; source: string } {
  const withMode = sidecars
    .filter((s) => s.outboundMode !== undefined)
    .sort((a, b) => a.meta.name.localeCompare(b.meta.name));
  const pick =
    withMode.find(
      (s) => s.meta.namespace === workload.namespace && s.selector && matches(s.selector, workload.labels),
    ) ??
    withMode.find((s) => s.meta.namespace === workload.namespace && !s.selector) ??
    withMode.find((s) => s.meta.namespace === rootNamespace && !s.selector);
  return pick
    ? { mode: pick.outboundMode!, source: `${pick.meta.namespace}/${pick.meta.name}` }
    : { mode: "REGISTRY_ONLY", source: "default" };
}

/** The servicesVersion of a services list, from its JSON text. */
export function servicesVersionOf(servicesJson: string): string {
  return createHash("sha256").update(servicesJson).digest("hex").slice(0, 16);
}

export class Registry {
  readonly config: MeshConfig;
  readonly opts: RegistryOptions;
  private readonly services: SnapshotService[];
  private servicesDigest: string | undefined;

  constructor(config: MeshConfig, opts: RegistryOptions) {
    this.config = config;
    this.opts = opts;
    this.services = config.services
      .filter((s) => s.clusterIP !== undefined)
      .map((s) => {
        const entries = config.workloadEntries.filter(
          (e) => e.meta.namespace === s.meta.namespace && matches(s.selector, e.labels),
        );
        const endpoints = entries.map((e) => ({
          address: e.address,
          workload: e.meta.labels["zmesh.dev/workload"] ?? e.meta.name,
          spiffeId: this.spiffeIdOf(e),
        }));
        const ns = s.meta.namespace;
        return {
          name: s.meta.name,
          namespace: ns,
          vip: s.clusterIP!,
          hostnames: [
            s.meta.name,
            `${s.meta.name}.${ns}`,
            `${s.meta.name}.${ns}.svc`,
            `${s.meta.name}.${ns}.svc.cluster.local`,
          ],
          ports: s.ports.map((p) => ({ port: p.port, targetPort: p.targetPort, protocol: p.protocol })),
          endpoints,
          allowedIds: [...new Set(endpoints.map((e) => e.spiffeId))].sort(),
        };
      });
  }

  spiffeIdOf(e: WorkloadEntry): string {
    return workloadId(this.opts.trustDomain, e.meta.namespace, e.serviceAccount);
  }

  entry(namespace: string, name: string): WorkloadEntry | undefined {
    return this.config.workloadEntries.find((e) => e.meta.namespace === namespace && e.meta.name === name);
  }

  /** Digest of the services list (the same for every proxy), computed once. */
  get servicesVersion(): string {
    this.servicesDigest ??= servicesVersionOf(JSON.stringify(this.services));
    return this.servicesDigest;
  }

  /** The snapshot for one workload instance; its version is a digest of its content. */
  snapshotFor(e: WorkloadEntry, ca: { trustBundlePem: string; issuerId: string }): ProxySnapshot {
    const body = this.bodyFor(e, ca);
    const version = createHash("sha256").update(JSON.stringify(body)).digest("hex").slice(0, 12);
    return { version, ...body };
  }

  /** The snapshot for one workload instance without its version. */
  bodyFor(
    e: WorkloadEntry,
    ca: { trustBundlePem: string; issuerId: string },
  ): Omit<ProxySnapshot, "version"> {
    const policies = selectPolicies(
      this.config.policies.map((p) => ({
        namespace: p.meta.namespace,
        name: p.meta.name,
        spec: p.spec,
        dryRun: p.dryRun,
      })),
      { namespace: e.meta.namespace, labels: e.labels },
      this.opts.rootNamespace,
    );
    const inScope = (ns: string) => ns === e.meta.namespace || ns === this.opts.rootNamespace;
    const peerAuthentications = this.config.peerAuthentications
      .filter((p) => inScope(p.meta.namespace))
      .map((p) => ({ namespace: p.meta.namespace, name: p.meta.name, spec: p.spec }));
    const requestAuthentications = selectPolicies(
      this.config.requestAuthentications.map((r) => ({
        namespace: r.meta.namespace,
        name: r.meta.name,
        spec: r.spec,
      })),
      { namespace: e.meta.namespace, labels: e.labels },
      this.opts.rootNamespace,
    );
    const body = {
      trustDomain: this.opts.trustDomain,
      rootNamespace: this.opts.rootNamespace,
      trustBundlePem: ca.trustBundlePem,
      issuerId: ca.issuerId,
      workload: {
        name: e.meta.labels["zmesh.dev/workload"] ?? e.meta.name,
        namespace: e.meta.namespace,
        serviceAccount: e.serviceAccount,
        spiffeId: this.spiffeIdOf(e),
        address: e.address,
        labels: e.labels,
      },
      policies,
      peerAuthentications,
      requestAuthentications,
      outboundTrafficPolicy: resolveOutboundMode(
        this.config.sidecars ?? [],
        { namespace: e.meta.namespace, labels: e.labels },
        this.opts.rootNamespace,
      ),
      servicesVersion: this.servicesVersion,
      services: this.services,
    };
    return body;
  }
}
