// Inbound (:15006): every connection redirected to this workload arrives here. It must complete
// mutual TLS with a certificate from the mesh CA (no plaintext path exists), then each HTTP
// request is authorized by the policy engine and forwarded to the app at the workload's address.

import { randomBytes, randomUUID } from "node:crypto";
import { connect, createServer as createNetServer, type Server, type Socket } from "node:net";
import type { Duplex } from "node:stream";
import { createServer as createTlsServer, type TLSSocket } from "node:tls";
import { PORTS, type ProxyTimeouts } from "../config/index.js";
import type { Logger } from "../diag/index.js";
import { peerSpiffeId } from "../identity/index.js";
import {
  authenticateJwt,
  evaluate,
  type NormalizeResult,
  normalizePath,
  type RequestAuth,
} from "../policy/index.js";
import { isH2cUpgrade } from "./h2.js"; // HTTP/2 hook
import { H2Inbound, type H2Peer, peerRequest } from "./h2-inbound.js"; // HTTP/2 hook
import { REWRITTEN as DROP, SOURCE_WORKLOAD_HEADER, serviceOf, xfcc } from "./headers.js";
import { type Http1Conn, type Http1Listener, Http1Server, type UpgradeRequest } from "./http1/conn.js";
import { field, fieldRecord, type RequestHead } from "./http1/head.js";
import { UpstreamPool } from "./http1/pool.js";
import { requestHeadFor } from "./http1/wire.js";
import type { OriginalDst } from "./origdst.js";
import { principalOf, workloadPeer } from "./principal.js";
import { FLAGS, type Flag, rescueUpgrade } from "./rescue.js";
import { ALPN_H2, ALPN_TCP, looksLikeH2, looksLikeHttp, SNIFF_MS, sniff } from "./sniff.js";
import type { Certificate, ProxyState } from "./state.js";
import type { HttpRecord, TcpRecord, Telemetry } from "./telemetry.js";
import { splice, upgradeHead } from "./upgrade.js";

/** The peer of an accepted connection, established once (h2-inbound.ts serves HTTP/2 with the same). */
type Peer = H2Peer;

const HANDSHAKE_TIMEOUT_MS = 10_000;
const PROXY_PORTS = new Set<number>([PORTS.proxyAdmin, PORTS.outboundCapture, PORTS.inboundCapture]);

/**
 * What the policy engine reads of an HTTP/1.1 request. The fields become a record only when read
 * (a header rule, a JWT): most requests are decided on identity, method and path alone. A class,
 * not an object literal with a getter (a new closure per request): with the literal the inbound
 * sidecar promoted ~1.6 MB/s to its old generation and paused for mark-compacts (bench/README.md,
 * "Round 4: CPU and the GC tail").
 */
class HttpAttributes {
  readonly method: string;
  private fields: Record<string, string> | undefined;

  constructor(
    private readonly head: RequestHead,
    readonly path: string,
    readonly host: string,
  ) {
    this.method = head.method;
  }

  get headers(): Record<string, string> {
    this.fields ??= fieldRecord(this.head);
    return this.fields;
  }
}

const TICKET_KEY_MS = 3_600_000;
/** `OPTIONS *` (asterisk-form): policies see the path `*`, which no path rule but `*` matches. */
const ASTERISK: NormalizeResult = { ok: true, path: "*", query: "" };

export class Inbound implements Http1Listener {
  readonly server: Server;
  private readonly h1 = new Http1Server(this);
  /**
   * TLS is a tls.Server fed the accepted sockets, not a bare TLSSocket: only a tls.Server checks
   * the client certificate's verification result (a bare server TLSSocket completes the handshake
   * with any certificate). It does not reject by itself either: we do, so the reason is logged.
   */
  private readonly tls = createTlsServer({
    requestCert: true,
    rejectUnauthorized: false,
    ALPNProtocols: ["http/1.1", ALPN_TCP, ALPN_H2],
    minVersion: "TLSv1.3",
    handshakeTimeout: HANDSHAKE_TIMEOUT_MS,
  });
  private tlsFor: Certificate | undefined;
  private tlsBundle: string | undefined;
  /**
   * Session tickets (resumption) are issued with keys that change with the SVID, the trust bundle
   * and every hour; a resumed connection still has its client's certificate, so the identity and
   * the authorization of each request are checked as on a full handshake.
   */
  private ticketKeysAt = 0;
  /** Original destination port of each accepted connection, by its remote address and port. */
  private readonly dstPorts = new Map<string, number>();
  private readonly peers = new WeakMap<Duplex, Peer>();
  /** Per connection: its XFCC value, made once (it depends on our SPIFFE ID and the peer's certificate). */
  private readonly xfccs = new WeakMap<Peer, { self: string; value: string }>();
  private readonly apps = new Map<number, UpstreamPool>();
  /** HTTP/2 hook: h2 (ALPN) and plaintext h2c connections are served by h2-inbound.ts. */
  private readonly h2: H2Inbound;

