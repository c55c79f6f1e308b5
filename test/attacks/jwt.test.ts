// Attack suite, JWT: forged, stale or misplaced tokens sent through the caller's sidecar to a
// workload whose policy admits /private only for the request principal `https://issuer.test/alice`.
// None may yield a request principal: each is 401 (invalid token) or 403 (no principal), and the
// app never sees /private.
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { exportJWK, generateKeyPair, SignJWT } from "jose";
import { call } from "../harness/index.js";
import { type AttackMesh, attackMesh, CATALOG_VIP } from "./lib.js";

const ISSUER = "https://issuer.test";
const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString("base64url");

describe("attack: JWTs that must not give a request principal", { timeout: 30_000 }, () => {
  let m: AttackMesh;
  let good: (
    claims?: Record<string, unknown>,
    opts?: { exp?: string; iss?: string; nbf?: string },
  ) => Promise<string>;
  let jwk: Record<string, unknown>;
  const claims = { sub: "alice", aud: "shop-api" };

  before(async () => {
    const { publicKey, privateKey } = await generateKeyPair("ES256");
    jwk = { ...(await exportJWK(publicKey)), kid: "k1", alg: "ES256" };
    good = (c = claims, o = {}) => {
      const t = new SignJWT(c)
        .setProtectedHeader({ alg: "ES256", kid: "k1" })
        .setIssuer(o.iss ?? ISSUER)
        .setIssuedAt()
        .setExpirationTime(o.exp ?? "5m");
      if (o.nbf) t.setNotBefore(o.nbf);
      return t.sign(privateKey);
    };
    const extra = `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: { name: jwt, namespace: shop }
spec:
  selector: { matchLabels: { app: catalog } }
  jwtRules:
    - issuer: ${ISSUER}
      audiences: [shop-api]
      jwks: '${JSON.stringify({ keys: [jwk] })}'
`;
    const policies = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: private, namespace: shop }
spec:
  selector: { matchLabels: { app: catalog } }
  rules:
    - to: [{ operation: { paths: ["/public"] } }]
    - from: [{ source: { requestPrincipals: ["${ISSUER}/alice"] } }]
      to: [{ operation: { paths: ["/private"] } }]
`;
    m = await attackMesh(extra, policies);
  });
  after(() => m.close());

  async function attempt(headers: Record<string, string>, path = "/private") {
    const from = m.target.seen.length;
    const r = await call(m.mesh, m.frontend, CATALOG_VIP, { path, headers });
    const reached = m.target.seen.slice(from).map((s) => s.url);
    return { status: r.status, reached };
  }

  it("the control: a valid token for alice is admitted", async () => {
    const r = await attempt({ authorization: `Bearer ${await good()}` });
    assert.equal(r.status, 200);
  });

  const cases: [string, () => Promise<Record<string, string>>, number[]][] = [
    [
      "alg none",
      async () => ({
        authorization: `Bearer ${b64({ alg: "none", typ: "JWT" })}.${b64({ ...claims, iss: ISSUER, exp: Math.floor(Date.now() / 1000) + 300 })}.`,
      }),
      [401],
    ],
    [
      "alg none with a signature",
      async () => ({
        authorization: `Bearer ${b64({ alg: "none" })}.${b64({ ...claims, iss: ISSUER })}.c2ln`,
      }),
      [401],
    ],
    [
      "HS256 signed with the public JWK as the secret (algorithm confusion)",
      async () => {
        const h = b64({ alg: "HS256", kid: "k1" });
        const p = b64({ ...claims, iss: ISSUER, exp: Math.floor(Date.now() / 1000) + 300 });
        const sig = createHmac("sha256", JSON.stringify(jwk)).update(`${h}.${p}`).digest("base64url");
        return { authorization: `Bearer ${h}.${p}.${sig}` };
      },
      [401],
    ],
    [
      "a wrong key under the right kid",
      async () => {
        const { privateKey } = await generateKeyPair("ES256");
        const t = await new SignJWT(claims)
          .setProtectedHeader({ alg: "ES256", kid: "k1" })
          .setIssuer(ISSUER)
          .setExpirationTime("5m")
          .sign(privateKey);
        return { authorization: `Bearer ${t}` };
      },
      [401],
    ],
    [
      "a payload swapped under a valid signature",
      async () => {
        const [h, , s] = (await good({ sub: "bob", aud: "shop-api" })).split(".");
        return {
          authorization: `Bearer ${h}.${b64({ ...claims, iss: ISSUER, exp: Math.floor(Date.now() / 1000) + 300 })}.${s}`,
        };
      },
      [401],
    ],
    [
      "an expired token",
      async () => ({ authorization: `Bearer ${await good(claims, { exp: "-2m" })}` }),
      [401],
    ],
    [
      "a token not valid yet",
      async () => ({ authorization: `Bearer ${await good(claims, { nbf: "10m" })}` }),
      [401],
    ],
    [
      "a wrong issuer",
      async () => ({ authorization: `Bearer ${await good(claims, { iss: "https://evil.test" })}` }),
      [401, 403],
    ],
    [
      "a wrong audience",
      async () => ({ authorization: `Bearer ${await good({ sub: "alice", aud: "other" })}` }),
      [401],
    ],
    ["no audience", async () => ({ authorization: `Bearer ${await good({ sub: "alice" })}` }), [401]],
    [
      "another subject",
      async () => ({ authorization: `Bearer ${await good({ sub: "bob", aud: "shop-api" })}` }),
      [403],
    ],
    [
      "a valid token in a query parameter nobody configured",
      async () => ({ "x-path": `?access_token=${await good()}` }),
      [401, 403],
    ],
    ["a valid token in a cookie", async () => ({ cookie: `access_token=${await good()}` }), [403]],
    ["a valid token in another header", async () => ({ "x-jwt-assertion": await good() }), [403]],
    [
      "a valid token under another scheme",
      async () => ({ authorization: `Basic ${await good()}` }),
      [401, 403],
    ],
    ["a garbage token", async () => ({ authorization: "Bearer not.a.jwt" }), [401]],
  ];
  for (const [what, make, allowed] of cases) {
    it(`${what}: no request principal`, async () => {
      const headers = await make();
      const q = headers["x-path"];
      delete headers["x-path"];
      const r = await attempt(headers, `/private${q ?? ""}`);
      assert.ok(allowed.includes(r.status), `${what}: got ${r.status}`);
      assert.deepEqual(r.reached, [], `${what}: the app saw it`);
    });
  }
});
