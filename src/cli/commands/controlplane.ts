// `zmesh controlplane`: runs the control plane in the foreground (the runtime starts it for you).

import { Command } from "commander";
import { DEFAULT_ROOT_NAMESPACE, ENV, PORTS } from "../../config/index.js";
import { ControlPlane, TokenFileAttestor } from "../../controlplane/index.js";
import { DEFAULT_TRUST_DOMAIN, parseKek, readKekFile } from "../../identity/index.js";

export function controlplaneCommand(): Command {
  return new Command("controlplane")
    .description("run the control plane: mesh CA and config delivery over gRPC")
    .requiredOption("--config <dir...>", "directories or files of YAML resources (watched)")
    .requiredOption("--tokens <file>", "bootstrap credentials: SHA-256 digests bound to workload instances")
    .option("--listen <host:port>", "gRPC address", `127.0.0.1:${PORTS.controlPlaneGrpc}`)
    .option(
      "--debug-listen <addr>",
      "metrics (/metrics): host:port, a Unix socket path, or none",
      `127.0.0.1:${PORTS.controlPlaneDebug}`,
    )
    .option("--bundle-out <file>", "write the trust bundle (PEM) here once serving")
    .option("--trust-domain <td>", "SPIFFE trust domain", DEFAULT_TRUST_DOMAIN)
    .option("--root-namespace <ns>", "mesh root namespace for policies", DEFAULT_ROOT_NAMESPACE)
    .option("--ca-store <file>", "CA store (keys sealed under the KEK); made at first start")
    .option("--kek-file <file>", "key-encryption key of the CA store (else ZMESH_CA_KEK)")
    .option("--admin-socket <path>", "Unix socket for the admin API (bundle, CA state, rotation)")
    .option("--cert-ttl <seconds>", "lifetime of workload certificates", (v) => Number(v))
    .option("--mesh <name>", "the local mesh this belongs to (for clean-up)")
    .action(async (o: Record<string, string | string[]>) => {
      const kekText = process.env[ENV.caKek];
      const kek = o["kekFile"]
        ? readKekFile(o["kekFile"] as string)
        : kekText
          ? parseKek(kekText, ENV.caKek)
          : undefined;
      const cp = await ControlPlane.start({
        configPaths: o["config"] as string[],
        listen: o["listen"] as string,
        attestor: new TokenFileAttestor(o["tokens"] as string),
        trustDomain: o["trustDomain"] as string,
        rootNamespace: o["rootNamespace"] as string,
        ...(o["bundleOut"] ? { bundleOut: o["bundleOut"] as string } : {}),
        ...(o["caStore"] ? { caStore: o["caStore"] as string } : {}),
        ...(kek ? { kek } : {}),
        ...(o["adminSocket"] ? { adminSocket: o["adminSocket"] as string } : {}),
        ...(o["debugListen"] !== "none"
          ? { debugListen: o["debugListen"] as string, processMetrics: true }
          : {}),
        ...(o["certTtl"] ? { certTtlSeconds: o["certTtl"] as unknown as number } : {}),
      });
      const stop = () => void cp.close().then(() => process.exit(0));
      process.on("SIGTERM", stop);
      process.on("SIGINT", stop);
    });
}
