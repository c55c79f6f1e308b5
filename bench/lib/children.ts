// Child processes of a bench: every one is tracked (node scripts, haproxy, perf, strace) and
// stopped by its pid at the end, also when the bench fails or is interrupted, so no bench leaves a
// process behind. Shared by bench/chain.ts and bench/h2-chain.ts.

import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, mkdirSync, openSync } from "node:fs";
import { isAbsolute, join } from "node:path";

export interface Child {
  name: string;
  proc: ChildProcess;
  stderr: string[];
}

const children: Child[] = [];

/** The children still running (for CPU accounting). */
export function running(): Child[] {
  return children.filter((c) => c.proc.exitCode === null && c.proc.signalCode === null && c.proc.pid);
}

/** Tracks a process started elsewhere; the end of its stderr (if piped) is kept for error messages. */
export function track(name: string, proc: ChildProcess): Child {
  const c: Child = { name, proc, stderr: [] };
  proc.stderr?.setEncoding("utf8");
  proc.stderr?.on("data", (d: string) => {
    c.stderr.push(d);
    if (c.stderr.length > 50) c.stderr.shift();
  });
  children.push(c);
  return c;
}

/** The end of a child's stderr, led by its first line naming an error (a stack's last lines rarely say what broke). */
export function tail(c: Child): string {
  const lines = c.stderr.join("").trim().split("\n");
  const first = lines.find((l) => /error|alert/i.test(l));
  const last = lines.slice(-3);
  return [...(first && !last.includes(first) ? [first] : []), ...last].join(" | ");
}

/**
 * Starts `script` (relative to `dir` unless absolute) under this node, with an IPC channel.
 * `stdoutDir`: its stdout goes to `<stdoutDir>/<name>.out` instead of nowhere.
 */
export function spawnNode(
  dir: string,
  name: string,
  script: string,
  opts: { args?: string[]; execArgv?: string[]; stdoutDir?: string | undefined } = {},
): Child {
  if (opts.stdoutDir) mkdirSync(opts.stdoutDir, { recursive: true });
  const out = opts.stdoutDir ? openSync(join(opts.stdoutDir, `${name}.out`), "w") : "ignore";
  const proc = spawn(
    process.execPath,
    [...(opts.execArgv ?? []), isAbsolute(script) ? script : join(dir, script), ...(opts.args ?? [])],
    { stdio: ["ignore", out, "pipe", "ipc"] },
  );
  if (typeof out === "number") closeSync(out);
  return track(name, proc);
}

/** The first IPC message of a child, or an error if it exits or takes longer than `ms`. */
export function firstMessage<T>(c: Child, ms: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => done(new Error(`${c.name}: no answer within ${ms} ms (${tail(c)})`)), ms);
    const onMsg = (m: T) => done(undefined, m);
    const onExit = (code: number | null) => done(new Error(`${c.name} exited (${code}): ${tail(c)}`));
    function done(err: Error | undefined, m?: T) {
      clearTimeout(timer);
      c.proc.off("message", onMsg);
      c.proc.off("exit", onExit);
      if (err) reject(err);
      else resolve(m as T);
    }
    c.proc.on("message", onMsg);
    c.proc.once("exit", onExit);
  });
}

/** Whether the child has exited within `ms`. */
export function exited(c: Child, ms: number): Promise<boolean> {
  if (c.proc.exitCode !== null || c.proc.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    c.proc.once("exit", () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/**
 * Asks a child to stop: with an IPC channel, "stop" and then the channel closed (every bench child
 * exits on either), else `signal` (SIGTERM unless told). SIGKILL after `graceMs` (5 s unless told).
 */
export async function stopChild(
  c: Child,
  signal: NodeJS.Signals = "SIGTERM",
  graceMs = 5_000,
): Promise<void> {
  if (c.proc.exitCode !== null || c.proc.signalCode !== null) return;
  if (c.proc.connected) {
    c.proc.send("stop");
    c.proc.disconnect();
  } else c.proc.kill(signal);
  if (!(await exited(c, graceMs))) {
    c.proc.kill("SIGKILL");
    await exited(c, 2_000);
  }
}

export async function stopAll(): Promise<void> {
  await Promise.all(children.map((c) => stopChild(c)));
}
