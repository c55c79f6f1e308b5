// `zmesh supervise --mesh NAME`: the supervisor of one local mesh, started by `zmesh up` (hidden
// from help). It runs and restarts the control plane, proxies and apps; see runtime/supervisor.ts.

import { Command } from "commander";
import { logger } from "../../diag/index.js";
import { openMesh, Supervisor } from "../../runtime/index.js";

export function superviseCommand(): Command {
  return new Command("supervise")
    .description("run a local mesh's supervisor (zmesh up starts it): restarts what crashes, with backoff")
    .requiredOption("--mesh <name>", "the mesh to supervise")
    .action(async (o: { mesh: string }) => {
      const state = await openMesh(o.mesh);
      const sup = await Supervisor.open(state, logger("runtime", { mesh: o.mesh, supervisor: process.pid }));
      // Stopping the supervisor leaves the mesh running, unwatched: `zmesh down` removes it.
      const stop = () => void sup.stop().then(() => process.exit(0));
      process.on("SIGTERM", stop);
      process.on("SIGINT", stop);
      process.on("SIGHUP", () => {});
      await sup.run();
      if (sup.phase() === "failed") process.exit(1);
      setInterval(() => {}, 1 << 30); // watch until stopped
    });
}
