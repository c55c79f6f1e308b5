// Process settings of every zmesh part: well-known ports, addresses, uids and the environment
// variables that override them. One table, mirrored in docs/configuration.md (a test checks).

export const PORTS = {
  outboundCapture: 15001,
  inboundCapture: 15006,
  proxyAdmin: 15000,
  proxyMetrics: 15020,
  proxyHealth: 15021,
  controlPlaneGrpc: 15012,
  controlPlaneDebug: 15014,
} as const;

export const PROXY_UID = 1337;
/**
 * Node flags the proxy process is started with (by the runtime's supervisor and by the chain
 * bench): a 4 MiB young generation instead of 16 MiB, collected on the main thread. Without the
 * parallel GC helpers (which fight the proxy for its core) the inbound proxy's RSS under load
 * stays near 80-90 MB instead of 91-99 (bench/README.md, round 2). 4 MiB rather than 1: with 1 a
 * scavenge ran every ~60 ms at 1,000 rps and promoted enough to force a main-thread mark-compact
 * in the inbound proxy every few seconds; 4 MiB scavenges a third as often for half the GC time,
 * less CPU per request and a lower p99, for 6-10 MB more RSS (bench/README.md, round 3). The old
 * generation may grow by 20 % of what survived the last mark-compact before the next one, not by
 * V8's factor of up to 4: under load the inbound proxy's heap peaked at ~50 MB (RSS ~100) with
 * V8's default and ~31 MB (RSS ~86) with this, for no more CPU per request (round 4).
 */
export const PROXY_NODE_FLAGS: readonly string[] = [
  "--max-semi-space-size=4",
  "--single-threaded-gc",
  "--heap-growing-percent=20",
];
/**
 * Time bounds of the sidecar's HTTP/1.1 connections, both directions (docs/configuration.md,
 * "Proxy timeouts"). Enforced by one coarse sweep per listener (src/proxy/http1/conn.ts), so a
 * bound holds to within a quarter of the shortest one (at most a second). `streamIdleMs` also
 * bounds each HTTP/2 stream, by a timer per stream (src/proxy/h2.ts `streamEnd`).
 */
export interface ProxyTimeouts {
  /** A request head must be complete this long after its first byte (Envoy's request_headers_timeout): else 408 and close. */
  requestHeadersMs: number;
  /** A keep-alive connection with no request for this long is closed (Envoy's idle_timeout). */
  idleMs: number;
  /** No byte of a request's body or of its response, either way, for this long ends the exchange (Envoy's stream_idle_timeout). */
  streamIdleMs: number;
}

export const PROXY_TIMEOUTS: Readonly<ProxyTimeouts> = {
  requestHeadersMs: 10_000,
  idleMs: 60_000,
  streamIdleMs: 300_000,
};
export const DEFAULT_APP_UID = 1001;
export const DEFAULT_ROOT_NAMESPACE = "zmesh-system";
export const CONTROL_PLANE_SPIFFE_PATH = "/ns/zmesh-system/sa/zmesh-controlplane";

/** Local network plan: pods and the host's bridge address in 198.18.0.0/16, VIPs in 198.19.0.0/16 (RFC 2544 benchmark range, never routed). */
export const NETWORK = {
  podCidr: "198.18.0.0/16",
  gateway: "198.18.0.1",
  prefixLength: 16,
  firstPodHost: 10,
  vipCidr: "198.19.0.0/16",
  firstVipHost: 10,
} as const;

/** Environment variables zmesh reads. Every one is documented in docs/configuration.md. */
export const ENV = {
  /** Directory holding the state of local meshes (default /run/zmesh). */
  stateDir: "ZMESH_STATE_DIR",
  /** Directory of what outlives a mesh: each mesh's CA store and key-encryption key (default /var/lib/zmesh). */
  dataDir: "ZMESH_DATA_DIR",
  /** The CA's key-encryption key, 32 bytes in base64; when unset, a file beside the CA store holds it. */
  caKek: "ZMESH_CA_KEK",
  /** Log level of every zmesh process: trace, debug, info, warn, error (default info). */
  logLevel: "ZMESH_LOG_LEVEL",
  /** Comma-separated diagnostics channels to print to stderr, e.g. "proxy,controlplane" or "*". */
  debug: "ZMESH_DEBUG",
  /** Runs per property of the attack suite's fuzzers (test/attacks/fuzz.test.ts); small in CI, raise for a long run. */
  fuzzRuns: "ZMESH_FUZZ_RUNS",
} as const;

export function envOr(name: string, fallback: string): string {
  const v = process.env[name];
  return v === undefined || v === "" ? fallback : v;
}
