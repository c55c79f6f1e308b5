// The in-process harness: a real control plane and real proxies on loopback, ports chosen by
// the OS, with the one thing iptables would do (tell a captured socket its original
// destination) done by a table the test fills. Shared by every test above the unit tier.

import { writeFile } from "node:fs/promises";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import { connect, type Socket } from "node:net";
import { join } from "node:path";
import pino from "pino";
import type { ProxyTimeouts } from "../../src/config/index.js";
import type { ControlPlane } from "../../src/controlplane/index.js";
import type { CertificateAuthority } from "../../src/identity/index.js";
import { Sidecar } from "../../src/proxy/index.js";
import { freePort, startControlPlane } from "./cp.js";
import { eventually } from "./wait.js";

export const quiet = pino({ level: "silent" });

export { freePort };

export interface SeenRequest {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
}

/** A plain HTTP app that answers `<name> <method> <url>` and remembers what reached it. */
export async function app(name: string): Promise<{ port: number; seen: SeenRequest[]; server: Server }> {
  const seen: SeenRequest[] = [];
  const server = createServer((req, res) => {
    seen.push({ method: req.method ?? "", url: req.url ?? "", headers: req.headers });
    req.resume();
    req.on("end", () => res.end(`${name} ${req.method} ${req.url}`));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { port: (server.address() as { port: number }).port, seen, server };
}

export interface MeshFixture {
  dir: string;
  cp: ControlPlane;
  tokens: Map<string, string>;
  /** Tells the outbound proxies where a client socket (by its local port) meant to go. */
  intents: Map<number, { address: string; port: number }>;
  proxies: Sidecar[];
  /** Replaces the control plane's store with new YAML (reload it with `cp.reload()`). */
  writeConfig(yaml: string): Promise<void>;
  close(): Promise<void>;
}

/** Log lines of the harness's processes, kept in memory so tests can read the reasons given. */
export const logLines: Record<string, unknown>[] = [];
export const captured = pino(
  { level: "info" },
  {
    write(line: string) {
      logLines.push(JSON.parse(line) as Record<string, unknown>);
      if (logLines.length > 5000) logLines.splice(0, 1000);
    },
  },
);

/** Starts a control plane over the given YAML; `instances` lists the workload entries to mint tokens for. */
export async function controlPlane(
  yaml: string,
  instances: { namespace: string; name: string }[],
  opts: { ca?: CertificateAuthority } = {},
): Promise<MeshFixture> {
  const local = await startControlPlane({
    yaml,
    instances,
    log: captured,
    tmpPrefix: "zmesh-test-",
    ...opts,
  });
  const { dir, cp, tokens } = local;
  const fixture: MeshFixture = {
    dir,
    cp,
    tokens,
    intents: new Map(),
    proxies: [],
    writeConfig: (text) => writeFile(join(dir, "mesh.yaml"), text),
    async close() {
      await Promise.all(fixture.proxies.map((p) => p.close()));
      await local.close();
    },
  };
  return fixture;
}

/**
 * A proxy for one workload entry. Its inbound listens on `inboundPort` and forwards to
 * `appPort` on 127.0.0.1 (as if iptables had redirected a connection to that app port).
 */
export async function proxy(
  mesh: MeshFixture,
  entry: string,
  opts: {
    inboundPort: number;
    /** The outbound listener's port (any free one if not given). */
    outboundPort?: number;
    appPort?: number;
    certTtlSeconds?: number;
    timeouts?: Partial<ProxyTimeouts>;
  },
): Promise<Sidecar> {
  const credential = mesh.tokens.get(entry);
  if (!credential) throw new Error(`no token for ${entry}`);
  const p = new Sidecar({
    controlPlane: `127.0.0.1:${mesh.cp.port}`,
    trustBundlePem: mesh.cp.ca.trustBundlePem(),
    credential,
    controlPlaneId: "spiffe://cluster.local/ns/zmesh-system/sa/zmesh-controlplane",
    inbound: { host: "127.0.0.1", port: opts.inboundPort },
    outbound: { host: "127.0.0.1", port: opts.outboundPort ?? 0 },
    admin: { host: "127.0.0.1", port: 0 },
    health: { host: "127.0.0.1", port: 0 },
    metrics: { host: "127.0.0.1", port: 0 },
    originalDst: (s: Socket) => {
      if (s.localPort === opts.inboundPort) return { address: "127.0.0.1", port: opts.appPort ?? 0 };
      const intent = mesh.intents.get(s.remotePort ?? -1);
      if (!intent) throw new Error("no intent registered for this socket");
      return intent;
    },
    log: captured,
    ...(opts.certTtlSeconds ? { certTtlSeconds: opts.certTtlSeconds } : {}),
    ...(opts.timeouts ? { timeouts: opts.timeouts } : {}),
  });
  mesh.proxies.push(p);
  await p.start();
  await p.ready();
  return p;
}

/**
 * The usual two-workload mesh: shop/client calls Service `server` (shop namespace) at `vip`:`port`,
 * whose only endpoint is workload shop/<server>, an app on loopback `appPort` behind its sidecar.
 * `portName` names the Service port (its protocol), `yaml` adds resources (policies); `timeouts`
 * go to each sidecar (`client`, `server`).
 */
export async function clientServerMesh(opts: {
  server: string;
  vip: string;
  appPort: number;
  port?: number;
  portName?: string;
  yaml?: string;
  timeouts?: { client?: Partial<ProxyTimeouts>; server?: Partial<ProxyTimeouts> };
}): Promise<{ mesh: MeshFixture; client: Sidecar; server: Sidecar; inbound: number }> {
  const inbound = await freePort();
  const mesh = await controlPlane(
    entryYaml("client") +
      entryYaml(opts.server) +
      serviceYaml(opts.server, opts.vip, [[opts.port ?? 80, inbound, opts.portName]]) +
      (opts.yaml ?? ""),
    [
      { namespace: "shop", name: "client" },
      { namespace: "shop", name: opts.server },
    ],
  );
  const c = opts.timeouts?.client;
  const sv = opts.timeouts?.server;
  const client = await proxy(mesh, "shop/client", {
    inboundPort: await freePort(),
    ...(c ? { timeouts: c } : {}),
  });
  const server = await proxy(mesh, `shop/${opts.server}`, {
    inboundPort: inbound,
    appPort: opts.appPort,
    ...(sv ? { timeouts: sv } : {}),
  });
  return { mesh, client, server, inbound };
}

/** A route as a sidecar's outbound enforces it. */
export type OutboundRoute = NonNullable<ReturnType<Sidecar["state"]["route"]>>;

/**
 * Resolves once `client` enforces a route for `dst` that `ok` accepts (bounded to 5 s): a config
 * pushed with `writeConfig` and `cp.reload()` is applied (and everything done on applying it is).
 */
export async function routeApplied(
  client: Sidecar,
  dst: { address: string; port: number },
  ok: (route: OutboundRoute) => boolean,
): Promise<void> {
  await eventually(
    "the client sidecar applies the new config",
    async () => client.state.route(dst.address, dst.port),
    (r) => r !== undefined && ok(r),
    5_000,
  );
}

/** The Prometheus text a proxy serves on its metrics port. */
export async function scrapeMetrics(p: Sidecar): Promise<string> {
  return (await fetch(`http://127.0.0.1:${p.ports.metrics}/stats/prometheus`)).text();
}

/** The istio_requests_total series of a scrape that carries every one of `parts`, if there is one. */
export function requestsTotal(text: string, ...parts: string[]): string | undefined {
  return text
    .split("\n")
    .find((l) => l.startsWith("istio_requests_total{") && parts.every((x) => l.includes(x)));
}

export interface Reply {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** Sends one HTTP/1.1 request through a proxy's outbound port as if the app had called `dst`. */
export async function call(
  mesh: MeshFixture,
  via: Sidecar,
  dst: { address: string; port: number },
  req: { method?: string; path?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<Reply> {
  // A randomly chosen local port may still be in TIME_WAIT from an earlier request: pick again.
  for (let attempt = 0; ; attempt++) {
    try {
      return await callOnce(mesh, via, dst, req);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EADDRINUSE" || attempt >= 5) throw e;
    }
  }
}

function callOnce(
  mesh: MeshFixture,
  via: Sidecar,
  dst: { address: string; port: number },
  req: { method?: string; path?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    // The intent must be known before the proxy accepts (it reads the destination at once), so the
    // client binds a local port chosen here, as iptables would know the destination at connect.
    const localPort = 20_000 + Math.floor(Math.random() * 40_000);
    mesh.intents.set(localPort, dst);
    const sock = connect({ host: "127.0.0.1", port: via.ports.outbound, localPort });
    sock.once("connect", () => {
      const body = req.body ?? "";
      const head = [
        `${req.method ?? "GET"} ${req.path ?? "/"} HTTP/1.1`,
        `host: ${dst.address}`,
        "connection: close",
        `content-length: ${Buffer.byteLength(body)}`,
        ...Object.entries(req.headers ?? {}).map(([k, v]) => `${k}: ${v}`),
      ];
      sock.write(`${head.join("\r\n")}\r\n\r\n${body}`);
    });
    let data = "";
    sock.on("data", (d: Buffer) => {
      data += d.toString("latin1");
    });
    sock.on("error", reject);
    sock.on("close", () => {
      const [headText = "", ...rest] = data.split("\r\n\r\n");
      const [statusLine = "", ...lines] = headText.split("\r\n");
      const headers: Record<string, string> = {};
      for (const l of lines) {
        const i = l.indexOf(":");
        if (i > 0) headers[l.slice(0, i).toLowerCase()] = l.slice(i + 1).trim();
      }
      resolve({ status: Number(statusLine.split(" ")[1] ?? 0), headers, body: rest.join("\r\n\r\n") });
    });
  });
}

export interface TcpClient {
  write(data: string): void;
  /** Resolves with what has arrived once it matches `until` (bounded to 3 s). */
  read(until: RegExp): Promise<string>;
  close(): void;
  /** Resolves with everything received once the connection closes (bounded to 3 s). */
  closed: Promise<string>;
}

/** Opens a raw TCP connection through a proxy's outbound port as if the app had dialled `dst`. */
export function openTcp(
  mesh: MeshFixture,
  via: Sidecar,
  dst: { address: string; port: number },
): Promise<TcpClient> {
  const localPort = 20_000 + Math.floor(Math.random() * 40_000);
  mesh.intents.set(localPort, dst);
  return new Promise((resolve, reject) => {
    const sock = connect({ host: "127.0.0.1", port: via.ports.outbound, localPort });
    let data = "";
    let consumed = 0;
    const waiters: (() => void)[] = [];
    sock.on("data", (d: Buffer) => {
      data += d.toString("latin1");
      for (const w of waiters.splice(0)) w();
    });
    const closed = new Promise<string>((r) => {
      const t = setTimeout(() => r(`(still open after 3 s) ${data}`), 3_000);
      sock.on("close", () => {
        clearTimeout(t);
        r(data);
      });
    });
    sock.on("error", () => {});
    sock.once("connect", () =>
      resolve({
        write: (d) => sock.write(d),
        close: () => sock.destroy(),
        closed,
        read: (until) =>
          new Promise((res, rej) => {
            const deadline = setTimeout(
              () => rej(new Error(`timed out waiting for ${until}; got ${JSON.stringify(data)}`)),
              3_000,
            );
            const check = () => {
              const rest = data.slice(consumed);
              const m = until.exec(rest);
              if (m) {
                clearTimeout(deadline);
                consumed += m.index + m[0].length;
                res(rest.slice(0, m.index + m[0].length));
              } else waiters.push(check);
            };
            check();
          }),
      }),
    );
    sock.once("error", reject);
  });
}

/** YAML of a WorkloadEntry (an instance) for the harness: address 127.0.0.1 unless given. */
export function entryYaml(
  name: string,
  opts: { app?: string; sa?: string; address?: string; namespace?: string } = {},
): string {
  const app = opts.app ?? name;
  return `apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: ${name}, namespace: ${opts.namespace ?? "shop"}, labels: { app: ${app} } }
spec: { address: ${opts.address ?? "127.0.0.1"}, serviceAccount: ${opts.sa ?? name}, labels: { app: ${app} } }
---
`;
}

/** YAML of a Service with a fixed VIP; `ports` are [port, targetPort, name?]. */
export function serviceYaml(
  name: string,
  vip: string,
  ports: [number, number, string?][],
  app = name,
): string {
  const list = ports.map(
    ([port, targetPort, n]) => `    - { name: ${n ?? "http"}, port: ${port}, targetPort: ${targetPort} }`,
  );
  return `apiVersion: v1
kind: Service
metadata: { name: ${name}, namespace: shop }
spec:
  selector: { app: ${app} }
  clusterIP: ${vip}
  ports:
${list.join("\n")}
---
`;
}
