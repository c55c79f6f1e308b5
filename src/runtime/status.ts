// What `zmesh status` shows, gathered from the three places that know: processes.json (the
// supervisor: pids, readiness, restarts), the control plane's admin socket (config in force,
// rejected changes, each proxy's sent and ACKed version, NACKs) and each proxy's admin endpoint
// (its certificate). A part that does not answer is shown as such, not as an error.

import { DEFAULT_ROOT_NAMESPACE, loadConfig, PORTS } from "../config/index.js";
import type { ControlPlane } from "../controlplane/index.js";
import { resolveMtlsMode } from "../policy/index.js";
import { controlPlaneAdmin, proxyAdmin } from "./ca.js";
import { alive, sameProcess } from "./processes.js";
import { type Instance, loadState, procKey, readProcesses } from "./state.js";
import { storeDir } from "./store.js";
import { httpOk } from "./supervisor.js";

type ControlPlaneStatus = ReturnType<ControlPlane["status"]>;

export interface WorkloadStatus {
  workload: string;
  identity: string;
  address: string;
  /** Certificate expiry (ISO time) as the proxy reports it; null when it cannot be read. */
  certExpires: string | null;
  /** The mTLS mode of the workload's ports under the store's PeerAuthentications: "STRICT", or
   * e.g. "STRICT (9090: PERMISSIVE)" when a port differs. */
  mtls: string;
  proxyReady: boolean;
  appRunning: boolean;
  /** The app ran to completion (restartPolicy OnFailure or Never): when, and its exit code. */
  completed: { at: string; code: number | null } | null;
  /** The snapshot version sent and ACKed; null when the proxy is not connected to the control plane. */
  config: { sent: string; acked: string; inSync: boolean; lastNack: string | null } | null;
  restarts: { proxy: number; app: number };
  pids: { proxy: number; app: number };
}

export interface MeshStatus {
  mesh: string;
  configDir: string;
  supervisor: { pid: number; running: boolean; phase: string; failure?: string };
  controlPlane: {
    pid: number;
    running: boolean;
    restarts: number;
    address: string;
    metrics: string;
    /** The control plane's own answer; absent when its admin socket does not answer. */
    answer?: ControlPlaneStatus;
  };
  workloads: WorkloadStatus[];
}

/** Summarizes the mode of each port: the mode most ports have, then the ports that differ. */
function mtlsOf(
  peerAuths: Parameters<typeof resolveMtlsMode>[0],
  inst: Instance,
  labels: Record<string, string>,
): string {
  const ports = inst.ports.length > 0 ? inst.ports : [0];
  const modes = ports.map((p) => ({
    port: p,
    mode: resolveMtlsMode(peerAuths, { namespace: inst.namespace, labels }, p, DEFAULT_ROOT_NAMESPACE).mode,
  }));
  const main = modes.find((m) => modes.filter((x) => x.mode === m.mode).length * 2 >= modes.length)?.mode;
  const odd = modes.filter((m) => m.mode !== main).map((m) => `${m.port}: ${m.mode}`);
  return `${main ?? modes[0]!.mode}${odd.length > 0 ? ` (${odd.join(", ")})` : ""}`;
}

export async function meshStatus(mesh: string): Promise<MeshStatus> {
  const state = await loadState(mesh);
  const config = await loadConfig([storeDir(state)]).catch(() => undefined);
  const peerAuths = (config?.peerAuthentications ?? []).map((p) => ({
    namespace: p.meta.namespace,
    name: p.meta.name,
    spec: p.spec,
  }));
  const labelsOf = (i: Instance) =>
    config?.workloadEntries.find((e) => e.meta.namespace === i.namespace && e.meta.name === i.name)?.labels ??
    {};
  const procs = await readProcesses(state.stateDir);
  const rec = (k: string) => procs?.procs[k];
  const running = (k: string) => {
    const r = rec(k);
    return r !== undefined && sameProcess(r.pid, r.startTicks);
  };
  const cpAnswer = await controlPlaneAdmin(state, "GET", "/status")
    .then((r) => (r.status === 200 ? (JSON.parse(r.body) as ControlPlaneStatus) : undefined))
    .catch(() => undefined);
  const byProxy = new Map((cpAnswer?.proxies ?? []).map((p) => [p.proxy, p]));
  const workloads = await Promise.all(
    state.instances.map(async (i): Promise<WorkloadStatus> => {
      const key = `${i.namespace}/${i.name}`;
      const [proxyReady, certs] = await Promise.all([
        httpOk(`http://${i.address}:${PORTS.proxyHealth}/healthz/ready`),
        proxyAdmin(state, key, "/certs").catch(() => undefined),
      ]);
      let certExpires: string | null = null;
      if (certs?.status === 200) {
        try {
          certExpires = (JSON.parse(certs.body) as { notAfter: string }).notAfter;
        } catch {
          certExpires = null;
        }
      }
      const p = byProxy.get(key);
      return {
        workload: key,
        identity: i.spiffeId,
        address: i.address,
        certExpires,
        mtls: mtlsOf(peerAuths, i, labelsOf(i)),
        proxyReady,
        appRunning: running(procKey("app", i)),
        completed: rec(procKey("app", i))?.completed ?? null,
        config: p
          ? { sent: p.sent, acked: p.acked, inSync: p.inSync, lastNack: p.lastNack?.reason ?? null }
          : null,
        restarts: {
          proxy: rec(procKey("proxy", i))?.restarts ?? 0,
          app: rec(procKey("app", i))?.restarts ?? 0,
        },
        pids: { proxy: i.proxyPid, app: i.appPid },
      };
    }),
  );
  const cpRec = rec(procKey("controlplane"));
  return {
    mesh: state.name,
    configDir: state.configDir,
    supervisor: {
      pid: procs?.supervisor.pid ?? 0,
      running: alive(procs?.supervisor.pid ?? 0),
      phase: procs?.phase ?? "unknown",
      ...(procs?.failure ? { failure: procs.failure } : {}),
    },
    controlPlane: {
      pid: cpRec?.pid ?? 0,
      running: running(procKey("controlplane")),
      restarts: cpRec?.restarts ?? 0,
      address: state.controlPlane.address,
      metrics: `http://${state.controlPlane.debug}/metrics`,
      ...(cpAnswer ? { answer: cpAnswer } : {}),
    },
    workloads,
  };
}
