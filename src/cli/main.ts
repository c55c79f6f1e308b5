// The zmesh CLI: one file per command under commands/; each talks to the parts through their
// public faces. A ZmeshError becomes one line on stderr and exit code 1.
//
// Each command's module is imported only when needed: `zmesh <command>` loads that command alone
// (the sidecar, `zmesh proxy`, runs for the life of its workload, and every other command's
// libraries would stay in its memory: ~3 MB, bench/README.md "Round 4"); help and anything
// that is not a known command name load them all, so that commander can list and match them.

import { Command, CommanderError } from "commander";
import { isZmeshError } from "../errors/index.js";

type Make = () => Promise<Command>;
/** In the order `zmesh --help` lists them; hidden ones are not listed. */
const COMMANDS: [name: string, make: Make, hidden?: true][] = [
  ["up", async () => (await import("./commands/up.js")).upCommand()],
  ["down", async () => (await import("./commands/down.js")).downCommand()],
  ["status", async () => (await import("./commands/status.js")).statusCommand()],
  ["apply", async () => (await import("./commands/apply.js")).applyCommand()],
  ["delete", async () => (await import("./commands/delete.js")).deleteCommand()],
  ["get", async () => (await import("./commands/get.js")).getCommand()],
  ["logs", async () => (await import("./commands/logs.js")).logsCommand()],
  ["exec", async () => (await import("./commands/exec.js")).execCommand()],
  ["certs", async () => (await import("./commands/certs.js")).certsCommand()],
  ["ca", async () => (await import("./commands/ca.js")).caCommand()],
  ["demo", async () => (await import("./commands/demo.js")).demoCommand()],
  ["controlplane", async () => (await import("./commands/controlplane.js")).controlplaneCommand()],
  ["proxy", async () => (await import("./commands/proxy.js")).proxyCommand()],
  ["supervise", async () => (await import("./commands/supervise.js")).superviseCommand(), true],
  ["check", async () => (await import("./commands/check.js")).checkCommand()],
];

const program = new Command("zmesh")
  .description("a zero-trust service mesh: SPIFFE identities, mutual TLS, Istio-compatible authorization")
  .version("0.1.0")
  .exitOverride();

const named = COMMANDS.find(([name]) => name === process.argv[2]);
for (const [, make, hidden] of named ? [named] : COMMANDS)
  program.addCommand(await make(), hidden ? { hidden: true } : {});

try {
  await program.parseAsync(process.argv);
} catch (e) {
  if (e instanceof CommanderError) process.exit(e.exitCode);
  if (isZmeshError(e)) {
    process.stderr.write(`zmesh: ${e.message} [${e.code}]\n`);
    process.exit(1);
  }
  throw e;
}
