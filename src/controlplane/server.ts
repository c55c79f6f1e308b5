// The control plane process: the mesh CA and config delivery over gRPC (TLS, :15012). It loads
// the resource store, watches it, and pushes each connected proxy its snapshot when it changes;
// a change that fails validation is rejected and every proxy keeps its last good config.
// Everything it needs survives a restart on disk (CA store, resource store, token file), and a
// proxy that reconnects with the version it already holds is not sent it again.

import { createHash } from "node:crypto";
import { type FSWatcher, watch } from "node:fs";
import { readdir, readFile, rename, stat, writeFile } from "node:fs/promises";
import { basename, dirname, join, relative, resolve } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry as PromRegistry } from "prom-client";
import {
  AUTH_METADATA,
  type ConfigAck,
  type ConfigPush,
  meshCAService,
  meshConfigService,
  type ProxySnapshot,
  SERVICES_NOT_HELD,
  type SignRequest,
  type SignResponse,
} from "../api/index.js";
import {
  assemble,
  ConfigError,
  type ConfigProblem,
  type MeshConfig,
  PORTS,
  parseYaml,
  resourceFiles,
  type WorkloadEntry,
} from "../config/index.js";
import { diagnostics, type Logger, logger } from "../diag/index.js";
import { isZmeshError } from "../errors/index.js";
import type { CertificateAuthority } from "../identity/index.js";
import { type AdminServer, type DebugServer, serveAdmin, serveDebug } from "./admin.js";
import type { Attested, Attestor } from "./attest.js";
import { openCa, writeCaStore } from "./castore.js";
import { Registry, type RegistryOptions, servicesVersionOf } from "./registry.js";

export interface ControlPlaneOptions extends RegistryOptions {
  /** Resource store: directories or files of YAML. */
  configPaths: string[];
  /** host:port to serve gRPC on; port 0 picks one. */
  listen: string;
  attestor: Attestor;
  /** Where to write the trust bundle (public) for bootstrapping proxies. */
  bundleOut?: string;
  /** Lifetime of workload certificates (the CA's default, 24 h, when absent). */
  certTtlSeconds?: number;
  /** A CA made by the caller (tests bring one whose keys they hold); else opened from caStore. */
  ca?: CertificateAuthority;
  /** CA store file and its key-encryption key; without them the CA lives in memory only. */
  caStore?: string;
  kek?: Buffer;
  /** Unix socket for the admin API the CLI uses (bundle, CA state, status, root rotation). */
  adminSocket?: string;
  /** host:port (port 0 picks one) or a Unix socket path for /metrics; absent: no debug server. */
  debugListen?: string;
  /** Also export the process metrics (RSS, CPU, event loop) on /metrics; on for the real process. */
  processMetrics?: boolean;
  watch?: boolean;
  /** Quiet period after the last store event before a reload (ms); a burst waits at most twice this. */
  debounceMs?: number;
  /** Pushes whose ACK is awaited at once (default 1024). */
  maxInflightPushes?: number;
  /**
   * Bytes of pushes whose ACK is awaited at once (default 16 MiB): bounds the memory a mesh-wide
   * change takes. Pushes without services are small, so many go out at once; full ones, few.
   */
  maxInflightBytes?: number;
  log?: Logger;
}

interface Subscriber {
  who: Attested;
  key: string;
  call: grpc.ServerDuplexStream<ConfigAck, ConfigPush>;
  connectedAt: number;
  sentVersion: string;
  ackedVersion: string;
  nonce: number;
  /** The version the proxy said it holds when it connected (undefined until it says). */
  hello: string | undefined;
  /** When the store change this proxy has not ACKed yet was first seen (ms since epoch). */
  changeAt: number | undefined;
  /** The servicesVersion the proxy holds (from its last ACK, or its hello); "" when unknown. */
  servicesHeld: string;
  /** The servicesVersion of the last push, and whether that push left the list out. */
  sentServices: string;
  sentWithoutServices: boolean;
  /** A push awaits its ACK: the proxy gets no other until it answers (or its stream ends). */
  inflight: boolean;
  /** It also holds one of the inflight slots, of this many bytes (given back after 10 s). */
  holdsSlot: boolean;
  slotBytes: number;
  inflightTimer: NodeJS.Timeout | undefined;
  /** In the push queue. */
  queued: boolean;
  /** Changed while a push was in flight: pushed again once that one is answered. */
  dirty: boolean;
  closed: boolean;
}

interface Rejection {
  at: string;
  reason: string;
  digest: string;
}

export interface ProxyStatus {
  proxy: string;
  spiffeId: string;
  connectedAt: string;
  sent: string;
  acked: string;
  inSync: boolean;
  lastNack: { at: string; version: string; reason: string } | null;
  issuer: string | undefined;
}

/** What `GET /status` on the admin socket answers; `zmesh status` reads it. */
export interface ControlPlaneStatus {
  pid: number;
  startedAt: string;
  grpcPort: number;
  trustDomain: string;
  ca: { phase: string; issuerId: string; roots: number };
  config: {
    generation: number;
    digest: string;
    loadedAt: string;
    resources: number;
    /** The last change that failed validation, while it is newer than the config in force. */
    lastRejection: Rejection | null;
  };
  workloads: { namespace: string; name: string; spiffeId: string; address: string; connected: boolean }[];
  proxies: ProxyStatus[];
}

const CONVERGENCE_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/** The control plane's Prometheus metrics, with Istio's names where Istio has one. */
class Metrics {
  readonly registry = new PromRegistry();
  readonly convergence: Histogram;
  readonly pushes: Counter<"type">;
  readonly rejects: Counter<"type">;
  readonly changes: Counter<"result">;
  readonly connected: Gauge;

