// `zmesh proxy`: runs the sidecar in the foreground inside a workload's namespace. Started as
// root by the runtime, it loads its code, addon and credential, then drops to uid 1337.

import { readFileSync } from "node:fs";
import { Command } from "commander";
import { PROXY_UID } from "../../config/index.js";
import { preloadJwt } from "../../policy/index.js";
import { loadAddon, Sidecar } from "../../proxy/index.js";

const willDrop = (uid: number) => process.getuid?.() === 0 && uid !== 0;

function dropPrivileges(uid: number): void {
  if (process.getuid?.() !== 0) return;
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
      // the addon, the JWT library (otherwise loaded on the first token) and, by the imports above,
      // every other module. A process that does not drop (not root) keeps the JWT library lazy.
      loadAddon();
      if (willDrop(Number(o["uid"]))) await preloadJwt();
      const credential = readFileSync(o["tokenFile"]!, "utf8").trim();
      const trustBundlePem = readFileSync(o["bundle"]!, "utf8");
      dropPrivileges(Number(o["uid"]));
      const proxy = new Sidecar({
        controlPlane: o["controlPlane"]!,
        trustBundlePem,
        credential,
        controlPlaneId: o["controlPlaneId"]!,
        onQuit: () => process.exit(0),
      });
      await proxy.start();
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
