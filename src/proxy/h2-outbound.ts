// Outbound HTTP/2 (and gRPC): an app connection that speaks h2c with prior knowledge (told by its
// Service port or by the connection preface) is served by an HTTP/2 server session here; each of
// its streams goes to an endpoint picked by the shared balancer, over a pooled HTTP/2 session per
// endpoint on mutual TLS (ALPN h2), opened through the same dial and secure-naming check as
// HTTP/1.1. A connect failure is retried once on another endpoint: no byte of the stream left yet.
// A new config that changes the identities a service may run as retires its pooled sessions;
// one that drops an endpoint retires its session and forgets it (`prune`). It owns the session
// pool and the route each session was last reached through, both by endpoint key.

import {
  type Http2Session,
  connect as h2connect,
  type IncomingHttpHeaders,
  type ServerHttp2Stream,
} from "node:http2";
import type { Socket } from "node:net";
import type { TLSSocket } from "node:tls";
import type { SnapshotEndpoint } from "../api/index.js";
import type { Logger } from "../diag/index.js";
import { ZmeshError } from "../errors/index.js";
import type { Balancer } from "./balancer.js";
import {
  finishRelayed,
  H2_MAX_SESSION_MEMORY,
  H2_SETTINGS,
  h2RequestHeaders,
  isGrpc,
  type Replay,
  relayStream,
  requestIdOf,
  ServedSessions,
  SessionPool,
  streamEnd,
  whenConnected,
} from "./h2.js";
import { SOURCE_WORKLOAD_HEADER } from "./headers.js";
import type { Destination } from "./origdst.js";
import { workloadPeer } from "./principal.js";
import { ALPN_H2 } from "./sniff.js";
import { followRoute, type ProxyState, type Route } from "./state.js";
import type { HttpRecord, Telemetry } from "./telemetry.js";

/** Outbound's mutual-TLS dial with its secure-naming check (see Outbound.dial). */
export type Dial = (
  host: string,
  port: number,
  alpn: string[],
  route: () => Route | undefined,
  cb: (err: Error | null, sock: TLSSocket | null) => void,
) => void;

export class H2Outbound {
  private readonly pool = new SessionPool();
  /** The route each pooled session (by endpoint key) was last reached through. */
  private readonly routes = new Map<string, Route>();
  private readonly sessions: ServedSessions<Destination>;

  constructor(
    private readonly state: ProxyState,
    private readonly log: Logger,
    private readonly telemetry: Telemetry,
    private readonly balancer: Balancer,
    private readonly dial: Dial,
  ) {
    this.sessions = new ServedSessions<Destination>(
      (s, h) => this.stream(s, h),
      () => {},
    );
  }

  /** Serves an app connection (already told to be h2c) as an HTTP/2 server session. */
  accept(sock: Socket, dst: Destination): void {
    this.sessions.serve(sock, dst);
  }

  private key(route: Route, ep: SnapshotEndpoint): string {
    return route.endpoint(ep).key;
  }

  private session(route: Route, ep: SnapshotEndpoint) {
    const key = this.key(route, ep);
    // A new config changed the identities the service may run as: the session whose dial checked
    // the old set takes no new stream (its open ones finish), the next one dials and checks the
    // new set (as Outbound.poolOf retires HTTP/1.1 connections). Compared once per new route.
    // Only the config's current route counts: a stream begun under an older config (a retry) must
    // not retire the session the current set checked (each dial checks the current set).
    const last = this.routes.get(key);
    if (last !== route) {
      const live = this.state.current(route);
      if (last === undefined) this.routes.set(key, live ?? route);
      else if (live === route)
        this.routes.set(
          key,
          followRoute(last, route, () => this.pool.retire(key)),
        );
    }
    return this.pool.get(key, () =>
      new Promise<TLSSocket>((resolve, reject) =>
        this.dial(
          ep.address,
          route.targetPort,
          [ALPN_H2],
          () => this.state.current(route),
          (err, sock) => (err || !sock ? reject(err ?? new Error("dial failed")) : resolve(sock)),
        ),
      ).then((sock) => {
        if (sock.alpnProtocol !== ALPN_H2) {
          sock.destroy();
          throw new Error(`${ep.address}:${route.targetPort} did not agree to HTTP/2 (ALPN h2)`);
        }
        return whenConnected(
          h2connect(`https://${ep.address}:${route.targetPort}`, {
            createConnection: () => sock,
            settings: H2_SETTINGS,
            maxSessionMemory: H2_MAX_SESSION_MEMORY,
          }),
        );
      }),
    );
  }

