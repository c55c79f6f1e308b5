// Decision latency of the policy engine with 10,000 AuthorizationPolicies on one workload: a mix of
// namespace and root-namespace policies (ALLOW by principal and path, by namespace and path prefix,
// by JWT principal, DENY by path and by header, AUDIT, a few rules every request must scan), and
// requests that are allowed and denied. selectPolicies + compilePolicies once (compile_ms), then
// warm-up and several timed runs of evaluate(); medians over runs. Last line: one JSON object.
// Env: RUNS (5), PER_RUN (200000), POLICIES (10000).

import {
  compilePolicies,
  evaluate,
  type PolicyRef,
  type RequestAttributes,
  selectPolicies,
} from "../src/policy/index.js";
import { measure, median, timerOverheadNs } from "./policy-stats.js";

const RUNS = Number(process.env["RUNS"] ?? 5);
const PER_RUN = Number(process.env["PER_RUN"] ?? 200_000);
const POLICIES = Number(process.env["POLICIES"] ?? 10_000);
const ROOT = "zmesh-system";
const workload = { namespace: "shop", labels: { app: "payments", version: "v1" } };

const pad = (i: number) => String(i).padStart(5, "0");
const client = (i: number) => `cluster.local/ns/ns${i % 100}/sa/client${i}`;

/** Policy i; its shape depends on i % 20 (shares in the header). */
function policy(i: number): PolicyRef {
  const kind = i % 20;
  const name = `p${pad(i)}`;
  const sel = i % 3 === 0 ? {} : { selector: { matchLabels: { app: "payments" } } };
  if (kind < 12) {
    // 60%: ALLOW a caller some paths of its own.
    return {
      namespace: "shop",
      name,
      spec: {
        ...sel,
        rules: [
          {
            from: [{ source: { principals: [client(i)] } }],
            to: [{ operation: { methods: ["GET", "POST"], paths: [`/svc${i}/items`, `/svc${i}/orders/*`] } }],
          },
        ],
      },
    };
  }
  if (kind < 14) {
    // 10%: ALLOW a namespace a path prefix.
    return {
      namespace: "shop",
      name,
      spec: {
        ...sel,
        rules: [
          {
            from: [{ source: { namespaces: [`team${i}`] } }],
            to: [{ operation: { methods: ["GET"], paths: [`/team${i}/*`] } }],
          },
        ],
      },
    };
  }
  if (kind < 16) {
    // 10%: DENY internal paths, half of them mesh-wide from the root namespace.
    return {
      namespace: i % 2 === 0 ? ROOT : "shop",
      name,
      spec: {
        action: "DENY",
        rules: [{ to: [{ operation: { paths: [`/internal${i}/*`, `/admin${i}`] } }] }],
      },
    };
  }
  if (kind === 16) {
    // 5%: DENY a caller when it sends a debug header.
    return {
      namespace: "shop",
      name,
      spec: {
        action: "DENY",
        rules: [
          {
            from: [{ source: { principals: [client(i - 16)] } }],
            when: [{ key: "request.headers[x-debug]", values: ["1"] }],
          },
        ],
      },
    };
  }
  if (kind === 17) {
    // 5%: AUDIT.
    return {
      namespace: "shop",
      name,
      spec: { action: "AUDIT", rules: [{ to: [{ operation: { paths: [`/audit${i}/*`] } }] }] },
    };
  }
  if (kind === 18) {
    // 5%: mesh-wide ALLOW of a health path for workloads labelled payments.
    return {
      namespace: ROOT,
      name,
      spec: {
        selector: { matchLabels: { app: "payments" } },
        rules: [{ to: [{ operation: { paths: [`/health${i}`] } }] }],
      },
    };
  }
  // 5%: ALLOW an end user (JWT) their own page.
  return {
    namespace: "shop",
    name,
    spec: {
      rules: [
        {
          from: [{ source: { requestPrincipals: [`https://issuer.example/user${i}`] } }],
          to: [{ operation: { paths: [`/me${i}`] } }],
        },
      ],
    },
  };
}

