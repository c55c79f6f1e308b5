// What the attack suite's in-process files share: a small mesh (a caller "frontend", a target
// "catalog" whose app records every request it receives, with a DENY policy on /admin*), and raw
// sockets that send exact bytes through the caller's outbound or straight into the target's
// inbound over mutual TLS with a real mesh SVID, since HTTP clients normalize what they send.

import { connect } from "node:net";
import { connect as tlsConnect } from "node:tls";
import type { Sidecar } from "../../src/proxy/index.js";
import {
  app,
  controlPlane,
  entryYaml,
  freePort,
  type MeshFixture,
  proxy,
  serviceYaml,
} from "../harness/index.js";

export const FRONTEND_ID = "spiffe://cluster.local/ns/shop/sa/frontend";
export const CATALOG_VIP = { address: "198.19.0.10", port: 80 };
/** The same workload behind a port whose protocol nothing declares (the outbound sniffs it). */
export const CATALOG_AUTO_VIP = { address: "198.19.0.20", port: 80 };

/** DENY /admin*, DENY DELETE, DENY Host secret.shop; everything else allowed from the mesh. */
export const CATALOG_POLICIES = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: deny-admin, namespace: shop }
spec:
  selector: { matchLabels: { app: catalog } }
  action: DENY
  rules:
    - to: [{ operation: { paths: ["/admin*"] } }]
    - to: [{ operation: { methods: ["DELETE"] } }]
    - to: [{ operation: { hosts: ["secret.shop"] } }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: mesh-only, namespace: shop }
spec:
  selector: { matchLabels: { app: catalog } }
  rules:
    - from: [{ source: { principals: ["cluster.local/ns/shop/sa/frontend"] } }]
`;

export interface AttackMesh {
  mesh: MeshFixture;
  frontend: Sidecar;
  catalog: Sidecar;
  target: Awaited<ReturnType<typeof app>>;
  /** The catalog proxy's inbound port (what iptables would redirect the app port to). */
  inbound: number;
  /** A valid SVID of the frontend, issued by the mesh CA, for raw mTLS into the inbound. */
  creds: { key: string; cert: string; ca: string };
  close(): Promise<void>;
}

export async function attackMesh(extraYaml = "", policies = CATALOG_POLICIES): Promise<AttackMesh> {
  const target = await app("catalog");
  const inbound = await freePort();
  const yaml = `${entryYaml("frontend")}${entryYaml("catalog")}${serviceYaml("catalog", CATALOG_VIP.address, [[80, inbound]])}${serviceYaml("catalog-auto", CATALOG_AUTO_VIP.address, [[80, inbound, "web"]], "catalog")}${policies}\n---\n${extraYaml}`;
  const mesh = await controlPlane(yaml, [
    { namespace: "shop", name: "frontend" },
    { namespace: "shop", name: "catalog" },
  ]);
  const frontend = await proxy(mesh, "shop/frontend", { inboundPort: await freePort() });
  const catalog = await proxy(mesh, "shop/catalog", { inboundPort: inbound, appPort: target.port });
  const { keyPem, svid } = await mesh.cp.ca.issue(FRONTEND_ID);
  return {
    mesh,
    frontend,
    catalog,
    target,
    inbound,
    creds: { key: keyPem, cert: svid.chainPem.join(""), ca: mesh.cp.ca.trustBundlePem() },
    async close() {
      await mesh.close();
      target.server.close();
    },
  };
}

/**
 * How long a raw exchange waits: for the first byte of an answer (generous, the machine may be
 * busy), then for more once something arrived. A peer that never answers costs FIRST_BYTE_MS.
 */
const FIRST_BYTE_MS = 1_500;
const IDLE_MS = 300;

/** A chunk, or a pause in ms between chunks (so that they leave as separate segments). */
export type Chunk = string | Buffer | number;

function collect(
  sock: import("node:net").Socket,
  chunks: Chunk[],
  ready: "connect" | "secureConnect",
): Promise<string> {
  return new Promise((resolve) => {
    let data = "";
    let idle: NodeJS.Timeout | undefined;
    const hard = setTimeout(() => sock.destroy(), 8_000);
    const done = () => {
      clearTimeout(hard);
      if (idle) clearTimeout(idle);
      resolve(data);
    };
    const arm = (ms: number) => {
      if (idle) clearTimeout(idle);
      idle = setTimeout(() => sock.destroy(), ms);
    };
    sock.once(ready, async () => {
      for (const c of chunks) {
        if (typeof c === "number") await new Promise((r) => setTimeout(r, c));
        else sock.write(c);
      }
      if (data === "") arm(FIRST_BYTE_MS);
    });
    sock.on("data", (d: Buffer) => {
      data += d.toString("latin1");
      arm(IDLE_MS);
    });
    sock.on("error", () => {});
    sock.once("close", done);
  });
}

/** Sends exact bytes over mutual TLS (a real mesh SVID) to an inbound port; resolves all it answered. */
export function rawInbound(m: AttackMesh, ...chunks: Chunk[]): Promise<string> {
  const s = tlsConnect({
    host: "127.0.0.1",
    port: m.inbound,
    key: m.creds.key,
    cert: m.creds.cert,
    ca: m.creds.ca,
    checkServerIdentity: () => undefined,
    ALPNProtocols: ["http/1.1"],
    minVersion: "TLSv1.3",
  });
  return collect(s, chunks, "secureConnect");
}

/** Sends exact bytes through the frontend's outbound as if its app had dialled `dst`. */
export async function rawOutbound(
  m: AttackMesh,
  chunks: Chunk[],
  dst: { address: string; port: number } = CATALOG_VIP,
): Promise<string> {
  // A randomly chosen local port may still be in TIME_WAIT from an earlier exchange: pick again.
  for (let attempt = 0; ; attempt++) {
    const localPort = 20_000 + Math.floor(Math.random() * 40_000);
    m.mesh.intents.set(localPort, dst);
    const s = connect({ host: "127.0.0.1", port: m.frontend.ports.outbound, localPort });
    const inUse = new Promise<boolean>((resolve) => {
      s.once("connect", () => resolve(false));
      s.once("error", (e: NodeJS.ErrnoException) => resolve(e.code === "EADDRINUSE"));
    });
    const answer = collect(s, chunks, "connect");
    if ((await inUse) && attempt < 5) continue;
    return answer;
  }
}

/** The status codes of every HTTP response in a byte stream, in order. */
export function statuses(text: string): number[] {
  return [...text.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((x) => Number(x[1]));
}

/** Paths the app received since index `from`. */
export function seenSince(m: AttackMesh, from: number): string[] {
  return m.target.seen.slice(from).map((s) => s.url);
}
