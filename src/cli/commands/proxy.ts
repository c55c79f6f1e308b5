// `zmesh proxy`: runs the sidecar in the foreground inside a workload's namespace. Started as
// root by the runtime, it loads its code, addon and credential, then drops to uid 1337.

import { closeSync, openSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { Command } from "commander";
import { PROXY_UID } from "../../config/index.js";
import { preloadJwt } from "../../policy/index.js";
import { loadAddon, lowerBackgroundThreads, Sidecar } from "../../proxy/index.js";

const willDrop = (uid: number) => process.getuid?.() === 0 && uid !== 0;

/**
 * Whether `uid` (with no supplementary groups, as after the drop) can open `file`: tried with the
 * effective ids switched for the moment, then restored. A checkout is root-only when cloned under
 * `mktemp -d` (mode 0700); an installed one is readable by all.
 */
function readableAs(uid: number, file: string): boolean {
  const [euid, egid] = [process.geteuid!(), process.getegid!()];
  try {
    process.setgroups!([]);
    process.setegid!(uid);
    process.seteuid!(uid);
    closeSync(openSync(file, "r"));
    return true;
  } catch {
    return false;
  } finally {
    process.seteuid!(euid);
    process.setegid!(egid);
  }
}

function dropPrivileges(uid: number): void {
  if (!willDrop(uid)) return;
  process.setgroups?.([]);
  process.setgid?.(uid);
  process.setuid?.(uid);
}

export function proxyCommand(): Command {
  return new Command("proxy")
    .description("run the sidecar proxy of one workload instance")
    .requiredOption("--control-plane <host:port>", "control plane gRPC address")
    .requiredOption("--bundle <file>", "trust bundle (PEM) to authenticate the control plane")
    .requiredOption("--token-file <file>", "bootstrap credential of this workload instance")
    .requiredOption("--control-plane-id <spiffe>", "SPIFFE ID the control plane must present")
    .option("--uid <uid>", "drop to this uid once started", String(PROXY_UID))
    .option("--mesh <name>", "the local mesh this belongs to (for clean-up)")
    .action(async (o: Record<string, string>) => {
      // Everything read from the checkout is read before the drop to uid 1337 (it may be root-only):
      // the addon and, by the imports above, every module. The JWT library is loaded on the first
      // token: before the drop only when uid 1337 could not load it after (it costs each sidecar
      // ~4 MB; bench/README.md, "Round 4: memory").
      loadAddon();
      const uid = Number(o["uid"]);
      if (willDrop(uid) && !readableAs(uid, fileURLToPath(import.meta.resolve("jose")))) await preloadJwt();
      const credential = readFileSync(o["tokenFile"]!, "utf8").trim();
      const trustBundlePem = readFileSync(o["bundle"]!, "utf8");
      dropPrivileges(uid);
      // Compiles, GC helpers and the threadpool yield to the thread that relays requests.
      await lowerBackgroundThreads();
      const proxy = new Sidecar({
        controlPlane: o["controlPlane"]!,
        trustBundlePem,
        credential,
        controlPlaneId: o["controlPlaneId"]!,
        onQuit: () => process.exit(0),
      });
      await proxy.start();
      // Listeners that cannot open (logged by the proxy) end the process: the supervisor restarts it.
      proxy.ready().catch(() => process.exit(1));
      // SIGTERM drains: no new connections, in-flight requests finish (5 s at most), then exit.
      const stop = () =>
        void proxy
          .drain()
          .then(() => proxy.close())
          .then(() => process.exit(0));
      process.on("SIGTERM", stop);
      process.on("SIGINT", stop);
    });
}
