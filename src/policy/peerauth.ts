// Istio PeerAuthentication: validation of a spec from untrusted YAML, and the mTLS mode that
// applies to one workload port (workload > namespace > mesh, UNSET inherits). Pure.

import { selectorMatches } from "./select.js";
import type {
  Issue,
  MtlsMode,
  MtlsResolution,
  PeerAuthenticationSpec,
  PeerAuthRef,
  WorkloadSelector,
} from "./types.js";
import { Checker, describe, EMPTY, has, isObj, readSelector } from "./validate.js";

const MODES: readonly string[] = ["STRICT", "PERMISSIVE", "DISABLE", "UNSET"];

const SPEC_UNSUPPORTED: Record<string, string> = {
  targetRef:
    "not supported by PeerAuthentication (Istio has no targetRef here either); use selector.matchLabels",
  targetRefs:
    "not supported by PeerAuthentication (Istio has no targetRefs here either); use selector.matchLabels",
};

/**
 * zmesh's mode when no PeerAuthentication decides. Istio's default is PERMISSIVE, which accepts
 * plaintext from anyone on the network; a zero-trust mesh refuses it unless a policy opts in.
 */
export const DEFAULT_MTLS_MODE = "STRICT" as const;

function readMtls(c: Checker, v: unknown, path: string): { mode?: MtlsMode } | undefined {
  if (!isObj(v)) {
    c.invalid(path, `must be a map with mode, e.g. {mode: STRICT}, not ${describe(v)}`);
    return undefined;
  }
  c.fields(v, path, ["mode"], EMPTY);
  if (!has(v, "mode")) return {};
  const mode = v["mode"];
  const mp = `${path}.mode`;
  if (typeof mode !== "string") {
    c.invalid(mp, `must be one of STRICT, PERMISSIVE, DISABLE or UNSET, not ${describe(mode)}`);
  } else if (MODES.includes(mode)) {
    return { mode: mode as MtlsMode };
  } else if (MODES.includes(mode.toUpperCase())) {
    c.invalid(mp, `mode "${mode}" must be written in upper case: "${mode.toUpperCase()}"`);
  } else {
    c.invalid(mp, `mode "${mode}" is not one of STRICT, PERMISSIVE, DISABLE or UNSET`);
  }
  return undefined;
}

function hasLabels(s: WorkloadSelector | undefined): boolean {
  return s?.matchLabels !== undefined && Object.keys(s.matchLabels).length > 0;
}

/**
 * Validates an untrusted PeerAuthentication spec. Returns the typed spec (known fields, copied)
 * when there is no issue; otherwise every issue found. A missing spec is the empty spec (UNSET).
 */
export function validatePeerAuthenticationSpec(spec: unknown): {
  value?: PeerAuthenticationSpec;
  issues: Issue[];
} {
  const c = new Checker();
  if (spec === undefined || spec === null) return { value: {}, issues: c.issues };
  if (!isObj(spec)) {
    c.invalid("spec", `must be a map with selector, mtls and portLevelMtls, not ${describe(spec)}`);
    return { issues: c.issues };
  }
  c.fields(spec, "spec", ["selector", "mtls", "portLevelMtls"], SPEC_UNSUPPORTED);
  const value: PeerAuthenticationSpec = {};
  if (has(spec, "selector")) {
    const sel = readSelector(c, spec["selector"], "spec.selector");
    if (sel) value.selector = sel;
  }
  if (has(spec, "mtls")) {
    const m = readMtls(c, spec["mtls"], "spec.mtls");
    if (m) value.mtls = m;
  }
  if (has(spec, "portLevelMtls")) {
    const plm = spec["portLevelMtls"];
    if (!isObj(plm)) {
      c.invalid(
        "spec.portLevelMtls",
        `must be a map from port number to {mode: ...}, e.g. {8080: {mode: PERMISSIVE}}, not ${describe(plm)}`,
      );
    } else if (Object.keys(plm).length === 0) {
      c.invalid("spec.portLevelMtls", "is an empty map; list at least one port or remove the field");
    } else {
      // As Istio: a port only means something for a known set of pods.
      if (!has(spec, "selector") || (value.selector !== undefined && !hasLabels(value.selector))) {
        c.invalid(
          "spec.portLevelMtls",
          "requires a selector with at least one label: port-level mTLS applies to selected workloads, not to a namespace or the mesh",
        );
      }
      const out: Record<string, { mode?: MtlsMode }> = {};
      for (const [k, v] of Object.entries(plm)) {
        const p = /^[0-9]+$/.test(k)
          ? `spec.portLevelMtls[${k}]`
          : `spec.portLevelMtls[${JSON.stringify(k)}]`;
        if (!/^[1-9][0-9]{0,4}$/.test(k) || Number(k) > 65535) {
          c.invalid(p, `"${k}" is not a port; use the workload's port number from 1 to 65535 as the key`);
          continue;
        }
        const m = readMtls(c, v, p);
        if (m) out[k] = m;
      }
      value.portLevelMtls = out;
    }
  }
  return c.issues.length === 0 ? { value, issues: c.issues } : { issues: c.issues };
}

