// Inbound (:15006): every connection redirected to this workload arrives here. It must complete
// mutual TLS with a certificate from the mesh CA (no plaintext path exists), then each HTTP
// request is authorized by the policy engine and forwarded to the app on 127.0.0.1.

import { randomUUID } from "node:crypto";
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from "node:http";
import { connect, createServer as createNetServer, type Server, type Socket } from "node:net";
import { createServer as createTlsServer, type TLSSocket } from "node:tls";
import { Pool } from "undici";
import { PORTS } from "../config/index.js";
import type { Logger } from "../diag/index.js";
import { peerSpiffeId, principalOf } from "../identity/index.js";
import { authenticateJwt, evaluate, normalizePath, type RequestAuth } from "../policy/index.js";
import { forwardable, SOURCE_WORKLOAD_HEADER } from "./headers.js";
import type { OriginalDst } from "./origdst.js";
import { relay } from "./relay.js";
import { FLAGS, type Flag, rescueHttp } from "./rescue.js";
import { ALPN_TCP, looksLikeHttp, SNIFF_MS, sniff } from "./sniff.js";
import type { Certificate, ProxyState } from "./state.js";
import type { HttpRecord, TcpRecord, Telemetry } from "./telemetry.js";
import { refuseUpgrade, splice, upgradeHead } from "./upgrade.js";

interface Peer {
  /** Empty for a plaintext peer (PERMISSIVE or DISABLE ports). */
  spiffeId: string;
  /** SHA-256 of the peer certificate's DER, hex (XFCC's Hash). */
  certHash: string;
  principal: string | undefined;
  namespace: string | undefined;
  mtls: boolean;
  remoteAddress: string;
  port: number;
}

const HANDSHAKE_TIMEOUT_MS = 10_000;
const PROXY_PORTS = new Set<number>([PORTS.proxyAdmin, PORTS.outboundCapture, PORTS.inboundCapture]);

