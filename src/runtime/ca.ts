// Where a local mesh keeps its CA between runs, how its key-encryption key is found, and the
// clients for the admin endpoints of the control plane (Unix socket) and of a proxy (loopback
// inside the workload's namespace).

import { mkdir, readFile, writeFile } from "node:fs/promises";
import { request } from "node:http";
import { join } from "node:path";
import { ENV, envOr, PORTS } from "../config/index.js";
import { ZmeshError } from "../errors/index.js";
import { newKek, parseKek } from "../identity/index.js";
import { findInstance, type MeshState } from "./state.js";
import { run } from "./sys.js";

export function dataDir(mesh: string): string {
  return join(envOr(ENV.dataDir, "/var/lib/zmesh"), mesh);
}

export function caStoreFile(mesh: string): string {
  return join(dataDir(mesh), "ca.json");
}

/**
 * The KEK as a file the control plane can read: ZMESH_CA_KEK when set (written to the mesh's
 * state, root-only), else `<data dir>/<mesh>/kek`, made on first use.
 */
export async function kekFile(mesh: string, stateSecrets?: string): Promise<string> {
  const fromEnv = process.env[ENV.caKek];
  if (fromEnv) {
    parseKek(fromEnv, ENV.caKek);
    const dir = stateSecrets ?? dataDir(mesh);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const f = join(dir, "kek.env");
    await writeFile(f, fromEnv, { mode: 0o600 });
    return f;
  }
  const f = join(dataDir(mesh), "kek");
  try {
    parseKek(await readFile(f, "utf8"), f);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
    await mkdir(dataDir(mesh), { recursive: true, mode: 0o700 });
    await writeFile(f, `${newKek()}\n`, { mode: 0o600, flag: "wx" });
  }
  return f;
}

export function controlPlaneSocket(state: MeshState): string {
  return join(state.stateDir, "controlplane.sock");
}

/** Calls the control plane's admin API; `onChunk` sees streamed output as it comes. */
export function controlPlaneAdmin(
  state: MeshState,
  method: "GET" | "POST",
  path: string,
  onChunk?: (text: string) => void,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: controlPlaneSocket(state), method, path }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => {
        body += d;
        onChunk?.(d);
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("error", (e) =>
      reject(
        new ZmeshError(
          "ZMESH_RUNTIME",
          `the control plane of mesh ${state.name} does not answer (${e.message}); is it running?`,
        ),
      ),
    );
    req.end();
  });
}

/** GETs a path of a workload's proxy admin endpoint (127.0.0.1:15000 inside its namespace). */
export async function proxyAdmin(
  state: MeshState,
  ref: string,
  path: string,
): Promise<{ status: number; body: string }> {
  const inst = findInstance(state, ref);
  const out = await run("ip", [
    "netns",
    "exec",
    inst.netns,
    "curl",
    "-s",
    "--max-time",
    "5",
    "-w",
    "\n%{http_code}",
    `http://127.0.0.1:${PORTS.proxyAdmin}${path}`,
  ]);
  const i = out.lastIndexOf("\n");
  const status = Number(out.slice(i + 1));
  if (!status)
    throw new ZmeshError(
      "ZMESH_RUNTIME",
      `the proxy of ${inst.namespace}/${inst.name} does not answer on its admin port`,
    );
  return { status, body: out.slice(0, i) };
}
