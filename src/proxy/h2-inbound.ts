// Inbound HTTP/2 (and gRPC): a mesh peer's TLS connection that chose ALPN h2 (or, on PERMISSIVE
// and DISABLE ports, plaintext that opens with the HTTP/2 preface) is served by an HTTP/2 server
// session; EACH stream is authorized by the policy engine exactly like an HTTP/1.1 request
// (principal, method, normalized path, headers, JWT), then relayed to the app over h2c on a
// pooled session per app port. Denials and failures answer through rescue.ts: gRPC callers get a
// grpc-status (PERMISSION_DENIED, UNAUTHENTICATED, UNAVAILABLE), others the HTTP status.

import {
  type Http2Session,
  connect as h2connect,
  type IncomingHttpHeaders,
  type ServerHttp2Stream,
} from "node:http2";
import type { Socket } from "node:net";
import type { Logger } from "../diag/index.js";
import {
  authenticateJwt,
  evaluate,
  normalizePath,
  type RequestAttributes,
  type RequestAuth,
} from "../policy/index.js";
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
  splitPath,
  streamEnd,
  whenConnected,
} from "./h2.js";
import { SOURCE_WORKLOAD_HEADER, serviceOf, xfcc } from "./headers.js";
import { workloadPeer } from "./principal.js";
import type { ProxyState } from "./state.js";
import type { HttpRecord, Telemetry } from "./telemetry.js";

/** The peer of an inbound connection, as inbound.ts establishes it (same shape as its Peer). */
export interface H2Peer {
  /** Empty for a plaintext peer (PERMISSIVE or DISABLE ports). */
  spiffeId: string;
  certHash: string;
  principal: string | undefined;
  namespace: string | undefined;
  mtls: boolean;
  remoteAddress: string;
  /** The app port the connection was meant for (original destination). */
  port: number;
}

/** What the policy engine is asked about one request of `peer` (both HTTP versions ask the same). */
export function peerRequest(
  peer: H2Peer,
  auth: RequestAuth | undefined,
  http: NonNullable<RequestAttributes["http"]>,
): RequestAttributes {
  // One shape for every request (absent parts undefined, not left out): built from spreads of
  // optional parts, this literal alone made the inbound sidecar promote ~0.9 MB/s to its old
  // generation at 1,000 rps (bench/README.md, "Round 4: CPU and the GC tail").
  return {
    principal: peer.principal,
    namespace: peer.namespace,
    sourceIp: peer.remoteAddress,
    remoteIp: peer.remoteAddress,
    destinationPort: peer.port,
    auth,
    http,
  };
}

export class H2Inbound {
  private readonly apps = new SessionPool();
  private readonly sessions: ServedSessions<H2Peer>;

  constructor(
    private readonly state: ProxyState,
    private readonly log: Logger,
    private readonly telemetry: Telemetry,
    /** Where the app listens (the inbound's choice, see `Inbound.appAddress`). */
    private readonly appHost: () => string,
  ) {
    this.sessions = new ServedSessions<H2Peer>(
      (s, h) => this.stream(s, h),
      (e: Error) => this.log.debug({ err: e.message }, "inbound HTTP/2 session error"),
    );
  }

  /** Serves a connection whose peer is established (mTLS with ALPN h2, or plaintext h2c) as HTTP/2. */
  serve(sock: Socket, peer: H2Peer): void {
    this.sessions.serve(sock, peer);
  }

  private app(port: number) {
    return this.apps.get(String(port), () =>
      whenConnected(
        h2connect(`http://${this.appHost()}:${port}`, {
          settings: H2_SETTINGS,
          maxSessionMemory: H2_MAX_SESSION_MEMORY,
        }),
      ),
    );
  }

