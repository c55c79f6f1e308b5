// `zmesh down`: removes a local mesh and everything it created, also after a crash.

import { Command } from "commander";
import { down } from "../../runtime/index.js";

export function downCommand(): Command {
  return new Command("down")
    .description("tear a local mesh down: processes, namespaces, bridge, iptables rules, state")
    .option("--name <mesh>", "mesh name", "zmesh")
    .option("--purge", "also delete the mesh's CA (its store and key-encryption key)")
    .action(async (o: { name: string; purge?: boolean }) => {
      await down(o.name, { purge: o.purge === true });
      console.log(`mesh ${o.name} is down; nothing of it is left on this host`);
    });
}
