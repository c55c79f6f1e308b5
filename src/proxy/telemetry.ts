// Telemetry: one record per request or TCP connection becomes one JSON access-log line and the
// Istio standard metrics (same names and labels, so existing dashboards work), from one place, so
// the flag, decision and identities in a log line and in a metric never disagree.

import { createServer, type Server } from "node:http";
import { Counter, Registry } from "prom-client";
import type { Logger } from "../diag/index.js";
import { AccessLog } from "./accesslog.js";
import { FastMetric, type Series } from "./metrics.js";
import { spiffeUriOf } from "./principal.js";

export type Reporter = "source" | "destination";

export interface Peer {
  principal?: string;
  workload?: string;
  namespace?: string;
}

export interface HttpRecord {
  reporter: Reporter;
  requestId: string;
  source: Peer;
  destination: Peer;
  service?: string;
  method?: string;
  path?: string;
  protocol: "http" | "grpc";
  status: number;
  /** gRPC only: the grpc-status the call ended with (from trailers, or the flag's). */
  grpcStatus?: string;
  /** HTTP/2 (h2c from the app or to it, h2 between sidecars); absent for HTTP/1.1. */
  http2?: boolean;
  flag?: string;
  mtls: boolean;
  durationMs: number;
  requestBytes: number;
  responseBytes: number;
  decision?: "allow" | "deny";
  /** Action of the deciding policy (ALLOW, DENY), absent when no policy decided. */
  action?: string;
  policy?: string;
  rule?: number;
  reason?: string;
  dryRun?: unknown;
  upstream?: string;
  err?: string;
}

export interface TcpRecord {
  reporter: Reporter;
  source: Peer;
  destination: Peer;
  service?: string;
  mtls: boolean;
  sentBytes: number;
  receivedBytes: number;
  durationMs: number;
  flag?: string;
  decision?: "allow" | "deny";
  policy?: string;
  reason?: string;
  /** The address the connection went to, e.g. for PassthroughCluster (outbound only). */
  upstream?: string;
}

const MS_BUCKETS = [0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];
const BYTE_BUCKETS = [1, 10, 100, 1000, 10000, 100000, 1000000, 10000000];
const HTTP_LABELS = [
  "reporter",
  "source_workload",
  "source_workload_namespace",
  "source_principal",
  "destination_workload",
  "destination_workload_namespace",
  "destination_principal",
  "destination_service",
  "request_protocol",
  "response_code",
  "response_flags",
  "connection_security_policy",
  // Set on gRPC requests only (Istio's label); other series keep the label set they had.
  "grpc_response_status",
] as const;
const TCP_LABELS = HTTP_LABELS.filter(
  (l) => l !== "request_protocol" && l !== "response_code" && l !== "grpc_response_status",
);

/**
 * Caps the distinct values a label may take from what callers send (the Host header becomes
 * destination_service, a calling sidecar's header source_workload): past the cap, new values are
 * counted as "other", so a caller cycling through random Host values cannot grow the proxy's
 * memory and its scrape without bound (attack suite, "metric label cardinality").
 */
export class LabelGuard {
  private readonly seen = new Map<string, Set<string>>();
  constructor(private readonly cap = LABEL_VALUE_CAP) {}
  value(label: string, v: string): string {
    let set = this.seen.get(label);
    if (!set) {
      set = new Set();
      this.seen.set(label, set);
    }
    if (set.has(v)) return v;
    if (set.size >= this.cap) return "other";
    set.add(v);
    return v;
  }
}

/** Distinct caller-chosen values kept per label before the rest count as "other". */
export const LABEL_VALUE_CAP = 100;

function peerLabels(
  guard: LabelGuard,
  r: {
    reporter: Reporter;
    source: Peer;
    destination: Peer;
    service?: string;
    mtls: boolean;
    flag?: string;
  },
) {
  return {
    reporter: r.reporter,
    source_workload: guard.value("source_workload", r.source.workload ?? "unknown"),
    source_workload_namespace: r.source.namespace ?? "unknown",
    source_principal: uri(r.source.principal) ?? "unknown",
    destination_workload: r.destination.workload ?? "unknown",
    destination_workload_namespace: r.destination.namespace ?? "unknown",
    destination_principal: uri(r.destination.principal) ?? "unknown",
    destination_service: guard.value("destination_service", r.service ?? "unknown"),
    response_flags: r.flag ?? "-",
    connection_security_policy: r.mtls ? "mutual_tls" : "none",
  };
}

/** A peer's SPIFFE ID, or undefined without a principal. */
function uri(principal: string | undefined): string | undefined {
  return principal ? spiffeUriOf(principal) : undefined;
}

/** The four series of one HTTP label tuple, found with one lookup per request. */
interface HttpSeries {
  requests: Series;
  duration: Series;
  requestBytes: Series;
  responseBytes: Series;
}