function byName(a: PeerAuthRef, b: PeerAuthRef): number {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

function modeOf(m: { mode?: MtlsMode } | undefined): MtlsMode {
  return m?.mode ?? "UNSET";
}

/**
 * The mTLS mode for one port of a workload. Precedence as Istio: a workload policy (selector with
 * labels that match) over the namespace policy (no selector) over the mesh policy (root namespace,
 * no selector); an UNSET level inherits from the one above, an UNSET port from the workload level.
 * With nothing set the mode is zmesh's default, STRICT (Istio's is PERMISSIVE).
 *
 * Istio picks the oldest policy when several compete at one level; zmesh has no creation time and
 * picks the first by name. Workload policies of the workload's own namespace come before root-
 * namespace ones with a selector (which, as Istio documents, select workloads in every namespace).
 */
export function resolveMtlsMode(
  peerAuths: readonly PeerAuthRef[],
  workload: { namespace: string; labels: Record<string, string> },
  port: number,
  rootNamespace: string,
): MtlsResolution {
  let mesh: PeerAuthRef | undefined;
  let namespace: PeerAuthRef | undefined;
  let local: PeerAuthRef | undefined;
  let rooted: PeerAuthRef | undefined;
  for (const p of peerAuths) {
    const inRoot = p.namespace === rootNamespace;
    if (!inRoot && p.namespace !== workload.namespace) continue;
    if (!hasLabels(p.spec.selector)) {
      if (inRoot) {
        if (mesh === undefined || byName(p, mesh) < 0) mesh = p;
      } else if (namespace === undefined || byName(p, namespace) < 0) namespace = p;
    } else if (selectorMatches(p.spec.selector, workload.labels)) {
      if (p.namespace === workload.namespace) {
        if (local === undefined || byName(p, local) < 0) local = p;
      } else if (rooted === undefined || byName(p, rooted) < 0) rooted = p;
    }
  }
  const wl = local ?? rooted;
  let mode: MtlsResolution["mode"] = DEFAULT_MTLS_MODE;
  let source: string | undefined;
  for (const level of [mesh, namespace, wl]) {
    if (level === undefined) continue;
    const m = modeOf(level.spec.mtls);
    if (m !== "UNSET") {
      mode = m;
      source = `${level.namespace}/${level.name}`;
    }
  }
  const ports = wl?.spec.portLevelMtls;
  const key = String(port);
  if (wl !== undefined && ports !== undefined && Object.hasOwn(ports, key)) {
    const m = modeOf(ports[key]);
    if (m !== "UNSET") {
      mode = m;
      source = `${wl.namespace}/${wl.name}`;
    }
  }
  return source === undefined ? { mode } : { mode, source };
}
