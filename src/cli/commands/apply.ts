// `zmesh apply -f FILE|DIR`: creates or replaces policies (AuthorizationPolicy, PeerAuthentication,
// RequestAuthentication), Workloads and Services on a running mesh and waits for its proxies to ACK
// them (and new workloads to run). Input is validated first: bad input gets one sentence and
// nothing changes.

import { Command } from "commander";
import { applyResources, type LiveResult, openMesh } from "../../runtime/index.js";

export function reportChange({ change, rollout, started, notRunning, stopped }: LiveResult): void {
  for (const k of change.created) console.log(`${k} created`);
  for (const k of change.configured) console.log(`${k} configured`);
  for (const k of change.unchanged) console.log(`${k} unchanged`);
  for (const k of change.deleted) console.log(`${k} deleted`);
  for (const k of stopped ?? []) console.log(`instance ${k} stopped and removed`);
  for (const k of started ?? []) console.log(`instance ${k} running`);
  for (const line of notRunning ?? []) console.log(line);
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
    .description("create or change policies, Workloads and Services of a running mesh, live")
    .requiredOption("-f, --filename <path...>", "YAML file or directory of resources")
    .option("--name <mesh>", "mesh name", "zmesh")
    .action(async (o: { filename: string[]; name: string }) => {
      const state = await openMesh(o.name);
      reportChange(await applyResources(state, o.filename));
    });
}
