// The sidecar process: connects to the control plane, obtains its SVID (key generated and kept
// in memory), applies config pushes, and serves inbound, outbound, admin and health. Nothing
// listens for workload traffic until it has both a certificate and a config: it fails closed.
// It wires the parts together, among them: each config's endpoints prune the outbound's state.

import { X509Certificate } from "node:crypto";
import type { Server as HttpServer } from "node:http";
import type { Server } from "node:net";
import { parseSnapshot } from "../api/index.js";
import { PORTS, type ProxyTimeouts } from "../config/index.js";
import { type Logger, logger } from "../diag/index.js";
import { generateCsr, issuerIdOf } from "../identity/index.js";
import { adminEndpoints, adminServer, healthServer } from "./admin.js";
import { ControlPlaneClient } from "./client.js";
import { Inbound } from "./inbound.js";
import { type OriginalDst, originalDst } from "./origdst.js";
import { Outbound } from "./outbound.js";
import { ProxyState } from "./state.js";
import { Telemetry } from "./telemetry.js";

export interface SidecarOptions {
  controlPlane: string;
  trustBundlePem: string;
  credential: string;
  controlPlaneId: string;
  /** Listen addresses; port 0 lets the OS choose (tests). */
  inbound?: { host: string; port: number };
  outbound?: { host: string; port: number };
  admin?: { host: string; port: number };
  health?: { host: string; port: number };
  metrics?: { host: string; port: number };
  appHost?: string;
  originalDst?: OriginalDst;
  certTtlSeconds?: number;
  /** Overrides of the HTTP/1.1 time bounds (PROXY_TIMEOUTS); tests shorten them. */
  timeouts?: Partial<ProxyTimeouts>;
  log?: Logger;
  /** Called after POST /quitquitquit has drained and closed the proxy (the process exits). */
  onQuit?: () => void;
}

function listen(server: Server, at: { host: string; port: number }): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(at.port, at.host, () => {
      server.off("error", reject);
      const a = server.address();
      resolve(typeof a === "object" && a ? a.port : at.port);
    });
  });
}

export class Sidecar {
  readonly state = new ProxyState();
  readonly ports = { inbound: 0, outbound: 0, admin: 0, health: 0, metrics: 0 };
  private readonly log: Logger;
  private readonly client: ControlPlaneClient;
  private readonly inbound: Inbound;
  private readonly outbound: Outbound;
  private readonly admin: HttpServer;
  private readonly health: HttpServer;
  private readonly metrics: HttpServer;
  readonly telemetry: Telemetry;
  private renewTimer: NodeJS.Timeout | undefined;
  private renewing: Promise<void> | undefined;
  private trafficUp = false;
  private closed = false;
  private readyWaiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  /** Why the traffic listeners could not open (a port in use): the proxy stays closed, `ready()` rejects. */
  private trafficError: Error | undefined;

  constructor(private readonly opts: SidecarOptions) {
    this.log = opts.log ?? logger("proxy");
    if (opts.timeouts) Object.assign(this.state.timeouts, opts.timeouts);
    const od = opts.originalDst ?? originalDst;
    this.client = new ControlPlaneClient({
      address: opts.controlPlane,
      trustBundlePem: opts.trustBundlePem,
      credential: opts.credential,
      expectedServerId: opts.controlPlaneId,
    });
    this.telemetry = new Telemetry(this.log);
    this.metrics = this.telemetry.server();
    this.inbound = new Inbound(this.state, od, this.log, this.telemetry, opts.appHost);
    this.outbound = new Outbound(this.state, od, this.log, this.telemetry);
    // Endpoints gone from a new config: their pooled connections and balancer entries go too.
    this.state.onNewRoutes((live) => this.outbound.prune(live));
    this.admin = adminServer(
      adminEndpoints(this.state, {
        drain: () => this.drain(),
        quit: () =>
          void this.drain()
            .then(() => this.close())
            .then(() => opts.onQuit?.()),
        setLogLevel: (level) => {
          this.log.level = level;
        },
      }),
    );
    this.health = healthServer(this.state);
  }

  /** Starts admin and health, then waits for config and certificate before taking traffic. */
  async start(): Promise<void> {
    this.ports.admin = await listen(
      this.admin,
      this.opts.admin ?? { host: "127.0.0.1", port: PORTS.proxyAdmin },
    );
    this.ports.health = await listen(
      this.health,
      this.opts.health ?? { host: "0.0.0.0", port: PORTS.proxyHealth },
    );
    this.ports.metrics = await listen(
      this.metrics,
      this.opts.metrics ?? { host: "0.0.0.0", port: PORTS.proxyMetrics },
    );
    this.client.subscribe(
      (push) => {
        try {
          const snap = parseSnapshot(push.snapshotJson, this.state.snapshot);
          const prev = this.state.snapshot?.workload.spiffeId;
          this.state.applySnapshot(snap);
          this.client.updateTrust(snap.trustBundlePem);
          this.log.info(
            { version: snap.version, policies: snap.policies.length, services: snap.services.length },
            "config applied",
          );
          // A new identity, or a CA that now issues from another root: get a certificate now.
          if (
            prev !== snap.workload.spiffeId ||
            (this.state.cert && this.state.cert.issuerId !== snap.issuerId)
          )
            void this.renew();
          return undefined;
        } catch (e) {
          this.log.error(
            { version: push.version, err: (e as Error).message },
            "config rejected; keeping the last good one",
          );
          return (e as Error).message;
        }
      },
      (why) => this.log.warn({ why }, "control plane stream lost; enforcing last good config, reconnecting"),
    );
    this.state.onChange(() => {
      if (this.state.ready && !this.trafficUp) void this.openTraffic();
    });
  }

