// One zmesh sidecar of the chain benchmark (bench/chain.ts), alone in its process so that its CPU
// and memory can be read from /proc. The parent sends the configuration over IPC (the bootstrap
// token stays off argv and the environment). The original destination, which iptables gives a
// captured socket, is fixed per process: an outbound sidecar sends everything to the service
// VIP, an inbound one to the app's port.

import type { Socket } from "node:net";
import pino from "pino";
import { logger } from "../src/diag/index.js";
import { Sidecar } from "../src/proxy/index.js";

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

export type SidecarMessage =
  | { ready: true; ports: { inbound: number; outbound: number; admin: number; health: number } }
  | { error: string };

const STOP_TIMEOUT_MS = 3_000;
let sidecar: Sidecar | undefined;
let stopping = false;

/** Closes the sidecar and exits normally, so that `node --cpu-prof` writes its profile. */
function stop(): void {
  if (stopping) return;
  stopping = true;
  setTimeout(() => process.exit(0), STOP_TIMEOUT_MS).unref();
  void (sidecar?.close() ?? Promise.resolve()).finally(() => process.exit(0));
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
  await sidecar.start();
  await sidecar.ready();
  process.send?.({ ready: true, ports: { ...sidecar.ports } } satisfies SidecarMessage);
}

process.on("message", (m: SidecarJob | "stop") => {
  if (m === "stop") return stop();
  start(m).catch((e: Error) => {
    process.send?.({ error: e.message } satisfies SidecarMessage);
    stop();
  });
});
process.on("SIGTERM", stop);
process.on("disconnect", stop);
