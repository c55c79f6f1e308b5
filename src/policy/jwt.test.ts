// RequestAuthentication: validation (field paths and codes), and authenticateJwt on tokens made here
// with jose. The rules: no token (in a place a rule reads) is fine and gives no principal; a token
// found must verify (asymmetric algorithm, a key of a rule with its issuer, exp/nbf with 60 s
// skew, one of the audiences) or the request is refused; a valid one gives "<iss>/<sub>".

import assert from "node:assert/strict";
import { before, describe, test } from "node:test";
import { exportJWK, generateKeyPair, generateSecret, type JWK, SignJWT } from "jose";
import { isZmeshError } from "../errors/index.js";
import { authenticateJwt, validateRequestAuthenticationSpec } from "./jwt.js";
import type { Issue, JwtRule, RequestAuthRef } from "./types.js";

const INVALID = "ZMESH_CONFIG_INVALID";
const UNSUPPORTED = "ZMESH_CONFIG_UNSUPPORTED";
const ISS = "https://issuer.example";
const NOW = new Date("2030-01-01T00:00:00Z");
const nowS = Math.floor(NOW.getTime() / 1000);

type Key = Awaited<ReturnType<typeof generateKeyPair>>["privateKey"];
let esKey: Key;
let esJwk: JWK;
let rsKey: Key;
let rsJwk: JWK;
let otherKey: Key;

before(async () => {
  const es = await generateKeyPair("ES256", { extractable: true });
  esKey = es.privateKey;
  esJwk = { ...(await exportJWK(es.publicKey)), kid: "es", alg: "ES256" };
  const rs = await generateKeyPair("RS256", { extractable: true });
  rsKey = rs.privateKey;
  rsJwk = { ...(await exportJWK(rs.publicKey)), kid: "rs" };
  otherKey = (await generateKeyPair("ES256")).privateKey;
});

const jwks = (...keys: JWK[]) => JSON.stringify({ keys });

function token(
  claims: Record<string, unknown> = {},
  o: { key?: Key; alg?: string; kid?: string | null; iss?: string | null; sub?: string | null } = {},
): Promise<string> {
  const body: Record<string, unknown> = { iat: nowS, exp: nowS + 600, ...claims };
  if (o.iss !== null) body["iss"] = o.iss ?? ISS;
  if (o.sub !== null) body["sub"] = o.sub ?? "alice";
  const alg = o.alg ?? "ES256";
  const header: { alg: string; kid?: string } = { alg };
  if (o.kid !== null) header.kid = o.kid ?? (alg === "RS256" ? "rs" : "es");
  return new SignJWT(body).setProtectedHeader(header).sign(o.key ?? (alg === "RS256" ? rsKey : esKey));
}

const ref = (rules: JwtRule[], name = "jwt"): RequestAuthRef => ({
  namespace: "shop",
  name,
  spec: { jwtRules: rules },
});
const rule = (o: Partial<JwtRule> = {}): JwtRule => ({ issuer: ISS, jwks: jwks(esJwk, rsJwk), ...o });
const bearer = (t: string) => ({ headers: { authorization: `Bearer ${t}` }, query: "" });

async function ok(
  refs: RequestAuthRef[],
  req: { headers: Record<string, string | undefined>; query: string },
) {
  const r = await authenticateJwt(refs, req, NOW);
  assert.ok(r.ok, `expected ok, got ${JSON.stringify(r)}`);
  return r;
}

async function refused(
  refs: RequestAuthRef[],
  req: { headers: Record<string, string | undefined>; query: string },
  reason: RegExp,
) {
  const r = await authenticateJwt(refs, req, NOW);
  assert.equal(r.ok, false, `expected a refusal, got ${JSON.stringify(r)}`);
  if (!r.ok) assert.match(r.reason, reason);
}

