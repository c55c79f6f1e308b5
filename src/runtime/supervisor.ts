// The supervisor of one mesh: the `zmesh supervise --mesh NAME` process that `up` starts. It runs
// the control plane, then each workload's proxy and, once that proxy is ready, its app; it restarts
// whatever exits, with exponential backoff, and records pids, readiness and restarts in
// processes.json. Its children outlive it: if the supervisor dies the mesh keeps serving, unwatched,
// until `zmesh up` starts a new supervisor, which adopts them (pid and start time must match).
// On SIGHUP it takes the layout in mesh.json again (`zmesh apply` of Workloads): it starts the new
// instances and stops the removed ones. An app whose Workload's restartPolicy says not to restart
// it (Never; OnFailure after exit code 0) has completed: its proxy is stopped (it drains on
// SIGTERM) and neither is started again.

import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, openSync } from "node:fs";
import { readFile, stat } from "node:fs/promises";
import { connect } from "node:net";
import { join } from "node:path";
import { CONTROL_PLANE_SPIFFE_PATH, PORTS, PROXY_NODE_FLAGS, PROXY_UID } from "../config/index.js";
import type { Logger } from "../diag/index.js";
import { controlPlaneSocket } from "./ca.js";
import { listeningPorts, sameProcess, startTicks, ZMESH_BIN } from "./processes.js";
import {
  type Instance,
  type MeshState,
  type Processes,
  type ProcRecord,
  procKey,
  type Role,
  readProcesses,
  writeProcesses,
} from "./state.js";

export const BACKOFF = {
  /** First restart delay; doubled for each crash in a row, up to maxMs. */
  baseMs: 500,
  maxMs: 30_000,
  /** A process that ran this long before exiting counts as healthy: its next delay is baseMs again. */
  healthyMs: 10_000,
} as const;

/** How long the first bring-up waits for each kind of process to become ready. */
const READY_TIMEOUT_MS: Record<Role, number> = { controlplane: 20_000, proxy: 25_000, app: 20_000 };

interface Spec {
  cmd: string;
  args: string[];
  log: string;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
}

export function asUser(uid: number): string[] {
  return ["setpriv", `--reuid=${uid}`, `--regid=${uid}`, "--clear-groups", "--no-new-privs", "--"];
}

export function logFile(state: MeshState, role: Role | "supervisor", inst?: Instance): string {
  const logs = join(state.stateDir, "logs");
  return inst ? join(logs, `${inst.namespace}.${inst.name}.${role}.log`) : join(logs, `${role}.log`);
}

export const bundleFile = (state: MeshState) => join(state.stateDir, "bundle.pem");

function specOf(state: MeshState, role: Role, inst?: Instance): Spec {
  const log = logFile(state, role, inst);
  if (role === "controlplane") {
    return {
      cmd: process.execPath,
      args: [
        ZMESH_BIN,
        "controlplane",
        "--mesh",
        state.name,
        "--config",
        join(state.stateDir, "store"),
        "--listen",
        state.controlPlane.address,
        "--debug-listen",
        state.controlPlane.debug,
        "--tokens",
        join(state.stateDir, "secrets", "tokens.json"),
        "--bundle-out",
        bundleFile(state),
        "--ca-store",
        state.controlPlane.caStore,
        "--kek-file",
        state.controlPlane.kekFile,
        "--admin-socket",
        controlPlaneSocket(state),
      ],
      log,
    };
  }
  const i = inst!;
  if (role === "proxy") {
    return {
      cmd: "ip",
      args: [
        "netns",
        "exec",
        i.netns,
        process.execPath,
        ...PROXY_NODE_FLAGS,
        ZMESH_BIN,
        "proxy",
        "--mesh",
        state.name,
        "--control-plane",
        state.controlPlane.address,
        "--bundle",
        bundleFile(state),
        "--token-file",
        join(state.stateDir, "secrets", `${i.name}.${i.namespace}.token`),
        "--control-plane-id",
        `spiffe://${state.trustDomain}${CONTROL_PLANE_SPIFFE_PATH}`,
        "--uid",
        String(PROXY_UID),
      ],
      log,
    };
  }
  return {
    cmd: "ip",
    args: ["netns", "exec", i.netns, ...asUser(i.appUid), ...i.command],
    log,
    cwd: join(state.stateDir, "app"),
    env: {
      PATH: process.env["PATH"] ?? "/usr/local/bin:/usr/bin:/bin",
      HOME: "/tmp",
      ZMESH_WORKLOAD: i.workload,
      ZMESH_NAMESPACE: i.namespace,
      ...(i.ports[0] ? { PORT: String(i.ports[0]) } : {}),
      ...i.env,
    },
  };
}

