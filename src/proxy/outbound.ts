// Outbound (:15001 on 127.0.0.1): the app's connections to service VIPs are redirected here.
// Each HTTP request goes to an endpoint of the service over mutual TLS, and the connection is
// used only if the server proves a SPIFFE ID the service may run as (secure naming).

import { randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Socket } from "node:net";
import { pipeline } from "node:stream";
import { connect as tlsConnect } from "node:tls";
import { type buildConnector, Pool } from "undici";
import type { Logger } from "../diag/index.js";
import { ZmeshError } from "../errors/index.js";
import { peerSpiffeId } from "../identity/index.js";
import { forwardable, responseHeaders } from "./headers.js";
import type { Destination, OriginalDst } from "./origdst.js";
import { type Flag, rescueHttp } from "./rescue.js";
import type { ProxyState, Route } from "./state.js";

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

  private pick(route: Route): string | undefined {
    const eps = route.service.endpoints;
    if (eps.length === 0) return undefined;
    const key = `${route.service.namespace}/${route.service.name}`;
    const i = (this.rr.get(key) ?? 0) % eps.length;
    this.rr.set(key, i + 1);
    return eps[i]!.address;
  }

  private request(req: IncomingMessage, res: ServerResponse): void {
    const start = process.hrtime.bigint();
    const requestId = (req.headers["x-request-id"] as string | undefined) || randomUUID();
    const dst = this.destination(req.socket);
    const access = {
      direction: "outbound",
      requestId,
      source: this.state.snapshot?.workload.spiffeId,
      method: req.method,
      path: req.url,
      dst: dst ? `${dst.address}:${dst.port}` : undefined,
    };
    const fail = (flag: Flag, extra: Record<string, unknown> = {}) => {
      this.log.info({ ...access, flag, ...extra }, "access");
      rescueHttp(res, flag, requestId);
    };
    if (!dst) return fail("NOT_READY");
    const route = this.state.route(dst.address, dst.port);
    if (!route) return fail("NO_ROUTE");
    const address = this.pick(route);
    if (!address) return fail("UPSTREAM_FAILURE", { reason: "service has no endpoints" });
    const headers = forwardable(req.headers, true);
    headers["x-request-id"] = requestId;
    const hasBody =
      req.headers["content-length"] !== undefined || req.headers["transfer-encoding"] !== undefined;
    const service = `${route.service.name}.${route.service.namespace}`;
    this.pool(route, address)
      .request({ path: req.url ?? "/", method: req.method as "GET", headers, body: hasBody ? req : null })
      .then(
        (up) => {
          res.writeHead(up.statusCode, responseHeaders(up.headers));
          pipeline(up.body, res, () => {
            const ms = Number(process.hrtime.bigint() - start) / 1e6;
            this.log.info(
              { ...access, service, upstream: address, status: up.statusCode, durationMs: ms },
              "access",
            );
          });
        },
        (e: Error & { code?: string }) => {
          const naming = e instanceof ZmeshError && e.code === "ZMESH_SECURE_NAMING";
          fail(naming ? "SECURE_NAMING" : "UPSTREAM_FAILURE", { service, upstream: address, err: e.message });
        },
      );
  }

  async close(): Promise<void> {
    this.server.close();
    this.server.closeAllConnections();
    await Promise.all([...this.pools.values()].map((p) => p.close()));
  }
}
