// `zmesh why`'s search and report over proxy logs laid out as the supervisor writes them, with the
// lines written by the proxy's own access log writer (src/proxy/accesslog.ts, through a pino logger
// set up as the proxy's): each exchange of one request id is found among other requests, other log
// lines and a partial last line, its caller's line first whatever the millisecond clock says, and
// the report names who refused it and why.
import assert from "node:assert/strict";
import { appendFile, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import pino from "pino";
import { type AccessFields, AccessLog } from "../proxy/accesslog.js";
import { explainEntry, formatTrace, inertJson, pairExchanges, type Trace, traceRequest } from "./explain.js";
import type { AccessEntry } from "./mesh.js";
import type { Instance, MeshState } from "./state.js";
import { logFile } from "./supervisor.js";

const ID = "7c1e-deny";
const DENIED = "denied: no ALLOW policy matched (checked: shop/payments-callers)";
const FRONTEND = "spiffe://cluster.local/ns/shop/sa/frontend";
const PAYMENTS = "spiffe://cluster.local/ns/shop/sa/payments";

function instance(name: string): Instance {
  return { workload: name, name, namespace: "shop" } as Instance;
}

/** Access lines as a sidecar writes them (pino with the proxy's options, then AccessLog). */
function accessLines(records: AccessFields[]): string {
  const lines: string[] = [];
  const log = pino(
    { base: { part: "proxy" }, timestamp: pino.stdTimeFunctions.isoTime },
    { write: (l: string) => void lines.push(l) },
  );
  const access = new AccessLog(log);
  for (const r of records) access.write(r);
  return lines.join("");
}

const base = { mtls: true, requestBytes: 0, responseBytes: 1, durationMs: 0.4 } as const;
/** The caller's line of a POST /charge its callee denied: written after the callee's, and longer. */
const outboundDenied = (requestId: string): AccessFields => ({
  ...base,
  direction: "outbound",
  requestId,
  source: FRONTEND,
  destination: PAYMENTS,
  service: "payments.shop.svc.cluster.local",
  method: "POST",
  path: "/charge?probe=1",
  status: 403,
  durationMs: 2.25,
});
const inboundDenied = (requestId: string): AccessFields => ({
  ...base,
  direction: "inbound",
  requestId,
  source: FRONTEND,
  destination: PAYMENTS,
  method: "POST",
  path: "/charge",
  status: 403,
  flag: "RBAC_DENIED",
  decision: "deny",
  reason: DENIED,
});

describe("zmesh why: tracing a request through the proxy logs", () => {
  let dir: string;
  let state: MeshState;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "zmesh-why-"));
    state = {
      name: "zmtest",
      stateDir: dir,
      instances: [instance("payments"), instance("frontend"), instance("catalog")],
    } as MeshState;
    await mkdir(join(dir, "logs"));
    const [payments, frontend] = state.instances as [Instance, Instance];
    await writeFile(
      logFile(state, "proxy", payments),
      [
        "zmesh proxy starting\n", // not JSON
        `${JSON.stringify({ msg: "certificate renewed", requestId: ID })}\n`, // the id, but no access line
        accessLines([
          { ...inboundDenied(`${ID}-2`) }, // an id the searched one is a prefix of
          { ...inboundDenied("other"), path: `/charge?note=${ID}` }, // the id in a path
          inboundDenied(ID),
          inboundDenied('quote"d'),
        ]),
        '{"level":30,"direction":"inbound","requestId":"7c1e-deny","sou', // a partial last line
      ].join(""),
    );
    await writeFile(
      logFile(state, "proxy", frontend),
      accessLines([outboundDenied(ID), outboundDenied('quote"d')]),
    );
    // catalog has no log at all (its proxy never started).
  });

  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("finds the caller's and the callee's line of the request, paired, the caller's first", async () => {
    const { exchanges, truncated } = await traceRequest(state, ID);
    assert.equal(truncated, false);
    assert.equal(exchanges.length, 1);
    assert.deepEqual(
      [exchanges[0]!.outbound?.instance, exchanges[0]!.inbound?.instance],
      ["shop/frontend", "shop/payments"],
    );
    assert.deepEqual((await traceRequest(state, "never-sent")).exchanges, []);
    // An id the access log escapes (a caller may send any header value) is found as written.
    assert.equal((await traceRequest(state, 'quote"d')).exchanges.length, 1);
  });

  it("reports who refused it, by which decision, from whom, and why", async () => {
    assert.deepEqual(formatTrace(ID, await traceRequest(state, ID)), [
      `request ${ID}: POST /charge?probe=1: refused by the sidecar of shop/payments (inbound)`,
      "  shop/frontend outbound 403: sent to payments.shop.svc.cluster.local",
      `  shop/payments inbound 403: DENIED, from shop/frontend (${FRONTEND}) over mutual TLS`,
      `      why: ${DENIED}`,
    ]);
  });

  it("pairs by caller, callee and method: the millisecond clock can put the callee's start first", () => {
    const hop = (instance: string, e: Partial<AccessEntry>, time: string, durationMs: number) => ({
      instance,
      entry: { msg: "access", requestId: "x", method: "GET", time, durationMs, ...e } as AccessEntry,
    });
    const peers = { source: FRONTEND, destination: PAYMENTS };
    // Two requests with the same id; each callee line ends (and, by its clock, starts) before its caller's.
    const exchanges = pairExchanges([
      hop("shop/payments", { direction: "inbound", ...peers, path: "/b" }, "2026-11-27T03:00:01.000Z", 0.2),
      hop("shop/frontend", { direction: "outbound", ...peers, path: "/b" }, "2026-11-27T03:00:01.001Z", 1.9),
      hop("shop/payments", { direction: "inbound", ...peers, path: "/a" }, "2026-11-27T03:00:00.000Z", 0.2),
      hop("shop/frontend", { direction: "outbound", ...peers, path: "/a" }, "2026-11-27T03:00:00.001Z", 1.9),
      hop(
        "shop/frontend",
        { direction: "outbound", source: FRONTEND, flag: "NO_ROUTE" },
        "2026-11-27T03:00:02.000Z",
        0.1,
      ),
    ]);
    assert.deepEqual(
      exchanges.map((x) => [x.outbound?.entry.path, x.inbound?.entry.path, x.outbound?.entry.flag]),
      [
        ["/a", "/a", undefined],
        ["/b", "/b", undefined],
        [undefined, undefined, "NO_ROUTE"],
      ],
    );
  });

  it("several requests under one id are reported apart, each with its own outcome", () => {
    const entry = (e: Partial<AccessEntry>) =>
      ({ msg: "access", time: "t", requestId: "dup", direction: "inbound", ...e }) as AccessEntry;
    const trace: Trace = {
      truncated: false,
      exchanges: [
        {
          inbound: {
            instance: "shop/catalog",
            entry: entry({ method: "GET", path: "/items", decision: "allow" }),
          },
        },
        {
          inbound: {
            instance: "shop/payments",
            entry: entry({ method: "POST", path: "/charge", decision: "deny" }),
          },
        },
        {
          inbound: {
            instance: "shop/orders",
            entry: entry({ method: "POST", path: "/orders", decision: "allow", flag: "UPSTREAM_FAILURE" }),
          },
        },
      ],
    };
    const report = formatTrace("dup", trace);
    assert.match(report[0]!, /^request dup: 3 separate requests carry this id/);
    assert.deepEqual(
      report.filter((l) => l.startsWith("request dup (")),
      [
        "request dup (1 of 3): GET /items: allowed",
        "request dup (2 of 3): POST /charge: refused by the sidecar of shop/payments (inbound)",
        "request dup (3 of 3): POST /orders: failed at the sidecar of shop/orders (inbound): UPSTREAM_FAILURE",
      ],
    );
  });

  it("an allowed request names its policy and rule, and a dry-run policy's verdict", () => {
    const report = formatTrace("ok-1", {
      truncated: false,
      exchanges: [
        {
          inbound: {
            instance: "shop/catalog",
            entry: {
              msg: "access",
              time: "t",
              direction: "inbound",
              requestId: "ok-1",
              source: FRONTEND,
              method: "GET",
              path: "/items",
              status: 200,
              decision: "allow",
              policy: "shop/catalog-readers",
              rule: 0,
              reason: "allowed by ALLOW policy shop/catalog-readers rule 0",
              dryRun: [{ policy: "shop/lockdown", wouldAllow: false }],
            },
          },
        },
      ],
    });
    assert.equal(report[0], "request ok-1: GET /items: allowed");
    assert.match(report[1]!, /ALLOWED by shop\/catalog-readers rule 0, from shop\/frontend/);
    assert.equal(report[3], "      dry run: shop/lockdown would have denied it (not enforced)");
  });

  it("what a caller chose (a path, a header) cannot drive the operator's terminal, in text or JSON", () => {
    const entry = {
      msg: "access",
      time: "t",
      direction: "inbound",
      requestId: "esc-1",
      method: "GET",
      path: "/a\u001b[2J\u009b31m\u202eb\u2028c",
      decision: "deny",
    } as const;
    const [headline] = formatTrace("esc-1", {
      truncated: false,
      exchanges: [{ inbound: { instance: "shop/catalog", entry } }],
    });
    assert.equal(
      headline,
      "request esc-1: GET /a\\x1b[2J\\x9b31m\\u{202e}b\\u{2028}c: refused by the sidecar of shop/catalog (inbound)",
    );
    const json = inertJson({ entry });
    assert.doesNotMatch(json, /[^\n -~]/, "only printable ASCII and newlines");
    assert.deepEqual(JSON.parse(json), { entry });
  });

  it("a line that straddles two reads of a large log is found whole", async () => {
    const big = await mkdtemp(join(tmpdir(), "zmesh-why-big-"));
    try {
      const s = { name: "m", stateDir: big, instances: [instance("payments")] } as MeshState;
      await mkdir(join(big, "logs"));
      const file = logFile(s, "proxy", s.instances[0]!);
      // The log is read 1 MiB at a time: the line of the request starts 100 bytes before the end of the first read.
      await writeFile(file, `${"x".repeat((1 << 20) - 101)}\n${accessLines([inboundDenied("straddle")])}`);
      await appendFile(file, accessLines(Array.from({ length: 3_000 }, () => inboundDenied("filler"))));
      await appendFile(file, accessLines([inboundDenied("straddle")]));
      const { exchanges } = await traceRequest(s, "straddle");
      assert.equal(exchanges.length, 2);
      assert.deepEqual(
        exchanges.map((x) => x.inbound?.entry.reason),
        [DENIED, DENIED],
      );
    } finally {
      await rm(big, { recursive: true, force: true });
    }
  });

  it("a log with more lines of one id than it reads says so", async () => {
    const many = await mkdtemp(join(tmpdir(), "zmesh-why-many-"));
    try {
      const s = { name: "m", stateDir: many, instances: [instance("payments")] } as MeshState;
      await mkdir(join(many, "logs"));
      const file = logFile(s, "proxy", s.instances[0]!);
      await writeFile(file, "");
      const block = accessLines(Array.from({ length: 250 }, () => inboundDenied("flood")));
      for (let i = 0; i < 5; i++) await appendFile(file, block); // 1,250 lines, over 1,000
      const trace = await traceRequest(s, "flood");
      assert.equal(trace.truncated, true);
      assert.equal(trace.exchanges.length, 1_000);
      const report = formatTrace("flood", trace);
      assert.match(report.at(-2)!, /^\.\.\. and 980 more \(zmesh why flood -o json lists them all\)$/);
      assert.match(report.at(-1)!, /more than 1000 lines with this id/);
    } finally {
      await rm(many, { recursive: true, force: true });
    }
  });

  it("a refusal without a policy reason is explained by its flag", () => {
    const e = { msg: "access", time: "t", direction: "outbound", requestId: "x" } as const;
    assert.match(explainEntry({ ...e, flag: "NO_ROUTE" }), /no service of the mesh listens/);
    assert.equal(
      explainEntry({ ...e, flag: "SECURE_NAMING", err: "server is sa/evil" }),
      "SECURE_NAMING: server is sa/evil",
    );
    assert.equal(explainEntry({ ...e }), "");
  });
});
