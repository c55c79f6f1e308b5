// `zmesh why`'s search and report over proxy logs laid out as the supervisor writes them: each
// sidecar's record of one request is found among other requests, other log lines and a partial last
// line, in the caller-first order, and the report names who refused it and why.
import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { explainEntry, formatTrace, traceRequest } from "./explain.js";
import type { Instance, MeshState } from "./state.js";
import { logFile } from "./supervisor.js";

const ID = "7c1e-deny";
const DENIED = "denied: no ALLOW policy matched (checked: shop/payments-callers)";

function instance(name: string): Instance {
  return { workload: name.replace(/-\d+$/, ""), name, namespace: "shop" } as Instance;
}

const line = (o: Record<string, unknown>) => JSON.stringify({ level: 30, ...o });

describe("zmesh why: tracing a request through the proxy logs", () => {
  let dir: string;
  let state: MeshState;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "zmesh-why-"));
    state = {
      name: "zmtest",
      stateDir: dir,
      instances: [instance("payments-1"), instance("frontend-1"), instance("catalog-1")],
    } as MeshState;
    await mkdir(join(dir, "logs"));
    const [payments, frontend] = state.instances as [Instance, Instance];
    await writeFile(
      logFile(state, "proxy", payments),
      [
        "zmesh proxy starting", // not JSON
        line({ msg: "certificate renewed", requestId: ID }), // the id, but no access line
        line({ msg: "access", requestId: "other", path: `/charge?note=${ID}`, direction: "inbound" }),
        line({
          msg: "access",
          time: "2026-11-27T03:00:00.012Z", // written before the caller's line, which ends later
          durationMs: 1.5,
          direction: "inbound",
          requestId: ID,
          source: "spiffe://cluster.local/ns/shop/sa/frontend",
          mtls: true,
          method: "POST",
          path: "/charge",
          status: 403,
          flag: "RBAC_DENIED",
          decision: "deny",
          reason: DENIED,
        }),
        '{"msg":"access","requestId":"7c1e-de', // a partial last line
      ].join("\n"),
    );
    await writeFile(
      logFile(state, "proxy", frontend),
      `${line({
        msg: "access",
        time: "2026-11-27T03:00:00.014Z",
        durationMs: 4.25,
        direction: "outbound",
        requestId: ID,
        service: "payments.shop.svc.cluster.local",
        method: "POST",
        path: "/charge",
        status: 403,
      })}\n`,
    );
    // catalog-1 has no log at all (its proxy never started).
  });

  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("finds each sidecar's access line of the request, the caller's first, and nothing else", async () => {
    const hops = await traceRequest(state, ID);
    assert.deepEqual(
      hops.map((h) => [h.instance, h.entry.direction, h.entry.status]),
      [
        ["shop/frontend-1", "outbound", 403],
        ["shop/payments-1", "inbound", 403],
      ],
    );
    assert.deepEqual(await traceRequest(state, "never-sent"), []);
  });

  it("reports who refused it, by which decision, from whom, and why", async () => {
    const report = formatTrace(ID, await traceRequest(state, ID));
    assert.deepEqual(report, [
      `request ${ID}: POST /charge: refused by the sidecar of shop/payments-1 (inbound)`,
      "  shop/frontend-1 outbound 403: sent to payments.shop.svc.cluster.local",
      "  shop/payments-1 inbound 403: DENIED, from shop/frontend (spiffe://cluster.local/ns/shop/sa/frontend) over mutual TLS",
      `      why: ${DENIED}`,
    ]);
  });

  it("an allowed request names its policy and rule", () => {
    const report = formatTrace("ok-1", [
      {
        instance: "shop/catalog-1",
        entry: {
          msg: "access",
          time: "t",
          direction: "inbound",
          requestId: "ok-1",
          source: "spiffe://cluster.local/ns/shop/sa/frontend",
          method: "GET",
          path: "/items",
          status: 200,
          decision: "allow",
          policy: "shop/catalog-readers",
          rule: 0,
          reason: "allowed by ALLOW policy shop/catalog-readers rule 0",
        },
      },
    ]);
    assert.equal(report[0], "request ok-1: GET /items: allowed");
    assert.match(report[1]!, /ALLOWED by shop\/catalog-readers rule 0, from shop\/frontend/);
  });

  it("what a caller chose (a path, a header) cannot drive the operator's terminal", () => {
    const [headline] = formatTrace("esc-1", [
      {
        instance: "shop/catalog-1",
        entry: {
          msg: "access",
          time: "t",
          direction: "inbound",
          requestId: "esc-1",
          method: "GET",
          path: "/a\u001b[2J\u009b31m\u202eb",
          decision: "deny",
        },
      },
    ]);
    assert.equal(
      headline,
      "request esc-1: GET /a\\x1b[2J\\x9b31m\\u{202e}b: refused by the sidecar of shop/catalog-1 (inbound)",
    );
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
