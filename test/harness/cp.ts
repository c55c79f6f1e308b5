// A real control plane on loopback over a YAML store in a temporary directory, with a bootstrap
// token minted per workload instance: the part of a mesh shared by the in-process test harness
// (./index.ts) and the loopback benches (bench/lib/mesh.ts).

import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Logger } from "pino";
import {
  ControlPlane,
  type ControlPlaneOptions,
  TokenFileAttestor,
  tokenDigest,
} from "../../src/controlplane/index.js";
import type { CertificateAuthority } from "../../src/identity/index.js";

/**
 * A loopback port nothing listens on right now, for a listener started a little later. Taken from
 * 10000-19999: below the kernel's ephemeral range (32768 and up, where every outgoing connection
 * and every listen on port 0 picks its port, so one of them could take a port between this check
 * and its use: a full suite failed once with EADDRINUSE that way), and below the 20000 and up that
 * test clients bind as local ports.
 */
export async function freePort(): Promise<number> {
  for (let attempt = 0; ; attempt++) {
    const port = FREE_PORT_FIRST + Math.floor(Math.random() * FREE_PORT_COUNT);
    const s = createServer();
    const ok = await new Promise<boolean>((resolve) => {
      s.once("error", () => resolve(false));
      s.listen(port, "127.0.0.1", () => resolve(true));
    });
    if (ok) {
      await new Promise((r) => s.close(r));
      return port;
    }
    if (attempt >= 100)
      throw new Error(`no free loopback port in ${FREE_PORT_FIRST}-${FREE_PORT_FIRST + FREE_PORT_COUNT - 1}`);
  }
}

const FREE_PORT_FIRST = 10_000;
const FREE_PORT_COUNT = 10_000;

/**
 * The options of a control plane on loopback over `dir`'s mesh.yaml and tokens.json, with the
 * default trust domain and root namespace and no file watching (a test reloads it itself).
 */
export function loopbackOptions(dir: string, log: Logger): ControlPlaneOptions {
  return {
    configPaths: [join(dir, "mesh.yaml")],
    listen: "127.0.0.1:0",
    attestor: new TokenFileAttestor(join(dir, "tokens.json")),
    trustDomain: "cluster.local",
    rootNamespace: "zmesh-system",
    watch: false,
    log,
  };
}

export interface LocalControlPlane {
  dir: string;
  cp: ControlPlane;
  /** Bootstrap token of each instance, by `<namespace>/<name>`. */
  tokens: Map<string, string>;
  /** Stops the control plane and removes its directory. */
  close(): Promise<void>;
}

/** Writes `yaml` and a token file for `instances` under a new temporary directory, then starts the control plane. */
export async function startControlPlane(opts: {
  yaml: string;
  instances: { namespace: string; name: string }[];
  log: Logger;
  tmpPrefix: string;
  ca?: CertificateAuthority;
}): Promise<LocalControlPlane> {
  const dir = await mkdtemp(join(tmpdir(), opts.tmpPrefix));
  await writeFile(join(dir, "mesh.yaml"), opts.yaml);
  const tokens = new Map<string, string>();
  const table: Record<string, { namespace: string; entry: string }> = {};
  for (const i of opts.instances) {
    const t = randomBytes(24).toString("base64url");
    tokens.set(`${i.namespace}/${i.name}`, t);
    table[tokenDigest(t)] = { namespace: i.namespace, entry: i.name };
  }
  await writeFile(join(dir, "tokens.json"), JSON.stringify(table));
  const cp = await ControlPlane.start({
    ...loopbackOptions(dir, opts.log),
    ...(opts.ca ? { ca: opts.ca } : {}),
  });
  return {
    dir,
    cp,
    tokens,
    close: async () => {
      await cp.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
