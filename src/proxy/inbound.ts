// Inbound (:15006): every connection redirected to this workload arrives here. It must complete
// mutual TLS with a certificate from the mesh CA (no plaintext path exists), then each HTTP
// request is authorized by the policy engine and forwarded to the app on 127.0.0.1.

import { randomUUID } from "node:crypto";
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from "node:http";
import { createServer as createNetServer, type Server, type Socket } from "node:net";
import { pipeline } from "node:stream";
import { createServer as createTlsServer, type TLSSocket } from "node:tls";
import { Pool } from "undici";
import type { Logger } from "../diag/index.js";
import { peerSpiffeId, principalOf } from "../identity/index.js";
import { evaluate, normalizePath } from "../policy/index.js";
import { forwardable, responseHeaders } from "./headers.js";
import type { OriginalDst } from "./origdst.js";
import { rescueHttp } from "./rescue.js";
import type { Certificate, ProxyState } from "./state.js";

interface Peer {
  spiffeId: string;
  principal: string;
  namespace: string | undefined;
  remoteAddress: string;
  port: number;
}

const HANDSHAKE_TIMEOUT_MS = 10_000;

export class Inbound {
  readonly server: Server;
  private readonly http = createHttpServer({ keepAliveTimeout: 60_000 });
  /**
   * TLS is a tls.Server fed the accepted sockets, not a bare TLSSocket: only a tls.Server checks
   * the client certificate's verification result (a bare server TLSSocket completes the handshake
   * with any certificate). It does not reject by itself either: we do, so the reason is logged.
   */
  private readonly tls = createTlsServer({
    requestCert: true,
    rejectUnauthorized: false,
    ALPNProtocols: ["http/1.1"],
    minVersion: "TLSv1.3",
    handshakeTimeout: HANDSHAKE_TIMEOUT_MS,
  });
  private tlsFor: Certificate | undefined;
  private tlsBundle: string | undefined;
  /** Original destination port of each accepted connection, by its remote address and port. */
  private readonly dstPorts = new Map<string, number>();
  private readonly peers = new WeakMap<Socket, Peer>();
  private readonly apps = new Map<number, Pool>();