describe("authenticateJwt: valid tokens", () => {
  test("a valid token gives the principal <iss>/<sub>, the claims, audiences and presenter", async () => {
    const t = await token({ aud: ["shop", "web"], azp: "web-app", groups: ["admins"] });
    const r = await ok([ref([rule()])], bearer(t));
    assert.equal(r.principal, `${ISS}/alice`);
    assert.deepEqual(r.audiences, ["shop", "web"]);
    assert.equal(r.presenter, "web-app");
    assert.deepEqual(r.claims?.["groups"], ["admins"]);
    assert.equal(r.policy, "shop/jwt");
    assert.deepEqual(r.headersToSet, {});
    assert.deepEqual(r.headersToRemove, ["authorization"], "the token is not forwarded by default");
  });

  test("RS256 works as well as ES256; a string aud becomes a list", async () => {
    const r = await ok([ref([rule()])], bearer(await token({ aud: "shop" }, { alg: "RS256" })));
    assert.equal(r.principal, `${ISS}/alice`);
    assert.deepEqual(r.audiences, ["shop"]);
  });

  test("forwardOriginalToken keeps the token header", async () => {
    const r = await ok([ref([rule({ forwardOriginalToken: true })])], bearer(await token()));
    assert.deepEqual(r.headersToRemove, []);
  });

  test("audiences: one of them is enough; without audiences any is accepted", async () => {
    const t = await token({ aud: ["billing", "shop"] });
    await ok([ref([rule({ audiences: ["shop"] })])], bearer(t));
    await ok([ref([rule()])], bearer(t));
  });

  test("a token without sub is valid but gives no principal", async () => {
    const r = await ok([ref([rule()])], bearer(await token({}, { sub: null })));
    assert.equal(r.principal, undefined);
    assert.equal(r.claims?.["iss"], ISS);
  });

  test("exp and nbf have 60 seconds of clock skew", async () => {
    await ok([ref([rule()])], bearer(await token({ exp: nowS - 30 })));
    await ok([ref([rule()])], bearer(await token({ nbf: nowS + 30 })));
  });

  test("the bearer scheme is case-insensitive", async () => {
    const t = await token();
    await ok([ref([rule()])], { headers: { authorization: `bearer ${t}` }, query: "" });
  });

  test("several rules with the issuer: the one whose key verifies wins", async () => {
    const refs = [
      ref([rule({ jwks: jwks(rsJwk) })], "a-rs-only"),
      ref([rule({ jwks: jwks(esJwk) })], "b-es"),
    ];
    const r = await ok(refs, bearer(await token()));
    assert.equal(r.policy, "shop/b-es");
  });

  test("keys without kid: each matching key is tried", async () => {
    const { kid: _a, ...es1 } = esJwk;
    const other = await generateKeyPair("ES256", { extractable: true });
    const { kid: _b, ...es2 } = { ...(await exportJWK(other.publicKey)), kid: "x" };
    const r = await ok([ref([rule({ jwks: jwks(es2, es1) })])], bearer(await token({}, { kid: null })));
    assert.equal(r.principal, `${ISS}/alice`);
  });
});

