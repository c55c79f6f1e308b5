// `zmesh get KIND [NAME] [-o table|yaml|json]`: resources of a running mesh as its store holds
// them (Services with the VIP the runtime gave them, WorkloadEntries the runtime wrote).

import { Command } from "commander";
import { stringify } from "yaml";
import { ZmeshError } from "../../errors/index.js";
import { getResources, openMesh, type StoredDoc } from "../../runtime/index.js";

type Obj = Record<string, unknown>;
const obj = (v: unknown): Obj => (v && typeof v === "object" && !Array.isArray(v) ? (v as Obj) : {});
const list = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);

function selector(spec: Obj, key = "selector"): string {
  const s = obj(spec[key]);
  const labels = obj("matchLabels" in s ? s["matchLabels"] : s);
  const pairs = Object.entries(labels).map(([k, v]) => `${k}=${String(v)}`);
  return pairs.length > 0 ? pairs.join(",") : "(all)";
}

function columns(d: StoredDoc): [string[], string[]] {
  const spec = obj(d.raw["spec"]);
  switch (d.kind) {
    case "Workload":
      return [
        ["SERVICE-ACCOUNT", "REPLICAS", "PORTS", "COMMAND"],
        [
          String(spec["serviceAccount"] ?? "default"),
          String(spec["replicas"] ?? 1),
          list(spec["ports"])
            .map((p) => String(obj(p)["containerPort"]))
            .join(",") || "-",
          list(spec["command"]).join(" "),
        ],
      ];
    case "Service":
      return [
        ["CLUSTER-IP", "PORTS", "SELECTOR"],
        [
          String(spec["clusterIP"] ?? "-"),
          list(spec["ports"])
            .map((p) => `${obj(p)["port"]}->${obj(p)["targetPort"] ?? obj(p)["port"]}`)
            .join(","),
          selector({ selector: obj(spec["selector"]) }),
        ],
      ];
    case "AuthorizationPolicy":
      return [
        ["ACTION", "SELECTOR", "RULES"],
        [String(spec["action"] ?? "ALLOW"), selector(spec), String(list(spec["rules"]).length)],
      ];
    case "PeerAuthentication":
      return [
        ["MODE", "SELECTOR"],
        [String(obj(spec["mtls"])["mode"] ?? "(inherit)"), selector(spec)],
      ];
    case "RequestAuthentication":
      return [
        ["ISSUERS", "SELECTOR"],
        [
          list(spec["jwtRules"])
            .map((r) => String(obj(r)["issuer"]))
            .join(","),
          selector(spec),
        ],
      ];
    case "Sidecar":
      return [
        ["OUTBOUND", "SELECTOR"],
        [
          String(obj(spec["outboundTrafficPolicy"])["mode"] ?? "(inherit)"),
          selector({ selector: obj(obj(spec["workloadSelector"])["labels"]) }),
        ],
      ];
    case "WorkloadEntry":
      return [
        ["ADDRESS", "SERVICE-ACCOUNT"],
        [String(spec["address"] ?? "-"), String(spec["serviceAccount"] ?? "default")],
      ];
    default:
      return [[], []];
  }
}

function table(docs: StoredDoc[]): string {
  const out: string[] = [];
  for (const kind of [...new Set(docs.map((d) => d.kind))]) {
    const ofKind = docs.filter((d) => d.kind === kind);
    const head = ["NAMESPACE", "NAME", ...columns(ofKind[0]!)[0]];
    const rows = [head, ...ofKind.map((d) => [d.namespace, d.name, ...columns(d)[1]])];
    const widths = head.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
    if (out.length > 0) out.push("");
    if (new Set(docs.map((d) => d.kind)).size > 1) out.push(`${kind}:`);
    for (const r of rows)
      out.push(r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join("  "));
  }
  return out.join("\n");
}

export function getCommand(): Command {
  return new Command("get")
    .description(
      "list resources of a running mesh: workloads, services, policies, peerauthentications, ... or all",
    )
    .argument(
      "<kind>",
      "Workload, Service, AuthorizationPolicy, PeerAuthentication, RequestAuthentication, Sidecar, WorkloadEntry, all (plurals and short names work)",
    )
    .argument("[name]", "name, or namespace/name")
    .option("-o, --output <format>", "table, yaml or json", "table")
    .option("--name <mesh>", "mesh name", "zmesh")
    .action(async (kind: string, name: string | undefined, o: { output: string; name: string }) => {
      if (!["table", "yaml", "json"].includes(o.output))
        throw new ZmeshError("ZMESH_USAGE", `-o ${o.output} is not a format; use table, yaml or json`);
      const state = await openMesh(o.name);
      const docs = await getResources(state, kind, name);
      if (o.output === "yaml") process.stdout.write(docs.map((d) => stringify(d.raw)).join("---\n"));
      else if (o.output === "json") {
        const body =
          name !== undefined && docs.length === 1
            ? docs[0]!.raw
            : { apiVersion: "v1", kind: "List", items: docs.map((d) => d.raw) };
        console.log(JSON.stringify(body, null, 2));
      } else if (docs.length === 0) console.log(`no ${kind} in mesh ${o.name}`);
      else console.log(table(docs));
    });
}
