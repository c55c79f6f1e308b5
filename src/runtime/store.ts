// The resource store of a running mesh (<state dir>/<mesh>/store), which its control plane watches:
// `up` lays it out, `apply` and `delete` change it live, `get` reads it. Every change is validated
// whole before anything is written, written by rename, and followed to the proxies' ACKs. This file
// changes policies; Workloads and Services (which also change namespaces and processes) go through
// live.ts, which uses the same files, lock and rollout.

import { readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { stringify } from "yaml";
import { loadConfig, type MeshConfig, parseYaml, type Resource } from "../config/index.js";
import { ControlPlane } from "../controlplane/index.js";
import { ZmeshError } from "../errors/index.js";
import { controlPlaneAdmin } from "./ca.js";
import { alive } from "./processes.js";
import { type MeshState, writeAtomic } from "./state.js";

type ControlPlaneStatus = ReturnType<ControlPlane["status"]>;

/** Kinds `apply` and `delete` change on a running mesh. */
export const LIVE_KINDS: ReadonlySet<string> = new Set([
  "AuthorizationPolicy",
  "PeerAuthentication",
  "RequestAuthentication",
  "Sidecar",
]);

export interface StoredDoc {
  kind: string;
  namespace: string;
  name: string;
  raw: Record<string, unknown>;
}

export const storeDir = (s: MeshState) => join(s.stateDir, "store");
export const resourcesFile = (s: MeshState) => join(storeDir(s), "resources.yaml");
export const instancesFile = (s: MeshState) => join(storeDir(s), "instances.yaml");
/** Workloads are the runtime's, not the control plane's: they live beside the store. */
export const workloadsFile = (s: MeshState) => join(s.stateDir, "workloads.yaml");

export const keyOf = (d: { kind: string; namespace: string; name: string }) =>
  `${d.kind} ${d.namespace}/${d.name}`;

export function toDoc(resource: Resource, raw: Record<string, unknown>): StoredDoc {
  return { kind: resource.kind, namespace: resource.meta.namespace, name: resource.meta.name, raw };
}

export async function readDocs(file: string): Promise<StoredDoc[]> {
  const text = await readFile(file, "utf8").catch(() => "");
  const { documents } = parseYaml(text, file);
  return documents.map((d) => toDoc(d.resource, d.raw));
}

export function render(docs: StoredDoc[]): string {
  return docs.map((d) => stringify(d.raw)).join("---\n");
}

/** JSON with sorted keys: equal for equal resources whatever the key order in the YAML. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`;
  if (v && typeof v === "object") {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o)
      .filter((k) => o[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical(o[k])}`)
      .join(",")}}`;
  }
  return JSON.stringify(v);
}

/** A Service as the user wrote it: the store's copy has spec.clusterIP filled in. */
function withoutClusterIP(raw: Record<string, unknown>): unknown {
  const spec = { ...((raw["spec"] as Record<string, unknown>) ?? {}) };
  delete spec["clusterIP"];
  return { ...raw, spec };
}

export function sameResource(a: StoredDoc, b: StoredDoc): boolean {
  if (a.kind === "Service") return canonical(withoutClusterIP(a.raw)) === canonical(withoutClusterIP(b.raw));
  return canonical(a.raw) === canonical(b.raw);
}

/** Digest of the Workloads and Services of a config: what `up` cannot change on a running mesh. */
export function topologyOf(config: MeshConfig): string {
  const docs = config.documents
    .filter((d) => d.resource.kind === "Workload" || d.resource.kind === "Service")
    .map((d) => toDoc(d.resource, d.raw))
    .sort((a, b) => keyOf(a).localeCompare(keyOf(b)));
  return canonical(docs.map((d) => (d.kind === "Service" ? withoutClusterIP(d.raw) : d.raw)));
}

/** The store's resources for a config: everything but Workloads, Services with their VIPs. */
function storeDocs(state: MeshState, config: MeshConfig): StoredDoc[] {
  const vips = new Map(state.services.map((s) => [`${s.namespace}/${s.name}`, s.vip]));
  const out: StoredDoc[] = [];
  for (const { resource, raw } of config.documents) {
    if (resource.kind === "Workload") continue;
    if (resource.kind === "Service") {
      const clusterIP = vips.get(`${resource.meta.namespace}/${resource.meta.name}`);
      out.push(toDoc(resource, { ...raw, spec: { ...(raw["spec"] as Record<string, unknown>), clusterIP } }));
    } else out.push(toDoc(resource, raw));
  }
  return out;
}

/** Writes the store and the workloads file of a freshly laid out mesh. */
export async function writeStore(state: MeshState, config: MeshConfig, entries: string[]): Promise<void> {
  await writeAtomic(resourcesFile(state), render(storeDocs(state, config)));
  await writeAtomic(instancesFile(state), entries.join("---\n"));
  await writeAtomic(
    workloadsFile(state),
    render(
      config.documents.filter((d) => d.resource.kind === "Workload").map((d) => toDoc(d.resource, d.raw)),
    ),
  );
}

/**
 * Makes the store's resources those of `config` (same topology), for `up` on a running mesh, and
 * follows the change to the proxies when there is one.
 */
export async function syncStore(
  state: MeshState,
  config: MeshConfig,
): Promise<{ change: Change; rollout?: Rollout }> {
  const started = Date.now();
  return withLock(state, async () => {
    const before = await readDocs(resourcesFile(state));
    const after = storeDocs(state, config);
    const change = diff(before, after);
    if (change.created.length + change.configured.length + change.deleted.length === 0) return { change };
    return { change, rollout: await write(state, after, started) };
  });
}

export interface Change {
  created: string[];
  configured: string[];
  unchanged: string[];
  deleted: string[];
}

function diff(before: StoredDoc[], after: StoredDoc[]): Change {
  const old = new Map(before.map((d) => [keyOf(d), d]));
  const now = new Set(after.map(keyOf));
  const c: Change = { created: [], configured: [], unchanged: [], deleted: [] };
  for (const d of after) {
    const prev = old.get(keyOf(d));
    if (!prev) c.created.push(keyOf(d));
    else if (sameResource(prev, d)) c.unchanged.push(keyOf(d));
    else c.configured.push(keyOf(d));
  }
  for (const k of old.keys()) if (!now.has(k)) c.deleted.push(k);
  return c;
}

/** Serializes changes to one mesh's store (a lock file holding the writer's pid). */
export async function withLock<T>(state: MeshState, fn: () => Promise<T>): Promise<T> {
  const lock = join(state.stateDir, "store.lock");
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      await writeAtomicExclusive(lock, String(process.pid));
      break;
    } catch {
      const holder = Number(await readFile(lock, "utf8").catch(() => "0"));
      if (!holder || !alive(holder)) {
        await rm(lock, { force: true });
        continue;
      }
      if (Date.now() > deadline) {
        throw new ZmeshError(
          "ZMESH_RUNTIME",
          `another zmesh command (pid ${holder}) is changing mesh ${state.name}; try again when it is done`,
        );
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  try {
    return await fn();
  } finally {
    await rm(lock, { force: true });
  }
}

async function writeAtomicExclusive(file: string, text: string): Promise<void> {
  await writeFile(file, text, { flag: "wx", mode: 0o600 });
}

/** Reads resources given to apply/delete; bad input becomes one sentence naming file and field. */
export async function readInput(paths: string[]): Promise<StoredDoc[]> {
  const config = await loadConfig(paths);
  return config.documents.map((d) => toDoc(d.resource, d.raw));
}

export function refuseTopology(doc: StoredDoc, verb: string, dir: string): never {
  throw new ZmeshError(
    "ZMESH_LIVE_UNSUPPORTED",
    doc.kind === "WorkloadEntry"
      ? `${keyOf(doc)}: ${verb} WorkloadEntries is not supported: the local runtime writes them from Workloads; apply a zmesh.dev/v1 Workload instead`
      : `${keyOf(doc)}: ${verb} ${doc.kind}s on a running mesh is not supported live; edit ${dir} and run zmesh up ${dir} again`,
  );
}

export interface Rollout {
  /** The control plane took the change (false: not known yet, see `waiting`). */
  loaded: boolean;
  proxies: number;
  inSync: number;
  ms: number;
  /** Why the wait stopped short: the control plane or some proxies did not answer in time. */
  waiting?: string;
}

/** Follows a written change: loaded by the control plane (or rejected), then ACKed by the proxies. */
async function rollout(
  state: MeshState,
  digest: string,
  started: number,
  undo: () => Promise<void>,
): Promise<Rollout> {
  const status = async () => {
    const r = await controlPlaneAdmin(state, "GET", "/status").catch(() => undefined);
    return r?.status === 200 ? (JSON.parse(r.body) as ControlPlaneStatus) : undefined;
  };
  const out: Rollout = { loaded: false, proxies: 0, inSync: 0, ms: 0 };
  const loadDeadline = Date.now() + 10_000;
  let s: ControlPlaneStatus | undefined;
  for (;;) {
    s = await status();
    if (s?.config.digest === digest) break;
    if (s?.config.lastRejection?.digest === digest) {
      await undo();
      throw new ZmeshError(
        "ZMESH_CONFIG_INVALID",
        `the control plane rejected the change (${s.config.lastRejection.reason}); the store is back as it was`,
      );
    }
    if (Date.now() > loadDeadline) {
      out.waiting = s
        ? "the control plane has not loaded it yet"
        : "the control plane does not answer; it loads the store when it is back";
      out.ms = Date.now() - started;
      return out;
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  out.loaded = true;
  const syncDeadline = Date.now() + 5_000;
  for (;;) {
    out.proxies = s.proxies.length;
    out.inSync = s.proxies.filter((p) => p.inSync).length;
    out.ms = Date.now() - started;
    if (out.inSync === out.proxies) return out;
    if (Date.now() > syncDeadline) {
      const late = s.proxies.filter((p) => !p.inSync);
      out.waiting = late
        .map((p) => `${p.proxy}${p.lastNack ? ` rejected it: ${p.lastNack.reason}` : " has not ACKed"}`)
        .join("; ");
      return out;
    }
    await new Promise((r) => setTimeout(r, 20));
    s = (await status()) ?? s;
  }
}

/** `zmesh apply -f` of policies: creates or replaces them live; nothing is written unless all of it is valid. */
export async function applyPolicies(
  state: MeshState,
  input: StoredDoc[],
): Promise<{ change: Change; rollout?: Rollout }> {
  const started = Date.now();
  return withLock(state, async () => {
    const before = await readDocs(resourcesFile(state));
    const existing = new Map(
      [...before, ...(await readDocs(workloadsFile(state))), ...(await readDocs(instancesFile(state)))].map(
        (d) => [keyOf(d), d],
      ),
    );
    const after = new Map(before.map((d) => [keyOf(d), d]));
    const change: Change = { created: [], configured: [], unchanged: [], deleted: [] };
    for (const doc of input) {
      const prev = existing.get(keyOf(doc));
      if (!LIVE_KINDS.has(doc.kind)) {
        if (prev && sameResource(prev, doc)) {
          change.unchanged.push(keyOf(doc));
          continue;
        }
        refuseTopology(doc, prev ? "changing" : "adding", state.configDir);
      }
      if (!prev) change.created.push(keyOf(doc));
      else if (sameResource(prev, doc)) change.unchanged.push(keyOf(doc));
      else change.configured.push(keyOf(doc));
      after.set(keyOf(doc), doc);
    }
    if (change.created.length + change.configured.length === 0) return { change };
    return { change, rollout: await write(state, [...after.values()], started) };
  });
}

/** `zmesh delete -f` of policies: removes them live; every one named must exist, or nothing is removed. */
export async function deletePolicies(
  state: MeshState,
  input: StoredDoc[],
): Promise<{ change: Change; rollout?: Rollout }> {
  const started = Date.now();
  return withLock(state, async () => {
    const before = await readDocs(resourcesFile(state));
    const after = new Map(before.map((d) => [keyOf(d), d]));
    const missing: string[] = [];
    for (const doc of input) {
      if (!LIVE_KINDS.has(doc.kind)) refuseTopology(doc, "deleting", state.configDir);
      if (!after.delete(keyOf(doc))) missing.push(keyOf(doc));
    }
    if (missing.length > 0) {
      throw new ZmeshError(
        "ZMESH_RESOURCE_NOT_FOUND",
        `${missing.join(", ")} ${missing.length === 1 ? "is" : "are"} not in mesh ${state.name}; nothing was deleted (zmesh get KIND lists what there is)`,
      );
    }
    const change: Change = { created: [], configured: [], unchanged: [], deleted: input.map(keyOf) };
    return { change, rollout: await write(state, [...after.values()], started) };
  });
}

/** Validates the new store whole, writes it, and follows it to the proxies. */
export async function write(state: MeshState, after: StoredDoc[], started: number): Promise<Rollout> {
  const file = resourcesFile(state);
  const previous = await readFile(file, "utf8").catch(() => "");
  const text = render(after);
  // The whole store must load: the control plane would reject it otherwise.
  const { documents, problems } = parseYaml(text, file);
  if (problems.length > 0 || documents.length !== after.length) {
    throw new ZmeshError(
      "ZMESH_CONFIG_INVALID",
      `the change would leave the store invalid (${problems[0]?.message ?? "a resource did not survive a round trip"}); nothing was changed`,
    );
  }
  await writeAtomic(file, text);
  const digest = await ControlPlane.storeDigest([storeDir(state)]);
  return rollout(state, digest, started, () => writeAtomic(file, previous));
}

const KIND_NAMES: Record<string, string> = {
  workload: "Workload",
  workloads: "Workload",
  wl: "Workload",
  service: "Service",
  services: "Service",
  svc: "Service",
  authorizationpolicy: "AuthorizationPolicy",
  authorizationpolicies: "AuthorizationPolicy",
  ap: "AuthorizationPolicy",
  policy: "AuthorizationPolicy",
  policies: "AuthorizationPolicy",
  peerauthentication: "PeerAuthentication",
  peerauthentications: "PeerAuthentication",
  pa: "PeerAuthentication",
  requestauthentication: "RequestAuthentication",
  requestauthentications: "RequestAuthentication",
  ra: "RequestAuthentication",
  workloadentry: "WorkloadEntry",
  workloadentries: "WorkloadEntry",
  we: "WorkloadEntry",
  sidecar: "Sidecar",
  sidecars: "Sidecar",
};

export const KINDS = [
  "Workload",
  "Service",
  "AuthorizationPolicy",
  "PeerAuthentication",
  "RequestAuthentication",
  "Sidecar",
  "WorkloadEntry",
];

/** `zmesh get KIND [NAME]`: resources from the store; NAME is `name` or `namespace/name`. */
export async function getResources(state: MeshState, kind: string, name?: string): Promise<StoredDoc[]> {
  const k = kind.toLowerCase();
  const wanted = k === "all" ? KINDS : [KIND_NAMES[k]];
  if (wanted[0] === undefined) {
    throw new ZmeshError(
      "ZMESH_USAGE",
      `"${kind}" is not a kind zmesh knows; use one of ${KINDS.join(", ")} (or: workloads, services, policies, all)`,
    );
  }
  const all = [
    ...(await readDocs(workloadsFile(state))),
    ...(await readDocs(resourcesFile(state))),
    ...(await readDocs(instancesFile(state))),
  ];
  const ofKind = all
    .filter((d) => wanted.includes(d.kind))
    .sort((a, b) => KINDS.indexOf(a.kind) - KINDS.indexOf(b.kind) || keyOf(a).localeCompare(keyOf(b)));
  if (name === undefined) return ofKind;
  const [ns, n] = name.includes("/") ? name.split("/", 2) : [undefined, name];
  const found = ofKind.filter((d) => d.name === n && (ns === undefined || d.namespace === ns));
  if (found.length === 0) {
    const there = ofKind.map((d) => `${d.namespace}/${d.name}`).join(", ") || "none";
    throw new ZmeshError(
      "ZMESH_RESOURCE_NOT_FOUND",
      `no ${wanted.length === 1 ? wanted[0] : "resource"} named "${name}" in mesh ${state.name}; there are: ${there}`,
    );
  }
  return found;
}
