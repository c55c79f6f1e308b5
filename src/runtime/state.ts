// Where a local mesh keeps its state, in two files with one writer each: mesh.json, the layout
// (`up` writes it: network, instances, services, unmeshed namespaces), and processes.json, what
// runs (the supervisor writes it: pids, restarts, readiness). Both are replaced atomically.

import { randomBytes } from "node:crypto";
import { readFile, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { ENV, envOr } from "../config/index.js";
import { ZmeshError } from "../errors/index.js";
import type { MeshNet } from "./network.js";

export interface Instance {
  /** Workload name and the instance's WorkloadEntry name (workload-N). */
  workload: string;
  name: string;
  namespace: string;
  serviceAccount: string;
  spiffeId: string;
  netns: string;
  veth: string;
  address: string;
  appUid: number;
  ports: number[];
  /** The app's command and environment, fixed at `up` (the supervisor restarts it with these). */
  command: string[];
  env: Record<string, string>;
  /** When the app is restarted after it exits (the Workload's restartPolicy; absent: Always). */
  restartPolicy?: RestartPolicy;
  /** Filled in from processes.json by loadState (0 when not running). */
  proxyPid: number;
  appPid: number;
}

export interface MeshState {
  name: string;
  configDir: string;
  stateDir: string;
  net: MeshNet;
  trustDomain: string;
  /** gRPC and debug (metrics) addresses, CA store and its KEK file; pid comes from processes.json. */
  controlPlane: { pid: number; address: string; debug: string; caStore: string; kekFile: string };
  instances: Instance[];
  services: { namespace: string; name: string; vip: string; ports: number[] }[];
  unmeshed: { name: string; netns: string; address: string }[];
  nextAddress: number;
  /** Digest of the Workloads and Services the mesh was laid out from: `up` compares it. */
  topology: string;
}

export type Role = "controlplane" | "proxy" | "app";

/** Kubernetes' pod restartPolicy: Always restarts the app, OnFailure unless it exited with 0, Never not. */
export type RestartPolicy = "Always" | "OnFailure" | "Never";

export interface ProcRecord {
  role: Role;
  /** namespace/name of the workload instance (proxies and apps). */
  instance?: string;
  pid: number;
  /** starttime from /proc/<pid>/stat: tells the process from a later one with the same pid. */
  startTicks: number;
  startedAt: string;
  restarts: number;
  ready: boolean;
  lastExit?: { at: string; code: number | null; signal: string | null };
  /** Set while a crashed process waits out its backoff. */
  restartAt?: string;
  /** The app ran to completion (its restartPolicy says not to restart it), and its proxy was stopped. */
  completed?: { at: string; code: number | null };
}

export interface Processes {
  supervisor: { pid: number; startedAt: string };
  /** starting: first bring-up; running: everything came up once; failed: bring-up failed (why in failure). */
  phase: "starting" | "running" | "failed";
  failure?: string;
  procs: Record<string, ProcRecord>;
}

const MESH_NAME = /^[a-z][a-z0-9]{0,9}$/;

export function stateRoot(): string {
  return envOr(ENV.stateDir, "/run/zmesh");
}

export function stateDirOf(mesh: string): string {
  return join(stateRoot(), mesh);
}

export function checkMeshName(name: string): void {
  if (!MESH_NAME.test(name)) {
    throw new ZmeshError(
      "ZMESH_USAGE",
      `mesh name "${name}" is not valid: use 1 to 10 lower-case letters and digits, starting with a letter`,
    );
  }
}

/** Writes a file by rename, so a reader never sees half of it. */
export async function writeAtomic(file: string, text: string, mode = 0o644): Promise<void> {
  const tmp = `${file}.${randomBytes(4).toString("hex")}.tmp`;
  await writeFile(tmp, text, { mode });
  await rename(tmp, file);
}

export const procKey = (role: Role, inst?: { namespace: string; name: string }) =>
  inst ? `${inst.namespace}/${inst.name}:${role}` : role;

export async function readProcesses(stateDir: string): Promise<Processes | undefined> {
  try {
    return JSON.parse(await readFile(join(stateDir, "processes.json"), "utf8")) as Processes;
  } catch {
    return undefined;
  }
}

export async function writeProcesses(stateDir: string, p: Processes): Promise<void> {
  await writeAtomic(join(stateDir, "processes.json"), `${JSON.stringify(p, null, 2)}\n`);
}

/** The mesh's layout with the pids of what runs now. */
export async function loadState(mesh: string): Promise<MeshState> {
  let state: MeshState;
  try {
    state = JSON.parse(await readFile(join(stateDirOf(mesh), "mesh.json"), "utf8")) as MeshState;
  } catch {
    throw new ZmeshError(
      "ZMESH_MESH_NOT_FOUND",
      `no mesh named "${mesh}" is up; start one with: zmesh up DIR${mesh === "zmesh" ? "" : ` --name ${mesh}`}`,
    );
  }
  const procs = (await readProcesses(state.stateDir))?.procs ?? {};
  state.controlPlane.pid = procs[procKey("controlplane")]?.pid ?? 0;
  for (const i of state.instances) {
    i.proxyPid = procs[procKey("proxy", i)]?.pid ?? 0;
    i.appPid = procs[procKey("app", i)]?.pid ?? 0;
  }
  return state;
}

export async function saveState(s: MeshState): Promise<void> {
  await writeAtomic(join(s.stateDir, "mesh.json"), `${JSON.stringify(s, null, 2)}\n`);
}

export function findInstance(state: MeshState, ref: string): Instance {
  const [a, b] = ref.includes("/") ? ref.split("/", 2) : [undefined, ref];
  const match = state.instances.filter(
    (i) => (i.name === b || i.workload === b) && (a === undefined || i.namespace === a),
  );
  if (match.length === 0) {
    const known = state.instances.map((i) => `${i.namespace}/${i.name}`).join(", ");
    throw new ZmeshError(
      "ZMESH_WORKLOAD_NOT_FOUND",
      `no workload "${ref}" in mesh ${state.name}; it has ${known}`,
    );
  }
  return match[0]!;
}
