// Live changes to a running mesh (`zmesh apply -f`, `zmesh delete -f`). Policies only change the
// store (store.ts). Workloads and Services also change the machine: a new Workload gets its
// namespaces, bootstrap tokens, WorkloadEntries and processes (the supervisor starts them when
// told by SIGHUP); a deleted one is stopped and its namespaces removed; a changed one is replaced;
// a Service change gets a VIP (kept while the Service exists), reaches the proxies through the
// store and name resolution through each namespace's hosts file. The mesh as it would be after the
// change is validated whole before anything is touched: bad input changes nothing.

import { readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { assemble, formatProblem, type MeshConfig, parseYaml } from "../config/index.js";
import { tokenDigest } from "../controlplane/index.js";
import { ZmeshError } from "../errors/index.js";
import { addInstances, hostsFile, startSupervisor, tokenFile } from "./mesh.js";
import { createNamespace, NETNS_DIR, namespacePids, vipAddress } from "./network.js";
import { alive, terminate, zmeshPids } from "./processes.js";
import { type Instance, type MeshState, procKey, readProcesses, saveState, writeAtomic } from "./state.js";
import {
  applyPolicies,
  type Change,
  deletePolicies,
  instancesFile,
  keyOf,
  LIVE_KINDS,
  type Rollout,
  readDocs,
  readInput,
  refuseTopology,
  render,
  resourcesFile,
  type StoredDoc,
  sameResource,
  topologyOf,
  withLock,
  workloadsFile,
  write,
} from "./store.js";
import { tryRun } from "./sys.js";

/** Kinds whose change also changes namespaces and processes. */
const TOPOLOGY_KINDS: ReadonlySet<string> = new Set(["Workload", "Service"]);

export interface LiveResult {
  change: Change;
  rollout?: Rollout;
  /** Instances started by this change (namespace/name), and any not running yet with why. */
  started?: string[];
  notRunning?: string[];
  /** Instances stopped and removed by this change. */
  stopped?: string[];
}

function refuseOthers(state: MeshState, input: StoredDoc[], verb: string): void {
  for (const d of input) {
    if (!LIVE_KINDS.has(d.kind) && !TOPOLOGY_KINDS.has(d.kind)) refuseTopology(d, verb, state.configDir);
  }
}

/** `zmesh apply -f`: creates or replaces resources live; nothing changes unless all of it is valid. */
export async function applyResources(state: MeshState, paths: string[]): Promise<LiveResult> {
  const input = await readInput(paths);
  refuseOthers(state, input, "adding");
  if (!input.some((d) => TOPOLOGY_KINDS.has(d.kind))) return applyPolicies(state, input);
  return changeTopology(state, input, "apply");
}

/** `zmesh delete -f`: removes resources live; every one named must exist, or nothing is removed. */
export async function deleteResources(state: MeshState, paths: string[]): Promise<LiveResult> {
  const input = await readInput(paths);
  refuseOthers(state, input, "deleting");
  if (!input.some((d) => TOPOLOGY_KINDS.has(d.kind))) return deletePolicies(state, input);
  return changeTopology(state, input, "delete");
}

/** The mesh as it would be: Workloads, store resources and WorkloadEntries, validated together. */
function validate(state: MeshState, docs: StoredDoc[]): MeshConfig {
  const where = `mesh ${state.name} after this change`;
  const { documents, problems } = parseYaml(render(docs), where);
  const { config, problems: more } = assemble(documents);
  const first = [...problems, ...more][0];
  if (first || documents.length !== docs.length) {
    throw new ZmeshError(
      "ZMESH_CONFIG_INVALID",
      `the change would leave mesh ${state.name} invalid (${first ? formatProblem(first) : "a resource did not survive a round trip"}); nothing was changed`,
    );
  }
  if (config.workloads.length === 0) {
    throw new ZmeshError(
      "ZMESH_USAGE",
      `the change would leave mesh ${state.name} without Workloads; nothing was changed (zmesh down${state.name === "zmesh" ? "" : ` --name ${state.name}`} removes a mesh)`,
    );
  }
  return config;
}

async function changeTopology(
  state: MeshState,
  input: StoredDoc[],
  mode: "apply" | "delete",
): Promise<LiveResult> {
  const started = Date.now();
  return withLock(state, async () => {
    const resources = await readDocs(resourcesFile(state));
    const workloads = await readDocs(workloadsFile(state));
    const entries = await readDocs(instancesFile(state));
    const afterRes = new Map(resources.map((d) => [keyOf(d), d]));
    const afterWl = new Map(workloads.map((d) => [keyOf(d), d]));
    const change: Change = { created: [], configured: [], unchanged: [], deleted: [] };
    const mapOf = (d: StoredDoc) => (d.kind === "Workload" ? afterWl : afterRes);
    if (mode === "apply") {
      for (const doc of input) {
        const prev = mapOf(doc).get(keyOf(doc));
        if (!prev) change.created.push(keyOf(doc));
        else if (sameResource(prev, doc)) {
          change.unchanged.push(keyOf(doc));
          continue;
        } else change.configured.push(keyOf(doc));
        mapOf(doc).set(keyOf(doc), doc);
      }
    } else {
      const missing = input.filter((d) => !mapOf(d).delete(keyOf(d))).map(keyOf);
      if (missing.length > 0) {
        throw new ZmeshError(
          "ZMESH_RESOURCE_NOT_FOUND",
          `${missing.join(", ")} ${missing.length === 1 ? "is" : "are"} not in mesh ${state.name}; nothing was deleted (zmesh get KIND lists what there is)`,
        );
      }
      change.deleted.push(...input.map(keyOf));
    }
    if (change.created.length + change.configured.length + change.deleted.length === 0) return { change };

    // Which Workloads' instances go (deleted or changed) and which come (new or changed).
    const oldWl = new Map(workloads.map((d) => [keyOf(d), d]));
    const gone = new Set<string>();
    for (const [k, d] of oldWl) {
      const now = afterWl.get(k);
      if (!now || !sameResource(now, d)) gone.add(`${d.namespace}/${d.name}`);
    }
    const removed = state.instances.filter((i) => gone.has(`${i.namespace}/${i.workload}`));
    const keptEntries = entries.filter(
      (e) => !removed.some((i) => i.namespace === e.namespace && i.name === e.name),
    );
    const config = validate(state, [...afterWl.values(), ...afterRes.values(), ...keptEntries]);
    const coming = config.workloads.filter((w) => {
      const k = `${w.meta.namespace}/${w.meta.name}`;
      return !oldWl.has(`Workload ${k}`) || gone.has(k);
    });

    // Services keep their VIP while they exist; a new one takes the lowest free.
    const oldVip = new Map(state.services.map((s) => [`${s.namespace}/${s.name}`, s.vip]));
    const names = new Set(config.services.map((s) => `${s.meta.namespace}/${s.meta.name}`));
    const taken = new Set([...oldVip].filter(([k]) => names.has(k)).map(([, v]) => v));
    let nextVip = 0;
    const services = [...config.services]
      .sort((a, b) =>
        `${a.meta.namespace}/${a.meta.name}`.localeCompare(`${b.meta.namespace}/${b.meta.name}`),
      )
      .map((s) => {
        let vip = oldVip.get(`${s.meta.namespace}/${s.meta.name}`);
        if (vip === undefined) {
          while (taken.has(vipAddress(state.net, nextVip))) nextVip++;
          vip = vipAddress(state.net, nextVip);
          taken.add(vip);
        }
        return { namespace: s.meta.namespace, name: s.meta.name, vip, ports: s.ports.map((p) => p.port) };
      });
    const vipOf = new Map(services.map((s) => [`${s.namespace}/${s.name}`, s.vip]));
    const storeDocs = [...afterRes.values()].map((d) =>
      d.kind === "Service"
        ? {
            ...d,
            raw: {
              ...d.raw,
              spec: {
                ...(d.raw["spec"] as Record<string, unknown>),
                clusterIP: vipOf.get(`${d.namespace}/${d.name}`),
              },
            },
          }
        : d,
    );
    const servicesChanged = JSON.stringify(services) !== JSON.stringify(state.services);

    // From here on the machine changes. First what goes: processes, then namespaces and tokens.
    if (removed.length > 0) {
      state.instances = state.instances.filter((i) => !removed.includes(i));
      await saveState(state);
      await tellSupervisor(state);
      await waitStopped(state, removed);
      for (const i of removed) {
        await terminate(await namespacePids(i.netns));
        // The host end first: deleting it removes the pair at once, so its name is free for reuse.
        await tryRun("ip", ["link", "del", i.veth]);
        await tryRun("ip", ["netns", "del", i.netns]);
        await rm(join(NETNS_DIR, i.netns), { recursive: true, force: true });
        await rm(tokenFile(state, i), { force: true });
      }
    }
    const added = [];
    for (const w of coming) added.push(...(await addInstances(state, w)));
    const tokensPath = join(state.stateDir, "secrets", "tokens.json");
    const tokens = JSON.parse(await readFile(tokensPath, "utf8")) as Record<
      string,
      { namespace: string; entry: string }
    >;
    for (const [d, who] of Object.entries(tokens)) {
      if (removed.some((i) => i.namespace === who.namespace && i.name === who.entry)) delete tokens[d];
    }
    for (const a of added) tokens[tokenDigest(a.token)] = { namespace: a.inst.namespace, entry: a.inst.name };
    await writeAtomic(tokensPath, JSON.stringify(tokens), 0o600);
    state.services = services;
    for (const { inst } of added) {
      await createNamespace(state.net, {
        netns: inst.netns,
        veth: inst.veth,
        address: inst.address,
        hosts: hostsFile(inst, inst.namespace, services),
        capture: true,
      });
    }
    if (servicesChanged) {
      // In place, not by rename: `ip netns exec` bind-mounted this very file over /etc/hosts of the
      // processes already running, so they resolve the new names at once.
      const fresh = new Set(added.map((a) => a.inst));
      for (const i of state.instances.filter((x) => !fresh.has(x)))
        await writeFile(join(NETNS_DIR, i.netns, "hosts"), hostsFile(i, i.namespace, services));
      for (const u of state.unmeshed)
        await writeFile(join(NETNS_DIR, u.netns, "hosts"), hostsFile(u, "", services));
    }
    await writeAtomic(
      instancesFile(state),
      [render(keptEntries), ...added.map((a) => a.entry)].filter((t) => t !== "").join("---\n"),
    );
    await writeAtomic(workloadsFile(state), render([...afterWl.values()]));
    state.topology = topologyOf(config);
    await saveState(state);
    const rollout = await write(state, storeDocs, started);
    const result: LiveResult = { change, rollout, stopped: removed.map((i) => `${i.namespace}/${i.name}`) };
    if (added.length > 0) {
      await tellSupervisor(state);
      const { running, late } = await waitStarted(
        state,
        added.map((a) => a.inst),
      );
      result.started = running;
      if (late.length > 0) result.notRunning = late;
    }
    return result;
  });
}

/** Tells the mesh's supervisor to take the new layout (SIGHUP), or starts one if none runs. */
async function tellSupervisor(state: MeshState): Promise<void> {
  const pid = (await readProcesses(state.stateDir))?.supervisor.pid ?? 0;
  if (pid > 0 && alive(pid) && zmeshPids(state.name, "supervise").includes(pid)) process.kill(pid, "SIGHUP");
  else startSupervisor(state);
}

/** Waits (bounded) until the supervisor has let go of the removed instances' processes. */
async function waitStopped(state: MeshState, removed: Instance[]): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    const procs = (await readProcesses(state.stateDir))?.procs ?? {};
    const left = removed.filter((i) => {
      const recs = [procs[procKey("proxy", i)], procs[procKey("app", i)]];
      return recs.some((r) => r !== undefined && r.pid > 0 && alive(r.pid));
    });
    if (left.length === 0 && removed.every((i) => !procs[procKey("proxy", i)])) return;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Waits (bounded) until each new instance's app is ready (or completed); says which are not. */
async function waitStarted(
  state: MeshState,
  added: Instance[],
): Promise<{ running: string[]; late: string[] }> {
  const deadline = Date.now() + 30_000 + 5_000 * added.length;
  const name = (i: Instance) => `${i.namespace}/${i.name}`;
  for (;;) {
    const procs = (await readProcesses(state.stateDir))?.procs ?? {};
    const up = (i: Instance) => {
      const app = procs[procKey("app", i)];
      return app !== undefined && (app.ready || app.completed !== undefined);
    };
    if (added.every(up) || Date.now() > deadline) {
      return {
        running: added.filter(up).map(name),
        late: added
          .filter((i) => !up(i))
          .map((i) => `${name(i)} is not ready yet (zmesh logs ${i.name} --name ${state.name} shows why)`),
      };
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}
