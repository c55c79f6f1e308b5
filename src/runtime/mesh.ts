// A local mesh: `up` turns a directory of resources into running workloads (namespaces,
// capture, sidecars, apps) around a control plane; `down` removes every trace, also of a mesh
// whose processes were killed; `exec` runs a command inside a workload like its app.

import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmod, cp, mkdir, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { connect } from "node:net";
import { join, resolve } from "node:path";
import { stringify } from "yaml";
import {
  CONTROL_PLANE_SPIFFE_PATH,
  DEFAULT_APP_UID,
  ENV,
  envOr,
  loadConfig,
  type MeshConfig,
  PORTS,
  PROXY_UID,
} from "../config/index.js";
import { tokenDigest } from "../controlplane/index.js";
import { ZmeshError } from "../errors/index.js";
import { DEFAULT_TRUST_DOMAIN } from "../identity/index.js";
import { caStoreFile, controlPlaneSocket, dataDir, kekFile } from "./ca.js";
import {
  createBridge,
  createNamespace,
  destroyNetwork,
  leftovers,
  listNamespaces,
  type MeshNet,
  meshNet,
  namespacePids,
  netnsPrefix,
  podAddress,
  vethPrefix,
  vipAddress,
} from "./network.js";
import { alive, spawnDetached, terminate, ZMESH_BIN, zmeshPids } from "./processes.js";
import { checkPrerequisites, run } from "./sys.js";

export interface Instance {
  /** Workload name and the instance's WorkloadEntry name (workload-N). */
  workload: string;
  name: string;
  namespace: string;
  serviceAccount: string;
  spiffeId: string;
  netns: string;
  address: string;
  appUid: number;
  ports: number[];
  proxyPid: number;
  appPid: number;
}

export interface MeshState {
  name: string;
  configDir: string;
  stateDir: string;
  net: MeshNet;
  trustDomain: string;
  controlPlane: { pid: number; address: string };
  instances: Instance[];
  services: { namespace: string; name: string; vip: string; ports: number[] }[];
  unmeshed: { name: string; netns: string; address: string }[];
  nextAddress: number;
}

const MESH_NAME = /^[a-z][a-z0-9]{0,9}$/;

export function stateRoot(): string {
  return envOr(ENV.stateDir, "/run/zmesh");
}

function stateDirOf(mesh: string): string {
  return join(stateRoot(), mesh);
}

export function checkMeshName(name: string): void {
  if (!MESH_NAME.test(name)) {
    throw new ZmeshError(
      "ZMESH_RUNTIME",
      `mesh name "${name}" is not valid: use 1 to 10 lower-case letters and digits, starting with a letter`,
    );
  }
}

export async function loadState(mesh: string): Promise<MeshState> {
  try {
    return JSON.parse(await readFile(join(stateDirOf(mesh), "mesh.json"), "utf8")) as MeshState;
  } catch {
    throw new ZmeshError(
      "ZMESH_MESH_NOT_FOUND",
      `no mesh named "${mesh}" is up; start one with: zmesh up DIR`,
    );
  }
}

async function saveState(s: MeshState): Promise<void> {
  await writeFile(join(s.stateDir, "mesh.json"), `${JSON.stringify(s, null, 2)}\n`, { mode: 0o644 });
}

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

async function waitFor(
  what: string,
  check: () => Promise<boolean>,
  timeoutMs: number,
  log?: string,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  const tail = log
    ? (await readFile(log, "utf8").catch(() => "")).trim().split("\n").slice(-3).join(" | ")
    : "";
  throw new ZmeshError(
    "ZMESH_RUNTIME",
    `${what} did not become ready within ${timeoutMs / 1000} s${tail ? `; last log lines: ${tail}` : ""}`,
  );
}

function tcpOpen(host: string, port: number): Promise<boolean> {
  return new Promise((res) => {
    const s = connect({ host, port, timeout: 500 });
    s.once("connect", () => {
      s.destroy();
      res(true);
    });
    s.once("error", () => res(false));
    s.once("timeout", () => {
      s.destroy();
      res(false);
    });
  });
}

async function httpOk(url: string): Promise<boolean> {
  const r = await fetch(url, { signal: AbortSignal.timeout(500) });
  return r.ok;
}

async function listening(netns: string, port: number): Promise<boolean> {
  const out = await run("ip", ["netns", "exec", netns, "ss", "-Hltn", `sport = :${port}`]);
  return out.trim().length > 0;
}