  constructor(
    private readonly state: ProxyState,
    private readonly originalDst: OriginalDst,
    private readonly log: Logger,
    private readonly telemetry: Telemetry,
    /** Where the app listens (tests on loopback); by default the workload's own address. */
    private readonly appHost?: string,
  ) {
    this.server = createNetServer((s) => this.accept(s));
    this.h2 = new H2Inbound(state, log, telemetry, () => this.appAddress()); // HTTP/2 hook
    this.tls.on("secureConnection", (s: TLSSocket) => this.secured(s));
    this.tls.on("tlsClientError", (e: Error, s: TLSSocket) => {
      this.log.info(
        { remote: s.remoteAddress, err: e.message },
        "inbound connection refused: mTLS handshake failed",
      );
    });
  }

  draining(): boolean {
    return this.state.draining;
  }

  get timeouts(): ProxyTimeouts {
    return this.state.timeouts;
  }

  malformed(conn: Http1Conn, reason: string): void {
    this.log.info(
      { direction: "inbound", remote: (conn.sock as Socket).remoteAddress, reason },
      "malformed request refused",
    );
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
      this.ticketKeysAt = Date.now(); // a new secure context has new session ticket keys
    } else if (Date.now() - this.ticketKeysAt > TICKET_KEY_MS) {
      this.tls.setTicketKeys(randomBytes(48));
      this.ticketKeysAt = Date.now();
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
    if (first && looksLikeH2(first)) return this.h2.serve(raw, peer); // HTTP/2 hook: plaintext h2c
    if (first && looksLikeHttp(first)) {
      this.peers.set(raw, peer);
      this.h1.serve(raw);
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
    // A resumed session carries the verification result of its full handshake: OpenSSL does not
    // check the certificate's dates again. A client certificate that expired since then (within the
    // ticket's lifetime) is refused here, as a full handshake would refuse it.
    if (cert && tls.isSessionReused()) {
      const now = Date.now();
      // Written to fail closed: a date that does not parse (NaN) refuses too.
      if (!(now >= Date.parse(cert.validFrom) && now <= Date.parse(cert.validTo)))
        return refuse("resumed session's client certificate is outside its validity period");
    }
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
    if (tls.alpnProtocol === ALPN_H2) return this.h2.serve(tls, peer); // HTTP/2 hook
    this.peers.set(tls, peer);
    this.h1.serve(tls);
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
      destination: workloadPeer(snap.workload),
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
    const app = connect({ host: this.appAddress(), port: peer.port });
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

  /**
   * The app is reached at the workload's own address, not 127.0.0.1, as Istio does since 1.10: a
   * port the app binds to loopback only is private to the workload, and forwarding there would
   * hand it to any caller a policy lets in (attack suite, "loopback-only app port").
   */
  private appAddress(): string {
    return this.appHost ?? this.state.snapshot?.workload.address ?? "127.0.0.1";
  }

  private app(port: number): UpstreamPool {
    let pool = this.apps.get(port);
    if (!pool) {
      const host = this.appAddress();
      pool = new UpstreamPool((onread, cb) => {
        const s = connect({ host, port, noDelay: true, onread });
        const fail = (e: Error) => cb(e, null);
        s.once("error", fail);
        s.once("connect", () => {
          s.off("error", fail);
          cb(null, s);
        });
      });
      this.apps.set(port, pool);
    }
    return pool;
  }

  request(conn: Http1Conn, head: RequestHead): void {
    const start = performance.now();
    const peer = this.peers.get(conn.sock);
    const requestId = field(head, "x-request-id") || randomUUID();
    const snap = this.state.snapshot;
    const policies = this.state.policies;
    if (!peer || !policies || !snap) return conn.reject("NOT_READY", requestId);
    const host = field(head, "host") ?? "";
    const norm = head.target === "*" ? ASTERISK : normalizePath(head.target);
    // Every record has the same shape (no spread of optional parts), so building and reading it
    // stays on one hidden class.
    const record: HttpRecord = {
      reporter: "destination",
      requestId,
      source: {
        principal: peer.principal || undefined,
        namespace: peer.namespace || undefined,
        workload: field(head, SOURCE_WORKLOAD_HEADER),
      },
      destination: workloadPeer(snap.workload),
      service: serviceOf(host),
      method: head.method,
      path: norm.ok ? norm.path : head.target,
      protocol: "http",
      status: 0,
      mtls: peer.mtls,
      durationMs: 0,
      requestBytes: 0,
      responseBytes: 0,
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
    if (!norm.ok) return finish({ decision: "deny", reason: norm.reason }, "BAD_REQUEST");
    const http = new HttpAttributes(head, norm.path, host);
    const authorize = (
      auth?: RequestAuth,
      drop: ReadonlySet<string> = DROP,
      set?: Record<string, string>,
    ) => {
      const decision = evaluate(policies, peerRequest(peer, auth, http));
      record.decision = decision.allowed ? "allow" : "deny";
      record.reason = decision.reason;
      if (decision.policy !== undefined) record.policy = decision.policy;
      if (decision.action !== undefined) record.action = decision.action;
      if (decision.rule !== undefined) record.rule = decision.rule;
      if (decision.dryRun?.length) record.dryRun = decision.dryRun;
      if (!decision.allowed) return finish({}, "RBAC_DENIED");
      const extra = ["x-request-id", requestId];
      if (peer.mtls) extra.push("x-forwarded-client-cert", this.xfcc(snap.workload.spiffeId, peer));
      if (set) for (const k of Object.keys(set)) extra.push(k, set[k]!);
      const path = norm.query ? `${norm.path}?${norm.query}` : norm.path;
      conn.forward(this.app(peer.port), requestHeadFor(head, path, drop, extra), (r) => {
        if (r.error) return finish({ err: r.error.message }, r.flag ?? "UPSTREAM_FAILURE");
        finish({ status: r.status, requestBytes: r.requestBytes, responseBytes: r.responseBytes });
      });
    };
    const jwtRules = snap.requestAuthentications;
    if (jwtRules.length === 0) return authorize();
    // A present but invalid token is 401; a missing one gives no request principal.
    const jwtHeaders = http.headers;
    authenticateJwt(jwtRules, { headers: jwtHeaders, query: norm.query }, new Date()).then(
      (r) => {
        if (!r.ok)
          return finish(
            { decision: "deny", reason: r.reason, ...(r.policy ? { policy: r.policy } : {}) },
            "JWT_INVALID",
          );
        const drop = new Set(DROP);
        for (const h of r.headersToRemove) {
          delete jwtHeaders[h];
          drop.add(h);
        }
        for (const h of Object.keys(r.headersToSet)) drop.add(h);
        Object.assign(jwtHeaders, r.headersToSet);
        authorize(
          {
            ...(r.principal !== undefined ? { principal: r.principal } : {}),
            ...(r.audiences ? { audiences: r.audiences } : {}),
            ...(r.presenter !== undefined ? { presenter: r.presenter } : {}),
            ...(r.claims ? { claims: r.claims } : {}),
          },
          drop,
          r.headersToSet,
        );
      },
      (e: Error) => finish({ decision: "deny", reason: `JWT check failed: ${e.message}` }, "JWT_INVALID"),
    );
  }

  /** An upgrade (WebSocket): authorized like any request, then the app connection carries bytes both ways. */
  upgrade(sock: Duplex, req: UpgradeRequest, head: Buffer): void {
    const requestId = req.headers["x-request-id"] || randomUUID();
    const peer = this.peers.get(sock);
    const snap = this.state.snapshot;
    const norm = normalizePath(req.url ?? "");
    if (!peer || !snap || !this.state.policies) return rescueUpgrade(sock, "NOT_READY", requestId);
    if (!norm.ok) return rescueUpgrade(sock, "BAD_REQUEST", requestId);
    // HTTP/2 hook: an h2c upgrade would carry later streams past per-stream authorization.
    if (isH2cUpgrade(req.headers.upgrade)) return rescueUpgrade(sock, "BAD_REQUEST", requestId);
    const decision = evaluate(
      this.state.policies,
      peerRequest(peer, undefined, {
        method: req.method,
        path: norm.path,
        host: req.headers.host ?? "",
        headers: req.headers,
      }),
    );
    this.log.info(
      {
        direction: "inbound",
        requestId,
        upgrade: req.headers.upgrade,
        source: peer.spiffeId || undefined,
        destination: snap.workload.spiffeId,
        mtls: peer.mtls,
        method: req.method,
        path: norm.path,
        // 101 once the app agrees; what the sidecar decided is the point of this line.
        status: decision.allowed ? undefined : FLAGS.RBAC_DENIED.status,
        flag: decision.allowed ? undefined : "RBAC_DENIED",
        decision: decision.allowed ? "allow" : "deny",
        policy: decision.policy,
        rule: decision.rule,
        reason: decision.reason,
      },
      "access",
    );
    if (!decision.allowed) return rescueUpgrade(sock, "RBAC_DENIED", requestId);
    const app = connect({ host: this.appAddress(), port: peer.port }, () => {
      const extra: Record<string, string> = { "x-request-id": requestId };
      if (peer.mtls) extra["x-forwarded-client-cert"] = xfcc(snap.workload.spiffeId, peer);
      const path = norm.query ? `${norm.path}?${norm.query}` : norm.path;
      app.write(upgradeHead(req.method ?? "GET", path, req.headers, extra));
      if (head.length > 0) app.write(head);
      splice(sock, app, () => {});
    });
    app.once("error", () => rescueUpgrade(sock, "UPSTREAM_FAILURE", requestId));
  }

  private xfcc(self: string, peer: Peer): string {
    const hit = this.xfccs.get(peer);
    if (hit !== undefined && hit.self === self) return hit.value;
    const value = xfcc(self, peer);
    this.xfccs.set(peer, { self, value });
    return value;
  }

  /**
   * A drain: no new connections; HTTP/1.1 connections idle for a second close (`Http1Server.drain`),
   * busy ones after their response (which says `connection: close`); HTTP/2 clients get GOAWAY now.
   */
  drain(): void {
    this.server.close();
    this.h1.drain();
    this.h2.drain(); // HTTP/2 hook
  }

  async close(): Promise<void> {
    this.server.close();
    this.h1.close();
    this.h2.close(); // HTTP/2 hook
    for (const p of this.apps.values()) p.close();
  }
}
