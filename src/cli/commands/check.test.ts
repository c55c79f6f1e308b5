// `zmesh check`, end to end: spawns the built CLI (bin/zmesh.js) on temporary YAML and request
// files and holds it to its contract: exit 0 and one JSON object {decision, policy, rule, reason,
// dryRun} whenever a decision is made; exit 2 and one line on stderr naming the file and field when
// PATH or FILE is bad.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { exportJWK, generateKeyPair, SignJWT } from "jose";

const root = join(import.meta.dirname, "..", "..", "..", "..");
const ISS = "https://issuer.example";

/** The mesh's resources; bad ones go to `scratch`, with the request files. */
let dir: string;
let scratch: string;
let key: CryptoKey;
let n = 0;

function resources(jwks: string): string {
  return `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: payments-from-orders, namespace: shop }
spec:
  selector: { matchLabels: { app: payments } }
  rules:
    - from: [{ source: { principals: ["cluster.local/ns/shop/sa/orders"] } }]
      to: [{ operation: { methods: ["POST"], paths: ["/charge"] } }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: deny-admin, namespace: shop }
spec:
  selector: { matchLabels: { app: payments } }
  action: DENY
  rules:
    - to: [{ operation: { paths: ["/charge"], methods: ["DELETE"] } }]
    - to: [{ operation: { paths: ["/admin", "/admin/*"] } }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-post-trial
  namespace: shop
  annotations: { "istio.io/dry-run": "true" }
spec:
  selector: { matchLabels: { app: payments } }
  action: DENY
  rules: [{ to: [{ operation: { methods: ["POST"] } }] }]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: default, namespace: zmesh-system }
spec: { mtls: { mode: STRICT } }
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: { name: payments-metrics, namespace: shop }
spec:
  selector: { matchLabels: { app: payments } }
  portLevelMtls:
    9090: { mode: PERMISSIVE }
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: { name: api-jwt, namespace: shop }
spec:
  selector: { matchLabels: { app: api } }
  jwtRules:
    - issuer: ${ISS}
      audiences: [shop]
      jwks: '${jwks}'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: api-users, namespace: shop }
spec:
  selector: { matchLabels: { app: api } }
  rules:
    - from: [{ source: { requestPrincipals: ["${ISS}/alice"] } }]
      when: [{ key: "request.auth.claims[groups]", values: [buyers] }]
`;
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "zmesh-check-"));
  scratch = await mkdtemp(join(tmpdir(), "zmesh-check-scratch-"));
  const pair = await generateKeyPair("ES256", { extractable: true });
  key = pair.privateKey;
  const jwks = JSON.stringify({ keys: [{ ...(await exportJWK(pair.publicKey)), kid: "k1", alg: "ES256" }] });
  await writeFile(join(dir, "mesh.yaml"), resources(jwks));
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
  await rm(scratch, { recursive: true, force: true });
});

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function zmesh(args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [join(root, "bin", "zmesh.js"), ...args],
      { cwd: root },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

async function requestFile(body: unknown): Promise<string> {
  const f = join(scratch, `request-${n++}.json`);
  await writeFile(f, typeof body === "string" ? body : JSON.stringify(body));
  return f;
}

const payments = { namespace: "shop", labels: { app: "payments" }, port: 8080, ip: "198.18.0.5" };
const fromOrders = { principal: "cluster.local/ns/shop/sa/orders", namespace: "shop", ip: "198.18.0.4" };
const post = (path: string, more: Record<string, unknown> = {}) => ({
  protocol: "http",
  method: "POST",
  host: "payments.shop.svc.cluster.local",
  path,
  headers: { "x-role": "admin" },
  ...more,
});

async function check(body: unknown, extra: string[] = []): Promise<Run & { json: Record<string, unknown> }> {
  const r = await zmesh([
    "check",
    "--config",
    dir,
    "--request",
    await requestFile(body),
    "-o",
    "json",
    ...extra,
  ]);
  assert.equal(r.code, 0, `exit ${r.code}: ${r.stderr}`);
  const lines = r.stdout.trim().split("\n");
  assert.equal(lines.length, 1, "exactly one JSON object");
  const json = JSON.parse(lines[0]!) as Record<string, unknown>;
  assert.deepEqual(Object.keys(json), ["decision", "policy", "rule", "reason", "dryRun"]);
  return { ...r, json };
}

function jwt(claims: Record<string, unknown>, exp = Math.floor(Date.now() / 1000) + 600): Promise<string> {
  return new SignJWT({ iss: ISS, sub: "alice", aud: "shop", exp, ...claims })
    .setProtectedHeader({ alg: "ES256", kid: "k1" })
    .sign(key);
}

describe("zmesh check", { concurrency: true }, () => {
  test("ALLOW: names the policy and rule, and reports dry-run policies", async () => {
    const { json } = await check({ destination: payments, source: fromOrders, request: post("/charge?x=1") });
    assert.deepEqual(json, {
      decision: "ALLOW",
      policy: "shop/payments-from-orders",
      rule: 0,
      reason: "allowed by shop/payments-from-orders rule 0",
      dryRun: [{ policy: "shop/deny-post-trial", wouldAllow: false }],
    });
  });

  test("DENY by a DENY policy: names the policy and the rule", async () => {
    const { json } = await check({
      destination: payments,
      source: fromOrders,
      request: post("/admin/users"),
    });
    assert.equal(json["decision"], "DENY");
    assert.equal(json["policy"], "shop/deny-admin");
    assert.equal(json["rule"], 1);
    assert.equal(json["reason"], "denied by shop/deny-admin rule 1");
  });

  test("DENY when no ALLOW policy matches: policy and rule are null", async () => {
    const { json } = await check({ destination: payments, source: fromOrders, request: post("/refund") });
    assert.equal(json["decision"], "DENY");
    assert.equal(json["policy"], null);
    assert.equal(json["rule"], null);
    assert.match(json["reason"] as string, /no ALLOW policy matched \(checked shop\/payments-from-orders\)/);
  });

  test("CVE-2021-31920: //admin and dot segments are normalized as the proxy does, and still denied", async () => {
    const paths = ["//admin", "//admin//users", "/charge/../admin", "/%61dmin#/../charge"];
    const runs = await Promise.all(
      paths.map((path) => check({ destination: payments, source: fromOrders, request: post(path) })),
    );
    runs.forEach(({ json }, i) => {
      assert.equal(json["decision"], "DENY", paths[i]);
      assert.equal(json["policy"], "shop/deny-admin", paths[i]);
    });
  });

  test("a request the proxy answers with 400 is a DENY that says so", async () => {
    const nul = await check({ destination: payments, source: fromOrders, request: post("/charge%00") });
    assert.equal(nul.json["decision"], "DENY");
    assert.match(nul.json["reason"] as string, /400.*NUL/);
    const lower = await check({
      destination: payments,
      source: fromOrders,
      request: post("/charge", { method: "post" }),
    });
    assert.match(lower.json["reason"] as string, /400.*"post" is not an HTTP method/);
  });

  test("plaintext to a STRICT port is refused, naming the PeerAuthentication", async () => {
    const { json } = await check({
      destination: payments,
      source: { ip: "198.18.0.66" },
      request: post("/charge"),
    });
    assert.deepEqual(json, {
      decision: "DENY",
      policy: "zmesh-system/default",
      rule: null,
      reason: "plaintext refused: PeerAuthentication zmesh-system/default is STRICT on port 8080",
      dryRun: [],
    });
  });

  test("plaintext to a PERMISSIVE port reaches authorization, which wants a principal", async () => {
    const { json } = await check({
      destination: { ...payments, port: 9090 },
      source: { ip: "198.18.0.66" },
      request: post("/charge"),
    });
    assert.equal(json["decision"], "DENY");
    assert.match(json["reason"] as string, /no ALLOW policy matched/);
  });

  test("spiffe:// principals are accepted", async () => {
    const { json } = await check({
      destination: payments,
      source: { principal: "spiffe://cluster.local/ns/shop/sa/orders" },
      request: post("/charge"),
    });
    assert.equal(json["decision"], "ALLOW");
  });

  const api = { namespace: "shop", labels: { app: "api" }, port: 8080 };
  const get = (more: Record<string, unknown> = {}) => ({
    protocol: "http",
    method: "GET",
    path: "/orders",
    ...more,
  });

  test("JWT: a valid token gives the request principal and claims the policy asks for", async () => {
    const { json } = await check({
      destination: api,
      source: fromOrders,
      request: get({ jwt: await jwt({ groups: ["buyers"] }) }),
    });
    assert.equal(json["decision"], "ALLOW");
    assert.equal(json["policy"], "shop/api-users");
    const other = await check({
      destination: api,
      source: fromOrders,
      request: get({ jwt: await jwt({ groups: ["viewers"] }) }),
    });
    assert.equal(other.json["decision"], "DENY");
  });

  test("JWT: an invalid token is refused as the proxy's 401", async () => {
    const expired = await check({
      destination: api,
      source: fromOrders,
      request: get({ jwt: await jwt({ groups: ["buyers"] }, Math.floor(Date.now() / 1000) - 3600) }),
    });
    assert.equal(expired.json["decision"], "DENY");
    assert.equal(expired.json["policy"], "shop/api-jwt");
    assert.match(
      expired.json["reason"] as string,
      /^JWT rejected \(the proxy answers 401\): the JWT has expired/,
    );
    const forged = await check({
      destination: api,
      source: fromOrders,
      request: get({ jwt: "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9." }),
    });
    assert.match(forged.json["reason"] as string, /401.*algorithm "none"/);
  });

  test("JWT: no token, or a token where no rule reads it, gives no principal", async () => {
    const none = await check({ destination: api, source: fromOrders, request: get() });
    assert.equal(none.json["decision"], "DENY");
    assert.match(none.json["reason"] as string, /no ALLOW policy matched/);
    const misplaced = await check({
      destination: api,
      source: fromOrders,
      request: get({ headers: { "x-token": await jwt({ groups: ["buyers"] }) } }),
    });
    assert.equal(misplaced.json["decision"], "DENY");
    assert.match(misplaced.json["reason"] as string, /no ALLOW policy matched/);
  });

  test("TCP: only connection attributes count, and rules that change meaning are warned about", async () => {
    const r = await check({ destination: payments, source: fromOrders, request: { protocol: "tcp" } });
    assert.equal(r.json["decision"], "DENY");
    assert.match(r.json["reason"] as string, /deny-admin rule 0 \(on a TCP connection its HTTP-only fields/);
    assert.match(
      r.stderr,
      /shop\/payments-from-orders rule 0 \(ALLOW\) uses HTTP-only fields \(methods, paths\), so it never matches a plain TCP connection/,
    );
  });

  test("text output is for people", async () => {
    const f = await requestFile({ destination: payments, source: fromOrders, request: post("/admin") });
    const r = await zmesh(["check", "--config", join(dir, "mesh.yaml"), "--request", f]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^DENY: denied by shop\/deny-admin rule 1\n/);
    assert.match(r.stdout, /policy: shop\/deny-admin, rule 1/);
    assert.match(r.stdout, /mTLS mode on port 8080: STRICT, from PeerAuthentication zmesh-system\/default/);
    assert.match(r.stdout, /dry-run: shop\/deny-post-trial would deny/);
  });

  test("--root-namespace changes which namespace is the mesh's", async () => {
    const { json } = await check(
      { destination: payments, source: { ip: "198.18.0.66" }, request: post("/charge") },
      ["--root-namespace", "istio-system"],
    );
    assert.equal(
      json["reason"],
      "plaintext refused: no PeerAuthentication applies to port 8080, and zmesh's default is STRICT",
    );
  });

  test("bad YAML exits 2 with one line naming the file and line", async () => {
    const bad = join(scratch, "bad");
    await mkdir(bad);
    await writeFile(join(bad, "broken.yaml"), "apiVersion: v1\nkind: [\n");
    const r = await zmesh([
      "check",
      "--config",
      bad,
      "--request",
      await requestFile({ destination: payments, request: post("/") }),
    ]);
    assert.equal(r.code, 2);
    assert.equal(r.stdout, "");
    assert.equal(r.stderr.trim().split("\n").length, 1);
    assert.match(r.stderr, /broken\.yaml:\d+: not valid YAML/);
  });

  test("an invalid resource exits 2 naming file, resource and field", async () => {
    const bad = join(scratch, "invalid.yaml");
    await writeFile(
      bad,
      "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a, namespace: shop}\nspec: {mtls: {mode: strict}}\n",
    );
    const r = await zmesh([
      "check",
      "--config",
      bad,
      "--request",
      await requestFile({ destination: payments, request: post("/") }),
    ]);
    assert.equal(r.code, 2);
    assert.match(
      r.stderr,
      /invalid\.yaml:4: PeerAuthentication shop\/a: spec\.mtls\.mode: mode "strict" must be written in upper case/,
    );
  });

  test("a missing PATH exits 2", async () => {
    const r = await zmesh(["check", "--config", join(dir, "nope"), "--request", await requestFile({})]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /nope: no such file or directory/);
  });

  test("bad request JSON exits 2 naming the file, and the field when there is one", async () => {
    const cases: [unknown, RegExp][] = [
      ["{not json", /not valid JSON/],
      [
        { destination: { ...payments, port: "8080" }, request: post("/") },
        /destination\.port: must be a port number/,
      ],
      [{ destination: payments, request: post("/", { methd: "GET" }) }, /request\.methd: unknown field/],
      [
        {
          destination: payments,
          source: { principal: "spiffe://Cluster.local/ns/a/sa/b" },
          request: post("/"),
        },
        /source\.principal:/,
      ],
      [
        { destination: payments, source: { ip: "10.0.0.999" }, request: post("/") },
        /source\.ip: "10\.0\.0\.999" is not an IP address/,
      ],
      [{ destination: payments, request: { protocol: "http", path: "/" } }, /request\.method: is required/],
      [
        { destination: payments, request: post("/", { protocol: "udp" }) },
        /request\.protocol: must be "http" or "tcp"/,
      ],
      [
        {
          destination: payments,
          source: { principal: "cluster.local/ns/shop/sa/orders", namespace: "billing" },
          request: post("/"),
        },
        /source\.namespace: "billing" contradicts the principal/,
      ],
    ];
    for (const [body, msg] of cases) {
      const f = await requestFile(body);
      const r = await zmesh(["check", "--config", dir, "--request", f, "-o", "json"]);
      assert.equal(r.code, 2, JSON.stringify(body));
      assert.equal(r.stdout, "");
      assert.equal(r.stderr.trim().split("\n").length, 1);
      assert.ok(r.stderr.startsWith(`zmesh check: ${f}: `), r.stderr);
      assert.match(r.stderr, msg);
    }
    const missing = await zmesh(["check", "--config", dir, "--request", join(dir, "absent.json")]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /absent\.json: cannot be read \(ENOENT\)/);
  });
});
