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

/** zmesh's own processes of a mesh, found by the `--mesh NAME` they all carry (also after a crash). */
export function zmeshPids(mesh: string): number[] {
  const found: number[] = [];
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const args = readFileSync(`/proc/${d}/cmdline`, "utf8").split("\0");
      const i = args.indexOf("--mesh");
      if (i > 0 && args[i + 1] === mesh && args.some((a) => a.endsWith("zmesh.js"))) found.push(Number(d));
    } catch {
      // the process ended while we looked
    }
  }
  return found;
}

export function alive(pid: number): boolean {
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