const all: PolicyRef[] = [];
for (let i = 0; i < POLICIES; i++) all.push(policy(i));
// A few rules no key can file, which every request scans.
all.push(
  {
    namespace: ROOT,
    name: "deny-plaintext",
    spec: { action: "DENY", rules: [{ from: [{ source: { notPrincipals: ["*"] } }] }] },
  },
  {
    namespace: ROOT,
    name: "deny-executables",
    spec: { action: "DENY", rules: [{ to: [{ operation: { paths: ["*.exe", "*.sh"] } }] }] },
  },
  {
    namespace: "shop",
    name: "deny-trace",
    spec: { action: "DENY", rules: [{ to: [{ operation: { methods: ["TRACE"] } }] }] },
  },
  {
    namespace: "shop",
    name: "allow-probes",
    spec: { rules: [{ when: [{ key: "request.headers[user-agent]", values: ["kube-probe/*"] }] }] },
  },
);
// And some policies that do not select this workload.
for (let i = 0; i < 100; i++) {
  all.push({ namespace: "billing", name: `other${i}`, spec: { rules: [{}] } });
  all.push({
    namespace: "shop",
    name: `orders${i}`,
    spec: { selector: { matchLabels: { app: "orders" } }, rules: [{}] },
  });
}

function compile(index: boolean) {
  const t0 = process.hrtime.bigint();
  const selected = selectPolicies(all, workload, ROOT);
  const compiled = compilePolicies(selected, { index });
  return { compiled, selected: selected.length, ms: Number(process.hrtime.bigint() - t0) / 1e6 };
}

// Three compilations for the time; only the last one is kept (memory is what decisions wait on).
const times = [compile(true).ms, compile(true).ms];
const { compiled, selected, ms } = compile(true);
const compileMs = median([...times, ms]);

/** A request's values; the attributes object is built per decision, as the proxy does. */
interface Shape {
  principal: string;
  path: string;
  method: string;
  debug: boolean;
}

/** A fresh copy of a string (new memory, hash not yet computed), as the HTTP parser hands over. */
const fresh = (s: string) => ` ${s}`.slice(1);

/**
 * The attributes the proxy builds for one request. The principal comes from the connection (the
 * same string for all its requests); path and headers are new for each request.
 */
function attributes(s: Shape): RequestAttributes {
  const headers: Record<string, string> = { "user-agent": fresh("curl/8.5.0"), accept: "*/*" };
  if (s.debug) headers["x-debug"] = "1";
  return {
    principal: s.principal,
    namespace: s.principal.split("/")[2]!,
    sourceIp: "198.18.0.4",
    remoteIp: "198.18.0.4",
    destinationIp: "198.18.0.5",
    destinationPort: 8080,
    http: { method: s.method, path: fresh(s.path), host: "payments.shop.svc.cluster.local", headers },
  };
}

const shape = (principal: string, path: string, method = "GET", debug = false): Shape => ({
  principal,
  path,
  method,
  debug,
});

// Deterministic pseudo-random indexes (xorshift), so every run sees the same requests.
let seed = 0x2545f491;
const rand = (n: number) => {
  seed ^= seed << 13;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return (seed >>> 0) % n;
};
const ofKind = (lo: number, hi: number) => {
  for (;;) {
    const i = rand(POLICIES);
    if (i % 20 >= lo && i % 20 < hi) return i;
  }
};

