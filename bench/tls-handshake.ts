// Mutual TLS 1.3 handshakes between sidecars, full vs resumed: the outbound's dialMtls (with its
// session cache, or a fresh cache per dial for full handshakes) against a tls.Server set up like
// the inbound (client certificate required and verified), both ends in this one process (run it
// under `taskset -c 0` for one core). Each connection: handshake, secure naming, one byte back,
// close. Last line: one JSON object with handshakes/s and CPU ms per handshake (both ends) per mode.
import type { AddressInfo } from "node:net";
import { createServer, type TLSSocket } from "node:tls";
import { CertificateAuthority } from "../src/identity/index.js";
import { dialMtls } from "../src/proxy/dial.js";
import { SessionCache } from "../src/proxy/sessions.js";
import type { Certificate } from "../src/proxy/state.js";

const SECONDS = Number(process.env["BENCH_SECONDS"] ?? 3);
const CONCURRENCY = 8;
const ROUNDS = 3;

const ca = await CertificateAuthority.create();
const id = (sa: string) => `spiffe://cluster.local/ns/bench/sa/${sa}`;
async function svid(sa: string): Promise<Certificate> {
  const { keyPem, svid } = await ca.issue(id(sa));
  return { keyPem, chainPem: svid.chainPem, spiffeId: svid.spiffeId } as Certificate;
}
const serverCert = await svid("server");
const clientCert = await svid("client");
const bundle = ca.trustBundlePem();

const server = createServer(
  {
    key: serverCert.keyPem,
    cert: serverCert.chainPem.join(""),
    ca: bundle,
    requestCert: true,
    rejectUnauthorized: true,
    minVersion: "TLSv1.3",
    ALPNProtocols: ["tcp"],
  },
  (s: TLSSocket) => {
    s.on("error", () => {});
    s.end("x");
  },
);
await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
const port = (server.address() as AddressInfo).port;
const state = { cert: clientCert, trustBundlePem: bundle };
const allowed = new Set([id("server")]);
const route = () => ({ allowed, service: { name: "server", namespace: "bench" } }) as never;

function once(sessions: SessionCache): Promise<boolean> {
  return new Promise((resolve, reject) => {
    dialMtls(state, sessions, "127.0.0.1", port, ["tcp"], route, (err, sock) => {
      if (err || !sock) return reject(err);
      const reused = sock.isSessionReused();
      sock.on("data", () => {});
      sock.on("error", () => {});
      sock.on("close", () => resolve(reused));
    });
  });
}

async function run(resume: boolean): Promise<{ hs_per_s: number; cpu_ms_per_hs: number; resumed: number }> {
  const shared = new SessionCache();
  let n = 0;
  let resumed = 0;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const end = t0 + SECONDS * 1000;
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (performance.now() < end) {
        if (await once(resume ? shared : new SessionCache())) resumed++;
        n++;
      }
    }),
  );
  const ms = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  return {
    hs_per_s: Math.round((n * 1000) / ms),
    cpu_ms_per_hs: +((cpu.user + cpu.system) / 1000 / n).toFixed(3),
    resumed: +(resumed / n).toFixed(3),
  };
}

await run(false); // warm up (JIT, first tickets)
await run(true);
const full: Awaited<ReturnType<typeof run>>[] = [];
const res: Awaited<ReturnType<typeof run>>[] = [];
for (let r = 0; r < ROUNDS; r++) {
  full.push(await run(false));
  res.push(await run(true));
}
server.close();
const med = <T>(a: T[], k: (x: T) => number) => [...a].sort((x, y) => k(x) - k(y))[Math.floor(a.length / 2)]!;
const f = med(full, (x) => x.hs_per_s);
const r = med(res, (x) => x.hs_per_s);
for (const [mode, a] of [
  ["full", full],
  ["resumed", res],
] as const)
  console.error(`${mode}: ${a.map((x) => `${x.hs_per_s}/s ${x.cpu_ms_per_hs} ms`).join(", ")}`);
console.log(
  JSON.stringify({
    bench: "tls-handshake",
    seconds: SECONDS,
    concurrency: CONCURRENCY,
    full_hs_per_s: f.hs_per_s,
    full_cpu_ms_per_hs: f.cpu_ms_per_hs,
    resumed_hs_per_s: r.hs_per_s,
    resumed_cpu_ms_per_hs: r.cpu_ms_per_hs,
    resumed_fraction: r.resumed,
    speedup: +(r.hs_per_s / f.hs_per_s).toFixed(2),
  }),
);
