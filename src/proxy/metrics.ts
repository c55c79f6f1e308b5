// Labelled counters and histograms whose per-request cost is a Map lookup and a few array
// increments, exposed through prom-client's Registry (same text format, same names). prom-client's
// own metrics validate and hash every label on every call, even through `labels()` children,
// which cost the proxy more CPU than relaying the request; here a label tuple is resolved once.

import type { Registry } from "prom-client";

type Labels = Record<string, string>;

interface Value {
  metricName?: string;
  labels: Labels;
  value: number;
}

/** One label tuple's numbers: a count (counters) or buckets, sum and count (histograms). */
export class Series {
  count = 0;
  sum = 0;
  readonly buckets: Float64Array;

  constructor(
    readonly labels: Labels,
    private readonly bounds: readonly number[],
  ) {
    this.buckets = new Float64Array(bounds.length);
  }

  inc(by = 1): void {
    this.count += by;
  }

  observe(v: number): void {
    this.count++;
    this.sum += v;
    const b = this.bounds;
    for (let i = 0; i < b.length; i++) {
      if (v <= b[i]!) {
        this.buckets[i]!++;
        return;
      }
    }
  }
}

/** A counter (bounds empty) or histogram, registered in `registry` under `name`. */
export class FastMetric {
  readonly aggregator = "sum";
  private readonly series = new Map<string, Series>();

  constructor(
    registry: Registry,
    readonly name: string,
    readonly help: string,
    readonly type: "counter" | "histogram",
    private readonly bounds: readonly number[] = [],
  ) {
    registry.registerMetric(this as never);
  }

  /** The series of a label tuple; `key` identifies the tuple, `labels` is only built the first time. */
  at(key: string, labels: () => Labels): Series {
    let s = this.series.get(key);
    if (!s) {
      s = new Series(labels(), this.bounds);
      this.series.set(key, s);
    }
    return s;
  }

  /** prom-client's reads at scrape time. */
  get() {
    return Promise.resolve(this.snapshot());
  }

  getForPromString() {
    return Promise.resolve(this.snapshot());
  }

  private snapshot() {
    const values: Value[] = [];
    for (const s of this.series.values()) {
      if (this.type === "counter") {
        values.push({ labels: s.labels, value: s.count });
        continue;
      }
      let acc = 0;
      for (let i = 0; i < this.bounds.length; i++) {
        acc += s.buckets[i]!;
        values.push({
          metricName: `${this.name}_bucket`,
          labels: { le: String(this.bounds[i]), ...s.labels },
          value: acc,
        });
      }
      values.push({ metricName: `${this.name}_bucket`, labels: { le: "+Inf", ...s.labels }, value: s.count });
      values.push({ metricName: `${this.name}_sum`, labels: s.labels, value: s.sum });
      values.push({ metricName: `${this.name}_count`, labels: s.labels, value: s.count });
    }
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator };
  }

  /**
   * Registry reset: values go to zero and the series stay. Unlike prom-client's own reset, which
   * drops labelled series: Telemetry holds series across requests (one lookup per request).
   */
  reset(): void {
    for (const s of this.series.values()) {
      s.count = 0;
      s.sum = 0;
      s.buckets.fill(0);
    }
  }
}
