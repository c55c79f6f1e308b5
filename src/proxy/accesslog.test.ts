// AccessLog: the line it writes is the line pino writes for the same record through the same
// logger (level, ISO time, bindings, field order, escaping, absent fields left out), so log readers
// and tests that parse access lines see no difference.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import pino from "pino";
import { type AccessFields, AccessLog, jsonString, num3 } from "./accesslog.js";

function capture(opts: pino.LoggerOptions) {
  const lines: string[] = [];
  const log = pino(opts, { write: (l: string) => void lines.push(l) });
  return { log, lines };
}

const RECORDS: AccessFields[] = [
  {
    direction: "inbound",
    requestId: "0b6f0c1e-8d1c-4a43-9c3e-4b4a0e0b9d1a",
    source: "spiffe://cluster.local/ns/shop/sa/frontend",
    destination: "spiffe://cluster.local/ns/shop/sa/payments",
    service: "payments.shop.svc.cluster.local",
    upstream: "127.0.0.1:8080",
    mtls: true,
    method: "GET",
    path: "/api/item?q=1",
    status: 200,
    decision: "allow",
    policy: "shop/allow-frontend",
    rule: 0,
    requestBytes: 0,
    responseBytes: 1024,
    durationMs: 1.234,
  },
  {
    direction: "outbound",
    requestId: 'id with "quotes" \\ and \u0001 control',
    mtls: false,
    method: "POST",
    path: "/ünïcode/\ud83d\ude00/lone\ud800/tab\t",
    status: 403,
    grpcStatus: "7",
    http2: true,
    flag: "UAEX",
    decision: "deny",
    reason: "x".repeat(300),
    dryRun: { policy: "a/b", decision: "deny", nested: [1, "two"] },
    requestBytes: 12,
    responseBytes: 0,
    durationMs: Number.NaN,
    err: "upstream closed the connection",
  },
];

describe("AccessLog", () => {
  it("writes the same JSON line as pino for the same record", () => {
    for (const opts of [
      { base: { part: "proxy" }, timestamp: pino.stdTimeFunctions.isoTime },
      { base: { part: "proxy", workload: "shop/x" }, timestamp: pino.stdTimeFunctions.epochTime },
      {},
    ]) {
      const ours = capture(opts);
      const theirs = capture(opts);
      const a = new AccessLog(ours.log.child({ conn: 7 }));
      for (const r of RECORDS) {
        a.write(r);
        theirs.log.child({ conn: 7 }).info(r, "access");
      }
      assert.equal(ours.lines.length, RECORDS.length);
      for (let i = 0; i < RECORDS.length; i++) {
        const o = JSON.parse(ours.lines[i]!) as Record<string, unknown>;
        const t = JSON.parse(theirs.lines[i]!) as Record<string, unknown>;
        // The two lines were stamped at slightly different instants.
        assert.equal(typeof o["time"], typeof t["time"]);
        if (typeof o["time"] === "string")
          assert.match(o["time"] as string, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
        o["time"] = t["time"] = 0;
        assert.deepEqual(o, t);
        assert.deepEqual(Object.keys(o), Object.keys(t), "same field order");
        const strip = (l: string) => l.replace(/"time":("[^"]*"|\d+)/, "");
        assert.equal(strip(ours.lines[i]!), strip(theirs.lines[i]!));
      }
    }
  });

  it("stamps the time pino's isoTime would, across second boundaries", () => {
    const { log, lines } = capture({ timestamp: pino.stdTimeFunctions.isoTime });
    const a = new AccessLog(log);
    const t0 = Date.now();
    for (let i = 0; i < 3; i++) {
      a.write(RECORDS[0]!);
      const stamped = Date.parse((JSON.parse(lines[i]!) as { time: string }).time);
      assert.ok(stamped >= t0 && stamped <= Date.now(), `${stamped} within the call`);
    }
    const clock = (a as unknown as { clock: { stamp(n: number): string } }).clock;
    for (const n of [
      0, 999, 1000, 1_700_000_000_007, 1_700_000_000_070, 1_700_000_000_999, 1_700_000_001_000,
    ]) {
      assert.equal(clock.stamp(n), `,"time":"${new Date(n).toISOString()}"`);
    }
  });

  it("writes nothing below the logger's level, and follows level changes", () => {
    const { log, lines } = capture({ level: "warn" });
    const a = new AccessLog(log);
    a.write(RECORDS[0]!);
    assert.equal(lines.length, 0);
    log.level = "info";
    a.write(RECORDS[0]!);
    assert.equal(lines.length, 1);
  });

  it("hands lines to pino when the logger formats them itself", () => {
    const { log, lines } = capture({ formatters: { log: (o) => ({ wrapped: o }) } });
    new AccessLog(log).write(RECORDS[0]!);
    const o = JSON.parse(lines[0]!) as { wrapped: { requestId: string }; msg: string };
    assert.equal(o.wrapped.requestId, RECORDS[0]!.requestId);
    assert.equal(o.msg, "access");
  });

  it("escapes only what JSON needs", () => {
    for (const s of [
      "",
      "plain",
      'q"',
      "b\\",
      "\n",
      "\u007f",
      "é",
      "\ud83d\ude00",
      "\udc00",
      "x".repeat(200),
    ]) {
      assert.equal(JSON.parse(jsonString(s)), JSON.parse(JSON.stringify(s)));
    }
    assert.equal(jsonString("plain/path"), '"plain/path"');
  });

  it("writes a duration as JSON.stringify does, for microsecond-rounded values and any other number", () => {
    for (const n of [
      0, 0.001, 0.01, 0.05, 0.1, 0.123, 1, 1.5, 2.05, 10.001, 999.999, 2147483.647, 1e9, 1e21, -1,
    ]) {
      assert.equal(num3(n), JSON.stringify(n), String(n));
    }
    assert.equal(num3(Number.NaN), "null");
    assert.equal(num3(Number.POSITIVE_INFINITY), "null");
    fc.assert(
      fc.property(fc.double({ min: 0, max: 1e7, noNaN: true }), (d) => {
        const rounded = Math.round(d * 1000) / 1000;
        assert.equal(num3(rounded), JSON.stringify(rounded));
        assert.equal(num3(d), JSON.stringify(d));
      }),
      { numRuns: 5_000 },
    );
  });
});
