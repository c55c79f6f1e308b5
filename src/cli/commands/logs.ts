// `zmesh logs WORKLOAD [--proxy] [--follow] [--tail N]`: what a workload's app (or its sidecar)
// wrote; also `controlplane` and `supervisor`. --follow keeps printing until interrupted.

import { Command } from "commander";
import { ZmeshError } from "../../errors/index.js";
import { followLog, logPath, openMesh, readLog } from "../../runtime/index.js";

export function logsCommand(): Command {
  return new Command("logs")
    .description("print the log of a workload's app, its proxy (--proxy), the controlplane or the supervisor")
    .argument("<workload>", "workload name, namespace/name, controlplane or supervisor")
    .option("--proxy", "the sidecar's log (JSON lines: access log with every decision and its reason)")
    .option("-f, --follow", "keep printing what is appended")
    .option("--tail <lines>", "only the last lines")
    .option("--name <mesh>", "mesh name", "zmesh")
    .action(
      async (workload: string, o: { proxy?: boolean; follow?: boolean; tail?: string; name: string }) => {
        const tail = o.tail === undefined ? undefined : Number(o.tail);
        if (tail !== undefined && (!Number.isInteger(tail) || tail < 0))
          throw new ZmeshError("ZMESH_USAGE", `--tail ${o.tail} is not a number of lines`);
        const state = await openMesh(o.name);
        const file = logPath(state, workload, o.proxy === true);
        const { text, end } = await readLog(file, tail);
        process.stdout.write(text);
        if (!o.follow) return;
        const stop = new AbortController();
        process.once("SIGINT", () => stop.abort());
        process.once("SIGTERM", () => stop.abort());
        await followLog(file, end, (t) => process.stdout.write(t), stop.signal);
      },
    );
}
