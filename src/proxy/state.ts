// What the proxy currently enforces: its certificate and key (in memory only), the trust
// bundle, and the last good snapshot compiled for the hot path (policies, VIP routes).
// Listeners read from here on each new connection, so a swap never drops an open one. It also
// tells whoever keeps per-endpoint state (the outbound's pools and balancer) which endpoints a
// new config still routes to, once per config (`onNewRoutes`), so that state of the others goes.

import type { OutboundMode, ProxySnapshot, SnapshotEndpoint, SnapshotService } from "../api/index.js";
import { PROXY_TIMEOUTS, type ProxyTimeouts } from "../config/index.js";
import {
  type CompiledPolicies,
  compilePolicies,
  type MtlsResolution,
  resolveMtlsMode,
} from "../policy/index.js";
import { principalOf, type WorkloadPeer } from "./principal.js";

export interface Certificate {
  keyPem: string;
  /** Leaf first, then the intermediate. */
  chainPem: string[];
  spiffeId: string;
  notBefore: Date;
  notAfter: Date;
  serial: string;
  /** Issuer DN of the leaf, for people. */
  issuer: string;
  /** issuerIdOf(the intermediate): compared with the snapshot's to renew after a root rotation. */
  issuerId: string;
}

/** What a record says of one endpoint of a route (where the request went, and to whom), and its pool key. */
export interface RouteEndpoint {
  /** `<endpoint address>:<target port>`. */
  readonly upstream: string;
  /** Shared by every record to this endpoint: frozen. */
  readonly destination: Readonly<WorkloadPeer>;
  /** `<namespace>/<service>|<address>:<target port>`: the connection pools' key, stable across configs. */
  readonly key: string;
}

/**
 * One Service port (VIP:port) as the outbound routes it, with what every request to it needs and
 * that does not change between requests (names for records, each endpoint's identity), made once
 * per route: a new config makes new routes, so nothing here outlives the config it came from.
 * HTTP/1.1, HTTP/2 and TCP read the same facts.
 */
export class Route {
  /** destination_service: `<name>.<namespace>.svc.cluster.local`. */
  readonly fqdn: string;
  private readonly endpoints = new WeakMap<SnapshotEndpoint, RouteEndpoint>();

  constructor(
    readonly service: SnapshotService,
    /** The Service port (on the VIP) this route is for. */
    readonly port: number,
    readonly targetPort: number,
    /** From the Service port; "auto" means detect from the first bytes. */
    readonly protocol: "http" | "http2" | "tcp" | "auto",
    readonly allowed: ReadonlySet<string>,
  ) {
    this.fqdn = `${service.name}.${service.namespace}.svc.cluster.local`;
  }

  /** The record facts of one of this route's endpoints (made on first use, then kept). */
  endpoint(ep: SnapshotEndpoint): RouteEndpoint {
    let e = this.endpoints.get(ep);
    if (e === undefined) {
      const upstream = upstreamOf(ep.address, this.targetPort);
      e = {
        upstream,
        destination: Object.freeze({
          principal: principalOf(ep.spiffeId),
          workload: ep.workload,
          namespace: this.service.namespace,
        }),
        key: endpointKey(this.service, upstream),
      };
      this.endpoints.set(ep, e);
    }
    return e;
  }
}

/** Where a request to an endpoint goes: `<address>:<target port>`. */
function upstreamOf(address: string, targetPort: number): string {
  return `${address}:${targetPort}`;
}

/** The pools' key of an endpoint of a Service: `<namespace>/<service>|<upstream>`. */
function endpointKey(svc: SnapshotService, upstream: string): string {
  return `${serviceId(svc)}|${upstream}`;
}

/** `<namespace>/<name>`: the part of an endpoint key before its "|". */
function serviceId(svc: SnapshotService): string {
  return `${svc.namespace}/${svc.name}`;
}

/**
 * The endpoints a config routes to, asked by what the outbound keys its per-endpoint state with:
 * state of an endpoint in neither belongs to no route of the config and can go. Built on demand
 * from what is asked, not for the whole config: a config may hold thousands of endpoints, a sidecar
 * holds state for the few it called (one map of services, then one set per service asked about;
 * the set of all endpoint addresses only if the balancer holds a failure).
 */
