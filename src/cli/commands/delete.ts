// `zmesh delete -f FILE|DIR`: removes the policies, Workloads and Services the files name from a running mesh and waits
// for its proxies to ACK. Every resource named must exist, or nothing is removed.

import { Command } from "commander";
import { deleteResources, openMesh } from "../../runtime/index.js";
import { reportChange } from "./apply.js";

export function deleteCommand(): Command {
  return new Command("delete")
    .description("delete policies, Workloads and Services from a running mesh, live")
    .requiredOption("-f, --filename <path...>", "YAML file or directory naming the resources")
    .option("--name <mesh>", "mesh name", "zmesh")
    .action(async (o: { filename: string[]; name: string }) => {
      const state = await openMesh(o.name);
      reportChange(await deleteResources(state, o.filename));
    });
}
