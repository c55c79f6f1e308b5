// bench/h2-chain.ts: gRPC unary calls on loopback, two chains side by side in one run:
//   direct  grpc-js client -> app (grpc-js server, 1 KiB replies)
//   zmesh   grpc-js client -> outbound sidecar (h2c) -> mTLS h2 -> inbound sidecar (one L7 ALLOW
//           policy on the method path) -> app (h2c)
// Closed loop: CONCURRENCY calls in flight on one channel for a fixed time, after a warm-up of
// whole discarded runs (--warm-rounds);
// repeated, medians. Per sidecar process: CPU per 1,000 calls/s and RSS from /proc. The load runs
// in this process (the control plane here is idle once the sidecars are configured); the machine
// may be shared, so compare the two chains of one run, not runs of different days.
// Last line: one JSON object.

import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import * as grpc from "@grpc/grpc-js";
import type { SidecarJob, SidecarMessage } from "./chain-sidecar.js";
import { firstMessage, spawnNode as spawnChild, stopAll } from "./lib/children.js";
import { ECHO_SERVICE } from "./lib/echo.js";
import { startBenchMesh } from "./lib/mesh.js";
import { cpuSeconds, statusKb } from "./lib/proc.js";

const here = dirname(fileURLToPath(import.meta.url));
const { values: opt } = parseArgs({
  options: {
    runs: { type: "string", default: "3" },
    seconds: { type: "string", default: "5" },
    concurrency: { type: "string", default: "32" },
    "warm-rounds": { type: "string", default: "2" },
  },
  strict: true,
});
const bounded = (name: keyof typeof opt, lo: number, hi: number) => {
  const v = Number(opt[name]);
  if (!Number.isFinite(v) || v < lo || v > hi) throw new Error(`--${name} must be between ${lo} and ${hi}`);
  return v;
};
const RUNS = bounded("runs", 1, 9);
const RUN_MS = bounded("seconds", 1, 60) * 1000;
const CONCURRENCY = bounded("concurrency", 1, 1024);
/**
 * Warm-up: whole discarded runs of each chain, then a pause (as bench/chain.ts does): with a 2 s
 * warm-up the sidecars' hot functions were still being deoptimized and recompiled in measured runs
 * (bench/README.md, "Round 5").
 */
const WARM_ROUNDS = bounded("warm-rounds", 0, 5);
const WARM_PAUSE_MS = 5_000;

const say = (line: string) => process.stderr.write(`[bench:h2-chain] ${line}\n`);
const Echo = grpc.makeGenericClientConstructor(ECHO_SERVICE, "Echo");

const spawnNode = (name: string, script: string, args: string[] = []) =>
  spawnChild(here, name, script, { args });

function rssMb(pid: number): number {
  return Math.round(statusKb(pid, "VmRSS") / 1024);
}
async function zmesh(appPort: number) {
  const mesh = await startBenchMesh(
    {
      vipPort: 9090,
      portName: "grpc-echo",
      policyName: "server-callers",
      methods: ["POST"],
      paths: ["/bench.Echo/*"],
    },
    appPort,
    "zmesh-h2bench-",
  );
  const sidecar = async (role: "inbound" | "outbound", credential: string) => {
    const c = spawnNode(role, "chain-sidecar.js");
    c.proc.send({ ...mesh.base, role, credential, accessLog: true } satisfies SidecarJob);
    const m = await firstMessage<SidecarMessage>(c, 30_000);
    if ("error" in m) throw new Error(`${role} sidecar: ${m.error}`);
    return { pid: c.proc.pid!, ports: m.ports };
  };
  const inbound = await sidecar("inbound", mesh.tokens.server);
  const outbound = await sidecar("outbound", mesh.tokens.client);
  return {
    port: outbound.ports.outbound,
    pids: { outbound: outbound.pid, inbound: inbound.pid },
    close: mesh.close,
  };
}

interface Load {
  rps: number;
  p50_ms: number;
  p99_ms: number;
  errors: number;
}