export class LiveEndpoints {
  /** `RouteEndpoint.key`s of every endpoint and target port of every service (the HTTP/1.1 and HTTP/2 pools). */
  readonly keys: Pick<ReadonlySet<string>, "has"> = { has: (key) => this.hasKey(key) };
  /** Every endpoint's address (the balancer's). */
  readonly addresses: Pick<ReadonlySet<string>, "has"> = { has: (a) => this.allAddresses().has(a) };
  private byService: Map<string, SnapshotService> | undefined;
  /** Per service asked about (`<namespace>/<name>`): the keys of its endpoints and target ports. */
  private readonly keysOf = new Map<string, Set<string>>();
  private addressSet: Set<string> | undefined;

  constructor(private readonly services: readonly SnapshotService[]) {}

  private hasKey(key: string): boolean {
    const bar = key.indexOf("|"); // names and namespaces are DNS labels: no "|" in them
    const id = key.slice(0, bar);
    if (this.byService === undefined) {
      this.byService = new Map();
      for (const svc of this.services) this.byService.set(serviceId(svc), svc);
    }
    const svc = this.byService.get(id);
    if (svc === undefined) return false;
    let keys = this.keysOf.get(id);
    if (keys === undefined) {
      keys = new Set();
      for (const ep of svc.endpoints)
        for (const p of svc.ports) keys.add(endpointKey(svc, upstreamOf(ep.address, p.targetPort)));
      this.keysOf.set(id, keys);
    }
    return keys.has(key);
  }

  private allAddresses(): Set<string> {
    if (this.addressSet === undefined) {
      this.addressSet = new Set();
      for (const svc of this.services) for (const ep of svc.endpoints) this.addressSet.add(ep.address);
    }
    return this.addressSet;
  }
}

/**
 * Moves state kept per endpoint (an outbound pool of either protocol) from the route it was last
 * reached through, `held`, to `next`, and returns `next`. Secure naming checked the pool's
 * connections against `held`'s identities; if `next` allows other ones, `retire` runs first.
 */
export function followRoute(held: Route, next: Route, retire: () => void): Route {
  if (!sameSet(held.allowed, next.allowed)) retire();
  return next;
}

/** Whether two sets of identities (a route's `allowed`) hold the same members. */
function sameSet(a: ReadonlySet<string>, b: ReadonlySet<string>): boolean {
  if (a === b) return true;
  if (a.size !== b.size) return false;
  for (const x of a) if (!b.has(x)) return false;
  return true;
}

export class ProxyState {
  snapshot: ProxySnapshot | undefined;
  policies: CompiledPolicies | undefined;
  cert: Certificate | undefined;
  /** The roots peers must chain to: from the latest snapshot (or the signing answer before one). */
  trustBundlePem: string | undefined;
  /** Requests being handled now (both directions), so a drain knows when it is done. */
  inflight = 0;
  /** Set by a drain: no new connections; responses ask clients to close theirs. */
  draining = false;
  /** Time bounds of HTTP/1.1 connections and HTTP/2 streams (the defaults, or the Sidecar's `timeouts` option). */
  timeouts: ProxyTimeouts = { ...PROXY_TIMEOUTS };
  private routes = new Map<string, Route>();
  /** Addresses of the mesh (VIPs, endpoints, this workload): never passed through in plaintext. */
  private meshAddresses = new Set<string>();
  private mtlsByPort = new Map<number, MtlsResolution>();
  private readonly listeners: (() => void)[] = [];
  private readonly routeListeners: ((live: LiveEndpoints) => void)[] = [];

  get ready(): boolean {
    return this.snapshot !== undefined && this.cert !== undefined && this.policies !== undefined;
  }

  onChange(fn: () => void): void {
    this.listeners.push(fn);
  }

  /**
   * Calls `fn` with the endpoints of each applied config whose services differ from the last one
   * (a push that left them out changes no endpoint), after its routes are in place: once per
   * config, never per request.
   */
  onNewRoutes(fn: (live: LiveEndpoints) => void): void {
    this.routeListeners.push(fn);
  }

  private changed(): void {
    for (const fn of this.listeners) fn();
  }

