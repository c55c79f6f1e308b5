// One zmesh sidecar of the chain benchmark (bench/chain.ts), alone in its process so that its CPU
// and memory can be read from /proc. The parent sends the configuration over IPC (the bootstrap
// token stays off argv and the environment). The original destination, which iptables gives a
// captured socket, is fixed per process: an outbound sidecar sends everything to the service
// VIP, an inbound one to the app's port.

import { writeFileSync } from "node:fs";
import { Session } from "node:inspector";
import { createRequire } from "node:module";
import type { Socket } from "node:net";
import { getHeapSpaceStatistics } from "node:v8";
import pino from "pino";
import { logger } from "../src/diag/index.js";
import { lowerBackgroundThreads, Sidecar } from "../src/proxy/index.js";

export interface SidecarJob {
  role: "outbound" | "inbound";
  controlPlane: string;
  controlPlaneId: string;
  trustBundlePem: string;
  credential: string;
  /** The inbound sidecar listens here (the Service's targetPort); the outbound one lets the OS choose. */
  inboundPort: number;
  /** Where the inbound sidecar's captured connections were going. */
  appPort: number;
  /** Where the outbound sidecar's captured connections were going. */
  vip: { address: string; port: number };
  /** Access logs as shipped (JSON lines at info, to stdout, which the parent sends to /dev/null). */
  accessLog: boolean;
}

/** V8's view of the sidecar's memory, in MB, and the npm packages it has loaded. */
export interface SidecarHeap {
  heap_total: number;
  heap_used: number;
  external: number;
  array_buffers: number;
  /** Per V8 heap space: reserved size and used bytes (new_space is the young generation). */
  spaces: Record<string, { size: number; used: number }>;
  packages: string[];
}

export type SidecarMessage =
  | { ready: true; ports: { inbound: number; outbound: number; admin: number; health: number } }
  | { error: string };
/** The answer to "heap". */
export type SidecarHeapAnswer = { heap: SidecarHeap };

const mb = (b: number) => Math.round(b / 1024 / 102.4) / 10;

function heap(): SidecarHeap {
  const m = process.memoryUsage();
  const spaces: SidecarHeap["spaces"] = {};
  for (const s of getHeapSpaceStatistics())
    if (s.space_size > 0) spaces[s.space_name] = { size: mb(s.space_size), used: mb(s.space_used_size) };
  // CommonJS packages (imported by ESM or required) are in require's cache; the names say which.
  const packages = new Set<string>();
  for (const f of Object.keys(createRequire(import.meta.url).cache)) {
    const m2 = /node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(f);
    if (m2) packages.add(m2[1]!);
  }
  return {
    heap_total: mb(m.heapTotal),
    heap_used: mb(m.heapUsed),
    external: mb(m.external),
    array_buffers: mb(m.arrayBuffers),
    spaces,
    packages: [...packages].sort(),
  };
}

const STOP_TIMEOUT_MS = 3_000;
let sidecar: Sidecar | undefined;
let stopping = false;

/**
 * `BENCH_HEAP_SAMPLE=dir`: a sampling heap profile of what survives young-generation GCs (objects
 * still alive at the end or freed by a mark-compact, not those a scavenge freed), that is, what the
 * sidecar promotes to the old generation; written to `dir/<role>.heapprofile` at stop.
 */
const HEAP_SAMPLE = process.env["BENCH_HEAP_SAMPLE"];
let heapSampling: { session: Session; file: string } | undefined;

function startHeapSampling(role: string): void {
  if (!HEAP_SAMPLE) return;
  const session = new Session();
  session.connect();
  session.post("HeapProfiler.startSampling", {
    samplingInterval: 1024,
    includeObjectsCollectedByMajorGC: true,
    includeObjectsCollectedByMinorGC: process.env["BENCH_HEAP_MINOR"] === "1",
  } as never);
  heapSampling = { session, file: `${HEAP_SAMPLE}/${role}.heapprofile` };
}

function stopHeapSampling(done: () => void): void {
  if (!heapSampling) return done();
  const { session, file } = heapSampling;
  session.post("HeapProfiler.stopSampling", (err, r) => {
    if (!err) writeFileSync(file, JSON.stringify((r as { profile: unknown }).profile));
    done();
  });
}

/** Closes the sidecar and exits normally, so that `node --cpu-prof` writes its profile. */
function stop(): void {
  if (stopping) return;
  stopping = true;
  setTimeout(() => process.exit(0), STOP_TIMEOUT_MS).unref();
  stopHeapSampling(() => void (sidecar?.close() ?? Promise.resolve()).finally(() => process.exit(0)));
}

async function start(job: SidecarJob): Promise<void> {
  const dst =
    job.role === "inbound"
      ? { address: "127.0.0.1", port: job.appPort }
      : { address: job.vip.address, port: job.vip.port };
  const local = { host: "127.0.0.1", port: 0 };
  sidecar = new Sidecar({
    controlPlane: job.controlPlane,
    controlPlaneId: job.controlPlaneId,
    trustBundlePem: job.trustBundlePem,
    credential: job.credential,
    inbound: { host: "127.0.0.1", port: job.role === "inbound" ? job.inboundPort : 0 },
    outbound: local,
    admin: local,
    health: local,
    metrics: local,
    originalDst: (_s: Socket) => dst,
    log: job.accessLog ? logger("proxy") : pino({ level: "silent" }),
  });
  await lowerBackgroundThreads(); // as `zmesh proxy` does
  await sidecar.start();
  await sidecar.ready();
  startHeapSampling(job.role);
  process.send?.({ ready: true, ports: { ...sidecar.ports } } satisfies SidecarMessage);
}

process.on("message", (m: SidecarJob | "stop" | "heap") => {
  if (m === "stop") return stop();
  if (m === "heap") return void process.send?.({ heap: heap() } satisfies SidecarHeapAnswer);
  start(m).catch((e: Error) => {
    process.send?.({ error: e.message } satisfies SidecarMessage);
    stop();
  });
});
process.on("SIGTERM", stop);
process.on("disconnect", stop);
