// The zmesh CLI: one file per command under commands/; each talks to the parts through their
// public faces. A ZmeshError becomes one line on stderr and exit code 1.
//
// Each command's module is imported only when needed: `zmesh <command>` loads that command alone
// (the sidecar, `zmesh proxy`, runs for the life of its workload, and every other command's
// libraries would stay in its memory: ~3 MB, bench/README.md "Round 4"); help and anything
// that is not a known command name load them all, so that commander can list and match them.

import { Command, CommanderError } from "commander";
import { isZmeshError } from "../errors/index.js";

/** In the order `zmesh --help` lists them; `commands/<name>.js` exports `<name>Command()`. */
const COMMANDS = [
  "up",
  "down",
  "status",
  "apply",
  "delete",
  "get",
  "logs",
  "why",
  "exec",
  "certs",
  "ca",
  "demo",
  "controlplane",
  "proxy",
  "supervise",
  "check",
];
/** Commands for the runtime's own use, not listed by `zmesh --help`. */
const HIDDEN = new Set(["supervise"]);

async function make(name: string): Promise<Command> {
  const mod = (await import(`./commands/${name}.js`)) as Record<string, () => Command>;
  return mod[`${name}Command`]!();
}

const program = new Command("zmesh")
  .description("a zero-trust service mesh: SPIFFE identities, mutual TLS, Istio-compatible authorization")
  .version("0.1.0")
  .exitOverride();

const named = COMMANDS.find((name) => name === process.argv[2]);
for (const name of named ? [named] : COMMANDS)
  program.addCommand(await make(name), HIDDEN.has(name) ? { hidden: true } : {});

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
