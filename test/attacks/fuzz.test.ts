// Attack suite, fuzzing: every parser of untrusted input against fast-check generated input, for a
// fixed budget in CI (ZMESH_FUZZ_RUNS, default 200 runs per property) and longer on demand. The
// SPIFFE ID parser, the path normalizer (never throws, terminates quickly, idempotent output), the
// policy YAML loader with random documents (never throws, every refusal has a code), and HTTP
// heads sent to live proxies (no crash: the proxy still answers a good request afterwards, and no
// generated head reaches the app on a denied path).
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import fc from "fast-check";
import { exportJWK, generateKeyPair, SignJWT } from "jose";
import { stringify } from "yaml";
import { ENV, envOr, parseYaml } from "../../src/config/index.js";
import { isZmeshError } from "../../src/errors/index.js";
import { parseSpiffeId } from "../../src/identity/index.js";
import { authenticateJwt, compilePolicies, evaluate, normalizePath } from "../../src/policy/index.js";
import { call } from "../harness/index.js";
import { type AttackMesh, attackMesh, CATALOG_VIP, rawInbound, rawOutbound, statuses } from "./lib.js";

const RUNS = Math.max(1, Number(envOr(ENV.fuzzRuns, "200")) || 200);
const LIVE_RUNS = Math.max(5, Math.floor(RUNS / 10));

/** Characters that matter to each grammar, so that random strings hit the interesting paths. */
const pathChar = fc.constantFrom(
  "/",
  "/",
  ".",
  ".",
  "%",
  "2",
  "5",
  "e",
  "E",
  "f",
  "F",
  "0",
  "a",
  "\\",
  "?",
  "#",
  ";",
  "\u00e9",
  "\u0000",
  " ",
);
const spiffeChar = fc.constantFrom(
  "s",
  "p",
  "i",
  "f",
  "e",
  ":",
  "/",
  "/",
  ".",
  "-",
  "_",
  "A",
  "%",
  "?",
  "#",
  "@",
  "1",
  "\u00fc",
  " ",
);