  constructor(
    private readonly state: ProxyState,
    private readonly originalDst: OriginalDst,
    private readonly log: Logger,
    /** Where the app listens; the port comes from the original destination. */
    private readonly appHost = "127.0.0.1",
  ) {
    this.server = createNetServer((s) => this.accept(s));
    this.tls.on("secureConnection", (s: TLSSocket) => this.secured(s));
    this.tls.on("tlsClientError", (e: Error, s: TLSSocket) => {
      this.log.info(
        { remote: s.remoteAddress, err: e.message },
        "inbound connection refused: mTLS handshake failed",
      );
    });
    this.http.on("request", (req, res) => this.request(req, res));
    this.http.on("clientError", (_e, sock: Socket) => {
      if (sock.writable)
        sock.end("HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
      else sock.destroy();
    });
  }

  /** Keeps the TLS server on the current SVID and trust bundle (new connections only). */
  private refreshTls(): boolean {
    const cert = this.state.cert;
    const bundle = this.state.trustBundlePem;
    if (!cert || !bundle) return false;
    if (cert !== this.tlsFor || bundle !== this.tlsBundle) {
      this.tls.setSecureContext({
        key: cert.keyPem,
        cert: cert.chainPem.join(""),
        ca: bundle,
        minVersion: "TLSv1.3",
      });
      this.tlsFor = cert;
      this.tlsBundle = bundle;
    }
    return true;
  }

  private accept(raw: Socket): void {
    raw.on("error", () => raw.destroy());
    if (!this.state.ready || !this.refreshTls()) {
      raw.destroy(); // fail closed: no certificate or no policy yet
      return;
    }
    let port: number;
    try {
      port = this.originalDst(raw).port;
    } catch (e) {
      this.log.warn({ err: (e as Error).message }, "inbound connection without original destination dropped");
      raw.destroy();
      return;
    }
    raw.setNoDelay(true);
    const key = `${raw.remoteAddress}|${raw.remotePort}`;
    this.dstPorts.set(key, port);
    raw.once("close", () => this.dstPorts.delete(key));
    this.tls.emit("connection", raw);
  }

  private secured(tls: TLSSocket): void {
    const refuse = (err: string) => {
      this.log.info(
        { remote: tls.remoteAddress, err },
        "inbound connection refused: client certificate not accepted",
      );
      tls.destroy();
    };
    if (!tls.authorized)
      return refuse(`certificate verification failed: ${tls.authorizationError ?? "no certificate"}`);
    const port = this.dstPorts.get(`${tls.remoteAddress}|${tls.remotePort}`);
    if (port === undefined) return refuse("original destination unknown");
    let spiffeId: string;
    try {
      spiffeId = peerSpiffeId(tls.getPeerX509Certificate());
    } catch (e) {
      return refuse((e as Error).message);
    }
    const principal = principalOf(spiffeId);
    const ns = /\/ns\/([^/]+)\//.exec(principal)?.[1];
    this.peers.set(tls, { spiffeId, principal, namespace: ns, remoteAddress: tls.remoteAddress ?? "", port });
    this.http.emit("connection", tls);
  }

  private app(port: number): Pool {
    let pool = this.apps.get(port);
    if (!pool) {
      pool = new Pool(`http://${this.appHost}:${port}`, { connections: 64, pipelining: 1 });
      this.apps.set(port, pool);
    }
    return pool;
  }

  private request(req: IncomingMessage, res: ServerResponse): void {
    const start = process.hrtime.bigint();
    const peer = this.peers.get(req.socket);
    const requestId = (req.headers["x-request-id"] as string | undefined) || randomUUID();
    const policies = this.state.policies;
    if (!peer || !policies || !this.state.snapshot) return rescueHttp(res, "NOT_READY", requestId);
    const norm = normalizePath(req.url ?? "");
    const access = {
      direction: "inbound",
      requestId,
      source: peer.spiffeId,
      destination: this.state.snapshot.workload.spiffeId,
      mtls: true,
      method: req.method,
      path: norm.ok ? norm.path : req.url,
      port: peer.port,
    };
    if (!norm.ok) {
      this.log.info(
        { ...access, decision: "deny", reason: norm.reason, status: 400, flag: "BAD_REQUEST" },
        "access",
      );
      return rescueHttp(res, "BAD_REQUEST", requestId);
    }
    const decision = evaluate(policies, {
      principal: peer.principal,
      ...(peer.namespace !== undefined ? { namespace: peer.namespace } : {}),
      sourceIp: peer.remoteAddress,
      destinationPort: peer.port,
      http: {
        method: req.method ?? "",
        path: norm.path,
        host: req.headers.host ?? "",
        headers: req.headers as Record<string, string | undefined>,
      },
    });
    const verdict = {
      decision: decision.allowed ? "allow" : "deny",
      policy: decision.policy,
      rule: decision.rule,
      reason: decision.reason,
    };
    if (!decision.allowed) {
      this.log.info({ ...access, ...verdict, status: 403, flag: "RBAC_DENIED" }, "access");
      return rescueHttp(res, "RBAC_DENIED", requestId);
    }
    const headers = forwardable(req.headers, true);
    headers["x-request-id"] = requestId;
    headers["x-forwarded-client-cert"] = `By=${this.state.snapshot.workload.spiffeId};URI=${peer.spiffeId}`;
    const hasBody =
      req.headers["content-length"] !== undefined || req.headers["transfer-encoding"] !== undefined;
    this.app(peer.port)
      .request({
        path: norm.query ? `${norm.path}?${norm.query}` : norm.path,
        method: req.method as "GET",
        headers,
        body: hasBody ? req : null,
      })
      .then(
        (up) => {
          res.writeHead(up.statusCode, responseHeaders(up.headers));
          pipeline(up.body, res, () => {
            const ms = Number(process.hrtime.bigint() - start) / 1e6;
            this.log.info({ ...access, ...verdict, status: up.statusCode, durationMs: ms }, "access");
          });
        },
        (e: Error) => {
          this.log.warn(
            { ...access, ...verdict, status: 503, flag: "UPSTREAM_FAILURE", err: e.message },
            "access",
          );
          rescueHttp(res, "UPSTREAM_FAILURE", requestId);
        },
      );
  }

  async close(): Promise<void> {
    this.server.close();
    this.http.closeAllConnections();
    await Promise.all([...this.apps.values()].map((p) => p.close()));
  }
}
