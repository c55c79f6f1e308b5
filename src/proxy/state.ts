// What the proxy currently enforces: its certificate and key (in memory only), the trust
// bundle, and the last good snapshot compiled for the hot path (policies, VIP routes).
// Listeners read from here on each connection, so a swap never drops a connection.

import { createSecureContext, type SecureContext } from "node:tls";
import type { ProxySnapshot, SnapshotService } from "../api/index.js";
import { type CompiledPolicies, compilePolicies } from "../policy/index.js";

export interface Certificate {
  keyPem: string;
  chainPem: string[];
  trustBundlePem: string;
  notAfter: Date;
  serial: string;
}

export interface Route {
  service: SnapshotService;
  targetPort: number;
  allowed: ReadonlySet<string>;
}

export class ProxyState {
  snapshot: ProxySnapshot | undefined;
  policies: CompiledPolicies | undefined;
  cert: Certificate | undefined;
  /** Server side of inbound mTLS: our SVID, client certs must chain to the bundle. */
  serverContext: SecureContext | undefined;
  private routes = new Map<string, Route>();
  private readonly listeners: (() => void)[] = [];

  get ready(): boolean {
    return this.snapshot !== undefined && this.cert !== undefined && this.policies !== undefined;
  }

  onChange(fn: () => void): void {
    this.listeners.push(fn);
  }

  private changed(): void {
    for (const fn of this.listeners) fn();
  }

  /** Applies a validated snapshot; throws (the NACK reason) if its policies do not compile. */
  applySnapshot(s: ProxySnapshot): void {
    const policies = compilePolicies(s.policies);
    const routes = new Map<string, Route>();
    for (const svc of s.services) {
      const allowed = new Set(svc.allowedIds);
      for (const p of svc.ports)
        routes.set(`${svc.vip}:${p.port}`, { service: svc, targetPort: p.targetPort, allowed });
    }
    this.snapshot = s;
    this.policies = policies;
    this.routes = routes;
    this.changed();
  }

  setCertificate(c: Certificate): void {
    this.serverContext = createSecureContext({
      key: c.keyPem,
      cert: c.chainPem.join(""),
      ca: c.trustBundlePem,
      minVersion: "TLSv1.3",
    });
    this.cert = c;
    this.changed();
  }

  route(address: string, port: number): Route | undefined {
    return this.routes.get(`${address}:${port}`);
  }
}