  private stream(down: ServerHttp2Stream, headers: IncomingHttpHeaders): void {
    const start = process.hrtime.bigint();
    const requestId = requestIdOf(headers);
    const grpc = isGrpc(headers);
    const peer = this.sessions.contextOf(down.session as Http2Session);
    const snap = this.state.snapshot;
    const policies = this.state.policies;
    down.on("error", () => {});
    const rawPath = headers[":path"] ?? "";
    const { path: pathOnly } = splitPath(rawPath);
    const norm = normalizePath(rawPath);
    const sourceWorkload = headers[SOURCE_WORKLOAD_HEADER];
    const authority = headers[":authority"] ?? headers.host ?? "";
    const record: HttpRecord = {
      reporter: "destination",
      requestId,
      // One shape for every record: no spread of optional parts (see peerRequest).
      source: {
        principal: peer?.principal || undefined,
        namespace: peer?.namespace || undefined,
        workload: typeof sourceWorkload === "string" ? sourceWorkload : undefined,
      },
      destination: snap ? workloadPeer(snap.workload) : {},
      service: serviceOf(authority),
      method: headers[":method"],
      path: norm.ok ? norm.path : pathOnly,
      protocol: grpc ? "grpc" : "http",
      http2: true,
      status: 0,
      mtls: peer?.mtls ?? false,
      durationMs: 0,
      requestBytes: 0,
      responseBytes: 0,
    };
    this.state.inflight++;
    if (this.state.draining) down.session?.close();
    const { finish, bug } = streamEnd(this.state, this.telemetry, this.log, {
      down,
      record,
      requestId,
      grpc,
      start,
    });
    if (!peer || !policies || !snap) return finish({}, "NOT_READY");
    if (!norm.ok) return finish({ decision: "deny", reason: norm.reason }, "BAD_REQUEST");
    // Policies and JWT rules see plain header values (pseudo-headers are not headers).
    const plain: Record<string, string | undefined> = {};
    for (const [k, v] of Object.entries(headers)) {
      if (k.startsWith(":")) continue;
      plain[k] = Array.isArray(v) ? v.join(", ") : v;
    }
    const authorize = (
      auth?: RequestAuth,
      jwtHeaders?: { remove: string[]; set: Record<string, string> },
    ) => {
      const decision = evaluate(
        policies,
        peerRequest(peer, auth, {
          method: headers[":method"] ?? "",
          path: norm.path,
          host: authority,
          headers: plain,
        }),
      );
      record.decision = decision.allowed ? "allow" : "deny";
      record.reason = decision.reason;
      if (decision.policy !== undefined) record.policy = decision.policy;
      if (decision.action !== undefined) record.action = decision.action;
      if (decision.rule !== undefined) record.rule = decision.rule;
      if (decision.dryRun?.length) record.dryRun = decision.dryRun;
      if (!decision.allowed) return finish({}, "RBAC_DENIED");
      const out = h2RequestHeaders(headers, true);
      if (jwtHeaders) {
        for (const h of jwtHeaders.remove) delete out[h];
        Object.assign(out, jwtHeaders.set);
      }
      out[":path"] = norm.query ? `${norm.path}?${norm.query}` : norm.path;
      out["x-request-id"] = requestId;
      if (peer.mtls) out["x-forwarded-client-cert"] = xfcc(snap.workload.spiffeId, peer);
      const toApp = (retried: boolean, replay?: Replay) =>
        this.app(peer.port)
          .then(
            (session) =>
              relayStream(
                down,
                session,
                out,
                (r) => {
                  if ((r.notSent || r.refused) && !retried) {
                    // The pooled session to the app was closing, or the app refused the stream: it
                    // was never processed (RFC 9113 section 8.7), so once more on a new session,
                    // whatever the method (with the body kept for a refused one).
                    this.apps.drop(String(peer.port), session);
                    return void toApp(true, r.refused);
                  }
                  finishRelayed(down, r, finish, "the caller");
                },
                replay,
              ),
            (e: Error) => finish({ err: `app: ${e.message}` }, "UPSTREAM_FAILURE"),
          )
          .catch(bug);
      void toApp(false);
    };
    const jwtRules = snap.requestAuthentications;
    if (jwtRules.length === 0) return authorize();
    // A present but invalid token is 401 (UNAUTHENTICATED for gRPC); a missing one gives no request principal.
    authenticateJwt(jwtRules, { headers: plain, query: norm.query }, new Date())
      .then(
        (r) => {
          if (!r.ok)
            return finish(
              { decision: "deny", reason: r.reason, ...(r.policy ? { policy: r.policy } : {}) },
              "JWT_INVALID",
            );
          for (const h of r.headersToRemove) delete plain[h];
          Object.assign(plain, r.headersToSet);
          authorize(
            {
              ...(r.principal !== undefined ? { principal: r.principal } : {}),
              ...(r.audiences ? { audiences: r.audiences } : {}),
              ...(r.presenter !== undefined ? { presenter: r.presenter } : {}),
              ...(r.claims ? { claims: r.claims } : {}),
            },
            { remove: r.headersToRemove, set: r.headersToSet },
          );
        },
        (e: Error) => finish({ decision: "deny", reason: `JWT check failed: ${e.message}` }, "JWT_INVALID"),
      )
      .catch(bug);
  }

  /** A drain: GOAWAY to every served session now (ServedSessions.drain). */
  drain(): void {
    this.sessions.drain();
  }

  close(): void {
    this.sessions.close();
    this.apps.close();
  }
}