describe("authenticateJwt: where the token is read", () => {
  test("no token at all: ok, no principal", async () => {
    const r = await ok([ref([rule()])], { headers: {}, query: "" });
    assert.equal(r.principal, undefined);
    assert.deepEqual(r.headersToRemove, []);
  });

  test("no rules: a token is not looked at", async () => {
    const r = await ok([], bearer("garbage"));
    assert.equal(r.principal, undefined);
  });

  test("another Authorization scheme is not a token", async () => {
    const r = await ok([ref([rule()])], { headers: { authorization: "Basic YWxpY2U6cHc=" }, query: "" });
    assert.equal(r.principal, undefined);
  });

  test("a token in a place no rule reads is ignored: no principal", async () => {
    const t = await token();
    for (const req of [
      { headers: { "x-jwt": t }, query: "" },
      { headers: {}, query: `access_token=${t}` },
      { headers: { authorization: t }, query: "" },
    ]) {
      const r = await ok([ref([rule()])], req);
      assert.equal(r.principal, undefined, JSON.stringify(req).slice(0, 40));
    }
  });

  test("fromHeaders with a prefix, fromParams, and then Authorization is no longer read", async () => {
    const t = await token();
    const custom = [
      ref([rule({ fromHeaders: [{ name: "X-Jwt-Assertion", prefix: "Token " }], fromParams: ["jwt"] })]),
    ];
    assert.equal(
      (await ok(custom, { headers: { "x-jwt-assertion": `Token ${t}` }, query: "" })).principal,
      `${ISS}/alice`,
    );
    const q = await ok(custom, { headers: {}, query: `a=1&jwt=${t}` });
    assert.equal(q.principal, `${ISS}/alice`);
    assert.deepEqual(q.headersToRemove, [], "a token in the query stays there");
    assert.equal((await ok(custom, bearer(t))).principal, undefined);
    assert.equal(
      (await ok(custom, { headers: { "x-jwt-assertion": t }, query: "" })).principal,
      undefined,
      "prefix missing",
    );
  });

  test("two different tokens are refused; the same token twice is one", async () => {
    const a = await token();
    const b = await token({}, { sub: "bob" });
    const refs = [ref([rule({ fromHeaders: [{ name: "x-a" }, { name: "x-b" }] })])];
    await refused(refs, { headers: { "x-a": a, "x-b": b }, query: "" }, /more than one JWT/);
    const r = await ok(refs, { headers: { "x-a": a, "x-b": a }, query: "" });
    assert.deepEqual(r.headersToRemove, ["x-a", "x-b"]);
  });

  test("a token of an issuer found where only another issuer's tokens are read is refused", async () => {
    const refs = [
      ref([rule({ issuer: "https://other.example", fromHeaders: [{ name: "x-other" }] })], "other"),
      ref([rule({ fromHeaders: [{ name: "x-mine" }] })], "mine"),
    ];
    await refused(refs, { headers: { "x-other": await token() }, query: "" }, /does not accept that issuer/);
  });
});

describe("authenticateJwt: invalid tokens are refused", () => {
  const refs = () => [ref([rule({ audiences: ["shop"] })])];

  test("alg none", async () => {
    const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString("base64url");
    const t = `${b64({ alg: "none" })}.${b64({ iss: ISS, sub: "alice", aud: "shop", exp: nowS + 60 })}.`;
    await refused(refs(), bearer(t), /algorithm "none" is not accepted/);
  });

  test("HS256, even with a key the verifier would take", async () => {
    const secret = await generateSecret("HS256");
    const t = await new SignJWT({ iss: ISS, sub: "alice", aud: "shop" })
      .setProtectedHeader({ alg: "HS256" })
      .sign(secret);
    await refused(refs(), bearer(t), /algorithm "HS256" is not accepted/);
  });

  test("signed with a key that is not the issuer's", async () => {
    await refused(
      refs(),
      bearer(await token({ aud: "shop" }, { key: otherKey })),
      /signature does not verify/,
    );
    await refused(
      refs(),
      bearer(await token({ aud: "shop" }, { key: otherKey, kid: "unknown" })),
      /signature does not verify/,
    );
  });

  test("a tampered payload", async () => {
    const [h, , s] = (await token({ aud: "shop" })).split(".");
    const forged = Buffer.from(
      JSON.stringify({ iss: ISS, sub: "admin", aud: "shop", exp: nowS + 60 }),
    ).toString("base64url");
    await refused(refs(), bearer(`${h}.${forged}.${s}`), /signature does not verify/);
  });

  test("expired, beyond the skew", async () => {
    await refused(refs(), bearer(await token({ aud: "shop", exp: nowS - 120 })), /expired/);
  });

  test("not valid yet", async () => {
    await refused(refs(), bearer(await token({ aud: "shop", nbf: nowS + 120 })), /not valid yet/);
  });

  test("an issuer no rule names", async () => {
    await refused(
      refs(),
      bearer(await token({ aud: "shop" }, { iss: "https://evil.example" })),
      /issuer https:\/\/evil\.example is not configured/,
    );
    await refused(refs(), bearer(await token({ aud: "shop" }, { iss: null })), /no issuer/);
  });

  test("a wrong audience, or none when audiences are required", async () => {
    await refused(refs(), bearer(await token({ aud: "billing" })), /audience is not one of shop/);
    await refused(refs(), bearer(await token()), /audience/);
  });

  test("malformed tokens", async () => {
    for (const t of ["abc", "a.b.c", "eyJhbGciOiJFUzI1NiJ9.bm90IGpzb24.c2ln", "x.y.z.w.v"]) {
      await refused(refs(), bearer(t), /malformed/);
    }
  });

  test("a refusal names the RequestAuthentication that refused", async () => {
    const r = await authenticateJwt(refs(), bearer(await token({ aud: "billing" })), NOW);
    assert.equal(r.ok, false);
    if (!r.ok) assert.equal(r.policy, "shop/jwt");
  });
});

