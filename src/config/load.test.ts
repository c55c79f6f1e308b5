// The config loader: every problem names file, line, resource and field path; a set with any
// problem is rejected whole; the bundled example loads.
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { isZmeshError } from "../errors/index.js";
import { ConfigError, loadConfig, parseYaml } from "./index.js";

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
      [
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a}\n",
        "ZMESH_CONFIG_UNSUPPORTED",
      ],
    ];
    for (const [yaml, code] of cases) assert.equal(parseYaml(yaml, "f.yaml").problems[0]?.code, code, yaml);
  });

  it("refuses a tcp port for now rather than treating it as HTTP", () => {
    const yaml =
      "apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec:\n  selector: {app: db}\n  ports: [{name: tcp-pg, port: 5432}]\n";
    assert.equal(parseYaml(yaml, "f.yaml").problems[0]?.code, "ZMESH_CONFIG_UNSUPPORTED");
  });

  it("reports YAML syntax errors with their line", () => {
    const { problems } = parseYaml("a: 1\nb: [\n", "broken.yaml");
    assert.equal(problems[0]?.code, "ZMESH_CONFIG_PARSE");
    assert.equal(problems[0]?.file, "broken.yaml");
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

  it("says plainly when a path does not exist or holds no YAML", async () => {
    await assert.rejects(loadConfig(["/nonexistent-zmesh"]), (e: unknown) =>
      isZmeshError(e, "ZMESH_CONFIG_PARSE"),
    );
    const dir = await mkdtemp(join(tmpdir(), "zmesh-empty-"));
    await assert.rejects(loadConfig([dir]), /no .yaml or .yml files/);
    await rm(dir, { recursive: true, force: true });
  });
});
