// Reads YAML files into a validated MeshConfig. Every problem becomes one sentence naming the
// file, the resource and the field path; nothing is half-loaded: any error rejects the whole set.

import { readdir, readFile, stat } from "node:fs/promises";
import { createRequire } from "node:module";
import { extname, join, relative } from "node:path";
import type { Document, LineCounter } from "yaml";
import { ZmeshError } from "../errors/index.js";
import type { Issue } from "../policy/index.js";
import {
  type AuthorizationPolicy,
  type PeerAuthentication,
  type RequestAuthentication,
  type Resource,
  readResource,
  type Service,
  type Sidecar,
  type Workload,
  type WorkloadEntry,
} from "./resources.js";

export interface MeshConfig {
  workloads: Workload[];
  services: Service[];
  workloadEntries: WorkloadEntry[];
  /** AuthorizationPolicies only. */
  policies: AuthorizationPolicy[];
  peerAuthentications: PeerAuthentication[];
  /** Istio Sidecars (only their outbound traffic policy). */
  sidecars: Sidecar[];
  requestAuthentications: RequestAuthentication[];
  /** The parsed documents, in file order, for tools that write resources back (the runtime's store). */
  documents: { resource: Resource; raw: Record<string, unknown> }[];
}

export interface ConfigProblem {
  file: string;
  line?: number;
  resource?: string;
  path: string;
  message: string;
  code: Issue["code"] | "ZMESH_CONFIG_PARSE" | "ZMESH_CONFIG_DUPLICATE";
}

export function formatProblem(p: ConfigProblem): string {
  const where = [p.line ? `${p.file}:${p.line}` : p.file, p.resource, p.path].filter(Boolean).join(": ");
  return `${where}: ${p.message}`;
}

/** Thrown when a configuration set has problems; message lists every one, a line each. */
export class ConfigError extends ZmeshError {
  readonly problems: ConfigProblem[];
  constructor(problems: ConfigProblem[]) {
    const first = problems[0]!;
    const more = problems.length > 1 ? `\n${problems.slice(1).map(formatProblem).join("\n")}` : "";
    super(first.code, formatProblem(first) + more);
    this.problems = problems;
  }
}

function resourceName(raw: unknown): string | undefined {
  if (typeof raw !== "object" || raw === null) return undefined;
  const r = raw as Record<string, unknown>;
  const m = (r["metadata"] ?? {}) as Record<string, unknown>;
  const kind = typeof r["kind"] === "string" ? r["kind"] : "resource";
  const name = typeof m["name"] === "string" ? m["name"] : "(unnamed)";
  const ns = typeof m["namespace"] === "string" ? m["namespace"] : "default";
  return `${kind} ${ns}/${name}`;
}

/** The line of the deepest node of a field path ("spec.rules[0].to") that exists in the document. */
function fieldLine(doc: Document.Parsed, path: string, lc: LineCounter): number | undefined {
  const keys = path.split(/\.|\[(\d+)\]/).filter((k) => k !== undefined && k !== "");
  for (let n = keys.length; n > 0; n--) {
    const node = doc.getIn(
      keys.slice(0, n).map((k) => (/^\d+$/.test(k) ? Number(k) : k)),
      true,
    ) as { range?: [number, number, number] } | undefined;
    if (node && typeof node === "object" && node.range) return lc.linePos(node.range[0]).line;
  }
  return undefined;
}

type Yaml = typeof import("yaml");
let yaml: Yaml | undefined;
/**
 * The yaml library, loaded on first use: the sidecar imports this folder for its settings but never
 * parses YAML, and the library would cost each sidecar ~1-2 MB (bench/README.md, "Round 4").
 */
function yamlLib(): Yaml {
  yaml ??= createRequire(import.meta.url)("yaml") as Yaml;
  return yaml;
}