describe("attack: fuzzing the parsers of untrusted input", { timeout: 120_000 }, () => {
  it(`the SPIFFE ID parser: accepts only what it can print back, refuses with ZMESH_SPIFFE_ID (${RUNS} runs)`, () => {
    const candidates = fc.oneof(
      fc.string({ unit: spiffeChar, maxLength: 60 }),
      fc.string({ unit: spiffeChar, maxLength: 40 }).map((s) => `spiffe://${s}`),
      fc.string({ maxLength: 80 }),
    );
    fc.assert(
      fc.property(candidates, (s) => {
        try {
          const id = parseSpiffeId(s);
          assert.equal(id.uri, s);
          assert.equal(`spiffe://${id.trustDomain}${id.path}`, s);
          assert.match(id.trustDomain, /^[a-z0-9._-]+$/);
          assert.ok(
            !id.path
              .split("/")
              .slice(1)
              .some((seg) => seg === "" || seg === "." || seg === ".."),
          );
        } catch (e) {
          if (e instanceof assert.AssertionError) throw e;
          assert.ok(isZmeshError(e, "ZMESH_SPIFFE_ID"), String(e));
        }
      }),
      { numRuns: RUNS },
    );
  });

  it(`the path normalizer: never throws, terminates fast, idempotent, no dot segments left (${RUNS} runs x 4 settings)`, () => {
    const target = fc.string({ unit: pathChar, maxLength: 40 }).map((s) => `/${s}`);
    for (const mergeSlashes of [true, false]) {
      for (const decodeSlashes of [false, true]) {
        const opts = { mergeSlashes, decodeSlashes };
        fc.assert(
          fc.property(fc.oneof(target, fc.string({ maxLength: 40 })), (raw) => {
            const started = process.hrtime.bigint();
            const r = normalizePath(raw, opts);
            assert.ok(process.hrtime.bigint() - started < 50_000_000n, "took more than 50 ms");
            if (!r.ok) return assert.equal(typeof r.reason, "string");
            assert.ok(r.path.startsWith("/"));
            const again = normalizePath(r.path, opts);
            assert.ok(again.ok, `the output ${JSON.stringify(r.path)} is refused when normalized again`);
            assert.equal(again.path, r.path, `not idempotent on ${JSON.stringify(raw)}`);
            const segs = r.path.split("/").slice(1);
            assert.ok(!segs.includes(".") && !segs.includes(".."), r.path);
            if (mergeSlashes) assert.ok(!r.path.slice(0, -1).includes("//"), r.path);
            assert.ok(!r.path.includes("\\"));
          }),
          { numRuns: RUNS },
        );
      }
    }
  });

  it("the path normalizer on a long hostile input stays linear", () => {
    for (const unit of ["/..", "//", "%2e%2e/", "\\.", "/./"]) {
      const raw = `/${unit.repeat(20_000)}admin`;
      const started = Date.now();
      normalizePath(raw);
      assert.ok(Date.now() - started < 500, `${unit} x 20000 took ${Date.now() - started} ms`);
    }
  });

  it(`the policy YAML loader with random documents: never throws, refusals carry a code, what it accepts compiles (${RUNS} runs)`, () => {
    const scalar = fc.oneof(
      fc.constantFrom(
        "ALLOW",
        "DENY",
        "AUDIT",
        "CUSTOM",
        "/admin*",
        "*",
        "GET",
        "cluster.local/ns/shop/sa/a",
        "shop",
        "",
        "198.18.0.0/16",
        "80",
        "request.headers[x]",
      ),
      fc.integer(),
      fc.boolean(),
      fc.constant(null),
      fc.string({ maxLength: 8 }),
    );
    const fieldNames = fc.constantFrom(
      "principals",
      "notPrincipals",
      "namespaces",
      "ipBlocks",
      "requestPrincipals",
      "paths",
      "notPaths",
      "methods",
      "hosts",
      "ports",
      "key",
      "values",
      "notValues",
      "bogus",
    );
    const leaf = fc.dictionary(fieldNames, fc.oneof(fc.array(scalar, { maxLength: 3 }), scalar), {
      maxKeys: 3,
    });
    const rule = fc.record(
      {
        from: fc.array(fc.record({ source: leaf }, { requiredKeys: [] }), { maxLength: 2 }),
        to: fc.array(fc.record({ operation: leaf }, { requiredKeys: [] }), { maxLength: 2 }),
        when: fc.array(leaf, { maxLength: 2 }),
      },
      { requiredKeys: [] },
    );
    const spec = fc.record(
      {
        action: scalar,
        rules: fc.oneof(fc.array(rule, { maxLength: 3 }), scalar),
        selector: fc.oneof(
          fc.record({ matchLabels: fc.dictionary(fc.string({ maxLength: 4 }), scalar, { maxKeys: 2 }) }),
          scalar,
        ),
        provider: fc.anything({ maxDepth: 2 }),
      },
      { requiredKeys: [] },
    );
    const doc = fc.record(
      {
        apiVersion: fc.constantFrom("security.istio.io/v1", "security.istio.io/v1beta1", "v1", "x"),
        kind: fc.constantFrom(
          "AuthorizationPolicy",
          "PeerAuthentication",
          "RequestAuthentication",
          "Service",
          "Workload",
          "Nope",
        ),
        metadata: fc.record(
          {
            name: fc.oneof(fc.constantFrom("p", "q"), scalar),
            namespace: fc.oneof(fc.constant("shop"), scalar),
          },
          { requiredKeys: [] },
        ),
        spec: fc.oneof(spec, fc.anything({ maxDepth: 3 })),
      },
      { requiredKeys: [] },
    );
    const text = fc.oneof(
      fc.array(doc, { minLength: 1, maxLength: 3 }).map((ds) => ds.map((d) => stringify(d)).join("---\n")),
      fc.string({
        unit: fc.constantFrom(
          "a",
          ":",
          " ",
          "\n",
          "-",
          "&",
          "*",
          "[",
          "]",
          "{",
          "}",
          "!",
          "|",
          ">",
          "#",
          "'",
          '"',
          "?",
        ),
        maxLength: 60,
      }),
    );
    fc.assert(
      fc.property(text, (yaml) => {
        const started = Date.now();
        const { documents, problems } = parseYaml(yaml, "fuzz.yaml");
        assert.ok(Date.now() - started < 1_000, "took more than 1 s");
        for (const p of problems) {
          assert.match(p.code, /^ZMESH_/);
          assert.ok(p.message.length > 0);
        }
        const policies = documents
          .map((d) => d.resource)
          .filter((r) => r.kind === "AuthorizationPolicy")
          .map((r) => ({
            namespace: r.meta.namespace,
            name: r.meta.name,
            spec: (r as unknown as { spec: never }).spec,
          }));
        const compiled = compilePolicies(policies);
        const d = evaluate(compiled, {
          principal: "cluster.local/ns/shop/sa/a",
          namespace: "shop",
          sourceIp: "198.18.0.9",
          destinationPort: 80,
          http: { method: "GET", path: "/admin", host: "x", headers: {} },
        });
        assert.equal(typeof d.allowed, "boolean");
      }),
      { numRuns: RUNS },
    );
  });

  it(`the JWT check with random and mangled tokens: never throws, never a principal (${RUNS} runs)`, async () => {
    const { publicKey, privateKey } = await generateKeyPair("ES256");
    const jwk = { ...(await exportJWK(publicKey)), kid: "k1", alg: "ES256" };
    const refs = [
      {
        namespace: "shop",
        name: "jwt",
        spec: {
          jwtRules: [
            { issuer: "https://issuer.test", audiences: ["shop-api"], jwks: JSON.stringify({ keys: [jwk] }) },
          ],
        },
      },
    ];
    const valid = await new SignJWT({ sub: "alice", aud: "shop-api" })
      .setProtectedHeader({ alg: "ES256", kid: "k1" })
      .setIssuer("https://issuer.test")
      .setExpirationTime("5m")
      .sign(privateKey);
    const control = await authenticateJwt(
      refs,
      { headers: { authorization: `Bearer ${valid}` }, query: "" },
      new Date(),
    );
    assert.ok(
      control.ok && control.principal === "https://issuer.test/alice",
      "the control: the valid token is accepted",
    );
    const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString("base64url");
    const part = fc.oneof(
      fc.string({ maxLength: 30 }),
      fc.base64String({ maxLength: 40 }),
      fc.constantFrom(...valid.split(".")),
      fc
        .record(
          {
            alg: fc.constantFrom("none", "HS256", "ES256", "RS256", "ES512", ""),
            kid: fc.constantFrom("k1", "k2", ""),
            crit: fc.constantFrom(undefined, ["exp"]),
          },
          { requiredKeys: ["alg"] },
        )
        .map(b64),
      fc
        .record(
          {
            iss: fc.constantFrom("https://issuer.test", "x"),
            sub: fc.constantFrom("alice", ""),
            aud: fc.constantFrom("shop-api", ["shop-api", "x"], 7),
            exp: fc.integer(),
          },
          { requiredKeys: [] },
        )
        .map(b64),
    );
    const mangled = fc
      .tuple(part, part, part, fc.constantFrom(".", ".", ".."))
      .map(([a, b, c, dot]) => `${a}${dot}${b}.${c}`)
      .filter((t) => t !== valid);
    await fc.assert(
      fc.asyncProperty(mangled, fc.constantFrom("Bearer ", "bearer ", "Bearer  ", ""), async (t, scheme) => {
        const r = await authenticateJwt(
          refs,
          { headers: { authorization: `${scheme}${t}` }, query: "" },
          new Date(),
        );
        assert.ok(!(r.ok && r.principal), `${t} gave the principal ${r.ok ? r.principal : ""}`);
      }),
      { numRuns: RUNS },
    );
  });

  describe(`HTTP heads sent to live proxies (${LIVE_RUNS} runs each way)`, () => {
    let m: AttackMesh;
    before(async () => {
      m = await attackMesh();
    });
    after(() => m.close());

    const token = fc.constantFrom(
      "GET",
      "POST",
      "DELETE",
      "get",
      "G\u00c9T",
      "PRI",
      "CONNECT",
      "",
      " ",
      "GET /",
      "HEAD",
    );
    const target = fc.oneof(
      fc.string({ unit: pathChar, maxLength: 20 }).map((s) => `/${s}`),
      fc.constantFrom("*", "http://catalog/admin", "/admin", "//admin", "", "/\r\n"),
    );
    const version = fc.constantFrom(
      "HTTP/1.1",
      "HTTP/1.0",
      "HTTP/2.0",
      "HTTP/1.1 ",
      "http/1.1",
      "HTTP/1.10",
      "",
    );
    const headerName = fc.constantFrom(
      "host",
      "content-length",
      "transfer-encoding",
      "connection",
      "expect",
      "upgrade",
      "x-a",
      "x a",
      "x:y",
      "",
      "x-forwarded-client-cert",
    );
    const headerValue = fc.oneof(
      fc.constantFrom(
        "chunked",
        "0",
        "5",
        "-1",
        "1e3",
        "close",
        "keep-alive",
        "100-continue",
        "websocket",
        "catalog",
        "secret.shop",
        " chunked",
        "chunked\r\n",
      ),
      fc.string({ maxLength: 12 }),
    );
    const eol = fc.constantFrom("\r\n", "\r\n", "\n", "\r", "\r\n ");
    const head = fc
      .tuple(
        token,
        target,
        version,
        fc.array(fc.tuple(headerName, headerValue, eol), { maxLength: 6 }),
        eol,
        fc.string({ maxLength: 20 }),
      )
      .map(
        ([t, p, v, hs, e, body]) =>
          `${t} ${p} ${v}${e}${hs.map(([k, val, le]) => `${k}: ${val}${le}`).join("")}\r\n${body}`,
      );

    for (const via of ["inbound", "outbound"] as const) {
      it(`${via}: no crash, no admin path reaches the app, and a good request is served after each head`, async () => {
        await fc.assert(
          fc.asyncProperty(head, async (bytes) => {
            const from = m.target.seen.length;
            const answer = via === "inbound" ? await rawInbound(m, bytes) : await rawOutbound(m, [bytes]);
            const urls = m.target.seen.slice(from).map((s) => s.url);
            assert.ok(
              !urls.some((u) => u.startsWith("/admin")),
              `${JSON.stringify(bytes)} reached the app as ${urls}`,
            );
            assert.ok(
              statuses(answer).every((s) => s !== 500),
              `${JSON.stringify(bytes)}: a 500`,
            );
            const good = await call(m.mesh, m.frontend, CATALOG_VIP, { path: "/alive" });
            assert.equal(good.status, 200, `after ${JSON.stringify(bytes)} the mesh stopped serving`);
            assert.equal(good.body, "catalog GET /alive");
          }),
          { numRuns: LIVE_RUNS },
        );
      });
    }
  });
});