/** CONCURRENCY unary calls kept in flight on one channel for `ms`; latency per call. */
async function load(client: grpc.Client, ms: number): Promise<Load> {
  const get = (client as unknown as Record<string, (r: Buffer, cb: (e: Error | null) => void) => void>)[
    "Get"
  ]!;
  const req = Buffer.alloc(64, "q");
  const lat: number[] = [];
  let errors = 0;
  const end = performance.now() + ms;
  const worker = async () => {
    while (performance.now() < end) {
      const t = performance.now();
      const err = await new Promise<Error | null>((r) => get.call(client, req, r));
      if (err) errors++;
      else lat.push(performance.now() - t);
    }
  };
  const t0 = performance.now();
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  const took = performance.now() - t0;
  lat.sort((a, b) => a - b);
  const q = (p: number) =>
    Math.round((lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] ?? 0) * 1000) / 1000;
  return { rps: Math.round(lat.length / (took / 1000)), p50_ms: q(0.5), p99_ms: q(0.99), errors };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;

async function main(): Promise<void> {
  // Twice the planned time (warm-up and measured runs of both chains, plus set-up), at least 5 min.
  const plannedMs = 2 * (WARM_ROUNDS + RUNS) * RUN_MS + WARM_PAUSE_MS + 60_000;
  const watchdogMs = Math.max(5 * 60_000, 2 * plannedMs);
  const watchdog = setTimeout(() => {
    say(`watchdog: run took over ${Math.round(watchdogMs / 60_000)} minutes, stopping`);
    void stopAll().finally(() => process.exit(2));
  }, watchdogMs);
  const app = spawnNode("app", "h2-chain-app.js", ["1024"]);
  const { port: appPort } = await firstMessage<{ port: number }>(app, 10_000);
  const mesh = await zmesh(appPort);
  const opts = { "grpc.max_receive_message_length": -1 };
  const clients = {
    direct: new Echo(`127.0.0.1:${appPort}`, grpc.credentials.createInsecure(), opts),
    zmesh: new Echo(`127.0.0.1:${mesh.port}`, grpc.credentials.createInsecure(), opts),
  };
  const runs: Record<"direct" | "zmesh", Load[]> = { direct: [], zmesh: [] };
  const cpu: Record<"outbound" | "inbound", number[]> = { outbound: [], inbound: [] };
  for (let i = 0; i < WARM_ROUNDS; i++)
    for (const name of ["direct", "zmesh"] as const) {
      say(`${name}: warm-up ${i + 1}/${WARM_ROUNDS} (a discarded run)`);
      await load(clients[name], RUN_MS);
    }
  if (WARM_ROUNDS > 0) await new Promise((r) => setTimeout(r, WARM_PAUSE_MS));
  for (let i = 0; i < RUNS; i++) {
    for (const name of ["direct", "zmesh"] as const) {
      const before = { outbound: cpuSeconds(mesh.pids.outbound), inbound: cpuSeconds(mesh.pids.inbound) };
      const r = await load(clients[name], RUN_MS);
      runs[name].push(r);
      if (name === "zmesh") {
        for (const p of ["outbound", "inbound"] as const) {
          const used = cpuSeconds(mesh.pids[p]) - before[p];
          cpu[p].push(Math.round((used / (RUN_MS / 1000) / (r.rps / 1000)) * 1000) / 1000);
        }
      }
      say(`run ${i + 1} ${name}: ${JSON.stringify(r)}`);
    }
  }
  const summary = (name: "direct" | "zmesh") => ({
    rps_max: median(runs[name].map((r) => r.rps)),
    p50_ms: median(runs[name].map((r) => r.p50_ms)),
    p99_ms: median(runs[name].map((r) => r.p99_ms)),
    errors: runs[name].reduce((a, r) => a + r.errors, 0),
  });
  const result = {
    bench: "h2-chain",
    calls: "gRPC unary, 64 B request, 1 KiB reply",
    concurrency: CONCURRENCY,
    seconds: RUN_MS / 1000,
    runs: RUNS,
    direct: summary("direct"),
    zmesh: {
      ...summary("zmesh"),
      cpu_per_1k_rps: { outbound: median(cpu.outbound), inbound: median(cpu.inbound) },
      rss_mb: { outbound: rssMb(mesh.pids.outbound), inbound: rssMb(mesh.pids.inbound) },
    },
  };
  clients.direct.close();
  clients.zmesh.close();
  await stopAll();
  await mesh.close();
  clearTimeout(watchdog);
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

process.once("SIGINT", () => void stopAll().finally(() => process.exit(130)));
process.once("SIGTERM", () => void stopAll().finally(() => process.exit(143)));
main().catch((e: Error) => {
  say(`failed: ${e.stack ?? e.message}`);
  void stopAll().finally(() => process.exit(1));
});