/** X-Forwarded-Client-Cert as Envoy writes it: who we are, the peer certificate's hash and its URI. */
function xfcc(self: string, peer: Peer): string {
  return `By=${self};Hash=${peer.certHash};Subject="";URI=${peer.spiffeId}`;
}

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
    ALPNProtocols: ["http/1.1", ALPN_TCP],
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
    private readonly telemetry: Telemetry,
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
    this.http.on("upgrade", (req: IncomingMessage, sock: Socket, head: Buffer) =>
      this.upgrade(req, sock, head),
    );
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
    // The app is reached on 127.0.0.1:<original port>, where the proxy's own listeners also are:
    // a connection meant for one of them (the admin, or the inbound itself in a loop) is refused.
    if (PROXY_PORTS.has(port)) {
      this.log.warn({ remote: raw.remoteAddress, port }, "inbound connection to a proxy port refused");
      raw.destroy();
      return;
    }
    raw.setNoDelay(true);
    const mode = this.state.mtls(port).mode;
    if (mode === "STRICT") return this.handshake(raw, port);
    // PERMISSIVE takes TLS from mesh peers and plaintext from others, told apart by the first
    // byte (a TLS handshake record is 0x16); DISABLE takes everything as plaintext.
    sniff(raw, SNIFF_MS, (first) => {
      if (mode === "PERMISSIVE" && first?.[0] === 0x16) return this.handshake(raw, port);
      this.plaintext(raw, port, first);
    });
  }

  private handshake(raw: Socket, port: number): void {
    const key = `${raw.remoteAddress}|${raw.remotePort}`;
    this.dstPorts.set(key, port);
    raw.once("close", () => this.dstPorts.delete(key));
    this.tls.emit("connection", raw);
  }

  /** A plaintext peer on a PERMISSIVE or DISABLE port: no identity, authorized as such. */
  private plaintext(raw: Socket, port: number, first: Buffer | undefined): void {
    const peer: Peer = {
      spiffeId: "",
      certHash: "",
      principal: undefined,
      namespace: undefined,
      mtls: false,
      remoteAddress: raw.remoteAddress ?? "",
      port,
    };
    if (first && looksLikeHttp(first)) {
      this.peers.set(raw, peer);
      this.http.emit("connection", raw);
      raw.resume();
    } else this.tcp(raw, peer);
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
    const cert = tls.getPeerX509Certificate();
    try {
      spiffeId = peerSpiffeId(cert);
    } catch (e) {
      return refuse((e as Error).message);
    }
    const certHash = cert!.fingerprint256.replaceAll(":", "").toLowerCase();
    const principal = principalOf(spiffeId);
    const ns = /\/ns\/([^/]+)\//.exec(principal)?.[1];
    const peer: Peer = {
      spiffeId,
      certHash,
      principal,
      namespace: ns,
      mtls: true,
      remoteAddress: tls.remoteAddress ?? "",
      port,
    };
    if (tls.alpnProtocol === ALPN_TCP) return this.tcp(tls, peer);
    this.peers.set(tls, peer);
    this.http.emit("connection", tls);
  }

  /** Opaque TCP: authorized once per connection (HTTP-only rule parts do not apply), then piped to the app. */
  private tcp(tls: Socket, peer: Peer): void {
    const start = Date.now();
    const snap = this.state.snapshot!;
    const decision = evaluate(this.state.policies!, {
      ...(peer.principal !== undefined ? { principal: peer.principal } : {}),
      ...(peer.namespace !== undefined ? { namespace: peer.namespace } : {}),
      sourceIp: peer.remoteAddress,
      destinationPort: peer.port,
    });
    const rec: TcpRecord = {
      reporter: "destination",
      source: {
        ...(peer.principal ? { principal: peer.principal } : {}),
        ...(peer.namespace ? { namespace: peer.namespace } : {}),
      },
      destination: {
        principal: principalOf(snap.workload.spiffeId),
        workload: snap.workload.name,
        namespace: snap.workload.namespace,
      },
      mtls: peer.mtls,
      decision: decision.allowed ? "allow" : "deny",
      reason: decision.reason,
      ...(decision.policy ? { policy: decision.policy } : {}),
      sentBytes: 0,
      receivedBytes: 0,
      durationMs: 0,
    };
    const close = (flag?: string) => {
      if (flag) rec.flag = flag;
      rec.sentBytes = tls.bytesWritten;
      rec.receivedBytes = tls.bytesRead;
      rec.durationMs = Date.now() - start;
      this.telemetry.tcpClose(rec);
    };
    if (!decision.allowed) {
      tls.destroy(); // a TCP denial is a closed connection
      return close("RBAC_DENIED");
    }
    this.telemetry.tcpOpen(rec);
    const app = connect({ host: this.appHost, port: peer.port });
    app.setNoDelay(true);
    let flag: string | undefined;
    const end = (e?: Error | null) => {
      if (e && !flag) flag = app.connecting ? "UPSTREAM_FAILURE" : "CONNECTION_RESET";
      tls.destroy();
      app.destroy();
    };
    tls.pipe(app);
    app.pipe(tls);
    tls.on("error", end);
    app.on("error", end);
    app.once("close", () => end());
    tls.once("close", () => {
      end();
      close(flag);
    });
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
    const snap = this.state.snapshot;
    const policies = this.state.policies;
    if (!peer || !policies || !snap) return rescueHttp(res, "NOT_READY", requestId);
    const sourceWorkload = req.headers[SOURCE_WORKLOAD_HEADER];
    const norm = normalizePath(req.url ?? "");
    const record: HttpRecord = {
      reporter: "destination",
      requestId,
      source: {
        ...(peer.principal ? { principal: peer.principal } : {}),
        ...(peer.namespace ? { namespace: peer.namespace } : {}),
        ...(typeof sourceWorkload === "string" ? { workload: sourceWorkload } : {}),
      },
      destination: {
        principal: principalOf(snap.workload.spiffeId),
        workload: snap.workload.name,
        namespace: snap.workload.namespace,
      },
      service: (req.headers.host ?? "").replace(/:\d+$/, "") || undefined,
      method: req.method,
      path: norm.ok ? norm.path : req.url,
      protocol: "http",
      status: 0,
      mtls: peer.mtls,
      durationMs: 0,
      requestBytes: 0,
      responseBytes: 0,
    };
    this.state.inflight++;
    if (this.state.draining) res.setHeader("connection", "close");
    const finish = (r: Partial<HttpRecord>, flag?: Flag) => {
      this.state.inflight--;
      Object.assign(record, r);
      if (flag) {
        record.flag = flag;
        record.status = FLAGS[flag].status;
        rescueHttp(res, flag, requestId);
      }
      record.durationMs = Number(process.hrtime.bigint() - start) / 1e6;
      this.telemetry.http(record);
    };
    if (!norm.ok) return finish({ decision: "deny", reason: norm.reason }, "BAD_REQUEST");
    const authorize = (auth?: RequestAuth) => {
      const decision = evaluate(policies, {
        ...(peer.principal !== undefined ? { principal: peer.principal } : {}),
        ...(peer.namespace !== undefined ? { namespace: peer.namespace } : {}),
        sourceIp: peer.remoteAddress,
        remoteIp: peer.remoteAddress,
        destinationPort: peer.port,
        ...(auth ? { auth } : {}),
        http: {
          method: req.method ?? "",
          path: norm.path,
          host: req.headers.host ?? "",
          headers: req.headers as Record<string, string | undefined>,
        },
      });
      record.decision = decision.allowed ? "allow" : "deny";
      record.reason = decision.reason;
      if (decision.policy !== undefined) record.policy = decision.policy;
      if (decision.action !== undefined) record.action = decision.action;
      if (decision.rule !== undefined) record.rule = decision.rule;
      if (decision.dryRun?.length) record.dryRun = decision.dryRun;
      if (!decision.allowed) return finish({}, "RBAC_DENIED");
      const headers = forwardable(req.headers, true);
      delete headers[SOURCE_WORKLOAD_HEADER];
      headers["x-request-id"] = requestId;
      if (peer.mtls) headers["x-forwarded-client-cert"] = xfcc(snap.workload.spiffeId, peer);
      const path = norm.query ? `${norm.path}?${norm.query}` : norm.path;
      relay(this.app(peer.port), req, res, path, headers, (r) => {
        if (r.error) return finish({ err: r.error.message }, "UPSTREAM_FAILURE");
        finish({ status: r.status, requestBytes: r.requestBytes, responseBytes: r.responseBytes });
      });
    };
    const jwtRules = snap.requestAuthentications;
    if (jwtRules.length === 0) return authorize();
    // A present but invalid token is 401; a missing one gives no request principal.
    authenticateJwt(
      jwtRules,
      { headers: req.headers as Record<string, string | undefined>, query: norm.query },
      new Date(),
    ).then(
      (r) => {
        if (!r.ok)
          return finish(
            { decision: "deny", reason: r.reason, ...(r.policy ? { policy: r.policy } : {}) },
            "JWT_INVALID",
          );
        for (const h of r.headersToRemove) delete req.headers[h];
        Object.assign(req.headers, r.headersToSet);
        authorize({
          ...(r.principal !== undefined ? { principal: r.principal } : {}),
          ...(r.audiences ? { audiences: r.audiences } : {}),
          ...(r.presenter !== undefined ? { presenter: r.presenter } : {}),
          ...(r.claims ? { claims: r.claims } : {}),
        });
      },
      (e: Error) => finish({ decision: "deny", reason: `JWT check failed: ${e.message}` }, "JWT_INVALID"),
    );
  }

  /** An upgrade (WebSocket): authorized like any request, then the app connection carries bytes both ways. */
  private upgrade(req: IncomingMessage, sock: Socket, head: Buffer): void {
    const requestId = (req.headers["x-request-id"] as string | undefined) || randomUUID();
    const peer = this.peers.get(sock);
    const snap = this.state.snapshot;
    const norm = normalizePath(req.url ?? "");
    if (!peer || !snap || !this.state.policies)
      return refuseUpgrade(sock, 503, FLAGS.NOT_READY.body, requestId);
    if (!norm.ok) return refuseUpgrade(sock, 400, FLAGS.BAD_REQUEST.body, requestId);
    const decision = evaluate(this.state.policies, {
      ...(peer.principal !== undefined ? { principal: peer.principal } : {}),
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
    this.log.info(
      {
        direction: "inbound",
        requestId,
        upgrade: req.headers.upgrade,
        source: peer.spiffeId || undefined,
        path: norm.path,
        decision: decision.allowed ? "allow" : "deny",
        policy: decision.policy,
        reason: decision.reason,
      },
      "access",
    );
    if (!decision.allowed) return refuseUpgrade(sock, 403, FLAGS.RBAC_DENIED.body, requestId);
    const app = connect({ host: this.appHost, port: peer.port }, () => {
      const extra: Record<string, string> = { "x-request-id": requestId };
      if (peer.mtls) extra["x-forwarded-client-cert"] = xfcc(snap.workload.spiffeId, peer);
      const path = norm.query ? `${norm.path}?${norm.query}` : norm.path;
      app.write(upgradeHead(req.method ?? "GET", path, req.headers, extra));
      if (head.length > 0) app.write(head);
      splice(sock, app, () => {});
    });
    app.once("error", () => refuseUpgrade(sock, 503, FLAGS.UPSTREAM_FAILURE.body, requestId));
  }

  async close(): Promise<void> {
    this.server.close();
    this.http.closeAllConnections();
    await Promise.all([...this.apps.values()].map((p) => p.close()));
  }
}
