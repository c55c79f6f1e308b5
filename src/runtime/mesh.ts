// A local mesh: `up` turns a directory of resources into a laid-out network (namespaces, capture,
// the resource store, bootstrap tokens) and hands the processes to the mesh's supervisor; `up` on
// a mesh that runs reconciles it; `down` removes every trace, also of a mesh whose processes were
// killed; `exec` runs a command inside a workload like its app.

import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmod, cp, mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { stringify } from "yaml";
import { DEFAULT_APP_UID, loadConfig, type MeshConfig, PORTS, type Workload } from "../config/index.js";
import { tokenDigest } from "../controlplane/index.js";
import { ZmeshError } from "../errors/index.js";
import { DEFAULT_TRUST_DOMAIN } from "../identity/index.js";
import { caStoreFile, dataDir, kekFile } from "./ca.js";
import {
  createBridge,
  createNamespace,
  destroyNetwork,
  leftovers,
  listNamespaces,
  meshNet,
  namespacePids,
  netnsPrefix,
  podAddress,
  vethPrefix,
  vipAddress,
} from "./network.js";
import { alive, sameProcess, spawnDetached, terminate, ZMESH_BIN, zmeshPids } from "./processes.js";
import {
  checkMeshName,
  findInstance,
  type Instance,
  loadState,
  type MeshState,
  type Processes,
  procKey,
  readProcesses,
  saveState,
  stateDirOf,
  stateRoot,
} from "./state.js";
import { syncStore, topologyOf, writeStore } from "./store.js";
import { asUser, logFile, logTail } from "./supervisor.js";
import { checkPrerequisites, run, tryRun } from "./sys.js";

/** The lowest /20 block no other mesh's state claims. */
async function freeBlock(): Promise<number> {
  const used = new Set<number>();
  for (const d of await readdir(stateRoot()).catch(() => [] as string[])) {
    try {
      used.add(
        (JSON.parse(await readFile(join(stateRoot(), d, "mesh.json"), "utf8")) as MeshState).net.block,
      );
    } catch {
      // not a mesh
    }
  }
  for (let b = 0; b < 16; b++) if (!used.has(b)) return b;
  throw new ZmeshError(
    "ZMESH_RUNTIME",
    "16 local meshes are already up; bring one down with zmesh down --name NAME",
  );
}

/** The /etc/hosts of a namespace: itself, and every Service by svc.ns(.svc.cluster.local), by svc in its own namespace. */
export function hostsFile(
  self: { address: string; name: string },
  ns: string,
  services: MeshState["services"],
): string {
  const lines = ["127.0.0.1\tlocalhost", `${self.address}\t${self.name}`];
  for (const s of services) {
    const names = [
      `${s.name}.${s.namespace}`,
      `${s.name}.${s.namespace}.svc`,
      `${s.name}.${s.namespace}.svc.cluster.local`,
    ];
    if (s.namespace === ns) names.unshift(s.name);
    lines.push(`${s.vip}\t${names.join(" ")}`);
  }
  return `${lines.join("\n")}\n`;
}

export interface UpOptions {
  name?: string;
  log?: (line: string) => void;
}

/**
 * Brings a mesh up from a directory of resources, or, when a mesh of that name already runs from
 * the same directory with the same Workloads and Services, reconciles it: the store takes the
 * directory's policies (live, no restart), a dead supervisor is started again (it adopts what
 * still runs and restarts what does not). Changed Workloads or Services recreate the mesh. On a
 * failed bring-up nothing of the mesh is left behind.
 */
