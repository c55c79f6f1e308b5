// Outbound (:15001 on 127.0.0.1): the app's connections to service VIPs are redirected here.
// Each HTTP request goes to an endpoint of the service over mutual TLS, and the connection is
// used only if the server proves a SPIFFE ID the service may run as (secure naming).

import { randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Socket } from "node:net";
import { connect as tlsConnect } from "node:tls";
import { type buildConnector, Pool } from "undici";
import type { SnapshotEndpoint } from "../api/index.js";
import type { Logger } from "../diag/index.js";
import { ZmeshError } from "../errors/index.js";
import { peerSpiffeId, principalOf } from "../identity/index.js";
import { forwardable, SOURCE_WORKLOAD_HEADER } from "./headers.js";
import type { Destination, OriginalDst } from "./origdst.js";
import { relay } from "./relay.js";
import { FLAGS, type Flag, rescueHttp } from "./rescue.js";
import type { ProxyState, Route } from "./state.js";
import type { HttpRecord, Telemetry } from "./telemetry.js";

const CONNECT_TIMEOUT_MS = 5_000;

export class Outbound {
  readonly server: Server;
  private readonly dsts = new WeakMap<Socket, Destination>();
  private readonly pools = new Map<string, Pool>();
  private readonly rr = new Map<string, number>();

  constructor(
    private readonly state: ProxyState,
    private readonly originalDst: OriginalDst,
    private readonly log: Logger,
    private readonly telemetry: Telemetry,
  ) {
    this.server = createServer({ keepAliveTimeout: 60_000 }, (req, res) => this.request(req, res));
    this.server.on("connection", (s: Socket) => {
      s.setNoDelay(true);
      if (!this.state.ready) s.destroy(); // fail closed until cert and config are here
    });
  }

  /** The captured socket's original destination, read once per connection. */
  private destination(s: Socket): Destination | undefined {
    let d = this.dsts.get(s);
    if (!d) {
      try {
        d = this.originalDst(s);
        this.dsts.set(s, d);
      } catch (e) {
        this.log.warn({ err: (e as Error).message }, "outbound connection without original destination");
      }
    }
    return d;
  }

  /** A connector that does mTLS with the current SVID and checks the server's SPIFFE ID. */
  private connector(route: () => Route | undefined): buildConnector.connector {
    return (opts, cb) => {
      const cert = this.state.cert;
      const bundle = this.state.trustBundlePem;
      if (!cert || !bundle) return cb(new ZmeshError("ZMESH_NOT_READY", "no certificate yet"), null);
      let done = false;
      const finish = (err: Error | null, sock: Socket | null) => {
        if (done) return;
        done = true;
        cb(err as Error, sock as never);
      };
      const sock = tlsConnect({
        host: opts.hostname,
        port: Number(opts.port),
        key: cert.keyPem,
        cert: cert.chainPem.join(""),
        ca: bundle,
        minVersion: "TLSv1.3",
        ALPNProtocols: ["http/1.1"],
        // SVIDs carry a URI SAN, not a DNS name: the identity check is done below instead.
        checkServerIdentity: () => undefined,
      });
      sock.setNoDelay(true);
      sock.setTimeout(CONNECT_TIMEOUT_MS, () => {
        sock.destroy();
        finish(new Error(`connect timeout after ${CONNECT_TIMEOUT_MS} ms`), null);
      });
      sock.once("secureConnect", () => {
        sock.setTimeout(0);
        const r = route();
        try {
          const id = peerSpiffeId(sock.getPeerX509Certificate());
          if (!r?.allowed.has(id)) {
            throw new ZmeshError(
              "ZMESH_SECURE_NAMING",
              `${opts.hostname}:${opts.port} presented ${id}, which service ${r?.service.namespace}/${r?.service.name} may not run as`,
            );
          }
          finish(null, sock);
        } catch (e) {
          sock.destroy();
          finish(e as Error, null);
        }
      });
      sock.once("error", (e) => finish(e, null));
    };
  }

  private pool(route: Route, address: string): Pool {
    const svc = `${route.service.namespace}/${route.service.name}`;
    const key = `${svc}|${address}:${route.targetPort}`;
    let pool = this.pools.get(key);
    if (!pool) {
      const port = route.service.ports.find((p) => p.targetPort === route.targetPort)?.port ?? 0;
      const vip = route.service.vip;
      pool = new Pool(`http://${address}:${route.targetPort}`, {
        connections: 64,
        pipelining: 1,
        connect: this.connector(() => this.state.route(vip, port)),
      });
      this.pools.set(key, pool);
    }
    return pool;
  }

  private pick(route: Route): SnapshotEndpoint | undefined {
    const eps = route.service.endpoints;
    if (eps.length === 0) return undefined;
    const key = `${route.service.namespace}/${route.service.name}`;
    const i = (this.rr.get(key) ?? 0) % eps.length;
    this.rr.set(key, i + 1);
    return eps[i];
  }

  private request(req: IncomingMessage, res: ServerResponse): void {
    const start = process.hrtime.bigint();
    const requestId = (req.headers["x-request-id"] as string | undefined) || randomUUID();
    const dst = this.destination(req.socket);
    const self = this.state.snapshot?.workload;
    const record: HttpRecord = {
      reporter: "source",
      requestId,
      source: self
        ? { principal: principalOf(self.spiffeId), workload: self.name, namespace: self.namespace }
        : {},
      destination: {},
      method: req.method,
      path: req.url,
      protocol: "http",
      status: 0,
      mtls: true,
      durationMs: 0,
      requestBytes: 0,
      responseBytes: 0,
      ...(dst ? { upstream: `${dst.address}:${dst.port}` } : {}),
    };
    const finish = (r: Partial<HttpRecord>, flag?: Flag) => {
      Object.assign(record, r);
      if (flag) {
        record.flag = flag;
        record.status = FLAGS[flag].status;
        rescueHttp(res, flag, requestId);
      }
      record.durationMs = Number(process.hrtime.bigint() - start) / 1e6;
      this.telemetry.http(record);
    };
    if (!dst || !self) return finish({}, "NOT_READY");
    const route = this.state.route(dst.address, dst.port);
    if (!route) return finish({}, "NO_ROUTE");
    record.service = `${route.service.name}.${route.service.namespace}.svc.cluster.local`;
    const ep = this.pick(route);
    if (!ep) return finish({ reason: "the service has no endpoints" }, "UPSTREAM_FAILURE");
    record.upstream = `${ep.address}:${route.targetPort}`;
    record.destination = {
      principal: principalOf(ep.spiffeId),
      workload: ep.workload,
      namespace: route.service.namespace,
    };
    const headers = forwardable(req.headers, true);
    headers["x-request-id"] = requestId;
    headers[SOURCE_WORKLOAD_HEADER] = self.name;
    relay(this.pool(route, ep.address), req, res, req.url ?? "/", headers, (r) => {
      if (r.error) {
        const naming = r.error instanceof ZmeshError && r.error.code === "ZMESH_SECURE_NAMING";
        return finish({ err: r.error.message }, naming ? "SECURE_NAMING" : "UPSTREAM_FAILURE");
      }
      finish({ status: r.status, requestBytes: r.requestBytes, responseBytes: r.responseBytes });
    });
  }

  async close(): Promise<void> {
    this.server.close();
    this.server.closeAllConnections();
    await Promise.all([...this.pools.values()].map((p) => p.close()));
  }
}