export function tcpOpen(host: string, port: number): Promise<boolean> {
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

export async function httpOk(url: string): Promise<boolean> {
  try {
    const r = await fetch(url, { signal: AbortSignal.timeout(500) });
    await r.body?.cancel();
    return r.ok;
  } catch {
    return false;
  }
}

export async function logTail(file: string, lines = 3): Promise<string> {
  const text = (await readFile(file, "utf8").catch(() => "")).trim();
  return text ? text.split("\n").slice(-lines).join(" | ") : "";
}

function describe(role: Role, inst?: Instance): string {
  if (role === "controlplane") return "the control plane";
  return `the ${role} of ${inst!.namespace}/${inst!.name}`;
}

/** One supervised process: started or adopted, watched, restarted with backoff. */
class Unit {
  readonly rec: ProcRecord;
  private child: ChildProcess | undefined;
  private watchTimer: NodeJS.Timeout | undefined;
  private readyTimer: NodeJS.Timeout | undefined;
  private restartTimer: NodeJS.Timeout | undefined;
  private failures = 0;
  private everReady = false;
  /** Whether a process of this unit runs (started or adopted) and its end has not been handled. */
  private running = false;
  /** Set when the process exited during the first bring-up: why. */
  exitedEarly: string | undefined;
  /** The instance left the mesh, or its app completed: never started again. */
  private retired = false;

  constructor(
    private readonly sup: Supervisor,
    readonly role: Role,
    readonly inst: Instance | undefined,
    prev: ProcRecord | undefined,
  ) {
    this.rec = prev ?? {
      role,
      ...(inst ? { instance: `${inst.namespace}/${inst.name}` } : {}),
      pid: 0,
      startTicks: 0,
      startedAt: "",
      restarts: 0,
      ready: false,
    };
    this.rec.ready = false;
    delete this.rec.restartAt;
    this.retired = this.rec.completed !== undefined; // a new supervisor does not run it again
  }

  get what(): string {
    return describe(this.role, this.inst);
  }

  /** Adopts the process of a previous supervisor if it still runs, else starts one. */
  async ensure(): Promise<void> {
    if (this.retired) return;
    if (sameProcess(this.rec.pid, this.rec.startTicks)) {
      this.running = true;
      this.sup.log.info({ unit: this.what, pid: this.rec.pid }, "adopted");
      this.watchTimer = setInterval(() => {
        if (!sameProcess(this.rec.pid, this.rec.startTicks)) this.exited(null, null);
      }, 500);
      this.pollReady();
      return;
    }
    if (this.rec.pid > 0) this.rec.restarts++; // it died while nobody watched
    await this.start();
  }

  private async start(): Promise<void> {
    if (this.sup.stopping || this.retired) return;
    if (this.role === "app") await this.sup.waitProxyReady(this.inst!);
    if (this.sup.stopping || this.retired) return;
    const spec = specOf(this.sup.state, this.role, this.inst);
    const fd = openSync(spec.log, "a", 0o640);
    let child: ChildProcess;
    try {
      child = spawn(spec.cmd, spec.args, {
        detached: true, // its own process group: signals to the supervisor do not reach it
        stdio: ["ignore", fd, fd],
        cwd: spec.cwd,
        env: spec.env ?? process.env,
      });
    } finally {
      closeSync(fd);
    }
    this.child = child;
    this.running = true;
    child.once("error", (e) => {
      this.sup.log.error({ unit: this.what, err: e.message }, "could not start");
      this.exited(null, null);
    });
    child.once("exit", (code, signal) => {
      if (this.child === child) this.exited(code, signal);
    });
    this.rec.pid = child.pid ?? 0;
    this.rec.startTicks = this.rec.pid ? startTicks(this.rec.pid) : 0;
    this.rec.startedAt = new Date().toISOString();
    this.rec.ready = false;
    delete this.rec.restartAt;
    this.sup.log.info({ unit: this.what, pid: this.rec.pid, restarts: this.rec.restarts }, "started");
    this.sup.save();
    this.pollReady();
  }

  private async isReady(): Promise<boolean> {
    const s = this.sup.state;
    if (this.role === "controlplane") {
      const [host = "", port = ""] = s.controlPlane.address.split(":");
      return (
        (await stat(bundleFile(s)).then(
          () => true,
          () => false,
        )) && tcpOpen(host, Number(port))
      );
    }
    const i = this.inst!;
    if (this.role === "proxy") return httpOk(`http://${i.address}:${PORTS.proxyHealth}/healthz/ready`);
    const listening = listeningPorts(this.rec.pid);
    return i.ports.every((p) => listening.has(p));
  }

  private pollReady(): void {
    clearTimeout(this.readyTimer);
    const pid = this.rec.pid;
    const tick = async () => {
      if (this.rec.pid !== pid || this.sup.stopping) return;
      if (await this.isReady()) {
        if (this.rec.pid !== pid) return;
        this.rec.ready = true;
        this.everReady = true;
        this.sup.log.info({ unit: this.what, pid }, "ready");
        this.sup.save();
        return;
      }
      this.readyTimer = setTimeout(() => void tick(), 100);
    };
    void tick();
  }

  private exited(code: number | null, signal: NodeJS.Signals | null): void {
    if (!this.running) return;
    this.running = false;
    clearInterval(this.watchTimer);
    clearTimeout(this.readyTimer);
    const ranMs = Date.now() - Date.parse(this.rec.startedAt || new Date().toISOString());
    this.rec.lastExit = { at: new Date().toISOString(), code, signal };
    this.rec.pid = 0;
    this.rec.startTicks = 0;
    this.rec.ready = false;
    this.child = undefined;
    if (this.sup.stopping || this.retired) {
      this.sup.save();
      return;
    }
    const how = signal ? `was killed by ${signal}` : `exited with code ${code ?? "?"}`;
    const policy = this.inst?.restartPolicy ?? "Always";
    if (this.role === "app" && (policy === "Never" || (policy === "OnFailure" && code === 0))) {
      // Run to completion: the workload is done; its proxy drains and exits, nothing restarts.
      this.rec.completed = { at: new Date().toISOString(), code };
      this.retired = true;
      this.sup.log.info({ unit: this.what, how, restartPolicy: policy }, "completed; stopping its proxy");
      this.sup.completed(this.inst!);
      this.sup.save();
      return;
    }
    if (this.sup.phase() === "starting" && !this.everReady) {
      this.exitedEarly = how;
      this.sup.save();
      return;
    }
    if (ranMs >= BACKOFF.healthyMs) this.failures = 0;
    const delay = Math.min(BACKOFF.baseMs * 2 ** this.failures, BACKOFF.maxMs);
    this.failures++;
    this.rec.restartAt = new Date(Date.now() + delay).toISOString();
    this.sup.log.warn({ unit: this.what, how, restartInMs: delay, failures: this.failures }, "exited");
    this.sup.save();
    this.restartTimer = setTimeout(() => {
      this.rec.restarts++;
      this.start().catch((e: Error) => {
        this.sup.log.error({ unit: this.what, err: e.message }, "could not restart");
        this.exitedEarly = undefined;
        this.running = true; // handled as a crash: the next attempt backs off further
        this.exited(null, null);
      });
    }, delay);
  }

  /** Resolves once ready (or completed); rejects with a sentence if it exits first or the time runs out. */
  async ready(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.rec.ready && !this.rec.completed) {
      if (this.exitedEarly || Date.now() > deadline) {
        const tail = await logTail(specOf(this.sup.state, this.role, this.inst).log);
        const why = this.exitedEarly
          ? `${this.exitedEarly} before it was ready`
          : `did not become ready within ${timeoutMs / 1000} s`;
        throw new Error(`${this.what} ${why}${tail ? `; last log lines: ${tail}` : ""}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  stop(): void {
    clearInterval(this.watchTimer);
    clearTimeout(this.readyTimer);
    clearTimeout(this.restartTimer);
  }

  /**
   * Stops for good: SIGTERM (a proxy drains), SIGKILL after a grace period if it is still the
   * same process. Resolves when it is gone.
   */
  async retire(graceMs = 5_000): Promise<void> {
    this.retired = true;
    clearTimeout(this.restartTimer);
    clearTimeout(this.readyTimer);
    const { pid, startTicks: ticks } = this.rec;
    if (pid <= 0 || !sameProcess(pid, ticks)) return;
    try {
      process.kill(pid, "SIGTERM");
    } catch {
      return;
    }
    const deadline = Date.now() + graceMs;
    while (sameProcess(pid, ticks) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    if (sameProcess(pid, ticks)) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // gone
      }
    }
    clearInterval(this.watchTimer);
  }

  kill(): void {
    this.stop();
    if (this.rec.pid > 0) {
      try {
        process.kill(this.rec.pid, "SIGKILL");
      } catch {
        // gone
      }
    }
  }
}

export class Supervisor {
  stopping = false;
  private readonly procs: Processes;
  private readonly units = new Map<string, Unit>();
  private writing: Promise<void> = Promise.resolve();

  constructor(
    public state: MeshState,
    prev: Processes | undefined,
    readonly log: Logger,
  ) {
    this.procs = {
      supervisor: { pid: process.pid, startedAt: new Date().toISOString() },
      phase: "starting",
      procs: prev?.procs ?? {},
    };
    this.add("controlplane");
    for (const i of state.instances) {
      this.add("proxy", i);
      this.add("app", i);
    }
    for (const k of Object.keys(this.procs.procs)) if (!this.units.has(k)) delete this.procs.procs[k];
  }

  private add(role: Role, inst?: Instance): Unit {
    const key = procKey(role, inst);
    const u = new Unit(this, role, inst, this.procs.procs[key]);
    this.procs.procs[key] = u.rec;
    this.units.set(key, u);
    return u;
  }

  /** An app completed: its proxy drains and exits, and is not restarted. */
  completed(inst: Instance): void {
    const proxy = this.units.get(procKey("proxy", inst));
    if (!proxy) return;
    proxy.rec.completed = { at: new Date().toISOString(), code: null };
    void proxy.retire().then(() => this.save());
  }

  /**
   * Takes a new layout (SIGHUP after `zmesh apply` of Workloads): stops and forgets the units of
   * instances that left, adds and starts those of new instances. Serialized: one at a time.
   */
  reconcile(state: MeshState): Promise<void> {
    this.reconciling = this.reconciling.then(async () => {
      if (this.stopping) return;
      this.state = state;
      const want = new Set([procKey("controlplane")]);
      for (const i of state.instances) {
        want.add(procKey("proxy", i));
        want.add(procKey("app", i));
      }
      const leaving = [...this.units].filter(([k]) => !want.has(k));
      await Promise.all(
        leaving.map(async ([k, u]) => {
          this.log.info({ unit: u.what }, "instance removed from the mesh: stopping it");
          await u.retire();
          this.units.delete(k);
          delete this.procs.procs[k];
        }),
      );
      const fresh = state.instances.filter((i) => !this.units.has(procKey("proxy", i)));
      const units = fresh.map((i) => [this.add("proxy", i), this.add("app", i)] as const);
      await this.save();
      for (const [proxy, app] of units) {
        this.log.info({ unit: proxy.what }, "instance added to the mesh: starting it");
        void (async () => {
          await proxy.ensure();
          await app.ensure();
        })().catch((e: Error) => this.log.error({ unit: app.what, err: e.message }, "could not start"));
      }
    });
    return this.reconciling;
  }

  private reconciling: Promise<void> = Promise.resolve();

  static async open(state: MeshState, log: Logger): Promise<Supervisor> {
    return new Supervisor(state, await readProcesses(state.stateDir), log);
  }

  phase(): Processes["phase"] {
    return this.procs.phase;
  }

  /** Writes processes.json; writes are serialized so the last one wins. */
  save(): Promise<void> {
    const snapshot = JSON.parse(JSON.stringify(this.procs)) as Processes;
    this.writing = this.writing
      .then(() => writeProcesses(this.state.stateDir, snapshot))
      .catch((e: Error) => this.log.error({ err: e.message }, "could not write processes.json"));
    return this.writing;
  }

  async waitProxyReady(inst: Instance): Promise<void> {
    const key = procKey("proxy", inst);
    const proxy = this.units.get(key)!;
    // Until it is ready, or the instance left the mesh (its app is not started then either).
    while (!proxy.rec.ready && !this.stopping && this.units.get(key) === proxy)
      await new Promise((r) => setTimeout(r, 100));
  }

  /** Brings everything up (adopting what still runs), then watches until stopped. */
  async run(): Promise<void> {
    await this.save();
    try {
      const cp = this.units.get(procKey("controlplane"))!;
      await cp.ensure();
      await cp.ready(READY_TIMEOUT_MS.controlplane);
      await Promise.all(
        this.state.instances.map(async (i) => {
          const proxy = this.units.get(procKey("proxy", i))!;
          const app = this.units.get(procKey("app", i))!;
          await proxy.ensure();
          await proxy.ready(READY_TIMEOUT_MS.proxy);
          await app.ensure();
          await app.ready(READY_TIMEOUT_MS.app);
        }),
      );
    } catch (e) {
      await this.fail((e as Error).message);
      return;
    }
    this.procs.phase = "running";
    // Units that exited during bring-up after becoming ready are restarted from here on.
    this.log.info({ units: this.units.size }, "mesh running");
    await this.save();
  }

  private async fail(reason: string): Promise<void> {
    this.stopping = true;
    this.procs.phase = "failed";
    this.procs.failure = reason;
    this.log.error({ reason }, "bring-up failed");
    for (const u of this.units.values()) u.kill();
    await this.save();
  }

  /** Stops watching; the processes keep running (zmesh down removes them). */
  async stop(): Promise<void> {
    this.stopping = true;
    for (const u of this.units.values()) u.stop();
    await this.save();
  }
}