describe("authenticateJwt: outputClaimToHeaders", () => {
  const outputs = [
    { header: "X-Jwt-Sub", claim: "sub" },
    { header: "x-jwt-level", claim: "level" },
    { header: "x-jwt-admin", claim: "admin" },
    { header: "x-jwt-groups", claim: "groups" },
    { header: "x-jwt-missing", claim: "missing" },
    { header: "x-jwt-evil", claim: "evil" },
  ];

  test("copies string, number and boolean claims; removes the headers it does not set", async () => {
    const t = await token({ level: 3, admin: false, groups: ["a"], evil: "x\r\nx-injected: 1" });
    const r = await ok([ref([rule({ outputClaimToHeaders: outputs })])], bearer(t));
    assert.deepEqual(r.headersToSet, { "x-jwt-sub": "alice", "x-jwt-level": "3", "x-jwt-admin": "false" });
    assert.deepEqual(r.headersToRemove.sort(), [
      "authorization",
      "x-jwt-evil",
      "x-jwt-groups",
      "x-jwt-missing",
    ]);
  });

  test("without a token the output headers are removed, so a caller cannot forge them", async () => {
    const r = await ok([ref([rule({ outputClaimToHeaders: outputs.slice(0, 1) })])], {
      headers: { "x-jwt-sub": "admin" },
      query: "",
    });
    assert.deepEqual(r.headersToRemove, ["x-jwt-sub"]);
  });
});

describe("authenticateJwt: configuration", () => {
  test("an invalid spec is refused, never ignored", async () => {
    await assert.rejects(
      authenticateJwt(
        [{ namespace: "shop", name: "bad", spec: { jwtRules: [{ issuer: "" }] } }],
        bearer("x"),
        NOW,
      ),
      (e: unknown) =>
        isZmeshError(e, "ZMESH_CONFIG_INVALID") &&
        /RequestAuthentication shop\/bad: spec\.jwtRules\[0\]\.issuer/.test(e.message),
    );
  });
});

function one(spec: unknown, path: string, code: Issue["code"], message?: RegExp): void {
  const r = validateRequestAuthenticationSpec(spec);
  assert.equal(r.issues.length, 1, `expected one issue, got ${JSON.stringify(r.issues, null, 1)}`);
  assert.equal(r.issues[0]!.path, path);
  assert.equal(r.issues[0]!.code, code);
  if (message) assert.match(r.issues[0]!.message, message);
  assert.equal(r.value, undefined);
}

