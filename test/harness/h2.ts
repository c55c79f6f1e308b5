// HTTP/2 additions to the in-process harness: an h2c client session through a proxy's outbound
// port (as if the app had dialled a service), a request helper that collects body and trailers,
// and a fallback destination for clients that pick their own local ports (grpc-js).

import { createHash } from "node:crypto";
import {
  type ClientHttp2Session,
  connect as h2connect,
  type IncomingHttpHeaders,
  type OutgoingHttpHeaders,
} from "node:http2";
import { connect } from "node:net";
import type { ProxyTimeouts } from "../../src/config/index.js";
import type { Sidecar } from "../../src/proxy/index.js";
import { clientServerMesh, type MeshFixture } from "./index.js";

/** An h2c session (prior knowledge) from a chosen local port, so the outbound knows its destination. */
export async function h2Session(
  mesh: MeshFixture,
  via: Sidecar,
  dst: { address: string; port: number },
): Promise<ClientHttp2Session> {
  for (let attempt = 0; ; attempt++) {
    const localPort = 20_000 + Math.floor(Math.random() * 40_000);
    mesh.intents.set(localPort, dst);
    try {
      return await new Promise<ClientHttp2Session>((resolve, reject) => {
        const s = h2connect(`http://${dst.address}:${dst.port}`, {
          createConnection: () => connect({ host: "127.0.0.1", port: via.ports.outbound, localPort }),
        });
        s.once("connect", () => resolve(s));
        s.once("error", reject);
      });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EADDRINUSE" || attempt >= 5) throw e;
    }
  }
}

export interface H2Reply {
  headers: IncomingHttpHeaders;
  body: Buffer;
  trailers: IncomingHttpHeaders | undefined;
}

/** One request on a session; resolves with headers, the whole body and trailers (bounded to 20 s). */
export function h2Request(
  s: ClientHttp2Session,
  headers: OutgoingHttpHeaders,
  body?: Buffer | string,
): Promise<H2Reply> {
  return new Promise((resolve, reject) => {
    const req = s.request(headers, { endStream: body === undefined });
    const timer = setTimeout(() => {
      req.close();
      reject(new Error(`no complete answer to ${headers[":path"]} in 20 s`));
    }, 20_000);
    let response: IncomingHttpHeaders = {};
    let trailers: IncomingHttpHeaders | undefined;
    const chunks: Buffer[] = [];
    req.on("response", (h) => {
      response = h;
    });
    req.on("trailers", (t) => {
      trailers = t;
    });
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      clearTimeout(timer);
      resolve({ headers: response, body: Buffer.concat(chunks), trailers });
    });
    req.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    if (body !== undefined) req.end(body);
  });
}

export const sha256 = (b: Buffer | string) => createHash("sha256").update(b).digest("hex");

/**
 * Makes every outbound connection without a registered intent go to `dst`: for clients such as
 * grpc-js that choose their own local port. Returns a function that undoes it.
 */
export function fallbackIntent(mesh: MeshFixture, dst: { address: string; port: number }): () => void {
  const before = mesh.intents;
  class Fallback extends Map<number, { address: string; port: number }> {
    override get(k: number) {
      return super.get(k) ?? dst;
    }
  }
  mesh.intents = new Fallback(before);
  return () => {
    mesh.intents = before;
  };
}

/**
 * Two workloads, shop/client and shop/api, and Service `api` at `vip` (port 8080, `http2-api`)
 * in front of an HTTP/2 app listening on loopback `appPort`: the mesh and both proxies (with
 * `timeouts` overriding each one's time bounds, if given).
 */
export async function clientApiMesh(
  vip: string,
  appPort: number,
  timeouts?: { client?: Partial<ProxyTimeouts>; server?: Partial<ProxyTimeouts> },
): Promise<{ mesh: MeshFixture; client: Sidecar; api: Sidecar }> {
  const { mesh, client, server } = await clientServerMesh({
    server: "api",
    vip,
    appPort,
    port: 8080,
    portName: "http2-api",
    ...(timeouts ? { timeouts } : {}),
  });
  return { mesh, client, api: server };
}
