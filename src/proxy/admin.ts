// Admin (127.0.0.1:15000 only) and health (:15021) servers. The admin endpoints are one list
// that feeds both the "/" index and docs/proxy-admin.md.

import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Certificate, ProxyState } from "./state.js";

export interface AdminEndpoint {
  path: string;
  method: "GET" | "POST";
  help: string;
  handle: (req: IncomingMessage, res: ServerResponse) => void;
}

/** What /certs and `zmesh certs -o json` show: everything about the SVID but its key. */
export function certificateView(c: Certificate, trustBundlePem: string) {
  return {
    spiffeId: c.spiffeId,
    serial: c.serial,
    notBefore: c.notBefore.toISOString(),
    notAfter: c.notAfter.toISOString(),
    issuer: c.issuer,
    issuerId: c.issuerId,
    chainPem: c.chainPem,
    trustBundlePem,
  };
}

function json(res: ServerResponse, status: number, body: unknown): void {
  const text = `${JSON.stringify(body, null, 2)}\n`;
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

export interface AdminActions {
  drain: () => Promise<void>;
  quit: () => void;
  setLogLevel: (level: string) => void;
}

const LEVELS = ["trace", "debug", "info", "warn", "error"];

export function adminEndpoints(state: ProxyState, actions: AdminActions): AdminEndpoint[] {
  return [
    {
      path: "/ready",
      method: "GET",
      help: "200 once the proxy has a certificate and a config, else 503",
      handle: (_q, r) => json(r, state.ready ? 200 : 503, { ready: state.ready }),
    },
    {
      path: "/config_dump",
      method: "GET",
      help: "the snapshot in force (version, policies, services)",
      handle: (_q, r) => json(r, 200, state.snapshot ?? null),
    },
    {
      path: "/certs",
      method: "GET",
      help: "the workload certificate: SPIFFE ID, serial, validity, issuer, chain (PEM, leaf first) and trust bundle; never the key",
      handle: (_q, r) => {
        const c = state.cert;
        json(
          r,
          c ? 200 : 503,
          c ? certificateView(c, state.trustBundlePem ?? "") : { error: "no certificate yet" },
        );
      },
    },
    {
      path: "/drain",
      method: "POST",
      help: "stop taking new connections; answers once requests in flight are done (5 s at most)",
      handle: (_q, r) =>
        void actions.drain().then(() => json(r, 200, { drained: true, inflight: state.inflight })),
    },
    {
      path: "/logging",
      method: "POST",
      help: "set the log level: /logging?level=debug (trace, debug, info, warn, error)",
      handle: (q, r) => {
        const level = new URL(q.url ?? "/", "http://admin").searchParams.get("level") ?? "";
        if (!LEVELS.includes(level))
          return json(r, 400, { error: `level must be one of ${LEVELS.join(", ")}` });
        actions.setLogLevel(level);
        json(r, 200, { level });
      },
    },
    {
      path: "/quitquitquit",
      method: "POST",
      help: "drain, then exit",
      handle: (_q, r) => {
        json(r, 200, { quitting: true });
        setImmediate(actions.quit);
      },
    },
  ];
}

export function adminServer(endpoints: AdminEndpoint[]): Server {
  return createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (path === "/") {
      const lines = endpoints.map((e) => `${e.method.padEnd(5)}${e.path.padEnd(16)}${e.help}`);
      res.writeHead(200, { "content-type": "text/plain" });
      res.end(`zmesh proxy admin\n\n${lines.join("\n")}\n`);
      return;
    }
    const ep = endpoints.find((e) => e.path === path);
    if (!ep) return json(res, 404, { error: `no admin endpoint ${path}; GET / lists them` });
    if (req.method !== ep.method) return json(res, 405, { error: `${path} takes ${ep.method}` });
    ep.handle(req, res);
  });
}

export function healthServer(state: ProxyState): Server {
  return createServer((req, res) => {
    if (req.url === "/healthz/ready") return json(res, state.ready ? 200 : 503, { ready: state.ready });
    json(res, 404, { error: "GET /healthz/ready" });
  });
}
