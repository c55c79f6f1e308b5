// Control plane at scale: a real ControlPlane (its own process, so its memory and CPU are its own)
// on loopback with 2,000 simulated proxies (fake proxies: the real stream protocol over TLS with a
// bootstrap token each, from a tokens file) and 1,000 services with a policy each. Measures the
// control plane's RSS and CPU, and the time from a policy change written to the store to its ACK by
// every proxy it concerns: a mesh-wide policy (every proxy), a namespace policy (one namespace's
// proxies), one workload's policy. Warm-up first. Goals: RSS <= 1 GB, mesh-wide p99 <= 1 s.
// Knobs: PROXIES, SERVICES, NAMESPACES, CHANGES. Last line: one JSON object.

import { fork } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { mkdir, mkdtemp, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import pino from "pino";
import { ControlPlane, TokenFileAttestor, tokenDigest } from "../src/controlplane/index.js";
import { newKek, parseKek } from "../src/identity/index.js";
import { FakeProxy } from "../test/controlplane-fakeproxy.js";

const PROXIES = Number(process.env["PROXIES"] ?? 2000);
const SERVICES = Number(process.env["SERVICES"] ?? 1000);
const NAMESPACES = Number(process.env["NAMESPACES"] ?? 20);
const CHANGES = Number(process.env["CHANGES"] ?? 10);
const WARMUP = 3;
/** HTTP/2 window the fake proxies grant (bytes); 0 keeps grpc-js's 64 KiB, as the real proxy does. */
const WINDOW = Number(process.env["WINDOW"] ?? 0);

interface Ready {
  port: number;
  bundle: string;
  pid: number;
}

// ---- the control plane process ---------------------------------------------------------------

async function controlPlaneProcess(dir: string): Promise<void> {
  const cp = await ControlPlane.start({
    configPaths: [join(dir, "store")],
    listen: "127.0.0.1:0",
    attestor: new TokenFileAttestor(join(dir, "tokens.json")),
    trustDomain: "cluster.local",
    rootNamespace: "zmesh-system",
    caStore: join(dir, "ca.json"),
    kek: parseKek(readFileSync(join(dir, "kek"), "utf8"), "kek"),
    debugListen: "127.0.0.1:0",
    processMetrics: true,
    ...(process.env["INFLIGHT"] ? { maxInflightPushes: Number(process.env["INFLIGHT"]) } : {}),
    log: pino({ level: process.env["CP_LOG"] ?? "warn" }),
  });
  process.send?.({ port: cp.port, bundle: cp.ca.trustBundlePem(), pid: process.pid } satisfies Ready);
  process.on("message", (m: { cmd: string }) => {
    if (m.cmd === "status") process.send?.({ status: cp.status() });
    if (m.cmd === "memory") process.send?.({ memory: process.memoryUsage() });
    if (m.cmd === "metrics") void cp.metricsText().then((text) => process.send?.({ metrics: text }));
    if (m.cmd === "stop") {
      setTimeout(() => process.exit(0), 3_000).unref();
      void cp.close().then(() => process.exit(0));
    }
  });
}

// ---- the store --------------------------------------------------------------------------------

const nsOf = (svc: number) => `ns${svc % NAMESPACES}`;
const ip = (base: 18 | 19, i: number) => `198.${base}.${Math.floor(i / 250)}.${(i % 250) + 2}`;

function meshWide(n: number): string {
  return `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: mesh-deny-admin, namespace: zmesh-system }
spec:
  action: DENY
  rules: [{ to: [{ operation: { paths: ["/admin-${n}", "/admin-${n}/*"] } }] }]
`;
}

function namespaceWide(n: number): string {
  return `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: ns-deny-debug, namespace: ns0 }
spec:
  action: DENY
  rules: [{ to: [{ operation: { paths: ["/debug-${n}"] } }] }]
`;
}

function servicePolicy(s: number, extra: number): string {
  const ns = nsOf(s);
  const callers = [`svc${(s + 1) % SERVICES}`, `svc${(s + 2) % SERVICES}`];
  if (extra > 0) callers.push(`svc${(s + 2 + extra) % SERVICES}`);
  return `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: svc${s}-callers, namespace: ${ns} }
spec:
  selector: { matchLabels: { app: svc${s} } }
  rules:
    - from: [{ source: { principals: [${callers.map((c, i) => `"cluster.local/ns/${nsOf((s + 1 + i) % SERVICES)}/sa/${c}"`).join(", ")}] } }]
      to: [{ operation: { methods: ["GET", "POST"], paths: ["/api/*"] } }]
`;
}

async function writeStore(dir: string): Promise<Map<string, string>> {
  const store = join(dir, "store");
  await mkdir(store, { recursive: true });
  const services: string[] = [];
  const policies: string[] = [];
  for (let s = 0; s < SERVICES; s++) {
    services.push(`apiVersion: v1
kind: Service
metadata: { name: svc${s}, namespace: ${nsOf(s)} }
spec:
  selector: { app: svc${s} }
  clusterIP: ${ip(19, s)}
  ports: [{ name: http, port: 80, targetPort: 8080 }]
`);
    if (s > 0) policies.push(servicePolicy(s, 0));
  }
  const entries: string[] = [];
  const tokens = new Map<string, string>();
  const table: Record<string, { namespace: string; entry: string }> = {};
  for (let p = 0; p < PROXIES; p++) {
    const s = p % SERVICES;
    const name = `svc${s}-${Math.floor(p / SERVICES)}`;
    entries.push(`apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: ${name}, namespace: ${nsOf(s)}, labels: { app: svc${s} } }
spec: { address: ${ip(18, p)}, serviceAccount: svc${s}, labels: { app: svc${s} } }
`);
    const token = randomBytes(24).toString("base64url");
    tokens.set(`${nsOf(s)}/${name}`, token);
    table[tokenDigest(token)] = { namespace: nsOf(s), entry: name };
  }
  // SERVICES_IN_SNAPSHOT=0 leaves the Services out of the store: what a push would cost if snapshots
  // carried services only when they change (they now do: the floor it gives is for comparison).
  await writeFile(
    join(store, "services.yaml"),
    process.env["SERVICES_IN_SNAPSHOT"] === "0" ? "# no services\n" : services.join("---\n"),
  );
  await writeFile(join(store, "instances.yaml"), entries.join("---\n"));
  await writeFile(join(store, "policies.yaml"), policies.join("---\n"));
  await writeFile(join(store, "svc0.yaml"), servicePolicy(0, 0));
  await writeFile(join(store, "mesh.yaml"), meshWide(0));
  await writeFile(join(store, "namespace.yaml"), namespaceWide(0));
  await writeFile(join(dir, "tokens.json"), JSON.stringify(table), { mode: 0o600 });
  await writeFile(join(dir, "kek"), newKek(), { mode: 0o600 });
  return tokens;
}

async function renameWrite(file: string, text: string): Promise<void> {
  await writeFile(`${file}.tmp`, text);
  await rename(`${file}.tmp`, file);
}

// ---- measuring --------------------------------------------------------------------------------

function procStat(pid: number): { rssMb: number; peakMb: number; cpuSec: number; sysSec: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (k: string) => Number(status.match(new RegExp(`^${k}:\\s+(\\d+)`, "m"))?.[1] ?? 0);
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const ticks = Number(f[11]) + Number(f[12]); // utime + stime
  return {
    rssMb: kb("VmRSS") / 1024,
    peakMb: kb("VmHWM") / 1024,
    cpuSec: ticks / 100,
    sysSec: Number(f[12]) / 100,
  };
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))] ?? Number.NaN;
};
const round = (x: number) => Math.round(x * 10) / 10;