export async function up(dir: string, opts: UpOptions = {}): Promise<MeshState> {
  const name = opts.name ?? "zmesh";
  const say = opts.log ?? (() => {});
  checkMeshName(name);
  checkPrerequisites();
  const configDir = resolve(dir);
  const config = await loadConfig([configDir]); // validate before touching anything
  if (config.workloads.length === 0) {
    throw new ZmeshError(
      "ZMESH_CONFIG_INVALID",
      `${dir}: no Workload resources; add at least one zmesh.dev/v1 Workload`,
    );
  }
  const topology = topologyOf(config);
  const existing = await loadState(name).catch(() => undefined);
  if (existing) {
    if (existing.configDir !== configDir) {
      throw new ZmeshError(
        "ZMESH_USAGE",
        `mesh ${name} is already up from ${existing.configDir}; bring it down first (zmesh down${name === "zmesh" ? "" : ` --name ${name}`}) or run this one beside it with --name`,
      );
    }
    const intact = await networkIntact(existing);
    if (existing.topology === topology && intact) return reconcile(existing, config, say);
    say(
      intact
        ? `the Workloads or Services in ${dir} changed since mesh ${name} came up: recreating it`
        : `part of mesh ${name}'s network is gone: recreating it`,
    );
  }
  await down(name, { quiet: true }); // also what a crashed mesh without state left
  return create(name, configDir, config, topology, say);
}

async function create(
  name: string,
  configDir: string,
  config: MeshConfig,
  topology: string,
  say: (line: string) => void,
): Promise<MeshState> {
  await mkdir(stateRoot(), { recursive: true, mode: 0o755 });
  const stateDir = stateDirOf(name);
  const net = meshNet(name, await freeBlock());
  const state: MeshState = {
    name,
    configDir,
    stateDir,
    net,
    trustDomain: DEFAULT_TRUST_DOMAIN,
    controlPlane: {
      pid: 0,
      address: `${net.gateway}:${PORTS.controlPlaneGrpc}`,
      // On the bridge's address: the host reaches it, pods do not (the host drops all from the
      // bridge but :15012), and meshes side by side do not clash over one loopback port.
      debug: `${net.gateway}:${PORTS.controlPlaneDebug}`,
      caStore: caStoreFile(name),
      kekFile: "",
    },
    instances: [],
    services: [],
    unmeshed: [],
    nextAddress: 0,
    topology,
  };
  try {
    await mkdir(join(stateDir, "logs"), { recursive: true, mode: 0o755 });
    await mkdir(join(stateDir, "store"), { recursive: true, mode: 0o755 });
    await mkdir(join(stateDir, "secrets"), { recursive: true, mode: 0o700 });
    await chmod(stateDir, 0o755);
    await saveState(state); // from here on, `down` can find and remove what we create
    state.controlPlane.kekFile = await kekFile(name, join(stateDir, "secrets"));
    await layout(state, config);
    await saveState(state);
    await createBridge(state.net);
    say(
      `network: bridge ${state.net.bridge}, gateway ${state.net.gateway}, isolated (no uplink, no forwarding)`,
    );
    for (const inst of state.instances) {
      await createNamespace(state.net, {
        netns: inst.netns,
        veth: inst.veth,
        address: inst.address,
        hosts: hostsFile(inst, inst.namespace, state.services),
        capture: true,
      });
    }
    await stageApps(state);
    await waitRunning(state, say, startSupervisor(state));
    return await loadState(name);
  } catch (e) {
    await down(name, { quiet: true });
    throw e;
  }
}

async function reconcile(
  state: MeshState,
  config: MeshConfig,
  say: (line: string) => void,
): Promise<MeshState> {
  let supervisor: number | undefined;
  if (zmeshPids(state.name, "supervise").length === 0) {
    say("the supervisor was not running: started it again (it adopts what still runs)");
    supervisor = startSupervisor(state);
  }
  await waitRunning(state, () => {}, supervisor);
  const { change, rollout } = await syncStore(state, config);
  const changed = [
    ...change.created.map((k) => `${k} created`),
    ...change.configured.map((k) => `${k} configured`),
    ...change.deleted.map((k) => `${k} deleted`),
  ];
  if (changed.length === 0) say(`mesh ${state.name} is up and matches ${state.configDir}: nothing to change`);
  else {
    say(`mesh ${state.name} is up; changed live: ${changed.join(", ")}`);
    if (rollout?.waiting) say(`  not in force everywhere yet: ${rollout.waiting}`);
    else if (rollout)
      say(`  in force: ${rollout.inSync}/${rollout.proxies} proxies ACKed in ${rollout.ms} ms`);
  }
  return loadState(state.name);
}