function hostsFile(
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

/** Brings a mesh up from a directory of resources. On failure nothing of it is left behind. */
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
  await down(name, { quiet: true });
  await mkdir(stateRoot(), { recursive: true, mode: 0o755 });
  const stateDir = stateDirOf(name);
  const state: MeshState = {
    name,
    configDir,
    stateDir,
    net: meshNet(name, await freeBlock()),
    trustDomain: DEFAULT_TRUST_DOMAIN,
    controlPlane: { pid: 0, address: "" },
    instances: [],
    services: [],
    unmeshed: [],
    nextAddress: 0,
  };
  try {
    await mkdir(join(stateDir, "logs"), { recursive: true, mode: 0o755 });
    await mkdir(join(stateDir, "store"), { recursive: true, mode: 0o755 });
    await mkdir(join(stateDir, "secrets"), { recursive: true, mode: 0o700 });
    await chmod(stateDir, 0o755);
    await saveState(state); // from here on, `down` can find and remove what we create
    await layout(state, config);
    await createBridge(state.net);
    say(
      `network: bridge ${state.net.bridge}, gateway ${state.net.gateway}, isolated (no uplink, no forwarding)`,
    );
    await startControlPlane(state);
    say(`control plane: ${state.controlPlane.address} (mesh CA and config, TLS)`);
    await stageApps(state);
    for (const inst of state.instances) {
      await startInstance(state, config, inst);
      say(`workload ${inst.namespace}/${inst.name}: ${inst.address}, ${inst.spiffeId}`);
      await saveState(state);
    }
    await saveState(state);
    return state;
  } catch (e) {
    await down(name, { quiet: true });
    throw e;
  }
}

async function layout(state: MeshState, config: MeshConfig): Promise<void> {
  const services = [...config.services].sort((a, b) =>
    `${a.meta.namespace}/${a.meta.name}`.localeCompare(`${b.meta.namespace}/${b.meta.name}`),
  );
  services.forEach((s, i) => {
    s.clusterIP = vipAddress(state.net, i);
    state.services.push({
      namespace: s.meta.namespace,
      name: s.meta.name,
      vip: s.clusterIP,
      ports: s.ports.map((p) => p.port),
    });
  });
  const docs: string[] = [];
  for (const { resource, raw } of config.documents) {
    if (resource.kind === "Service") {
      const spec = { ...(raw["spec"] as Record<string, unknown>), clusterIP: resource.clusterIP };
      docs.push(stringify({ ...raw, spec }));
    } else if (resource.kind !== "Workload") docs.push(stringify(raw));
  }
  const entries: string[] = [];
  const tokens: Record<string, { namespace: string; entry: string }> = {};
  for (const w of config.workloads) {
    for (let i = 0; i < w.replicas; i++) {
      const inst: Instance = {
        workload: w.meta.name,
        name: w.replicas === 1 ? w.meta.name : `${w.meta.name}-${i}`,
        namespace: w.meta.namespace,
        serviceAccount: w.serviceAccount,
        spiffeId: `spiffe://${state.trustDomain}/ns/${w.meta.namespace}/sa/${w.serviceAccount}`,
        netns: `${netnsPrefix(state.name)}${w.meta.namespace}-${w.meta.name}${w.replicas === 1 ? "" : `-${i}`}`,
        address: podAddress(state.net, state.nextAddress++),
        appUid: w.runAsUser ?? DEFAULT_APP_UID,
        ports: w.ports.map((p) => p.containerPort),
        proxyPid: 0,
        appPid: 0,
      };
      state.instances.push(inst);
      const labels = { ...w.meta.labels, "zmesh.dev/workload": w.meta.name };
      entries.push(
        stringify({
          apiVersion: "networking.istio.io/v1",
          kind: "WorkloadEntry",
          metadata: { name: inst.name, namespace: inst.namespace, labels },
          spec: { address: inst.address, serviceAccount: inst.serviceAccount, labels },
        }),
      );
      const token = randomBytes(32).toString("base64url");
      await writeFile(join(state.stateDir, "secrets", `${inst.name}.${inst.namespace}.token`), token, {
        mode: 0o600,
      });
      tokens[tokenDigest(token)] = { namespace: inst.namespace, entry: inst.name };
    }
  }
  await writeFile(join(state.stateDir, "store", "resources.yaml"), docs.join("---\n"));
  await writeFile(join(state.stateDir, "store", "instances.yaml"), entries.join("---\n"));
  await writeFile(join(state.stateDir, "secrets", "tokens.json"), JSON.stringify(tokens), { mode: 0o600 });
}

