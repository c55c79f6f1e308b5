// `zmesh status [-o text|json]`: each workload of a local mesh with its identity, certificate
// expiry, mTLS mode, proxy readiness, config version ACKed and restarts; the control plane with
// the config in force and the last rejected change; the supervisor.

import { Command } from "commander";
import { ZmeshError } from "../../errors/index.js";
import { type MeshStatus, meshStatus, openMesh, type WorkloadStatus } from "../../runtime/index.js";

function until(iso: string | null): string {
  if (!iso) return "unknown";
  const min = Math.round((Date.parse(iso) - Date.now()) / 60_000);
  if (min < 0) return "EXPIRED";
  return min >= 60 ? `in ${Math.floor(min / 60)}h${String(min % 60).padStart(2, "0")}m` : `in ${min}m`;
}

function configCell(w: WorkloadStatus): string {
  const c = w.config;
  if (!c) return "not connected";
  if (c.lastNack && c.acked !== c.sent) return `${c.acked || "-"} (NACKed ${c.sent}: ${c.lastNack})`;
  if (c.inSync) return `${c.acked} (ACKed)`;
  return `${c.acked || "-"} (pushing ${c.sent})`;
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
  return rows
    .map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join("  "))
    .join("\n");
}

export function renderStatus(s: MeshStatus): string {
  const cp = s.controlPlane;
  const a = cp.answer;
  const lines = [
    `mesh ${s.mesh} (from ${s.configDir})`,
    `supervisor     ${s.supervisor.running ? `pid ${s.supervisor.pid}, ${s.supervisor.phase}` : "NOT RUNNING: crashed processes are not restarted; zmesh up DIR again starts it"}${s.supervisor.failure ? `; failed: ${s.supervisor.failure}` : ""}`,
    `control plane  ${cp.running ? `pid ${cp.pid}` : "NOT RUNNING"}, restarts ${cp.restarts}, ${cp.address}, metrics ${cp.metrics}`,
  ];
  if (a) {
    const synced = a.proxies.filter((p) => p.inSync).length;
    lines.push(
      `               config generation ${a.config.generation} (digest ${a.config.digest}, ${a.config.resources} resources) loaded ${a.config.loadedAt}; ${synced}/${a.proxies.length} proxies in sync`,
    );
    if (a.config.lastRejection)
      lines.push(
        `               last change REJECTED at ${a.config.lastRejection.at}: ${a.config.lastRejection.reason}`,
      );
  } else lines.push("               does not answer on its admin socket");
  lines.push("");
  lines.push(
    table([
      ["WORKLOAD", "IDENTITY", "CERT EXPIRES", "MTLS", "PROXY", "CONFIG", "RESTARTS"],
      ...s.workloads.map((w) => [
        w.workload,
        w.identity,
        until(w.certExpires),
        w.mtls,
        w.completed ? "stopped" : w.proxyReady ? "ready" : "NOT READY",
        configCell(w),
        `proxy ${w.restarts.proxy}, app ${w.restarts.app}${w.completed ? ` (completed, exit ${w.completed.code ?? "?"})` : w.appRunning ? "" : " (app not running)"}`,
      ]),
    ]),
  );
  return lines.join("\n");
}

export function statusCommand(): Command {
  return new Command("status")
    .description("show a local mesh: workloads, identities, certificates, config versions, restarts")
    .option("--name <mesh>", "mesh name", "zmesh")
    .option("-o, --output <format>", "text or json", "text")
    .action(async (o: { name: string; output: string }) => {
      if (!["text", "json"].includes(o.output))
        throw new ZmeshError("ZMESH_USAGE", `-o ${o.output} is not a format; use text or json`);
      await openMesh(o.name);
      const s = await meshStatus(o.name);
      console.log(o.output === "json" ? JSON.stringify(s, null, 2) : renderStatus(s));
    });
}
