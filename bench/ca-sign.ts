// Certificates signed per second on one core: CertificateAuthority.signCsr on pre-made CSRs (the
// workload side, key generation and CSR signing, is not the CA's cost). Warm-up, then several
// timed runs; the median is reported. Last line: one JSON object.
import { CertificateAuthority, generateCsr } from "../src/identity/index.js";

const RUNS = Number(process.env["RUNS"] ?? 5);
const PER_RUN = Number(process.env["PER_RUN"] ?? 2000);
const ca = await CertificateAuthority.create();
const id = "spiffe://cluster.local/ns/shop/sa/orders";
const csrs = await Promise.all(Array.from({ length: 200 }, () => generateCsr(id)));

async function run(n: number): Promise<number> {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await ca.signCsr(csrs[i % csrs.length]!.csrPem, id);
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

await run(500); // warm-up: JIT and caches
const rates: number[] = [];
for (let r = 0; r < RUNS; r++) rates.push(PER_RUN / (await run(PER_RUN)));
rates.sort((a, b) => a - b);
const median = rates[Math.floor(rates.length / 2)]!;
console.log(`signCsr: ${rates.map((x) => x.toFixed(0)).join(", ")} /s; median ${median.toFixed(0)} /s`);
console.log(
  JSON.stringify({
    bench: "ca-sign",
    runs: RUNS,
    per_run: PER_RUN,
    signs_per_sec_median: Math.round(median),
    goal: 2000,
  }),
);