async function startControlPlane(state: MeshState): Promise<void> {
  const address = `${state.net.gateway}:${PORTS.controlPlaneGrpc}`;
  const bundle = join(state.stateDir, "bundle.pem");
  const log = join(state.stateDir, "logs", "controlplane.log");
  const { pid } = spawnDetached(
    process.execPath,
    [
      ZMESH_BIN,
      "controlplane",
      "--mesh",
      state.name,
      "--config",
      join(state.stateDir, "store"),
      "--listen",
      address,
      "--tokens",
      join(state.stateDir, "secrets", "tokens.json"),
      "--bundle-out",
      bundle,
      "--ca-store",
      caStoreFile(state.name),
      "--kek-file",
      await kekFile(state.name, join(state.stateDir, "secrets")),
      "--admin-socket",
      controlPlaneSocket(state),
    ],
    log,
  );
  state.controlPlane = { pid, address };
  await saveState(state);
  await waitFor(
    "the control plane",
    async () => (await stat(bundle).then(() => true)) && tcpOpen(state.net.gateway, PORTS.controlPlaneGrpc),
    15_000,
    log,
  );
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

async function startInstance(state: MeshState, config: MeshConfig, inst: Instance): Promise<void> {
  const workload = config.workloads.find(
    (w) => w.meta.name === inst.workload && w.meta.namespace === inst.namespace,
  )!;
  const veth = `${vethPrefix(state.net)}${state.instances.indexOf(inst)}`;
  await createNamespace(state.net, {
    netns: inst.netns,
    veth,
    address: inst.address,
    hosts: hostsFile(inst, inst.namespace, state.services),
    capture: true,
  });
  const logs = join(state.stateDir, "logs");
  const proxyLog = join(logs, `${inst.namespace}.${inst.name}.proxy.log`);
  inst.proxyPid = spawnDetached(
    "ip",
    [
      "netns",
      "exec",
      inst.netns,
      process.execPath,
      ZMESH_BIN,
      "proxy",
      "--mesh",
      state.name,
      "--control-plane",
      state.controlPlane.address,
      "--bundle",
      join(state.stateDir, "bundle.pem"),
      "--token-file",
      join(state.stateDir, "secrets", `${inst.name}.${inst.namespace}.token`),
      "--control-plane-id",
      `spiffe://${state.trustDomain}${CONTROL_PLANE_SPIFFE_PATH}`,
      "--uid",
      String(PROXY_UID),
    ],
    proxyLog,
  ).pid;
  await saveState(state);
  await waitFor(
    `the proxy of ${inst.namespace}/${inst.name}`,
    () => httpOk(`http://${inst.address}:${PORTS.proxyHealth}/healthz/ready`),
    20_000,
    proxyLog,
  );
  // The app starts only once its proxy is ready, so its first request is already meshed.
  const appLog = join(logs, `${inst.namespace}.${inst.name}.app.log`);
  const env: NodeJS.ProcessEnv = {
    PATH: process.env["PATH"] ?? "/usr/local/bin:/usr/bin:/bin",
    HOME: "/tmp",
    ZMESH_WORKLOAD: inst.workload,
    ZMESH_NAMESPACE: inst.namespace,
    ...(inst.ports[0] ? { PORT: String(inst.ports[0]) } : {}),
    ...workload.env,
  };
  inst.appPid = spawnDetached(
    "ip",
    ["netns", "exec", inst.netns, ...asUser(inst.appUid), ...workload.command],
    appLog,
    { cwd: join(state.stateDir, "app"), env },
  ).pid;
  for (const p of inst.ports) {
    await waitFor(
      `the app of ${inst.namespace}/${inst.name} on port ${p}`,
      () => listening(inst.netns, p),
      15_000,
      appLog,
    );
  }
}

function asUser(uid: number): string[] {
  return ["setpriv", `--reuid=${uid}`, `--regid=${uid}`, "--clear-groups", "--no-new-privs", "--"];
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

/** Removes everything of a mesh: processes, namespaces, bridge, host rules, state. */
export async function down(mesh: string, opts: { quiet?: boolean; purge?: boolean } = {}): Promise<string[]> {
  checkMeshName(mesh);
  checkPrerequisites();
  let state: MeshState | undefined;
  try {
    state = await loadState(mesh);
  } catch {
    state = undefined;
  }
  const pids = new Set<number>(zmeshPids(mesh));
  for (const ns of await listNamespaces(mesh)) for (const p of await namespacePids(ns)) pids.add(p);
  if (state) {
    for (const i of state.instances) for (const p of [i.proxyPid, i.appPid]) if (p > 0) pids.add(p);
    if (state.controlPlane.pid > 0) pids.add(state.controlPlane.pid);
  }
  await terminate([...pids].filter((p) => p !== process.pid && alive(p)));
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
  method?: string;
  path?: string;
  status?: number;
  decision?: "allow" | "deny";
  policy?: string;
  rule?: number;
  reason?: string;
  flag?: string;
  err?: string;
  msg: string;
}

/** The access-log and connection entries of a workload's proxy (JSON lines), oldest first. */
export async function proxyLog(state: MeshState, ref: string): Promise<AccessEntry[]> {
  const inst = findInstance(state, ref);
  const text = await readFile(
    join(state.stateDir, "logs", `${inst.namespace}.${inst.name}.proxy.log`),
    "utf8",
  ).catch(() => "");
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
  return readFile(join(state.stateDir, "logs", `${inst.namespace}.${inst.name}.app.log`), "utf8").catch(
    () => "",
  );
}
