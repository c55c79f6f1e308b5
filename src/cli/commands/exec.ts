// `zmesh exec WORKLOAD -- CMD...`: runs a command inside a workload's namespace as its app's
// uid, so its traffic is captured and secured like the app's.

import { Command } from "commander";
import { exec, openMesh } from "../../runtime/index.js";

export function execCommand(): Command {
  return new Command("exec")
    .description("run a command inside a workload, as its app")
    .argument("<workload>", "workload name, or namespace/name")
    .argument("<cmd...>", "command and arguments (put -- before them)")
    .option("--name <mesh>", "mesh name", "zmesh")
    .action(async (workload: string, cmd: string[], o: { name: string }) => {
      const state = await openMesh(o.name);
      const r = await exec(state, workload, cmd, { inherit: true });
      process.exitCode = r.code;
    });
}
