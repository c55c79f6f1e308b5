// PeerAuthentication: validation (field paths and codes) and precedence. Order of resolution, as in
// Istio: the mesh policy (root namespace, no selector), then the namespace policy (no selector),
// then the workload policy (a selector whose labels match), then its portLevelMtls entry for the
// port; each level that is UNSET (or has no mtls) inherits from the one before. With nothing set,
// zmesh answers STRICT (Istio: PERMISSIVE).

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { resolveMtlsMode, validatePeerAuthenticationSpec } from "./peerauth.js";
import type { Issue, MtlsMode, PeerAuthenticationSpec, PeerAuthRef } from "./types.js";

const ROOT = "zmesh-system";
const INVALID = "ZMESH_CONFIG_INVALID";
const UNSUPPORTED = "ZMESH_CONFIG_UNSUPPORTED";

function one(spec: unknown, path: string, code: Issue["code"], message?: RegExp): void {
  const r = validatePeerAuthenticationSpec(spec);
  assert.equal(r.issues.length, 1, `expected one issue, got ${JSON.stringify(r.issues, null, 1)}`);
  assert.equal(r.issues[0]!.path, path);
  assert.equal(r.issues[0]!.code, code);
  if (message) assert.match(r.issues[0]!.message, message);
  assert.equal(r.value, undefined);
}

describe("validatePeerAuthenticationSpec", () => {
  test("accepts every mode, a selector and port-level modes", () => {
    const spec = {
      selector: { matchLabels: { app: "payments" } },
      mtls: { mode: "STRICT" },
      portLevelMtls: {
        "8080": { mode: "PERMISSIVE" },
        "9090": { mode: "DISABLE" },
        "9091": { mode: "UNSET" },
      },
    };
    const r = validatePeerAuthenticationSpec(spec);
    assert.deepEqual(r.issues, []);
    assert.deepEqual(r.value, spec);
    for (const mode of ["STRICT", "PERMISSIVE", "DISABLE", "UNSET"]) {
      assert.deepEqual(validatePeerAuthenticationSpec({ mtls: { mode } }).value, { mtls: { mode } });
    }
  });

  test("an empty or missing spec and an empty mtls are UNSET", () => {
    assert.deepEqual(validatePeerAuthenticationSpec(undefined), { value: {}, issues: [] });
    assert.deepEqual(validatePeerAuthenticationSpec({}).value, {});
    assert.deepEqual(validatePeerAuthenticationSpec({ mtls: {} }).value, { mtls: {} });
    assert.deepEqual(validatePeerAuthenticationSpec({ mtls: null }).value, {});
  });

  test("modes: upper case and known", () => {
    one({ mtls: { mode: "strict" } }, "spec.mtls.mode", INVALID, /upper case: "STRICT"/);
    one(
      { mtls: { mode: "ON" } },
      "spec.mtls.mode",
      INVALID,
      /not one of STRICT, PERMISSIVE, DISABLE or UNSET/,
    );
    one({ mtls: { mode: 1 } }, "spec.mtls.mode", INVALID);
    one({ mtls: "STRICT" }, "spec.mtls", INVALID, /\{mode: STRICT\}/);
    one({ mtls: { mod: "STRICT" } }, "spec.mtls.mod", INVALID, /did you mean "mode"/);
  });

  test("portLevelMtls needs a selector with labels, as in Istio", () => {
    one(
      { portLevelMtls: { "8080": { mode: "DISABLE" } } },
      "spec.portLevelMtls",
      INVALID,
      /requires a selector/,
    );
    one(
      { selector: { matchLabels: {} }, portLevelMtls: { "8080": { mode: "DISABLE" } } },
      "spec.portLevelMtls",
      INVALID,
      /requires a selector/,
    );
  });

  test("portLevelMtls keys are ports and values modes; the map is not empty", () => {
    const sel = { selector: { matchLabels: { app: "a" } } };
    one({ ...sel, portLevelMtls: {} }, "spec.portLevelMtls", INVALID, /empty map/);
    one({ ...sel, portLevelMtls: [] }, "spec.portLevelMtls", INVALID, /map from port number/);
    for (const bad of ["0", "65536", "080", "http"]) {
      one(
        { ...sel, portLevelMtls: { [bad]: { mode: "STRICT" } } },
        `spec.portLevelMtls[${/^\d+$/.test(bad) ? bad : JSON.stringify(bad)}]`,
        INVALID,
        /not a port/,
      );
    }
    one({ ...sel, portLevelMtls: { "8080": { mode: "OFF" } } }, "spec.portLevelMtls[8080].mode", INVALID);
  });

  test("unknown and unsupported fields", () => {
    one({ mtsl: { mode: "STRICT" } }, "spec.mtsl", INVALID, /did you mean "mtls"/);
    one({ targetRef: { kind: "Service", name: "x" } }, "spec.targetRef", UNSUPPORTED);
    one("STRICT", "spec", INVALID);
  });
});

