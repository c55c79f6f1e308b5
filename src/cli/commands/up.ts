// `zmesh up DIR`: brings a local mesh up from a directory of resources; on a mesh that already
// runs from DIR it reconciles (policies updated live, a dead supervisor restarted) instead.

import { Command } from "commander";
import { up } from "../../runtime/index.js";

export function upCommand(): Command {
  return new Command("up")
    .description("bring up a local mesh from a directory of YAML resources (again: reconcile it)")
    .argument("<dir>", "directory with Workload, Service and AuthorizationPolicy resources")
    .option("--name <mesh>", "mesh name, to run several side by side", "zmesh")
    .action(async (dir: string, o: { name: string }) => {
      const state = await up(dir, { name: o.name, log: (l) => console.log(l) });
      const flag = o.name === "zmesh" ? "" : ` --name ${o.name}`;
      console.log(
        `mesh ${state.name} is up: ${state.instances.length} workloads. Try: zmesh exec${flag} ${state.instances[0]?.name} -- curl -s http://${state.services[0]?.name ?? "SERVICE"}:${state.services[0]?.ports[0] ?? 80}/ ; zmesh status${flag}`,
      );
    });
}
