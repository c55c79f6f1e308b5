// The per-connection cost of reading a peer's SPIFFE ID from its certificate, cache hit and miss.
// Last line: one JSON object with medians in microseconds.
import { CertificateAuthority, spiffeIdFromCertDer } from "../src/identity/index.js";
import { decodePem } from "../src/identity/pem.js";

const ca = await CertificateAuthority.create();
const ders: Uint8Array[] = [];
for (let i = 0; i < 3000; i++) {
  const { svid } = await ca.issue(`spiffe://cluster.local/ns/shop/sa/w${i}`);
  const blocks = decodePem(svid.chainPem[0]!);
  if (typeof blocks === "string") throw new Error(blocks);
  ders.push(blocks[0]!.der);
}
function time(fn: () => void, n: number): number {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) fn();
  return Number(process.hrtime.bigint() - t0) / 1e3 / n;
}
const hits: number[] = [];
const misses: number[] = [];
for (let r = 0; r < 5; r++) {
  // Misses: 3,000 distinct certificates through the 1,000-entry cache, so every lookup parses.
  let k = 0;
  misses.push(time(() => spiffeIdFromCertDer(ders[k++ % ders.length]!), ders.length));
  hits.push(time(() => spiffeIdFromCertDer(ders[0]!), 100_000));
}
const med = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!;
console.log(
  JSON.stringify({
    bench: "peer-id",
    hit_us_median: +med(hits).toFixed(3),
    miss_us_median: +med(misses).toFixed(2),
  }),
);
