// Starting and stopping the mesh's processes: the control plane on the host, and in each
// workload namespace the sidecar (started as root, it drops to uid 1337 itself once its code
// and credential are loaded) and the app (as its own uid). Output goes to per-process logs.

import { spawn } from "node:child_process";
import { closeSync, openSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const ZMESH_BIN = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "bin", "zmesh.js");

export interface Started {
  pid: number;
}

/** Spawns a detached process whose stdout and stderr append to `log`; it outlives the CLI. */
export function spawnDetached(
  cmd: string,
  args: string[],
  log: string,
  opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {},
): Started {
  const fd = openSync(log, "a", 0o640);
  try {
    const child = spawn(cmd, args, {
      detached: true,
      stdio: ["ignore", fd, fd],
      cwd: opts.cwd,
      env: opts.env ?? process.env,
    });
    if (child.pid === undefined) throw new Error(`could not start ${cmd}`);
    child.unref();
    return { pid: child.pid };
  } finally {
    closeSync(fd);
  }
}

/**
 * zmesh's own processes of a mesh, found by the `--mesh NAME` they all carry (also after a crash);
 * only those running `command` (e.g. "supervise") when it is given.
 */
export function zmeshPids(mesh: string, command?: string): number[] {
  const found: number[] = [];
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const args = readFileSync(`/proc/${d}/cmdline`, "utf8").split("\0");
      const i = args.indexOf("--mesh");
      const bin = args.findIndex((a) => a.endsWith("zmesh.js"));
      if (i > 0 && args[i + 1] === mesh && bin >= 0 && (command === undefined || args[bin + 1] === command))
        found.push(Number(d));
    } catch {
      // the process ended while we looked
    }
  }
  return found;
}

/** The start time of a process in clock ticks since boot (0 if it is gone): with the pid, its identity. */
export function startTicks(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Fields after the command name, which is in parentheses and may hold spaces.
    const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return Number(rest[19] ?? 0);
  } catch {
    return 0;
  }
}

/** Whether `pid` is alive and is the process that started at `ticks` (not a reuse of its pid). */
export function sameProcess(pid: number, ticks: number): boolean {
  return pid > 0 && alive(pid) && startTicks(pid) === ticks && !isZombie(pid);
}

function isZombie(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z");
  } catch {
    return true;
  }
}

/** TCP ports in LISTEN state in the network namespace of `pid` (from /proc/<pid>/net/tcp{,6}). */
export function listeningPorts(pid: number): Set<number> {
  const ports = new Set<number>();
  for (const f of ["tcp", "tcp6"]) {
    let text: string;
    try {
      text = readFileSync(`/proc/${pid}/net/${f}`, "utf8");
    } catch {
      continue;
    }
    for (const line of text.split("\n").slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols[3] === "0A") ports.add(Number.parseInt(cols[1]?.split(":")[1] ?? "0", 16));
    }
  }
  return ports;
}

export function alive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false; // kill(0) would signal our own group
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** SIGTERM, then SIGKILL whatever is still there after `graceMs`. */
export async function terminate(pids: number[], graceMs = 2_000): Promise<void> {
  const live = pids.filter(alive);
  for (const p of live) {
    try {
      process.kill(p, "SIGTERM");
    } catch {
      // already gone
    }
  }
  const deadline = Date.now() + graceMs;
  while (live.some(alive) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  for (const p of live.filter(alive)) {
    try {
      process.kill(p, "SIGKILL");
    } catch {
      // already gone
    }
  }
  const hard = Date.now() + 2_000;
  while (live.some(alive) && Date.now() < hard) await new Promise((r) => setTimeout(r, 20));
}