const SIZE = 4096;
const allowed: Shape[] = [];
const denied: Shape[] = [];
for (let k = 0; k < SIZE; k++) {
  const i = ofKind(0, 12);
  allowed.push(
    k % 2 === 0 ? shape(client(i), `/svc${i}/items`) : shape(client(i), `/svc${i}/orders/42`, "POST"),
  );
  const j = ofKind(14, 16);
  const m = ofKind(16, 17);
  denied.push(
    k % 3 === 0
      ? shape(client(i), `/internal${j}/keys`) // a DENY policy
      : k % 3 === 1
        ? shape(client(i), `/svc${i + 1}/items`) // no ALLOW policy matches
        : shape(client(m - 16), `/svc${m - 16}/items`, "GET", true), // DENY by header
  );
}
for (const s of allowed)
  if (!evaluate(compiled, attributes(s)).allowed) throw new Error(`expected allow: ${s.path}`);
for (const s of denied)
  if (evaluate(compiled, attributes(s)).allowed) throw new Error(`expected deny: ${s.path}`);

const overhead = timerOverheadNs();
const mask = SIZE - 1;
const both: Shape[] = [];
for (let k = 0; k < SIZE; k++) both.push(k % 2 === 0 ? allowed[k]! : denied[k]!);

const decide = (r: RequestAttributes) => evaluate(compiled, r);
// Warm-up: JIT and inline caches.
measure(PER_RUN, overhead, (i) => attributes(both[i & mask]!), decide);

type Timed = ReturnType<typeof measure>;
const runs: { all: Timed; allow: Timed; deny: Timed; hot: Timed }[] = [];
for (let r = 0; r < RUNS; r++) {
  runs.push({
    all: measure(PER_RUN, overhead, (i) => attributes(both[i & mask]!), decide),
    allow: measure(PER_RUN / 2, overhead, (i) => attributes(allowed[i & mask]!), decide),
    deny: measure(PER_RUN / 2, overhead, (i) => attributes(denied[i & mask]!), decide),
    // The same decisions over 64 request shapes: a workload with a few dozen callers and paths,
    // whose rules stay in the CPU caches.
    hot: measure(PER_RUN / 2, overhead, (i) => attributes(both[i & 63]!), decide),
  });
}
const med = (f: (x: (typeof runs)[number]) => number) => Math.round(median(runs.map(f)));

// For comparison: the same policies scanned in order, without the index (fewer calls: it is slow).
let linearRun = { p50: Number.NaN };
if (process.env["LINEAR"] !== "0") {
  const linear = compile(false).compiled;
  linearRun = measure(
    2000,
    overhead,
    (i) => attributes(both[i & mask]!),
    (r) => evaluate(linear, r),
  );
}

const out = {
  bench: "policy-evaluate",
  policies: POLICIES,
  p50_ns: med((x) => x.all.p50),
  p99_ns: med((x) => x.all.p99),
  compile_ms: Math.round(compileMs),
  selected,
  allow_p50_ns: med((x) => x.allow.p50),
  deny_p50_ns: med((x) => x.deny.p50),
  mean_ns: med((x) => x.all.mean),
  hot_p50_ns: med((x) => x.hot.p50),
  linear_p50_ns: Math.round(linearRun.p50),
  timer_overhead_ns: Math.round(overhead),
  runs: RUNS,
  per_run: PER_RUN,
  goal_p50_ns: 2000,
};
console.log(
  `policies: ${POLICIES} generated, ${selected} select the workload; compile ${compileMs.toFixed(1)} ms (median of 3)`,
);
for (const [i, r] of runs.entries()) {
  console.log(
    `run ${i + 1}: mixed p50 ${r.all.p50.toFixed(0)} ns p99 ${r.all.p99.toFixed(0)} ns mean ${r.all.mean.toFixed(0)} ns; allowed p50 ${r.allow.p50.toFixed(0)} ns; denied p50 ${r.deny.p50.toFixed(0)} ns; 64 shapes p50 ${r.hot.p50.toFixed(0)} ns`,
  );
}
console.log(
  `median of ${RUNS} runs: p50 ${out.p50_ns} ns, p99 ${out.p99_ns} ns (timer overhead ${out.timer_overhead_ns} ns subtracted); without the index p50 ${out.linear_p50_ns} ns`,
);
console.log(JSON.stringify(out));
