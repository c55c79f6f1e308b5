// The config loader: every problem names file, line, resource and field path; a set with any
// problem is rejected whole; the bundled example loads.
import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { isZmeshError } from "../errors/index.js";
import { assemble, ConfigError, loadConfig, parseYaml, resourceFiles } from "./index.js";

const root = join(import.meta.dirname ?? ".", "..", "..", "..");

describe("config loader", () => {
  it("loads the shop example: 4 workloads, 4 services, 4 policies", async () => {
    const c = await loadConfig([join(root, "examples", "shop")]);
    assert.equal(c.workloads.length, 4);
    assert.equal(c.services.length, 4);
    assert.equal(c.policies.length, 4);
    const payments = c.services.find((s) => s.meta.name === "payments")!;
    assert.deepEqual(payments.ports, [{ name: "http", port: 80, targetPort: 8080, protocol: "http" }]);
    assert.equal(c.workloads[0]!.serviceAccount, "frontend");
  });

  it("names the line of the offending field, the resource and the field path", () => {
    const yaml = [
      "apiVersion: v1",
      "kind: Service",
      "metadata: { name: web, namespace: shop }",
      "spec:",
      "  selector: { app: web }",
      "  ports:",
      "    - port: 70000",
    ].join("\n");
    const { problems } = parseYaml(yaml, "svc.yaml");
    assert.equal(problems.length, 1);
    assert.equal(problems[0]!.line, 7);
    assert.equal(problems[0]!.resource, "Service shop/web");
    assert.equal(problems[0]!.path, "spec.ports[0].port");
    assert.match(problems[0]!.message, /from 1 to 65535/);
  });

  it("rejects unknown kinds, wrong apiVersions and kinds it does not implement, each with its code", () => {
    const cases: [string, string][] = [
      ["apiVersion: v1\nkind: Gizmo\nmetadata: {name: a}\n", "ZMESH_CONFIG_INVALID"],
      ["apiVersion: security.istio.io/v1\nkind: Service\nmetadata: {name: a}\n", "ZMESH_CONFIG_INVALID"],
      ["apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n", "ZMESH_CONFIG_UNSUPPORTED"],
      [
        "apiVersion: security.istio.io/v1alpha1\nkind: PeerAuthentication\nmetadata: {name: a}\n",
        "ZMESH_CONFIG_INVALID",
      ],
    ];
    for (const [yaml, code] of cases) assert.equal(parseYaml(yaml, "f.yaml").problems[0]?.code, code, yaml);
  });

  it("reads PeerAuthentication and RequestAuthentication (v1 and v1beta1) into their own lists", () => {
    const jwks = JSON.stringify({
      keys: [
        {
          kty: "EC",
          crv: "P-256",
          x: "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
          y: "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
        },
      ],
    });
    const yaml = [
      "apiVersion: security.istio.io/v1",
      "kind: PeerAuthentication",
      "metadata: { name: default, namespace: zmesh-system }",
      "spec: { mtls: { mode: STRICT } }",
      "---",
      "apiVersion: security.istio.io/v1beta1",
      "kind: PeerAuthentication",
      "metadata: { name: metrics, namespace: shop }",
      "spec:",
      "  selector: { matchLabels: { app: payments } }",
      "  portLevelMtls:",
      "    9090: { mode: PERMISSIVE }",
      "---",
      "apiVersion: security.istio.io/v1",
      "kind: RequestAuthentication",
      "metadata: { name: jwt, namespace: shop }",
      "spec:",
      "  jwtRules:",
      "    - issuer: https://issuer.example",
      `      jwks: '${jwks}'`,
    ].join("\n");
    const { documents, problems } = parseYaml(yaml, "authn.yaml");
    assert.deepEqual(problems, []);
    const { config } = assemble(documents);
    assert.deepEqual(
      config.peerAuthentications.map((p) => [p.meta.namespace, p.meta.name, p.spec]),
      [
        ["zmesh-system", "default", { mtls: { mode: "STRICT" } }],
        [
          "shop",
          "metrics",
          {
            selector: { matchLabels: { app: "payments" } },
            portLevelMtls: { "9090": { mode: "PERMISSIVE" } },
          },
        ],
      ],
    );
    assert.equal(config.requestAuthentications.length, 1);
    assert.equal(config.requestAuthentications[0]!.spec.jwtRules?.[0]?.issuer, "https://issuer.example");
    assert.deepEqual(config.policies, [], "AuthorizationPolicies only");
  });

  it("names file, line, resource and field path for PeerAuthentication and RequestAuthentication problems", () => {
    const yaml = [
      "apiVersion: security.istio.io/v1",
      "kind: PeerAuthentication",
      "metadata: { name: default, namespace: shop }",
      "spec:",
      "  mtls:",
      "    mode: strict",
      "---",
      "apiVersion: security.istio.io/v1",
      "kind: PeerAuthentication",
      "metadata: { name: ports, namespace: shop }",
      "spec:",
      "  portLevelMtls:",
      "    8080: { mode: DISABLE }",
      "---",
      "apiVersion: security.istio.io/v1",
      "kind: RequestAuthentication",
      "metadata: { name: jwt, namespace: shop }",
      "spec:",
      "  jwtRules:",
      "    - issuer: https://issuer.example",
      "      jwksUri: https://issuer.example/jwks.json",
    ].join("\n");
    const { problems } = parseYaml(yaml, "authn.yaml");
    assert.deepEqual(
      problems.map((p) => [p.line, p.resource, p.path, p.code]),
      [
        [6, "PeerAuthentication shop/default", "spec.mtls.mode", "ZMESH_CONFIG_INVALID"],
        [13, "PeerAuthentication shop/ports", "spec.portLevelMtls", "ZMESH_CONFIG_INVALID"],
        [21, "RequestAuthentication shop/jwt", "spec.jwtRules[0].jwksUri", "ZMESH_CONFIG_UNSUPPORTED"],
      ],
    );
    assert.match(problems[0]!.message, /upper case: "STRICT"/);
    assert.match(problems[1]!.message, /requires a selector/);
    assert.match(problems[2]!.message, /no egress/);
  });

  it("reads a port's protocol from appProtocol or its name's prefix: tcp, http2 (also gRPC, h2c), auto", () => {
    const svc = (port: string) =>
      `apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec:\n  selector: {app: db}\n  ports: [${port}]\n`;
    const protocol = (port: string) => {
      const r = parseYaml(svc(port), "f.yaml");
      assert.deepEqual(r.problems, [], port);
      return (r.documents[0]!.resource as { ports: { protocol: string }[] }).ports[0]!.protocol;
    };
    assert.equal(protocol("{name: tcp-pg, port: 5432}"), "tcp");
    assert.equal(protocol("{name: grpc-api, port: 9000}"), "http2");
    assert.equal(protocol("{name: http2-web, port: 9000}"), "http2");
    assert.equal(protocol("{name: web, port: 9000, appProtocol: grpc}"), "http2");
    assert.equal(protocol("{name: web, port: 9000, appProtocol: kubernetes.io/h2c}"), "http2");
    assert.equal(protocol("{name: http-web, port: 9000, appProtocol: h2c}"), "http2");
    assert.equal(protocol("{name: grpc-web-ui, port: 9000}"), "auto");
    assert.equal(protocol("{name: ui, port: 9000, appProtocol: grpc-web}"), "auto");
    assert.equal(protocol("{name: web, port: 9000}"), "auto");
  });

  it("reports YAML syntax errors with their line", () => {
    const { problems } = parseYaml("a: 1\nb: [\n", "broken.yaml");
    assert.equal(problems[0]?.code, "ZMESH_CONFIG_PARSE");
    assert.equal(problems[0]?.file, "broken.yaml");
  });

  it("an alias without its anchor and a YAML alias bomb are problems of the file, not exceptions (found by fuzzing)", () => {
    const bomb = [
      "a: &a [x, x, x, x, x, x, x, x, x, x]",
      "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]",
      "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]",
      "d: [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]",
    ].join("\n");
    for (const text of ["*a", "spec: *b", bomb]) {
      const { documents, problems } = parseYaml(text, "x.yaml");
      assert.deepEqual(documents, []);
      assert.equal(problems[0]?.code, "ZMESH_CONFIG_PARSE", text);
      assert.match(problems[0]!.message, /^not valid YAML: /);
      assert.equal(problems[0]!.line, 1);
    }
  });

  it("rejects the whole set when two resources share kind, namespace and name", async () => {
    const dir = await mkdtemp(join(tmpdir(), "zmesh-config-"));
    try {
      const svc =
        "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: n}\nspec: {selector: {app: a}, ports: [{port: 80}]}\n";
      await writeFile(join(dir, "one.yaml"), svc);
      await writeFile(join(dir, "two.yaml"), svc);
      await assert.rejects(loadConfig([dir]), (e: unknown) => {
        assert.ok(e instanceof ConfigError);
        assert.equal(e.code, "ZMESH_CONFIG_DUPLICATE");
        assert.match(e.message, /Service n\/a is defined twice/);
        return true;
      });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("reads a Workload's restartPolicy (Kubernetes' values) and refuses others with the field path", () => {
    const wl = (policy: string) =>
      `apiVersion: zmesh.dev/v1\nkind: Workload\nmetadata: { name: job, namespace: batch }\nspec: { command: [node, job.js], restartPolicy: ${policy} }\n`;
    for (const p of ["Always", "OnFailure", "Never"]) {
      const { documents, problems } = parseYaml(wl(p), "job.yaml");
      assert.deepEqual(problems, []);
      assert.equal((documents[0]!.resource as { restartPolicy?: string }).restartPolicy, p);
    }
    const { problems } = parseYaml(wl("Sometimes"), "job.yaml");
    assert.equal(problems[0]!.path, "spec.restartPolicy");
    assert.match(problems[0]!.message, /Always \(the default\), OnFailure or Never/);
  });

  it("lists a store's files in load order: name order, recursively, skipping hidden directories", async () => {
    const dir = await mkdtemp(join(tmpdir(), "zmesh-files-"));
    await mkdir(join(dir, "b"));
    await mkdir(join(dir, ".hidden"));
    for (const f of ["c.yaml", "a.yml", "b/x.yaml", ".hidden/h.yaml", "notes.txt"])
      await writeFile(join(dir, f), "");
    assert.deepEqual(
      (await resourceFiles([dir])).map((f) => f.slice(dir.length + 1)),
      ["a.yml", "b/x.yaml", "c.yaml"],
    );
    await rm(dir, { recursive: true, force: true });
  });

  it("says plainly when a path does not exist or holds no YAML", async () => {
    await assert.rejects(loadConfig(["/nonexistent-zmesh"]), (e: unknown) =>
      isZmeshError(e, "ZMESH_CONFIG_PARSE"),
    );
    const dir = await mkdtemp(join(tmpdir(), "zmesh-empty-"));
    await assert.rejects(loadConfig([dir]), /no .yaml or .yml files/);
    await rm(dir, { recursive: true, force: true });
  });
});

describe("Istio Sidecar (outbound traffic policy only)", () => {
  it("reads networking.istio.io v1, v1beta1 and v1alpha3 with a selector and a mode", () => {
    const yaml = ["v1", "v1beta1", "v1alpha3"]
      .map(
        (v, i) =>
          `apiVersion: networking.istio.io/${v}\nkind: Sidecar\nmetadata: {name: s${i}, namespace: shop}\nspec:\n${i === 0 ? "  workloadSelector: {labels: {app: web}}\n" : ""}  outboundTrafficPolicy: {mode: ${i === 1 ? "REGISTRY_ONLY" : "ALLOW_ANY"}}\n`,
      )
      .join("---\n");
    const { documents, problems } = parseYaml(yaml, "sidecar.yaml");
    assert.deepEqual(problems, []);
    const { config } = assemble(documents);
    assert.deepEqual(
      config.sidecars.map((s) => [s.meta.name, s.selector, s.outboundMode]),
      [
        ["s0", { app: "web" }, "ALLOW_ANY"],
        ["s1", undefined, "REGISTRY_ONLY"],
        ["s2", undefined, "ALLOW_ANY"],
      ],
    );
  });

  it("refuses every field it does not implement, and a bad mode, naming line, resource and field", () => {
    const yaml = [
      "apiVersion: networking.istio.io/v1",
      "kind: Sidecar",
      "metadata: { name: default, namespace: shop }",
      "spec:",
      "  egress:",
      '    - hosts: ["./*"]',
      "  outboundTrafficPolicy:",
      "    mode: allow_any",
      "    egressProxy: { host: proxy }",
      "  workloadSelector: { labels: {} }",
    ].join("\n");
    const { problems } = parseYaml(yaml, "sidecar.yaml");
    assert.deepEqual(
      problems.map((p) => [p.line, p.resource, p.path, p.code]),
      [
        [6, "Sidecar shop/default", "spec.egress", "ZMESH_CONFIG_UNSUPPORTED"],
        [10, "Sidecar shop/default", "spec.workloadSelector.labels", "ZMESH_CONFIG_INVALID"],
        [9, "Sidecar shop/default", "spec.outboundTrafficPolicy.egressProxy", "ZMESH_CONFIG_UNSUPPORTED"],
        [8, "Sidecar shop/default", "spec.outboundTrafficPolicy.mode", "ZMESH_CONFIG_INVALID"],
      ],
    );
    assert.match(problems[0]!.message, /egress listeners .* not implemented.*remove spec\.egress/);
    assert.match(problems[3]!.message, /REGISTRY_ONLY .* or ALLOW_ANY/);
    const ingress = parseYaml(
      "apiVersion: networking.istio.io/v1beta1\nkind: Sidecar\nmetadata: {name: a}\nspec: {ingress: []}\n",
      "f.yaml",
    ).problems;
    assert.deepEqual(
      ingress.map((p) => [p.path, p.code]),
      [["spec.ingress", "ZMESH_CONFIG_UNSUPPORTED"]],
    );
  });
});