  constructor(processMetrics: boolean) {
    const registers = [this.registry];
    this.convergence = new Histogram({
      name: "pilot_proxy_convergence_time",
      help: "Seconds from a store change being seen to a proxy ACKing the snapshot that carries it",
      buckets: CONVERGENCE_BUCKETS,
      registers,
    });
    this.pushes = new Counter({
      name: "pilot_xds_pushes",
      help: "Snapshots pushed to proxies",
      labelNames: ["type"],
      registers,
    });
    this.rejects = new Counter({
      name: "pilot_total_xds_rejects",
      help: "Snapshots a proxy rejected (NACK)",
      labelNames: ["type"],
      registers,
    });
    this.changes = new Counter({
      name: "zmesh_config_changes_total",
      help: "Store changes by outcome: accepted, rejected (failed validation, last good kept), unchanged",
      labelNames: ["result"],
      registers,
    });
    this.connected = new Gauge({
      name: "pilot_xds",
      help: "Proxies connected to this control plane",
      registers,
    });
    for (const r of ["accepted", "rejected", "unchanged"]) this.changes.inc({ result: r }, 0);
    this.pushes.inc({ type: "snapshot" }, 0);
    this.pushes.inc({ type: "snapshot_without_services" }, 0);
    this.rejects.inc({ type: "snapshot" }, 0);
    if (processMetrics) collectDefaultMetrics({ register: this.registry });
  }
}

// ---- reading the store ----------------------------------------------------------------------

function digestOf(texts: { file: string; text: string }[]): string {
  const h = createHash("sha256");
  for (const t of texts) h.update(resolve(t.file)).update("\0").update(t.text).update("\0");
  return h.digest("hex").slice(0, 16);
}

/**
 * Reads the store like loadConfig, but parses again only the files whose text changed since the
 * last read: with thousands of resources, YAML parsing dominates a reload.
 */
class StoreReader {
  private readonly parsed = new Map<
    string,
    { text: string; documents: MeshConfig["documents"]; problems: ConfigProblem[] }
  >();

  constructor(private readonly paths: string[]) {}

  async read(): Promise<{ texts: { file: string; text: string }[]; digest: string }> {
    const files = await resourceFiles(this.paths);
    const texts = await Promise.all(
      files.map(async (file) => ({ file, text: await readFile(file, "utf8") })),
    );
    return { texts, digest: digestOf(texts) };
  }

  /** Validates what `read` returned into a MeshConfig; throws ConfigError with every problem. */
  load(texts: { file: string; text: string }[]): MeshConfig {
    const all: MeshConfig["documents"] = [];
    const problems: ConfigProblem[] = [];
    const seen = new Set<string>();
    for (const { file, text } of texts) {
      seen.add(file);
      let p = this.parsed.get(file);
      if (p?.text !== text) {
        const shown = relative(process.cwd(), file) || file;
        const r = parseYaml(text, shown.startsWith("..") ? file : shown);
        p = { text, ...r };
        this.parsed.set(file, p);
      }
      all.push(...p.documents);
      problems.push(...p.problems);
    }
    for (const f of [...this.parsed.keys()]) if (!seen.has(f)) this.parsed.delete(f);
    const { config, problems: more } = assemble(all);
    problems.push(...more);
    if (problems.length > 0) throw new ConfigError(problems);
    return config;
  }
}

// ---- snapshots ------------------------------------------------------------------------------

interface CaView {
  trustBundlePem: string;
  issuerId: string;
  /** Digest of bundle and issuer: the CA part of a cached snapshot's key. */
  fingerprint: string;
}

/**
 * One snapshot ready to send: its version and its JSON as UTF-8 in two parts, the object without
 * `services` and its closing brace (`head`), and the services list (shared by every proxy when the
 * shortcut holds). A push to a proxy that holds `servicesVersion` leaves the list out.
 */
interface Built {
  version: string;
  servicesVersion: string;
  head: Buffer;
  services: Buffer;
}

const SERVICES_KEY = Buffer.from(',"services":');
const CLOSE = Buffer.from("}");

function varint(n: number): Buffer {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return Buffer.from(out);
}

function field(tag: number, value: Buffer): Buffer[] {
  return [Buffer.from([tag]), varint(value.length), value];
}

/** Encodes a ConfigPush by hand (proto/zmesh/v1/mesh.proto: 1 version, 2 nonce, 3 snapshot_json). */
function encodePush(b: Built, nonce: string, withServices: boolean): Buffer {
  const json = withServices ? [b.head, SERVICES_KEY, b.services, CLOSE] : [b.head, CLOSE];
  return Buffer.concat([
    ...field(0x0a, Buffer.from(b.version)),
    ...field(0x12, Buffer.from(nonce)),
    Buffer.from([0x1a]),
    varint(json.reduce((n, x) => n + x.length, 0)),
    ...json,
  ]);
}

/** Digests of config objects, by identity: the store reader hands back the same objects for files
 * that did not change, so a reload digests only what is new. */
const digests = new WeakMap<object, string>();

function digestOfObject(o: object): string {
  let d = digests.get(o);
  if (d === undefined) {
    d = createHash("sha256").update(JSON.stringify(o)).digest("base64").slice(0, 16);
    digests.set(o, d);
  }
  return d;
}

/** Config fields outside the per-entry inputs; a change to any of them rebuilds every snapshot. */
const PER_ENTRY_FIELDS = new Set(["workloads", "services", "workloadEntries", "policies", "documents"]);

function listDigest(v: unknown): string {
  return Array.isArray(v)
    ? v.map((x) => (typeof x === "object" && x ? digestOfObject(x) : String(x))).join(",")
    : JSON.stringify(v);
}

