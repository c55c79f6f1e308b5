// Outbound (:15001 on 127.0.0.1): the app's connections to service VIPs are redirected here.
// Each HTTP request goes to an endpoint of the service over mutual TLS, and the connection is
// used only if the server proves a SPIFFE ID the service may run as (secure naming). It owns the
// per-endpoint state of the outbound path (HTTP/1.1 pools, the balancer, the HTTP/2 outbound's
// sessions); a new config drops that of endpoints it no longer routes to (`prune`).

import { randomUUID } from "node:crypto";
import { createServer as createNetServer, connect as netConnect, type Server, type Socket } from "node:net";
import type { Duplex } from "node:stream";
import type { TLSSocket } from "node:tls";
import type { SnapshotEndpoint } from "../api/index.js";
import type { ProxyTimeouts } from "../config/index.js";
import type { Logger } from "../diag/index.js";
import { ZmeshError } from "../errors/index.js";
import { Balancer } from "./balancer.js";
import { dialMtls } from "./dial.js";
import { H2Outbound } from "./h2-outbound.js"; // HTTP/2 hook
import { REWRITTEN as DROP, SOURCE_WORKLOAD_HEADER } from "./headers.js";
import { type Http1Conn, type Http1Listener, Http1Server, type UpgradeRequest } from "./http1/conn.js";
import { field, type RequestHead } from "./http1/head.js";
import { meshPoolIdleMs, type ReadHook, UpstreamPool } from "./http1/pool.js";
import { requestHeadFor } from "./http1/wire.js";
import type { Destination, OriginalDst } from "./origdst.js";
import { workloadPeer } from "./principal.js";
import { FLAGS, type Flag, rescueUpgrade } from "./rescue.js";
import { SessionCache } from "./sessions.js";
import { ALPN_TCP, looksLikeH2, looksLikeHttp, SNIFF_MS, sniff } from "./sniff.js";
import { followRoute, type LiveEndpoints, type ProxyState, type Route, type RouteEndpoint } from "./state.js";
import type { HttpRecord, TcpRecord, Telemetry } from "./telemetry.js";
import { splice, upgradeHead } from "./upgrade.js";