  /** Applies a validated snapshot; throws (the NACK reason) if its policies do not compile. */
  applySnapshot(s: ProxySnapshot): void {
    const policies = compilePolicies(s.policies);
    // The same services list as the last good snapshot (a push that left it out): same routes.
    const same = s.services === this.snapshot?.services;
    const routes = same ? this.routes : this.buildRoutes(s);
    const addresses = same ? this.meshAddresses : new Set<string>();
    if (!same)
      for (const svc of s.services) {
        addresses.add(svc.vip);
        for (const ep of svc.endpoints) addresses.add(ep.address);
      }
    this.snapshot = s;
    this.policies = policies;
    this.routes = routes;
    this.meshAddresses = addresses;
    this.mtlsByPort = new Map();
    this.trustBundlePem = s.trustBundlePem;
    if (!same && this.routeListeners.length > 0) {
      const live = new LiveEndpoints(s.services);
      for (const fn of this.routeListeners) {
        // Dropping stale state is housekeeping: its failure must not undo or refuse the config.
        try {
          fn(live);
        } catch (e) {
          process.emitWarning(
            `zmesh: dropping the state of removed endpoints failed: ${(e as Error).message}`,
          );
        }
      }
    }
    this.changed();
  }

  private buildRoutes(s: ProxySnapshot): Map<string, Route> {
    const routes = new Map<string, Route>();
    for (const svc of s.services) {
      const allowed = new Set(svc.allowedIds);
      for (const p of svc.ports)
        routes.set(`${svc.vip}:${p.port}`, new Route(svc, p.port, p.targetPort, p.protocol, allowed));
    }
    return routes;
  }

  /** Installs a new SVID; `bundle` is used only until a snapshot brings one. */
  setCertificate(c: Certificate, bundle: string): void {
    this.cert = c;
    this.trustBundlePem ??= bundle;
    this.changed();
  }

  /** The PeerAuthentication mode of one of this workload's ports (STRICT when nothing says otherwise). */
  mtls(port: number): MtlsResolution {
    let m = this.mtlsByPort.get(port);
    if (!m) {
      const s = this.snapshot!;
      m = resolveMtlsMode(
        s.peerAuthentications,
        { namespace: s.workload.namespace, labels: s.workload.labels },
        port,
        s.rootNamespace,
      );
      this.mtlsByPort.set(port, m);
    }
    return m;
  }

  /** The workload's outbound traffic policy (Istio Sidecar); REGISTRY_ONLY unless a Sidecar says ALLOW_ANY. */
  get outboundMode(): OutboundMode {
    return this.snapshot?.outboundTrafficPolicy?.mode ?? "REGISTRY_ONLY";
  }

  /**
   * Whether an address belongs to the mesh, where plaintext would bypass mutual TLS: the service VIP
   * range 198.19.0.0/16, any VIP or endpoint of a service, this workload; IPv6 too (the mesh is
   * IPv4-only, so nothing there is known to be outside it). Pod addresses of workloads no Service
   * selects are not in the snapshot; their inbound sidecar refuses plaintext under STRICT.
   */
  isMeshAddress(address: string): boolean {
    return (
      address.startsWith("198.19.") ||
      address === this.snapshot?.workload.address ||
      this.meshAddresses.has(address) ||
      address.startsWith("::ffff:") ||
      address.includes(":")
    );
  }

  route(address: string, port: number): Route | undefined {
    return this.routes.get(`${address}:${port}`);
  }

  /** The route of the same Service port as `r` in the config as it is now (its identities may have changed). */
  current(r: Route): Route | undefined {
    return this.route(r.service.vip, r.port);
  }

  /**
   * For a retry or a failure of a request begun under `route`, perhaps an older config's: the
   * route now (undefined if its service is gone) and whether the endpoint at `address` is still
   * one of its endpoints. A newer config's prune has dropped the state of removed endpoints; a
   * retry picks from the endpoints of now, and a removed endpoint's failure is not held. Called on
   * error paths only.
   */
  afterConfig(route: Route, address: string): { route: Route | undefined; live: boolean } {
    const now = this.current(route);
    if (now === route) return { route, live: true };
    return { route: now, live: now?.service.endpoints.some((e) => e.address === address) === true };
  }
}
