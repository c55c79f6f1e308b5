// `zmesh apply -f FILE|DIR`: creates or replaces policies (AuthorizationPolicy, PeerAuthentication,
// RequestAuthentication) on a running mesh and waits for its proxies to ACK them. Input is
// validated first: bad input gets one sentence and nothing changes.

import { Command } from "commander";
import { applyResources, type Change, openMesh, type Rollout } from "../../runtime/index.js";

export function reportChange(change: Change, rollout: Rollout | undefined): void {
  for (const k of change.created) console.log(`${k} created`);
  for (const k of change.configured) console.log(`${k} configured`);
  for (const k of change.unchanged) console.log(`${k} unchanged`);
  for (const k of change.deleted) console.log(`${k} deleted`);
  if (!rollout) return;
  if (rollout.loaded && !rollout.waiting) {
    console.log(
      `in force: the control plane loaded it and ${rollout.inSync}/${rollout.proxies} proxies ACKed in ${rollout.ms} ms`,
    );
  } else {
    console.log(`written to the mesh's store; ${rollout.waiting}`);
  }
}

export function applyCommand(): Command {
  return new Command("apply")
    .description("create or change policies of a running mesh, live")
    .requiredOption("-f, --filename <path...>", "YAML file or directory of resources")
    .option("--name <mesh>", "mesh name", "zmesh")
    .action(async (o: { filename: string[]; name: string }) => {
      const state = await openMesh(o.name);
      const { change, rollout } = await applyResources(state, o.filename);
      reportChange(change, rollout);
    });
}
