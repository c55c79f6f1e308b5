// Shared by the policy benchmarks: per-call latency samples with the timer's own cost measured
// and subtracted, and percentiles of them. Sub-microsecond calls need both. The clock is
// performance.now() (a double, in ms, with sub-ns resolution): hrtime.bigint() would allocate two
// BigInts per sample and the garbage collector would show up in the numbers.
import { performance } from "node:perf_hooks";

export function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** The median cost of reading the clock twice around nothing, in ns. */
export function timerOverheadNs(n = 200_000): number {
  const samples = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    const t1 = performance.now();
    samples[i] = (t1 - t0) * 1e6;
  }
  samples.sort();
  return percentile(samples, 50);
}

export interface Timed {
  p50: number;
  p99: number;
  /** From one clock reading around the whole loop: no timer overhead, no tail. */
  mean: number;
}

/**
 * Calls `f(prepare(i))` n times, timing each call of f (not prepare); returns p50/p99 minus
 * `overhead` (never below 0) and the mean from a separate loop timed as a whole (prepare included).
 */
export function measure<A>(
  n: number,
  overhead: number,
  prepare: (i: number) => A,
  f: (a: A) => unknown,
): Timed {
  const samples = new Float64Array(n);
  let sink = 0;
  for (let i = 0; i < n; i++) {
    const a = prepare(i);
    const t0 = performance.now();
    const r = f(a);
    const t1 = performance.now();
    samples[i] = Math.max(0, (t1 - t0) * 1e6 - overhead);
    if (r === undefined) sink++;
  }
  samples.sort();
  const t0 = performance.now();
  for (let i = 0; i < n; i++) if (f(prepare(i)) === undefined) sink++;
  const mean = ((performance.now() - t0) * 1e6) / n;
  if (sink === -1) console.log(sink); // keep the calls observable
  return { p50: percentile(samples, 50), p99: percentile(samples, 99), mean };
}
