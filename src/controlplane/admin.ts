// The control plane's admin API for the CLI, on a Unix socket (root-only by file mode): the trust
// bundle, CA and proxy state, and root rotation with its progress streamed as lines of text.

import { chmod, rm } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { ControlPlane } from "./server.js";

export interface AdminServer {
  close(): Promise<void>;
}

export async function serveAdmin(socket: string, cp: ControlPlane): Promise<AdminServer> {
  await rm(socket, { force: true });
  let rotating = false;
  const server: Server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://zmesh");
    const json = (status: number, body: unknown) => {
      res.writeHead(status, { "content-type": "application/json" });
      res.end(`${JSON.stringify(body, null, 2)}\n`);
    };
    if (req.method === "GET" && url.pathname === "/bundle") {
      res.writeHead(200, { "content-type": "application/x-pem-file" });
      res.end(cp.ca.trustBundlePem());
    } else if (req.method === "GET" && url.pathname === "/ca") {
      json(200, {
        trustDomain: cp.ca.trustDomain,
        phase: cp.ca.rotationPhase(),
        issuerId: cp.ca.issuerId(),
        roots: cp.ca.trustBundlePem().match(/-----BEGIN CERTIFICATE-----/g)?.length ?? 0,
      });
    } else if (req.method === "GET" && url.pathname === "/proxies") {
      json(200, cp.connectedProxies());
    } else if (req.method === "POST" && url.pathname === "/ca/rotate") {
      if (rotating) return json(409, { error: "a root rotation is already running" });
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
    } else json(404, { error: "GET /bundle, /ca, /proxies; POST /ca/rotate?overlapSeconds=N" });
  });
  await new Promise<void>((r) => server.listen(socket, r));
  await chmod(socket, 0o600);
  return {
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}