const pa = (
  namespace: string,
  name: string,
  mode: MtlsMode | undefined,
  o: { labels?: Record<string, string>; ports?: Record<string, MtlsMode | undefined> } = {},
): PeerAuthRef => {
  const spec: PeerAuthenticationSpec = {};
  if (o.labels) spec.selector = { matchLabels: o.labels };
  if (mode !== undefined) spec.mtls = { mode };
  if (o.ports) {
    spec.portLevelMtls = {};
    for (const [p, m] of Object.entries(o.ports)) spec.portLevelMtls[p] = m === undefined ? {} : { mode: m };
  }
  return { namespace, name, spec };
};

const payments = { namespace: "shop", labels: { app: "payments" } };

describe("resolveMtlsMode: precedence", () => {
  const mesh = (m: MtlsMode | undefined) => pa(ROOT, "default", m);
  const ns = (m: MtlsMode | undefined) => pa("shop", "default", m);
  const wl = (m: MtlsMode | undefined, ports?: Record<string, MtlsMode | undefined>) =>
    pa("shop", "payments", m, { labels: { app: "payments" }, ...(ports ? { ports } : {}) });

  const table: [string, PeerAuthRef[], number, string, string | undefined][] = [
    ["nothing: zmesh's default is STRICT", [], 8080, "STRICT", undefined],
    ["mesh only", [mesh("PERMISSIVE")], 8080, "PERMISSIVE", `${ROOT}/default`],
    ["namespace over mesh", [mesh("PERMISSIVE"), ns("STRICT")], 8080, "STRICT", "shop/default"],
    ["workload over namespace", [ns("STRICT"), wl("DISABLE")], 8080, "DISABLE", "shop/payments"],
    [
      "workload over namespace over mesh",
      [mesh("STRICT"), ns("DISABLE"), wl("PERMISSIVE")],
      8080,
      "PERMISSIVE",
      "shop/payments",
    ],
    [
      "UNSET namespace inherits the mesh",
      [mesh("PERMISSIVE"), ns("UNSET")],
      8080,
      "PERMISSIVE",
      `${ROOT}/default`,
    ],
    ["no mtls at all inherits", [mesh("DISABLE"), ns(undefined)], 8080, "DISABLE", `${ROOT}/default`],
    [
      "UNSET workload inherits the namespace",
      [ns("PERMISSIVE"), wl("UNSET")],
      8080,
      "PERMISSIVE",
      "shop/default",
    ],
    ["UNSET everywhere is the default", [mesh("UNSET"), ns("UNSET"), wl("UNSET")], 8080, "STRICT", undefined],
    [
      "port level over workload",
      [wl("STRICT", { "8080": "PERMISSIVE" })],
      8080,
      "PERMISSIVE",
      "shop/payments",
    ],
    [
      "another port keeps the workload mode",
      [wl("STRICT", { "8080": "PERMISSIVE" })],
      9090,
      "STRICT",
      "shop/payments",
    ],
    [
      "UNSET port inherits the workload",
      [wl("DISABLE", { "8080": "UNSET" })],
      8080,
      "DISABLE",
      "shop/payments",
    ],
    [
      "UNSET port of an UNSET workload inherits the namespace",
      [ns("PERMISSIVE"), wl(undefined, { "8080": undefined })],
      8080,
      "PERMISSIVE",
      "shop/default",
    ],
    [
      "port level STRICT over a PERMISSIVE namespace",
      [ns("PERMISSIVE"), wl(undefined, { "8080": "STRICT" })],
      8080,
      "STRICT",
      "shop/payments",
    ],
  ];
  for (const [name, pas, port, mode, source] of table) {
    test(name, () => {
      const r = resolveMtlsMode(pas, payments, port, ROOT);
      assert.deepEqual(r, source === undefined ? { mode } : { mode, source });
    });
  }

  test("a policy of another namespace never applies", () => {
    const r = resolveMtlsMode(
      [pa("billing", "default", "DISABLE"), pa("billing", "x", "DISABLE", { labels: { app: "payments" } })],
      payments,
      8080,
      ROOT,
    );
    assert.deepEqual(r, { mode: "STRICT" });
  });

  test("a workload policy whose labels do not match does not apply", () => {
    const r = resolveMtlsMode(
      [pa("shop", "orders", "DISABLE", { labels: { app: "orders" } })],
      payments,
      8080,
      ROOT,
    );
    assert.deepEqual(r, { mode: "STRICT" });
  });

  test("an empty selector makes a namespace policy (and its portLevelMtls is not read)", () => {
    const p: PeerAuthRef = {
      namespace: "shop",
      name: "wide",
      spec: { selector: { matchLabels: {} }, mtls: { mode: "PERMISSIVE" } },
    };
    assert.deepEqual(resolveMtlsMode([p], payments, 8080, ROOT), { mode: "PERMISSIVE", source: "shop/wide" });
  });

  test("several at one level: the first by name decides (Istio: the oldest)", () => {
    const pas = [pa("shop", "b", "DISABLE"), pa("shop", "a", "PERMISSIVE")];
    assert.deepEqual(resolveMtlsMode(pas, payments, 8080, ROOT), { mode: "PERMISSIVE", source: "shop/a" });
    assert.deepEqual(resolveMtlsMode([...pas].reverse(), payments, 8080, ROOT), {
      mode: "PERMISSIVE",
      source: "shop/a",
    });
    const wls = [
      pa("shop", "z", "DISABLE", { labels: { app: "payments" } }),
      pa("shop", "y", "STRICT", { labels: { app: "payments" } }),
    ];
    assert.deepEqual(resolveMtlsMode(wls, payments, 8080, ROOT), { mode: "STRICT", source: "shop/y" });
  });

  test("a root-namespace policy with a selector selects workloads in every namespace, after the workload's own", () => {
    const rooted = pa(ROOT, "payments-everywhere", "PERMISSIVE", { labels: { app: "payments" } });
    assert.deepEqual(resolveMtlsMode([rooted], payments, 8080, ROOT), {
      mode: "PERMISSIVE",
      source: `${ROOT}/payments-everywhere`,
    });
    assert.deepEqual(
      resolveMtlsMode(
        [rooted, pa("shop", "own", "STRICT", { labels: { app: "payments" } })],
        payments,
        8080,
        ROOT,
      ),
      {
        mode: "STRICT",
        source: "shop/own",
      },
    );
  });

  test("in the root namespace, a policy without selector is the mesh policy", () => {
    const gw = { namespace: ROOT, labels: { app: "gw" } };
    assert.deepEqual(resolveMtlsMode([pa(ROOT, "default", "PERMISSIVE")], gw, 80, ROOT), {
      mode: "PERMISSIVE",
      source: `${ROOT}/default`,
    });
  });

  test("an inherited property does not name a port", () => {
    const p = pa("shop", "payments", "STRICT", { labels: { app: "payments" }, ports: { "8080": "DISABLE" } });
    assert.deepEqual(resolveMtlsMode([p], payments, Number.NaN, ROOT), {
      mode: "STRICT",
      source: "shop/payments",
    });
  });
});