async function networkIntact(state: MeshState): Promise<boolean> {
  if (!(await tryRun("ip", ["link", "show", state.net.bridge]))) return false;
  const present = new Set(await listNamespaces(state.name));
  return state.instances.every((i) => present.has(i.netns));
}

export function startSupervisor(state: MeshState): number {
  return spawnDetached(
    process.execPath,
    [ZMESH_BIN, "supervise", "--mesh", state.name],
    join(state.stateDir, "logs", "supervisor.log"),
  ).pid;
}

/**
 * Waits for the supervisor's bring-up (of the supervisor `pid` when given: until it writes its
 * own processes.json, the file is a previous one's); says what came up as it does.
 */
export async function waitRunning(
  state: MeshState,
  say: (line: string) => void,
  pid?: number,
): Promise<void> {
  const deadline = Date.now() + 40_000 + 5_000 * state.instances.length;
  const told = new Set<string>();
  const supervisorLog = join(state.stateDir, "logs", "supervisor.log");
  for (;;) {
    const read: Processes | undefined = await readProcesses(state.stateDir);
    const p = pid === undefined || read?.supervisor.pid === pid ? read : undefined;
    if (p) {
      if (p.procs[procKey("controlplane")]?.ready && !told.has("cp")) {
        told.add("cp");
        say(
          `control plane: ${state.controlPlane.address} (mesh CA and config, TLS); metrics on ${state.controlPlane.debug}`,
        );
      }
      for (const i of state.instances) {
        if (p.procs[procKey("app", i)]?.ready && !told.has(i.name + i.namespace)) {
          told.add(i.name + i.namespace);
          say(`workload ${i.namespace}/${i.name}: ${i.address}, ${i.spiffeId}`);
        }
      }
      if (p.phase === "running") return;
      if (p.phase === "failed") throw new ZmeshError("ZMESH_RUNTIME", p.failure ?? "the bring-up failed");
    }
    const supervisorGone = !alive(pid ?? p?.supervisor.pid ?? 0);
    if (supervisorGone || Date.now() > deadline) {
      const tail = await logTail(supervisorLog);
      throw new ZmeshError(
        "ZMESH_RUNTIME",
        `${supervisorGone ? "the supervisor of the mesh exited" : "the mesh did not come up in time"}${tail ? `; last log lines: ${tail}` : ""}`,
      );
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function layout(state: MeshState, config: MeshConfig): Promise<void> {
  const services = [...config.services].sort((a, b) =>
    `${a.meta.namespace}/${a.meta.name}`.localeCompare(`${b.meta.namespace}/${b.meta.name}`),
  );
  services.forEach((s, i) => {
    state.services.push({
      namespace: s.meta.namespace,
      name: s.meta.name,
      vip: vipAddress(state.net, i),
      ports: s.ports.map((p) => p.port),
    });
  });
  const entries: string[] = [];
  const tokens: Record<string, { namespace: string; entry: string }> = {};
  for (const w of config.workloads) {
    for (const { inst, entry, token } of await addInstances(state, w)) {
      entries.push(entry);
      tokens[tokenDigest(token)] = { namespace: inst.namespace, entry: inst.name };
    }
  }
  await writeStore(state, config, entries);
  await writeFile(join(state.stateDir, "secrets", "tokens.json"), JSON.stringify(tokens), { mode: 0o600 });
}

export const tokenFile = (state: MeshState, inst: { name: string; namespace: string }) =>
  join(state.stateDir, "secrets", `${inst.name}.${inst.namespace}.token`);

/**
 * Lays out the instances of one Workload in `state` (addresses, a free veth name each) and writes
 * their bootstrap tokens; returns each with its WorkloadEntry YAML and its token.
 */
export async function addInstances(
  state: MeshState,
  w: Workload,
): Promise<{ inst: Instance; entry: string; token: string }[]> {
  const out: { inst: Instance; entry: string; token: string }[] = [];
  const veths = new Set(state.instances.map((i) => i.veth));
  let v = 0;
  for (let i = 0; i < w.replicas; i++) {
    const suffix = w.replicas === 1 ? "" : `-${i}`;
    while (veths.has(`${vethPrefix(state.net)}${v}`)) v++;
    const inst: Instance = {
      workload: w.meta.name,
      name: `${w.meta.name}${suffix}`,
      namespace: w.meta.namespace,
      serviceAccount: w.serviceAccount,
      spiffeId: `spiffe://${state.trustDomain}/ns/${w.meta.namespace}/sa/${w.serviceAccount}`,
      netns: `${netnsPrefix(state.name)}${w.meta.namespace}-${w.meta.name}${suffix}`,
      veth: `${vethPrefix(state.net)}${v}`,
      address: podAddress(state.net, state.nextAddress++),
      appUid: w.runAsUser ?? DEFAULT_APP_UID,
      ports: w.ports.map((p) => p.containerPort),
      command: w.command,
      env: w.env,
      ...(w.restartPolicy ? { restartPolicy: w.restartPolicy } : {}),
      proxyPid: 0,
      appPid: 0,
    };
    veths.add(inst.veth);
    state.instances.push(inst);
    const labels = { ...w.meta.labels, "zmesh.dev/workload": w.meta.name };
    const entry = stringify({
      apiVersion: "networking.istio.io/v1",
      kind: "WorkloadEntry",
      metadata: { name: inst.name, namespace: inst.namespace, labels },
      spec: { address: inst.address, serviceAccount: inst.serviceAccount, labels },
    });
    const token = randomBytes(32).toString("base64url");
    await writeFile(tokenFile(state, inst), token, { mode: 0o600 });
    out.push({ inst, entry, token });
  }
  return out;
}

/** Copies the config directory (the workloads' code) where the app uids can read it, like an image. */
async function stageApps(state: MeshState): Promise<void> {
  const dest = join(state.stateDir, "app");
  await cp(state.configDir, dest, {
    recursive: true,
    filter: (src) => !/(^|\/)(node_modules|\.git)(\/|$)/.test(src.slice(state.configDir.length)),
  });
  await run("chmod", ["-R", "a+rX,go-w", dest]);
}

/** An unmeshed namespace on the bridge (no sidecar, no capture): a stranger on the network. */
export async function addUnmeshed(
  state: MeshState,
  name: string,
): Promise<{ netns: string; address: string }> {
  const mesh = state.name;
  const existing = state.unmeshed.find((u) => u.name === name);
  if (existing) return existing;
  const u = {
    name,
    netns: `${netnsPrefix(mesh)}unmeshed-${name}`,
    address: podAddress(state.net, state.nextAddress++),
  };
  await createNamespace(state.net, {
    netns: u.netns,
    veth: `${vethPrefix(state.net)}u${state.unmeshed.length}`,
    address: u.address,
    hosts: hostsFile({ address: u.address, name }, "", state.services),
    capture: false,
  });
  state.unmeshed.push(u);
  await saveState(state);
  return u;
}

/** The argv that runs `cmd` inside a workload's namespace as its app's uid (or in an unmeshed one as root-less nobody). */
export function execArgv(state: MeshState, ref: string, cmd: string[]): string[] {
  const unmeshed = state.unmeshed.find((u) => u.name === ref);
  if (unmeshed) return ["ip", "netns", "exec", unmeshed.netns, ...asUser(65534), ...cmd];
  const inst = findInstance(state, ref);
  return ["ip", "netns", "exec", inst.netns, ...asUser(inst.appUid), ...cmd];
}

/** Runs a command in a workload like its app would; resolves with its exit code and output. */
export function exec(
  state: MeshState,
  ref: string,
  cmd: string[],
  opts: { inherit?: boolean; timeoutMs?: number } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const [bin, ...args] = execArgv(state, ref, cmd);
  return new Promise((resolvePromise, reject) => {
    const child = spawn(bin!, args, {
      stdio: opts.inherit ? "inherit" : ["ignore", "pipe", "pipe"],
      cwd: join(state.stateDir, "app"),
      env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", HOME: "/tmp" },
    });
    let stdout = "";
    let stderr = "";
    child.stdout?.on("data", (d: Buffer) => {
      stdout += d;
    });
    child.stderr?.on("data", (d: Buffer) => {
      stderr += d;
    });
    const timer = opts.timeoutMs ? setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs) : undefined;
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolvePromise({ code: code ?? 1, stdout, stderr });
    });
  });
}

