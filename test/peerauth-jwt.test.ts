// PeerAuthentication and RequestAuthentication enforced by a real sidecar, in process:
// a PERMISSIVE port takes plaintext (no identity) and mutual TLS alike, a STRICT one only mTLS;
// a valid JWT gives a request principal, an invalid one gets 401, a missing one gets none.
import assert from "node:assert/strict";
import { connect } from "node:net";
import { after, before, describe, it } from "node:test";
import { exportJWK, generateKeyPair, SignJWT } from "jose";
import type { Sidecar } from "../src/proxy/index.js";
import {
  app,
  call,
  controlPlane,
  entryYaml,
  freePort,
  type MeshFixture,
  proxy,
  serviceYaml,
} from "./harness/index.js";

const ISSUER = "https://issuer.test";

function plaintext(port: number, request: string): Promise<string> {
  return new Promise((resolve) => {
    const s = connect({ host: "127.0.0.1", port }, () => s.write(request));
    let data = "";
    s.on("data", (d: Buffer) => {
      data += d.toString("latin1");
    });
    s.on("error", () => resolve(data));
    s.on("close", () => resolve(data));
    setTimeout(() => s.destroy(), 3_000).unref();
  });
}

describe("PeerAuthentication and JWT at the inbound", { timeout: 30_000 }, () => {
  let mesh: MeshFixture;
  let client: Sidecar;
  let api: Awaited<ReturnType<typeof app>>;
  let apiInbound: number;
  let sign: (claims: Record<string, unknown>, exp?: string) => Promise<string>;
  const vip = { address: "198.19.0.30", port: 80 };

  before(async () => {
    const { publicKey, privateKey } = await generateKeyPair("ES256");
    const jwk = { ...(await exportJWK(publicKey)), kid: "k1", alg: "ES256" };
    sign = (claims, exp = "5m") =>
      new SignJWT(claims)
        .setProtectedHeader({ alg: "ES256", kid: "k1" })
        .setIssuer(ISSUER)
        .setIssuedAt()
        .setExpirationTime(exp)
        .sign(privateKey);
    api = await app("api");
    apiInbound = await freePort();
    const yaml = `${entryYaml("client")}${entryYaml("api")}${serviceYaml("api", vip.address, [[80, apiInbound]])}
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: api, namespace: shop }
spec:
  selector: { matchLabels: { app: api } }
  mtls: { mode: STRICT }
  portLevelMtls:
    "${api.port}": { mode: PERMISSIVE }
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: { name: api-jwt, namespace: shop }
spec:
  selector: { matchLabels: { app: api } }
  jwtRules:
    - issuer: ${ISSUER}
      audiences: [shop-api]
      jwks: '${JSON.stringify({ keys: [jwk] })}'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: api-private, namespace: shop }
spec:
  selector: { matchLabels: { app: api } }
  rules:
    - to: [{ operation: { paths: ["/public"] } }]
    - from: [{ source: { requestPrincipals: ["${ISSUER}/alice"] } }]
      to: [{ operation: { paths: ["/private"] } }]
`;
    mesh = await controlPlane(yaml, [
      { namespace: "shop", name: "client" },
      { namespace: "shop", name: "api" },
    ]);
    client = await proxy(mesh, "shop/client", { inboundPort: await freePort() });
    await proxy(mesh, "shop/api", { inboundPort: apiInbound, appPort: api.port });
  });
  after(async () => {
    await mesh.close();
    api.server.close();
  });

  it("a PERMISSIVE port serves plaintext, without an identity for the app", async () => {
    const r = await plaintext(
      apiInbound,
      "GET /public HTTP/1.1\r\nhost: api\r\nconnection: close\r\nx-forwarded-client-cert: URI=spiffe://cluster.local/ns/shop/sa/admin\r\n\r\n",
    );
    assert.match(r, /^HTTP\/1\.1 200/);
    assert.equal(
      api.seen.at(-1)?.headers["x-forwarded-client-cert"],
      undefined,
      "a spoofed XFCC is stripped, none is set",
    );
  });

  it("the same port still serves mutual TLS, with the identity", async () => {
    const r = await call(mesh, client, vip, { path: "/public" });
    assert.equal(r.status, 200);
    assert.match(
      String(api.seen.at(-1)?.headers["x-forwarded-client-cert"]),
      /URI=spiffe:\/\/cluster\.local\/ns\/shop\/sa\/client/,
    );
  });

  it("a valid JWT gives the request principal the policy asks for", async () => {
    const token = await sign({ sub: "alice", aud: "shop-api" });
    const r = await call(mesh, client, vip, {
      path: "/private",
      headers: { authorization: `Bearer ${token}` },
    });
    assert.equal(r.status, 200);
    assert.equal(api.seen.at(-1)?.headers.authorization, undefined, "the token is not forwarded by default");
  });

  it("no token: no request principal, so the rule does not match (403, not 401)", async () => {
    assert.equal((await call(mesh, client, vip, { path: "/private" })).status, 403);
  });

  it("an invalid token gets 401: another subject is fine but expired, wrong audience or wrong key are not", async () => {
    const bob = await sign({ sub: "bob", aud: "shop-api" });
    assert.equal(
      (await call(mesh, client, vip, { path: "/private", headers: { authorization: `Bearer ${bob}` } }))
        .status,
      403,
    );
    const expired = await sign({ sub: "alice", aud: "shop-api" }, "-1m");
    const wrongAud = await sign({ sub: "alice", aud: "other" });
    const { privateKey: other } = await generateKeyPair("ES256");
    const wrongKey = await new SignJWT({ sub: "alice", aud: "shop-api" })
      .setProtectedHeader({ alg: "ES256", kid: "k1" })
      .setIssuer(ISSUER)
      .setExpirationTime("5m")
      .sign(other);
    const none = `${Buffer.from(JSON.stringify({ alg: "none" })).toString("base64url")}.${Buffer.from(JSON.stringify({ iss: ISSUER, sub: "alice", aud: "shop-api" })).toString("base64url")}.`;
    for (const [what, t] of [
      ["expired", expired],
      ["wrong audience", wrongAud],
      ["wrong key", wrongKey],
      ["alg none", none],
    ] as const) {
      const r = await call(mesh, client, vip, {
        path: "/private",
        headers: { authorization: `Bearer ${t}` },
      });
      assert.equal(r.status, 401, what);
      assert.equal(r.headers["x-zmesh-flag"], "JWT_INVALID", what);
    }
  });
});
