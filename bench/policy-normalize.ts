// Cost of normalizePath, which runs on every inbound request before authorization: clean paths
// (the fast path: one scan, no copy), paths with a query, and paths that need work (dot segments,
// "//", percent-escapes, backslashes). Each input is a fresh string, as the HTTP parser hands it
// over. Warm-up, several timed runs, medians. Last line: one JSON object.
// Env: RUNS (5), PER_RUN (400000).

import { normalizePath } from "../src/policy/index.js";
import { measure, median, timerOverheadNs } from "./policy-stats.js";

const RUNS = Number(process.env["RUNS"] ?? 5);
const PER_RUN = Number(process.env["PER_RUN"] ?? 400_000);

const CLEAN = [
  "/",
  "/charge",
  "/api/v1/items",
  "/api/v1/orders/8d2f6c1e-3b7a-4c55-9d0e-5f1a2b3c4d5e/lines",
  "/static/js/app.3f2a1b.js",
  `/${"segment/".repeat(20)}end`,
];
const QUERY = ["/api/v1/items?limit=50&offset=100", "/search?q=shoes&sort=price#top", "/charge?x=1"];
const DIRTY = [
  "/api/./v1/../v1/items",
  "//admin//users",
  "/%61dmin/%7Euser/files",
  "/public\\..\\admin",
  "/api/v1/items/%2F..%2Fsecret",
  "/a/b/c/./../../d/e//f/",
];

/** A fresh copy of a string (new memory), as the HTTP parser hands over. */
const fresh = (s: string) => ` ${s}`.slice(1);

function check(): void {
  for (const p of [...CLEAN, ...QUERY, ...DIRTY]) {
    const r = normalizePath(p);
    if (!r.ok) throw new Error(`normalizePath refused ${p}: ${r.reason}`);
  }
}
check();

const overhead = timerOverheadNs();
const run = (inputs: readonly string[], n: number) =>
  measure(
    n,
    overhead,
    (i) => fresh(inputs[i % inputs.length]!),
    (p) => normalizePath(p),
  );

const all = [...CLEAN, ...QUERY, ...DIRTY];
run(all, PER_RUN); // warm-up
const runs: {
  all: ReturnType<typeof run>;
  clean: ReturnType<typeof run>;
  query: ReturnType<typeof run>;
  dirty: ReturnType<typeof run>;
}[] = [];
for (let r = 0; r < RUNS; r++) {
  runs.push({
    all: run(all, PER_RUN),
    clean: run(CLEAN, PER_RUN / 4),
    query: run(QUERY, PER_RUN / 4),
    dirty: run(DIRTY, PER_RUN / 4),
  });
}
const med = (f: (x: (typeof runs)[number]) => number) => Math.round(median(runs.map(f)));
for (const [i, r] of runs.entries()) {
  console.log(
    `run ${i + 1}: all p50 ${r.all.p50.toFixed(0)} ns p99 ${r.all.p99.toFixed(0)} ns; clean p50 ${r.clean.p50.toFixed(0)} ns; with query p50 ${r.query.p50.toFixed(0)} ns; needing work p50 ${r.dirty.p50.toFixed(0)} ns`,
  );
}
const out = {
  bench: "policy-normalize",
  p50_ns: med((x) => x.all.p50),
  p99_ns: med((x) => x.all.p99),
  clean_p50_ns: med((x) => x.clean.p50),
  query_p50_ns: med((x) => x.query.p50),
  dirty_p50_ns: med((x) => x.dirty.p50),
  dirty_p99_ns: med((x) => x.dirty.p99),
  timer_overhead_ns: Math.round(overhead),
  runs: RUNS,
  per_run: PER_RUN,
};
console.log(
  `median of ${RUNS} runs: p50 ${out.p50_ns} ns, p99 ${out.p99_ns} ns (timer overhead ${out.timer_overhead_ns} ns subtracted)`,
);
console.log(JSON.stringify(out));
