// The control plane's two HTTP faces. The admin API for the CLI, on a Unix socket (root-only by
// file mode): trust bundle, CA and proxy state, status, root rotation with its progress streamed
// as lines of text. The debug server (:15014, or a Unix socket): Prometheus metrics, nothing that
// changes state. Each is one list of endpoints that also feeds its "/" index.

import { chmod, rm } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { ZmeshError } from "../errors/index.js";
import type { ControlPlane } from "./server.js";

export interface AdminServer {
  close(): Promise<void>;
}

export interface DebugServer extends AdminServer {
  /** The TCP port it listens on (0 on a Unix socket). */
  port: number;
}

interface Endpoint {
  method: "GET" | "POST";
  path: string;
  help: string;
  handle: (req: IncomingMessage, res: ServerResponse, url: URL) => void;
}

function json(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(`${JSON.stringify(body, null, 2)}\n`);
}

function metrics(cp: ControlPlane): Endpoint {
  return {
    method: "GET",
    path: "/metrics",
    help: "Prometheus metrics: convergence time, pushes, NACKs, config changes, connected proxies",
    handle: (_q, res) => {
      cp.metricsText().then(
        (text) => {
          res.writeHead(200, { "content-type": cp.metricsContentType });
          res.end(text);
        },
        (e: Error) => json(res, 500, { error: e.message }),
      );
    },
  };
}

function adminEndpoints(cp: ControlPlane): Endpoint[] {
  let rotating = false;
  return [
    {
      method: "GET",
      path: "/bundle",
      help: "the trust bundle (PEM): every root workloads trust",
      handle: (_q, res) => {
        res.writeHead(200, { "content-type": "application/x-pem-file" });
        res.end(cp.ca.trustBundlePem());
      },
    },
    {
      method: "GET",
      path: "/ca",
      help: "trust domain, rotation phase, issuer and number of roots",
      handle: (_q, res) =>
        json(res, 200, {
          trustDomain: cp.ca.trustDomain,
          phase: cp.ca.rotationPhase(),
          issuerId: cp.ca.issuerId(),
          roots: cp.ca.trustBundlePem().match(/-----BEGIN CERTIFICATE-----/g)?.length ?? 0,
        }),
    },
    {
      method: "GET",
      path: "/proxies",
      help: "connected proxies with the versions sent and ACKed",
      handle: (_q, res) => json(res, 200, cp.connectedProxies()),
    },
    {
      method: "GET",
      path: "/status",
      help: "config in force (generation, digest, last rejected change), workloads, proxies (sent/ACKed, last NACK)",
      handle: (_q, res) => json(res, 200, cp.status()),
    },
    metrics(cp),
    {
      method: "POST",
      path: "/ca/rotate",
      help: "rotate the root (?overlapSeconds=N); progress is streamed as lines",
      handle: (_q, res, url) => {
        if (rotating) return json(res, 409, { error: "a root rotation is already running" });
        rotating = true;
        const overlapMs = Number(url.searchParams.get("overlapSeconds") ?? "2") * 1000;
        res.writeHead(200, { "content-type": "text/plain; charset=utf-8" });
        cp.rotateRoot((line) => res.write(`${line}\n`), { overlapMs })
          .then(
            (ok) => res.end(ok ? "" : "rotation incomplete\n"),
            (e: Error) => res.end(`error: ${e.message}\n`),
          )
          .finally(() => {
            rotating = false;
          });
      },
    },
  ];
}

function debugEndpoints(cp: ControlPlane): Endpoint[] {
  return [
    metrics(cp),
    {
      method: "GET",
      path: "/ready",
      help: "200 while the control plane serves",
      handle: (_q, res) => json(res, 200, { ready: true, grpcPort: cp.port }),
    },
  ];
}

function server(title: string, endpoints: Endpoint[]): Server {
  return createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://zmesh");
    if (req.method === "GET" && url.pathname === "/") {
      const lines = endpoints.map((e) => `${e.method.padEnd(5)}${e.path.padEnd(12)}${e.help}`);
      res.writeHead(200, { "content-type": "text/plain; charset=utf-8" });
      res.end(`${title}\n\n${lines.join("\n")}\n`);
      return;
    }
    const ep = endpoints.find((e) => e.path === url.pathname && e.method === req.method);
    if (ep) return ep.handle(req, res, url);
    json(res, 404, { error: `no ${req.method} ${url.pathname}; GET / lists the endpoints` });
  });
}

function closer(s: Server): () => Promise<void> {
  return () =>
    new Promise<void>((r) => {
      s.closeAllConnections();
      s.close(() => r());
    });
}

export async function serveAdmin(socket: string, cp: ControlPlane): Promise<AdminServer> {
  await rm(socket, { force: true });
  const s = server("zmesh control plane admin", adminEndpoints(cp));
  await new Promise<void>((r) => s.listen(socket, r));
  await chmod(socket, 0o600);
  return { close: closer(s) };
}

/** Serves the debug endpoints on `listen`: host:port (port 0 picks one) or a Unix socket path. */
export async function serveDebug(listen: string, cp: ControlPlane): Promise<DebugServer> {
  const s = server("zmesh control plane debug", debugEndpoints(cp));
  if (listen.startsWith("/")) {
    await rm(listen, { force: true });
    await new Promise<void>((r, j) => s.once("error", j).listen(listen, r));
    await chmod(listen, 0o600);
    return { port: 0, close: closer(s) };
  }
  const i = listen.lastIndexOf(":");
  const host = listen.slice(0, i).replace(/^\[|\]$/g, "");
  const port = Number(listen.slice(i + 1));
  if (i <= 0 || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new ZmeshError(
      "ZMESH_USAGE",
      `--debug-listen ${listen} is neither host:port (e.g. 127.0.0.1:15014) nor a Unix socket path`,
    );
  }
  await new Promise<void>((r, j) => s.once("error", j).listen(port, host, r)).catch((e: Error) => {
    throw new ZmeshError(
      "ZMESH_USAGE",
      `--debug-listen ${listen}: cannot listen there (${e.message}); pass another address, or none`,
    );
  });
  return { port: (s.address() as AddressInfo).port, close: closer(s) };
}