/** Writes a change and waits until every proxy in `who` has applied a push newer than the write. */
async function change(
  who: FakeProxy[],
  write: () => Promise<void>,
): Promise<{ allMs: number; perProxyMs: number[] }> {
  const before = who.map((p) => p.received.length);
  const t0 = performance.now();
  await write();
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (who.every((p, i) => p.received.length > before[i]!)) break;
    if (Date.now() > deadline) {
      const late = who.filter((p, i) => p.received.length <= before[i]!).length;
      throw new Error(`${late} proxies did not get the change within 60 s`);
    }
    await new Promise((r) => setTimeout(r, 5));
  }
  const perProxyMs = who.map((p) => p.received.at(-1)!.at - t0);
  return { allMs: Math.max(...perProxyMs), perProxyMs };
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), "zmesh-bench-cp-"));
  const self = fileURLToPath(import.meta.url);
  let child: ReturnType<typeof fork> | undefined;
  const proxies: FakeProxy[] = [];
  try {
    const tokens = await writeStore(dir);
    const tStart = performance.now();
    child = fork(self, ["--control-plane", dir], {
      stdio: ["ignore", "inherit", "inherit", "ipc"],
      // CP_PROF=DIR writes a CPU profile of the control plane there.
      execArgv: process.env["CP_PROF"] ? ["--cpu-prof", `--cpu-prof-dir=${process.env["CP_PROF"]}`] : [],
    });
    const ready = await new Promise<Ready>((resolve, reject) => {
      child!.once("message", (m) => resolve(m as Ready));
      child!.once("exit", (code) => reject(new Error(`control plane exited with ${code}`)));
    });
    const startSec = (performance.now() - tStart) / 1000;
    const idle = procStat(ready.pid);
    console.log(`control plane up in ${startSec.toFixed(1)} s, RSS ${idle.rssMb.toFixed(0)} MB`);

    // Connect in waves, like proxies of a mesh coming up, until each has its first snapshot.
    const tConnect = performance.now();
    const byNs = new Map<string, FakeProxy[]>();
    let svc0: FakeProxy[] = [];
    for (const [key, credential] of tokens) {
      const p = new FakeProxy({
        address: `127.0.0.1:${ready.port}`,
        trustBundlePem: ready.bundle,
        credential,
        ...(WINDOW ? { flowControlWindow: WINDOW } : {}),
      });
      proxies.push(p.start());
      const ns = key.split("/")[0]!;
      byNs.set(ns, [...(byNs.get(ns) ?? []), p]);
      if (/^ns0\/svc0-\d+$/.test(key)) svc0 = [...svc0, p];
      if (proxies.length % 200 === 0) {
        const wave = proxies.slice(-200);
        await Promise.all(wave.map((q) => q.until(() => q.received.length > 0, 120_000)));
      }
    }
    await Promise.all(proxies.map((q) => q.until(() => q.received.length > 0, 120_000)));
    const connectSec = (performance.now() - tConnect) / 1000;
    const snapshotBytes = proxies[0]!.received[0]!.bytes;
    const connected = procStat(ready.pid);
    const memory = await new Promise<NodeJS.MemoryUsage>((resolve) => {
      child!.once("message", (m) => resolve((m as { memory: NodeJS.MemoryUsage }).memory));
      child!.send({ cmd: "memory" });
    });
    const mb = (n: number) => Math.round(n / 2 ** 20);
    console.log(
      `control plane memory: rss ${mb(memory.rss)} MB, heap ${mb(memory.heapUsed)}/${mb(memory.heapTotal)} MB, external ${mb(memory.external)} MB, array buffers ${mb(memory.arrayBuffers)} MB`,
    );
    console.log(
      `${proxies.length} proxies connected and synced in ${connectSec.toFixed(1)} s; snapshot ${(snapshotBytes / 1024).toFixed(0)} KiB; RSS ${connected.rssMb.toFixed(0)} MB`,
    );

    const store = join(dir, "store");
    let n = 1;
    const runs = async (what: string, who: FakeProxy[], file: string, text: (i: number) => string) => {
      for (let w = 0; w < WARMUP; w++) await change(who, () => renameWrite(join(store, file), text(n++)));
      const s0 = procStat(ready.pid);
      const cpu0 = s0.cpuSec;
      const t0 = performance.now();
      const all: number[] = [];
      const per: number[] = [];
      for (let c = 0; c < CHANGES; c++) {
        const r = await change(who, () => renameWrite(join(store, file), text(n++)));
        all.push(r.allMs);
        per.push(...r.perProxyMs);
        await new Promise((r2) => setTimeout(r2, 200));
      }
      const s1 = procStat(ready.pid);
      const cpuSec = s1.cpuSec - cpu0;
      const sysSec = s1.sysSec - s0.sysSec;
      const wallSec = (performance.now() - t0) / 1000;
      const out = {
        proxies: who.length,
        all_acked_p50_ms: round(pct(all, 50)),
        all_acked_p99_ms: round(pct(all, 99)),
        all_acked_max_ms: round(Math.max(...all)),
        per_proxy_p50_ms: round(pct(per, 50)),
        per_proxy_p99_ms: round(pct(per, 99)),
        cp_cpu_sec_per_change: Math.round((cpuSec / CHANGES) * 1000) / 1000,
        cp_kernel_share: Math.round((sysSec / cpuSec) * 100) / 100,
        cp_cpu_util: Math.round((cpuSec / wallSec) * 100) / 100,
        push_kib: Math.round((who[0]?.received.at(-1)?.bytes ?? 0) / 102.4) / 10,
      };
      console.log(`${what}: ${JSON.stringify(out)}`);
      return out;
    };
    const only = process.env["ONLY"]; // "mesh", "namespace" or "workload": one kind of change
    const skip = { proxies: 0, skipped: true };
    const targetedResult =
      !only || only === "workload"
        ? await runs("one workload's policy", svc0, "svc0.yaml", (i) => servicePolicy(0, i))
        : skip;
    const namespaceResult =
      !only || only === "namespace"
        ? await runs("namespace policy", byNs.get("ns0") ?? [], "namespace.yaml", namespaceWide)
        : skip;
    const meshWideResult =
      !only || only === "mesh" ? await runs("mesh-wide policy", proxies, "mesh.yaml", meshWide) : skip;
    const status = () =>
      new Promise<{ proxies: { inSync: boolean }[] }>((resolve) => {
        child!.once("message", (m) => resolve((m as { status: { proxies: { inSync: boolean }[] } }).status));
        child!.send({ cmd: "status" });
      });
    // A reconnect storm: every proxy drops its stream and comes back at once with the version it
    // holds (a network blip, a control-plane restart). Measured: from the first reconnect to the
    // control plane holding all of them attested and in sync (nothing to push).
    const reconnectStorm = async () => {
      const held = proxies.map((p) => p.applied);
      for (const p of proxies) p.close();
      for (let i = 0; i < 600 && (await status()).proxies.length > 0; i++)
        await new Promise((r) => setTimeout(r, 100));
      const s0 = procStat(ready.pid);
      const t0 = performance.now();
      const fresh = [...tokens.values()].map((credential, i) =>
        new FakeProxy({
          address: `127.0.0.1:${ready.port}`,
          trustBundlePem: ready.bundle,
          credential,
          applied: held[i]!,
        }).start(),
      );
      proxies.splice(0, proxies.length, ...fresh);
      let synced = 0;
      for (let i = 0; i < 1200; i++) {
        const st = await status();
        synced = st.proxies.filter((p) => p.inSync).length;
        if (synced === PROXIES) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      const out = {
        proxies: PROXIES,
        in_sync: synced,
        all_in_sync_sec: round((performance.now() - t0) / 1000),
        cp_cpu_sec: round(procStat(ready.pid).cpuSec - s0.cpuSec),
        pushes: fresh.reduce((n, p) => n + p.received.length, 0),
      };
      console.log(`reconnect storm: ${JSON.stringify(out)}`);
      return out;
    };
    const stormResult = process.env["STORM"] === "0" ? skip : await reconnectStorm();
    const end = procStat(ready.pid);
    const metrics = await new Promise<string>((resolve) => {
      child!.once("message", (m) => resolve((m as { metrics: string }).metrics));
      child!.send({ cmd: "metrics" });
    });
    const line = (name: string) =>
      Number(metrics.match(new RegExp(`^${name} (\\S+)`, "m"))?.[1] ?? Number.NaN);
    const result = {
      bench: "controlplane-scale",
      proxies: PROXIES,
      services: SERVICES,
      policies: SERVICES + 2,
      namespaces: NAMESPACES,
      changes: CHANGES,
      snapshot_kib: Math.round(snapshotBytes / 1024),
      cp_start_sec: round(startSec),
      connect_sync_sec: round(connectSec),
      cp_rss_mb: {
        idle: Math.round(idle.rssMb),
        connected: Math.round(connected.rssMb),
        end: Math.round(end.rssMb),
        peak: Math.round(end.peakMb),
      },
      cp_cpu_sec_total: round(end.cpuSec),
      mesh_wide: meshWideResult,
      namespace: namespaceResult,
      one_workload: targetedResult,
      reconnect_storm: stormResult,
      cp_pushes: {
        with_services: line('pilot_xds_pushes\\{type="snapshot"\\}'),
        without_services: line('pilot_xds_pushes\\{type="snapshot_without_services"\\}'),
      },
      goals: { rss_mb: 1024, mesh_wide_p99_ms: 1000 },
      ok:
        end.peakMb <= 1024 && "all_acked_p99_ms" in meshWideResult && meshWideResult.all_acked_p99_ms <= 1000,
    };
    console.log(JSON.stringify(result));
  } finally {
    for (const p of proxies) p.close();
    if (child?.connected) {
      const exited = new Promise((r) => child!.once("exit", r));
      child.send({ cmd: "stop" });
      await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
    }
    child?.kill("SIGKILL");
    await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv[2] === "--control-plane") await controlPlaneProcess(process.argv[3]!);
else {
  await main();
  process.exit(0);
}