/**
 * Removes everything of a mesh: processes, namespaces, bridge, host rules, state. The supervisor
 * goes first so that it restarts nothing; then whatever carries `--mesh NAME` or runs in one of
 * the mesh's namespaces, in rounds until none is left (a process may fork while we look).
 */
export async function down(mesh: string, opts: { quiet?: boolean; purge?: boolean } = {}): Promise<string[]> {
  checkMeshName(mesh);
  checkPrerequisites();
  let state: MeshState | undefined;
  try {
    state = await loadState(mesh);
  } catch {
    state = undefined;
  }
  const procs = state ? await readProcesses(state.stateDir) : undefined;
  await terminate(zmeshPids(mesh, "supervise").filter((p) => p !== process.pid));
  for (let round = 0; round < 4; round++) {
    const pids = new Set<number>(zmeshPids(mesh));
    for (const ns of await listNamespaces(mesh)) for (const p of await namespacePids(ns)) pids.add(p);
    // Recorded pids only if they are still the processes recorded (a pid may have been reused).
    for (const r of Object.values(procs?.procs ?? {})) if (sameProcess(r.pid, r.startTicks)) pids.add(r.pid);
    const live = [...pids].filter((p) => p !== process.pid && alive(p));
    if (live.length === 0) break;
    await terminate(live);
  }
  await destroyNetwork(mesh, state?.net.bridge);
  await rm(stateDirOf(mesh), { recursive: true, force: true });
  // The CA outlives the mesh unless asked: workloads brought up again keep the same root.
  if (opts.purge) await rm(dataDir(mesh), { recursive: true, force: true });
  const left = await leftovers(mesh, state?.net.bridge);
  if (left.length > 0 && !opts.quiet) {
    throw new ZmeshError("ZMESH_RUNTIME", `zmesh down could not remove: ${left.join("; ")}`);
  }
  return left;
}

