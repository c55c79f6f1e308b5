// bench:chain: the data plane end to end on loopback, three chains side by side in one run:
//   direct   load generator -> app
//   zmesh    load generator -> outbound sidecar -> mTLS -> inbound sidecar (one L7 ALLOW policy) -> app
//   haproxy  the same chain from two HAProxy instances doing mTLS in HTTP mode
//   node_pipe (only when asked) two Node processes joining sockets with stream.pipe, mTLS between
//            them: no HTTP, no policy; the floor of any Node proxy on this path (chain-pipe.ts)
// For each: max rps (closed loop, N connections, fixed time) and latency at a fixed 1,000 rps
// (open loop) with 1 KiB responses; for each proxy process, CPU per 1,000 rps and RSS from /proc.
// Warm-up, pinning (load generator on one core, the rest on the other), repeated runs, medians.
// Method and results: bench/README.md, "Data plane chain". Last line: one JSON object.

import { execFileSync, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { request } from "node:http";
import { connect } from "node:net";
import { availableParallelism, loadavg, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { PROXY_NODE_FLAGS } from "../src/config/index.js";
import type { SidecarHeap, SidecarHeapAnswer, SidecarJob, SidecarMessage } from "./chain-sidecar.js";
import {
  type Child,
  firstMessage,
  running,
  spawnNode as spawnChild,
  stopAll,
  stopChild,
  tail,
  track,
} from "./lib/children.js";
import { freePort, startBenchMesh } from "./lib/mesh.js";
import { CLK_TCK, cpuSeconds, statusKb } from "./lib/proc.js";
import type { Job, LoadResult, Reply, Request } from "./loadgen.js";

const here = dirname(fileURLToPath(import.meta.url));

const { values: opt } = parseArgs({
  options: {
    json: { type: "boolean", default: false },
    runs: { type: "string", default: "3" },
    "max-seconds": { type: "string", default: "5" },
    /** Discarded rounds (a max and a rate job each, full length) before the measured runs. */
    "warm-rounds": { type: "string", default: "2" },
    "rate-seconds": { type: "string", default: "8" },
    rate: { type: "string", default: "1000" },
    connections: { type: "string", default: "32" },
    "rate-connections": { type: "string", default: "16" },
    only: { type: "string", default: "direct,zmesh,haproxy" },
    "no-access-log": { type: "boolean", default: false },
    "no-pin": { type: "boolean", default: false },
    "no-install": { type: "boolean", default: false },
    profile: { type: "string" },
    /** Like --profile, but the kernel's view: `perf record` on the chain's core (real CPU, kernel included). */
    perf: { type: "string" },
    /** With --perf: the job perf watches, `max` (closed loop) or `rate` (the fixed rate). */
    "perf-job": { type: "string", default: "max" },
    /** With --perf: also count each sidecar's syscalls (strace -c) during the job. */
    "perf-strace": { type: "boolean", default: false },
    /** Extra node flags for the sidecar processes, space-separated, e.g. "--max-semi-space-size=4". */
    // The proxy's own launch flags unless told otherwise (--sidecar-flags="" runs bare node).
    "sidecar-flags": { type: "string", default: PROXY_NODE_FLAGS.join(" ") },
    /**
     * A/B in one run: a second zmesh chain, `zmesh_b`, whose sidecars run another built checkout
     * (DIR/dist/bench/chain-sidecar.js), measured in turn with `zmesh` run after run.
     */
    compare: { type: "string" },
  },
  strict: true,
});

/** A numeric option, clamped so that no setting can make a loop unbounded. */
function num(name: keyof typeof opt, lo: number, hi: number): number {
  const v = Number(opt[name]);
  if (!Number.isFinite(v) || v < lo || v > hi) throw new Error(`--${name} must be between ${lo} and ${hi}`);
  return v;
}

const RUNS = num("runs", 1, 9);
const MAX_MS = num("max-seconds", 1, 60) * 1000;
const RATE_MS = num("rate-seconds", 1, 60) * 1000;
const RATE = num("rate", 1, 50_000);
const CONNECTIONS = num("connections", 1, 1024);
const RATE_CONNECTIONS = num("rate-connections", 1, 1024);
const ACCESS_LOG = !opt["no-access-log"];
const SIDECAR_FLAGS = opt["sidecar-flags"].split(" ").filter(Boolean);
for (const f of SIDECAR_FLAGS)
  if (!f.startsWith("--")) throw new Error(`--sidecar-flags: ${f} is not a node flag`);
const BODY_BYTES = 1024;
const WARM_ROUNDS = num("warm-rounds", 0, 5);
/** Before the measured runs and between warm-up rounds: past the sidecars' 4 s pool idle bound. */
const WARM_PAUSE_MS = 5_000;
const PAUSE_MS = 500;
const PATH_ALLOWED = "/api/item";
const LOADGEN_CPU = 0;
const REST_CPU = 1;

type Name = "direct" | "zmesh" | "zmesh_b" | "haproxy" | "node_pipe";
const NAMES: Name[] = ["direct", "zmesh", "zmesh_b", "haproxy", "node_pipe"];
const only = new Set(opt.only.split(",").map((s) => s.trim()));
const COMPARE_SIDECAR = opt.compare
  ? join(resolve(opt.compare), "dist", "bench", "chain-sidecar.js")
  : undefined;
if (COMPARE_SIDECAR) {
  if (!existsSync(COMPARE_SIDECAR))
    throw new Error(`--compare: ${COMPARE_SIDECAR} not found (build that checkout first)`);
  only.add("zmesh_b");
} else only.delete("zmesh_b");
/** Hard limit of a whole run: past it, everything started is stopped and the run fails. */
const WATCHDOG_MS = Math.max(
  9 * 60_000,
  // Twice the planned time: every chain's warm-up rounds and runs (a max job, a pause, a rate job
  // and ~2 s of set-up each), the pauses after warm-up rounds, and a minute for the rest.
  2 *
    (only.size * (WARM_ROUNDS + RUNS) * (MAX_MS + PAUSE_MS + RATE_MS + 2_000) +
      WARM_ROUNDS * WARM_PAUSE_MS +
      60_000),
);
for (const n of only) if (!NAMES.includes(n as Name)) throw new Error(`--only: unknown chain ${n}`);

const say = (line: string) => process.stderr.write(`[bench:chain] ${line}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// Child processes (bench/lib/children.ts): every one is tracked, and stopped by its pid at the end.

/** `BENCH_STDOUT_DIR=dir`: each child's stdout goes to `dir/<name>.out` (e.g. with --trace-gc), not /dev/null. */
const STDOUT_DIR = process.env["BENCH_STDOUT_DIR"];

function spawnNode(name: string, script: string, args: string[] = [], execArgv: string[] = []): Child {
  return spawnChild(here, name, script, { args, execArgv, stdoutDir: STDOUT_DIR });
}

// ---------------------------------------------------------------------------------------------
// Cores and /proc.

/** Busy CPU seconds of the whole machine (all CPUs), from /proc/stat. */
function machineBusySeconds(): number {
  const f = (readFileSync("/proc/stat", "utf8").split("\n")[0] ?? "")
    .trim()
    .split(/\s+/)
    .slice(1)
    .map(Number);
  const total = f.reduce((a, b) => a + b, 0);
  return (total - (f[3] ?? 0) - (f[4] ?? 0)) / CLK_TCK; // minus idle and iowait
}

/** CPU seconds of this process and every child still running. */
function ourCpuSeconds(): number {
  const me = process.cpuUsage();
  let s = (me.user + me.system) / 1e6;
  for (const c of running()) {
    try {
      s += cpuSeconds(c.proc.pid!);
    } catch {
      // exited between the check and the read
    }
  }
  return s;
}

const canPin = !opt["no-pin"] && availableParallelism() >= 2 && hasCommand("taskset");

/** Moves a process and all its threads to one CPU; later threads inherit it. */
function pin(pid: number, cpu: number): void {
  if (!canPin) return;
  execFileSync("taskset", ["-a", "-p", "-c", String(cpu), String(pid)], { stdio: "ignore" });
}

function hasCommand(cmd: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" }).status === 0;
}

function findHaproxy(): string | undefined {
  for (const p of ["/usr/sbin/haproxy", "/usr/bin/haproxy", "/usr/local/sbin/haproxy"])
    if (existsSync(p)) return p;
  const r = spawnSync("sh", ["-c", "command -v haproxy"], { encoding: "utf8" });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

// ---------------------------------------------------------------------------------------------
// Sockets.

/** Resolves once something accepts connections on the port; gives up after `ms`. */
async function waitPort(port: number, ms: number): Promise<void> {
  const until = Date.now() + ms;
  for (let i = 0; i < 1_000 && Date.now() < until; i++) {
    const ok = await new Promise<boolean>((r) => {
      const s = connect({ host: "127.0.0.1", port }, () => {
        s.destroy();
        r(true);
      });
      s.on("error", () => r(false));
    });
    if (ok) return;
    await sleep(50);
  }
  throw new Error(`nothing listens on 127.0.0.1:${port} after ${ms} ms`);
}

/** One request from the parent, to check what a chain answers before loading it. */
function probe(port: number, method: string, path: string): Promise<{ status: number; bytes: number }> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: "127.0.0.1",
        port,
        method,
        path,
        agent: false,
        headers: { host: "bench.local", "content-length": "0" },
      },
      (res) => {
        let bytes = 0;
        res.on("data", (d: Buffer) => {
          bytes += d.length;
        });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, bytes }));
        res.on("error", reject);
      },
    );
    req.setTimeout(5_000, () => req.destroy(new Error("probe timed out")));
    req.on("error", reject);
    req.end();
  });
}

// ---------------------------------------------------------------------------------------------
// The load generator, in its own process on its own core.

class Loadgen {
  private next = 1;
  private constructor(readonly child: Child) {}

  static async start(): Promise<Loadgen> {
    const c = spawnNode("loadgen", "loadgen.js");
    await new Promise<void>((r, j) => {
      c.proc.once("spawn", r);
      c.proc.once("error", j);
    });
    pin(c.proc.pid!, LOADGEN_CPU);
    return new Loadgen(c);
  }

  get pid(): number {
    return this.child.proc.pid!;
  }

  run(job: Job): Promise<LoadResult> {
    const id = this.next++;
    const p = new Promise<LoadResult>((resolve, reject) => {
      const timer = setTimeout(
        () => done(new Error(`load job ${id} did not finish`)),
        job.durationMs + 20_000,
      );
      const onMsg = (m: Reply) => {
        if (m.id !== id) return;
        if ("error" in m) done(new Error(`load generator: ${m.error}`));
        else done(undefined, m.result);
      };
      const onExit = () => done(new Error(`load generator exited: ${tail(this.child)}`));
      const done = (err: Error | undefined, r?: LoadResult) => {
        clearTimeout(timer);
        this.child.proc.off("message", onMsg);
        this.child.proc.off("exit", onExit);
        if (err) reject(err);
        else resolve(r!);
      };
      this.child.proc.on("message", onMsg);
      this.child.proc.once("exit", onExit);
    });
    this.child.proc.send({ id, job } satisfies Request);
    return p;
  }
}

// ---------------------------------------------------------------------------------------------
// The chains.

interface ProxyProc {
  name: string;
  pid: number;
  /** zmesh sidecars: V8's view of their memory, asked over IPC (see chain-sidecar.ts). */
  heap?: () => Promise<SidecarHeap>;
}

interface RssParts {
  anon: number;
  file: number;
  v8_heap_total?: number;
}

/** Resident memory of a process in MB: private (anonymous: heaps, buffers) and file-backed (mapped code). */
function rssParts(pid: number): RssParts {
  return { anon: r1(statusKb(pid, "RssAnon") / 1024), file: r1(statusKb(pid, "RssFile") / 1024) };
}

interface Chain {
  name: Name;
  /** Where the load generator connects. */
  port: number;
  proxies: ProxyProc[];
  /** What a request the policy does not allow gets (the app itself answers 200 to anything). */
  deniedStatus: number;
  close(): Promise<void>;
}

async function startApp(): Promise<{ port: number; child: Child }> {
  const child = spawnNode("app", "chain-app.js", [String(BODY_BYTES)]);
  const { port } = await firstMessage<{ port: number }>(child, 10_000);
  return { port, child };
}

/** Asks a sidecar for its V8 heap figures (answered over IPC). */
const askHeap = (c: Child) => async (): Promise<SidecarHeap> => {
  c.proc.send("heap");
  return (await firstMessage<SidecarHeapAnswer>(c, 5_000)).heap;
};

/**
 * The zmesh chain: the real ControlPlane in this process (idle once the proxies have their
 * config and certificates), each Sidecar in a child process of its own.
 */
async function zmeshChain(
  appPort: number,
  execArgv: (role: string) => string[] = () => [],
  name: "zmesh" | "zmesh_b" = "zmesh",
  script = "chain-sidecar.js",
): Promise<Chain> {
  const mesh = await startBenchMesh(
    { vipPort: 80, portName: "http", policyName: "server-readers", methods: ["GET"], paths: ["/api/*"] },
    appPort,
    "zmesh-bench-",
  );
  const base = { ...mesh.base, accessLog: ACCESS_LOG };
  const started: Child[] = [];
  const close = async () => {
    await Promise.all(started.map((c) => stopChild(c)));
    await mesh.close();
  };
  try {
    const sidecar = async (role: "inbound" | "outbound", credential: string) => {
      const c = spawnNode(`${name}-${role}`, script, [], [...SIDECAR_FLAGS, ...execArgv(role)]);
      started.push(c);
      c.proc.send({ ...base, role, credential } satisfies SidecarJob);
      const m = await firstMessage<SidecarMessage>(c, 30_000);
      if ("error" in m) throw new Error(`zmesh ${role} sidecar: ${m.error}`);
      return { c, ports: m.ports };
    };
    const inbound = await sidecar("inbound", mesh.tokens.server);
    const outbound = await sidecar("outbound", mesh.tokens.client);
    return {
      name,
      port: outbound.ports.outbound,
      proxies: [
        { name: "outbound", pid: outbound.c.proc.pid!, heap: askHeap(outbound.c) },
        { name: "inbound", pid: inbound.c.proc.pid!, heap: askHeap(inbound.c) },
      ],
      deniedStatus: 403,
      close,
    };
  } catch (e) {
    await close();
    throw e;
  }
}

class Skipped extends Error {}

/** Installs haproxy with apt when it is missing and we are root; a failure means "skipped", with why. */
function ensureHaproxy(): string {
  const found = findHaproxy();
  if (found) return found;
  if (opt["no-install"]) throw new Skipped("haproxy is not installed (--no-install)");
  if (process.getuid?.() !== 0) throw new Skipped("haproxy is not installed and this is not root");
  const apt = (args: string[], ms: number) =>
    spawnSync("apt-get", args, {
      encoding: "utf8",
      timeout: ms,
      env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" },
    });
  say("haproxy missing: apt-get install -y haproxy");
  let r = apt(["install", "-y", "haproxy"], 180_000);
  if (r.status !== 0) {
    say("apt-get install failed; apt-get update, then one more try");
    apt(["update"], 120_000);
    r = apt(["install", "-y", "haproxy"], 180_000);
  }
  const bin = findHaproxy();
  if (r.status !== 0 || !bin) {
    const why = (r.error?.message ?? r.stderr ?? "").trim().split("\n").slice(-2).join(" ");
    throw new Skipped(`apt-get install -y haproxy failed: ${why || `exit ${r.status}`}`);
  }
  return bin;
}

function openssl(args: string[], cwd: string): void {
  const r = spawnSync("openssl", args, { cwd, encoding: "utf8", timeout: 20_000 });
  if (r.status !== 0) throw new Error(`openssl ${args[0]}: ${(r.stderr ?? r.error?.message ?? "").trim()}`);
}

/** A P-256 CA, a server leaf (DNS SAN bench-server) and a client leaf (CN bench-client, SPIFFE URI SAN). */
function makeCerts(dir: string): void {
  const ec = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
  openssl(["genpkey", ...ec, "-out", "ca.key"], dir);
  openssl(
    [
      "req",
      "-x509",
      "-new",
      "-key",
      "ca.key",
      "-subj",
      "/CN=bench-ca",
      "-days",
      "2",
      "-addext",
      "basicConstraints=critical,CA:TRUE",
      "-addext",
      "keyUsage=critical,keyCertSign,cRLSign",
      "-out",
      "ca.pem",
    ],
    dir,
  );
  const leaf = (name: string, san: string) => {
    openssl(["genpkey", ...ec, "-out", `${name}.key`], dir);
    openssl(["req", "-new", "-key", `${name}.key`, "-subj", `/CN=bench-${name}`, "-out", `${name}.csr`], dir);
    const ext = `basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=${san}\n`;
    spawnSync("sh", ["-c", `cat > ${name}.ext`], { cwd: dir, input: ext });
    openssl(
      [
        "x509",
        "-req",
        "-in",
        `${name}.csr`,
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        `${name}.ext`,
        "-out",
        `${name}.crt`,
      ],
      dir,
    );
    spawnSync("sh", ["-c", `cat ${name}.crt ${name}.key > ${name}.pem`], { cwd: dir });
  };
  leaf("server", "DNS:bench-server");
  leaf("client", "URI:spiffe://cluster.local/ns/bench/sa/client");
}

function haproxyConfig(kind: "outbound" | "inbound", dir: string, listen: number, next: number): string {
  const global = [
    "global",
    "  nbthread 1",
    "  maxconn 4096", // haproxy asks for ~2 fds per connection; the hard limit here is 20,000
    ...(ACCESS_LOG ? ["  log stdout format raw local0"] : []),
    "defaults",
    "  mode http",
    ...(ACCESS_LOG ? ["  log global", "  option httplog"] : []),
    "  timeout connect 5s",
    "  timeout client 60s",
    "  timeout server 60s",
    "  timeout http-keep-alive 65s",
  ];
  if (kind === "outbound")
    // Like the zmesh outbound: caller-supplied identity headers dropped, a request id added,
    // mTLS to the next hop whose certificate must name the expected server.
    return [
      ...global,
      "frontend outbound",
      `  bind 127.0.0.1:${listen}`,
      "  unique-id-format %{+X}o\\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid",
      "  unique-id-header x-request-id",
      "  http-request del-header x-forwarded-client-cert",
      "  default_backend mesh",
      "backend mesh",
      "  http-reuse always",
      `  server inbound 127.0.0.1:${next} ssl crt ${dir}/client.pem ca-file ${dir}/ca.pem verify required verifyhost bench-server ssl-min-ver TLSv1.3 alpn http/1.1`,
      "",
    ].join("\n");
  // Like the zmesh inbound: mTLS required, one L7 ALLOW rule (this client's certificate, GET,
  // /api/ paths; everything else 403), the caller's identity passed to the app.
  return [
    ...global,
    "frontend inbound",
    `  bind 127.0.0.1:${listen} ssl crt ${dir}/server.pem ca-file ${dir}/ca.pem verify required ssl-min-ver TLSv1.3 alpn http/1.1`,
    "  http-request deny deny_status 403 unless { ssl_c_s_dn(CN) -m str bench-client } METH_GET { path_beg /api/ }",
    '  http-request set-header x-forwarded-client-cert "By=bench-server;Subject=%[ssl_c_s_dn]"',
    "  default_backend app",
    "backend app",
    "  http-reuse always",
    `  server app 127.0.0.1:${next}`,
    "",
  ].join("\n");
}

let haproxyVersion: string | undefined;

async function haproxyChain(appPort: number): Promise<Chain> {
  const bin = ensureHaproxy();
  haproxyVersion = spawnSync(bin, ["-v"], { encoding: "utf8" }).stdout.split("\n")[0]?.trim();
  const dir = await mkdtemp(join(tmpdir(), "zmesh-bench-haproxy-"));
  makeCerts(dir);
  const inPort = await freePort();
  const outPort = await freePort();
  const cfgIn = join(dir, "inbound.cfg");
  const cfgOut = join(dir, "outbound.cfg");
  await writeFile(cfgIn, haproxyConfig("inbound", dir, inPort, appPort));
  await writeFile(cfgOut, haproxyConfig("outbound", dir, outPort, inPort));
  for (const cfg of [cfgIn, cfgOut]) {
    const r = spawnSync(bin, ["-c", "-q", "-f", cfg], { encoding: "utf8", timeout: 10_000 });
    if (r.status !== 0) throw new Error(`haproxy -c ${cfg}: ${(r.stderr || r.stdout).trim()}`);
  }
  const start = (name: string, cfg: string) =>
    track(name, spawn(bin, ["-db", "-f", cfg], { stdio: ["ignore", "ignore", "pipe"] }));
  const inbound = start("haproxy-inbound", cfgIn);
  const outbound = start("haproxy-outbound", cfgOut);
  const close = async () => {
    await Promise.all([stopChild(inbound), stopChild(outbound)]);
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await waitPort(inPort, 10_000);
    await waitPort(outPort, 10_000);
  } catch (e) {
    await close();
    throw new Error(`${(e as Error).message}: ${tail(inbound)} ${tail(outbound)}`);
  }
  return {
    name: "haproxy",
    port: outPort,
    proxies: [
      { name: "outbound", pid: outbound.proc.pid! },
      { name: "inbound", pid: inbound.proc.pid! },
    ],
    deniedStatus: 403,
    close,
  };
}

/**
 * The floor of a Node proxy (`--only ...,node_pipe`): bench/chain-pipe.ts twice, with the
 * sidecars' Node flags and HAProxy's certificates. It enforces nothing, so the denied probe gets 200.
 */
async function nodePipeChain(
  appPort: number,
  execArgv: (role: string) => string[] = () => [],
): Promise<Chain> {
  const dir = await mkdtemp(join(tmpdir(), "zmesh-bench-pipe-"));
  const started: Child[] = [];
  const close = async () => {
    await Promise.all(started.map((c) => stopChild(c)));
    await rm(dir, { recursive: true, force: true });
  };
  try {
    makeCerts(dir);
    const side = async (role: "inbound" | "outbound", next: number) => {
      const c = spawnNode(
        `node_pipe-${role}`,
        "chain-pipe.js",
        [role, String(next), dir],
        [...SIDECAR_FLAGS, ...execArgv(role)],
      );
      started.push(c);
      return { c, port: (await firstMessage<{ port: number }>(c, 10_000)).port };
    };
    const inbound = await side("inbound", appPort);
    const outbound = await side("outbound", inbound.port);
    return {
      name: "node_pipe",
      port: outbound.port,
      proxies: [
        { name: "outbound", pid: outbound.c.proc.pid! },
        { name: "inbound", pid: inbound.c.proc.pid! },
      ],
      deniedStatus: 200,
      close,
    };
  } catch (e) {
    await close();
    throw e;
  }
}

/** Before any load: an allowed request gets 200 and 1 KiB; one the policy does not allow, the denial. */
async function check(chain: Chain): Promise<void> {
  const ok = await probe(chain.port, "GET", PATH_ALLOWED);
  if (ok.status !== 200 || ok.bytes !== BODY_BYTES)
    throw new Error(`${chain.name}: GET ${PATH_ALLOWED} gave ${ok.status} with ${ok.bytes} bytes`);
  const denied = await probe(chain.port, "POST", PATH_ALLOWED);
  if (denied.status !== chain.deniedStatus)
    throw new Error(`${chain.name}: POST ${PATH_ALLOWED} gave ${denied.status}, not ${chain.deniedStatus}`);
}

// ---------------------------------------------------------------------------------------------
// Measurement.

interface Sample {
  max: LoadResult;
  rate: LoadResult;
  /** Cores each proxy used during the max-rps window. */
  coresAtMax: Record<string, number>;
  /** CPU seconds per 1,000 requests at the fixed rate = cores per 1,000 rps. */
  cpuPer1k: Record<string, number>;
  rssMb: Record<string, number>;
  /** RssAnon and RssFile when VmRSS was at its largest. */
  rssParts: Record<string, RssParts>;
  loadgenCoresAtMax: number;
}

const cpuOf = (ps: ProxyProc[]) => Object.fromEntries(ps.map((p) => [p.name, cpuSeconds(p.pid)]));
const target = (c: Chain) => ({ host: "127.0.0.1", port: c.port, path: PATH_ALLOWED });

async function measure(lg: Loadgen, chain: Chain, maxMs: number, rateMs: number): Promise<Sample> {
  const rss: Record<string, number> = {};
  const parts: Record<string, RssParts> = {};
  const sampleRss = async () => {
    for (const p of chain.proxies) {
      const now = statusKb(p.pid, "VmRSS") / 1024;
      if (now < (rss[p.name] ?? 0)) continue;
      rss[p.name] = now;
      parts[p.name] = rssParts(p.pid);
      // V8's heap at that moment: how much of the private memory is JavaScript's.
      if (p.heap) parts[p.name]!.v8_heap_total = (await p.heap()).heap_total;
    }
  };
  const a0 = cpuOf(chain.proxies);
  const l0 = cpuSeconds(lg.pid);
  const t0 = performance.now();
  const max = await lg.run({
    kind: "max",
    target: target(chain),
    connections: CONNECTIONS,
    durationMs: maxMs,
  });
  const secs = (performance.now() - t0) / 1000;
  const a1 = cpuOf(chain.proxies);
  const loadgenCoresAtMax = (cpuSeconds(lg.pid) - l0) / secs;
  await sampleRss();
  await sleep(PAUSE_MS);
  const b0 = cpuOf(chain.proxies);
  const rate = await lg.run({
    kind: "rate",
    target: target(chain),
    connections: RATE_CONNECTIONS,
    durationMs: rateMs,
    rps: RATE,
  });
  const b1 = cpuOf(chain.proxies);
  await sampleRss();
  const coresAtMax: Record<string, number> = {};
  const cpuPer1k: Record<string, number> = {};
  for (const p of chain.proxies) {
    coresAtMax[p.name] = (a1[p.name]! - a0[p.name]!) / secs;
    cpuPer1k[p.name] = ((b1[p.name]! - b0[p.name]!) * 1000) / Math.max(1, rate.completed);
  }
  return { max, rate, coresAtMax, cpuPer1k, rssMb: rss, rssParts: parts, loadgenCoresAtMax };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

const r1 = (x: number) => Math.round(x * 10) / 10;
const r3 = (x: number) => Math.round(x * 1000) / 1000;

/** Per "chain/proxy": RSS before any load, and cores used while idle (the fixed cost of being there). */
const idleRss = new Map<string, number>();
const idleParts = new Map<string, RssParts>();
/** Per "chain/proxy", zmesh only: V8's heap when idle and after the last run. */
const heaps = new Map<string, { idle?: SidecarHeap; loaded?: SidecarHeap }>();
const idleCores = new Map<string, number>();
const IDLE_MS = 2_000;
const IDLE_SETTLE_MS = 2_000;

function summarize(chain: Chain, samples: Sample[]): Record<string, unknown> {
  const byProxy = (f: (s: Sample) => Record<string, number>, round: (x: number) => number) =>
    Object.fromEntries(chain.proxies.map((p) => [p.name, round(median(samples.map((s) => f(s)[p.name]!)))]));
  const out: Record<string, unknown> = {
    rps_max: Math.round(median(samples.map((s) => s.max.rps))),
    p50_ms: r3(median(samples.map((s) => s.rate.p50_ms))),
    p90_ms: r3(median(samples.map((s) => s.rate.p90_ms))),
    p99_ms: r3(median(samples.map((s) => s.rate.p99_ms))),
  };
  // Below the rate means the chain could not keep up, and its latencies are mostly queueing.
  out["rate_sustained"] = median(samples.map((s) => s.rate.rps)) >= 0.97 * RATE;
  if (chain.proxies.length > 0) {
    out["cpu_per_1k_rps"] = byProxy((s) => s.cpuPer1k, r3);
    // The largest RSS seen (after each phase of each run), per proxy process.
    out["rss_mb"] = Object.fromEntries(
      chain.proxies.map((p) => [p.name, r1(Math.max(...samples.map((s) => s.rssMb[p.name]!)))]),
    );
    out["rss_idle_mb"] = Object.fromEntries(
      chain.proxies.map((p) => [p.name, idleRss.get(`${chain.name}/${p.name}`) ?? 0]),
    );
    // What the largest RSS was made of (private vs mapped files), and the same when idle.
    out["rss_parts_mb"] = Object.fromEntries(
      chain.proxies.map((p) => {
        const worst = samples.reduce((a, b) => (b.rssMb[p.name]! > a.rssMb[p.name]! ? b : a));
        return [p.name, { ...worst.rssParts[p.name], idle: idleParts.get(`${chain.name}/${p.name}`) }];
      }),
    );
    const heap = chain.proxies.filter((p) => heaps.has(`${chain.name}/${p.name}`));
    if (heap.length)
      out["v8_heap"] = Object.fromEntries(heap.map((p) => [p.name, heaps.get(`${chain.name}/${p.name}`)]));
    out["cores_idle"] = Object.fromEntries(
      chain.proxies.map((p) => [p.name, idleCores.get(`${chain.name}/${p.name}`) ?? 0]),
    );
    out["cores_at_max"] = byProxy((s) => s.coresAtMax, r3);
  }
  out["runs"] = {
    rps_max: samples.map((s) => Math.round(s.max.rps)),
    p50_ms: samples.map((s) => r3(s.rate.p50_ms)),
    p90_ms: samples.map((s) => r3(s.rate.p90_ms)),
    p99_ms: samples.map((s) => r3(s.rate.p99_ms)),
    rate_rps: samples.map((s) => Math.round(s.rate.rps)),
    send_lag_p99_ms: samples.map((s) => r3(s.rate.send_lag_p99_ms ?? 0)),
    errors: samples.reduce((n, s) => n + s.max.errors + s.rate.errors, 0),
    unanswered: samples.reduce((n, s) => n + s.max.unanswered + s.rate.unanswered, 0),
    non2xx: samples.reduce((n, s) => n + s.max.non2xx + s.rate.non2xx, 0),
    loadgen_cores_at_max: r3(median(samples.map((s) => s.loadgenCoresAtMax))),
  };
  return out;
}

type Summary = Record<string, unknown> & { rps_max: number; p90_ms: number; p99_ms: number };

function targets(results: Record<string, unknown>): Record<string, unknown> {
  const d = results["direct"] as Summary | undefined;
  const z = results["zmesh"] as Summary | undefined;
  const h = results["haproxy"] as Summary | undefined;
  const out: Record<string, unknown> = {};
  if (z?.["cpu_per_1k_rps"]) {
    const cpu = Math.max(...Object.values(z["cpu_per_1k_rps"] as Record<string, number>));
    out["cpu_per_1k_rps"] = { zmesh_worst_proxy: cpu, goal: 0.2, stretch: 0.06, met: cpu <= 0.2 };
    const rss = Math.max(...Object.values(z["rss_mb"] as Record<string, number>));
    out["rss_mb"] = { zmesh_worst_proxy: rss, goal: 50, met: rss <= 50 };
  }
  if (d && z && h?.rps_max) {
    for (const p of ["p90_ms", "p99_ms"] as const) {
      const zAdd = r3(z[p] - d[p]);
      const hAdd = r3(h[p] - d[p]);
      out[`added_${p}`] = { zmesh: zAdd, haproxy: hAdd, met: zAdd <= hAdd };
    }
    const ratio = Math.round((z.rps_max / h.rps_max) * 100) / 100;
    out["rps_max_vs_haproxy"] = { ratio, goal: 0.8, met: ratio >= 0.8 };
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Profiling: `--profile DIR` runs only the zmesh chain, with each sidecar under `node --cpu-prof`,
// and reports where the CPU went during max rps.

interface CpuProfile {
  nodes: {
    id: number;
    callFrame: { functionName: string; url: string; lineNumber: number };
    children?: number[];
  }[];
  samples: number[];
  timeDeltas: number[];
  /** Microseconds on the monotonic clock, the one process.hrtime reads in every process. */
  startTime: number;
}

function shortUrl(url: string): string {
  const nm = url.lastIndexOf("/node_modules/");
  if (nm >= 0) return url.slice(nm + "/node_modules/".length);
  const d = url.indexOf("/dist/");
  if (d >= 0) return url.slice(d + "/dist/".length);
  return url;
}

/**
 * Where a sidecar's time went. Only samples inside `window` (µs, monotonic) count, if any fall in
 * it. V8 samples on wall time: a sample is "busy" when the thread was not waiting for I/O, so the
 * shares are of busy time, which on a saturated core is CPU time.
 */
function analyzeProfile(file: string, top: number, window: [number, number]) {
  const p = JSON.parse(readFileSync(file, "utf8")) as CpuProfile;
  const at: number[] = [];
  let t = p.startTime;
  for (let i = 0; i < p.samples.length; i++) {
    t += p.timeDeltas[i] ?? 0;
    at.push(t);
  }
  const inWindow = at.some((x) => x >= window[0] && x <= window[1]);
  const counts = (i: number) => !inWindow || (at[i]! >= window[0] && at[i]! <= window[1]);
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const key = (id: number) => {
    const f = byId.get(id)!.callFrame;
    if (!f.url) return f.functionName || "(anonymous)";
    return `${f.functionName || "(anonymous)"} ${shortUrl(f.url)}:${f.lineNumber + 1}`;
  };
  const self = new Map<string, number>();
  const incl = new Map<string, number>();
  const files = new Map<string, number>();
  /** Per self frame: its callers, two levels up, with their time. */
  const via = new Map<string, Map<string, number>>();
  let total = 0;
  let idle = 0;
  const add = (m: Map<string, number>, k: string, v: number) => m.set(k, (m.get(k) ?? 0) + v);
  for (let i = 0; i < p.samples.length; i++) {
    if (!counts(i)) continue;
    const id = p.samples[i]!;
    const dt = p.timeDeltas[i] ?? 0;
    const f = byId.get(id)!.callFrame;
    if (f.functionName === "(idle)") {
      idle += dt;
      continue;
    }
    total += dt;
    const k0 = key(id);
    add(self, k0, dt);
    add(files, f.url ? shortUrl(f.url) : f.functionName, dt);
    const up1 = parent.get(id);
    const up2 = up1 === undefined ? undefined : parent.get(up1);
    const chain = [up1, up2].filter((x) => x !== undefined).map((x) => key(x!));
    const callers = via.get(k0) ?? new Map<string, number>();
    via.set(k0, callers);
    add(callers, chain.join(" < "), dt);
    const seen = new Set<string>();
    let n: number | undefined = id;
    for (let depth = 0; n !== undefined && depth < 1_000; depth++, n = parent.get(n)) {
      const k = key(n);
      if (!seen.has(k)) {
        seen.add(k);
        add(incl, k, dt);
      }
    }
  }
  const pct = (v: number) => Math.round((v / Math.max(1, total)) * 1000) / 10;
  const rank = (m: Map<string, number>, keep: (k: string) => boolean = () => true) =>
    [...m.entries()]
      .filter(([k]) => keep(k))
      .sort((x, y) => y[1] - x[1])
      .slice(0, top);
  return {
    window: inWindow ? "measured max-rps window only" : "whole process (the window matched no sample)",
    busy_ms: Math.round(total / 1000),
    idle_ms: Math.round(idle / 1000),
    top_self: rank(self).map(([k, v]) => ({
      frame: k,
      pct: pct(v),
      via: rank(via.get(k) ?? new Map()).at(0)?.[0] ?? "",
    })),
    top_files: rank(files).map(([k, v]) => ({ frame: k, pct: pct(v) })),
    zmesh_inclusive: rank(incl, (k) => / src\//.test(k)).map(([k, v]) => ({ frame: k, pct: pct(v) })),
  };
}

/**
 * The zmesh chain (or, with `--only node_pipe`, the pipe) with each proxy under `execArgv`, probed
 * and warmed up (both profiling modes).
 */
async function warmChain(dir: string, execArgv: (role: string) => string[]) {
  mkdirSync(dir, { recursive: true });
  const app = await startApp();
  const lg = await Loadgen.start();
  const chain =
    only.has("node_pipe") && !only.has("zmesh")
      ? await nodePipeChain(app.port, execArgv)
      : await zmeshChain(app.port, execArgv);
  await check(chain);
  for (let round = 0; round < Math.max(1, WARM_ROUNDS); round++) {
    await measure(lg, chain, MAX_MS, RATE_MS);
    await sleep(WARM_PAUSE_MS);
  }
  return { lg, chain };
}

async function profileRun(dir: string): Promise<void> {
  for (const role of ["outbound", "inbound"]) rmSync(join(dir, `${role}.cpuprofile`), { force: true });
  say(`profiling the zmesh sidecars: warm-up, then max rps for ${MAX_MS / 1000} s`);
  const { lg, chain } = await warmChain(dir, (role) => [
    "--cpu-prof",
    "--cpu-prof-dir",
    dir,
    "--cpu-prof-name",
    `${role}.cpuprofile`,
  ]);
  const usNow = () => Number(process.hrtime.bigint() / 1000n);
  const w0 = usNow();
  const max = await lg.run({
    kind: "max",
    target: target(chain),
    connections: CONNECTIONS,
    durationMs: MAX_MS,
  });
  const w1 = usNow();
  await chain.close(); // the sidecars exit normally, which writes the profiles
  const profiles: Record<string, unknown> = {};
  for (const role of ["outbound", "inbound"]) {
    const file = join(dir, `${role}.cpuprofile`);
    if (!existsSync(file)) throw new Error(`no profile written at ${file}`);
    const a = analyzeProfile(file, 20, [w0, w1]);
    profiles[role] = { file, ...a };
    const lines = (rows: { frame: string; pct: number; via?: string }[]) =>
      rows
        .map((r) => `    ${String(r.pct).padStart(5)}%  ${r.frame}${r.via ? `  < ${r.via}` : ""}`)
        .join("\n");
    say(`${role} sidecar, ${a.busy_ms} ms busy (${a.window}). Self time:\n${lines(a.top_self)}`);
    say(`${role} by file:\n${lines(a.top_files)}`);
    say(`${role} zmesh functions, inclusive:\n${lines(a.zmesh_inclusive)}`);
  }
  console.log(
    JSON.stringify({ bench: "chain-profile", rps_max: Math.round(max.rps), errors: max.errors, profiles }),
  );
}

// `--perf DIR`: V8's profiler samples wall time, so on a shared core a sidecar blocked in a write
// (while the woken reader runs) looks busy. perf samples the CPU instead: every process on the
// chain's core, kernel stacks included, JS frames named through `--perf-basic-prof` maps.
async function perfRun(dir: string): Promise<void> {
  const data = join(dir, "perf.data");
  const job = opt["perf-job"];
  if (job !== "max" && job !== "rate") throw new Error("--perf-job must be max or rate");
  say(`perf on cpu ${REST_CPU}: warm-up, then the ${job} job`);
  const { lg, chain } = await warmChain(dir, () => ["--perf-basic-prof"]);
  // Tracked like every child, so a failed or interrupted bench stops them too.
  const tools = [
    track(
      "perf",
      spawn("perf", ["record", "-q", "-o", data, "-C", String(REST_CPU), "-F", "997", "-g"], {
        stdio: "ignore",
      }),
    ),
  ];
  const straced: Promise<string>[] = [];
  if (opt["perf-strace"])
    for (const p of chain.proxies) {
      const st = spawn("strace", ["-c", "-f", "-p", String(p.pid)], { stdio: ["ignore", "ignore", "pipe"] });
      let text = "";
      st.stderr.setEncoding("utf8").on("data", (d: string) => (text += d));
      straced.push(new Promise((r) => st.once("exit", () => r(`${p.name}:\n${text}`))));
      tools.push(track("strace", st));
    }
  await sleep(300);
  const result =
    job === "max"
      ? await lg.run({ kind: "max", target: target(chain), connections: CONNECTIONS, durationMs: MAX_MS })
      : await lg.run({
          kind: "rate",
          target: target(chain),
          connections: RATE_CONNECTIONS,
          durationMs: RATE_MS,
          rps: RATE,
        });
  // SIGINT: perf writes its data (build-ids may take a while) and strace its counts; SIGKILL after 60 s.
  await Promise.all(tools.map((t) => stopChild(t, "SIGINT", 60_000)));
  for (const s of await Promise.all(straced)) say(`syscalls of the ${s}`);
  const report = (sort: string) =>
    spawnSync("perf", ["report", "-i", data, "--no-children", "--stdio", "-g", "none", "--sort", sort], {
      encoding: "utf8",
      maxBuffer: 64 << 20,
    })
      .stdout.split("\n")
      .filter((l) => /^\s+\d/.test(l))
      .slice(0, 40)
      .join("\n");
  say(`by process and object:\n${report("pid,dso")}`);
  for (const p of chain.proxies) say(`pid ${p.pid} is the ${p.name} sidecar`);
  say(`hottest symbols:\n${report("pid,sym")}`);
  await chain.close();
  console.log(
    JSON.stringify({ bench: "chain-perf", job, completed: result.completed, pids: chain.proxies, data }),
  );
}

// ---------------------------------------------------------------------------------------------
// The run.

async function main(): Promise<number> {
  const started = Date.now();
  if (canPin) pin(process.pid, REST_CPU); // children inherit it; the load generator is moved off
  say(
    canPin
      ? `pinning: load generator on cpu ${LOADGEN_CPU}; app, proxies and control plane on cpu ${REST_CPU}`
      : "pinning: off (--no-pin, fewer than 2 CPUs or no taskset)",
  );
  if (opt.profile) {
    await profileRun(resolve(opt.profile));
    return 0;
  }
  if (opt.perf) {
    await perfRun(resolve(opt.perf));
    return 0;
  }
  const app = await startApp();
  const lg = await Loadgen.start();
  const results: Record<string, unknown> = {};
  const chains: Chain[] = [];
  let failed = false;
  const setups: [Name, () => Promise<Chain>][] = [
    [
      "direct",
      async () => ({ name: "direct", port: app.port, proxies: [], deniedStatus: 200, close: async () => {} }),
    ],
    ["zmesh", () => zmeshChain(app.port)],
    ["zmesh_b", () => zmeshChain(app.port, undefined, "zmesh_b", COMPARE_SIDECAR)],
    ["haproxy", () => haproxyChain(app.port)],
    ["node_pipe", () => nodePipeChain(app.port)],
  ];
  for (const [name, setup] of setups) {
    if (!only.has(name)) continue;
    try {
      const c = await setup();
      chains.push(c);
      await check(c);
      // Memory of each proxy before any load: what it costs to have it there at all.
      for (const p of c.proxies) {
        idleRss.set(`${c.name}/${p.name}`, r1(statusKb(p.pid, "VmRSS") / 1024));
        idleParts.set(`${c.name}/${p.name}`, rssParts(p.pid));
        if (p.heap) heaps.set(`${c.name}/${p.name}`, { idle: await p.heap() });
      }
    } catch (e) {
      if (e instanceof Skipped) {
        say(`${name}: skipped: ${e.message}`);
        results[name] = { skipped: e.message };
      } else {
        say(`${name}: failed: ${(e as Error).message}`);
        results[name] = { error: (e as Error).message };
        failed = true;
        const i = chains.findIndex((c) => c.name === name);
        if (i >= 0) await chains.splice(i, 1)[0]!.close();
      }
    }
  }
  // Idle cost of each proxy: a settling pause after start-up, then CPU over a quiet window.
  await sleep(IDLE_SETTLE_MS);
  const quiet = chains.map((c) => ({ c, before: cpuOf(c.proxies) }));
  await sleep(IDLE_MS);
  for (const { c, before } of quiet) {
    const after = cpuOf(c.proxies);
    for (const p of c.proxies)
      idleCores.set(`${c.name}/${p.name}`, r3((after[p.name]! - before[p.name]!) / (IDLE_MS / 1000)));
  }
  // Warm-up: whole runs, discarded, then a pause in which idle pooled connections close. A
  // sidecar's JIT reaches its steady state only once it has seen a connection's whole life (new
  // connections, both jobs, idle ones swept): with one short round, code was still deoptimized and
  // recompiled during the measured runs, a third of the JavaScript ran unoptimized in a measured
  // max job, and results moved from run to run (bench/README.md, "Round 5").
  for (let round = 0; round < WARM_ROUNDS; round++) {
    for (const c of chains) {
      say(`${c.name}: warm-up ${round + 1}/${WARM_ROUNDS} (a discarded run)`);
      await measure(lg, c, MAX_MS, RATE_MS);
    }
    await sleep(WARM_PAUSE_MS);
  }
  const samples = new Map<Name, Sample[]>(chains.map((c) => [c.name, []]));
  // Other work on the machine (this is a shared box) skews everything: measure how much there was.
  const load0 = loadavg()[0]!;
  const busy0 = machineBusySeconds();
  const ours0 = ourCpuSeconds();
  const wall0 = performance.now();
  for (let run = 0; run < RUNS; run++) {
    // The order rotates from run to run, so that a drift of the machine does not favour one chain.
    for (let k = 0; k < chains.length; k++) {
      const c = chains[(run + k) % chains.length]!;
      const s = await measure(lg, c, MAX_MS, RATE_MS);
      samples.get(c.name)!.push(s);
      const cpu = Object.entries(s.cpuPer1k)
        .map(([p, v]) => `${p} ${v.toFixed(3)}`)
        .join(", ");
      say(
        `run ${run + 1}/${RUNS} ${c.name.padEnd(7)} max ${Math.round(s.max.rps)} rps (errors ${s.max.errors}); ` +
          `at ${Math.round(s.rate.rps)} rps p50 ${s.rate.p50_ms.toFixed(3)} p90 ${s.rate.p90_ms.toFixed(3)} ` +
          `p99 ${s.rate.p99_ms.toFixed(3)} ms (errors ${s.rate.errors}, late ${s.rate.unanswered})${cpu ? `; cpu/1k rps ${cpu}` : ""}`,
      );
      if (s.max.errors + s.rate.errors + s.max.non2xx + s.rate.non2xx > 0) failed = true;
    }
  }
  const others = Math.max(
    0,
    (machineBusySeconds() - busy0 - (ourCpuSeconds() - ours0)) / ((performance.now() - wall0) / 1000),
  );
  const contention = { other_processes_cores: r3(others), loadavg_1m: [r1(load0), r1(loadavg()[0]!)] };
  if (others > 0.1)
    say(`warning: other processes used ${others.toFixed(2)} cores during the runs; results are skewed`);
  for (const c of chains)
    for (const p of c.proxies) {
      const h = heaps.get(`${c.name}/${p.name}`);
      if (h && p.heap) h.loaded = await p.heap();
    }
  for (const c of chains) results[c.name] = summarize(c, samples.get(c.name)!);
  for (const c of chains) await c.close();
  const out = {
    bench: "chain",
    ...Object.fromEntries(NAMES.filter((n) => results[n]).map((n) => [n, results[n]])),
    targets: targets(results),
    method: {
      runs: RUNS,
      statistic: "median of runs",
      max_seconds: MAX_MS / 1000,
      max_connections: CONNECTIONS,
      rate_rps: RATE,
      rate_seconds: RATE_MS / 1000,
      rate_connections: RATE_CONNECTIONS,
      body_bytes: BODY_BYTES,
      pinning: canPin ? `loadgen cpu${LOADGEN_CPU}; app, proxies, control plane cpu${REST_CPU}` : "none",
      access_log: ACCESS_LOG,
      ...(opt.compare ? { compare: resolve(opt.compare) } : {}),
      ...(SIDECAR_FLAGS.length ? { sidecar_flags: SIDECAR_FLAGS.join(" ") } : {}),
      node: process.version,
      ...(haproxyVersion ? { haproxy: haproxyVersion } : {}),
      contention,
      seconds: Math.round((Date.now() - started) / 1000),
    },
  };
  if (!opt.json) {
    for (const n of NAMES) {
      const r = results[n] as Summary | { skipped?: string; error?: string } | undefined;
      if (!r) continue;
      if ("rps_max" in r)
        console.log(
          `${n.padEnd(8)} rps_max ${String(r.rps_max).padStart(6)}  p50 ${r["p50_ms"]} p90 ${r.p90_ms} p99 ${r.p99_ms} ms` +
            (r["cpu_per_1k_rps"]
              ? `  cpu/1k ${JSON.stringify(r["cpu_per_1k_rps"])}  rss ${JSON.stringify(r["rss_mb"])}`
              : ""),
        );
      else console.log(`${n.padEnd(8)} ${JSON.stringify(r)}`);
    }
  }
  console.log(JSON.stringify(out));
  return failed ? 1 : 0;
}

const watchdog = setTimeout(() => {
  say(`watchdog: the run took more than ${WATCHDOG_MS / 1000} s; stopping everything`);
  void stopAll().finally(() => process.exit(2));
}, WATCHDOG_MS);
watchdog.unref();
process.once("SIGINT", () => void stopAll().finally(() => process.exit(130)));
process.once("SIGTERM", () => void stopAll().finally(() => process.exit(143)));

let code = 1;
try {
  code = await main();
} catch (e) {
  say(`failed: ${(e as Error).stack ?? e}`);
} finally {
  await stopAll();
}
process.exit(code);
