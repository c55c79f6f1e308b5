// `zmesh supervise --mesh NAME`: the supervisor of one local mesh, started by `zmesh up` (hidden
// from help). It runs and restarts the control plane, proxies and apps; see runtime/supervisor.ts.

import { Command } from "commander";
import { logger } from "../../diag/index.js";
import { loadState, openMesh, Supervisor } from "../../runtime/index.js";

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
      // `zmesh apply` of Workloads: take the new layout once the bring-up is over.
      let started: Promise<void> = Promise.resolve();
      process.on("SIGHUP", () => {
        void started
          .then(() => loadState(o.mesh))
          .then((s) => sup.reconcile(s))
          .catch(() => {});
      });
      started = sup.run();
      await started;
      if (sup.phase() === "failed") process.exit(1);
      setInterval(() => {}, 1 << 30); // watch until stopped
    });
}
