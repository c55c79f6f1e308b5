// The zmesh CLI: one file per command under commands/; each talks to the parts through their
// public faces. A ZmeshError becomes one line on stderr and exit code 1.

import { Command, CommanderError } from "commander";
import { isZmeshError } from "../errors/index.js";
import { applyCommand } from "./commands/apply.js";
import { caCommand } from "./commands/ca.js";
import { certsCommand } from "./commands/certs.js";
import { controlplaneCommand } from "./commands/controlplane.js";
import { deleteCommand } from "./commands/delete.js";
import { demoCommand } from "./commands/demo.js";
import { downCommand } from "./commands/down.js";
import { execCommand } from "./commands/exec.js";
import { getCommand } from "./commands/get.js";
import { logsCommand } from "./commands/logs.js";
import { proxyCommand } from "./commands/proxy.js";
import { statusCommand } from "./commands/status.js";
import { superviseCommand } from "./commands/supervise.js";
import { upCommand } from "./commands/up.js";

const program = new Command("zmesh")
  .description("a zero-trust service mesh: SPIFFE identities, mutual TLS, Istio-compatible authorization")
  .version("0.1.0")
  .exitOverride();

for (const make of [
  upCommand,
  downCommand,
  statusCommand,
  applyCommand,
  deleteCommand,
  getCommand,
  logsCommand,
  execCommand,
  certsCommand,
  caCommand,
  demoCommand,
  controlplaneCommand,
  proxyCommand,
]) {
  program.addCommand(make());
}
program.addCommand(superviseCommand(), { hidden: true });
program.addCommand((await import("./commands/check.js")).checkCommand());

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
