// FastMetric: what Prometheus reads is what prom-client's own Counter and Histogram would print
// for the same observations (cumulative buckets, +Inf, sum, count), label tuples kept apart.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Counter, Histogram, Registry } from "prom-client";
import { FastMetric } from "./metrics.js";

describe("FastMetric", () => {
  it("prints the same text as prom-client's Counter and Histogram", async () => {
    const ours = new Registry();
    const theirs = new Registry();
    const c = new FastMetric(ours, "t_total", "help c", "counter");
    const h = new FastMetric(ours, "t_ms", "help h", "histogram", [1, 5, 10]);
    const pc = new Counter({ name: "t_total", help: "help c", labelNames: ["a", "b"], registers: [theirs] });
    const ph = new Histogram({
      name: "t_ms",
      help: "help h",
      labelNames: ["a", "b"],
      buckets: [1, 5, 10],
      registers: [theirs],
    });
    const obs: [string, string, number][] = [
      ["x", "1", 0.5],
      ["x", "1", 5],
      ["y", "2", 7],
      ["x", "1", 99],
      ["y", "2", 1],
    ];
    for (const [a, b, v] of obs) {
      const labels = () => ({ a, b });
      c.at(`${a}|${b}`, labels).inc();
      h.at(`${a}|${b}`, labels).observe(v);
      pc.inc({ a, b });
      ph.observe({ a, b }, v);
    }
    assert.equal(await ours.metrics(), await theirs.metrics());
  });
});
