// `zmesh why REQUEST-ID [-o text|json]`: what every sidecar of a running mesh did with one request
// and why, from their access logs. The id is in a denial's body ("RBAC: access denied (request id
// ...)") and in the `x-request-id` header every request carries through the mesh.

import { Command } from "commander";
import { ZmeshError } from "../../errors/index.js";
import { formatTrace, inertJson, openMesh, traceRequest } from "../../runtime/index.js";

export function whyCommand(): Command {
  return new Command("why")
    .description("explain what the mesh did with one request, by its request id, and why")
    .argument("<request-id>", "the id a denial names, or the request's x-request-id header")
    .option("-o, --output <format>", "text or json", "text")
    .option("--name <mesh>", "mesh name", "zmesh")
    .action(async (id: string, o: { output: string; name: string }) => {
      if (o.output !== "text" && o.output !== "json")
        throw new ZmeshError("ZMESH_USAGE", `-o ${o.output} is not a format; use text or json`);
      const state = await openMesh(o.name);
      const trace = await traceRequest(state, id);
      if (trace.exchanges.length === 0)
        throw new ZmeshError(
          "ZMESH_REQUEST_NOT_FOUND",
          `no sidecar of mesh ${state.name} logged request id "${id}"; copy the id from the denial's body ` +
            `or the request's x-request-id header (zmesh logs WORKLOAD --proxy lists every request)`,
        );
      process.stdout.write(
        o.output === "json"
          ? `${inertJson({ requestId: id, ...trace })}\n`
          : `${formatTrace(id, trace).join("\n")}\n`,
      );
    });
}