const CONNECT_TIMEOUT_MS = 5_000;
const IDEMPOTENT = new Set(["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]);

export class Outbound implements Http1Listener {
  /** Accepts captured connections and routes each: HTTP to `h1`, TCP to a mutual-TLS pipe. */
  readonly server: Server;
  private readonly h1 = new Http1Server(this);
  private readonly dsts = new WeakMap<Duplex, Destination>();
  /** By route endpoint key: the pool, and the route it was last reached through (dials check against it). */
  private readonly pools = new Map<string, { pool: UpstreamPool; route: Route }>();
  private readonly balancer = new Balancer();
  /** TLS client sessions to other sidecars, for resumption. */
  readonly sessions = new SessionCache();
  /** HTTP/2 hook: h2c app connections are served by h2-outbound.ts (same balancer, same dial). */
  private readonly h2: H2Outbound;

  constructor(
    private readonly state: ProxyState,
    private readonly originalDst: OriginalDst,
    private readonly log: Logger,
    private readonly telemetry: Telemetry,
  ) {
    this.server = createNetServer((s) => this.accept(s));
    this.h2 = new H2Outbound(state, log, telemetry, this.balancer, (...a) => this.dial(...a)); // HTTP/2 hook
  }

  draining(): boolean {
    return this.state.draining;
  }

  get timeouts(): ProxyTimeouts {
    return this.state.timeouts;
  }

  malformed(_conn: Http1Conn, reason: string): void {
    this.log.info({ direction: "outbound", reason }, "malformed request refused");
  }

  private accept(s: Socket): void {
    s.setNoDelay(true);
    s.on("error", () => s.destroy());
    if (!this.state.ready) return void s.destroy(); // fail closed until cert and config are here
    const dst = this.destination(s);
    if (!dst) return void s.destroy();
    const route = this.state.route(dst.address, dst.port);
    if (!route) return this.outside(s, dst);
    if (route.protocol === "tcp") return this.tcp(s, route);
    if (route.protocol === "http") return void this.h1.serve(s);
    // Unknown protocol: look at the first bytes, briefly, so that a server-first protocol (the
    // client waits for a greeting) is not stalled.
    sniff(s, SNIFF_MS, (first) => {
      // HTTP/2 hook: h2c with prior knowledge, by its preface or by an http2/grpc Service port.
      if (first ? looksLikeH2(first) : route.protocol === "http2") return this.h2.accept(s, dst);
      if (first && looksLikeHttp(first)) {
        this.h1.serve(s); // sniff paused it with the first bytes pushed back; serve resumes it
      } else this.tcp(s, route);
    });
  }

  /**
   * A destination with no service of the mesh behind it, by the workload's outbound traffic policy
   * (Istio Sidecar): ALLOW_ANY passes it through as plain TCP (Istio's PassthroughCluster), unless
   * the address belongs to the mesh, where plaintext would bypass mutual TLS; REGISTRY_ONLY (the
   * default) blocks it (Istio's BlackHoleCluster). HTTP is blocked after its head is read, so the
   * app gets a 502 saying why; other bytes are closed.
   */
  private outside(s: Socket, dst: Destination): void {
    if (this.state.outboundMode === "ALLOW_ANY" && !this.state.isMeshAddress(dst.address))
      return this.passthrough(s, dst);
    sniff(s, SNIFF_MS, (first) => {
      if (first && looksLikeH2(first)) return this.h2.accept(s, dst);
      if (first && looksLikeHttp(first)) return void this.h1.serve(s);
      this.noRoute(s, dst);
    });
  }

  /**
   * Keep-alive mutual-TLS connections to one endpoint of one service, by the endpoint's key (so a
   * new config keeps the connections), found per request through the route endpoint object.
   */
  private readonly endpointPools = new WeakMap<RouteEndpoint, UpstreamPool>();

  private poolOf(route: Route, ep: SnapshotEndpoint, at: RouteEndpoint): UpstreamPool {
    const pool = this.endpointPools.get(at);
    if (pool !== undefined) return pool;
    let held = this.pools.get(at.key);
    if (held === undefined) {
      const target = route.targetPort;
      // Secure naming checks a new connection against the route as the config has it now, found
      // from the route this pool was last reached through (a new config may move the Service's
      // VIP or port while the endpoint, and so the pool, stays).
      const current = () => this.state.current(entry.route);
      const entry = {
        pool: new UpstreamPool(
          (onread, cb) => this.dial(ep.address, target, ["http/1.1"], current, cb, onread),
          meshPoolIdleMs(this.state.timeouts.idleMs),
        ),
        route: this.state.current(route) ?? route,
      };
      held = entry;
      this.pools.set(at.key, held);
    }
    // A new config changed the identities the service may run as: connections whose dial checked
    // the old set are not reused (as a proxy drains a cluster's pools when its SANs change).
    // Only the config's current route counts: a retry of a request begun under an older config
    // must not retire the connections the current set checked (each dial checks the current set).
    const h = held;
    if (h.route !== route && this.state.current(route) === route)
      h.route = followRoute(h.route, route, () => h.pool.retire());
    this.endpointPools.set(at, held.pool);
    return held.pool;
  }

  /** Our side of every record (once per config, see workloadPeer). */
  private selfPeer(): TcpRecord["source"] {
    const self = this.state.snapshot?.workload;
    return self ? workloadPeer(self) : {};
  }

  private noRoute(s: Socket, dst: Destination): void {
    this.telemetry.tcpClose({
      reporter: "source",
      source: this.selfPeer(),
      destination: {},
      service: "BlackHoleCluster",
      upstream: `${dst.address}:${dst.port}`,
      mtls: false,
      flag: "NO_ROUTE",
      sentBytes: 0,
      receivedBytes: s.bytesRead,
      durationMs: 0,
    });
    s.destroy();
  }

  /**
   * ALLOW_ANY to an address outside the mesh: plain TCP to the original destination, both ways.
   * The proxy runs as uid 1337, whose connections the capture rules let out, so this does not loop.
   */
  private passthrough(s: Socket, dst: Destination): void {
    const start = Date.now();
    const rec: TcpRecord = {
      reporter: "source",
      source: this.selfPeer(),
      destination: {},
      service: "PassthroughCluster",
      upstream: `${dst.address}:${dst.port}`,
      mtls: false,
      sentBytes: 0,
      receivedBytes: 0,
      durationMs: 0,
    };
    this.telemetry.tcpOpen(rec);
    s.pause();
    let flag: string | undefined;
    let connected = false;
    const up = netConnect({ host: dst.address, port: dst.port });
    up.setNoDelay(true);
    up.setTimeout(CONNECT_TIMEOUT_MS, () => {
      flag ??= "UPSTREAM_FAILURE";
      up.destroy();
    });
    up.once("connect", () => {
      connected = true;
      up.setTimeout(0);
      s.pipe(up);
      up.pipe(s);
      s.resume();
    });
    const end = (e?: Error | null) => {
      if (e && !flag) flag = connected ? "CONNECTION_RESET" : "UPSTREAM_FAILURE";
      s.destroy();
      up.destroy();
    };
    s.on("error", end);
    up.on("error", end);
    up.once("close", () => end());
    s.once("close", () => {
      end();
      if (flag) rec.flag = flag;
      rec.sentBytes = s.bytesWritten;
      rec.receivedBytes = s.bytesRead;
      rec.durationMs = Date.now() - start;
      this.telemetry.tcpClose(rec);
    });
  }

  /** Opaque TCP: one mutual-TLS connection to an endpoint per client connection, piped both ways. */
  private tcp(s: Socket, route: Route): void {
    const start = Date.now();
    const self = this.state.snapshot!.workload;
    const ep = this.pick(route);
    const rec: TcpRecord = {
      reporter: "source",
      source: workloadPeer(self),
      destination: ep ? route.endpoint(ep).destination : {},
      service: route.fqdn,
      mtls: true,
      sentBytes: 0,
      receivedBytes: 0,
      durationMs: 0,
    };
    const close = (flag?: string) => {
      if (flag) rec.flag = flag;
      rec.sentBytes = s.bytesWritten;
      rec.receivedBytes = s.bytesRead;
      rec.durationMs = Date.now() - start;
      this.telemetry.tcpClose(rec);
    };
    if (!ep) {
      s.destroy();
      return close("UPSTREAM_FAILURE");
    }
    this.telemetry.tcpOpen(rec);
    s.pause();
    this.dial(
      ep.address,
      route.targetPort,
      [ALPN_TCP],
      () => this.state.current(route),
      (err, up) => {
        if (err || !up) {
          s.destroy();
          return close(
            err instanceof ZmeshError && err.code === "ZMESH_SECURE_NAMING"
              ? "SECURE_NAMING"
              : "UPSTREAM_FAILURE",
          );
        }
        let flag: string | undefined;
        s.pipe(up);
        up.pipe(s);
        s.resume();
        const end = (e?: Error | null) => {
          if (e && !flag) flag = "CONNECTION_RESET";
          s.destroy();
          up.destroy();
        };
        s.once("close", () => {
          end();
          close(flag);
        });
        up.once("close", () => end());
        s.on("error", end);
        up.on("error", end);
      },
    );
  }

  /** The captured socket's original destination, read once per connection. */
  private destination(s: Duplex): Destination | undefined {
    let d = this.dsts.get(s);
    if (!d) {
      try {
        d = this.originalDst(s as Socket);
        this.dsts.set(s, d);
      } catch (e) {
        this.log.warn({ err: (e as Error).message }, "outbound connection without original destination");
      }
    }
    return d;
  }

  /** Mutual TLS to an endpoint with the current SVID (dial.ts). */
  private dial(
    host: string,
    port: number,
    alpn: string[],
    route: () => Route | undefined,
    cb: (err: Error | null, sock: TLSSocket | null) => void,
    onread?: ReadHook["onread"],
  ): void {
    dialMtls(this.state, this.sessions, host, port, alpn, route, cb, onread);
  }

  private pick(route: Route, exclude?: string): SnapshotEndpoint | undefined {
    return this.balancer.pick(route.service.endpoints, exclude);
  }

  request(conn: Http1Conn, head: RequestHead): void {
    const start = performance.now();
    const requestId = field(head, "x-request-id") || randomUUID();
    const dst = this.destination(conn.sock);
    const self = this.state.snapshot?.workload;
    // One shape for every record (see inbound.ts): no spread of optional parts.
    const record: HttpRecord = {
      reporter: "source",
      requestId,
      source: this.selfPeer(),
      destination: {},
      service: undefined,
      method: head.method,
      path: head.target,
      protocol: "http",
      status: 0,
      mtls: true,
      durationMs: 0,
      requestBytes: 0,
      responseBytes: 0,
      upstream: dst ? `${dst.address}:${dst.port}` : undefined,
    };
    this.state.inflight++;
    const finish = (r: Partial<HttpRecord>, flag?: Flag) => {
      this.state.inflight--;
      Object.assign(record, r);
      if (flag) {
        record.flag = flag;
        record.status = FLAGS[flag].status;
        conn.reject(flag, requestId);
      }
      record.durationMs = performance.now() - start;
      this.telemetry.http(record);
    };
    if (!dst || !self) return finish({}, "NOT_READY");
    const route = this.state.route(dst.address, dst.port);
    if (!route) return finish({ service: "BlackHoleCluster" }, "NO_ROUTE");
    record.service = route.fqdn;
    const first = this.pick(route);
    if (!first) return finish({ reason: "the service has no endpoints" }, "UPSTREAM_FAILURE");
    const headBytes = requestHeadFor(head, head.target, DROP, [
      "x-request-id",
      requestId,
      SOURCE_WORKLOAD_HEADER,
      self.name,
    ]);
    // An idempotent request without a body is retried once, on another endpoint, when the first
    // could not be reached: nothing was sent to the app, so nothing can happen twice.
    const retryable = !conn.hasBody && IDEMPOTENT.has(head.method);
    const attempt = (route: Route, ep: SnapshotEndpoint, retried: boolean) => {
      const at = route.endpoint(ep);
      record.upstream = at.upstream;
      record.destination = at.destination;
      this.balancer.started(ep.address);
      conn.forward(this.poolOf(route, ep, at), headBytes, (r) => {
        if (!r.error) {
          this.balancer.finished(ep.address, false);
          return finish({ status: r.status, requestBytes: r.requestBytes, responseBytes: r.responseBytes });
        }
        const naming = r.error instanceof ZmeshError && r.error.code === "ZMESH_SECURE_NAMING";
        // A config may have come since the request began: a retry goes to its endpoints, and the
        // failure of an endpoint it removed is not held (its prune dropped that endpoint's state).
        const now = this.state.afterConfig(route, ep.address);
        this.balancer.finished(ep.address, r.status === 0 && !naming && now.live);
        const next =
          now.route && retryable && !retried && !naming && r.status === 0 && !r.flag
            ? this.pick(now.route, ep.address)
            : undefined;
        if (next) return attempt(now.route!, next, true);
        finish({ err: r.error.message }, naming ? "SECURE_NAMING" : (r.flag ?? "UPSTREAM_FAILURE"));
      });
    };
    attempt(route, first, false);
  }

  /** An upgrade (WebSocket): its own mutual-TLS connection to an endpoint, then bytes both ways. */
  upgrade(sock: Duplex, req: UpgradeRequest, head: Buffer): void {
    const requestId = req.headers["x-request-id"] || randomUUID();
    const dst = this.destination(sock);
    const route = dst ? this.state.route(dst.address, dst.port) : undefined;
    const ep = route ? this.pick(route) : undefined;
    const self = this.state.snapshot?.workload;
    if (!route || !ep || !self) return rescueUpgrade(sock, "NO_ROUTE", requestId);
    this.dial(
      ep.address,
      route.targetPort,
      ["http/1.1"],
      () => this.state.current(route),
      (err, up) => {
        if (err || !up) return rescueUpgrade(sock, "UPSTREAM_FAILURE", requestId);
        up.write(
          upgradeHead(req.method, req.url, req.headers, {
            "x-request-id": requestId,
            [SOURCE_WORKLOAD_HEADER]: self.name,
          }),
        );
        if (head.length > 0) up.write(head);
        splice(sock, up, () => {});
      },
    );
  }

  /**
   * A new config routes to the endpoints of `live` only (called once per config, ProxyState's
   * `onNewRoutes`): the pools of the others are shut down (idle connections close now, busy ones
   * after their exchange, so requests in flight complete) and forgotten, the HTTP/2 sessions to
   * them retired, and the balancer forgets their failures. An endpoint that comes back later gets
   * a new pool, whose connections are dialled and checked anew.
   */
  prune(live: LiveEndpoints): void {
    for (const [key, held] of this.pools) {
      if (!live.keys.has(key)) {
        this.pools.delete(key);
        held.pool.shutdown();
        continue;
      }
      // A kept pool moves to the config's route now (not at its next request, and not by a retry
      // of an older config's request): connections checked against identities that changed retire.
      const now = this.state.current(held.route);
      if (now !== undefined && now !== held.route)
        held.route = followRoute(held.route, now, () => held.pool.retire());
    }
    this.h2.prune(live.keys); // HTTP/2 hook
    this.balancer.prune(live.addresses);
  }

  /** Per-endpoint entries held: HTTP/1.1 pools, HTTP/2 routes and sessions, balancer failures (tests). */
  get held(): { pools: number; h2Routes: number; h2Sessions: number; balancer: number } {
    const h2 = this.h2.held;
    return {
      pools: this.pools.size,
      h2Routes: h2.routes,
      h2Sessions: h2.sessions,
      balancer: this.balancer.held,
    };
  }

  /**
   * A drain: no new connections; HTTP/1.1 responses say `connection: close`, HTTP/2 clients get
   * GOAWAY now. The app's idle keep-alive connections stay open: they are its only way out while
   * it shuts down alongside its proxy.
   */
  drain(): void {
    this.server.close();
    this.h2.drain(); // HTTP/2 hook
  }

  async close(): Promise<void> {
    this.server.close();
    this.h1.close();
    this.h2.close(); // HTTP/2 hook
    for (const p of this.pools.values()) p.pool.close();
  }
}