describe("validateRequestAuthenticationSpec", () => {
  const JWKS = () => jwks(esJwk);
  const r0 = (o: Record<string, unknown>) => ({ jwtRules: [{ issuer: ISS, jwks: JWKS(), ...o }] });

  test("accepts every supported field and copies it", () => {
    const spec = {
      selector: { matchLabels: { app: "shop" } },
      jwtRules: [
        {
          issuer: ISS,
          audiences: ["shop"],
          jwks: JWKS(),
          fromHeaders: [{ name: "x-jwt", prefix: "Bearer " }, { name: "x-other" }],
          fromParams: ["token"],
          forwardOriginalToken: true,
          outputClaimToHeaders: [{ header: "x-sub", claim: "sub" }],
        },
      ],
    };
    const r = validateRequestAuthenticationSpec(spec);
    assert.deepEqual(r.issues, []);
    assert.deepEqual(r.value, spec);
    assert.deepEqual(validateRequestAuthenticationSpec({}).value, {});
    assert.deepEqual(validateRequestAuthenticationSpec({ jwtRules: [] }).value, { jwtRules: [] });
  });

  test("issuer is required", () => {
    one({ jwtRules: [{ jwks: JWKS() }] }, "spec.jwtRules[0].issuer", INVALID, /required/);
    one(r0({ issuer: "" }), "spec.jwtRules[0].issuer", INVALID);
  });

  test("jwksUri and missing keys are refused as unsupported: the mesh has no egress", () => {
    one(
      { jwtRules: [{ issuer: ISS, jwksUri: "https://issuer.example/jwks.json" }] },
      "spec.jwtRules[0].jwksUri",
      UNSUPPORTED,
      /no egress/,
    );
    one({ jwtRules: [{ issuer: ISS }] }, "spec.jwtRules[0].jwks", UNSUPPORTED, /no egress/);
  });

  test("jwks must be a set of public asymmetric keys", () => {
    one(r0({ jwks: "{" }), "spec.jwtRules[0].jwks", INVALID, /not valid JSON/);
    one(r0({ jwks: { keys: [] } }), "spec.jwtRules[0].jwks", INVALID, /as a string/);
    one(r0({ jwks: '{"keys": []}' }), "spec.jwtRules[0].jwks", INVALID, /at least one public key/);
    one(
      r0({ jwks: jwks({ kty: "oct", k: "c2VjcmV0" }) }),
      "spec.jwtRules[0].jwks.keys[0]",
      INVALID,
      /symmetric/,
    );
    one(
      r0({ jwks: jwks({ ...esJwk, d: "x" }) }),
      "spec.jwtRules[0].jwks.keys[0]",
      INVALID,
      /private key material \(d\)/,
    );
    one(
      r0({ jwks: jwks({ kty: "EC", crv: "P-256", x: "a" }) }),
      "spec.jwtRules[0].jwks.keys[0]",
      INVALID,
      /without y/,
    );
    one(r0({ jwks: jwks({ ...esJwk, alg: "HS256" }) }), "spec.jwtRules[0].jwks.keys[0]", INVALID, /alg/);
  });

  test("token locations and outputs", () => {
    one(
      r0({ fromHeaders: [{ name: "bad header" }] }),
      "spec.jwtRules[0].fromHeaders[0].name",
      INVALID,
      /header name/,
    );
    one(r0({ fromHeaders: [{ prefix: "Bearer " }] }), "spec.jwtRules[0].fromHeaders[0].name", INVALID);
    one(r0({ fromHeaders: [] }), "spec.jwtRules[0].fromHeaders", INVALID, /empty list/);
    one(r0({ fromHeaders: ["x-jwt"] }), "spec.jwtRules[0].fromHeaders[0]", INVALID, /\{name: HEADER/);
    one(r0({ fromParams: [""] }), "spec.jwtRules[0].fromParams[0]", INVALID);
    one(
      r0({ forwardOriginalToken: "yes" }),
      "spec.jwtRules[0].forwardOriginalToken",
      INVALID,
      /true or false/,
    );
    one(
      r0({ outputClaimToHeaders: [{ header: "Host", claim: "sub" }] }),
      "spec.jwtRules[0].outputClaimToHeaders[0].header",
      INVALID,
      /managed by the proxy/,
    );
    one(
      r0({ outputClaimToHeaders: [{ header: "x-sub" }] }),
      "spec.jwtRules[0].outputClaimToHeaders[0].claim",
      INVALID,
    );
  });

  test("fields zmesh lacks are refused, unknown ones named", () => {
    one(r0({ fromCookies: ["session"] }), "spec.jwtRules[0].fromCookies", UNSUPPORTED);
    one(r0({ outputPayloadToHeader: "x-payload" }), "spec.jwtRules[0].outputPayloadToHeader", UNSUPPORTED);
    one(r0({ timeout: "5s" }), "spec.jwtRules[0].timeout", UNSUPPORTED);
    one(r0({ issuers: ISS }), "spec.jwtRules[0].issuers", INVALID, /did you mean "issuer"/);
    one({ jwtRule: [] }, "spec.jwtRule", INVALID, /did you mean "jwtRules"/);
    one({ targetRefs: [] }, "spec.targetRefs", UNSUPPORTED);
    one({ jwtRules: {} }, "spec.jwtRules", INVALID);
  });
});