/** Parses the YAML text of one file; `file` is only used in messages. */
export function parseYaml(
  text: string,
  file: string,
): { documents: MeshConfig["documents"]; problems: ConfigProblem[] } {
  const { LineCounter, parseAllDocuments } = yamlLib();
  const lineCounter = new LineCounter();
  const docs = parseAllDocuments(text, { lineCounter, uniqueKeys: true });
  const problems: ConfigProblem[] = [];
  const documents: MeshConfig["documents"] = [];
  const list = Array.isArray(docs) ? docs : [docs];
  list.forEach((doc, index) => {
    const line = doc.range ? lineCounter.linePos(doc.range[0]).line : undefined;
    if (doc.errors.length > 0) {
      const e = doc.errors[0]!;
      problems.push({
        file,
        line: e.linePos?.[0]?.line ?? line,
        path: "",
        message: `not valid YAML: ${e.message.split("\n")[0]}`,
        code: "ZMESH_CONFIG_PARSE",
      });
      return;
    }
    // An alias without its anchor ("*a") or too many aliases (a "billion laughs" bomb) throw here,
    // after parsing succeeded: a problem of the file like any other, never an exception (fuzzing).
    let raw: unknown;
    try {
      raw = doc.toJS({ maxAliasCount: 100 }) as unknown;
    } catch (e) {
      problems.push({
        file,
        ...(line !== undefined ? { line } : {}),
        path: "",
        message: `not valid YAML: ${(e as Error).message.split("\n")[0]}`,
        code: "ZMESH_CONFIG_PARSE",
      });
      return;
    }
    if (raw === null || raw === undefined) return; // an empty document between ---
    const { resource, issues } = readResource(raw, { file, doc: index });
    for (const issue of issues) {
      const p: ConfigProblem = { file, path: issue.path, message: issue.message, code: issue.code };
      const at = fieldLine(doc, issue.path, lineCounter) ?? line;
      if (at !== undefined) p.line = at;
      const rn = resourceName(raw);
      if (rn) p.resource = rn;
      problems.push(p);
    }
    if (resource && issues.length === 0) documents.push({ resource, raw: raw as Record<string, unknown> });
  });
  return { documents, problems };
}

/** Combines documents into a MeshConfig, checking that no two share kind, namespace and name. */
export function assemble(documents: MeshConfig["documents"]): {
  config: MeshConfig;
  problems: ConfigProblem[];
} {
  const config: MeshConfig = {
    workloads: [],
    services: [],
    workloadEntries: [],
    policies: [],
    peerAuthentications: [],
    sidecars: [],
    requestAuthentications: [],
    documents,
  };
  const problems: ConfigProblem[] = [];
  const seen = new Map<string, string>();
  for (const { resource: r } of documents) {
    const key = `${r.kind} ${r.meta.namespace}/${r.meta.name}`;
    const prev = seen.get(key);
    if (prev !== undefined) {
      problems.push({
        file: r.source.file,
        resource: key,
        path: "metadata.name",
        message: `${key} is defined twice (also in ${prev}); rename one or delete the duplicate`,
        code: "ZMESH_CONFIG_DUPLICATE",
      });
      continue;
    }
    seen.set(key, r.source.file);
    if (r.kind === "Workload") config.workloads.push(r);
    else if (r.kind === "Service") config.services.push(r);
    else if (r.kind === "WorkloadEntry") config.workloadEntries.push(r);
    else if (r.kind === "PeerAuthentication") config.peerAuthentications.push(r);
    else if (r.kind === "Sidecar") config.sidecars.push(r);
    else if (r.kind === "RequestAuthentication") config.requestAuthentications.push(r);
    else config.policies.push(r);
  }
  return { config, problems };
}

async function yamlFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of (await readdir(dir, { withFileTypes: true })).sort((a, b) =>
    a.name.localeCompare(b.name),
  )) {
    const p = join(dir, entry.name);
    if (entry.isDirectory() && !entry.name.startsWith(".") && entry.name !== "node_modules")
      out.push(...(await yamlFiles(p)));
    else if (entry.isFile() && [".yaml", ".yml"].includes(extname(entry.name))) out.push(p);
  }
  return out;
}

/**
 * The YAML files of a set of paths, in load order: each path in turn, a directory's .yaml/.yml files
 * recursively in name order (hidden directories and node_modules skipped). Throws a ZmeshError with
 * one sentence when a path does not exist or no file is found. The control plane reads its store
 * through this too, so both see the same files.
 */
export async function resourceFiles(paths: string[]): Promise<string[]> {
  const files: string[] = [];
  for (const p of paths) {
    let s: Awaited<ReturnType<typeof stat>>;
    try {
      s = await stat(p);
    } catch {
      throw new ZmeshError(
        "ZMESH_CONFIG_PARSE",
        `${p}: no such file or directory; pass a YAML file or a directory of them`,
      );
    }
    if (s.isDirectory()) files.push(...(await yamlFiles(p)));
    else files.push(p);
  }
  if (files.length === 0) {
    throw new ZmeshError(
      "ZMESH_CONFIG_PARSE",
      `${paths.join(", ")}: no .yaml or .yml files found; put your resources there`,
    );
  }
  return files;
}

/** Loads every .yaml/.yml file under the given paths (files or directories, recursively). Throws ConfigError. */
export async function loadConfig(paths: string[]): Promise<MeshConfig> {
  const files = await resourceFiles(paths);
  const all: MeshConfig["documents"] = [];
  const problems: ConfigProblem[] = [];
  for (const f of files) {
    const shown = relative(process.cwd(), f) || f;
    const r = parseYaml(await readFile(f, "utf8"), shown.startsWith("..") ? f : shown);
    all.push(...r.documents);
    problems.push(...r.problems);
  }
  const { config, problems: more } = assemble(all);
  problems.push(...more);
  if (problems.length > 0) throw new ConfigError(problems);
  return config;
}