  private stream(down: ServerHttp2Stream, headers: IncomingHttpHeaders): void {
    const start = process.hrtime.bigint();
    const requestId = requestIdOf(headers);
    const grpc = isGrpc(headers);
    const dst = this.sessions.contextOf(down.session as Http2Session);
    const self = this.state.snapshot?.workload;
    down.on("error", () => {});
    const record: HttpRecord = {
      reporter: "source",
      requestId,
      source: self ? workloadPeer(self) : {},
      destination: {},
      method: headers[":method"],
      path: headers[":path"],
      protocol: grpc ? "grpc" : "http",
      http2: true,
      status: 0,
      mtls: true,
      durationMs: 0,
      requestBytes: 0,
      responseBytes: 0,
      upstream: dst ? `${dst.address}:${dst.port}` : undefined,
    };
    this.state.inflight++;
    // Draining: this stream is served, then the session ends with GOAWAY (the app reconnects elsewhere).
    if (this.state.draining) down.session?.close();
    const { finish, bug } = streamEnd(this.state, this.telemetry, this.log, {
      down,
      record,
      requestId,
      grpc,
      start,
    });
    if (!dst || !self) return finish({}, "NOT_READY");
    const route = this.state.route(dst.address, dst.port);
    if (!route) return finish({ service: "BlackHoleCluster" }, "NO_ROUTE");
    record.service = route.fqdn;
    const first = this.balancer.pick(route.service.endpoints);
    if (!first) return finish({ reason: "the service has no endpoints" }, "UPSTREAM_FAILURE");
    const out = h2RequestHeaders(headers, true);
    out["x-request-id"] = requestId;
    out[SOURCE_WORKLOAD_HEADER] = self.name;
    const attempt = (route: Route, ep: SnapshotEndpoint, retried: boolean, replay?: Replay) => {
      const at = route.endpoint(ep);
      record.upstream = at.upstream;
      record.destination = at.destination;
      this.balancer.started(ep.address);
      this.session(route, ep)
        .then(
          (session) =>
            relayStream(
              down,
              session,
              out,
              (r) => {
                this.balancer.finished(ep.address, false);
                if ((r.notSent || r.refused) && !retried) {
                  // notSent: the pooled session was closing (GOAWAY, idle close); refused: never
                  // processed (RFC 9113 section 8.7), so sent once more whatever the method. On
                  // another endpoint if there is one (of the config now: one may have come since
                  // the stream began), else on a new session to this one if it is still routed.
                  this.pool.drop(this.key(route, ep), session);
                  const now = this.state.afterConfig(route, ep.address);
                  const other =
                    now.route &&
                    (this.balancer.pick(now.route.service.endpoints, r.refused ? ep.address : undefined) ??
                      (now.live ? ep : undefined));
                  if (other) return attempt(now.route!, other, true, r.refused);
                }
                finishRelayed(down, r, finish, "the app");
              },
              replay,
            ),
          (e: Error) => {
            // The session could not be opened: nothing of this stream was sent anywhere yet.
            const naming = e instanceof ZmeshError && e.code === "ZMESH_SECURE_NAMING";
            // As for HTTP/1.1: a retry goes to the config of now, a removed endpoint's failure is not held.
            const now = this.state.afterConfig(route, ep.address);
            this.balancer.finished(ep.address, !naming && now.live);
            if (naming)
              this.log.warn({ requestId, err: e.message }, "outbound HTTP/2: secure naming refused");
            const next =
              now.route && !retried && !naming
                ? this.balancer.pick(now.route.service.endpoints, ep.address)
                : undefined;
            if (next && !down.closed) return attempt(now.route!, next, true);
            finish({ err: e.message }, naming ? "SECURE_NAMING" : "UPSTREAM_FAILURE");
          },
        )
        .catch(bug);
    };
    attempt(route, first, false);
  }

  /**
   * A new config routes to the endpoints of `live` only: the sessions to others are retired
   * (their open streams finish) and their routes forgotten.
   */
  prune(live: Pick<ReadonlySet<string>, "has">): void {
    for (const [key, route] of this.routes) {
      if (!live.has(key)) {
        this.routes.delete(key);
        continue;
      }
      // As Outbound.prune: a kept session moves to the config's route now, and retires if the
      // identities its dial checked changed.
      const now = this.state.current(route);
      if (now !== undefined && now !== route)
        this.routes.set(
          key,
          followRoute(route, now, () => this.pool.retire(key)),
        );
    }
    this.pool.prune(live);
  }

  /** Endpoint keys held: routes, and sessions open or opening (tests). */
  get held(): { routes: number; sessions: number } {
    return { routes: this.routes.size, sessions: this.pool.size };
  }

  /** A drain: GOAWAY to every served session now (ServedSessions.drain). */
  drain(): void {
    this.sessions.drain();
  }

  close(): void {
    this.sessions.close();
    this.pool.close();
  }
}
