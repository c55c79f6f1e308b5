// Thin wrappers over the system tools the local runtime drives (ip, iptables, setpriv), with
// errors that say which command failed and why. All host changes go through here.

import { execFile, spawnSync } from "node:child_process";
import { promisify } from "node:util";
import { ZmeshError } from "../errors/index.js";

const execFileP = promisify(execFile);

export async function run(cmd: string, args: string[], input?: string): Promise<string> {
  try {
    if (input !== undefined) {
      const r = spawnSync(cmd, args, { input, encoding: "utf8" });
      if (r.status !== 0)
        throw Object.assign(new Error(r.stderr || `exit ${r.status}`), { stderr: r.stderr });
      return r.stdout;
    }
    const { stdout } = await execFileP(cmd, args, { maxBuffer: 16 * 1024 * 1024 });
    return stdout;
  } catch (e) {
    const err = e as Error & { stderr?: string };
    const why = (err.stderr || err.message).trim().split("\n")[0];
    throw new ZmeshError("ZMESH_RUNTIME", `\`${cmd} ${args.join(" ")}\` failed: ${why}`, { cause: e });
  }
}

/** Like run, but a failure is ignored (used by clean-up, which must go on past missing things). */
export async function tryRun(cmd: string, args: string[]): Promise<boolean> {
  try {
    await execFileP(cmd, args);
    return true;
  } catch {
    return false;
  }
}

export function hasTool(name: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${name}`], { encoding: "utf8" }).status === 0;
}

/** Fails with one sentence if the runtime cannot work here (not root, tools missing). */
export function checkPrerequisites(): void {
  if (process.getuid?.() !== 0) {
    throw new ZmeshError(
      "ZMESH_NOT_ROOT",
      "the local runtime creates network namespaces and iptables rules, which needs root; run zmesh as root (sudo)",
    );
  }
  const missing = ["ip", "iptables", "iptables-restore", "setpriv"].filter((t) => !hasTool(t));
  if (missing.length > 0) {
    throw new ZmeshError(
      "ZMESH_MISSING_TOOL",
      `${missing.join(", ")} not found; install them with: apt-get install -y iproute2 iptables util-linux`,
    );
  }
}
