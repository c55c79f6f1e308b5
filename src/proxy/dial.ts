// Mutual TLS from this sidecar to another: dialled with the current SVID and trust bundle, and
// handed over only if the server proves a SPIFFE ID the destination service may run as (secure
// naming; Node checks DNS names only, SVIDs carry a URI). Sessions are resumed through the
// SessionCache, whose key holds what the full handshake proved; the identity check runs on every
// connection, resumed or not: with the certificate's ID on a full handshake, with the ID the
// session's full handshake proved on a resumed one (Node's client has no peer certificate then).

import { createSecureContext, type SecureContext, type TLSSocket, connect as tlsConnect } from "node:tls";
import { ZmeshError } from "../errors/index.js";
import { peerSpiffeId } from "../identity/index.js";
import type { ReadHook } from "./http1/pool.js";
import type { SessionCache } from "./sessions.js";
import type { ProxyState, Route } from "./state.js";

const CONNECT_TIMEOUT_MS = 5_000;

/**
 * One client context per SVID and bundle: building it (parsing the key, the chain and the roots)
 * cost more than a resumed handshake when done per dial.
 */
const contexts = new WeakMap<object, { bundle: string; ctx: SecureContext }>();

function contextFor(cert: { keyPem: string; chainPem: string[] }, bundle: string): SecureContext {
  const held = contexts.get(cert);
  if (held && held.bundle === bundle) return held.ctx;
  const ctx = createSecureContext({
    key: cert.keyPem,
    cert: cert.chainPem.join(""),
    ca: bundle,
    minVersion: "TLSv1.3",
  });
  contexts.set(cert, { bundle, ctx });
  return ctx;
}

/** `route` gives the destination service as it is now (its allowed identities may change live). */
export function dialMtls(
  state: Pick<ProxyState, "cert" | "trustBundlePem">,
  sessions: SessionCache,
  host: string,
  port: number,
  alpn: string[],
  route: () => Pick<Route, "allowed" | "service"> | undefined,
  cb: (err: Error | null, sock: TLSSocket | null) => void,
  /** Reads the connection through `onread` instead of its Readable side (pooled HTTP/1.1, http1/pool.ts). */
  onread?: ReadHook["onread"],
): void {
  const cert = state.cert;
  const bundle = state.trustBundlePem;
  if (!cert || !bundle) return cb(new ZmeshError("ZMESH_NOT_READY", "no certificate yet"), null);
  // Resume a session only under the key of what its full handshake proved (sessions.ts).
  const expected = route()?.allowed;
  const key = expected ? sessions.key(`${host}:${port}`, expected, bundle, cert) : undefined;
  const session = key ? sessions.get(key) : undefined;
  let done = false;
  const finish = (err: Error | null, sock: TLSSocket | null) => {
    if (done) return;
    done = true;
    if (err && key) sessions.delete(key);
    cb(err, sock);
  };
  const sock = tlsConnect({
    ...(session ? { session: session.ticket } : {}),
    ...(onread ? { onread } : {}),
    host,
    port,
    secureContext: contextFor(cert, bundle),
    minVersion: "TLSv1.3",
    ALPNProtocols: alpn,
    // SVIDs carry a URI SAN, not a DNS name: the identity check is done below instead.
    checkServerIdentity: () => undefined,
  });
  // TLS 1.3 tickets arrive after the handshake and each is best used once: keep the newest,
  // with the identity proved for this connection (only once it passed secure naming).
  let peer: string | undefined;
  let notAfter = 0;
  if (key)
    sock.on("session", (ticket: Buffer) => {
      if (peer !== undefined && !sock.destroyed) sessions.set(key, { ticket, peer, notAfter });
    });
  sock.setNoDelay(true);
  sock.setTimeout(CONNECT_TIMEOUT_MS, () => {
    sock.destroy();
    finish(new Error(`connect timeout after ${CONNECT_TIMEOUT_MS} ms`), null);
  });
  sock.once("secureConnect", () => {
    sock.setTimeout(0);
    const reused = sock.isSessionReused();
    if (reused) sessions.resumed++;
    else sessions.full++;
    const r = route();
    try {
      // Resumed: only the session we offered can have been resumed, and its identity is known.
      const x509 = reused ? undefined : sock.getPeerX509Certificate();
      const id = reused ? session!.peer : peerSpiffeId(x509);
      if (!r?.allowed.has(id)) {
        throw new ZmeshError(
          "ZMESH_SECURE_NAMING",
          `${host}:${port} presented ${id}, which service ${r?.service.namespace}/${r?.service.name} may not run as`,
        );
      }
      peer = id;
      // A ticket from this connection is good only while the certificate this handshake verified is.
      notAfter = reused ? session!.notAfter : Date.parse(x509!.validTo);
      finish(null, sock);
    } catch (e) {
      sock.destroy();
      finish(e as Error, null);
    }
  });
  sock.once("error", (e) => finish(e, null));
}