/**
 * Builds each proxy's snapshot from one config generation. The services list is the same for
 * every proxy and is most of a snapshot's bytes, so it is serialized and encoded once, and kept
 * across generations that change only AuthorizationPolicies; each proxy's own part (workload,
 * policies, trust) comes from a registry over the same config without services and with only the
 * policies of the proxy's namespace and the root namespace (the only ones Istio attaches), and the
 * two are joined as bytes. A proxy whose inputs (its entry, those policies, the rest of the config,
 * services, CA) are those of the previous generation keeps its snapshot, not built again. The
 * shortcut is checked against the full registry's own snapshots and not taken if they differ.
 */
class Snapshots {
  private readonly entries = new Map<string, WorkloadEntry>();
  private readonly built = new Map<string, { input: string; built: Built }>();
  private readonly light = new Map<string, Registry>();
  private readonly nsDigest = new Map<string, string>();
  /** Digest of everything but AuthorizationPolicies: what the shared services part may depend on. */
  private readonly sharedKey: string;
  private readonly otherDigest: string;
  private full: Registry | undefined;
  private shared: { buf: Buffer; digest: string; key: string } | undefined | null;

  constructor(
    readonly config: MeshConfig,
    private readonly opts: RegistryOptions,
    private readonly log: Logger,
    private previous?: Snapshots,
  ) {
    // Keep one generation back, not a chain of them.
    if (previous) previous.previous = undefined;
    for (const e of config.workloadEntries) this.entries.set(`${e.meta.namespace}/${e.meta.name}`, e);
    const other: string[] = [];
    const fields = config as unknown as Record<string, unknown>;
    for (const k of Object.keys(fields).sort()) {
      if (!PER_ENTRY_FIELDS.has(k)) other.push(`${k}:${listDigest(fields[k])}`);
    }
    this.otherDigest = other.join(";");
    this.sharedKey = `${this.otherDigest}|${listDigest(config.services)}|${listDigest(config.workloadEntries)}`;
  }

  /** The registry over the whole config (built on first use: its services cost O(services x entries)). */
  get registry(): Registry {
    this.full ??= new Registry(this.config, this.opts);
    return this.full;
  }

  spiffeIdOf(e: WorkloadEntry): string {
    return this.lightFor(e.meta.namespace).spiffeIdOf(e);
  }

  entry(namespace: string, name: string): WorkloadEntry | undefined {
    return this.entries.get(`${namespace}/${name}`);
  }

  allEntries(): WorkloadEntry[] {
    return [...this.entries.values()];
  }

  /** A registry without services and with only the policies that can attach in `ns`. */
  private lightFor(ns: string): Registry {
    let r = this.light.get(ns);
    if (!r) {
      const root = this.opts.rootNamespace;
      r = new Registry(
        {
          ...this.config,
          services: [],
          policies: this.config.policies.filter((p) => p.meta.namespace === ns || p.meta.namespace === root),
        },
        this.opts,
      );
      this.light.set(ns, r);
    }
    return r;
  }

  private policiesDigest(ns: string): string {
    let d = this.nsDigest.get(ns);
    if (d === undefined) {
      d = listDigest(this.config.policies.filter((p) => p.meta.namespace === ns));
      this.nsDigest.set(ns, d);
    }
    return d;
  }

  /** The shared services bytes, or null when the shortcut does not reproduce the registry. */
  private sharedPart(ca: CaView): { buf: Buffer; digest: string } | null {
    if (this.shared !== undefined) return this.shared;
    const before = this.previous?.shared;
    if (before && before.key === this.sharedKey) {
      this.shared = before;
      return before;
    }
    const all = [...this.entries.values()];
    const sample = [all[0], all[Math.floor(all.length / 2)], all.at(-1)].filter((e) => e !== undefined);
    const { fingerprint: _f, ...view } = ca;
    let servicesJson: string | undefined;
    for (const e of sample) {
      const full = this.registry.snapshotFor(e, view);
      const json = JSON.stringify(full.services);
      servicesJson ??= json;
      const light = this.lightFor(e.meta.namespace).snapshotFor(e, view);
      const same =
        json === servicesJson &&
        full.servicesVersion === servicesVersionOf(json) &&
        JSON.stringify({ ...full, version: "" }) ===
          JSON.stringify({
            ...light,
            version: "",
            servicesVersion: full.servicesVersion,
            services: full.services,
          });
      if (!same) {
        this.log.warn("snapshot shortcut disabled: the registry's snapshots differ in more than services");
        this.shared = null;
        return null;
      }
    }
    servicesJson ??= "[]";
    this.shared = {
      buf: Buffer.from(servicesJson),
      digest: servicesVersionOf(servicesJson),
      key: this.sharedKey,
    };
    return this.shared;
  }

  snapshot(e: WorkloadEntry, ca: CaView): Built {
    const key = `${e.meta.namespace}/${e.meta.name}`;
    const shared = this.sharedPart(ca);
    const ns = e.meta.namespace;
    const input = shared
      ? `${digestOfObject(e)}|${this.policiesDigest(ns)}|${this.policiesDigest(this.opts.rootNamespace)}|${this.otherDigest}|${shared.digest}|${ca.fingerprint}`
      : "";
    const mine = this.built.get(key);
    if (mine && mine.input === input && input !== "") return mine.built;
    const prev = this.previous?.built.get(key);
    if (prev && prev.input === input && input !== "") {
      this.built.set(key, prev);
      return prev.built;
    }
    const { fingerprint: _f, ...view } = ca;
    let b: Built;
    if (shared) {
      // Serialized once: the version is the digest of these bytes and the services digest.
      const { services: _none, servicesVersion: _empty, ...rest } = this.lightFor(ns).bodyFor(e, view);
      const json = JSON.stringify(rest);
      const version = createHash("sha256").update(json).update(shared.digest).digest("hex").slice(0, 12);
      const head = Buffer.from(
        `{"version":${JSON.stringify(version)},${json.slice(1, -1)},"servicesVersion":${JSON.stringify(shared.digest)}`,
      );
      b = { version, servicesVersion: shared.digest, head, services: shared.buf };
    } else {
      const { services, ...rest }: ProxySnapshot = this.registry.snapshotFor(e, view);
      b = {
        version: rest.version,
        servicesVersion: rest.servicesVersion,
        head: Buffer.from(JSON.stringify(rest).slice(0, -1)),
        services: Buffer.from(JSON.stringify(services)),
      };
    }
    this.built.set(key, { input, built: b });
    return b;
  }
}

