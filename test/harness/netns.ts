// The namespaced tier's shared setup (tests that run the real runtime as root: network namespaces,
// iptables capture, supervised processes): whether this process may run them, the skip reason
// shown when it may not, the example shop they bring up, the `zmesh` CLI run as a child process,
// curl run inside a workload, the bounded wait of wait.ts (re-exported), the shop copied to a scratch
// directory and brought up (for files that edit it), and the one mesh-plus-intruder fixture the attack files share
// (the shop up under a mesh name of the file's own, an unmeshed namespace "intruder" beside it,
// everything purged after).

import { execFile } from "node:child_process";
import { chmodSync, cpSync, mkdtempSync, rmSync } from "node:fs";
import { cp, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before } from "node:test";
import { addUnmeshed, down, exec, type MeshState, stateRoot, up } from "../../src/runtime/index.js";

export { eventually } from "./wait.js";

export const AS_ROOT = process.getuid?.() === 0;
/** The describe `skip` option of a namespaced suite: false as root, else the visible reason. */
export const NEEDS_ROOT: false | string = AS_ROOT
  ? false
  : "needs root (network namespaces, iptables): run as root, as CI does";
/** The repository root (this file runs from dist/test/harness). */
export const REPO = join(import.meta.dirname ?? ".", "..", "..", "..");
export const SHOP_EXAMPLE = join(REPO, "examples", "shop");

export interface ZmeshRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs bin/zmesh.js with `args` from the repository root (as `asUid` via setpriv when given); never rejects. */
let readableCopy: string | undefined;
/**
 * The CLI's files, copied where any uid may read them: a checkout can be root-only (a clone under
 * `mktemp -d` is mode 0700), and a run as another uid must still reach the code to be refused by it.
 */
function cliForAnyUid(): string {
  if (!readableCopy) {
    const dir = mkdtempSync(join(tmpdir(), "zmesh-cli-"));
    chmodSync(dir, 0o755);
    for (const part of ["package.json", "bin", "dist", "node_modules", "native", "proto"])
      cpSync(join(REPO, part), join(dir, part), { recursive: true });
    readableCopy = dir;
    process.once("exit", () => rmSync(dir, { recursive: true, force: true }));
  }
  return readableCopy;
}

export function zmeshCli(args: string[], opts: { asUid?: number } = {}): Promise<ZmeshRun> {
  const root = opts.asUid ? cliForAnyUid() : REPO;
  const argv = [process.execPath, join(root, "bin", "zmesh.js"), ...args];
  const [cmd, ...rest] = opts.asUid
    ? ["setpriv", `--reuid=${opts.asUid}`, `--regid=${opts.asUid}`, "--clear-groups", ...argv]
    : argv;
  return new Promise((resolve) => {
    execFile(cmd!, rest, { cwd: REPO, timeout: 120_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** curl `args` from inside workload `who` (3 s limit): the HTTP status ("000" when no answer) and the body. */
export async function curlIn(
  state: MeshState,
  who: string,
  args: string[],
): Promise<{ status: string; body: string }> {
  const r = await exec(state, who, ["curl", "-s", "--max-time", "3", "-w", "\n%{http_code}", ...args], {
    timeoutMs: 10_000,
  });
  const lines = r.stdout.split("\n");
  return { status: lines.pop() ?? "", body: lines.join("\n") };
}

/** Copies the example shop to a new scratch directory and brings it up as mesh `name` (any old state of that name removed first). */
export async function upScratchShop(
  name: string,
  prefix: string,
): Promise<{ dir: string; state: MeshState }> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  await cp(SHOP_EXAMPLE, dir, { recursive: true });
  await rm(join(stateRoot(), name), { recursive: true, force: true }).catch(() => {});
  return { dir, state: await up(dir, { name }) };
}

/** Takes the meshes down (purged, errors ignored), in order, then removes the scratch directory. */
export async function downScratchShop(dir: string | undefined, ...names: string[]): Promise<void> {
  for (const name of names) await down(name, { quiet: true, purge: true }).catch(() => {});
  if (dir) await rm(dir, { recursive: true, force: true });
}

/**
 * Registers the enclosing suite's before/after hooks: `up` of the example shop as mesh `name`, an
 * unmeshed namespace "intruder", and `down --purge` after. `state` is set once before() has run.
 */
export function shopWithIntruder(name: string): { state: MeshState } {
  const shop = { state: undefined as unknown as MeshState };
  before(async () => {
    shop.state = await up(SHOP_EXAMPLE, { name });
    await addUnmeshed(shop.state, "intruder");
  });
  after(async () => {
    if (shop.state) await down(name, { quiet: true, purge: true });
  });
  return shop;
}