/**
 * A label tuple seen lately, as records give it (before the label guard, which maps a value the
 * same way every time), with its series. Comparing a record's fields with a few of these costs
 * less than building, flattening and hashing the tuple's 13-part key per request.
 */
class Recent {
  constructor(
    readonly reporter: Reporter,
    readonly sourceWorkload: string | undefined,
    readonly sourceNamespace: string | undefined,
    readonly sourcePrincipal: string | undefined,
    readonly destinationWorkload: string | undefined,
    readonly destinationNamespace: string | undefined,
    readonly destinationPrincipal: string | undefined,
    readonly service: string | undefined,
    readonly flag: string | undefined,
    readonly mtls: boolean,
    readonly protocol: string,
    readonly status: number,
    readonly grpcStatus: string | undefined,
    readonly series: HttpSeries | undefined,
  ) {}

  static of(r: HttpRecord, series: HttpSeries | undefined): Recent {
    const s = r.source;
    const d = r.destination;
    return new Recent(
      r.reporter,
      s.workload,
      s.namespace,
      s.principal,
      d.workload,
      d.namespace,
      d.principal,
      r.service,
      r.flag,
      r.mtls,
      r.protocol,
      r.status,
      r.grpcStatus,
      series,
    );
  }

  matches(r: HttpRecord): boolean {
    const s = r.source;
    const d = r.destination;
    return (
      this.status === r.status &&
      this.sourcePrincipal === s.principal &&
      this.destinationPrincipal === d.principal &&
      this.service === r.service &&
      this.sourceWorkload === s.workload &&
      this.destinationWorkload === d.workload &&
      this.sourceNamespace === s.namespace &&
      this.destinationNamespace === d.namespace &&
      this.reporter === r.reporter &&
      this.flag === r.flag &&
      this.mtls === r.mtls &&
      this.protocol === r.protocol &&
      this.grpcStatus === r.grpcStatus
    );
  }
}

/** Label tuples remembered by `Recent`, replaced in turn. */
const RECENT = 4;

export class Telemetry {
  readonly registry = new Registry();
  private readonly guard = new LabelGuard();
  private readonly requests = new FastMetric(
    this.registry,
    "istio_requests_total",
    "Requests handled",
    "counter",
  );
  private readonly duration = new FastMetric(
    this.registry,
    "istio_request_duration_milliseconds",
    "Request duration",
    "histogram",
    MS_BUCKETS,
  );
  private readonly reqBytes = new FastMetric(
    this.registry,
    "istio_request_bytes",
    "Request body sizes",
    "histogram",
    BYTE_BUCKETS,
  );
  private readonly respBytes = new FastMetric(
    this.registry,
    "istio_response_bytes",
    "Response body sizes",
    "histogram",
    BYTE_BUCKETS,
  );
  private readonly tcpOpened = new Counter({
    name: "istio_tcp_connections_opened_total",
    help: "TCP connections opened",
    labelNames: TCP_LABELS,
    registers: [this.registry],
  });
  private readonly tcpClosed = new Counter({
    name: "istio_tcp_connections_closed_total",
    help: "TCP connections closed",
    labelNames: TCP_LABELS,
    registers: [this.registry],
  });
  private readonly tcpSent = new Counter({
    name: "istio_tcp_sent_bytes_total",
    help: "Bytes sent to the downstream",
    labelNames: TCP_LABELS,
    registers: [this.registry],
  });
  private readonly tcpReceived = new Counter({
    name: "istio_tcp_received_bytes_total",
    help: "Bytes received from the downstream",
    labelNames: TCP_LABELS,
    registers: [this.registry],
  });
  private readonly decisions = new FastMetric(
    this.registry,
    "zmesh_authz_decisions_total",
    "Authorization decisions by deciding policy and action",
    "counter",
  );

  private readonly access: AccessLog;
  /** By label-tuple key: the HTTP series (a tuple's labels object is built once, on first sight). */
  private readonly httpSeries = new Map<string, HttpSeries>();
  /** The last few label tuples (`Recent`); an entry without series is an empty slot. */
  private readonly recent: Recent[] = [];
  private recentNext = 0;
  private lastDecision:
    | {
        reporter: Reporter;
        decision: string | undefined;
        policy: string | undefined;
        action: string | undefined;
        series: Series;
      }
    | undefined;

  constructor(private readonly log: Logger) {
    this.access = new AccessLog(log);
    const empty = Recent.of({ reporter: "source", source: {}, destination: {} } as HttpRecord, undefined);
    for (let i = 0; i < RECENT; i++) this.recent.push(empty);
  }