/** The MeshConfig service with ConfigPush messages that may arrive already encoded (a Buffer). */
function configService(): grpc.ServiceDefinition {
  const def = meshConfigService();
  const stream = def["Stream"]!;
  return {
    ...def,
    Stream: {
      ...stream,
      responseSerialize: (m: unknown) => (Buffer.isBuffer(m) ? m : stream.responseSerialize(m)),
    },
  };
}

export class ControlPlane {
  readonly ca: CertificateAuthority;
  port = 0;
  /** Port of the debug server (metrics) when it listens on TCP. */
  debugPort = 0;
  private snapshots: Snapshots;
  private readonly server = new grpc.Server({ "grpc.max_send_message_length": -1 });
  private readonly subscribers = new Set<Subscriber>();
  private readonly log: Logger;
  private readonly diag = diagnostics("controlplane");
  private readonly metrics: Metrics;
  private readonly reader: StoreReader;
  private readonly watchers: FSWatcher[] = [];
  private servingTimer: NodeJS.Timeout | undefined;
  private pollTimer: NodeJS.Timeout | undefined;
  private admin: AdminServer | undefined;
  private debug: DebugServer | undefined;
  /** The issuer of the last certificate signed for each workload instance. */
  private readonly issuedBy = new Map<string, string>();
  private readonly lastNack = new Map<string, { at: string; version: string; reason: string }>();
  private reloadTimer: NodeJS.Timeout | undefined;
  /** When the first store event of the pending burst was seen: performance.now() and wall clock. */
  private burst: { first: number; at: number } | undefined;
  private reloading: Promise<boolean> | undefined;
  private reloadAgain: { at: number } | undefined;
  private generation = 1;
  private digest: string;
  private loadedAt = new Date();
  private lastRejection: Rejection | undefined;
  private readonly startedAt = new Date();
  private readonly queue: Subscriber[] = [];
  private inflight = 0;
  private inflightBytes = 0;
  private closed = false;

  private constructor(
    private readonly opts: ControlPlaneOptions,
    ca: CertificateAuthority,
    config: MeshConfig,
    reader: StoreReader,
    digest: string,
  ) {
    this.ca = ca;
    this.log = opts.log ?? logger("controlplane");
    this.snapshots = new Snapshots(config, opts, this.log);
    this.reader = reader;
    this.digest = digest;
    this.metrics = new Metrics(opts.processMetrics === true);
  }

  static async start(opts: ControlPlaneOptions): Promise<ControlPlane> {
    const reader = new StoreReader(opts.configPaths);
    const { texts, digest } = await reader.read();
    const config = reader.load(texts);
    const ca =
      opts.ca ??
      (await openCa({
        trustDomain: opts.trustDomain,
        ...(opts.caStore ? { file: opts.caStore } : {}),
        ...(opts.kek ? { kek: opts.kek } : {}),
      }));
    const cp = new ControlPlane(opts, ca, config, reader, digest);
    cp.server.addService(meshCAService(), { Sign: cp.sign.bind(cp) });
    cp.server.addService(configService(), { Stream: cp.stream.bind(cp) });
    await cp.serve();
    await cp.writeBundle();
    if (opts.adminSocket) cp.admin = await serveAdmin(opts.adminSocket, cp);
    if (opts.debugListen) {
      cp.debug = await serveDebug(opts.debugListen, cp);
      cp.debugPort = cp.debug.port;
      cp.log.info({ debug: opts.debugListen, port: cp.debugPort }, "metrics on /metrics");
    }
    if (opts.watch !== false) await cp.watchConfig();
    return cp;
  }

  /** The digest of a store's files as the control plane computes it (`status().config.digest`). */
  static async storeDigest(paths: string[]): Promise<string> {
    return (await new StoreReader(paths).read()).digest;
  }

  get spiffeId(): string {
    return `spiffe://${this.opts.trustDomain}/ns/${this.opts.rootNamespace}/sa/zmesh-controlplane`;
  }

  /**
   * Binds the gRPC port with a fresh serving certificate from the current issuer. Called at start,
   * at half the certificate's life, and when a root rotation moves issuance: open streams keep the
   * connection they have; new connections see the new certificate.
   */
  private async serve(): Promise<void> {
    const { keyPem, svid } = await this.ca.issue(this.spiffeId);
    const creds = grpc.ServerCredentials.createSsl(
      null,
      [{ private_key: Buffer.from(keyPem), cert_chain: Buffer.from(svid.chainPem.join("")) }],
      false,
    );
    const addr = this.opts.listen || `127.0.0.1:${PORTS.controlPlaneGrpc}`;
    const bindAddr = this.port ? addr.replace(/:0$/, `:${this.port}`) : addr;
    if (this.port) this.server.unbind(bindAddr);
    this.port = await new Promise<number>((resolvePort, reject) =>
      this.server.bindAsync(bindAddr, creds, (err, port) => (err ? reject(err) : resolvePort(port))),
    );
    clearTimeout(this.servingTimer);
    this.servingTimer = setTimeout(
      () => void this.serve(),
      (svid.notAfter.getTime() - Date.now()) / 2,
    ).unref();
    this.log.info(
      { listen: bindAddr, port: this.port, spiffeId: this.spiffeId, issuer: this.ca.issuerId() },
      "control plane serving",
    );
  }