  private async openTraffic(): Promise<void> {
    this.trafficUp = true;
    try {
      this.ports.inbound = await listen(
        this.inbound.server,
        this.opts.inbound ?? { host: "0.0.0.0", port: PORTS.inboundCapture },
      );
      this.ports.outbound = await listen(
        this.outbound.server,
        this.opts.outbound ?? { host: "127.0.0.1", port: PORTS.outboundCapture },
      );
    } catch (e) {
      // Fails closed and says so: neither traffic listener stays open (the inbound may have opened
      // before the outbound failed), and whoever waits for readiness hears why (it used to be an
      // unhandled rejection, and a waiter that never woke).
      this.inbound.server.close();
      this.outbound.server.close();
      this.ports.inbound = 0;
      this.ports.outbound = 0;
      this.trafficError = e as Error;
      this.log.error(
        { err: this.trafficError.message },
        "cannot listen for workload traffic; no traffic is let through",
      );
      for (const w of this.readyWaiters.splice(0)) w.reject(this.trafficError);
      return;
    }
    this.log.info({ ports: this.ports, spiffeId: this.state.snapshot?.workload.spiffeId }, "proxy ready");
    for (const w of this.readyWaiters.splice(0)) w.resolve();
  }

  /** Outbound mutual-TLS handshakes so far: resumed from a cached session, and full. */
  get tlsHandshakes(): { resumed: number; full: number } {
    return { resumed: this.outbound.sessions.resumed, full: this.outbound.sessions.full };
  }

  /** Per-endpoint entries the outbound holds (pools, HTTP/2 routes and sessions, balancer). */
  get outboundHeld(): Outbound["held"] {
    return this.outbound.held;
  }

  /** Resolves once traffic listeners are open; rejects if they cannot open (a port in use). */
  ready(): Promise<void> {
    if (this.trafficError) return Promise.reject(this.trafficError);
    if (this.trafficUp && this.ports.outbound) return Promise.resolve();
    return new Promise((resolve, reject) => this.readyWaiters.push({ resolve, reject }));
  }

  /** Gets a fresh SVID for the identity in the config; renews at about half its life, with jitter. */
  renew(): Promise<void> {
    this.renewing ??= this.doRenew().finally(() => {
      this.renewing = undefined;
    });
    return this.renewing;
  }

  private async doRenew(): Promise<void> {
    const id = this.state.snapshot?.workload.spiffeId;
    if (!id || this.closed) return;
    clearTimeout(this.renewTimer);
    try {
      const csr = await generateCsr(id);
      const res = await this.client.sign(csr.csrPem, this.opts.certTtlSeconds ?? 0);
      const leaf = new X509Certificate(res.certChainPem[0]!);
      const notAfter = new Date(leaf.validTo);
      this.state.setCertificate(
        {
          keyPem: csr.keyPem,
          chainPem: res.certChainPem,
          spiffeId: id,
          notBefore: new Date(leaf.validFrom),
          notAfter,
          serial: leaf.serialNumber.toLowerCase().replace(/^(00)+(?=.)/, ""),
          issuer: leaf.issuer.replace(/\n/g, ", "),
          issuerId: res.certChainPem[1] ? issuerIdOf(res.certChainPem[1]) : "",
        },
        res.trustBundlePem,
      );
      const life = notAfter.getTime() - Date.now();
      const wait = Math.max(1_000, life * (0.45 + Math.random() * 0.1));
      this.renewTimer = setTimeout(() => void this.renew(), wait);
      this.renewTimer.unref();
      this.log.info(
        { spiffeId: id, serial: leaf.serialNumber, notAfter, renewInMs: Math.round(wait) },
        "certificate installed",
      );
    } catch (e) {
      this.log.error({ err: (e as Error).message }, "certificate request failed; retrying in 2s");
      this.renewTimer = setTimeout(() => void this.renew(), 2_000);
      this.renewTimer.unref();
    }
  }

  /**
   * Stops taking new connections and waits (at most `timeoutMs`) for requests in flight to
   * finish; their connections are asked to close. Control-plane updates keep coming meanwhile.
   */
  async drain(timeoutMs = 5_000): Promise<void> {
    if (!this.state.draining) {
      this.state.draining = true;
      this.inbound.drain();
      this.outbound.drain();
      this.log.info({ inflight: this.state.inflight }, "draining");
    }
    this.log.flush();
    const deadline = Date.now() + timeoutMs;
    while (this.state.inflight > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.renewTimer);
    this.client.close();
    await Promise.all([this.inbound.close(), this.outbound.close()]);
    this.admin.close();
    this.health.close();
    this.metrics.close();
    this.admin.closeAllConnections();
    this.health.closeAllConnections();
    this.log.info("proxy stopped");
    this.log.flush(); // access logs are buffered: nothing logged may be lost at exit
  }
}