  http(r: HttpRecord): void {
    const series = this.seriesOf(r);
    series.requests.inc();
    series.duration.observe(r.durationMs);
    series.requestBytes.observe(r.requestBytes);
    series.responseBytes.observe(r.responseBytes);
    if (r.decision) this.decisionOf(r).inc();
    this.access.write({
      direction: r.reporter === "destination" ? "inbound" : "outbound",
      requestId: r.requestId,
      source: uri(r.source.principal),
      destination: uri(r.destination.principal),
      service: r.service,
      upstream: r.upstream,
      mtls: r.mtls,
      method: r.method,
      path: r.path,
      status: r.status,
      grpcStatus: r.grpcStatus,
      http2: r.http2,
      flag: r.flag,
      decision: r.decision,
      policy: r.policy,
      rule: r.rule,
      reason: r.reason,
      dryRun: r.dryRun,
      requestBytes: r.requestBytes,
      responseBytes: r.responseBytes,
      durationMs: Math.round(r.durationMs * 1000) / 1000,
      err: r.err,
    });
  }

  /** The series of a record's label tuple: a recent one, else by its key (built on first sight). */
  private seriesOf(r: HttpRecord): HttpSeries {
    const recent = this.recent;
    for (let i = 0; i < RECENT; i++) {
      const m = recent[i]!;
      if (m.series !== undefined && m.matches(r)) return m.series;
    }
    const s = r.source;
    const d = r.destination;
    // One key per label tuple: the labels object is built only for a tuple not seen before.
    // Caller-chosen values go through the guard first, so a capped label cannot grow the series either.
    const sw = this.guard.value("source_workload", s.workload ?? "unknown");
    const svc = this.guard.value("destination_service", r.service ?? "unknown");
    const key = `${r.reporter}|${sw}|${s.namespace}|${s.principal}|${d.workload}|${d.namespace}|${d.principal}|${svc}|${r.flag}|${r.mtls}|${r.protocol}|${r.status}|${r.grpcStatus ?? ""}`;
    let series = this.httpSeries.get(key);
    if (series === undefined) {
      const labels = () => ({
        ...peerLabels(this.guard, r),
        request_protocol: r.protocol,
        response_code: String(r.status),
        ...(r.grpcStatus !== undefined ? { grpc_response_status: r.grpcStatus } : {}),
      });
      series = {
        requests: this.requests.at(key, labels),
        duration: this.duration.at(key, labels),
        requestBytes: this.reqBytes.at(key, labels),
        responseBytes: this.respBytes.at(key, labels),
      };
      this.httpSeries.set(key, series);
    }
    recent[this.recentNext] = Recent.of(r, series);
    this.recentNext = (this.recentNext + 1) % RECENT;
    return series;
  }

  /** The decision counter of a record's reporter, decision, policy and action (the last one is kept). */
  private decisionOf(r: HttpRecord): Series {
    const last = this.lastDecision;
    if (
      last !== undefined &&
      last.policy === r.policy &&
      last.decision === r.decision &&
      last.action === r.action &&
      last.reporter === r.reporter
    )
      return last.series;
    const key = `${r.reporter}|${r.decision}|${r.policy}|${r.action}`;
    const series = this.decisions.at(key, () => ({
      reporter: r.reporter,
      decision: r.decision ?? "none",
      policy: r.policy ?? "none",
      action: r.action ?? "none",
    }));
    this.lastDecision = {
      reporter: r.reporter,
      decision: r.decision,
      policy: r.policy,
      action: r.action,
      series,
    };
    return series;
  }

  tcpOpen(r: Omit<TcpRecord, "sentBytes" | "receivedBytes" | "durationMs">): void {
    this.tcpOpened.inc(peerLabels(this.guard, r));
  }

  tcpClose(r: TcpRecord): void {
    const labels = peerLabels(this.guard, r);
    this.tcpClosed.inc(labels);
    this.tcpSent.inc(labels, r.sentBytes);
    this.tcpReceived.inc(labels, r.receivedBytes);
    this.log.info(
      {
        direction: r.reporter === "destination" ? "inbound" : "outbound",
        protocol: "tcp",
        source: uri(r.source.principal),
        destination: uri(r.destination.principal),
        service: r.service,
        upstream: r.upstream,
        mtls: r.mtls,
        flag: r.flag,
        decision: r.decision,
        policy: r.policy,
        reason: r.reason,
        sentBytes: r.sentBytes,
        receivedBytes: r.receivedBytes,
        durationMs: Math.round(r.durationMs),
      },
      "access",
    );
  }

  /** The Prometheus endpoint (:15020): /stats/prometheus as Istio serves it, and /metrics. */
  server(): Server {
    return createServer((req, res) => {
      const path = (req.url ?? "/").split("?")[0];
      if (path !== "/stats/prometheus" && path !== "/metrics") {
        res.writeHead(404).end("GET /stats/prometheus\n");
        return;
      }
      this.registry.metrics().then(
        (text) => {
          res.writeHead(200, { "content-type": this.registry.contentType });
          res.end(text);
        },
        () => res.writeHead(500).end(),
      );
    });
  }
}