export interface AccessEntry {
  time: string;
  direction: "inbound" | "outbound";
  requestId: string;
  source?: string;
  destination?: string;
  service?: string;
  upstream?: string;
  mtls?: boolean;
  method?: string;
  path?: string;
  status?: number;
  grpcStatus?: string;
  http2?: boolean;
  durationMs?: number;
  decision?: "allow" | "deny";
  policy?: string;
  rule?: number;
  reason?: string;
  /** Dry-run policies (`istio.io/dry-run`) and what each would have decided. */
  dryRun?: { policy: string; wouldAllow: boolean }[];
  flag?: string;
  err?: string;
  msg: string;
}

/** The access-log and connection entries of a workload's proxy (JSON lines), oldest first. */
export async function proxyLog(state: MeshState, ref: string): Promise<AccessEntry[]> {
  const inst = findInstance(state, ref);
  const text = await readFile(logFile(state, "proxy", inst), "utf8").catch(() => "");
  const out: AccessEntry[] = [];
  for (const line of text.split("\n")) {
    if (!line.startsWith("{")) continue;
    try {
      out.push(JSON.parse(line) as AccessEntry);
    } catch {
      // a partial last line
    }
  }
  return out;
}

/** What a workload's app printed (its log file). */
export async function appLog(state: MeshState, ref: string): Promise<string> {
  const inst = findInstance(state, ref);
  return readFile(logFile(state, "app", inst), "utf8").catch(() => "");
}

/** For commands on a running mesh: a valid name, root and the tools, then its state. */
export async function openMesh(name: string): Promise<MeshState> {
  checkMeshName(name);
  checkPrerequisites();
  return loadState(name);
}
