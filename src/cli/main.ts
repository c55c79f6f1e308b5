// The zmesh CLI: one file per command under commands/; each talks to the parts through their
// public faces. A ZmeshError becomes one line on stderr and exit code 1.

import { Command, CommanderError } from "commander";
import { isZmeshError } from "../errors/index.js";
import { controlplaneCommand } from "./commands/controlplane.js";
import { demoCommand } from "./commands/demo.js";
import { downCommand } from "./commands/down.js";
import { execCommand } from "./commands/exec.js";
import { proxyCommand } from "./commands/proxy.js";
import { upCommand } from "./commands/up.js";

const program = new Command("zmesh")
  .description("a zero-trust service mesh: SPIFFE identities, mutual TLS, Istio-compatible authorization")
  .version("0.1.0")
  .exitOverride();

for (const make of [upCommand, downCommand, execCommand, demoCommand, controlplaneCommand, proxyCommand]) {
  program.addCommand(make());
}

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