  private async writeBundle(): Promise<void> {
    if (this.opts.bundleOut) {
      const tmp = `${this.opts.bundleOut}.tmp`;
      await writeFile(tmp, this.ca.trustBundlePem(), { mode: 0o644 });
      await rename(tmp, this.opts.bundleOut);
    }
  }

  private async saveCa(): Promise<void> {
    if (this.opts.caStore && this.opts.kek) await writeCaStore(this.opts.caStore, this.ca, this.opts.kek);
    await this.writeBundle();
  }

  private async authenticate(md: grpc.Metadata): Promise<Attested | undefined> {
    const cred = md.get(AUTH_METADATA)[0];
    if (typeof cred !== "string") return undefined;
    return this.opts.attestor.attest(cred);
  }

  private sign(
    call: grpc.ServerUnaryCall<SignRequest, SignResponse>,
    cb: grpc.sendUnaryData<SignResponse>,
  ): void {
    void (async () => {
      const who = await this.authenticate(call.metadata);
      if (!who) {
        this.log.warn({ peer: call.getPeer() }, "CSR refused: no valid credential");
        return cb({
          code: grpc.status.UNAUTHENTICATED,
          details: "ZMESH_UNAUTHENTICATED: no valid bootstrap credential",
        });
      }
      const entry = this.snapshots.entry(who.namespace, who.entry);
      if (!entry) {
        return cb({
          code: grpc.status.NOT_FOUND,
          details: `no workload instance ${who.namespace}/${who.entry} in the registry`,
        });
      }
      const expected = this.snapshots.spiffeIdOf(entry);
      try {
        const svid = await this.ca.signCsr(
          call.request.csrPem,
          expected,
          call.request.ttlSeconds || this.opts.certTtlSeconds,
        );
        this.issuedBy.set(`${who.namespace}/${who.entry}`, this.ca.issuerId());
        this.diag.publish({ event: "signed", spiffeId: svid.spiffeId, serial: svid.serial });
        this.log.info(
          { spiffeId: svid.spiffeId, serial: svid.serial, notAfter: svid.notAfter },
          "certificate issued",
        );
        cb(null, { certChainPem: svid.chainPem, trustBundlePem: this.ca.trustBundlePem() });
      } catch (e) {
        const code = isZmeshError(e, "ZMESH_CSR_IDENTITY")
          ? grpc.status.PERMISSION_DENIED
          : grpc.status.INVALID_ARGUMENT;
        this.log.warn(
          { caller: `${who.namespace}/${who.entry}`, expected, err: (e as Error).message },
          "CSR refused",
        );
        cb({ code, details: `${isZmeshError(e) ? e.code : "ZMESH_CSR_INVALID"}: ${(e as Error).message}` });
      }
    })();
  }

  private stream(call: grpc.ServerDuplexStream<ConfigAck, ConfigPush>): void {
    // Listen at once: the proxy's first message (the version it holds) may come before attestation ends.
    const early: ConfigAck[] = [];
    let onData = (ack: ConfigAck): void => {
      early.push(ack);
    };
    call.on("data", (ack: ConfigAck) => onData(ack));
    void (async () => {
      const who = await this.authenticate(call.metadata);
      if (!who) {
        call.emit("error", {
          code: grpc.status.UNAUTHENTICATED,
          details: "ZMESH_UNAUTHENTICATED: no valid bootstrap credential",
        });
        return;
      }
      if (this.closed) return call.end();
      if (call.cancelled) return; // the proxy left while it was being attested
      const sub: Subscriber = {
        who,
        key: `${who.namespace}/${who.entry}`,
        call,
        connectedAt: Date.now(),
        sentVersion: "",
        ackedVersion: "",
        nonce: 0,
        servicesHeld: "",
        sentServices: "",
        sentWithoutServices: false,
        hello: undefined,
        changeAt: undefined,
        inflight: false,
        holdsSlot: false,
        slotBytes: 0,
        inflightTimer: undefined,
        queued: false,
        dirty: false,
        closed: false,
      };
      this.subscribers.add(sub);
      this.metrics.connected.set(this.subscribers.size);
      const drop = () => {
        if (sub.closed) return;
        sub.closed = true;
        this.subscribers.delete(sub);
        this.metrics.connected.set(this.subscribers.size);
        this.release(sub);
      };
      call.on("cancelled", drop);
      call.on("error", drop);
      call.on("close", drop);
      call.on("end", () => {
        drop();
        call.end();
      });
      onData = (ack) => {
        this.onAck(sub, ack);
      };
      for (const a of early.splice(0)) onData(a);
      // A proxy says which version it holds first; if it never does, push after a moment anyway.
      if (sub.hello === undefined) {
        setTimeout(() => {
          if (sub.hello === undefined && !sub.closed) {
            sub.hello = "";
            this.enqueue(sub);
          }
        }, 1_000).unref();
      }
    })();
  }

