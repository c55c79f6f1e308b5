// Issued SVIDs in a real mutual-TLS handshake on loopback: each side learns the other's SPIFFE ID from the
// peer certificate, and a certificate from another CA is refused in either direction.

import assert from "node:assert/strict";
import { once } from "node:events";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import tls from "node:tls";
import { CertificateAuthority, spiffeIdFromCertDer } from "./index.js";

const ORDERS = "spiffe://cluster.local/ns/shop/sa/orders";
const FRONTEND = "spiffe://cluster.local/ns/shop/sa/frontend";

interface Credentials {
  key: string;
  cert: string;
  ca: string;
}

async function credentials(ca: CertificateAuthority, uri: string): Promise<Credentials> {
  const { keyPem, svid } = await ca.issue(uri, 600);
  return { key: keyPem, cert: svid.chainPem.join(""), ca: ca.trustBundlePem() };
}

describe("mutual TLS with issued SVIDs", () => {
  let mesh: CertificateAuthority;
  let rogue: CertificateAuthority;
  let server: tls.Server;
  let port: number;
  const seenByServer: string[] = [];
  const clientErrors: Error[] = [];

  before(async () => {
    mesh = await CertificateAuthority.create();
    rogue = await CertificateAuthority.create();
    const creds = await credentials(mesh, ORDERS);
    server = tls.createServer({ ...creds, requestCert: true, rejectUnauthorized: true }, (socket) => {
      const peer = socket.getPeerX509Certificate();
      seenByServer.push(peer ? spiffeIdFromCertDer(peer.raw) : "none");
      socket.end("hello from orders");
    });
    server.on("tlsClientError", (e) => clientErrors.push(e));
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    port = (server.address() as AddressInfo).port;
  });

  after(async () => {
    server.close();
    await once(server, "close");
  });

  /** Connects with `creds`; resolves with what the client saw or the error that ended the connection. */
  function connect(creds: Credentials): Promise<{ peer?: string; data: string; error?: Error }> {
    return new Promise((resolve) => {
      let data = "";
      let peer: string | undefined;
      const socket = tls.connect({
        host: "127.0.0.1",
        port,
        ...creds,
        // SVIDs carry no DNS name; who the server is, is decided by its SPIFFE ID below.
        checkServerIdentity: () => undefined,
      });
      socket.setEncoding("utf8");
      socket.on("secureConnect", () => {
        const cert = socket.getPeerX509Certificate();
        peer = cert ? spiffeIdFromCertDer(cert.raw) : undefined;
      });
      socket.on("data", (chunk: string) => {
        data += chunk;
      });
      socket.on("error", (error) => resolve({ peer, data, error }));
      socket.on("close", () => resolve({ peer, data }));
    });
  }

  test("both sides complete the handshake and read each other's SPIFFE ID", async () => {
    seenByServer.length = 0;
    const r = await connect(await credentials(mesh, FRONTEND));
    assert.equal(r.error, undefined);
    assert.equal(r.peer, ORDERS);
    assert.equal(r.data, "hello from orders");
    assert.deepEqual(seenByServer, [FRONTEND]);
  });

  test("a client whose certificate comes from another CA is rejected", async () => {
    seenByServer.length = 0;
    clientErrors.length = 0;
    const foreign = await credentials(rogue, FRONTEND);
    const r = await connect({ ...foreign, ca: mesh.trustBundlePem() });
    assert.equal(r.data, "");
    assert.deepEqual(seenByServer, []);
    // With TLS 1.3 the client finishes its side first. Node's server then checks the client certificate
    // and destroys the socket without an alert, so the server reports a hang-up rather than the reason.
    if (clientErrors.length === 0) await once(server, "tlsClientError");
    assert.equal(clientErrors.length, 1);
  });

  test("a server whose certificate comes from another CA is rejected by the client", async () => {
    const impostor = tls.createServer(
      { ...(await credentials(rogue, ORDERS)), requestCert: true, rejectUnauthorized: false },
      (socket) => socket.end("should not be read"),
    );
    impostor.listen(0, "127.0.0.1");
    await once(impostor, "listening");
    try {
      const r = await new Promise<{ error?: Error; data: string }>((resolve) => {
        let data = "";
        const socket = tls.connect({
          host: "127.0.0.1",
          port: (impostor.address() as AddressInfo).port,
          ca: mesh.trustBundlePem(),
          checkServerIdentity: () => undefined,
        });
        socket.on("data", (c: Buffer) => {
          data += c.toString();
        });
        socket.on("error", (error) => resolve({ error, data }));
        socket.on("close", () => resolve({ data }));
      });
      assert.equal(r.data, "");
      assert.match(String(r.error), /certificate|verify/i);
    } finally {
      impostor.close();
    }
  });
});