  private onAck(sub: Subscriber, ack: ConfigAck): void {
    if (ack.nonce === "" && sub.hello === undefined) {
      // The first message: the version the proxy enforces now (empty when it has none).
      sub.hello = ack.version;
      const entry = this.snapshots.entry(sub.who.namespace, sub.who.entry);
      const now = entry && ack.version !== "" ? this.snapshots.snapshot(entry, this.caView()) : undefined;
      if (now && now.version === ack.version) {
        sub.sentVersion = ack.version;
        sub.ackedVersion = ack.version;
        sub.servicesHeld = now.servicesVersion;
        this.log.debug({ proxy: sub.key, version: ack.version }, "proxy reconnected in sync");
        return;
      }
      this.enqueue(sub);
      return;
    }
    if (ack.nonce !== String(sub.nonce)) return; // an answer to an older push
    const convergedFrom = sub.changeAt;
    sub.changeAt = undefined;
    if (ack.error && sub.sentWithoutServices && ack.error.startsWith(SERVICES_NOT_HELD)) {
      // The proxy does not hold the list the push left out: send it the whole snapshot.
      this.log.warn({ proxy: sub.key, reason: ack.error }, "proxy lacks the services list; resending it");
      sub.servicesHeld = "";
      sub.sentVersion = "";
      sub.dirty = true;
      sub.changeAt = convergedFrom;
    } else if (ack.error) {
      this.metrics.rejects.inc({ type: "snapshot" });
      const nack = { at: new Date().toISOString(), version: sub.sentVersion, reason: ack.error };
      this.lastNack.set(sub.key, nack);
      this.log.warn({ proxy: sub.key, version: sub.sentVersion, reason: ack.error }, "config NACKed");
    } else {
      sub.ackedVersion = ack.version;
      if (ack.version === sub.sentVersion) sub.servicesHeld = sub.sentServices;
      if (convergedFrom !== undefined && ack.version === sub.sentVersion)
        this.metrics.convergence.observe((Date.now() - convergedFrom) / 1000);
      this.diag.publish({ event: "ack", proxy: sub.key, version: ack.version });
    }
    this.release(sub);
  }

  private caMemo: { bundle: string; issuerId: string; view: CaView } | undefined;

  /** The CA as snapshots show it, with a digest of the bundle to key cached snapshots by. */
  private caView(): CaView {
    const bundle = this.ca.trustBundlePem();
    const issuerId = this.ca.issuerId();
    if (this.caMemo?.bundle !== bundle || this.caMemo.issuerId !== issuerId) {
      const fingerprint = createHash("sha256").update(bundle).update(issuerId).digest("hex").slice(0, 16);
      this.caMemo = { bundle, issuerId, view: { trustBundlePem: bundle, issuerId, fingerprint } };
    }
    return this.caMemo.view;
  }

  /** Gives back the push slot a subscriber holds, if it holds one. */
  private freeSlot(sub: Subscriber): void {
    clearTimeout(sub.inflightTimer);
    if (sub.holdsSlot) {
      sub.holdsSlot = false;
      this.inflight--;
      this.inflightBytes -= sub.slotBytes;
    }
  }

  /** The proxy answered (or is gone): its slot is free, and it is queued again if it changed meanwhile. */
  private release(sub: Subscriber): void {
    this.freeSlot(sub);
    if (sub.inflight) {
      sub.inflight = false;
      if (sub.dirty && !sub.closed) {
        sub.dirty = false;
        sub.queued = true;
        this.queue.push(sub);
      }
    }
    this.drain();
  }

  private enqueue(sub: Subscriber, changeAt?: number): void {
    if (sub.closed || sub.hello === undefined) return;
    if (changeAt !== undefined) sub.changeAt ??= changeAt;
    if (sub.inflight)
      sub.dirty = true; // it gets the latest once it answers the push it has
    else if (!sub.queued) {
      sub.queued = true;
      this.queue.push(sub);
    }
    this.drain();
  }

  /** Sends queued pushes while fewer than maxInflightPushes, of fewer than maxInflightBytes, await their ACK. */
  private drain(): void {
    const max = this.opts.maxInflightPushes ?? 1024;
    const maxBytes = this.opts.maxInflightBytes ?? 16 * 2 ** 20;
    while (
      this.queue.length > 0 &&
      this.inflight < max &&
      (this.inflight === 0 || this.inflightBytes < maxBytes)
    ) {
      const sub = this.queue.shift()!;
      sub.queued = false;
      if (!sub.closed) this.push(sub);
    }
  }

  private push(sub: Subscriber): void {
    const entry = this.snapshots.entry(sub.who.namespace, sub.who.entry);
    if (!entry) {
      sub.call.emit("error", {
        code: grpc.status.NOT_FOUND,
        details: `workload instance ${sub.who.entry} was removed`,
      });
      sub.closed = true;
      this.subscribers.delete(sub);
      this.metrics.connected.set(this.subscribers.size);
      return;
    }
    const built = this.snapshots.snapshot(entry, this.caView());
    if (built.version === sub.sentVersion) {
      if (sub.ackedVersion === built.version) sub.changeAt = undefined;
      return;
    }
    sub.sentVersion = built.version;
    const withServices = built.servicesVersion !== sub.servicesHeld;
    sub.sentServices = built.servicesVersion;
    sub.sentWithoutServices = !withServices;
    sub.nonce++;
    const bytes = encodePush(built, String(sub.nonce), withServices);
    sub.inflight = true;
    sub.holdsSlot = true;
    sub.slotBytes = bytes.length;
    this.inflight++;
    this.inflightBytes += bytes.length;
    // A slow or stuck proxy does not hold a slot forever; it still gets nothing new until it answers,
    // so what waits for it in the send buffers is one snapshot at most.
    sub.inflightTimer = setTimeout(() => {
      this.freeSlot(sub);
      this.drain();
    }, 10_000).unref();
    this.metrics.pushes.inc({ type: withServices ? "snapshot" : "snapshot_without_services" });
    sub.call.write(bytes as unknown as ConfigPush);
  }

  /** Reloads the store now; on any problem keeps the last good registry and reports why. */
  reload(): Promise<boolean> {
    return this.scheduleReload(Date.now());
  }

  private scheduleReload(changeAt: number): Promise<boolean> {
    if (this.reloading) {
      this.reloadAgain = { at: Math.min(this.reloadAgain?.at ?? changeAt, changeAt) };
      return this.reloading.then(() => this.reloading ?? this.scheduleReload(changeAt));
    }
    this.reloading = this.doReload(changeAt).finally(() => {
      this.reloading = undefined;
      const again = this.reloadAgain;
      this.reloadAgain = undefined;
      if (again && !this.closed) void this.scheduleReload(again.at);
    });
    return this.reloading;
  }

  private async doReload(changeAt: number): Promise<boolean> {
    const reject = (reason: string, digest: string) => {
      this.lastRejection = { at: new Date().toISOString(), reason, digest };
      this.metrics.changes.inc({ result: "rejected" });
      this.log.error({ reason }, "configuration change rejected; proxies keep their last good config");
      return false;
    };
    const t0 = performance.now();
    let read: Awaited<ReturnType<StoreReader["read"]>>;
    try {
      read = await this.reader.read();
    } catch (e) {
      return reject((e as Error).message, "");
    }
    const digest = read.digest;
    if (digest === this.digest) {
      // Back to (or still at) the config in force: nothing to push, and no rejection pending.
      this.lastRejection = undefined;
      this.metrics.changes.inc({ result: "unchanged" });
      this.log.debug({ digest }, "store unchanged; nothing to push");
      return true;
    }
    if (digest === this.lastRejection?.digest) return false;
    const t1 = performance.now();
    let config: MeshConfig;
    try {
      config = this.reader.load(read.texts);
    } catch (e) {
      return reject((e as Error).message, digest);
    }
    const t2 = performance.now();
    this.snapshots = new Snapshots(config, this.opts, this.log, this.snapshots);
    this.digest = digest;
    this.generation++;
    this.loadedAt = new Date();
    this.lastRejection = undefined;
    this.metrics.changes.inc({ result: "accepted" });
    this.pushAll(changeAt);
    const t3 = performance.now();
    this.log.info(
      {
        generation: this.generation,
        digest,
        proxies: this.subscribers.size,
        sinceChangeMs: Date.now() - changeAt,
        ms: { read: Math.round(t1 - t0), load: Math.round(t2 - t1), push: Math.round(t3 - t2) },
      },
      "configuration reloaded",
    );
    return true;
  }

  /** Store event: reload once the store has been quiet for debounceMs (at most 2x after the first). */
  private onStoreEvent(): void {
    if (this.closed) return;
    const debounce = this.opts.debounceMs ?? 50;
    const now = performance.now();
    this.burst ??= { first: now, at: Date.now() };
    clearTimeout(this.reloadTimer);
    const wait = Math.max(0, Math.min(debounce, this.burst.first + 2 * debounce - now));
    this.reloadTimer = setTimeout(() => {
      const at = this.burst?.at ?? Date.now();
      this.burst = undefined;
      void this.scheduleReload(at);
    }, wait);
  }

  /**
   * Watches each store path: a directory with a watch on it and on each of its subdirectories
   * (Node 20's recursive watch on Linux goes blind to a file once it has been replaced by rename,
   * which is how editors and `zmesh apply` write), a file through its directory (a watch on the
   * file itself would follow the replaced inode). A slow poll of the store's digest catches
   * anything a watch still misses.
   */
  private async watchConfig(): Promise<void> {
    for (const p of this.opts.configPaths) {
      const isDir = (await stat(p)).isDirectory();
      if (isDir) await this.watchTree(p);
      else {
        const name = basename(p);
        this.watchDir(dirname(p), (file) => file === null || file === name);
      }
    }
    const poll = async () => {
      try {
        const { digest } = await this.reader.read();
        const pending = this.burst !== undefined || this.reloading !== undefined;
        if (!pending && digest !== this.digest && digest !== this.lastRejection?.digest) this.onStoreEvent();
      } catch {
        // a missing store is reported by the reload it triggers when it changes back
      }
      if (!this.closed) this.pollTimer = setTimeout(() => void poll(), 2_000).unref();
    };
    this.pollTimer = setTimeout(() => void poll(), 2_000).unref();
  }

  private readonly watched = new Map<string, FSWatcher>();

  private watchDir(dir: string, relevant: (file: string | null) => boolean, onDirEvent?: () => void): void {
    if (this.watched.has(dir) || this.closed) return;
    const w = watch(dir, (_event, file) => {
      if (relevant(file)) this.onStoreEvent();
      onDirEvent?.();
    });
    w.on("error", () => {
      w.close();
      this.watched.delete(dir);
    });
    this.watched.set(dir, w);
    this.watchers.push(w);
  }

  /** Watches `root` and every directory under it the store reader would read, new ones included. */
  private async watchTree(root: string): Promise<void> {
    const walk = async (dir: string): Promise<void> => {
      this.watchDir(
        dir,
        () => true,
        () => void walk(dir).catch(() => {}),
      );
      for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
        if (e.isDirectory() && !e.name.startsWith(".") && e.name !== "node_modules") {
          const sub = join(dir, e.name);
          if (!this.watched.has(sub)) await walk(sub);
        }
      }
    };
    await walk(root);
  }

  connectedProxies(): { proxy: string; sent: string; acked: string; issuer: string | undefined }[] {
    return [...this.subscribers].map((s) => ({
      proxy: s.key,
      sent: s.sentVersion,
      acked: s.ackedVersion,
      issuer: this.issuedBy.get(s.key),
    }));
  }

  /** Everything `zmesh status` needs from the control plane. */
  status(): ControlPlaneStatus {
    const snaps = this.snapshots;
    const connected = new Set([...this.subscribers].map((s) => s.key));
    return {
      pid: process.pid,
      startedAt: this.startedAt.toISOString(),
      grpcPort: this.port,
      trustDomain: this.ca.trustDomain,
      ca: {
        phase: this.ca.rotationPhase(),
        issuerId: this.ca.issuerId(),
        roots: this.ca.trustBundlePem().match(/-----BEGIN CERTIFICATE-----/g)?.length ?? 0,
      },
      config: {
        generation: this.generation,
        digest: this.digest,
        loadedAt: this.loadedAt.toISOString(),
        resources: snaps.config.documents.length,
        lastRejection: this.lastRejection ?? null,
      },
      workloads: this.snapshots.allEntries().map((e) => ({
        namespace: e.meta.namespace,
        name: e.meta.name,
        spiffeId: snaps.spiffeIdOf(e),
        address: e.address,
        connected: connected.has(`${e.meta.namespace}/${e.meta.name}`),
      })),
      proxies: [...this.subscribers].map((s) => ({
        proxy: s.key,
        spiffeId: ((e) => (e ? snaps.spiffeIdOf(e) : ""))(snaps.entry(s.who.namespace, s.who.entry)),
        connectedAt: new Date(s.connectedAt).toISOString(),
        sent: s.sentVersion,
        acked: s.ackedVersion,
        inSync: !s.queued && !s.dirty && s.ackedVersion !== "" && s.ackedVersion === s.sentVersion,
        lastNack: this.lastNack.get(s.key) ?? null,
        issuer: this.issuedBy.get(s.key),
      })),
    };
  }

  /** The Prometheus text of /metrics. */
  metricsText(): Promise<string> {
    return this.metrics.registry.metrics();
  }

  get metricsContentType(): string {
    return this.metrics.registry.contentType;
  }

  private pushAll(changeAt?: number): void {
    for (const sub of this.subscribers) this.enqueue(sub, changeAt);
  }

  /**
   * Waits until every proxy in `expected` (and any connected now) is connected and satisfies
   * `done`; a proxy that dropped its stream is waited for, not forgotten. Returns the late ones.
   */
  private async converge(
    expected: Set<string>,
    done: (s: Subscriber) => boolean,
    timeoutMs: number,
  ): Promise<string[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const byKey = new Map([...this.subscribers].map((s) => [s.key, s]));
      for (const k of byKey.keys()) expected.add(k);
      const late = [...expected].filter((k) => {
        const s = byKey.get(k);
        return !s || !done(s);
      });
      if (late.length === 0 || Date.now() >= deadline) return late;
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /**
   * Rotates the root in three steps, resuming from whatever step a previous run reached:
   * (1) a new root joins the trust bundle and every proxy ACKs it, then an overlap window;
   * (2) issuance moves to the new root and every proxy renews its certificate;
   * (3) the old root leaves the bundle. A step that does not converge stops the rotation there.
   */
  async rotateRoot(
    progress: (line: string) => void,
    opts: { overlapMs?: number; timeoutMs?: number } = {},
  ): Promise<boolean> {
    const timeoutMs = opts.timeoutMs ?? 30_000;
    const expected = new Set([...this.subscribers].map((s) => s.key));
    const acked = (s: Subscriber) =>
      !s.queued && !s.inflight && !s.dirty && s.ackedVersion !== "" && s.ackedVersion === s.sentVersion;
    const stopAt = (what: string, late: string[]) => {
      progress(
        `stopped: ${late.length} proxies did not ${what} within ${timeoutMs / 1000} s (${late.join(", ")}); run zmesh ca rotate again to resume`,
      );
      return false;
    };
    if (this.ca.rotationPhase() === "steady") {
      await this.ca.beginRootRotation();
      await this.saveCa();
      this.pushAll();
      progress(
        `1/3 new root added to the trust bundle; waiting for ${this.subscribers.size} proxies to ACK it`,
      );
      const late = await this.converge(expected, acked, timeoutMs);
      if (late.length > 0) return stopAt("ACK the new trust bundle", late);
      const overlap = opts.overlapMs ?? 2_000;
      progress(`    every proxy trusts both roots; overlap window of ${overlap / 1000} s`);
      await new Promise((r) => setTimeout(r, overlap));
    }
    if (this.ca.rotationPhase() === "overlap") {
      this.ca.activatePendingRoot();
      await this.saveCa();
      await this.serve();
      this.pushAll();
      progress(
        `2/3 issuance moved to the new root (issuer ${this.ca.issuerId()}); waiting for every proxy to renew`,
      );
      const late = await this.converge(
        expected,
        (s) => acked(s) && this.issuedBy.get(s.key) === this.ca.issuerId(),
        timeoutMs,
      );
      if (late.length > 0) return stopAt("renew from the new root", late);
    }
    if (this.ca.rotationPhase() === "activated") {
      this.ca.retireOldRoots();
      await this.saveCa();
      this.pushAll();
      progress("3/3 old root retired; waiting for every proxy to ACK the new trust bundle");
      const late = await this.converge(expected, acked, timeoutMs);
      if (late.length > 0) return stopAt("ACK the final trust bundle", late);
    }
    progress("root rotation complete: one root, every proxy renewed from it");
    return true;
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const w of this.watchers) w.close();
    clearTimeout(this.reloadTimer);
    clearTimeout(this.servingTimer);
    clearTimeout(this.pollTimer);
    await this.admin?.close();
    await this.debug?.close();
    for (const s of this.subscribers) {
      this.freeSlot(s);
      s.call.end();
    }
    this.server.forceShutdown();
  }
}
